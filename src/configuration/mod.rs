//! Settings: `config/default.toml` → `config/$STOREFRONT_ENV.toml` → `DATABASE_URL` →
//! `STOREFRONT__SECTION__KEY` environment variables, parsed once into typed values (keys
//! decoded, address ranges parsed) and validated, so a configuration that loaded is ready to
//! use. Every default is in `default.toml`; secrets have none, so a production deployment
//! that forgets one fails at start-up.

mod sections;
mod values;

pub use sections::{
    AdminSettings, Cadence, CheckoutSettings, DatabaseSettings, MetricsSettings, OidcSettings,
    Pooler, RateLimitSettings, RefreshSettings, ServerSettings, SessionSettings, TokenKey,
    TokenSettings,
};
pub use values::{AesKey, CookieKey, LogFormat, PreviousKey};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;
use serde::Deserialize;
use url::Url;

/// A configuration problem, always naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {0}")]
    Load(String),
    #[error("configuration error: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("configuration error: `{key}` {problem}")]
    Decode { key: String, problem: String },
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
    pub refresh: RefreshSettings,
    pub admin: AdminSettings,
    pub checkout: CheckoutSettings,
    pub rate_limit: RateLimitSettings,
    pub metrics: MetricsSettings,
}

/// What the `migrate` and `demo-data` commands need: the database and the log format,
/// nothing of the provider or the keys.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseOnly {
    pub database: DatabaseSettings,
    pub server: LogSettings,
}

/// What the `tokens` commands need: the database and the keys.
#[derive(Debug, Clone, Deserialize)]
pub struct KeysOnly {
    pub database: DatabaseSettings,
    pub tokens: TokenSettings,
    pub server: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub log_format: LogFormat,
}

/// Keys whose environment value may be a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "oidc.scopes",
    "admin.groups",
    "admin.subjects",
    "admin.emails",
    "checkout.step_up_acr_values",
    "tokens.previous_keys",
    "server.trusted_proxies",
];

/// The defaults, `config/default.toml`, built into the binary: a deployment needs no copy of
/// it, and a `default.toml` in the config folder is read on top of it.
const DEFAULTS: &str = include_str!("../../config/default.toml");

/// The folder holding `$STOREFRONT_ENV.toml`: `STOREFRONT_CONFIG_DIR`, else `./config`.
pub fn config_dir() -> PathBuf {
    std::env::var_os("STOREFRONT_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config"))
}

/// Where settings come from, besides the defaults: the config folder, the environment name
/// (`STOREFRONT_ENV`), the environment variables (`DATABASE_URL`, `STOREFRONT__…`), and
/// explicit overrides applied last. Nothing here reads the process environment by itself.
#[derive(Debug, Clone, Default)]
pub struct Sources<'a> {
    pub dir: Option<&'a Path>,
    pub environment: Option<&'a str>,
    pub vars: HashMap<String, String>,
    pub overrides: &'a [(&'a str, String)],
}

impl Sources<'static> {
    /// The process's own: `STOREFRONT_CONFIG_DIR`, `STOREFRONT_ENV` and its environment.
    pub fn from_process() -> Self {
        Self {
            dir: None,
            environment: None,
            vars: std::env::vars().collect(),
            overrides: &[],
        }
    }
}

impl Sources<'_> {
    fn builder(&self) -> Result<config::Config, ConfigError> {
        let load = |e: config::ConfigError| ConfigError::Load(e.to_string());
        let default_dir = config_dir();
        let dir = self.dir.unwrap_or(&default_dir);
        let environment = self
            .environment
            .or_else(|| self.vars.get("STOREFRONT_ENV").map(String::as_str))
            .filter(|e| !e.is_empty());
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(
                config::File::from(dir.join("default.toml"))
                    .format(config::FileFormat::Toml)
                    .required(false),
            );
        if let Some(env) = environment {
            let file = dir.join(format!("{env}.toml"));
            if !file.exists() {
                return Err(ConfigError::Load(format!(
                    "STOREFRONT_ENV={env} but {} does not exist",
                    file.display()
                )));
            }
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
        }
        if let Some(url) = self.vars.get("DATABASE_URL") {
            builder = builder
                .set_override("database.url", url.as_str())
                .map_err(load)?;
        }
        let mut env_source = config::Environment::with_prefix("STOREFRONT")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .source(Some(self.vars.clone()));
        for key in LIST_KEYS {
            env_source = env_source.with_list_parse_key(key);
        }
        builder = builder.add_source(env_source.try_parsing(true));
        for (key, value) in self.overrides {
            builder = builder.set_override(*key, value.as_str()).map_err(load)?;
        }
        builder.build().map_err(load)
    }

    /// Every setting, decoded and validated.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let settings: Settings = self.builder()?.try_deserialize().map_err(naming_the_key)?;
        settings.validate()?;
        Ok(settings)
    }

    /// `[database]` and `[tokens]` (and the log format): what the `tokens` commands need.
    pub fn keys_only(&self) -> Result<KeysOnly, ConfigError> {
        let only: KeysOnly = self.builder()?.try_deserialize().map_err(naming_the_key)?;
        only.database.validate()?;
        only.tokens.validate()?;
        Ok(only)
    }

    /// Only `[database]` (and the log format): what the `migrate` and `demo-data` commands need.
    pub fn database_only(&self) -> Result<DatabaseOnly, ConfigError> {
        let only: DatabaseOnly = self.builder()?.try_deserialize().map_err(naming_the_key)?;
        only.database.validate()?;
        Ok(only)
    }
}

