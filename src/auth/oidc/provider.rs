//! Discovery and keys: the provider's metadata, fetched at start-up (and retried while it is
//! down), its JWKS refetched on an unknown `kid`, and the `openidconnect` client built once
//! per discovery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::CoreJwsSigningAlgorithm;
use openidconnect::{AuthType, JsonWebKeySet};

use super::claims::{Metadata, ShopClient};
use super::client_auth::ClientAuth;
use super::{Oidc, OidcError, error_chain};
use crate::configuration::Par;

/// An unknown `kid` refetches the JWKS at most this often (a forged `kid` cannot make us
/// hammer the provider).
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// While the provider is unreachable, requests retry discovery at most this often.
const DISCOVERY_RETRY_FROM_REQUEST: Duration = Duration::from_secs(2);

/// What discovery found, and the client built from it.
pub(super) struct Provider {
    pub(super) metadata: Metadata,
    pub(super) client: ShopClient,
    /// Signature algorithms accepted on ID and logout tokens.
    pub(super) allowed_algs: Vec<CoreJwsSigningAlgorithm>,
    /// How the shop authenticates at its endpoints.
    pub(super) client_auth: ClientAuth,
    /// When an unknown `kid` last made us refetch the JWKS (`None`: not since discovery).
    refetched_jwks_at: Option<Instant>,
}

impl Provider {
    fn new(oidc: &Oidc, metadata: Metadata, refetched_jwks_at: Option<Instant>) -> Self {
        let client_auth = ClientAuth::choose(
            oidc.token_endpoint_auth_method,
            oidc.client_secret.is_some(),
            oidc.client_key.as_ref(),
            &metadata,
        );
        let secret = match client_auth {
            ClientAuth::Jwt(_) => None,
            _ => oidc.client_secret.clone(),
        };
        let client =
            ShopClient::from_provider_metadata(metadata.clone(), oidc.client_id.clone(), secret)
                .set_redirect_uri(oidc.redirect_url.clone());
        // Without a secret the crate sends `client_id` in the form, as private_key_jwt needs.
        let client = if matches!(client_auth, ClientAuth::Basic) {
            client
        } else {
            client.set_auth_type(AuthType::RequestBody)
        };
        Self {
            allowed_algs: allowed_algs(&metadata),
            client_auth,
            client,
            metadata,
            refetched_jwks_at,
        }
    }

    /// Where authorization requests are pushed (RFC 9126), if they are: `oidc.par` `auto`
    /// pushes when discovery lists the endpoint, and a provider that requires it
    /// (`require_pushed_authorization_requests`) is pushed to whatever the setting.
    pub(super) fn par_endpoint(&self, par: Par) -> Result<Option<&url::Url>, OidcError> {
        let extra = &self.metadata.additional_metadata().additional_metadata;
        let endpoint = extra.pushed_authorization_request_endpoint.as_ref();
        let demanded = extra.require_pushed_authorization_requests == Some(true);
        match (par, endpoint) {
            (Par::Off, _) if !demanded => Ok(None),
            (_, Some(endpoint)) => Ok(Some(endpoint)),
            (Par::Required, None) => Err(OidcError::Unavailable(
                "oidc.par is `required` but the provider has no pushed_authorization_request_endpoint".into(),
            )),
            (_, None) => Ok(None),
        }
    }
}

/// Signature algorithms we accept: what the provider advertises, minus `none` and HMAC
/// (a shared-secret MAC would let anyone holding the client secret mint tokens).
fn allowed_algs(metadata: &Metadata) -> Vec<CoreJwsSigningAlgorithm> {
    metadata
        .id_token_signing_alg_values_supported()
        .iter()
        .filter(|alg| {
            !matches!(
                alg,
                CoreJwsSigningAlgorithm::None
                    | CoreJwsSigningAlgorithm::HmacSha256
                    | CoreJwsSigningAlgorithm::HmacSha384
                    | CoreJwsSigningAlgorithm::HmacSha512
            )
        })
        .cloned()
        .collect()
}

impl Oidc {
    pub fn is_ready(&self) -> bool {
        self.provider.read().expect("not poisoned").is_some()
    }

    /// Fetches the discovery document and the JWKS.
    pub async fn discover(&self) -> Result<(), OidcError> {
        let mut last = self.refresh_lock.lock().await;
        self.discover_locked(&mut last).await
    }

    async fn discover_locked(&self, last: &mut Option<Instant>) -> Result<(), OidcError> {
        *last = Some(Instant::now());
        let metadata = Metadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| OidcError::Unavailable(error_chain(&e)))?;
        *self.provider.write().expect("not poisoned") =
            Some(Arc::new(Provider::new(self, metadata, None)));
        Ok(())
    }

    /// Retries discovery until it succeeds or `stop` fires.
    pub async fn discover_until_ready(
        &self,
        retry: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        while !self.is_ready() {
            match self.discover().await {
                Ok(()) => {
                    tracing::info!(provider = %self.id, issuer = %self.issuer.as_str(), "OpenID provider discovered")
                }
                Err(e) => {
                    tracing::warn!(provider = %self.id, error = %e, "OpenID provider discovery failed; retrying")
                }
            }
            if self.is_ready() {
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }

    pub(super) async fn provider(&self) -> Result<Arc<Provider>, OidcError> {
        if let Some(p) = self.provider.read().expect("not poisoned").clone() {
            return Ok(p);
        }
        let mut last = self.refresh_lock.lock().await;
        if let Some(p) = self.provider.read().expect("not poisoned").clone() {
            return Ok(p);
        }
        if last.is_some_and(|t| t.elapsed() < DISCOVERY_RETRY_FROM_REQUEST) {
            return Err(OidcError::Unavailable(
                "discovery has not succeeded yet".into(),
            ));
        }
        self.discover_locked(&mut last).await?;
        Ok(self
            .provider
            .read()
            .expect("not poisoned")
            .clone()
            .expect("just set"))
    }

    /// Refetches the JWKS after an unknown `kid`, at most once per [`JWKS_REFETCH_INTERVAL`].
    /// Returns whether new keys were loaded.
    pub(super) async fn refetch_jwks(&self, seen: &Arc<Provider>) -> bool {
        let _guard = self.refresh_lock.lock().await;
        let current = self.provider.read().expect("not poisoned").clone();
        if let Some(current) = &current {
            if !Arc::ptr_eq(current, seen) {
                return true; // someone else refreshed while we waited
            }
            if current
                .refetched_jwks_at
                .is_some_and(|t| t.elapsed() < JWKS_REFETCH_INTERVAL)
            {
                return false;
            }
        }
        match JsonWebKeySet::fetch_async(seen.metadata.jwks_uri(), &self.http).await {
            Ok(jwks) => {
                let metadata = seen.metadata.clone().set_jwks(jwks);
                *self.provider.write().expect("not poisoned") = Some(Arc::new(Provider::new(
                    self,
                    metadata,
                    Some(Instant::now()),
                )));
                tracing::info!("Refetched the provider's JWKS after an unknown key id");
                true
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "JWKS refetch failed");
                *self.provider.write().expect("not poisoned") = Some(Arc::new(Provider::new(
                    self,
                    seen.metadata.clone(),
                    Some(Instant::now()),
                )));
                false
            }
        }
    }
}
