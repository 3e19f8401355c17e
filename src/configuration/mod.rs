//! Settings: `config/default.toml` → `config/$STOREFRONT_ENV.toml` → `DATABASE_URL` →
//! `STOREFRONT__SECTION__KEY` environment variables, parsed once into typed values (keys
//! decoded, address ranges parsed) and validated, so a configuration that loaded is ready to
//! use. Every default is in `default.toml`; secrets have none, so a production deployment
//! that forgets one fails at start-up.

mod sections;
mod values;

pub use sections::{
    AdminSettings, Cadence, CheckoutSettings, DatabaseSettings, MetricsSettings, OidcSettings, Par,
    Pooler, ProviderEntry, ProviderSettings, RateLimitSettings, RefreshSettings, ServerSettings,
    SessionSettings, TokenEndpointAuthMethod, TokenKey, TokenSettings,
};
pub use values::{AesKey, ClientKey, CookieKey, LogFormat, PreviousKey};

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
    "admin.providers",
    "checkout.step_up_acr_values",
    "tokens.previous_keys",
    "server.trusted_proxies",
    "oidc.client_keys",
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
        self.validate_providers()?;
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

    /// Every provider, settled: `[[oidc.providers]]`, or the one the `oidc.*` keys describe
    /// (id [`OidcSettings::SINGLE`]). Validated at load, so never empty.
    pub fn providers(&self) -> Vec<ProviderSettings> {
        let o = &self.oidc;
        let callback = || {
            self.server
                .public_url
                .join("/callback")
                .expect("valid path")
        };
        let home = || self.server.public_url.join("/").expect("valid path");
        if o.providers.is_empty() {
            let Some(issuer_url) = o.issuer_url.clone() else {
                return Vec::new();
            };
            return vec![ProviderSettings {
                id: OidcSettings::SINGLE.to_owned(),
                display_name: issuer_url
                    .host_str()
                    .unwrap_or("OpenID provider")
                    .to_owned(),
                issuer_url,
                client_id: o.client_id.clone().unwrap_or_default(),
                client_secret: o.client_secret.clone(),
                redirect_url: o.redirect_url.clone().unwrap_or_else(callback),
                post_logout_redirect_url: o.post_logout_redirect_url.clone().unwrap_or_else(home),
                scopes: o.scopes.clone(),
                groups_claim: o.groups_claim.clone(),
                extra_auth_params: o.extra_auth_params.clone(),
                par: o.par,
                token_endpoint_auth_method: o.token_endpoint_auth_method,
                link_verified_emails: false,
            }];
        }
        o.providers
            .iter()
            .map(|p| ProviderSettings {
                id: p.id.clone(),
                display_name: p.display_name.clone().unwrap_or_else(|| p.id.clone()),
                issuer_url: p.issuer_url.clone(),
                client_id: p.client_id.clone(),
                client_secret: p.client_secret.clone(),
                redirect_url: p
                    .redirect_url
                    .clone()
                    .or_else(|| o.redirect_url.clone())
                    .unwrap_or_else(callback),
                post_logout_redirect_url: p
                    .post_logout_redirect_url
                    .clone()
                    .or_else(|| o.post_logout_redirect_url.clone())
                    .unwrap_or_else(home),
                scopes: p.scopes.clone().unwrap_or_else(|| o.scopes.clone()),
                groups_claim: p
                    .groups_claim
                    .clone()
                    .unwrap_or_else(|| o.groups_claim.clone()),
                extra_auth_params: p
                    .extra_auth_params
                    .clone()
                    .unwrap_or_else(|| o.extra_auth_params.clone()),
                par: p.par.unwrap_or(o.par),
                token_endpoint_auth_method: p
                    .token_endpoint_auth_method
                    .or(o.token_endpoint_auth_method),
                link_verified_emails: p.link_verified_emails,
            })
            .collect()
    }

    /// The provider rules: one way of configuring them, each complete, ids and issuers unique.
    fn validate_providers(&self) -> Result<(), ConfigError> {
        let o = &self.oidc;
        let listed = !o.providers.is_empty();
        if listed && (o.issuer_url.is_some() || o.client_id.is_some()) {
            return Err(invalid(
                "oidc.issuer_url",
                "and oidc.client_id describe a single provider: with [[oidc.providers]], give each provider its own",
            ));
        }
        if !listed && o.issuer_url.is_none() {
            return Err(invalid(
                "oidc.issuer_url",
                "must be set (or list the providers as [[oidc.providers]])",
            ));
        }
        let named = |i: usize, key: &str, problem: String| ConfigError::Decode {
            key: if listed {
                format!("oidc.providers[{i}].{key}")
            } else {
                format!("oidc.{key}")
            },
            problem,
        };
        let providers = self.providers();
        for (i, p) in providers.iter().enumerate() {
            if p.id.is_empty()
                || p.id.len() > 32
                || !p
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(named(
                    i,
                    "id",
                    "must be 1–32 letters, digits, `-` or `_`".into(),
                ));
            }
            if providers[..i].iter().any(|q| q.id == p.id) {
                return Err(named(i, "id", format!("`{}` is listed twice", p.id)));
            }
            if !matches!(p.issuer_url.scheme(), "http" | "https") {
                return Err(named(i, "issuer_url", "must be an http(s) URL".into()));
            }
            let issuer = |u: &Url| u.as_str().trim_end_matches('/').to_owned();
            if providers[..i]
                .iter()
                .any(|q| issuer(&q.issuer_url) == issuer(&p.issuer_url))
            {
                return Err(named(
                    i,
                    "issuer_url",
                    "is another provider's too: logins are told apart by issuer".into(),
                ));
            }
            if p.client_id.trim().is_empty() {
                return Err(named(i, "client_id", "must not be empty".into()));
            }
            let jwt = p.token_endpoint_auth_method == Some(TokenEndpointAuthMethod::PrivateKeyJwt);
            if jwt && o.client_keys.is_empty() {
                return Err(invalid(
                    "oidc.client_keys",
                    format!("must list a key: provider `{}` uses private_key_jwt", p.id),
                ));
            }
            if !jwt && p.client_secret.is_none() {
                return Err(named(
                    i,
                    "client_secret",
                    "must be set (or use token_endpoint_auth_method = \"private_key_jwt\")".into(),
                ));
            }
            const RESERVED: [&str; 10] = [
                "state",
                "nonce",
                "code_challenge",
                "code_challenge_method",
                "redirect_uri",
                "client_id",
                "response_type",
                "scope",
                "response_mode",
                "request_uri",
            ];
            if let Some(name) = p
                .extra_auth_params
                .keys()
                .find(|k| RESERVED.contains(&k.as_str()))
            {
                return Err(named(
                    i,
                    "extra_auth_params",
                    format!("must not set `{name}`, which the shop sets itself"),
                ));
            }
            if !p.scopes.iter().any(|s| s == "openid") {
                return Err(named(i, "scopes", "must include `openid`".into()));
            }
        }
        if listed && o.client_secret.is_some() {
            return Err(invalid(
                "oidc.client_secret",
                "belongs to the single provider: with [[oidc.providers]], give each provider its own client_secret (a secret is never sent to another provider)",
            ));
        }
        if let Some(unknown) = self
            .admin
            .providers
            .iter()
            .find(|id| !providers.iter().any(|p| &p.id == *id))
        {
            return Err(invalid(
                "admin.providers",
                format!("names `{unknown}`, which is not a configured provider"),
            ));
        }
        if providers.len() > 1 && self.admin.providers.is_empty() {
            return Err(invalid(
                "admin.providers",
                "must name the providers whose sign-ins may be admins (with several providers, a subject, group or email is only as trustworthy as the provider asserting it)",
            ));
        }
        Ok(())
    }

    /// Whether a sign-in at `issuer` may be an admin (`admin.providers`).
    pub fn admins_may_sign_in_at(&self, issuer: &str) -> bool {
        let same = |url: &Url| url.as_str().trim_end_matches('/') == issuer.trim_end_matches('/');
        let allowed = &self.admin.providers;
        // Empty only with one provider (validated): that one.
        if allowed.is_empty() {
            return true;
        }
        if self.oidc.providers.is_empty() {
            return allowed.iter().any(|id| id == OidcSettings::SINGLE)
                && self.oidc.issuer_url.as_ref().is_some_and(same);
        }
        self.oidc
            .providers
            .iter()
            .any(|p| allowed.contains(&p.id) && same(&p.issuer_url))
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
