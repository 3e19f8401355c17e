use std::process::Command;

use std::collections::HashMap;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use storefront::configuration::{Sources, get_configuration_with};

use crate::helpers::{config_dir, random_b64};

fn base() -> Vec<(&'static str, String)> {
    vec![
        ("database.url", "postgres://postgres@127.0.0.1/x".into()),
        ("oidc.issuer_url", "http://127.0.0.1:4000".into()),
        ("oidc.client_id", "storefront".into()),
        ("oidc.client_secret", "s".into()),
        ("session.secret_key", random_b64(64)),
        ("tokens.encryption_key", random_b64(32)),
    ]
}

fn error_with(key: &'static str, value: &str) -> String {
    let mut overrides = base();
    overrides.retain(|(k, _)| *k != key);
    overrides.push((key, value.to_owned()));
    get_configuration_with(&config_dir(), None, &overrides)
        .err()
        .unwrap_or_else(|| panic!("{key}={value} should be rejected"))
        .to_string()
}

#[test]
fn a_complete_configuration_loads() {
    let settings = get_configuration_with(&config_dir(), None, &base()).unwrap();
    assert_eq!(settings.refresh.lead_secs, 300);
    assert_eq!(settings.session.cookie_name, "storefront_session");
    assert_eq!(
        settings.providers()[0].redirect_url.as_str(),
        "http://127.0.0.1:8080/callback"
    );
}

#[test]
fn malformed_values_are_rejected_naming_the_key() {
    assert!(error_with("session.secret_key", &random_b64(16)).contains("session.secret_key"));
    assert!(error_with("session.secret_key", "not base64!").contains("session.secret_key"));
    assert!(error_with("tokens.encryption_key", &random_b64(16)).contains("tokens.encryption_key"));
    assert!(error_with("oidc.issuer_url", "not a url").contains("issuer_url"));
    assert!(error_with("database.url", "mysql://x").contains("database.url"));
    assert!(error_with("server.port", "eighty").contains("port"));
}

#[test]
fn a_missing_secret_is_an_error_naming_it() {
    let mut overrides = base();
    overrides.retain(|(k, _)| *k != "oidc.client_secret");
    let err = get_configuration_with(&config_dir(), None, &overrides)
        .expect_err("missing secret rejected")
        .to_string();
    assert!(err.contains("client_secret"), "{err}");
}

