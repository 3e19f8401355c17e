//! Keeping access tokens fresh: a background refresher that renews tokens before they expire
//! ([`Refresher::run_until_stopped`]), and on-demand refresh for the request that finds one
//! expired anyway ([`Refresher::usable_access_token`], in `on_demand`).
//!
//! Providers rotate refresh tokens: each can be used once, and a reuse revokes the whole
//! family. So a token row is refreshed only under a *claim* (see the token store's
//! `claims`): a short lease, renewed while the call runs, so a crashed instance's claims lapse
//! within seconds. Whoever holds it calls the provider outside any transaction, lets the call
//! run to its end (`refresh.call_timeout_secs`) whoever is waiting, and stores the answer. A
//! call that was sent but never answered is not sent again with the same token. Within one
//! process, requests for the same token share one refresh (single flight), which runs on the
//! main runtime: a page may stop waiting for it, the refresh goes on.

mod limiter;
mod on_demand;
mod stats;

pub use on_demand::{AccessError, USE_SKEW};
pub use stats::{Outcome, RefreshMetrics, RefreshStats};

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream};
use rand::Rng;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::oidc::{OidcError, Providers, Refreshed};
use super::revocation::Revoker;
use super::tokens::{self, Claimed};
use crate::configuration::RefreshSettings;
use crate::crypto::TokenCipher;
use limiter::Limiter;
use on_demand::Flight;

/// How long a refresh that answered may keep retrying its write while Postgres is away: longer
/// than an HA manager takes to promote a standby (10-30 s), since the answer may be the only
/// copy of a rotated refresh token.
const WRITE_RETRY_FOR: Duration = Duration::from_secs(60);
const WRITE_RETRY_EVERY: Duration = Duration::from_millis(500);

/// What became of one claimed row.
enum Attempt {
    Refreshed,
    /// A transient failure: backing off.
    Transient,
    NeedsLogin,
    /// The answer never came; the refresh token may be spent and was dropped.
    Spent,
    /// The row changed under us (another instance refreshed it): read it again.
    Changed,
    /// Not attempted (shutting down, or the claim lapsed while waiting): release the claim.
    Skipped,
}

/// The two pools the refresher uses. Request code reads token rows through `requests`; every
/// claim, call and write runs on the main runtime through `background`, a pool of its own whose
/// connections outlive the HTTP workers (which stop first on shutdown).
#[derive(Clone)]
pub struct RefresherPools {
    pub requests: PgPool,
    pub background: PgPool,
}

pub struct Refresher {
    pool: PgPool,
    background: PgPool,
    cipher: Arc<TokenCipher>,
    providers: Arc<Providers>,
    /// Woken when a refresh finds its login ended and queues the new tokens.
    revoker: Arc<Revoker>,
    settings: RefreshSettings,
    limiter: Limiter,
    stats: RefreshStats,
    /// This process's on-demand refreshes in progress, one per token (single flight).
    flights: SyncMutex<HashMap<Uuid, watch::Receiver<Option<Flight>>>>,
    /// When the provider last refused the shop's own credentials, and what it said.
    client_rejected: SyncMutex<Option<(DateTime<Utc>, String)>>,
    /// Every on-demand refresh task, so shutdown can wait for them.
    tracker: TaskTracker,
    /// The main runtime: refresh calls run there, never on an HTTP worker's runtime, so a
    /// worker stopping cannot cut a call (and its write) short.
    runtime: Handle,
}

impl Refresher {
    /// Must be called on the runtime that outlives the HTTP workers (the main one).
    pub fn new(
        pools: RefresherPools,
        cipher: Arc<TokenCipher>,
        providers: Arc<Providers>,
        revoker: Arc<Revoker>,
        settings: RefreshSettings,
        metrics: RefreshMetrics,
    ) -> Self {
        Self {
            limiter: Limiter::new(settings.max_concurrency, settings.max_per_sec),
            pool: pools.requests,
            background: pools.background,
            cipher,
            providers,
            revoker,
            settings,
            stats: RefreshStats::new(metrics),
            flights: SyncMutex::new(HashMap::new()),
            client_rejected: SyncMutex::new(None),
            tracker: TaskTracker::new(),
            runtime: Handle::current(),
        }
    }

    pub fn stats(&self) -> &RefreshStats {
        &self.stats
    }

