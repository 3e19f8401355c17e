//! The token store: the one owner of `oauth_tokens`. Every statement on that table is in this
//! module; the rest of the shop reads a login's health through the `logins` view (no
//! encrypted columns) and asks this module to store, refresh, count or end logins.
//!
//! Tokens are sealed with AES-256-GCM, bound to their row and column, under the key named by
//! the row's `key_id`.

mod claims;
mod counts;
mod logins;
mod outbox;
mod rekey;

pub use claims::{CLAIM_DUE_TOKENS, Claimed};
pub use counts::{TokenCounts, counts};
pub use logins::{
    EndedLogin, LoginSource, StoredLogin, delete_logins, delete_logins_of_user, delete_orphans,
    end_logins, end_provider_sessions, insert_tokens, store_login,
};
pub use outbox::{
    EndReason, OutboxCounts, QueuedRevocation, claim_revocations, outbox_counts, revocation_done,
    revocation_failed,
};
pub use rekey::{KeyUsage, RekeyReport, key_usage, rekey_all, rekey_batch};

pub(crate) use claims::{
    claim_due, claim_expired, drop_refresh_token, mark_needs_login, mark_refused, record_failure,
    release, renew, save_refreshed,
};
pub(crate) use outbox::queue_if_ended;

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use uuid::Uuid;

use super::oidc::TokenSet;
use crate::configuration::Cadence;
use crate::crypto::{CipherError, TokenCipher};
use crate::db::text_enum;

text_enum! {
    /// Where a login's refresh stands (`oauth_tokens.refresh_status`).
    pub enum RefreshStatus {
        /// The last refresh (or the login) succeeded.
        Ok = "ok",
        /// The provider failed transiently; retried with backoff.
        Retrying = "retrying",
        /// The provider refused the refresh token: only a new login helps.
        NeedsLogin = "needs_login",
    }
}

/// Why tokens could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("cannot decrypt a stored token: {0}")]
    Cipher(#[from] CipherError),
}

/// The decrypted tokens of one login.
pub struct StoredTokens {
    pub token_id: Uuid,
    pub user_id: Uuid,
    pub subject: String,
    /// The login's provider.
    pub issuer: String,
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<SecretString>,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_status: RefreshStatus,
    /// While `refresh_status` is `retrying`: no refresh is attempted before this instant.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// What a ciphertext is bound to: its row and column.
fn aad(token_id: Uuid, column: &str) -> Vec<u8> {
    format!("{token_id}/{column}").into_bytes()
}

/// The tokens of a login or a refresh, encrypted and bound to their row and column.
pub(crate) struct Sealed {
    pub access: Vec<u8>,
    pub refresh: Option<Vec<u8>>,
    pub id: Option<Vec<u8>>,
}

pub(crate) fn seal(cipher: &TokenCipher, token_id: Uuid, tokens: &TokenSet) -> Sealed {
    let encrypt =
        |token: &SecretString, column: &str| cipher.encrypt(token, &aad(token_id, column));
    Sealed {
        access: encrypt(&tokens.access_token, "access"),
        refresh: tokens.refresh_token.as_ref().map(|t| encrypt(t, "refresh")),
        id: tokens.id_token.as_ref().map(|t| encrypt(t, "id")),
    }
}

/// When an access token issued now expires, and when it falls due for refresh.
pub(crate) struct Schedule {
    pub expires_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
}

pub(crate) fn schedule(cadence: &Cadence, tokens: &TokenSet) -> Schedule {
    let (lifetime, lead) = cadence.schedule(tokens.expires_in);
    let span = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(365));
    let expires_at = Utc::now() + span(lifetime);
    Schedule {
        expires_at,
        due_at: expires_at - span(lead),
    }
}

pub(crate) fn decrypt_refresh_token(
    cipher: &TokenCipher,
    token_id: Uuid,
    key_id: &str,
    data: &[u8],
) -> Result<SecretString, CipherError> {
    cipher.decrypt(key_id, data, &aad(token_id, "refresh"))
}

pub(crate) fn decrypt_id_token(
    cipher: &TokenCipher,
    token_id: Uuid,
    key_id: &str,
    data: &[u8],
) -> Result<SecretString, CipherError> {
    cipher.decrypt(key_id, data, &aad(token_id, "id"))
}

/// A row of `oauth_tokens`, still sealed.
#[derive(sqlx::FromRow)]
struct TokenRow {
    token_id: Uuid,
    user_id: Uuid,
    subject: String,
    issuer: String,
    key_id: String,
    access_token: Vec<u8>,
    refresh_token: Option<Vec<u8>>,
    id_token: Option<Vec<u8>>,
    access_expires_at: DateTime<Utc>,
    refresh_status: RefreshStatus,
    next_attempt_at: Option<DateTime<Utc>>,
}

/// The columns of [`TokenRow`], for `SELECT` and `RETURNING` (`t` the token row).
macro_rules! token_row {
    () => {
        "t.token_id, t.user_id, t.subject, t.issuer, t.key_id, t.access_token, t.refresh_token, \
         t.id_token, t.access_expires_at, t.refresh_status, t.next_attempt_at"
    };
}

impl TokenRow {
    fn open(self, cipher: &TokenCipher) -> Result<StoredTokens, CipherError> {
        let open = |column: &str, data: &[u8]| {
            cipher.decrypt(&self.key_id, data, &aad(self.token_id, column))
        };
        Ok(StoredTokens {
            access_token: open("access", &self.access_token)?,
            refresh_token: self
                .refresh_token
                .as_deref()
                .map(|d| open("refresh", d))
                .transpose()?,
            id_token: self
                .id_token
                .as_deref()
                .map(|d| open("id", d))
                .transpose()?,
            token_id: self.token_id,
            user_id: self.user_id,
            subject: self.subject,
            issuer: self.issuer,
            access_expires_at: self.access_expires_at,
            refresh_status: self.refresh_status,
            next_attempt_at: self.next_attempt_at,
        })
    }
}

/// One login's tokens, decrypted; `None` when the login has ended.
pub async fn load(
    conn: impl Into<crate::db::Route<'_>>,
    cipher: &TokenCipher,
    token_id: Uuid,
) -> Result<Option<StoredTokens>, TokenStoreError> {
    let row: Option<TokenRow> = crate::db::query_as(concat!(
        "SELECT ",
        token_row!(),
        " FROM oauth_tokens t WHERE t.token_id = $1"
    ))
    .bind(token_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| r.open(cipher)).transpose()?)
}
