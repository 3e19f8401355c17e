//! `users` and `oauth_tokens`: storing a completed login, reading its tokens back, ending it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::oidc::{Oidc, OidcError, TokenSet};
use crate::crypto::TokenCipher;

/// When the provider does not say how long an access token lives.
const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(300);
/// An access token this close to expiry is refreshed before use.
pub const USE_SKEW: Duration = Duration::from_secs(10);

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
}

fn aad(token_id: Uuid, column: &str) -> Vec<u8> {
    format!("{token_id}/{column}").into_bytes()
}

/// The three tokens of a login, encrypted and bound to their row and column.
struct Sealed {
    access: Vec<u8>,
    refresh: Option<Vec<u8>>,
    id: Option<Vec<u8>>,
}

fn seal(cipher: &TokenCipher, token_id: Uuid, tokens: &TokenSet) -> Sealed {
    let encrypt =
        |token: &SecretString, column: &str| cipher.encrypt(token, &aad(token_id, column));
    Sealed {
        access: encrypt(&tokens.access_token, "access"),
        refresh: tokens.refresh_token.as_ref().map(|t| encrypt(t, "refresh")),
        id: tokens.id_token.as_ref().map(|t| encrypt(t, "id")),
    }
}

fn expiry(tokens: &TokenSet) -> DateTime<Utc> {
    let ttl = tokens.expires_in.unwrap_or(DEFAULT_ACCESS_TTL);
    Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(5))
}

/// Upserts the user named by the verified claims and stores the login's tokens, encrypted.
/// Returns the new `token_id`.
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
    let mut tx = pool.begin().await?;
    let user_id: Uuid = sqlx::query_scalar(
        r#"
        INSERT INTO users (user_id, issuer, subject, email, name, groups, last_login_at)
        VALUES ($1, $2, $3, $4, $5, $6, now())
        ON CONFLICT ON CONSTRAINT users_issuer_subject_key DO UPDATE
        SET email = EXCLUDED.email, name = EXCLUDED.name, groups = EXCLUDED.groups,
            last_login_at = now()
        RETURNING user_id
        "#,
    )
    .bind(Uuid::now_v7())
    .bind(issuer)
    .bind(claims.subject().as_str())
    .bind(email)
    .bind(name)
    .bind(&groups)
    .fetch_one(&mut *tx)
    .await?;
    tracing::Span::current().record("user_id", tracing::field::display(user_id));
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
    .bind(claims.additional_claims().sid.clone())
    .bind(cipher.current_key_id())
    .bind(sealed.access)
    .bind(sealed.refresh)
    .bind(sealed.id)
    .bind(expiry(tokens))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
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
}

const SELECT_TOKENS: &str = r#"
    SELECT t.token_id, t.user_id, u.subject, t.key_id, t.access_token, t.refresh_token,
           t.id_token, t.access_expires_at, t.refresh_status
    FROM oauth_tokens t JOIN users u USING (user_id)
    WHERE t.token_id = $1
"#;

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
    })
}

pub async fn load(
    conn: &mut PgConnection,
    cipher: &TokenCipher,
    token_id: Uuid,
) -> anyhow::Result<Option<StoredTokens>> {
    let row: Option<TokenRow> = sqlx::query_as(SELECT_TOKENS)
        .bind(token_id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| decrypt(cipher, r)).transpose()
}

/// Writes refreshed tokens; a refresh answer without a new refresh token keeps the old one.
/// Returns the access token's new expiry.
pub async fn save_refreshed(
    conn: &mut PgConnection,
    cipher: &TokenCipher,
    token_id: Uuid,
    tokens: &TokenSet,
) -> Result<DateTime<Utc>, sqlx::Error> {
    let sealed = seal(cipher, token_id, tokens);
    let access_expires_at = expiry(tokens);
    sqlx::query(
        r#"
        UPDATE oauth_tokens
        SET key_id = $2, access_token = $3,
            refresh_token = COALESCE($4, refresh_token),
            id_token = COALESCE($5, id_token),
            access_expires_at = $6, refresh_status = 'ok', failure_count = 0,
            next_attempt_at = NULL, refresh_claimed_until = NULL, last_refreshed_at = now()
        WHERE token_id = $1
        "#,
    )
    .bind(token_id)
    .bind(cipher.current_key_id())
    .bind(sealed.access)
    .bind(sealed.refresh)
    .bind(sealed.id)
    .bind(access_expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(access_expires_at)
}

pub async fn mark_needs_login(conn: &mut PgConnection, token_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE oauth_tokens SET refresh_status = 'needs_login', refresh_claimed_until = NULL WHERE token_id = $1",
    )
    .bind(token_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
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

/// An access token valid for at least [`USE_SKEW`], refreshing it first if needed (or if
/// `force`, after the provider rejected it). The row is locked during the refresh, so
/// concurrent requests wait for one refresh and then use its result.
pub async fn usable_access_token(
    pool: &PgPool,
    cipher: &TokenCipher,
    oidc: &Oidc,
    token_id: Uuid,
    force: bool,
) -> Result<StoredTokens, AccessError> {
    let fresh = |t: &StoredTokens| {
        t.access_expires_at > Utc::now() + chrono::Duration::from_std(USE_SKEW).expect("small")
    };
    if !force {
        let mut conn = pool.acquire().await?;
        match load(&mut conn, cipher, token_id).await? {
            None => return Err(AccessError::Gone),
            Some(t) if t.refresh_status == "needs_login" => return Err(AccessError::NeedsLogin),
            Some(t) if fresh(&t) => return Ok(t),
            Some(_) => {}
        }
    }
    let mut tx = pool.begin().await?;
    let row: Option<TokenRow> = sqlx::query_as(&format!("{SELECT_TOKENS} FOR UPDATE OF t"))
        .bind(token_id)
        .fetch_optional(&mut *tx)
        .await?;
    let current = row
        .map(|r| decrypt(cipher, r))
        .transpose()?
        .ok_or(AccessError::Gone)?;
    if current.refresh_status == "needs_login" {
        return Err(AccessError::NeedsLogin);
    }
    // Someone refreshed while we waited for the lock.
    if fresh(&current) && !force {
        return Ok(current);
    }
    let Some(refresh_token) = current.refresh_token.as_ref() else {
        mark_needs_login(&mut tx, token_id).await?;
        tx.commit().await?;
        return Err(AccessError::NeedsLogin);
    };
    match oidc.refresh(refresh_token, &current.subject).await {
        Ok(tokens) => {
            let access_expires_at = save_refreshed(&mut tx, cipher, token_id, &tokens).await?;
            tx.commit().await?;
            // Exactly what was just written; no need to read and decrypt it back.
            Ok(StoredTokens {
                access_token: tokens.access_token,
                refresh_token: tokens.refresh_token.or(current.refresh_token),
                id_token: tokens.id_token.or(current.id_token),
                access_expires_at,
                refresh_status: "ok".to_owned(),
                ..current
            })
        }
        Err(e) if e.is_invalid_grant() => {
            mark_needs_login(&mut tx, token_id).await?;
            tx.commit().await?;
            Err(AccessError::NeedsLogin)
        }
        Err(e) => Err(AccessError::Provider(e)),
    }
}

/// Deletes a login's tokens; the sessions bound to it go with them (foreign-key cascade).
pub async fn delete_login(pool: &PgPool, token_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM oauth_tokens WHERE token_id = $1")
        .bind(token_id)
        .execute(pool)
        .await?;
    Ok(())
}
