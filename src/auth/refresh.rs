//! Keeping access tokens fresh: a background refresher that renews tokens before they expire,
//! and on-demand refresh for the request that finds one expired anyway.
//!
//! Providers rotate refresh tokens: each can be used once, and a reuse revokes the whole
//! family. So a token row is refreshed only under a *claim*: a lease (`refresh_claim`,
//! `refresh_claimed_until`) taken in one statement. Whoever holds it calls the provider
//! outside any transaction and stores the result only if the claim is still its own. Claims
//! lapse by themselves, so a crashed instance holds nothing for long. Within one process,
//! requests for the same token also queue on an in-memory lock (single flight), so fifty
//! concurrent requests cost one refresh and one wait each, not fifty polls of the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream};
use prometheus::IntCounterVec;
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::{Mutex, Semaphore, SemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::oidc::{Oidc, OidcError, TokenSet};
use super::tokens::{self, StoredTokens};
use crate::configuration::RefreshSettings;
use crate::crypto::TokenCipher;

/// An access token this close to expiry is refreshed before a request uses it.
pub const USE_SKEW: Duration = Duration::from_secs(5);
/// A provider call is started only if the claim outlives it by this much.
const CLAIM_MARGIN: Duration = Duration::from_secs(2);
/// How often a request waiting for another instance's refresh looks at the row again.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// Which tokens are due, as an SQL condition on `oauth_tokens`: refreshable, expiring within
/// `$1` seconds, not backing off. The refresher claims these rows; the dashboard and the
/// metrics count the same ones.
macro_rules! due_tokens {
    () => {
        "refresh_token IS NOT NULL AND refresh_status <> 'needs_login'
         AND access_expires_at < now() + make_interval(secs => $1)
         AND (next_attempt_at IS NULL OR next_attempt_at <= now())"
    };
}
pub(crate) use due_tokens;

/// What a claim returns: the columns of [`Claimed`] (`t` the token row, `u` its user).
macro_rules! claimed_row {
    () => {
        "RETURNING t.token_id, u.subject, t.key_id, t.refresh_token, t.failure_count"
    };
}

/// Claims up to $2 tokens expiring within $1 seconds for claim id $3, for $4 seconds.
/// SKIP LOCKED: instances scanning at the same moment take disjoint rows instead of queueing
/// on each other; the lease written into the row then keeps them disjoint afterwards.
pub const CLAIM_DUE_TOKENS: &str = concat!(
    "
    WITH due AS (
        SELECT token_id FROM oauth_tokens
        WHERE ",
    due_tokens!(),
    "
          AND (refresh_claimed_until IS NULL OR refresh_claimed_until < now())
        ORDER BY access_expires_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    )
    UPDATE oauth_tokens t
    SET refresh_claim = $3,
        refresh_claimed_until = now() + make_interval(secs => $4)
    FROM due, users u
    WHERE t.token_id = due.token_id AND u.user_id = t.user_id
    ",
    claimed_row!()
);

/// What one refresh attempt came to; each is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Network error, timeout, 5xx, 429 or a malformed answer: retried with backoff.
    TransientFailure,
    /// The provider refused the refresh token: the user must log in again.
    InvalidGrant,
    /// `invalid_grant`, but the row already held a newer refresh token (another instance won).
    RaceRecovered,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::TransientFailure,
        Outcome::InvalidGrant,
        Outcome::RaceRecovered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::TransientFailure => "transient_failure",
            Outcome::InvalidGrant => "invalid_grant",
            Outcome::RaceRecovered => "race_recovered",
        }
    }

    /// The outcome's name in `activity_stats`.
    fn activity_event(self) -> &'static str {
        match self {
            Outcome::Ok => "refresh_ok",
            Outcome::TransientFailure => "refresh_transient_failure",
            Outcome::InvalidGrant => "refresh_invalid_grant",
            Outcome::RaceRecovered => "refresh_race_recovered",
        }
    }
}

/// Refresh outcomes counted in this process: totals since start (the Prometheus counter
/// `token_refreshes_total`) and what has not yet been added to `activity_stats` (for the
/// dashboard, across instances).
pub struct RefreshStats {
    total: IntCounterVec,
    unflushed: [AtomicU64; 4],
}

impl RefreshStats {
    fn new(total: IntCounterVec) -> Self {
        Self {
            total,
            unflushed: Default::default(),
        }
    }

