//! Deletes expired sessions (and the tokens of their logins) in small batches.
//!
//! Each batch is its own short transaction guarded by a transaction-level advisory lock, so
//! with many instances only one cleans at a time and no lock outlives a batch.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Arbitrary but fixed: the advisory lock key of the session cleanup.
const CLEANUP_LOCK_KEY: i64 = 0x5e55_c1ea;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanupReport {
    pub sessions: u64,
    pub tokens: u64,
    /// Another instance held the lock, so this one did nothing.
    pub skipped: bool,
}

/// Takes the cleanup lock for this transaction, unless another instance holds it.
async fn try_cleanup_lock(tx: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(CLEANUP_LOCK_KEY)
        .fetch_one(tx)
        .await
}

/// Deletes up to `batch` expired sessions; call again while it returns a full batch.
pub async fn delete_expired_batch(pool: &PgPool, batch: i64) -> Result<CleanupReport, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let locked = try_cleanup_lock(&mut tx).await?;
    if !locked {
        return Ok(CleanupReport {
            skipped: true,
            ..Default::default()
        });
    }
    let (sessions, tokens): (i64, i64) = sqlx::query_as(
        r#"
        WITH doomed AS (
            SELECT session_id FROM sessions
            WHERE expires_at <= now()
            ORDER BY expires_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ), gone AS (
            DELETE FROM sessions s USING doomed d
            WHERE s.session_id = d.session_id
            RETURNING s.token_id
        ), tokens AS (
            DELETE FROM oauth_tokens t USING gone g
            WHERE t.token_id = g.token_id
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM tokens)
        "#,
    )
    .bind(batch)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(CleanupReport {
        sessions: sessions as u64,
        tokens: tokens as u64,
        skipped: false,
    })
}

/// Deletes logins whose session was never saved (a crash between storing the tokens and
/// saving the session), older than an hour. This reads every token row, so it runs once per
/// cleanup pass rather than once per batch.
async fn delete_orphan_logins(pool: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let locked = try_cleanup_lock(&mut tx).await?;
    if !locked {
        return Ok(0);
    }
    let orphans = sqlx::query(
        r#"
        DELETE FROM oauth_tokens t
        WHERE t.token_id IN (
            SELECT token_id FROM oauth_tokens o
            WHERE o.created_at < now() - interval '1 hour'
              AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.token_id = o.token_id)
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        "#,
    )
    .bind(limit)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(orphans.rows_affected())
}

/// Deletes every expired session, batch after batch, pausing briefly between batches.
pub async fn delete_expired(pool: &PgPool, batch: i64) -> Result<CleanupReport, sqlx::Error> {
    let mut total = CleanupReport::default();
    loop {
        let report = delete_expired_batch(pool, batch).await?;
        total.sessions += report.sessions;
        total.tokens += report.tokens;
        total.skipped |= report.skipped;
        if report.skipped {
            return Ok(total);
        }
        if (report.sessions as i64) < batch {
            total.tokens += delete_orphan_logins(pool, batch.saturating_mul(10)).await?;
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn run_until_stopped(
    pool: PgPool,
    interval: Duration,
    batch: i64,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match delete_expired(&pool, batch).await {
            Ok(r) if r.sessions > 0 || r.tokens > 0 => {
                tracing::info!(
                    sessions = r.sessions,
                    tokens = r.tokens,
                    "Deleted expired sessions"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Session cleanup failed; will retry"),
        }
        if let Err(e) = crate::activity::delete_old(&pool).await {
            tracing::warn!(error = %e, "Activity count cleanup failed; will retry");
        }
    }
}
