//! The configuration's sections, one struct each. Every default is in `config/default.toml`
//! (embedded in the binary), never here: a field without `Option` must come from a source.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use super::values::{AesKey, ClientKey, CookieKey, LogFormat, PreviousKey, deserialize_networks};

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub public_url: Url,
    /// `json` for production log shipping, `pretty` for humans.
    pub log_format: LogFormat,
    pub static_dir: PathBuf,
    pub templates_dir: PathBuf,
    /// Reverse proxies (IPs or CIDR ranges) whose `X-Forwarded-For` is believed. Requests
    /// from anywhere else are taken to come from their peer address.
    #[serde(deserialize_with = "deserialize_networks")]
    pub trusted_proxies: Vec<IpNet>,
    /// Seconds a client has to send a request's headers; slow clients get 408.
    pub request_timeout_secs: u64,
    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_timeout_secs: u64,
    /// Seconds between SIGTERM/SIGINT and closing the listener, while `/health` already
    /// answers 503 ("draining") and every response closes its connection: a load balancer
    /// takes the instance out before it stops, and keep-alive clients reconnect elsewhere.
    pub drain_secs: u64,
    /// Benchmarks only: serve `GET /_bench/baseline`, a bare handler doing one primary-key
    /// select, to compare the shop's pages with.
    pub baseline_route: bool,
}

/// `database.pooler`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooler {
    /// Straight to Postgres (or a pooler in session mode): prepared statements are cached
    /// per connection, the timeouts are startup options.
    #[default]
    None,
    /// A PgBouncer in transaction pooling, which (up to 1.20) keeps no prepared statement
    /// across transactions and forwards no startup options. Every statement is unnamed, every
    /// use of a pooled connection is one transaction (`BEGIN` with the timeouts as `SET
    /// LOCAL` when it is taken, `COMMIT` when it is given back), so the two messages of an
    /// unnamed statement reach the same server. `migrate` and `migrate_on_start` must not go
    /// through it (their advisory lock is session-level).
    Transaction,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before answering 503.
    pub acquire_timeout_ms: u64,
    /// `serve` applies pending migrations itself instead of refusing to start.
    pub migrate_on_start: bool,
    /// What sits between the shop and Postgres: `none`, or `transaction` for a PgBouncer in
    /// transaction pooling (see [`Pooler`]).
    pub pooler: Pooler,
    /// `statement_timeout` of `serve`'s connections (0: the server's own). A statement
    /// cancelled by it is a 503, not a hang.
    pub statement_timeout_ms: u64,
    /// `lock_timeout` of `serve`'s connections (0: the server's own): a request waiting on a
    /// lock (a DBA's `ALTER TABLE`, a long `LOCK`) answers 503 after this, it does not wait.
    pub lock_timeout_ms: u64,
    /// A direct connection for LISTEN (the caches' notifications): needed when `url` goes
    /// through a transaction pooler; defaults to the pool's own connection settings.
    pub listen_url: Option<SecretString>,
}

impl DatabaseSettings {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct OidcSettings {
    /// The single provider of a shop that has one (`[[oidc.providers]]` instead lists several).
    pub issuer_url: Option<Url>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    /// Defaults to `{server.public_url}/callback`.
    pub redirect_url: Option<Url>,
    /// Defaults to `{server.public_url}/`.
    pub post_logout_redirect_url: Option<Url>,
    /// The scopes asked for (every provider's default).
    pub scopes: Vec<String>,
    /// Where groups come from: a claim name, or a dotted path into nested claims
    /// (`realm_access.roles`). An ID token without it means "no groups".
    pub groups_claim: String,
    /// Extra parameters of every authorization request, such as Google's
    /// `access_type = "offline"` and `prompt = "consent"` (without which it sends no refresh
    /// token).
    pub extra_auth_params: BTreeMap<String, String>,
    /// Connect and request timeout for every call to a provider.
    pub http_timeout_secs: u64,
    /// How often discovery is retried while a provider is unreachable.
    pub discovery_retry_secs: u64,
    /// Pushed authorization requests (RFC 9126), every provider's default.
    pub par: Par,
    /// How the shop authenticates at the token endpoint, every provider's default (`None`:
    /// the client secret, Basic unless the provider only takes it in the body).
    pub token_endpoint_auth_method: Option<TokenEndpointAuthMethod>,
    /// The keys `private_key_jwt` signs with: the first signs, all are published at
    /// `/.well-known/jwks.json` (list a new key second, then first, then drop the old one).
    pub client_keys: Vec<ClientKey>,
    /// Several providers at once; when empty, the keys above are the one provider.
    pub providers: Vec<ProviderEntry>,
}

/// `oidc.par`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Par {
    /// When discovery lists a `pushed_authorization_request_endpoint`.
    #[default]
    Auto,
    /// Always; a provider without the endpoint cannot be used.
    Required,
    /// Never.
    Off,
}

