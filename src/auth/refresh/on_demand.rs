//! On-demand refresh: the request that finds its access token expiring refreshes it under the
//! same claim the background refresher uses, or waits for whoever holds it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use uuid::Uuid;

use super::{Attempt, CLAIM_MARGIN, Refresher};
use crate::auth::oidc::OidcError;
use crate::auth::tokens::{self, RefreshStatus, StoredTokens, TokenStoreError};

/// An access token this close to expiry is refreshed before a request uses it.
pub const USE_SKEW: Duration = Duration::from_secs(5);
/// How often a request waiting for another instance's refresh looks at the row again.
const WAIT_POLL: Duration = Duration::from_millis(100);

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
            let claim = Uuid::new_v4();
            let claimed_at = Instant::now();
            let row = tokens::claim_expired(
                &self.pool,
                token_id,
                claim,
                self.settings.lease_secs,
                current.access_expires_at,
            )
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
                Attempt::Refreshed(refreshed, access_expires_at) => {
                    // Exactly what was just written; no need to read and decrypt it back.
                    let new = refreshed.tokens;
                    return Ok(StoredTokens {
                        access_token: new.access_token,
                        refresh_token: new.refresh_token.or(current.refresh_token),
                        id_token: new.id_token.or(current.id_token),
                        access_expires_at,
                        refresh_status: RefreshStatus::Ok,
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
        if tokens.refresh_status == RefreshStatus::NeedsLogin {
            return Err(AccessError::NeedsLogin);
        }
        Ok(tokens)
    }
}
