//! The shop's OpenID Connect clients, one per provider ([`Providers`]): discovery and keys
//! (`provider`), the claim types (`claims`), token verification (`verify`), client
//! authentication (`client_auth`: the secret or `private_key_jwt`) and the calls to the
//! provider (`calls`): the authorization request (pushed, RFC 9126, where the provider takes
//! it), the code exchange, refresh, userinfo, revocation and end-session.
//! All token checks are the `openidconnect` crate's; this module only chooses the policy
//! (algorithms, clock skew, rate of JWKS refetches).

mod calls;
mod claims;
mod client_auth;
mod provider;
mod providers;
mod verify;

pub use providers::Providers;

pub use verify::LogoutTokenNames;

pub use claims::{
    RevocationMetadata, ShopClaims, ShopIdTokenClaims, ShopUserInfo, stored_token_claims,
};

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openidconnect::{ClientId, ClientSecret, IssuerUrl, PostLogoutRedirectUrl, RedirectUrl, Scope};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use crate::configuration::{ClientKey, Par, ProviderSettings, Settings, TokenEndpointAuthMethod};
use provider::Provider;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// Discovery has not succeeded yet, the request could not be sent (connection refused,
    /// DNS), or the provider said it is unavailable.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    /// The request was sent, but no answer came back (timeout, connection lost): the provider
    /// may have acted on it.
    #[error("no answer from the identity provider: {0}")]
    NoAnswer(String),
    /// The provider refused the grant (`invalid_grant` and friends).
    #[error("the identity provider refused the request: {error}")]
    Refused {
        error: String,
        description: Option<String>,
    },
    /// The provider answered, but not with something usable (bad JSON, bad token).
    #[error("the identity provider's response was invalid: {0}")]
    InvalidResponse(String),
    #[error("{0}")]
    InvalidToken(String),
}

impl OidcError {
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, OidcError::Refused { error, .. } if error == "invalid_grant")
    }
}

/// The tokens of a token endpoint answer.
pub struct TokenSet {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<SecretString>,
    pub expires_in: Option<Duration>,
}

/// A completed code exchange: the tokens and the claims of its verified ID token.
pub struct Login {
    pub tokens: TokenSet,
    pub claims: ShopIdTokenClaims,
    /// From the claim `oidc.groups_claim` names; empty when the ID token has none.
    pub groups: Vec<String>,
    /// The provider vouches for the email (`email_verified: true`).
    pub email_verified: bool,
}

/// A completed refresh: the tokens, and the claims of the new ID token if the provider sent one.
pub struct Refreshed {
    pub tokens: TokenSet,
    pub claims: Option<ShopIdTokenClaims>,
    /// With a new ID token: its groups (empty when the claim is absent, as Okta, Entra ID and
    /// Keycloak leave it out once the user is in no group). Without one: `None`, unchanged.
    pub groups: Option<Vec<String>>,
}

/// One provider's client: its settings, discovery and keys, and the calls to it.
pub struct Oidc {
    /// `[[oidc.providers]] id`.
    id: String,
    display_name: String,
    http: reqwest::Client,
    /// For refresh calls: the same connect timeout, but the generous
    /// `refresh.call_timeout_secs` for the answer, since a refresh given up may have spent a
    /// rotating refresh token.
    refresh_http: calls::StatusAsOAuthError,
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: Option<ClientSecret>,
    redirect_url: RedirectUrl,
    post_logout_redirect_url: PostLogoutRedirectUrl,
    scopes: Vec<Scope>,
    /// Where groups come from (`groups_claim`).
    groups_claim: String,
    /// Added to every authorization request (`extra_auth_params`).
    extra_auth_params: Vec<(String, String)>,
    par: Par,
    token_endpoint_auth_method: Option<TokenEndpointAuthMethod>,
    /// Signs client assertions (`private_key_jwt`): the first of `oidc.client_keys`.
    client_key: Option<ClientKey>,
    /// A verified email of this provider may sign in as the user who has it.
    link_verified_emails: bool,
    /// The missing revocation endpoint has been logged (once per process).
    said_no_revocation: std::sync::atomic::AtomicBool,
    provider: RwLock<Option<Arc<Provider>>>,
    /// Serializes discovery and JWKS refetches.
    refresh_lock: Mutex<Option<Instant>>,
}

impl Oidc {
    fn groups(&self, claims: &ShopIdTokenClaims) -> Vec<String> {
        claims
            .additional_claims()
            .groups_at(&self.groups_claim)
            .unwrap_or_default()
    }

    /// The client of provider `p`.
    pub fn new(settings: &Settings, p: &ProviderSettings) -> anyhow::Result<Self> {
        let connect = settings.oidc.http_timeout();
        let client = |timeout: Duration| {
            reqwest::Client::builder()
                // Following redirects would open the client to SSRF.
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(connect)
                .timeout(timeout)
                .user_agent(concat!("storefront/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        let http = client(connect)?;
        let refresh_http =
            calls::StatusAsOAuthError(client(settings.refresh.call_timeout().max(connect))?);
        let issuer = p.issuer_url.as_str().trim_end_matches('/').to_owned();
        Ok(Self {
            id: p.id.clone(),
            display_name: p.display_name.clone(),
            http,
            refresh_http,
            issuer: IssuerUrl::new(issuer)?,
            client_id: ClientId::new(p.client_id.clone()),
            client_secret: p
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose_secret().to_owned())),
            redirect_url: RedirectUrl::from_url(p.redirect_url.clone()),
            post_logout_redirect_url: PostLogoutRedirectUrl::from_url(
                p.post_logout_redirect_url.clone(),
            ),
            scopes: p
                .scopes
                .iter()
                .filter(|s| *s != "openid")
                .map(|s| Scope::new(s.clone()))
                .collect(),
            groups_claim: p.groups_claim.clone(),
            extra_auth_params: p
                .extra_auth_params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            par: p.par,
            token_endpoint_auth_method: p.token_endpoint_auth_method,
            client_key: settings.oidc.client_keys.first().cloned(),
            link_verified_emails: p.link_verified_emails,
            said_no_revocation: Default::default(),
            provider: RwLock::new(None),
            refresh_lock: Mutex::new(None),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The issuer the provider reported (RFC 9207 `iss` must equal it); logins of this
    /// provider are stored under it.
    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    /// `/login?provider=` names it by this.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the sign-in chooser and the admin tables call it.
    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    /// Whether a verified email of this provider may sign in as the user who has it.
    pub fn links_verified_emails(&self) -> bool {
        self.link_verified_emails
    }
}

/// RFC 6749 2.3.1: client credentials are form-encoded before Basic authentication.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}
