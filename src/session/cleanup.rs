//! Deletes expired sessions (and the tokens of their logins) in small batches.
//!
//! Each batch is its own short transaction guarded by a transaction-level advisory lock, so
//! with many instances only one cleans at a time and no lock outlives a batch.

use std::time::Duration;

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::tokens;
use crate::crypto::TokenCipher;

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
    crate::db::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(CLEANUP_LOCK_KEY)
        .fetch_one(tx)
        .await
}

/// Deletes up to `batch` expired sessions; call again while it returns a full batch.
pub async fn delete_expired_batch(pool: &PgPool, batch: i64) -> Result<CleanupReport, sqlx::Error> {
    let mut tx = crate::db::begin(pool).await?;
    let locked = try_cleanup_lock(&mut tx).await?;
    if !locked {
        return Ok(CleanupReport {
            skipped: true,
            ..Default::default()
        });
    }
    // The sessions go first, then the logins they held.
    let token_ids: Vec<Option<Uuid>> = crate::db::query_scalar(
        r#"
        WITH doomed AS (
            SELECT session_id FROM sessions
            WHERE expires_at <= now()
            ORDER BY expires_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        DELETE FROM sessions s USING doomed d
        WHERE s.session_id = d.session_id
        RETURNING s.token_id
        "#,
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let sessions = token_ids.len();
    let logins: Vec<Uuid> = token_ids.into_iter().flatten().collect();
    let tokens = if logins.is_empty() {
        0
    } else {
        tokens::end_logins(&mut *tx, &logins, tokens::EndReason::Expired).await?
    };
    tx.commit().await?;
    Ok(CleanupReport {
        sessions: sessions as u64,
        tokens,
        skipped: false,
    })
}

/// Deletes logins whose session was never saved, under the cleanup lock.
async fn delete_orphan_logins(pool: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    let mut tx = crate::db::begin(pool).await?;
    if !try_cleanup_lock(&mut tx).await? {
        return Ok(0);
    }
    let orphans = tokens::delete_orphans(&mut tx, limit).await?;
    tx.commit().await?;
    Ok(orphans)
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

/// Every `interval`: expired sessions, old activity counts, and tokens still sealed under a
/// previous key (re-sealed under the current one), until `stop` is cancelled.
pub async fn run_until_stopped(
    pool: PgPool,
    cipher: Arc<TokenCipher>,
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
        if let Err(e) = crate::auth::logout_tokens::delete_expired(&pool).await {
            tracing::warn!(error = %e, "Logout token cleanup failed; will retry");
        }
        match tokens::rekey_all(&pool, &cipher, batch).await {
            Ok(r) if r.resealed > 0 => report_keys(&pool, &cipher, r.resealed).await,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Re-sealing tokens failed; will retry"),
        }
    }
}

/// After a re-seal: which previous keys still seal tokens, and which can now be retired.
async fn report_keys(pool: &PgPool, cipher: &TokenCipher, resealed: u64) {
    let current = cipher.current_key_id();
    match tokens::key_usage(pool).await {
        Ok(usage) => {
            let still: Vec<String> = usage
                .iter()
                .filter(|u| u.key_id != current)
                .map(|u| format!("{} ({})", u.key_id, u.logins))
                .collect();
            if still.is_empty() {
                tracing::info!(
                    resealed,
                    key_id = current,
                    "Tokens re-sealed; no token uses a previous key any more, so tokens.previous_keys can be emptied"
                );
            } else {
                tracing::info!(resealed, key_id = current, still = %still.join(", "), "Tokens re-sealed; some still use previous keys");
            }
        }
        Err(e) => tracing::warn!(error = %e, "Could not count tokens per key"),
    }
}
