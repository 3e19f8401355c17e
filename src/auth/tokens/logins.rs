//! Logins begin and end here: storing a completed login with its user, and deleting logins
//! (their sessions go with them through the foreign key) for logout, revocation, back-channel
//! logout and cleanup.

use std::sync::Arc;

use sqlx::PgPool;
use uuid::Uuid;

use super::{StoredTokens, TokenRow, schedule, seal, token_row};
use crate::activity::ActivityEvent;
use crate::auth::oidc::{Login, Oidc, TokenSet};
use crate::configuration::Cadence;
use crate::crypto::TokenCipher;

/// Upserts the user named by the verified claims, stores the login's tokens (encrypted) and
/// counts the login for the dashboard, in one statement (one round trip, atomic without an
/// explicit transaction). Returns the new `token_id`.
#[tracing::instrument(name = "Store login", skip_all, fields(user_id = tracing::field::Empty))]
pub async fn store_login(
    pool: &PgPool,
    cipher: &TokenCipher,
    cadence: &Cadence,
    issuer: &str,
    login: &Login,
) -> Result<Uuid, sqlx::Error> {
    let claims = &login.claims;
    let email = claims.email().map(|e| e.as_str().to_owned());
    let name = claims
        .name()
        .and_then(|n| n.get(None))
        .map(|n| n.as_str().to_owned())
        .or_else(|| claims.preferred_username().map(|u| u.as_str().to_owned()));
    let groups = &login.groups;
    let token_id = Uuid::now_v7();
    let sealed = seal(cipher, token_id, &login.tokens);
    let when = schedule(cadence, &login.tokens);
    let user_id: Uuid = sqlx::query_scalar(
        r#"
        WITH login_user AS (
            INSERT INTO users (user_id, issuer, subject, email, name, groups, email_verified,
                               last_login_at)
            VALUES ($1, $2, $3, $4, $5, $6, $16, now())
            ON CONFLICT ON CONSTRAINT users_issuer_subject_key DO UPDATE
            SET email = EXCLUDED.email, name = EXCLUDED.name, groups = EXCLUDED.groups,
                email_verified = EXCLUDED.email_verified, last_login_at = now()
            RETURNING user_id
        ), login_tokens AS (
            INSERT INTO oauth_tokens (token_id, user_id, provider_sid, key_id, access_token,
                                      refresh_token, id_token, access_expires_at,
                                      refresh_due_at, last_refreshed_at)
            SELECT $7, user_id, $8, $9, $10, $11, $12, $13, $15, now() FROM login_user
        ), counted AS (
            INSERT INTO activity_stats (minute, event, count)
            VALUES (date_trunc('minute', now()), $14, 1)
            ON CONFLICT (minute, event) DO UPDATE SET count = activity_stats.count + 1
        )
        SELECT user_id FROM login_user
        "#,
    )
    .bind(Uuid::now_v7())
    .bind(issuer)
    .bind(claims.subject().as_str())
    .bind(email)
    .bind(name)
    .bind(groups)
    .bind(token_id)
    .bind(claims.additional_claims().sid.as_deref())
    .bind(cipher.current_key_id())
    .bind(sealed.access)
    .bind(sealed.refresh)
    .bind(sealed.id)
    .bind(when.expires_at)
    .bind(ActivityEvent::Login)
    .bind(when.due_at)
    .bind(login.email_verified)
    .fetch_one(pool)
    .await?;
    tracing::Span::current().record("user_id", tracing::field::display(user_id));
    Ok(token_id)
}

