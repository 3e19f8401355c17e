//! Settings: `config/default.toml` → `config/$STOREFRONT_ENV.toml` → `DATABASE_URL` →
//! `STOREFRONT__SECTION__KEY` environment variables. Secrets have no default in
//! `default.toml`, so a production deployment that forgets one fails at start-up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// A configuration problem, always naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {0}")]
    Load(String),
    #[error("configuration error: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub oidc: OidcSettings,
    pub session: SessionSettings,
    pub tokens: TokenSettings,
    #[serde(default)]
    pub refresh: RefreshSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    #[serde(default)]
    pub rate_limit: RateLimitSettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub public_url: Url,
    /// `json` for production log shipping, `pretty` for humans.
    #[serde(default = "default_log_format")]
    pub log_format: String,
    #[serde(default = "default_static_dir")]
    pub static_dir: PathBuf,
    #[serde(default = "default_templates_dir")]
    pub templates_dir: PathBuf,
    /// Reverse proxies (IPs or CIDR ranges) whose `X-Forwarded-For` is believed. Requests
    /// from anywhere else are taken to come from their peer address.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Seconds a client has to send a request's headers; slow clients get 408.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// Benchmarks only: serve `GET /_bench/baseline`, a bare handler doing one primary-key
    /// select, to compare the shop's pages with.
    #[serde(default)]
    pub baseline_route: bool,
}

/// Per-client-IP limits on `/login`, `/callback`, `/backchannel-logout` and admin POSTs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// Sustained requests per minute per client IP and route group.
    pub per_minute: u32,
    /// Requests allowed at once before the per-minute rate applies.
    pub burst: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            per_minute: 30,
            burst: 10,
        }
    }
}

/// `GET /metrics`: open by default (bind it to an internal network), or behind a bearer token.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MetricsSettings {
    /// When set, scrapes must send `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: SecretString,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before answering 503.
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    /// `serve` applies pending migrations itself instead of refusing to start.
    #[serde(default)]
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OidcSettings {
    pub issuer_url: Url,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Defaults to `{server.public_url}/callback`.
    pub redirect_url: Option<Url>,
    /// Defaults to `{server.public_url}/`.
    pub post_logout_redirect_url: Option<Url>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Connect and request timeout for every call to the provider.
    #[serde(default = "default_http_timeout_secs")]
    pub http_timeout_secs: u64,
    /// How often discovery is retried while the provider is unreachable.
    #[serde(default = "default_discovery_retry_secs")]
    pub discovery_retry_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SessionSettings {
    /// Base64, at least 64 bytes once decoded: signs the session cookie.
    pub secret_key: SecretString,
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    #[serde(default = "default_absolute_timeout_secs")]
    pub absolute_timeout_secs: u64,
    /// A session's idle expiry is pushed forward at most this often (writes are throttled).
    #[serde(default = "default_touch_interval_secs")]
    pub touch_interval_secs: u64,
    #[serde(default = "default_cleanup_interval_secs")]
    pub cleanup_interval_secs: u64,
    #[serde(default = "default_cleanup_batch_size")]
    pub cleanup_batch_size: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenSettings {
    /// Base64 of 32 bytes: the AES-256-GCM key that encrypts tokens at rest.
    pub encryption_key: SecretString,
    /// Stored next to every ciphertext so keys can be rotated.
    #[serde(default = "default_key_id")]
    pub key_id: String,
    /// Older keys still accepted for decryption, as `id:base64` entries.
    #[serde(default)]
    pub previous_keys: Vec<SecretString>,
}

/// The background token refresher and the cap on refresh traffic to the provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RefreshSettings {
    /// Tokens expiring within this many seconds are refreshed ahead of time.
    pub lead_secs: u64,
    /// Seconds between the refresher's scans for due tokens.
    pub interval_secs: u64,
    pub enabled: bool,
    /// Due tokens claimed per scan; a full batch is followed at once by the next.
    pub batch_size: i64,
    /// Refresh calls in flight at once, per instance (background and inline together).
    pub max_concurrency: usize,
    /// Refresh calls started per second, per instance.
    pub max_per_sec: u32,
    /// How long a claim on a token lasts; a crashed instance's claims lapse after this.
    pub lease_secs: u64,
    /// Backoff after a transient failure: base * 2^failures, capped, with jitter.
    pub backoff_base_secs: u64,
    pub backoff_max_secs: u64,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        Self {
            lead_secs: 300,
            interval_secs: 15,
            enabled: true,
            batch_size: 200,
            max_concurrency: 16,
            max_per_sec: 400,
            lease_secs: 60,
            backoff_base_secs: 2,
            backoff_max_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AdminSettings {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub emails: Vec<String>,
}

fn default_request_timeout_secs() -> u64 {
    10
}
fn default_shutdown_timeout_secs() -> u64 {
    20
}
fn default_log_format() -> String {
    "pretty".into()
}
fn default_static_dir() -> PathBuf {
    "static".into()
}
fn default_templates_dir() -> PathBuf {
    "templates".into()
}
fn default_max_connections() -> u32 {
    16
}
fn default_acquire_timeout_ms() -> u64 {
    1500
}
fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}
fn default_http_timeout_secs() -> u64 {
    5
}
fn default_discovery_retry_secs() -> u64 {
    10
}
fn default_cookie_name() -> String {
    "storefront_session".into()
}
fn default_idle_timeout_secs() -> u64 {
    24 * 3600
}
fn default_absolute_timeout_secs() -> u64 {
    7 * 24 * 3600
}
fn default_touch_interval_secs() -> u64 {
    60
}
fn default_cleanup_interval_secs() -> u64 {
    300
}
fn default_cleanup_batch_size() -> i64 {
    500
}
fn default_key_id() -> String {
    "k1".into()
}
/// Keys whose environment value may be a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "oidc.scopes",
    "admin.groups",
    "admin.subjects",
    "admin.emails",
    "tokens.previous_keys",
    "server.trusted_proxies",
];

/// The folder holding `default.toml`: `STOREFRONT_CONFIG_DIR`, else `./config`.
pub fn config_dir() -> PathBuf {
    std::env::var_os("STOREFRONT_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config"))
}

