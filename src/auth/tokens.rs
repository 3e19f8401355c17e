//! `users` and `oauth_tokens`: storing a completed login, reading its tokens back, ending it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

use std::sync::Arc;

use super::oidc::{Oidc, TokenSet};
use crate::crypto::TokenCipher;

/// When the provider does not say how long an access token lives.
const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(300);

/// The decrypted tokens of one login.
pub struct StoredTokens {
    pub token_id: Uuid,
    pub user_id: Uuid,
    pub subject: String,
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<SecretString>,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_status: String,
    /// While `refresh_status` is `retrying`: no refresh is attempted before this instant.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

fn aad(token_id: Uuid, column: &str) -> Vec<u8> {
    format!("{token_id}/{column}").into_bytes()
}

/// The three tokens of a login, encrypted and bound to their row and column.
pub(super) struct Sealed {
    pub access: Vec<u8>,
    pub refresh: Option<Vec<u8>>,
    pub id: Option<Vec<u8>>,
}

pub(super) fn seal(cipher: &TokenCipher, token_id: Uuid, tokens: &TokenSet) -> Sealed {
    let encrypt =
        |token: &SecretString, column: &str| cipher.encrypt(token, &aad(token_id, column));
    Sealed {
        access: encrypt(&tokens.access_token, "access"),
        refresh: tokens.refresh_token.as_ref().map(|t| encrypt(t, "refresh")),
        id: tokens.id_token.as_ref().map(|t| encrypt(t, "id")),
    }
}

pub(super) fn expiry(tokens: &TokenSet) -> DateTime<Utc> {
    let ttl = tokens.expires_in.unwrap_or(DEFAULT_ACCESS_TTL);
    Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(5))
}