/// Stores a login's tokens for an existing user, encrypted; returns the new `token_id`.
/// For logins without verified ID-token claims (seeding tests and benchmarks); a real login
/// goes through [`store_login`], which writes the same row in its one statement.
pub async fn insert_tokens(
    conn: impl sqlx::PgExecutor<'_>,
    cipher: &TokenCipher,
    cadence: &Cadence,
    user_id: Uuid,
    provider_sid: Option<&str>,
    tokens: &TokenSet,
) -> Result<Uuid, sqlx::Error> {
    let token_id = Uuid::now_v7();
    let sealed = seal(cipher, token_id, tokens);
    let when = schedule(cadence, tokens);
    sqlx::query(
        r#"
        INSERT INTO oauth_tokens (token_id, user_id, provider_sid, key_id, access_token,
                                  refresh_token, id_token, access_expires_at, refresh_due_at,
                                  last_refreshed_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
        "#,
    )
    .bind(token_id)
    .bind(user_id)
    .bind(provider_sid)
    .bind(cipher.current_key_id())
    .bind(sealed.access)
    .bind(sealed.refresh)
    .bind(sealed.id)
    .bind(when.expires_at)
    .bind(when.due_at)
    .execute(conn)
    .await?;
    Ok(token_id)
}

/// Decrypts deleted rows for revocation; a row that cannot be decrypted is left out (and
/// said so), it is deleted all the same.
fn opened(cipher: &TokenCipher, rows: Vec<TokenRow>) -> Vec<StoredTokens> {
    rows.into_iter()
        .filter_map(|row| {
            let token_id = row.token_id;
            row.open(cipher)
                .inspect_err(|e| tracing::warn!(error = %e, %token_id, "Cannot decrypt a deleted login's tokens; not revoked at the provider"))
                .ok()
        })
        .collect()
}

/// Deletes these logins (their sessions go with them) and returns their decrypted tokens,
/// for revocation at the provider.
pub async fn delete_logins(
    conn: impl sqlx::PgExecutor<'_>,
    cipher: &TokenCipher,
    token_ids: &[Uuid],
) -> Result<Vec<StoredTokens>, sqlx::Error> {
    let rows: Vec<TokenRow> = sqlx::query_as(concat!(
        "DELETE FROM oauth_tokens t USING users u
         WHERE t.token_id = ANY($1) AND u.user_id = t.user_id
         RETURNING ",
        token_row!()
    ))
    .bind(token_ids)
    .fetch_all(conn)
    .await?;
    Ok(opened(cipher, rows))
}

/// Deletes every login of one user and returns their decrypted tokens.
pub async fn delete_logins_of_user(
    conn: impl sqlx::PgExecutor<'_>,
    cipher: &TokenCipher,
    user_id: Uuid,
) -> Result<Vec<StoredTokens>, sqlx::Error> {
    let rows: Vec<TokenRow> = sqlx::query_as(concat!(
        "DELETE FROM oauth_tokens t USING users u
         WHERE t.user_id = $1 AND u.user_id = t.user_id
         RETURNING ",
        token_row!()
    ))
    .bind(user_id)
    .fetch_all(conn)
    .await?;
    Ok(opened(cipher, rows))
}

/// Ends the logins a back-channel logout token names: with a `sid`, that provider session
/// (of that subject, when named); with only a `sub`, every login of that user at `issuer`.
/// Returns how many logins ended.
pub async fn end_provider_sessions(
    conn: &mut sqlx::PgConnection,
    issuer: &str,
    subject: Option<&str>,
    sid: Option<&str>,
) -> Result<u64, sqlx::Error> {
    let ended = sqlx::query(
        r#"
        DELETE FROM oauth_tokens t
        USING users u
        WHERE u.user_id = t.user_id
          AND u.issuer = $1
          AND ($2::text IS NULL OR u.subject = $2)
          AND ($3::text IS NULL OR t.provider_sid = $3)
        "#,
    )
    .bind(issuer)
    .bind(subject)
    .bind(sid)
    .execute(conn)
    .await?;
    Ok(ended.rows_affected())
}

/// Deletes these logins without revoking them (their sessions have expired). Returns how
/// many were deleted.
pub async fn delete_unused(
    conn: &mut sqlx::PgConnection,
    token_ids: &[Uuid],
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM oauth_tokens WHERE token_id = ANY($1)")
        .bind(token_ids)
        .execute(conn)
        .await?;
    Ok(deleted.rows_affected())
}

/// Deletes up to `limit` logins whose session was never saved (a crash between storing the
/// tokens and saving the session), older than an hour. This reads every token row, so cleanup
/// runs it once per pass rather than once per batch.
pub async fn delete_orphans(conn: &mut sqlx::PgConnection, limit: i64) -> Result<u64, sqlx::Error> {
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
    .execute(conn)
    .await?;
    Ok(orphans.rows_affected())
}

/// RFC 7009 revocation of the refresh and access tokens of ended logins, in the background:
/// ending a session never waits on the provider.
pub fn revoke_at_provider(oidc: Arc<Oidc>, logins: Vec<StoredTokens>) {
    if logins.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for login in logins {
            if let Some(refresh) = &login.refresh_token
                && let Err(e) = oidc.revoke(refresh, "refresh_token").await
            {
                tracing::warn!(error = %e, token_id = %login.token_id, "Refresh token revocation failed");
            }
            if let Err(e) = oidc.revoke(&login.access_token, "access_token").await {
                tracing::warn!(error = %e, token_id = %login.token_id, "Access token revocation failed");
            }
        }
    });
}
