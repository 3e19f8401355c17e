//! On-demand refresh: the request that finds its access token expiring gets it refreshed by
//! this process's one refresh of that token (started if none runs), under the same kind of
//! claim the background refresher takes. A page waits for it at most [`PAGE_WAIT`]: then it
//! uses the access token while it is valid, or says the provider is unavailable (503), and the
//! refresh runs on to its end.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Attempt, Refresher};
use crate::auth::oidc::OidcError;
use crate::auth::tokens::{self, RefreshStatus, StoredTokens, TokenStoreError};

/// An access token this close to expiry is refreshed before a request uses it.
pub const USE_SKEW: Duration = Duration::from_secs(5);
/// The longest a page waits for a refresh, its own or another instance's.
pub const PAGE_WAIT: Duration = Duration::from_secs(2);
/// How often a request waiting for another instance's refresh looks at the row again.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// How one on-demand refresh ended, for the requests waiting on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flight {
    /// It ran; the row holds the result.
    Done,
    /// Someone else (another instance) holds the claim.
    Busy,
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
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(TokenStoreError),
}

impl From<TokenStoreError> for AccessError {
    fn from(e: TokenStoreError) -> Self {
        match e {
            TokenStoreError::Database(e) => AccessError::Database(e),
            other => AccessError::Store(other),
        }
    }
}

impl Refresher {
    /// An access token valid for at least [`USE_SKEW`], refreshed first if needed. `rejected`
    /// names the expiry of a token the provider has just refused (userinfo 401): that token is
    /// not reused even if it looks fresh. Concurrent callers share one refresh.
    #[tracing::instrument(name = "Usable access token", skip(self))]
    pub async fn usable_access_token(
        self: &Arc<Self>,
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
        let deadline = Instant::now() + PAGE_WAIT;
        // The expiry a refresh of ours started from: a new token after it is the answer, even
        // one shorter-lived than `USE_SKEW`.
        let mut refreshed_from = None;
        loop {
            let current = self.load(token_id).await?;
            let renewed = refreshed_from.is_some_and(|seen| current.access_expires_at != seen);
            if fresh(&current) || (renewed && still_valid(&current)) {
                return Ok(current);
            }
            if Instant::now() >= deadline {
                return give_up(current, still_valid);
            }
            let backing_off = current.refresh_status == RefreshStatus::Retrying
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
                tokens::mark_needs_login(&self.pool, token_id).await?;
                return Err(AccessError::NeedsLogin);
            }
            let mut flight = self.flight(token_id, current.access_expires_at);
            let ended = tokio::time::timeout_at(deadline, flight.wait_for(Option::is_some)).await;
            let outcome = match ended {
                Ok(Ok(outcome)) => *outcome,
                // The refresh runs on; this page stops waiting for it.
                _ => return give_up(current, still_valid),
            };
            refreshed_from = Some(current.access_expires_at);
            if outcome == Some(Flight::Busy) {
                if Instant::now() + WAIT_POLL > deadline {
                    return give_up(current, still_valid);
                }
                tokio::time::sleep(WAIT_POLL).await;
            }
        }
    }

    /// This process's refresh of `token_id`: the one running, or a new one on the main
    /// runtime, which runs to its end whether or not anyone still waits for it.
    fn flight(
        self: &Arc<Self>,
        token_id: Uuid,
        seen_expiry: DateTime<Utc>,
    ) -> watch::Receiver<Option<Flight>> {
        let mut flights = self.flights.lock().expect("not poisoned");
        if let Some(running) = flights.get(&token_id) {
            return running.clone();
        }
        let (done, running) = watch::channel(None);
        flights.insert(token_id, running.clone());
        let this = self.clone();
        self.tracker.spawn_on(
            async move {
                let outcome = this.refresh_one(token_id, seen_expiry).await;
                this.flights.lock().expect("not poisoned").remove(&token_id);
                let _ = done.send(Some(outcome));
            },
            &self.runtime,
        );
        running
    }

    /// Claims `token_id` (unless someone else holds it or it was refreshed since the request
    /// saw `seen_expiry`) and refreshes it.
    async fn refresh_one(&self, token_id: Uuid, seen_expiry: DateTime<Utc>) -> Flight {
        let claim = Uuid::new_v4();
        let claimed = tokens::claim_expired(
            &self.background,
            token_id,
            claim,
            self.settings.lease_secs,
            seen_expiry,
        )
        .await;
        match claimed {
            Ok(Some(row)) => {
                match self.attempt(&row, claim, None).await {
                    Ok(Attempt::Skipped) => {
                        let _ = tokens::release(&self.background, &[token_id], claim).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, %token_id, "On-demand refresh not recorded");
                        let _ = tokens::release(&self.background, &[token_id], claim).await;
                    }
                }
                Flight::Done
            }
            // Refreshed since, or claimed by another instance: the caller reads the row again.
            Ok(None) => Flight::Busy,
            Err(e) => {
                tracing::warn!(error = %e, %token_id, "Could not claim a token for refresh");
                Flight::Done
            }
        }
    }

    async fn load(&self, token_id: Uuid) -> Result<StoredTokens, AccessError> {
        let tokens = tokens::load(&self.pool, &self.cipher, token_id)
            .await?
            .ok_or(AccessError::Gone)?;
        if tokens.refresh_status == RefreshStatus::NeedsLogin {
            return Err(AccessError::NeedsLogin);
        }
        Ok(tokens)
    }
}

/// The page stops waiting: the access token while it lasts, else "unavailable, retrying".
fn give_up(
    current: StoredTokens,
    still_valid: impl Fn(&StoredTokens) -> bool,
) -> Result<StoredTokens, AccessError> {
    if still_valid(&current) {
        Ok(current)
    } else {
        Err(AccessError::Provider(OidcError::Unavailable(
            "the token's refresh is still under way".into(),
        )))
    }
}