#[test]
fn the_binary_reports_bad_configuration_in_one_line_without_panicking() {
    let output = Command::new(env!("CARGO_BIN_EXE_storefront"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("STOREFRONT_CONFIG_DIR", config_dir())
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1/x")
        .env("STOREFRONT__OIDC__ISSUER_URL", "http://127.0.0.1:4000")
        .env("STOREFRONT__OIDC__CLIENT_ID", "storefront")
        .env("STOREFRONT__OIDC__CLIENT_SECRET", "s")
        .env("STOREFRONT__SESSION__SECRET_KEY", "tooshort")
        .env("STOREFRONT__TOKENS__ENCRYPTION_KEY", random_b64(32))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("session.secret_key"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn list_keys_accept_comma_separated_environment_values() {
    let output = Command::new(env!("CARGO_BIN_EXE_storefront"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("STOREFRONT_CONFIG_DIR", config_dir())
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1/x")
        .env("STOREFRONT__OIDC__ISSUER_URL", "http://127.0.0.1:4000")
        .env("STOREFRONT__OIDC__CLIENT_ID", "storefront")
        .env("STOREFRONT__OIDC__CLIENT_SECRET", "s")
        .env("STOREFRONT__OIDC__SCOPES", "email,profile")
        .env("STOREFRONT__SESSION__SECRET_KEY", random_b64(64))
        .env("STOREFRONT__TOKENS__ENCRYPTION_KEY", random_b64(32))
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    // Parsed as a list: the validation sees the scopes and complains that openid is missing.
    assert!(
        stderr.contains("oidc.scopes") && stderr.contains("openid"),
        "{stderr}"
    );
}

#[test]
fn environment_variables_come_from_the_sources_given_not_the_process() {
    let vars: HashMap<String, String> = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1/from-vars"),
        ("STOREFRONT__OIDC__ISSUER_URL", "http://127.0.0.1:4000"),
        ("STOREFRONT__OIDC__CLIENT_ID", "storefront"),
        ("STOREFRONT__OIDC__CLIENT_SECRET", "s"),
        ("STOREFRONT__OIDC__SCOPES", "openid,email,groups"),
        ("STOREFRONT__ADMIN__GROUPS", "admins,ops"),
        (
            "STOREFRONT__SERVER__TRUSTED_PROXIES",
            "10.0.0.0/8,192.0.2.1",
        ),
        ("STOREFRONT__REFRESH__LEAD_SECS", "120"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain([
        ("STOREFRONT__SESSION__SECRET_KEY".to_owned(), random_b64(64)),
        (
            "STOREFRONT__TOKENS__ENCRYPTION_KEY".to_owned(),
            random_b64(32),
        ),
    ])
    .collect();
    let settings = Sources {
        dir: Some(&config_dir()),
        vars,
        ..Sources::default()
    }
    .settings()
    .unwrap();
    assert_eq!(settings.oidc.scopes, ["openid", "email", "groups"]);
    assert_eq!(settings.admin.groups, ["admins", "ops"]);
    assert_eq!(settings.refresh.lead_secs, 120);
    assert_eq!(
        settings.server.trusted_proxies,
        [
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.1/32".parse().unwrap()
        ]
    );
    use secrecy::ExposeSecret;
    assert!(
        settings
            .database
            .url
            .expose_secret()
            .ends_with("/from-vars")
    );
    // The defaults are the built-in `default.toml`'s.
    assert_eq!(settings.refresh.lease_secs, 10);
    assert_eq!(settings.refresh.call_timeout_secs, 30);
    assert_eq!(settings.rate_limit.per_minute, 30);
}

#[sqlx::test]
async fn the_database_commands_need_only_the_database_url(
    _opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let base = crate::helpers::base_database_url();
    let (server, options) = base.split_once('?').unwrap_or((base.as_str(), ""));
    let server = server.rsplit_once('/').map_or(server, |(s, _)| s);
    let name = db.get_database().unwrap();
    let url = if options.is_empty() {
        format!("{server}/{name}")
    } else {
        format!("{server}/{name}?{options}")
    };
    let output = Command::new(env!("CARGO_BIN_EXE_storefront"))
        .args(["migrate", "status"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("STOREFRONT_CONFIG_DIR", "/nonexistent")
        .env("DATABASE_URL", url)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stderr}");
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".up.sql")
        })
        .count();
    assert_eq!(
        stdout.lines().filter(|l| l.contains("Applied")).count(),
        migrations,
        "{stdout}"
    );
}

/// A config folder holding `shop.toml` with `body`, for the provider-list tests.
fn folder_with(name: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("storefront-config-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("shop.toml"), body).unwrap();
    dir
}

fn secrets() -> Vec<(&'static str, String)> {
    vec![
        ("database.url", "postgres://postgres@127.0.0.1/x".into()),
        ("session.secret_key", random_b64(64)),
        ("tokens.encryption_key", random_b64(32)),
    ]
}

const TWO_PROVIDERS: &str = r#"
[admin]
providers = ["staff"]

[oidc]
scopes = ["openid", "email"]

[[oidc.providers]]
id = "google"
display_name = "Google"
issuer_url = "https://accounts.google.com"
client_id = "shop.apps.googleusercontent.com"
client_secret = "g-secret"
extra_auth_params = { access_type = "offline", prompt = "consent" }

[[oidc.providers]]
id = "staff"
issuer_url = "https://login.example.com/realms/staff"
client_id = "storefront"
token_endpoint_auth_method = "private_key_jwt"
par = "required"
groups_claim = "realm_access.roles"
"#;

fn client_key_pem() -> String {
    use rsa::pkcs8::EncodePrivateKey;
    rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
        .unwrap()
        .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string()
}

#[test]
fn a_list_of_providers_loads_and_each_inherits_what_it_leaves_out() {
    let dir = folder_with("two", TWO_PROVIDERS);
    let settings = Sources {
        dir: Some(&dir),
        environment: Some("shop"),
        vars: HashMap::from([("STOREFRONT__OIDC__CLIENT_KEYS".into(), client_key_pem())]),
        overrides: &secrets(),
    }
    .settings()
    .unwrap();
    let providers = settings.providers();
    assert_eq!(providers.len(), 2);
    let (google, staff) = (&providers[0], &providers[1]);
    assert_eq!(
        (google.id.as_str(), google.display_name.as_str()),
        ("google", "Google")
    );
    assert_eq!(google.scopes, ["openid", "email"], "from [oidc]");
    assert_eq!(google.extra_auth_params["access_type"], "offline");
    assert_eq!(
        google.redirect_url.as_str(),
        "http://127.0.0.1:8080/callback"
    );
    assert_eq!(staff.display_name, "staff", "the id when no name is given");
    assert_eq!(staff.groups_claim, "realm_access.roles");
    assert_eq!(staff.par, storefront::configuration::Par::Required);
    assert!(staff.client_secret.is_none());
    assert_eq!(settings.oidc.client_keys.len(), 1);
    assert_eq!(
        settings.oidc.client_keys[0].kid.len(),
        43,
        "a SHA-256 thumbprint"
    );

    // The one-provider keys are a list of one, with the id `default`.
    let single = get_configuration_with(&config_dir(), None, &base()).unwrap();
    let one = single.providers();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, "default");
    assert_eq!(one[0].issuer_url.as_str(), "http://127.0.0.1:4000/");
}

#[test]
fn a_provider_list_that_cannot_work_is_refused_naming_the_key() {
    let refused = |name: &str, body: &str, vars: &[(&str, String)]| {
        let dir = folder_with(name, body);
        Sources {
            dir: Some(&dir),
            environment: Some("shop"),
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            overrides: &secrets(),
        }
        .settings()
        .err()
        .unwrap_or_else(|| panic!("{name} should be refused"))
        .to_string()
    };
    // private_key_jwt without a key.
    let e = refused("nokey", TWO_PROVIDERS, &[]);
    assert!(e.contains("oidc.client_keys") && e.contains("staff"), "{e}");
    // A key that is not one.
    let e = refused(
        "badkey",
        TWO_PROVIDERS,
        &[(
            "STOREFRONT__OIDC__CLIENT_KEYS",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".into(),
        )],
    );
    assert!(e.contains("oidc.client_keys") && e.contains("PEM"), "{e}");
    // The same id twice, the same issuer twice, an id unfit for a URL.
    let twice = TWO_PROVIDERS.replace("id = \"staff\"", "id = \"google\"");
    let e = refused(
        "twice",
        &twice,
        &[("STOREFRONT__OIDC__CLIENT_KEYS", client_key_pem())],
    );
    assert!(
        e.contains("oidc.providers[1].id") && e.contains("twice"),
        "{e}"
    );
    let same_issuer = TWO_PROVIDERS.replace(
        "https://login.example.com/realms/staff",
        "https://accounts.google.com/",
    );
    let e = refused(
        "issuer",
        &same_issuer,
        &[("STOREFRONT__OIDC__CLIENT_KEYS", client_key_pem())],
    );
    assert!(e.contains("oidc.providers[1].issuer_url"), "{e}");
    let e = refused(
        "badid",
        &TWO_PROVIDERS.replace("id = \"google\"", "id = \"goo gle\""),
        &[],
    );
    assert!(e.contains("oidc.providers[0].id"), "{e}");
    // A secret-based provider without its secret.
    let e = refused(
        "nosecret",
        &TWO_PROVIDERS.replace("client_secret = \"g-secret\"", ""),
        &[("STOREFRONT__OIDC__CLIENT_KEYS", client_key_pem())],
    );
    assert!(e.contains("oidc.providers[0].client_secret"), "{e}");
    // Both ways at once.
    let both = format!("{TWO_PROVIDERS}\n");
    let e = refused(
        "both",
        &both.replacen(
            "[oidc]\n",
            "[oidc]\nissuer_url = \"https://op.example\"\n",
            1,
        ),
        &[("STOREFRONT__OIDC__CLIENT_KEYS", client_key_pem())],
    );
    assert!(e.contains("oidc.issuer_url"), "{e}");
    // One provider's secret is never another's; admins need a provider named.
    let e = refused(
        "shared-secret",
        &TWO_PROVIDERS.replacen("[oidc]\n", "[oidc]\nclient_secret = \"one\"\n", 1),
        &[("STOREFRONT__OIDC__CLIENT_KEYS", client_key_pem())],
    );
    assert!(e.contains("oidc.client_secret"), "{e}");
    let e = refused(
        "no-admin-providers",
        &TWO_PROVIDERS.replace("providers = [\"staff\"]", "providers = []"),
        &[("STOREFRONT__OIDC__CLIENT_KEYS", client_key_pem())],
    );
    assert!(e.contains("admin.providers"), "{e}");
    let e = refused(
        "unknown-admin-provider",
        &TWO_PROVIDERS.replace("providers = [\"staff\"]", "providers = [\"stafff\"]"),
        &[("STOREFRONT__OIDC__CLIENT_KEYS", client_key_pem())],
    );
    assert!(e.contains("admin.providers") && e.contains("stafff"), "{e}");
    // A typo in a provider's keys is not silently ignored.
    let e = refused(
        "typo",
        &TWO_PROVIDERS.replace("display_name", "dispaly_name"),
        &[],
    );
    assert!(e.contains("dispaly_name"), "{e}");
}