/// Loads settings for `STOREFRONT_ENV` (if set) from [`config_dir`] and the environment.
pub fn get_configuration() -> Result<Settings, ConfigError> {
    let environment = std::env::var("STOREFRONT_ENV").ok();
    get_configuration_from(&config_dir(), environment.as_deref())
}

pub fn get_configuration_from(
    dir: &Path,
    environment: Option<&str>,
) -> Result<Settings, ConfigError> {
    get_configuration_with(dir, environment, &[])
}

/// As [`get_configuration_from`], with `overrides` (`("section.key", value)`) applied last.
pub fn get_configuration_with(
    dir: &Path,
    environment: Option<&str>,
    overrides: &[(&str, String)],
) -> Result<Settings, ConfigError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from(dir.join("default.toml")).format(config::FileFormat::Toml));
    if let Some(env) = environment.filter(|e| !e.is_empty()) {
        let file = dir.join(format!("{env}.toml"));
        if !file.exists() {
            return Err(ConfigError::Load(format!(
                "STOREFRONT_ENV={env} but {} does not exist",
                file.display()
            )));
        }
        builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
    }
    if let Ok(url) = std::env::var("DATABASE_URL") {
        builder = builder
            .set_override("database.url", url)
            .map_err(|e| ConfigError::Load(e.to_string()))?;
    }
    let mut env_source = config::Environment::with_prefix("STOREFRONT")
        .prefix_separator("__")
        .separator("__")
        .list_separator(",");
    for key in LIST_KEYS {
        env_source = env_source.with_list_parse_key(key);
    }
    builder = builder.add_source(env_source.try_parsing(true));
    for (key, value) in overrides {
        builder = builder
            .set_override(*key, value.as_str())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
    }
    let settings: Settings = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    settings.validate()?;
    Ok(settings)
}

impl ServerSettings {
    /// `server.trusted_proxies` parsed: single addresses become /32 or /128 networks.
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "server.trusted_proxies",
                            format!("`{entry}` is not an IP address or CIDR range"),
                        )
                    })
            })
            .collect()
    }
}