    /// When (and with what error) the provider last refused the shop's client credentials
    /// on a refresh, if it did in this process's lifetime.
    pub fn client_rejected(&self) -> Option<(DateTime<Utc>, String)> {
        self.client_rejected.lock().expect("not poisoned").clone()
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
            if let Err(e) = self.stats.flush(&self.background).await {
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
        let _ = self.stats.flush(&self.background).await;
        tracing::info!("Token refresher stopped");
    }

    /// Waits (up to one call timeout) for the on-demand refreshes still running, so their
    /// answers are written before the process exits. New ones are still accepted meanwhile.
    pub async fn finish_in_flight(&self) {
        self.tracker.close();
        let limit = self.settings.call_timeout() + self.settings.lease();
        if tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("On-demand refreshes still running at shutdown");
        }
        let _ = self.stats.flush(&self.background).await;
    }

    /// One scan: claims up to `refresh.batch_size` due tokens and refreshes them with bounded
    /// concurrency. Returns how many were claimed.
    #[tracing::instrument(name = "Refresh due tokens", skip_all, fields(claimed))]
    pub async fn refresh_due(&self, stop: &CancellationToken) -> Result<usize, sqlx::Error> {
        let claim = Uuid::new_v4();
        let rows = tokens::claim_due(
            &self.background,
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
        let unfinished: Vec<Uuid> = stream::iter(rows)
            .map(|row| async move {
                match self.attempt(&row, claim, Some(stop)).await {
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
            tokens::release(&self.background, &unfinished, claim).await?;
        }
        Ok(claimed)
    }

    /// Refreshes one claimed row and records the result, all guarded by the claim.
    async fn attempt(
        &self,
        row: &Claimed,
        claim: Uuid,
        stop: Option<&CancellationToken>,
    ) -> Result<Attempt, sqlx::Error> {
        let pool = &self.background;
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
                tokens::mark_refused(pool, row).await?;
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
        // The claim may have lapsed while the row waited for its turn; then another instance
        // may hold it, and the token must not be sent.
        if !tokens::renew(pool, row.token_id, claim, self.settings.lease_secs).await? {
            return Ok(Attempt::Skipped);
        }
        let result = self.call_keeping_claim(row, claim, &refresh_token).await;
        drop(permit);
        match result {
            Ok(mut refreshed) => {
                let answered = Instant::now();
                // What the provider did not replace is kept, re-sealed under the current key.
                let rotated = refreshed.tokens.refresh_token.is_some();
                refreshed.tokens.refresh_token.get_or_insert(refresh_token);
                if refreshed.tokens.id_token.is_none() {
                    refreshed.tokens.id_token = self.kept_id_token(row);
                }
                let saved = self.save(row, claim, &refreshed, rotated).await?;
                self.stats.observe_write(answered.elapsed());
                if saved.is_none() {
                    // A logout or revoke that won the race: the new tokens are revoked too,
                    // nothing is written back for a login that is gone.
                    if tokens::queue_if_ended(
                        pool,
                        &self.cipher,
                        row.token_id,
                        &row.issuer,
                        &refreshed.tokens,
                    )
                    .await?
                    {
                        tracing::info!(token_id = %row.token_id, "Refreshed a login that ended meanwhile; its new tokens are queued for revocation");
                        self.revoker.nudge();
                        return Ok(Attempt::Changed);
                    }
                    tracing::warn!(token_id = %row.token_id, "Refreshed, but the login moved on meanwhile; answer not stored");
                    return Ok(Attempt::Changed);
                }
                self.stats.record(Outcome::Ok);
                Ok(Attempt::Refreshed)
            }
            Err(e) if e.is_invalid_grant() => {
                if tokens::mark_refused(pool, row).await? {
                    tracing::info!(token_id = %row.token_id, "Refresh token refused; the user must log in again");
                    self.stats.record(Outcome::InvalidGrant);
                    Ok(Attempt::NeedsLogin)
                } else {
                    tracing::info!(token_id = %row.token_id, "Refresh token refused but already replaced; using the new one");
                    self.stats.record(Outcome::RaceRecovered);
                    tokens::release(pool, &[row.token_id], claim).await?;
                    Ok(Attempt::Changed)
                }
            }
            Err(OidcError::NoAnswer(e)) if row.refresh_rotates != Some(false) => {
                // Sent, never answered: a rotating provider may have spent the token. Sending
                // it again could make the provider revoke the whole grant.
                tracing::error!(error = %e, token_id = %row.token_id,
                    "Refresh sent but never answered; its refresh token may be spent and is dropped");
                self.stats.record(Outcome::NoAnswer);
                tokens::drop_refresh_token(pool, row, claim).await?;
                Ok(Attempt::Spent)
            }
            Err(OidcError::Refused { error, description })
                if matches!(error.as_str(), "invalid_client" | "unauthorized_client") =>
            {
                // Our configuration is at fault, not the login: keep it and retry.
                let backoff = self.backoff(row.failure_count);
                tracing::error!(%error, description = description.as_deref().unwrap_or(""),
                    "The provider refuses the shop's client credentials; check the provider's client_id and its secret or client key");
                self.stats.record(Outcome::ClientRejected);
                *self.client_rejected.lock().expect("not poisoned") = Some((Utc::now(), error));
                tokens::record_failure(pool, row.token_id, claim, backoff).await?;
                Ok(Attempt::Transient)
            }
            Err(e) => {
                let backoff = self.backoff(row.failure_count);
                tracing::warn!(error = %e, token_id = %row.token_id, failures = row.failure_count + 1,
                    retry_in_secs = backoff.as_secs_f64(), "Token refresh failed; backing off");
                self.stats.record(Outcome::TransientFailure);
                tokens::record_failure(pool, row.token_id, claim, backoff).await?;
                Ok(Attempt::Transient)
            }
        }
    }

    /// The provider call, bounded by `refresh.call_timeout_secs` (JWKS refetch included),
    /// renewing the claim every third of a lease while it runs.
    async fn call_keeping_claim(
        &self,
        row: &Claimed,
        claim: Uuid,
        refresh_token: &SecretString,
    ) -> Result<Refreshed, OidcError> {
        // A provider no longer configured: nothing can refresh this login; it needs a new one.
        let Some(oidc) = self.providers.by_issuer(&row.issuer) else {
            return Err(OidcError::Refused {
                error: "invalid_grant".into(),
                description: Some(format!(
                    "no configured provider has the issuer {}",
                    row.issuer
                )),
            });
        };
        let call = tokio::time::timeout(
            self.settings.call_timeout(),
            oidc.refresh(refresh_token, &row.subject),
        );
        tokio::pin!(call);
        let every = (self.settings.lease() / 3).max(Duration::from_millis(200));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            tokio::select! {
                result = &mut call => {
                    return result.unwrap_or_else(|_| Err(OidcError::NoAnswer(format!(
                        "no answer within {} s", self.settings.call_timeout_secs
                    ))));
                }
                _ = heartbeat.tick() => {
                    match tokens::renew(&self.background, row.token_id, claim, self.settings.lease_secs).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(token_id = %row.token_id, "Refresh claim lapsed during the call"),
                        Err(e) => tracing::warn!(error = %e, token_id = %row.token_id, "Could not renew a refresh claim"),
                    }
                }
            }
        }
    }

    /// Stores an answer, retrying for a while if Postgres is away: the answer may be the only
    /// copy of a rotated refresh token.
    async fn save(
        &self,
        row: &Claimed,
        claim: Uuid,
        refreshed: &Refreshed,
        rotated: bool,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let give_up = Instant::now() + WRITE_RETRY_FOR;
        loop {
            match tokens::save_refreshed(
                &self.background,
                &self.cipher,
                &self.settings.cadence(),
                row,
                claim,
                refreshed,
                rotated,
            )
            .await
            {
                Err(e) if crate::db::is_unavailable(&e) && Instant::now() < give_up => {
                    tracing::warn!(error = %e, token_id = %row.token_id, "Cannot store a refresh yet; retrying");
                    tokio::time::sleep(WRITE_RETRY_EVERY).await;
                }
                saved => return saved,
            }
        }
    }

    /// The row's ID token, decrypted so it can be sealed again under the current key; `None`
    /// (and the hint for RP-initiated logout lost) if it cannot be read.
    fn kept_id_token(&self, row: &Claimed) -> Option<SecretString> {
        let sealed = row.id_token.as_deref()?;
        tokens::decrypt_id_token(&self.cipher, row.token_id, &row.key_id, sealed)
            .inspect_err(|e| tracing::warn!(error = %e, token_id = %row.token_id, "Cannot decrypt the kept ID token"))
            .ok()
    }

    /// Exponential backoff with jitter: base * 2^failures, capped, times 0.5..1.
    fn backoff(&self, failures: i32) -> Duration {
        let base = self.settings.backoff_base_secs.max(1) as f64;
        let cap = self.settings.backoff_max_secs.max(1) as f64;
        let exp = base * 2f64.powi(failures.clamp(0, 20));
        Duration::from_secs_f64(exp.min(cap) * rand::thread_rng().gen_range(0.5..=1.0))
    }
}
