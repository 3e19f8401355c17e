//! Sends the revocation outbox to the provider (RFC 7009). Every instance runs a sender; each
//! claims what is due under a short lease (`FOR UPDATE SKIP LOCKED`), so a revocation is sent
//! by one instance at a time and, when an instance dies, by another after the lease. A login
//! that ends on this instance wakes its sender at once ([`Revoker::nudge`]); otherwise it looks
//! every [`SCAN_EVERY`].

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::oidc::{OidcError, Providers};
use crate::auth::tokens::{self, QueuedRevocation};
use crate::crypto::TokenCipher;

/// How often a sender looks for due revocations when nothing woke it.
pub const SCAN_EVERY: Duration = Duration::from_secs(10);
/// Revocations claimed per scan (a full batch is followed at once by the next).
const BATCH: i64 = 50;
/// How long a claim lasts: longer than one call (`oidc.http_timeout_secs` is at most 30 s).
const LEASE_SECS: f64 = 60.0;
/// After this many failed attempts (about a day with the backoff below) a revocation is
/// dropped, with a warning: the provider's own expiry of the token is all that is left.
pub const MAX_ATTEMPTS: i32 = 16;
const BACKOFF_BASE_SECS: f64 = 5.0;
const BACKOFF_MAX_SECS: f64 = 3600.0;

pub struct Revoker {
    pool: PgPool,
    cipher: Arc<TokenCipher>,
    providers: Arc<Providers>,
    wake: Notify,
}

/// What one pass sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    pub sent: u64,
    pub retrying: u64,
    pub dropped: u64,
}

impl Revoker {
    pub fn new(pool: PgPool, cipher: Arc<TokenCipher>, providers: Arc<Providers>) -> Self {
        Self {
            pool,
            cipher,
            providers,
            wake: Notify::new(),
        }
    }

    /// Something was queued: send it now rather than at the next scan.
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Sends what is due, batch after batch, until the queue has nothing due.
    pub async fn send_due(&self) -> Result<SendReport, sqlx::Error> {
        let mut total = SendReport::default();
        loop {
            let batch = tokens::claim_revocations(&self.pool, BATCH, LEASE_SECS).await?;
            let full = batch.len() as i64 == BATCH;
            for queued in batch {
                match self.send(&queued).await {
                    Outcome::Sent => total.sent += 1,
                    Outcome::Retry => total.retrying += 1,
                    Outcome::Dropped => total.dropped += 1,
                }
            }
            if !full {
                return Ok(total);
            }
        }
    }

    async fn send(&self, queued: &QueuedRevocation) -> Outcome {
        let id = queued.revocation_id;
        let outcome = match queued.open(&self.cipher) {
            Err(e) => {
                tracing::warn!(error = %e, revocation_id = %id, "Cannot decrypt a queued revocation (its key is gone); dropped");
                Outcome::Dropped
            }
            Ok(token) => match self.revoke(queued, &token).await {
                Ok(()) => Outcome::Sent,
                Err(e @ (OidcError::Refused { .. } | OidcError::InvalidToken(_))) => {
                    tracing::warn!(error = %e, revocation_id = %id, reason = %queued.reason, "The provider refused a revocation; dropped");
                    Outcome::Dropped
                }
                Err(e) if queued.attempts >= MAX_ATTEMPTS => {
                    tracing::warn!(error = %e, revocation_id = %id, attempts = queued.attempts, "Revocation still failing; giving up");
                    Outcome::Dropped
                }
                Err(e) => {
                    let next = Utc::now() + backoff(queued.attempts);
                    if let Err(db) =
                        tokens::revocation_failed(&self.pool, id, &e.to_string(), next).await
                    {
                        // The claim lapses by itself; the next scan tries again.
                        tracing::warn!(error = %db, revocation_id = %id, "Cannot record a failed revocation");
                    }
                    tracing::info!(error = %e, revocation_id = %id, attempts = queued.attempts, "Revocation failed; will retry");
                    return Outcome::Retry;
                }
            },
        };
        if let Err(e) = tokens::revocation_done(&self.pool, id).await {
            tracing::warn!(error = %e, revocation_id = %id, "Cannot remove a sent revocation; it may be sent again");
        }
        outcome
    }

    /// Sends one revocation to the provider of its login.
    async fn revoke(
        &self,
        queued: &QueuedRevocation,
        token: &secrecy::SecretString,
    ) -> Result<(), OidcError> {
        match self.providers.of_login(queued.issuer.as_deref()) {
            Some(oidc) => oidc.revoke(token, &queued.token_type).await,
            // Its provider is no longer configured: nowhere to send it.
            None => Err(OidcError::Refused {
                error: "no configured provider has this login's issuer".into(),
                description: None,
            }),
        }
    }

    /// Every [`SCAN_EVERY`], or at once when nudged, until `stop` is cancelled. What is still
    /// queued then stays in Postgres for the next start or another instance.
    pub async fn run_until_stopped(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(SCAN_EVERY) => {}
            }
            match self.send_due().await {
                Ok(r) if r != SendReport::default() => {
                    tracing::info!(
                        sent = r.sent,
                        retrying = r.retrying,
                        dropped = r.dropped,
                        "Revocations sent to the provider"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot read the revocation queue; will retry")
                }
            }
        }
    }
}

enum Outcome {
    Sent,
    Retry,
    Dropped,
}

/// base × 2^(attempts − 1), capped, times 0.5..1.
fn backoff(attempts: i32) -> chrono::Duration {
    let exp = BACKOFF_BASE_SECS * 2f64.powi((attempts - 1).clamp(0, 20));
    let secs = exp.min(BACKOFF_MAX_SECS) * rand::thread_rng().gen_range(0.5..=1.0);
    chrono::Duration::milliseconds((secs * 1000.0) as i64)
}
