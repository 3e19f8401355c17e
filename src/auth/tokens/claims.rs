//! The refresher's statements. A token row is refreshed only under a *claim*: a lease
//! (`refresh_claim`, `refresh_claimed_until`) taken in one statement; every write of a result
//! is conditional on the claim still being the writer's.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{RefreshStatus, schedule, seal};
use crate::auth::oidc::Refreshed;
use crate::configuration::Cadence;
use crate::crypto::TokenCipher;

/// Which tokens are due, as an SQL condition on `oauth_tokens`: refreshable, past their
/// `refresh_due_at` (set from each token's own lifetime when it was written), not backing off.
/// The refresher claims these rows; [`super::counts`] counts the same ones. The status is a
/// literal so that the planner can use the partial index that names it.
macro_rules! due_tokens {
    () => {
        "refresh_token IS NOT NULL AND refresh_status <> 'needs_login'
         AND refresh_due_at <= now()
         AND (next_attempt_at IS NULL OR next_attempt_at <= now())"
    };
}
pub(super) use due_tokens;

/// What a claim returns: the columns of [`Claimed`] (`t` the token row).
macro_rules! claimed_row {
    () => {
        "RETURNING t.token_id, t.subject, t.issuer, t.key_id, t.refresh_token, t.id_token,
                   t.failure_count, t.refresh_rotates"
    };
}

/// Claims up to $1 due tokens for claim id $2, for $3 seconds.
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
        ORDER BY refresh_due_at
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    )
    UPDATE oauth_tokens t
    SET refresh_claim = $2,
        refresh_claimed_until = now() + make_interval(secs => $3)
    FROM due
    WHERE t.token_id = due.token_id
    ",
    claimed_row!()
);

/// A token row claimed for refresh, with what the refresh needs.
#[derive(sqlx::FromRow)]
pub struct Claimed {
    pub token_id: Uuid,
    pub subject: String,
    /// The login's provider.
    pub issuer: String,
    pub key_id: String,
    /// Still sealed: decrypted only by the caller that uses it.
    pub refresh_token: Vec<u8>,
    /// Still sealed, under `key_id`: re-sealed with the current key when a refresh keeps it.
    pub id_token: Option<Vec<u8>>,
    pub failure_count: i32,
    /// Whether the provider rotates this login's refresh token (`None`: not known yet).
    pub refresh_rotates: Option<bool>,
}

/// Claims up to `batch` due tokens for `lease_secs`.
pub(crate) async fn claim_due(
    pool: &PgPool,
    batch: i64,
    claim: Uuid,
    lease_secs: u64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    crate::db::query_as(CLAIM_DUE_TOKENS)
        .bind(batch)
        .bind(claim)
        .bind(lease_secs as f64)
        .fetch_all(pool)
        .await
}

/// Claims one login for a request that found its access token expiring, if no one holds a
/// claim on it and it has not been refreshed since the request saw `seen_expiry`.
pub(crate) async fn claim_expired(
    pool: &PgPool,
    token_id: Uuid,
    claim: Uuid,
    lease_secs: u64,
    seen_expiry: DateTime<Utc>,
) -> Result<Option<Claimed>, sqlx::Error> {
    crate::db::query_as(concat!(
        "
        UPDATE oauth_tokens t
        SET refresh_claim = $2,
            refresh_claimed_until = now() + make_interval(secs => $3)
        WHERE t.token_id = $1
          AND t.access_expires_at = $4 AND t.refresh_token IS NOT NULL
          AND t.refresh_status <> 'needs_login'
          AND (t.refresh_claimed_until IS NULL OR t.refresh_claimed_until < now())
        ",
        claimed_row!()
    ))
    .bind(token_id)
    .bind(claim)
    .bind(lease_secs as f64)
    .bind(seen_expiry)
    .fetch_optional(pool)
    .await
}

/// Gives up `claim` on these rows, so any instance may refresh them at once.
pub(crate) async fn release(
    pool: &PgPool,
    token_ids: &[Uuid],
    claim: Uuid,
) -> Result<(), sqlx::Error> {
    crate::db::query(
        r#"
        UPDATE oauth_tokens SET refresh_claim = NULL, refresh_claimed_until = NULL
        WHERE token_id = ANY($1) AND refresh_claim = $2
        "#,
    )
    .bind(token_ids)
    .bind(claim)
    .execute(pool)
    .await?;
    Ok(())
}

