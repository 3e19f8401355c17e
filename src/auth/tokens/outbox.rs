//! `revocation_outbox`: tokens of ended logins on their way to the provider's revocation
//! endpoint (RFC 7009). Every statement that ends a login queues its tokens in the same
//! statement ([`queue_from!`]), so no ended login is forgotten by a crash or a restart; the
//! sender (`auth::revocation`) claims what is due with `FOR UPDATE SKIP LOCKED` from any
//! instance and reports back here.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{aad, seal};
use crate::auth::oidc::TokenSet;
use crate::crypto::{CipherError, TokenCipher};
use crate::db::text_enum;

text_enum! {
    /// Why a login ended (`revocation_outbox.reason`).
    pub enum EndReason {
        /// The shopper logged out.
        Logout = "logout",
        /// An admin revoked the session or all of the user's sessions.
        AdminRevoke = "admin_revoke",
        /// The provider said the session ended there (back-channel logout).
        Backchannel = "backchannel",
        /// The session expired and cleanup removed it.
        Expired = "expired",
        /// A new login completed in the same browser session.
        Replaced = "replaced",
        /// The session that held it was never saved or was dropped.
        Orphaned = "orphaned",
        /// A refresh answered after its login had ended: its new tokens are revoked too.
        EndedDuringRefresh = "ended_during_refresh",
        /// The shopper signed it out from their devices page.
        SignedOut = "signed_out",
        /// A newer login of the same user went over the per-user session limit.
        SessionLimit = "session_limit",
    }
}

/// Queues the refresh token and the still-valid access token of the rows of `$gone` (a CTE
/// returning `token_id`, `issuer`, `key_id`, `access_token`, `refresh_token`, `access_expires_at`,
/// `refresh_status`) with the reason in parameter `$reason`. A refresh token the provider has
/// already refused (`needs_login`) is not sent again.
macro_rules! queue_from {
    ($gone:literal, $reason:literal) => {
        concat!(
            "queued AS (
               INSERT INTO revocation_outbox
                   (revocation_id, token_id, issuer, key_id, token_type, token, reason)
               SELECT gen_random_uuid(), g.token_id, g.issuer, g.key_id, v.token_type, v.token, ",
            $reason,
            "
               FROM ",
            $gone,
            " g
               CROSS JOIN LATERAL (VALUES
                   ('refresh_token',
                    CASE WHEN g.refresh_status <> 'needs_login' THEN g.refresh_token END),
                   ('access_token',
                    CASE WHEN g.access_expires_at > now() THEN g.access_token END)
               ) AS v(token_type, token)
               WHERE v.token IS NOT NULL
             )"
        )
    };
}
pub(crate) use queue_from;

/// Queues the tokens a refresh returned for a login that ended while the call was in flight
/// (logout, revoke): nothing is written back for it, and the provider forgets them too.
/// The row lock waits for a delete still being committed, so the answer is certain.
/// Returns whether the login had ended (and the tokens were queued).
pub(crate) async fn queue_if_ended(
    pool: &PgPool,
    cipher: &TokenCipher,
    token_id: Uuid,
    issuer: &str,
    tokens: &TokenSet,
) -> Result<bool, sqlx::Error> {
    let sealed = seal(cipher, token_id, tokens);
    let queued: i64 = crate::db::query_scalar(
        r#"
        WITH still AS (
            SELECT token_id FROM oauth_tokens WHERE token_id = $1 FOR SHARE
        ), queued AS (
            INSERT INTO revocation_outbox
                (revocation_id, token_id, issuer, key_id, token_type, token, reason)
            SELECT gen_random_uuid(), $1, $6, $2, v.token_type, v.token, $5
            FROM (VALUES ('refresh_token', $3::bytea), ('access_token', $4::bytea))
                 AS v(token_type, token)
            WHERE v.token IS NOT NULL AND NOT EXISTS (SELECT 1 FROM still)
            RETURNING 1
        )
        SELECT count(*) FROM queued
        "#,
    )
    .bind(token_id)
    .bind(cipher.current_key_id())
    .bind(sealed.refresh)
    .bind(sealed.access)
    .bind(EndReason::EndedDuringRefresh)
    .bind(issuer)
    .fetch_one(pool)
    .await?;
    Ok(queued > 0)
}

/// A queued revocation, still sealed.
#[derive(sqlx::FromRow)]
pub struct QueuedRevocation {
    pub revocation_id: Uuid,
    token_id: Uuid,
    /// Where it goes (`None`: queued by a binary that did not record it; the first provider).
    pub issuer: Option<String>,
    key_id: String,
    pub token_type: String,
    token: Vec<u8>,
    pub reason: EndReason,
    /// Attempts so far, this one included.
    pub attempts: i32,
}

impl QueuedRevocation {
    pub fn open(&self, cipher: &TokenCipher) -> Result<SecretString, CipherError> {
        let column = if self.token_type == "refresh_token" {
            "refresh"
        } else {
            "access"
        };
        cipher.decrypt(&self.key_id, &self.token, &aad(self.token_id, column))
    }
}

/// Claims up to `limit` due revocations for `lease_secs` (any instance may run this; a
/// crashed sender's claims lapse) and counts the attempt.
pub async fn claim_revocations(
    pool: &PgPool,
    limit: i64,
    lease_secs: f64,
) -> Result<Vec<QueuedRevocation>, sqlx::Error> {
    crate::db::query_as(
        r#"
        UPDATE revocation_outbox r
        SET claimed_until = now() + make_interval(secs => $2), attempts = r.attempts + 1
        WHERE r.revocation_id IN (
            SELECT revocation_id FROM revocation_outbox
            WHERE next_attempt_at <= now()
              AND (claimed_until IS NULL OR claimed_until < now())
            ORDER BY next_attempt_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        RETURNING r.revocation_id, r.token_id, r.issuer, r.key_id, r.token_type, r.token, r.reason,
                  r.attempts
        "#,
    )
    .bind(limit)
    .bind(lease_secs)
    .fetch_all(pool)
    .await
}

/// The provider has the revocation (or it can never be sent): forget it.
pub async fn revocation_done(pool: &PgPool, revocation_id: Uuid) -> Result<(), sqlx::Error> {
    crate::db::query("DELETE FROM revocation_outbox WHERE revocation_id = $1")
        .bind(revocation_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// A transient failure: try again at `next_attempt_at`.
pub async fn revocation_failed(
    pool: &PgPool,
    revocation_id: Uuid,
    error: &str,
    next_attempt_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    crate::db::query(
        r#"
        UPDATE revocation_outbox
        SET claimed_until = NULL, next_attempt_at = $3, last_error = left($2, 300)
        WHERE revocation_id = $1
        "#,
    )
    .bind(revocation_id)
    .bind(error)
    .bind(next_attempt_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// What the dashboard shows of the queue.
#[derive(Debug, Clone, Copy, Default, Serialize, sqlx::FromRow)]
pub struct OutboxCounts {
    /// Revocations not yet accepted by the provider.
    pub pending: i64,
    /// Of those, how many have failed at least once.
    pub failing: i64,
    /// Age in seconds of the oldest one (0 when the queue is empty).
    pub oldest_secs: i64,
}

pub async fn outbox_counts(pool: &PgPool) -> Result<OutboxCounts, sqlx::Error> {
    crate::db::query_as(
        r#"
        SELECT count(*) AS pending,
               count(*) FILTER (WHERE last_error IS NOT NULL) AS failing,
               COALESCE(extract(epoch FROM now() - min(created_at))::bigint, 0) AS oldest_secs
        FROM revocation_outbox
        "#,
    )
    .fetch_one(pool)
    .await
}