/// Upserts the user named by the verified claims, stores the login's tokens (encrypted) and
/// counts the login for the dashboard, in one statement (one round trip, atomic without an
/// explicit transaction). Returns the new `token_id`.
#[tracing::instrument(name = "Store login", skip_all, fields(user_id = tracing::field::Empty))]
pub async fn store_login(
    pool: &PgPool,
    cipher: &TokenCipher,
    issuer: &str,
    tokens: &TokenSet,
) -> Result<Uuid, sqlx::Error> {
    let claims = tokens.claims();
    let email = claims.email().map(|e| e.as_str().to_owned());
    let name = claims
        .name()
        .and_then(|n| n.get(None))
        .map(|n| n.as_str().to_owned())
        .or_else(|| claims.preferred_username().map(|u| u.as_str().to_owned()));
    let groups = claims
        .additional_claims()
        .groups
        .clone()
        .unwrap_or_default();
    let token_id = Uuid::now_v7();
    let sealed = seal(cipher, token_id, tokens);
    let user_id: Uuid = sqlx::query_scalar(
        r#"
        WITH login_user AS (
            INSERT INTO users (user_id, issuer, subject, email, name, groups, last_login_at)
            VALUES ($1, $2, $3, $4, $5, $6, now())
            ON CONFLICT ON CONSTRAINT users_issuer_subject_key DO UPDATE
            SET email = EXCLUDED.email, name = EXCLUDED.name, groups = EXCLUDED.groups,
                last_login_at = now()
            RETURNING user_id
        ), login_tokens AS (
            INSERT INTO oauth_tokens (token_id, user_id, provider_sid, key_id, access_token,
                                      refresh_token, id_token, access_expires_at,
                                      last_refreshed_at)
            SELECT $7, user_id, $8, $9, $10, $11, $12, $13, now() FROM login_user
        ), counted AS (
            INSERT INTO activity_stats (minute, event, count)
            VALUES (date_trunc('minute', now()), 'login', 1)
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
    .bind(&groups)
    .bind(token_id)
    .bind(claims.additional_claims().sid.as_deref())
    .bind(cipher.current_key_id())
    .bind(sealed.access)
    .bind(sealed.refresh)
    .bind(sealed.id)
    .bind(expiry(tokens))
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
    user_id: Uuid,
    provider_sid: Option<&str>,
    tokens: &TokenSet,
) -> Result<Uuid, sqlx::Error> {
    let token_id = Uuid::now_v7();
    let sealed = seal(cipher, token_id, tokens);
    sqlx::query(
        r#"
        INSERT INTO oauth_tokens (token_id, user_id, provider_sid, key_id, access_token,
                                  refresh_token, id_token, access_expires_at, last_refreshed_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
        "#,
    )
    .bind(token_id)
    .bind(user_id)
    .bind(provider_sid)
    .bind(cipher.current_key_id())
    .bind(sealed.access)
    .bind(sealed.refresh)
    .bind(sealed.id)
    .bind(expiry(tokens))
    .execute(conn)
    .await?;
    Ok(token_id)
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    token_id: Uuid,
    user_id: Uuid,
    subject: String,
    key_id: String,
    access_token: Vec<u8>,
    refresh_token: Option<Vec<u8>>,
    id_token: Option<Vec<u8>>,
    access_expires_at: DateTime<Utc>,
    refresh_status: String,
    next_attempt_at: Option<DateTime<Utc>>,
}

const SELECT_TOKENS: &str = r#"
    SELECT t.token_id, t.user_id, u.subject, t.key_id, t.access_token, t.refresh_token,
           t.id_token, t.access_expires_at, t.refresh_status, t.next_attempt_at
    FROM oauth_tokens t JOIN users u USING (user_id)
    WHERE t.token_id = $1
"#;

pub(super) fn decrypt_refresh_token(
    cipher: &TokenCipher,
    token_id: Uuid,
    key_id: &str,
    data: &[u8],
) -> Result<SecretString, crate::crypto::CipherError> {
    cipher.decrypt(key_id, data, &aad(token_id, "refresh"))
}

fn decrypt(cipher: &TokenCipher, row: TokenRow) -> anyhow::Result<StoredTokens> {
    let open =
        |column: &str, data: &[u8]| cipher.decrypt(&row.key_id, data, &aad(row.token_id, column));
    Ok(StoredTokens {
        token_id: row.token_id,
        user_id: row.user_id,
        subject: row.subject.clone(),
        access_token: open("access", &row.access_token)?,
        refresh_token: row
            .refresh_token
            .as_deref()
            .map(|d| open("refresh", d))
            .transpose()?,
        id_token: row.id_token.as_deref().map(|d| open("id", d)).transpose()?,
        access_expires_at: row.access_expires_at,
        refresh_status: row.refresh_status,
        next_attempt_at: row.next_attempt_at,
    })
}

pub async fn load(
    conn: impl sqlx::PgExecutor<'_>,
    cipher: &TokenCipher,
    token_id: Uuid,
) -> anyhow::Result<Option<StoredTokens>> {
    let row: Option<TokenRow> = sqlx::query_as(SELECT_TOKENS)
        .bind(token_id)
        .fetch_optional(conn)
        .await?;
    row.map(|r| decrypt(cipher, r)).transpose()
}

/// Deletes these logins (their sessions go with them) and returns their decrypted tokens,
/// for revocation at the provider. Rows whose tokens cannot be decrypted are deleted all the
/// same and left out.
pub async fn delete_logins(
    conn: impl sqlx::PgExecutor<'_>,
    cipher: &TokenCipher,
    token_ids: &[Uuid],
) -> Result<Vec<StoredTokens>, sqlx::Error> {
    let rows: Vec<TokenRow> = sqlx::query_as(
        r#"
        DELETE FROM oauth_tokens t USING users u
        WHERE t.token_id = ANY($1) AND u.user_id = t.user_id
        RETURNING t.token_id, t.user_id, u.subject, t.key_id, t.access_token, t.refresh_token,
                  t.id_token, t.access_expires_at, t.refresh_status, t.next_attempt_at
        "#,
    )
    .bind(token_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let token_id = row.token_id;
            decrypt(cipher, row)
                .inspect_err(|e| tracing::warn!(error = %e, %token_id, "Cannot decrypt a deleted login's tokens; not revoked at the provider"))
                .ok()
        })
        .collect())
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
