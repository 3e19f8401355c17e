//! What the benchmarks share: a fresh database filled with synthetic logins, the local
//! provider, the app built in-process, logins through the provider, percentiles.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{StreamExt, stream};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};
use storefront::configuration::{Settings, get_configuration_with};
use storefront::startup::Application;
use storefront::state::State;

pub mod express;
pub mod load;
#[path = "../../tests/support/local_provider.rs"]
pub mod provider_login;

pub const DATABASE: &str = "storefront_bench";

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn random_b64(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub use provider_login::LocalProvider as Idp;

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A fresh, migrated `storefront_bench` database next to `DATABASE_URL`'s.
pub async fn fresh_database() -> anyhow::Result<(PgPool, String)> {
    let base_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin = PgConnectOptions::from_str(&base_url)?;
    let mut conn = admin.connect().await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)").as_str())
        .await?;
    conn.execute(format!("CREATE DATABASE {DATABASE}").as_str())
        .await?;
    conn.close().await?;
    let pool = storefront::db::without_reaper(PgPoolOptions::new())
        .max_connections(16)
        .connect_with(admin.database(DATABASE))
        .await?;
    storefront::db::MIGRATOR.run(&pool).await?;
    // Same server and options (`?sslmode=…`), the bench database.
    let (path, options) = base_url.split_once('?').unwrap_or((base_url.as_str(), ""));
    let server = path.rsplit_once('/').map_or(path, |(server, _)| server);
    let url = if options.is_empty() {
        format!("{server}/{DATABASE}")
    } else {
        format!("{server}/{DATABASE}?{options}")
    };
    Ok((pool, url))
}

/// `n` synthetic logins, each a user, a token row and a session: created within the last
/// week, seen within the last day, access tokens expiring in 1–2 hours (none due); 1 % of the
/// logins need a new login and 1 % are retrying.
pub async fn fill(pool: &PgPool, n: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    tx.execute("SET LOCAL synchronous_commit = off").await?;
    sqlx::query(
        r#"INSERT INTO users (user_id, issuer, subject, email, name)
           SELECT gen_random_uuid(), 'synthetic', 'synthetic-' || i,
                  'synthetic-' || i || '@example.com', 'Synthetic Shopper ' || i
           FROM generate_series(1, $1) i"#,
    )
    .bind(n as i64)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        r#"INSERT INTO oauth_tokens (token_id, user_id, provider_sid, key_id, access_token,
                                    refresh_token, access_expires_at, last_refreshed_at,
                                    refresh_status, failure_count)
           SELECT gen_random_uuid(), user_id, md5(user_id::text), 'k1', '\x00', '\x00',
                  now() + interval '1 hour' + random() * interval '1 hour', now(),
                  CASE WHEN r < 0.01 THEN 'needs_login' WHEN r < 0.02 THEN 'retrying' ELSE 'ok' END,
                  CASE WHEN r < 0.02 THEN 1 ELSE 0 END
           FROM (SELECT user_id, random() AS r FROM users WHERE issuer = 'synthetic') u"#,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        r#"INSERT INTO sessions (session_id, key_hash, token_id, ip, user_agent, created_at,
                                last_seen_at, expires_at, absolute_expires_at)
           SELECT gen_random_uuid(), sha256(token_id::text::bytea), token_id, '10.1.2.3',
                  'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0',
                  now() - interval '1 day' - random() * interval '6 days',
                  now() - random() * interval '1 day',
                  now() + interval '1 day', now() + interval '7 days'
           FROM oauth_tokens"#,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    pool.execute("VACUUM ANALYZE").await?;
    Ok(started.elapsed())
}

/// Runs the refresher's claim statement `runs` times, each in a transaction rolled back, and
/// returns the sorted times; every run must claim `expected` rows.
pub async fn time_claims(
    pool: &PgPool,
    batch: i64,
    expected: usize,
    runs: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut conn = pool.acquire().await?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut tx = conn.begin().await?;
        let started = Instant::now();
        let rows = sqlx::query(storefront::auth::tokens::CLAIM_DUE_TOKENS)
            .bind(batch)
            .bind(uuid::Uuid::new_v4())
            .bind(60.0)
            .fetch_all(&mut *tx)
            .await?;
        times.push(started.elapsed());
        tx.rollback().await?;
        anyhow::ensure!(
            rows.len() == expected,
            "claimed {} of {expected}",
            rows.len()
        );
    }
    times.sort();
    Ok(times)
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The app (built in-process on a free port) and the local provider it logs in with.
pub struct Stack {
    pub shop: String,
    pub issuer: String,
    pub settings: Settings,
    pub state: State,
    _idp: Idp,
}

/// Starts the provider and the app on `db_url` with test settings and `overrides`.
pub async fn start_stack(
    pool: PgPool,
    db_url: String,
    overrides: &[(&str, String)],
) -> anyhow::Result<Stack> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let shop = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
    let secret = random_b64(24);
    let idp = provider_login::start(&shop, &secret, 3600).await;
    let issuer = idp.issuer.clone();
    let mut values: Vec<(&str, String)> = vec![
        ("database.url", db_url),
        ("database.max_connections", "16".into()),
        ("oidc.issuer_url", issuer.clone()),
        ("oidc.client_id", "storefront".into()),
        ("oidc.client_secret", secret),
        ("oidc.http_timeout_secs", "5".into()),
        ("session.secret_key", random_b64(64)),
        ("tokens.encryption_key", random_b64(32)),
        ("server.public_url", shop.clone()),
        // Every simulated user comes from 127.0.0.1.
        ("rate_limit.enabled", "false".into()),
        (
            "server.templates_dir",
            root().join("templates").display().to_string(),
        ),
        (
            "server.static_dir",
            root().join("static").display().to_string(),
        ),
    ];
    values.extend(overrides.iter().cloned());
    let settings = get_configuration_with(&root().join("config"), Some("test"), &values)?;
    let app = Application::build_on(settings.clone(), pool, listener).await?;
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped());
    Ok(Stack {
        shop,
        issuer,
        settings,
        state,
        _idp: idp,
    })
}

impl Stack {
    /// Logs `users` in through the provider's form, `parallel` at a time; returns each
    /// user's shop client (holding the session cookie).
    pub async fn log_in_all(
        &self,
        users: impl Iterator<Item = String>,
        parallel: usize,
    ) -> Vec<reqwest::Client> {
        let shop = &self.shop;
        stream::iter(users)
            .map(|user| async move {
                let client = provider_login::cookie_client();
                let provider = provider_login::cookie_client();
                provider_login::log_in(&client, &provider, shop, "/", &user).await;
                client
            })
            .buffer_unordered(parallel)
            .collect()
            .await
    }
}
