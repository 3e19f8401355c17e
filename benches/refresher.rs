//! The refresher at scale, against real Postgres and the real local provider (`idp/`):
//!
//! 1. fills `sessions` / `oauth_tokens` / `users` with `BENCH_SESSIONS` synthetic logins
//!    (default 1,000,000), none of them due;
//! 2. logs in `BENCH_LOGINS` users (default 1,000) through the provider's login form;
//! 3. makes those logins due and shows the plan and timing of the due-token claim;
//! 4. refreshes them all and reports the time and what the provider counted.
//!
//! Run with `bench/refresher.sh` (starts Postgres, installs the provider), or
//! `cargo bench --bench refresher` when both are there.

#[path = "../tests/support/provider_login.rs"]
mod provider_login;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use futures_util::{StreamExt, stream};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};
use storefront::auth::refresh::{CLAIM_DUE_TOKENS, Outcome};
use storefront::configuration::get_configuration_with;
use storefront::startup::Application;
use tokio_util::sync::CancellationToken;

const DATABASE: &str = "storefront_bench";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn random_b64(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

struct Idp(Child);

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_idp(port: u16, shop: &str, secret: &str) -> anyhow::Result<Idp> {
    let dir = root().join("idp");
    if !dir.join("node_modules/oidc-provider").exists() {
        bail!("run `scripts/idp.sh install` first");
    }
    let child = Command::new("node")
        .arg("server.js")
        .current_dir(&dir)
        .env("IDP_PORT", port.to_string())
        .env("IDP_CLIENT_ID", "storefront")
        .env("IDP_CLIENT_SECRET", secret)
        .env("IDP_REDIRECT_URIS", format!("{shop}/callback"))
        .env("IDP_POST_LOGOUT_REDIRECT_URIS", format!("{shop}/"))
        .env("IDP_LOG_REQUESTS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting node idp/server.js")?;
    let idp = Idp(child);
    let url = format!("http://127.0.0.1:{port}/.well-known/openid-configuration");
    for _ in 0..100 {
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(idp);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the local provider did not start")
}

/// A fresh, migrated database.
async fn fresh_database(base_url: &str) -> anyhow::Result<(PgPool, PgConnectOptions)> {
    let admin = PgConnectOptions::from_str(base_url)?;
    let mut conn = admin.connect().await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)").as_str())
        .await?;
    conn.execute(format!("CREATE DATABASE {DATABASE}").as_str())
        .await?;
    conn.close().await?;
    let options = admin.database(DATABASE);
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(options.clone())
        .await?;
    storefront::db::MIGRATOR.run(&pool).await?;
    Ok((pool, options))
}

/// `n` synthetic logins, each a user, a token row and a session, expiring in 1–2 hours.
async fn fill(pool: &PgPool, n: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    tx.execute("SET LOCAL synchronous_commit = off").await?;
    sqlx::query(
        r#"INSERT INTO users (user_id, issuer, subject, email)
           SELECT gen_random_uuid(), 'synthetic', 'synthetic-' || i, 'synthetic-' || i || '@example.com'
           FROM generate_series(1, $1) i"#,
    )
    .bind(n as i64)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        r#"INSERT INTO oauth_tokens (token_id, user_id, key_id, access_token, refresh_token,
                                    access_expires_at, last_refreshed_at)
           SELECT gen_random_uuid(), user_id, 'k1', '\x00', '\x00',
                  now() + interval '1 hour' + random() * interval '1 hour', now()
           FROM users WHERE issuer = 'synthetic'"#,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        r#"INSERT INTO sessions (session_id, key_hash, token_id, ip, user_agent,
                                expires_at, absolute_expires_at)
           SELECT gen_random_uuid(), sha256(token_id::text::bytea), token_id, '127.0.0.1',
                  'Mozilla/5.0 (X11; Linux x86_64) bench', now() + interval '1 day',
                  now() + interval '7 days'
           FROM oauth_tokens"#,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    pool.execute("VACUUM ANALYZE").await?;
    Ok(started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn claim_query(pool: &PgPool, lead_secs: f64, batch: i64) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let plan: Vec<String> = {
        let mut tx = conn.begin().await?;
        let plan = sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, BUFFERS) {CLAIM_DUE_TOKENS}"))
            .bind(lead_secs)
            .bind(batch)
            .bind(uuid::Uuid::new_v4())
            .bind(60.0)
            .fetch_all(&mut *tx)
            .await?;
        tx.rollback().await?;
        plan
    };
    println!("\nplan of the claim statement (batch {batch}, rolled back):");
    for line in &plan {
        println!("  {line}");
    }
    let mut times = Vec::new();
    for _ in 0..50 {
        let mut tx = conn.begin().await?;
        let started = Instant::now();
        let rows = sqlx::query(CLAIM_DUE_TOKENS)
            .bind(lead_secs)
            .bind(batch)
            .bind(uuid::Uuid::new_v4())
            .bind(60.0)
            .fetch_all(&mut *tx)
            .await?;
        times.push(started.elapsed());
        tx.rollback().await?;
        assert_eq!(rows.len() as i64, batch.min(rows.len() as i64));
    }
    times.sort();
    println!(
        "claim statement, {} runs, client-side incl. round trip: p50 {:.2} ms, p99 {:.2} ms",
        times.len(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let sessions = env_usize("BENCH_SESSIONS", 1_000_000);
    let logins = env_usize("BENCH_LOGINS", 1_000);
    let base_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (pool, _) = fresh_database(&base_url).await?;

    let filled = fill(&pool, sessions).await?;
    println!(
        "filled {sessions} synthetic sessions in {:.1} s",
        filled.as_secs_f64()
    );

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let shop = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
    let idp_port = free_port()?;
    let secret = random_b64(24);
    let _idp = start_idp(idp_port, &shop, &secret).await?;
    let dir: &Path = &root().join("config");
    let db_url = format!(
        "{}/{DATABASE}",
        base_url
            .rsplit_once('/')
            .map_or(base_url.as_str(), |(b, _)| b)
    );
    let settings = get_configuration_with(
        dir,
        Some("test"),
        &[
            ("database.url", db_url),
            ("database.max_connections", "16".into()),
            ("oidc.issuer_url", format!("http://127.0.0.1:{idp_port}")),
            ("oidc.client_id", "storefront".into()),
            ("oidc.client_secret", secret),
            ("oidc.http_timeout_secs", "5".into()),
            ("session.secret_key", random_b64(64)),
            ("tokens.encryption_key", random_b64(32)),
            ("server.public_url", shop.clone()),
            (
                "server.templates_dir",
                root().join("templates").display().to_string(),
            ),
            (
                "server.static_dir",
                root().join("static").display().to_string(),
            ),
            ("refresh.lead_secs", "300".into()),
        ],
    )?;
    let app = Application::build_on(settings.clone(), pool.clone(), listener).await?;
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped());

    let started = Instant::now();
    let shop_ref = &shop;
    stream::iter(0..logins)
        .map(|i| async move {
            let client = provider_login::cookie_client();
            let provider = provider_login::cookie_client();
            provider_login::log_in(&client, &provider, shop_ref, "/", &format!("user{i}")).await;
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    println!(
        "logged in {logins} users through the provider in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The real logins become due (within the lead time); the synthetic ones are not.
    sqlx::query(
        "UPDATE oauth_tokens SET access_expires_at = now() + interval '60 seconds' \
         WHERE user_id IN (SELECT user_id FROM users WHERE issuer <> 'synthetic')",
    )
    .execute(&pool)
    .await?;
    pool.execute("ANALYZE oauth_tokens").await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM oauth_tokens")
        .fetch_one(&pool)
        .await?;
    println!("oauth_tokens rows: {total}, due: {logins}");
    claim_query(
        &pool,
        settings.refresh.lead_secs as f64,
        settings.refresh.batch_size,
    )
    .await?;

    let stats_url = format!("http://127.0.0.1:{idp_port}/_test");
    let http = reqwest::Client::new();
    http.post(format!("{stats_url}/reset-stats")).send().await?;
    let refresher = Arc::clone(&state.refresher);
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut claimed = 0;
    loop {
        let n = refresher.refresh_due(&stop).await?;
        if n == 0 {
            break;
        }
        claimed += n;
    }
    let elapsed = started.elapsed();
    let stats: serde_json::Value = http
        .get(format!("{stats_url}/stats"))
        .send()
        .await?
        .json()
        .await?;
    println!(
        "\nrefreshed {claimed} due tokens in {:.2} s ({:.0}/s; max_concurrency {}, max_per_sec {})",
        elapsed.as_secs_f64(),
        claimed as f64 / elapsed.as_secs_f64(),
        settings.refresh.max_concurrency,
        settings.refresh.max_per_sec
    );
    println!(
        "outcomes: ok {}, transient {}, invalid_grant {}; provider counted refresh grants {}, errors {}",
        refresher.stats().total(Outcome::Ok),
        refresher.stats().total(Outcome::TransientFailure),
        refresher.stats().total(Outcome::InvalidGrant),
        stats["grants"]["refresh_token"],
        stats["grant_errors"]
    );
    if refresher.stats().total(Outcome::Ok) != logins as u64 {
        bail!("not every due token was refreshed exactly once");
    }
    Ok(())
}