/// `token_endpoint_auth_method`, as OpenID Connect names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpointAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    /// A JWT signed with `oidc.client_keys` (RFC 7523).
    PrivateKeyJwt,
}

/// One `[[oidc.providers]]` entry; what it leaves out comes from `[oidc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    /// In `/login?provider=ID`: letters, digits, `-` and `_`.
    pub id: String,
    /// On the sign-in chooser and the admin tables (default: the id).
    pub display_name: Option<String>,
    pub issuer_url: Url,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub redirect_url: Option<Url>,
    pub post_logout_redirect_url: Option<Url>,
    pub scopes: Option<Vec<String>>,
    pub groups_claim: Option<String>,
    pub extra_auth_params: Option<BTreeMap<String, String>>,
    pub par: Option<Par>,
    pub token_endpoint_auth_method: Option<TokenEndpointAuthMethod>,
    /// Sign this provider's identities in as the existing user with the same email, when the
    /// provider says the email is verified and that user's email was verified too. Off by
    /// default: without it two providers with one email are two accounts.
    #[serde(default)]
    pub link_verified_emails: bool,
}

/// One provider, every value settled (`[[oidc.providers]]` over `[oidc]`).
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub id: String,
    pub display_name: String,
    pub issuer_url: Url,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub redirect_url: Url,
    pub post_logout_redirect_url: Url,
    pub scopes: Vec<String>,
    pub groups_claim: String,
    pub extra_auth_params: BTreeMap<String, String>,
    pub par: Par,
    pub token_endpoint_auth_method: Option<TokenEndpointAuthMethod>,
    pub link_verified_emails: bool,
}

impl OidcSettings {
    pub fn http_timeout(&self) -> Duration {
        Duration::from_secs(self.http_timeout_secs)
    }

    /// The id of the one provider configured with the `oidc.*` keys alone.
    pub const SINGLE: &'static str = "default";
}

#[derive(Debug, Clone, Deserialize)]
pub struct SessionSettings {
    /// Base64, at least 64 bytes once decoded: signs the session cookie.
    pub secret_key: CookieKey,
    pub cookie_name: String,
    pub idle_timeout_secs: u64,
    pub absolute_timeout_secs: u64,
    /// A session's idle expiry is pushed forward at most this often (writes are throttled).
    pub touch_interval_secs: u64,
    pub cleanup_interval_secs: u64,
    pub cleanup_batch_size: i64,
    /// Live sessions one user may have (0: no limit); a login beyond it ends the least
    /// recently used one.
    pub max_per_user: u32,
    /// Sessions each instance keeps in memory (0: none), and the bytes they may take.
    pub cache_max_entries: usize,
    pub cache_max_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenSettings {
    /// Base64 of 32 bytes: the AES-256-GCM key that encrypts tokens at rest.
    pub encryption_key: AesKey,
    /// Stored next to every ciphertext so keys can be rotated.
    pub key_id: String,
    /// Older keys still accepted for decryption, as `id:base64` entries.
    pub previous_keys: Vec<PreviousKey>,
}

/// One AES-256 key with the id stored next to what it encrypted.
pub struct TokenKey {
    pub id: String,
    pub key: [u8; 32],
}

impl TokenSettings {
    /// The current key first, then the previous ones.
    pub fn keys(&self) -> Vec<TokenKey> {
        let current = TokenKey {
            id: self.key_id.clone(),
            key: *self.encryption_key.bytes(),
        };
        std::iter::once(current)
            .chain(self.previous_keys.iter().map(|p| TokenKey {
                id: p.id.clone(),
                key: *p.key.bytes(),
            }))
            .collect()
    }
}

/// The background token refresher and the cap on refresh traffic to the provider.
#[derive(Debug, Clone, Deserialize)]
pub struct RefreshSettings {
    /// A token is refreshed once its remaining lifetime drops below the smaller of this and
    /// `lead_fraction` of its lifetime.
    pub lead_secs: u64,
    /// The share of a token's lifetime left when it is refreshed (0 < f < 1): with ½, a
    /// 300 s token is refreshed 150 s before it expires, a 24 h one `lead_secs` before.
    pub lead_fraction: f64,
    /// The lifetime assumed when the provider does not say (`expires_in` missing).
    pub default_lifetime_secs: u64,
    /// Seconds between the refresher's scans for due tokens.
    pub interval_secs: u64,
    pub enabled: bool,
    /// Due tokens claimed per scan; a full batch is followed at once by the next.
    pub batch_size: i64,
    /// Refresh calls in flight at once, per instance (background and inline together).
    pub max_concurrency: usize,
    /// Refresh calls started per second, per instance.
    pub max_per_sec: u32,
    /// How long a claim on a token lasts without renewal. A call in flight renews it every
    /// third of this, so a crashed instance's claims lapse within this, whatever the call's
    /// length.
    pub lease_secs: u64,
    /// How long one refresh call (JWKS refetch included) may take before its answer is given
    /// up for lost. Generous: an answer that arrives late is still stored, while one given up
    /// may have spent a rotating refresh token.
    pub call_timeout_secs: u64,
    /// Backoff after a transient failure: base * 2^failures, capped, with jitter.
    pub backoff_base_secs: u64,
    pub backoff_max_secs: u64,
}

impl RefreshSettings {
    /// When tokens written now fall due.
    pub fn cadence(&self) -> Cadence {
        Cadence {
            lead: Duration::from_secs(self.lead_secs),
            fraction: self.lead_fraction,
            default_lifetime: Duration::from_secs(self.default_lifetime_secs),
        }
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_secs)
    }
}