/// A value that failed to decode says which key it was, first, as every other
/// configuration error does.
fn naming_the_key(err: config::ConfigError) -> ConfigError {
    match err {
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } if matches!(*error, config::ConfigError::Message(_)) => ConfigError::Decode {
            key,
            problem: error.to_string(),
        },
        other => ConfigError::Load(other.to_string()),
    }
}

/// Loads settings for `STOREFRONT_ENV` (if set) from [`config_dir`] and the environment.
pub fn get_configuration() -> Result<Settings, ConfigError> {
    Sources::from_process().settings()
}

/// Settings from `dir` for `environment`, with `overrides` (`("section.key", value)`) applied
/// last, and no environment variables.
pub fn get_configuration_with(
    dir: &Path,
    environment: Option<&str>,
    overrides: &[(&str, String)],
) -> Result<Settings, ConfigError> {
    Sources {
        dir: Some(dir),
        environment,
        vars: HashMap::new(),
        overrides,
    }
    .settings()
}

impl Settings {
    /// Checks what one value alone cannot: URL shapes, sane numbers, how values relate.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate()?;
        self.tokens.validate()?;
        if !matches!(self.server.public_url.scheme(), "http" | "https") {
            return Err(invalid("server.public_url", "must be an http(s) URL"));
        }
        if !matches!(self.oidc.issuer_url.scheme(), "http" | "https") {
            return Err(invalid("oidc.issuer_url", "must be an http(s) URL"));
        }
        if self.oidc.client_id.trim().is_empty() {
            return Err(invalid("oidc.client_id", "must not be empty"));
        }
        const RESERVED: [&str; 9] = [
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
            "redirect_uri",
            "client_id",
            "response_type",
            "scope",
            "response_mode",
        ];
        if let Some(name) = self
            .oidc
            .extra_auth_params
            .keys()
            .find(|k| RESERVED.contains(&k.as_str()))
        {
            return Err(invalid(
                "oidc.extra_auth_params",
                format!("must not set `{name}`, which the shop sets itself"),
            ));
        }
        if !self.oidc.scopes.iter().any(|s| s == "openid") {
            return Err(invalid("oidc.scopes", "must include `openid`"));
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
        if !(r.lead_fraction > 0.0 && r.lead_fraction < 1.0) {
            return Err(invalid(
                "refresh.lead_fraction",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        if r.default_lifetime_secs == 0 {
            return Err(invalid("refresh.default_lifetime_secs", "must be positive"));
        }
        if r.lease_secs < 2 {
            return Err(invalid(
                "refresh.lease_secs",
                "must be at least 2 (a call in flight renews its claim every third of it)",
            ));
        }
        if r.call_timeout_secs == 0 {
            return Err(invalid("refresh.call_timeout_secs", "must be positive"));
        }
        // A token is claimed once it expires within `lead_secs`, and a claim may be held for a
        // whole call plus one lease: a shorter lead would let tokens expire while claimed.
        if r.lead_secs < r.call_timeout_secs + r.lease_secs {
            return Err(invalid(
                "refresh.lead_secs",
                "must be at least refresh.call_timeout_secs + refresh.lease_secs, so no token can expire while its refresh is under way",
            ));
        }
        Ok(())
    }

    /// `true` when users reach the shop over https: cookies get `Secure` and `__Host-`.
    pub fn is_https(&self) -> bool {
        self.server.public_url.scheme() == "https"
    }

    /// Whether the public listener serves `/metrics`: not when it has its own address, and
    /// under https only behind a token.
    pub fn metrics_on_public_listener(&self) -> bool {
        self.metrics.listen.is_none() && (self.metrics.token.is_some() || !self.is_https())
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
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be positive"));
        }
        let url = self.url.expose_secret();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid("database.url", "must be a postgres:// URL"));
        }
        if self.pooler == Pooler::Transaction && self.migrate_on_start {
            return Err(invalid(
                "database.migrate_on_start",
                "cannot be used through a transaction pooler (database.pooler = \"transaction\"): run `storefront migrate` against Postgres directly",
            ));
        }
        Ok(())
    }
}

impl TokenSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.key_id.is_empty() || self.key_id.contains(':') {
            return Err(invalid(
                "tokens.key_id",
                "must be non-empty and contain no `:`",
            ));
        }
        if self.previous_keys.iter().any(|k| k.id == self.key_id) {
            return Err(invalid(
                "tokens.previous_keys",
                "must not name the current tokens.key_id",
            ));
        }
        Ok(())
    }
}
