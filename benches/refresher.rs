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

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use sqlx::{Connection, Executor, PgPool};
use storefront::auth::refresh::Outcome;
use storefront::auth::tokens::CLAIM_DUE_TOKENS;
use support::{env_usize, fill, fresh_database, millis, percentile, start_stack, time_claims};
use tokio_util::sync::CancellationToken;

async fn claim_query(pool: &PgPool, batch: i64, due: usize) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let plan: Vec<String> = {
        let mut tx = conn.begin().await?;
        let plan = sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, BUFFERS) {CLAIM_DUE_TOKENS}"))
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
    let expected = due.min(batch as usize);
    let times = time_claims(pool, batch, expected, 50).await?;
    println!(
        "claim statement, {} runs, client-side incl. round trip: p50 {:.2} ms, p99 {:.2} ms",
        times.len(),
        millis(percentile(&times, 0.5)),
        millis(percentile(&times, 0.99))
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
    let (pool, db_url) = fresh_database().await?;
    let filled = fill(&pool, sessions).await?;
    println!(
        "filled {sessions} synthetic sessions in {:.1} s",
        filled.as_secs_f64()
    );
    let stack = start_stack(pool.clone(), db_url, &[("refresh.lead_secs", "300".into())]).await?;
    let started = Instant::now();
    stack
        .log_in_all((0..logins).map(|i| format!("user{i}")), 8)
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
    let settings = &stack.settings;
    claim_query(&pool, settings.refresh.batch_size, logins).await?;

    let stats_url = format!("{}/_test", stack.issuer);
    let http = reqwest::Client::new();
    http.post(format!("{stats_url}/reset-stats")).send().await?;
    let refresher = Arc::clone(&stack.state.refresher);
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
    let elapsed: Duration = started.elapsed();
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