impl Settings {
    /// Checks what serde cannot: key lengths, URL shapes, sane numbers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.session.cookie_key()?;
        self.tokens.keys()?;
        if !matches!(self.server.public_url.scheme(), "http" | "https") {
            return Err(invalid("server.public_url", "must be an http(s) URL"));
        }
        if !matches!(self.oidc.issuer_url.scheme(), "http" | "https") {
            return Err(invalid("oidc.issuer_url", "must be an http(s) URL"));
        }
        if self.oidc.client_id.trim().is_empty() {
            return Err(invalid("oidc.client_id", "must not be empty"));
        }
        if !self.oidc.scopes.iter().any(|s| s == "openid") {
            return Err(invalid("oidc.scopes", "must include `openid`"));
        }
        if !matches!(self.server.log_format.as_str(), "json" | "pretty") {
            return Err(invalid("server.log_format", "must be `json` or `pretty`"));
        }
        if self.session.idle_timeout_secs == 0 || self.session.absolute_timeout_secs == 0 {
            return Err(invalid(
                "session.idle_timeout_secs",
                "and session.absolute_timeout_secs must be positive",
            ));
        }
        if self.session.cookie_name.is_empty()
            || matches!(self.session.cookie_name.as_str(), "id" | "_session")
        {
            return Err(invalid(
                "session.cookie_name",
                "must be a name of the shop's own (not `id` or `_session`)",
            ));
        }
        self.server.trusted_proxies()?;
        if self.rate_limit.per_minute == 0 || self.rate_limit.burst == 0 {
            return Err(invalid(
                "rate_limit.per_minute",
                "and rate_limit.burst must be positive (set rate_limit.enabled = false to turn limits off)",
            ));
        }
        let r = &self.refresh;
        if r.interval_secs == 0 || r.batch_size <= 0 || r.max_concurrency == 0 || r.max_per_sec == 0
        {
            return Err(invalid(
                "refresh.interval_secs",
                "refresh.batch_size, refresh.max_concurrency and refresh.max_per_sec must be positive",
            ));
        }
        if r.lease_secs < 2 * self.oidc.http_timeout_secs + 5 {
            return Err(invalid(
                "refresh.lease_secs",
                "must be at least 2 * oidc.http_timeout_secs + 5, so a claim outlives the call it covers",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be positive"));
        }
        let url = self.database.url.expose_secret();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid("database.url", "must be a postgres:// URL"));
        }
        Ok(())
    }

    /// `true` when users reach the shop over https: cookies get `Secure` and `__Host-`.
    pub fn is_https(&self) -> bool {
        self.server.public_url.scheme() == "https"
    }

    pub fn redirect_url(&self) -> Url {
        self.oidc.redirect_url.clone().unwrap_or_else(|| {
            self.server
                .public_url
                .join("/callback")
                .expect("valid path")
        })
    }

    pub fn post_logout_redirect_url(&self) -> Url {
        self.oidc
            .post_logout_redirect_url
            .clone()
            .unwrap_or_else(|| self.server.public_url.join("/").expect("valid path"))
    }
}

impl DatabaseSettings {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

impl SessionSettings {
    /// The decoded cookie signing key (≥ 64 bytes).
    pub fn cookie_key(&self) -> Result<Vec<u8>, ConfigError> {
        let bytes = BASE64
            .decode(self.secret_key.expose_secret().trim())
            .map_err(|_| invalid("session.secret_key", "is not valid base64"))?;
        if bytes.len() < 64 {
            return Err(invalid(
                "session.secret_key",
                format!("must decode to at least 64 bytes (got {})", bytes.len()),
            ));
        }
        Ok(bytes)
    }
}

/// One AES-256 key with the id stored next to what it encrypted.
pub struct TokenKey {
    pub id: String,
    pub key: [u8; 32],
}

impl TokenSettings {
    /// The current key first, then the previous ones.
    pub fn keys(&self) -> Result<Vec<TokenKey>, ConfigError> {
        let decode = |key: &'static str, b64: &str| -> Result<[u8; 32], ConfigError> {
            let bytes = BASE64
                .decode(b64.trim())
                .map_err(|_| invalid(key, "is not valid base64"))?;
            bytes.try_into().map_err(|b: Vec<u8>| {
                invalid(key, format!("must decode to 32 bytes (got {})", b.len()))
            })
        };
        if self.key_id.is_empty() || self.key_id.contains(':') {
            return Err(invalid(
                "tokens.key_id",
                "must be non-empty and contain no `:`",
            ));
        }
        let mut keys = vec![TokenKey {
            id: self.key_id.clone(),
            key: decode("tokens.encryption_key", self.encryption_key.expose_secret())?,
        }];
        for entry in &self.previous_keys {
            let (id, b64) = entry.expose_secret().split_once(':').ok_or_else(|| {
                invalid("tokens.previous_keys", "entries must look like `id:base64`")
            })?;
            keys.push(TokenKey {
                id: id.to_owned(),
                key: decode("tokens.previous_keys", b64)?,
            });
        }
        Ok(keys)
    }
}
