//! How the database-side costs grow with the number of sessions: for each size in
//! `BENCH_SCALES` (default 10,000, 100,000 and 1,000,000 sessions) a fresh database is filled
//! and these are timed —
//!
//! - loading a session through `PgSessionStore` (the one query every request makes), over
//!   500 random sessions in steady state (already touched);
//! - the refresher's claim statement with 1,000 tokens due (batch 200, rolled back);
//! - cleanup of 10 % of the sessions after they expire (`session::cleanup::delete_expired`,
//!   batches of 500).
//!
//! Run with `bench/scaling.sh`, or `cargo bench --bench scaling`.

mod support;

use std::time::{Duration, Instant};

use actix_session::storage::{SessionKey, SessionStore};
use sqlx::{Executor, PgPool};
use storefront::session::{PgSessionStore, SessionTimeouts};
use support::{fill, fresh_database, millis, percentile, time_claims};

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn session_loads(pool: &PgPool) -> anyhow::Result<(Duration, Duration)> {
    let store = PgSessionStore::new(
        pool.clone(),
        SessionTimeouts {
            idle: Duration::from_secs(86400),
            absolute: Duration::from_secs(7 * 86400),
            touch_interval: Duration::from_secs(60),
        },
    );
    // Synthetic sessions' keys are their token ids (see `support::fill`).
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT token_id::text FROM oauth_tokens ORDER BY random() LIMIT 500")
            .fetch_all(pool)
            .await?;
    let keys: Vec<SessionKey> = keys
        .into_iter()
        .map(|k| SessionKey::try_from(k).expect("a valid key"))
        .collect();
    // First pass touches them (they were last seen hours ago); the second is steady state.
    for key in &keys {
        store.load(key).await?.expect("the session exists");
    }
    let mut times = Vec::with_capacity(keys.len());
    for key in &keys {
        let started = Instant::now();
        store.load(key).await?.expect("the session exists");
        times.push(started.elapsed());
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

async fn claim(pool: &PgPool) -> anyhow::Result<Duration> {
    sqlx::query(
        "UPDATE oauth_tokens SET access_expires_at = now() + interval '60 seconds' \
         WHERE token_id IN (SELECT token_id FROM oauth_tokens ORDER BY random() LIMIT 1000)",
    )
    .execute(pool)
    .await?;
    pool.execute("ANALYZE oauth_tokens").await?;
    let times = time_claims(pool, 200, 200, 30).await?;
    Ok(percentile(&times, 0.5))
}

async fn cleanup(pool: &PgPool) -> anyhow::Result<(u64, Duration)> {
    sqlx::query(
        "UPDATE sessions SET expires_at = now() - interval '1 second' \
         WHERE session_id IN (SELECT session_id FROM sessions TABLESAMPLE BERNOULLI (10))",
    )
    .execute(pool)
    .await?;
    pool.execute("VACUUM ANALYZE sessions").await?;
    let started = Instant::now();
    let report = storefront::session::cleanup::delete_expired(pool, 500).await?;
    Ok((report.sessions, started.elapsed()))
}

async fn run() -> anyhow::Result<()> {
    let scales: Vec<usize> = std::env::var("BENCH_SCALES")
        .unwrap_or_else(|_| "10000,100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    println!(
        "{:>10} {:>9} {:>16} {:>16} {:>14} {:>22}",
        "sessions", "fill s", "load p50/p99 ms", "claim p50 ms", "expired", "cleanup s (rows/s)"
    );
    for n in scales {
        let (pool, _) = fresh_database().await?;
        let filled = fill(&pool, n).await?;
        let (load_p50, load_p99) = session_loads(&pool).await?;
        let claim_p50 = claim(&pool).await?;
        let (deleted, took) = cleanup(&pool).await?;
        println!(
            "{n:>10} {:>9.1} {:>16} {:>16.2} {deleted:>14} {:>22}",
            filled.as_secs_f64(),
            format!("{:.2} / {:.2}", millis(load_p50), millis(load_p99)),
            millis(claim_p50),
            format!(
                "{:.2} ({:.0})",
                took.as_secs_f64(),
                deleted as f64 / took.as_secs_f64()
            ),
        );
        pool.close().await;
    }
    Ok(())
}
