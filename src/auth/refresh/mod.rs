//! Keeping access tokens fresh: a background refresher that renews tokens before they expire
//! ([`Refresher::run_until_stopped`]), and on-demand refresh for the request that finds one
//! expired anyway ([`Refresher::usable_access_token`], in `on_demand`).
//!
//! Providers rotate refresh tokens: each can be used once, and a reuse revokes the whole
//! family. So a token row is refreshed only under a *claim* (see the token store's
//! `claims`). Whoever holds it calls the provider outside any transaction and stores the
//! result only if the claim is still its own. Claims lapse by themselves, so a crashed
//! instance holds nothing for long. Within one process, requests for the same token also
//! queue on an in-memory lock (single flight), so fifty concurrent requests cost one refresh
//! and one wait each, not fifty polls of the database.

mod limiter;
mod on_demand;
mod stats;

pub use on_demand::{AccessError, USE_SKEW};
pub use stats::{Outcome, RefreshStats};

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream};
use prometheus::IntCounterVec;
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::oidc::{Oidc, OidcError, Refreshed};
use super::tokens::{self, Claimed};
use crate::configuration::RefreshSettings;
use crate::crypto::TokenCipher;
use limiter::Limiter;

/// A provider call is started only if the claim outlives it by this much.
const CLAIM_MARGIN: Duration = Duration::from_secs(2);

/// What became of one claimed row.
enum Attempt {
    Refreshed(Box<Refreshed>, DateTime<Utc>),
    Transient(OidcError),
    NeedsLogin,
    /// The row changed under us (another instance refreshed it): read it again.
    Changed,
    /// Not attempted (shutting down, or the claim would lapse mid-call): release the claim.
    Skipped,
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
        let rows = tokens::claim_due(
            &self.pool,
            self.settings.lead_secs,
            self.settings.batch_size,
            claim,
            self.settings.lease_secs,
        )
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
            tokens::release(&self.pool, &unfinished, claim).await?;
        }
        Ok(claimed)
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
                tokens::mark_refused(&self.pool, row).await?;
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
            Ok(refreshed) => {
                let saved = tokens::save_refreshed(
                    &self.pool,
                    &self.cipher,
                    row.token_id,
                    claim,
                    &refreshed,
                )
                .await?;
                let Some(expires_at) = saved else {
                    // Cannot happen while leases outlast calls; if it does, the rotated token
                    // is lost and the next refresh will ask the user to log in again.
                    tracing::error!(token_id = %row.token_id, "Refresh claim lapsed during the call; result dropped");
                    return Ok(Attempt::Changed);
                };
                self.stats.record(Outcome::Ok);
                Ok(Attempt::Refreshed(Box::new(refreshed), expires_at))
            }
            Err(e) if e.is_invalid_grant() => {
                if tokens::mark_refused(&self.pool, row).await? {
                    tracing::info!(token_id = %row.token_id, "Refresh token refused; the user must log in again");
                    self.stats.record(Outcome::InvalidGrant);
                    Ok(Attempt::NeedsLogin)
                } else {
                    tracing::info!(token_id = %row.token_id, "Refresh token refused but already replaced; using the new one");
                    self.stats.record(Outcome::RaceRecovered);
                    tokens::release(&self.pool, &[row.token_id], claim).await?;
                    Ok(Attempt::Changed)
                }
            }
            Err(e) => {
                let backoff = self.backoff(row.failure_count);
                tracing::warn!(error = %e, token_id = %row.token_id, failures = row.failure_count + 1,
                    retry_in_secs = backoff.as_secs_f64(), "Token refresh failed; backing off");
                self.stats.record(Outcome::TransientFailure);
                tokens::record_failure(&self.pool, row.token_id, claim, backoff).await?;
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

    /// The in-process lock for one token's refresh.
    fn flight(&self, token_id: Uuid) -> Arc<Mutex<()>> {
        let mut map = self.in_flight.lock().expect("not poisoned");
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
        map.entry(token_id).or_default().clone()
    }
}