/// The refresh cadence: how long before expiry a token of a given lifetime falls due.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub lead: Duration,
    pub fraction: f64,
    pub default_lifetime: Duration,
}

impl Cadence {
    /// The lifetime of a token answered with `expires_in`, and how long before its expiry it
    /// falls due: min(lead, lifetime × fraction).
    pub fn schedule(&self, expires_in: Option<Duration>) -> (Duration, Duration) {
        let lifetime = expires_in.unwrap_or(self.default_lifetime);
        (lifetime, self.lead.min(lifetime.mul_f64(self.fraction)))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    pub groups: Vec<String>,
    pub subjects: Vec<String>,
    pub emails: Vec<String>,
    /// The providers (ids) whose sign-ins may be admins; empty: every provider, which only
    /// a shop with one provider may leave (a subject, a group or an email is only as
    /// trustworthy as the provider that asserts it).
    pub providers: Vec<String>,
    /// Live sessions an admin may have (0: no limit), lower than shoppers'.
    pub max_sessions: u32,
}

/// Step-up before large orders: an order over `step_up_above_cents` (0: never) needs a
/// login whose `auth_time` is at most `step_up_max_age_secs` old, else checkout sends the
/// shopper through the provider again with `max_age` (and `acr_values` when set).
#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutSettings {
    pub step_up_above_cents: i64,
    pub step_up_max_age_secs: u64,
    pub step_up_acr_values: Vec<String>,
}

/// Per-client-IP limits on `/login`, `/callback`, `/backchannel-logout` and admin POSTs.
#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// Sustained requests per minute per client IP and route group.
    pub per_minute: u32,
    /// Requests allowed at once before the per-minute rate applies.
    pub burst: u32,
}

/// `GET /metrics`: on a separate address (`listen`), or behind a bearer token (`token`), or
/// both. On the public listener it is served only with a token, or over plain http (a local
/// run): a production shop never shows it to the internet by default.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    /// When set, scrapes must send `Authorization: Bearer <token>`.
    pub token: Option<SecretString>,
    /// When set (`host:port`), `/metrics` is served there and not on the public listener.
    pub listen: Option<String>,
    /// How often the gauges that need SQL (sessions, due tokens, revocation queue) are read
    /// by a background task; a scrape itself costs no query.
    pub gauges_interval_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_falls_due_at_the_lead_or_the_fraction_of_its_lifetime_whichever_is_sooner() {
        let cadence = Cadence {
            lead: Duration::from_secs(300),
            fraction: 0.5,
            default_lifetime: Duration::from_secs(600),
        };
        let lead = |secs| {
            cadence
                .schedule(Some(Duration::from_secs(secs)))
                .1
                .as_secs()
        };
        assert_eq!(lead(30), 15, "a 30 s token at half-life");
        assert_eq!(
            lead(300),
            150,
            "Keycloak's default 300 s: not due the moment it is issued"
        );
        assert_eq!(lead(86_400), 300, "a day-long token 300 s ahead");
        assert_eq!(
            cadence.schedule(None),
            (Duration::from_secs(600), Duration::from_secs(300)),
            "no expires_in: the configured default lifetime"
        );
    }
}
