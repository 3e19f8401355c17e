//! Every configured provider's client, by id (`/login?provider=ID`) and by issuer (a login,
//! a queued revocation and a logout token name theirs).

use std::sync::Arc;
use std::time::Duration;

use super::Oidc;
use crate::configuration::Settings;

pub struct Providers {
    /// In configuration order: the first is the one a login without a choice uses.
    all: Vec<Arc<Oidc>>,
}

impl Providers {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let all = settings
            .providers()
            .iter()
            .map(|p| Oidc::new(settings, p).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!all.is_empty(), "no OpenID provider is configured");
        Ok(Self { all })
    }

    /// Several providers: `/login` lets the shopper choose.
    pub fn several(&self) -> bool {
        self.all.len() > 1
    }

    pub fn all(&self) -> &[Arc<Oidc>] {
        &self.all
    }

    /// The first configured: the one provider of a shop that has one.
    pub fn first(&self) -> &Arc<Oidc> {
        &self.all[0]
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<Oidc>> {
        self.all.iter().find(|p| p.id() == id)
    }

    /// The provider whose logins are stored under `issuer` (a trailing `/` aside).
    pub fn by_issuer(&self, issuer: &str) -> Option<&Arc<Oidc>> {
        let issuer = issuer.trim_end_matches('/');
        self.all
            .iter()
            .find(|p| p.issuer().trim_end_matches('/') == issuer)
    }

    /// The provider of a stored login or queued revocation: by its issuer; a row written
    /// before issuers were recorded (`None`) belongs to the first.
    pub fn of_login(&self, issuer: Option<&str>) -> Option<&Arc<Oidc>> {
        match issuer {
            Some(issuer) => self.by_issuer(issuer),
            None => Some(self.first()),
        }
    }

    /// The provider a logout token claims to come from (its `iss`, read unverified: it only
    /// chooses whose keys verify the token). With one provider, that one.
    pub fn for_logout_token(&self, raw: &str) -> Option<&Arc<Oidc>> {
        if !self.several() {
            return Some(self.first());
        }
        use base64::Engine as _;
        let payload = raw.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        self.by_issuer(claims.get("iss")?.as_str()?)
    }

    /// The issuers of the providers trusted with emails for linking.
    pub fn linking_issuers(&self) -> Vec<String> {
        self.all
            .iter()
            .filter(|p| p.links_verified_emails())
            .map(|p| p.issuer().to_owned())
            .collect()
    }

    /// What the admin tables call the provider of `issuer`.
    pub fn display_name(&self, issuer: &str) -> String {
        self.by_issuer(issuer)
            .map_or_else(|| issuer.to_owned(), |p| p.display_name().to_owned())
    }

    /// Every provider discovered.
    pub fn all_ready(&self) -> bool {
        self.all.iter().all(|p| p.is_ready())
    }

    /// Discovers each provider once, logging those that fail (they are retried).
    pub async fn discover_all(&self) {
        for p in &self.all {
            if let Err(e) = p.discover().await {
                tracing::warn!(provider = %p.id(), error = %e, "OpenID provider discovery failed; retrying in the background");
            }
        }
    }

    /// Retries discovery of every provider not yet discovered, until each is or `stop` fires.
    pub async fn discover_until_ready(
        self: Arc<Self>,
        retry: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let tasks: Vec<_> = self
            .all
            .iter()
            .map(|p| {
                let p = p.clone();
                let stop = stop.clone();
                tokio::spawn(async move { p.discover_until_ready(retry, stop).await })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}