    fn record(&self, outcome: Outcome) {
        self.total.with_label_values(&[outcome.as_str()]).inc();
        self.unflushed[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn total(&self, outcome: Outcome) -> u64 {
        self.total.with_label_values(&[outcome.as_str()]).get()
    }

    /// Adds the unflushed counts to `activity_stats` (as `refresh_<outcome>`).
    pub async fn flush(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        for outcome in Outcome::ALL {
            let n = self.unflushed[outcome as usize].swap(0, Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            if let Err(e) = crate::activity::record(pool, outcome.activity_event(), n).await {
                // Keep the counts for the next flush.
                self.unflushed[outcome as usize].fetch_add(n, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The cap on refresh traffic to the provider: calls in flight, and calls started per second
/// (paced evenly, so a burst of due tokens becomes a steady stream).
struct Limiter {
    in_flight: Semaphore,
    spacing: Duration,
    next_slot: SyncMutex<Instant>,
}

impl Limiter {
    fn new(max_concurrency: usize, max_per_sec: u32) -> Self {
        Self {
            in_flight: Semaphore::new(max_concurrency),
            spacing: Duration::from_secs(1) / max_per_sec.max(1),
            next_slot: SyncMutex::new(Instant::now()),
        }
    }

    async fn acquire(&self) -> SemaphorePermit<'_> {
        let permit = self.in_flight.acquire().await.expect("never closed");
        let slot = {
            let mut next = self.next_slot.lock().expect("not poisoned");
            let slot = (*next).max(Instant::now());
            *next = slot + self.spacing;
            slot
        };
        tokio::time::sleep_until(slot).await;
        permit
    }
}

/// A token row claimed for refresh, with what the refresh needs.
#[derive(sqlx::FromRow)]
struct Claimed {
    token_id: Uuid,
    subject: String,
    key_id: String,
    refresh_token: Vec<u8>,
    failure_count: i32,
}

/// What became of one claimed row.
enum Attempt {
    Refreshed(Box<TokenSet>, DateTime<Utc>),
    Transient(OidcError),
    NeedsLogin,
    /// The row changed under us (another instance refreshed it): read it again.
    Changed,
    /// Not attempted (shutting down, or the claim would lapse mid-call): release the claim.
    Skipped,
}

/// Why a request could not get a usable access token.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("the login has ended")]
    Gone,
    #[error("the provider refused the refresh token; the user must log in again")]
    NeedsLogin,
    #[error(transparent)]
    Provider(OidcError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sqlx::Error> for AccessError {
    fn from(e: sqlx::Error) -> Self {
        AccessError::Other(e.into())
    }
}

pub struct Refresher {
    pool: PgPool,
    cipher: Arc<TokenCipher>,
    oidc: Arc<Oidc>,
    settings: RefreshSettings,
    http_timeout: Duration,
    limiter: Limiter,
    stats: RefreshStats,
    /// Per-token locks for refreshes in progress in this process.
    in_flight: SyncMutex<HashMap<Uuid, Arc<Mutex<()>>>>,
}

impl Refresher {
    pub fn new(
        pool: PgPool,
        cipher: Arc<TokenCipher>,
        oidc: Arc<Oidc>,
        settings: RefreshSettings,
        http_timeout: Duration,
        outcomes: IntCounterVec,
    ) -> Self {
        Self {
            limiter: Limiter::new(settings.max_concurrency, settings.max_per_sec),
            pool,
            cipher,
            oidc,
            settings,
            http_timeout,
            stats: RefreshStats::new(outcomes),
            in_flight: SyncMutex::new(HashMap::new()),
        }
    }

    pub fn stats(&self) -> &RefreshStats {
        &self.stats
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.lease_secs)
    }

    /// Scans for due tokens every `refresh.interval_secs` (at once again after a full batch)
    /// until `stop` is cancelled; then finishes the calls in flight, releases the rest of its
    /// claims and writes its counts.
    pub async fn run_until_stopped(self: Arc<Self>, stop: CancellationToken) {
        let interval = Duration::from_secs(self.settings.interval_secs.max(1));
        tracing::info!(
            lead_secs = self.settings.lead_secs,
            interval_secs = interval.as_secs(),
            "Token refresher started"
        );
        while !stop.is_cancelled() {
            let full_batch = match self.refresh_due(&stop).await {
                Ok(claimed) => claimed as i64 >= self.settings.batch_size,
                Err(e) => {
                    tracing::warn!(error = %e, "Token refresh scan failed; retrying next tick");
                    false
                }
            };
            if let Err(e) = self.stats.flush(&self.pool).await {
                tracing::warn!(error = %e, "Could not record refresh outcomes; kept for later");
            }
            if full_batch {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
        let _ = self.stats.flush(&self.pool).await;
        tracing::info!("Token refresher stopped");
    }

    /// One scan: claims up to `refresh.batch_size` due tokens and refreshes them with bounded
    /// concurrency. Returns how many were claimed.
    #[tracing::instrument(name = "Refresh due tokens", skip_all, fields(claimed))]
    pub async fn refresh_due(&self, stop: &CancellationToken) -> Result<usize, sqlx::Error> {
        let claim = Uuid::new_v4();
        let claimed_at = Instant::now();
        let rows: Vec<Claimed> = sqlx::query_as(CLAIM_DUE_TOKENS)
            .bind(self.settings.lead_secs as f64)
            .bind(self.settings.batch_size)
            .bind(claim)
            .bind(self.settings.lease_secs as f64)
            .fetch_all(&self.pool)
            .await?;
        let claimed = rows.len();
        tracing::Span::current().record("claimed", claimed);
        if claimed == 0 {
            return Ok(0);
        }
        let deadline = claimed_at + self.lease();
        let unfinished: Vec<Uuid> = stream::iter(rows)
            .map(|row| async move {
                match self.attempt(&row, claim, deadline, Some(stop)).await {
                    Ok(Attempt::Skipped) => Some(row.token_id),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, token_id = %row.token_id, "Refresh not recorded");
                        Some(row.token_id)
                    }
                }
            })
            .buffer_unordered(self.settings.max_concurrency)
            .filter_map(std::future::ready)
            .collect()
            .await;
        if !unfinished.is_empty() {
            self.release(&unfinished, claim).await?;
        }
        Ok(claimed)
    }

    async fn release(&self, token_ids: &[Uuid], claim: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query(
            r#"
            UPDATE oauth_tokens SET refresh_claim = NULL, refresh_claimed_until = NULL
            WHERE token_id = ANY($1) AND refresh_claim = $2
            "#,
        )
        .bind(token_ids)
        .bind(claim)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Refreshes one claimed row and records the result, all guarded by the claim.
    async fn attempt(
        &self,
        row: &Claimed,
        claim: Uuid,
        deadline: Instant,
        stop: Option<&CancellationToken>,
    ) -> Result<Attempt, sqlx::Error> {
        let refresh_token = match tokens::decrypt_refresh_token(
            &self.cipher,
            row.token_id,
            &row.key_id,
            &row.refresh_token,
        ) {
            Ok(t) => t,
            Err(e) => {
                // E.g. its key was retired: the token is unusable, only a new login helps.
                tracing::error!(error = %e, token_id = %row.token_id, "Cannot decrypt refresh token");
                self.mark_needs_login(row).await?;
                return Ok(Attempt::NeedsLogin);
            }
        };
        let permit = match stop {
            Some(stop) => tokio::select! {
                permit = self.limiter.acquire() => permit,
                _ = stop.cancelled() => return Ok(Attempt::Skipped),
            },
            None => self.limiter.acquire().await,
        };
        if Instant::now() + self.http_timeout + CLAIM_MARGIN > deadline {
            return Ok(Attempt::Skipped);
        }
        let result = self.oidc.refresh(&refresh_token, &row.subject).await;
        drop(permit);
        match result {
            Ok(tokens) => {
                let Some(expires_at) = self.save(row.token_id, claim, &tokens).await? else {
                    // Cannot happen while leases outlast calls; if it does, the rotated token
                    // is lost and the next refresh will ask the user to log in again.
                    tracing::error!(token_id = %row.token_id, "Refresh claim lapsed during the call; result dropped");
                    return Ok(Attempt::Changed);
                };
                self.stats.record(Outcome::Ok);
                Ok(Attempt::Refreshed(Box::new(tokens), expires_at))
            }
            Err(e) if e.is_invalid_grant() => {
                if self.mark_needs_login(row).await? {
                    tracing::info!(token_id = %row.token_id, "Refresh token refused; the user must log in again");
                    self.stats.record(Outcome::InvalidGrant);
                    Ok(Attempt::NeedsLogin)
                } else {
                    tracing::info!(token_id = %row.token_id, "Refresh token refused but already replaced; using the new one");
                    self.stats.record(Outcome::RaceRecovered);
                    self.release(&[row.token_id], claim).await?;
                    Ok(Attempt::Changed)
                }
            }
            Err(e) => {
                let backoff = self.backoff(row.failure_count);
                tracing::warn!(error = %e, token_id = %row.token_id, failures = row.failure_count + 1,
                    retry_in_secs = backoff.as_secs_f64(), "Token refresh failed; backing off");
                self.stats.record(Outcome::TransientFailure);
                sqlx::query(
                    r#"
                    UPDATE oauth_tokens
                    SET refresh_status = 'retrying', failure_count = failure_count + 1,
                        next_attempt_at = now() + make_interval(secs => $3),
                        refresh_claim = NULL, refresh_claimed_until = NULL
                    WHERE token_id = $1 AND refresh_claim = $2
                    "#,
                )
                .bind(row.token_id)
                .bind(claim)
                .bind(backoff.as_secs_f64())
                .execute(&self.pool)
                .await?;
                Ok(Attempt::Transient(e))
            }
        }
    }

    /// Exponential backoff with jitter: base * 2^failures, capped, times 0.5..1.
    fn backoff(&self, failures: i32) -> Duration {
        let base = self.settings.backoff_base_secs.max(1) as f64;
        let cap = self.settings.backoff_max_secs.max(1) as f64;
        let exp = base * 2f64.powi(failures.clamp(0, 20));
        Duration::from_secs_f64(exp.min(cap) * rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// Stores refreshed tokens if `claim` still holds the row. A refresh answer without a new
    /// refresh token keeps the old one; groups from a refreshed ID token update the user (so
    /// a removed admin loses access without logging out). Returns the new expiry, or `None`
    /// if the claim was lost.
    async fn save(
        &self,
        token_id: Uuid,
        claim: Uuid,
        tokens: &TokenSet,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let sealed = tokens::seal(&self.cipher, token_id, tokens);
        let expires_at = tokens::expiry(tokens);
        let groups = tokens
            .claims
            .as_ref()
            .and_then(|c| c.additional_claims().groups.clone());
        let saved: i64 = sqlx::query_scalar(
            r#"
            WITH saved AS (
                UPDATE oauth_tokens
                SET key_id = $3, access_token = $4,
                    refresh_token = COALESCE($5, refresh_token),
                    id_token = COALESCE($6, id_token),
                    access_expires_at = $7, refresh_status = 'ok', failure_count = 0,
                    next_attempt_at = NULL, refresh_claim = NULL, refresh_claimed_until = NULL,
                    last_refreshed_at = now()
                WHERE token_id = $1 AND refresh_claim = $2
                RETURNING user_id
            ), regrouped AS (
                UPDATE users u SET groups = $8
                FROM saved
                WHERE u.user_id = saved.user_id AND $8::text[] IS NOT NULL
                  AND u.groups IS DISTINCT FROM $8::text[]
            )
            SELECT count(*) FROM saved
            "#,
        )
        .bind(token_id)
        .bind(claim)
        .bind(self.cipher.current_key_id())
        .bind(sealed.access)
        .bind(sealed.refresh)
        .bind(sealed.id)
        .bind(expires_at)
        .bind(groups)
        .fetch_one(&self.pool)
        .await?;
        Ok((saved == 1).then_some(expires_at))
    }

    /// Marks the login as needing a new login, unless its refresh token is no longer the one
    /// that was refused (another instance refreshed it meanwhile). Returns whether it marked.
    async fn mark_needs_login(&self, row: &Claimed) -> Result<bool, sqlx::Error> {
        let updated = sqlx::query(
            r#"
            UPDATE oauth_tokens
            SET refresh_status = 'needs_login', refresh_claim = NULL, refresh_claimed_until = NULL
            WHERE token_id = $1 AND refresh_token = $2
            "#,
        )
        .bind(row.token_id)
        .bind(&row.refresh_token)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// The in-process lock for one token's refresh.
    fn flight(&self, token_id: Uuid) -> Arc<Mutex<()>> {
        let mut map = self.in_flight.lock().expect("not poisoned");
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
        map.entry(token_id).or_default().clone()
    }

    /// An access token valid for at least [`USE_SKEW`], refreshed first if needed. `rejected`
    /// names the expiry of a token the provider has just refused (userinfo 401): that token is
    /// not reused even if it looks fresh. Concurrent callers wait for one refresh and share it.
    #[tracing::instrument(name = "Usable access token", skip(self))]
    pub async fn usable_access_token(
        &self,
        token_id: Uuid,
        rejected: Option<DateTime<Utc>>,
    ) -> Result<StoredTokens, AccessError> {
        let skew = chrono::Duration::from_std(USE_SKEW).expect("small");
        let fresh = |t: &StoredTokens| {
            t.access_expires_at > Utc::now() + skew && Some(t.access_expires_at) != rejected
        };
        let still_valid = |t: &StoredTokens| {
            t.access_expires_at > Utc::now() && Some(t.access_expires_at) != rejected
        };
        let current = self.load(token_id).await?;
        if fresh(&current) {
            return Ok(current);
        }
        let flight = self.flight(token_id);
        let _in_flight = flight.lock().await;
        let give_up = Instant::now() + 2 * self.http_timeout + CLAIM_MARGIN;
        loop {
            let current = self.load(token_id).await?;
            if fresh(&current) {
                return Ok(current);
            }
            let backing_off = current.refresh_status == "retrying"
                && current.next_attempt_at.is_some_and(|at| at > Utc::now());
            if current.refresh_token.is_none() || backing_off {
                if still_valid(&current) {
                    return Ok(current);
                }
                if backing_off {
                    return Err(AccessError::Provider(OidcError::Unavailable(
                        "refresh is backing off after provider failures".into(),
                    )));
                }
                sqlx::query(
                    "UPDATE oauth_tokens SET refresh_status = 'needs_login' WHERE token_id = $1",
                )
                .bind(token_id)
                .execute(&self.pool)
                .await?;
                return Err(AccessError::NeedsLogin);
            }
            let claim = Uuid::new_v4();
            let claimed_at = Instant::now();
            let row: Option<Claimed> = sqlx::query_as(concat!(
                "
                UPDATE oauth_tokens t
                SET refresh_claim = $2,
                    refresh_claimed_until = now() + make_interval(secs => $3)
                FROM users u
                WHERE t.token_id = $1 AND u.user_id = t.user_id
                  AND t.access_expires_at = $4 AND t.refresh_token IS NOT NULL
                  AND t.refresh_status <> 'needs_login'
                  AND (t.refresh_claimed_until IS NULL OR t.refresh_claimed_until < now())
                ",
                claimed_row!()
            ))
            .bind(token_id)
            .bind(claim)
            .bind(self.settings.lease_secs as f64)
            .bind(current.access_expires_at)
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else {
                // Another instance holds the claim, or refreshed since we read the row.
                if Instant::now() > give_up {
                    return if still_valid(&current) {
                        Ok(current)
                    } else {
                        Err(AccessError::Provider(OidcError::Unavailable(
                            "another instance's refresh did not finish in time".into(),
                        )))
                    };
                }
                tokio::time::sleep(WAIT_POLL).await;
                continue;
            };
            match self
                .attempt(&row, claim, claimed_at + self.lease(), None)
                .await?
            {
                Attempt::Refreshed(tokens, access_expires_at) => {
                    // Exactly what was just written; no need to read and decrypt it back.
                    return Ok(StoredTokens {
                        access_token: tokens.access_token,
                        refresh_token: tokens.refresh_token.or(current.refresh_token),
                        id_token: tokens.id_token.or(current.id_token),
                        access_expires_at,
                        refresh_status: "ok".to_owned(),
                        next_attempt_at: None,
                        ..current
                    });
                }
                Attempt::NeedsLogin => return Err(AccessError::NeedsLogin),
                Attempt::Transient(e) if still_valid(&current) => {
                    tracing::warn!(error = %e, "Refresh failed; using the access token while it lasts");
                    return Ok(current);
                }
                Attempt::Transient(e) => return Err(AccessError::Provider(e)),
                Attempt::Changed | Attempt::Skipped => continue,
            }
        }
    }

    async fn load(&self, token_id: Uuid) -> Result<StoredTokens, AccessError> {
        let tokens = tokens::load(&self.pool, &self.cipher, token_id)
            .await?
            .ok_or(AccessError::Gone)?;
        if tokens.refresh_status == "needs_login" {
            return Err(AccessError::NeedsLogin);
        }
        Ok(tokens)
    }
}