/// Extends `claim` on the row by `lease_secs`, if it is still ours and has not lapsed: called
/// before a call starts and every third of a lease while it runs. `false`: the claim is lost
/// (another instance may hold the row now), so no call may be made with it.
pub(crate) async fn renew(
    pool: &PgPool,
    token_id: Uuid,
    claim: Uuid,
    lease_secs: u64,
) -> Result<bool, sqlx::Error> {
    let renewed = crate::db::query(
        r#"
        UPDATE oauth_tokens SET refresh_claimed_until = now() + make_interval(secs => $3)
        WHERE token_id = $1 AND refresh_claim = $2 AND refresh_claimed_until > now()
        "#,
    )
    .bind(token_id)
    .bind(claim)
    .bind(lease_secs as f64)
    .execute(pool)
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// The refresh was sent but its answer never came: a rotating provider may have spent the
/// refresh token, and sending it again would look like a stolen token being replayed (the
/// provider would revoke the whole grant). The token is dropped, unless the row has moved on;
/// the access token serves until it expires, then the shopper logs in again.
pub(crate) async fn drop_refresh_token(
    pool: &PgPool,
    row: &Claimed,
    claim: Uuid,
) -> Result<(), sqlx::Error> {
    crate::db::query(
        r#"
        UPDATE oauth_tokens
        SET refresh_token = NULL, refresh_claim = NULL, refresh_claimed_until = NULL
        WHERE token_id = $1 AND refresh_claim = $2 AND refresh_token = $3
        "#,
    )
    .bind(row.token_id)
    .bind(claim)
    .bind(&row.refresh_token)
    .execute(pool)
    .await?;
    Ok(())
}

/// A transient failure: `retrying`, one more failure, no attempt before `backoff` has passed,
/// and the claim released.
pub(crate) async fn record_failure(
    pool: &PgPool,
    token_id: Uuid,
    claim: Uuid,
    backoff: std::time::Duration,
) -> Result<(), sqlx::Error> {
    crate::db::query(
        r#"
        UPDATE oauth_tokens
        SET refresh_status = $4, failure_count = failure_count + 1,
            next_attempt_at = now() + make_interval(secs => $3),
            refresh_claim = NULL, refresh_claimed_until = NULL
        WHERE token_id = $1 AND refresh_claim = $2
        "#,
    )
    .bind(token_id)
    .bind(claim)
    .bind(backoff.as_secs_f64())
    .bind(RefreshStatus::Retrying)
    .execute(pool)
    .await?;
    Ok(())
}

/// Stores refreshed tokens if `claim` still holds the row, or if the row still holds the
/// refresh token that was sent (a late answer whose claim has lapsed is still the newest one
/// there is). `kept` is what the row keeps: the answer's tokens, with the refresh and ID
/// tokens it did not replace, all sealed anew under the current key (the row has one key).
/// `rotated` records whether the provider sent a new refresh token. Groups from a refreshed
/// ID token update the user (so a removed admin loses access without logging out). Returns
/// the new expiry, or `None` if the row has moved on.
pub(crate) async fn save_refreshed(
    pool: &PgPool,
    cipher: &TokenCipher,
    cadence: &Cadence,
    row: &Claimed,
    claim: Uuid,
    kept: &Refreshed,
    rotated: bool,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let token_id = row.token_id;
    let sealed = seal(cipher, token_id, &kept.tokens);
    let when = schedule(cadence, &kept.tokens);
    let groups = kept.groups.clone();
    let saved: i64 = crate::db::query_scalar(
        r#"
        WITH saved AS (
            UPDATE oauth_tokens
            SET key_id = $3, access_token = $4,
                refresh_token = $5, refresh_rotates = $12, id_token = $6,
                access_expires_at = $7, refresh_due_at = $11, refresh_status = $9, failure_count = 0,
                next_attempt_at = NULL, refresh_claim = NULL, refresh_claimed_until = NULL,
                last_refreshed_at = now()
            WHERE token_id = $1 AND (refresh_claim = $2 OR refresh_token = $10)
            RETURNING user_id, issuer, subject
        ), regrouped AS (
            -- A linked identity's groups are not the account's.
            UPDATE users u SET groups = $8
            FROM saved
            WHERE u.user_id = saved.user_id AND u.issuer = saved.issuer
              AND u.subject = saved.subject AND $8::text[] IS NOT NULL
              AND u.groups IS DISTINCT FROM $8::text[]
        )
        SELECT count(*) FROM saved
        "#,
    )
    .bind(token_id)
    .bind(claim)
    .bind(cipher.current_key_id())
    .bind(sealed.access)
    .bind(sealed.refresh)
    .bind(sealed.id)
    .bind(when.expires_at)
    .bind(groups)
    .bind(RefreshStatus::Ok)
    .bind(&row.refresh_token)
    .bind(when.due_at)
    .bind(rotated)
    .fetch_one(pool)
    .await?;
    Ok((saved == 1).then_some(when.expires_at))
}

/// The provider refused `row`'s refresh token: marks the login `needs_login`, unless its
/// refresh token is no longer the one refused (another instance refreshed it meanwhile).
/// Returns whether it marked.
pub(crate) async fn mark_refused(pool: &PgPool, row: &Claimed) -> Result<bool, sqlx::Error> {
    let updated = crate::db::query(
        r#"
        UPDATE oauth_tokens
        SET refresh_status = $3, refresh_claim = NULL, refresh_claimed_until = NULL
        WHERE token_id = $1 AND refresh_token = $2
        "#,
    )
    .bind(row.token_id)
    .bind(&row.refresh_token)
    .bind(RefreshStatus::NeedsLogin)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// A login whose access token has expired and that has no refresh token: only a new login helps.
pub(crate) async fn mark_needs_login(pool: &PgPool, token_id: Uuid) -> Result<(), sqlx::Error> {
    crate::db::query("UPDATE oauth_tokens SET refresh_status = $2 WHERE token_id = $1")
        .bind(token_id)
        .bind(RefreshStatus::NeedsLogin)
        .execute(pool)
        .await?;
    Ok(())
}
