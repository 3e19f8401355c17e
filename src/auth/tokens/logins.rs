//! Logins begin and end here: storing a completed login with its user, and deleting logins
//! (their sessions go with them through the foreign key) for logout, revocation, back-channel
//! logout and cleanup.

use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

use super::outbox::{EndReason, queue_from};
use super::{decrypt_id_token, schedule, seal};
use crate::activity::ActivityEvent;
use crate::auth::oidc::{Login, TokenSet};
use crate::configuration::Cadence;
use crate::crypto::TokenCipher;

/// A login as stored: its user and its token row.
#[derive(Debug, Clone, Copy)]
pub struct StoredLogin {
    pub user_id: Uuid,
    pub token_id: Uuid,
}

/// Where a login comes from: its provider's issuer, and whether that provider's verified
/// emails may sign in as an existing user.
pub struct LoginSource<'a> {
    pub issuer: &'a str,
    pub link_verified_emails: bool,
    /// The issuers of every provider trusted for linking: only their users are linked onto
    /// (an account made at a provider that is not trusted with emails is never taken over).
    pub linking_issuers: &'a [String],
}

/// Finds or creates the user the verified claims name, stores the login's tokens (encrypted)
/// and counts the login for the dashboard, in one statement (one round trip, atomic without
/// an explicit transaction).
///
/// The user is the identity's own, keyed by (issuer, subject): two providers with one email
/// are two accounts. Only when the source allows it, an identity seen for the first time whose
/// email the provider verified signs in as the one user with that same verified email of
/// another provider also trusted for linking, and stays linked to it (`linked_identities`,
/// followed only while its provider still allows linking); its profile and groups do not
/// overwrite that user's.
#[tracing::instrument(name = "Store login", skip_all, fields(user_id = tracing::field::Empty))]
pub async fn store_login(
    pool: &PgPool,
    cipher: &TokenCipher,
    cadence: &Cadence,
    source: &LoginSource<'_>,
    login: &Login,
) -> Result<StoredLogin, sqlx::Error> {
    let claims = &login.claims;
    let email = claims.email().map(|e| e.as_str().to_owned());
    let name = claims
        .name()
        .and_then(|n| n.get(None))
        .map(|n| n.as_str().to_owned())
        .or_else(|| claims.preferred_username().map(|u| u.as_str().to_owned()));
    let groups = &login.groups;
    let auth_time = claims.auth_time();
    let acr = claims.auth_context_ref().map(|acr| acr.as_str().to_owned());
    let token_id = Uuid::now_v7();
    let sealed = seal(cipher, token_id, &login.tokens);
    let when = schedule(cadence, &login.tokens);
    let user_id: Uuid = crate::db::query_scalar(
        r#"
        WITH linked AS (
            SELECT user_id FROM linked_identities WHERE $19 AND issuer = $2 AND subject = $3
        ), link_to AS (
            SELECT min(u.user_id::text)::uuid AS user_id FROM users u
            WHERE $19 AND $16 AND $4::text IS NOT NULL
              AND u.email_verified AND lower(u.email) = lower($4) AND u.issuer <> $2
              AND u.issuer = ANY($20)
              AND NOT EXISTS (SELECT 1 FROM linked)
              AND NOT EXISTS (SELECT 1 FROM users o WHERE o.issuer = $2 AND o.subject = $3)
            HAVING count(*) = 1
        ), new_link AS (
            INSERT INTO linked_identities (issuer, subject, user_id, email)
            SELECT $2, $3, user_id, $4 FROM link_to
            ON CONFLICT DO NOTHING
        ), target AS (
            SELECT user_id FROM linked UNION ALL SELECT user_id FROM link_to
        ), own_user AS (
            INSERT INTO users (user_id, issuer, subject, email, name, groups, email_verified,
                               last_login_at)
            SELECT $1, $2, $3, $4, $5, $6, $16, now()
            WHERE NOT EXISTS (SELECT 1 FROM target)
            ON CONFLICT ON CONSTRAINT users_issuer_subject_key DO UPDATE
            SET email = EXCLUDED.email, name = EXCLUDED.name, groups = EXCLUDED.groups,
                email_verified = EXCLUDED.email_verified, last_login_at = now()
            RETURNING user_id
        ), linked_user AS (
            UPDATE users SET last_login_at = now()
            WHERE user_id IN (SELECT user_id FROM target)
            RETURNING user_id
        ), login_user AS (
            SELECT user_id FROM own_user UNION ALL SELECT user_id FROM linked_user
        ), login_tokens AS (
            INSERT INTO oauth_tokens (token_id, user_id, issuer, subject, provider_sid, key_id,
                                      access_token, refresh_token, id_token, access_expires_at,
                                      refresh_due_at, last_refreshed_at, auth_time, acr)
            SELECT $7, user_id, $2, $3, $8, $9, $10, $11, $12, $13, $15, now(),
                   COALESCE($17, now()), $18
            FROM login_user
        ), counted AS (
            INSERT INTO activity_stats (minute, event, count)
            VALUES (date_trunc('minute', now()), $14, 1)
            ON CONFLICT (minute, event) DO UPDATE SET count = activity_stats.count + 1
        )
        SELECT user_id FROM login_user
        "#,
    )
    .bind(Uuid::now_v7())
    .bind(source.issuer)
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
    .bind(auth_time)
    .bind(acr)
    .bind(source.link_verified_emails)
    .bind(source.linking_issuers)
    .fetch_one(pool)
    .await?;
    tracing::Span::current().record("user_id", tracing::field::display(user_id));
    Ok(StoredLogin { user_id, token_id })
}

/// Stores a login's tokens for an existing user, encrypted; returns the new `token_id`.
/// For logins without verified ID-token claims (seeding tests and benchmarks); a real login
/// goes through [`store_login`], which writes the same row in its one statement.
pub async fn insert_tokens(
    conn: impl Into<crate::db::Route<'_>>,
    cipher: &TokenCipher,
    cadence: &Cadence,
    user_id: Uuid,
    provider_sid: Option<&str>,
    tokens: &TokenSet,
) -> Result<Uuid, sqlx::Error> {
    let token_id = Uuid::now_v7();
    let sealed = seal(cipher, token_id, tokens);
    let when = schedule(cadence, tokens);
    crate::db::query(
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

/// A login that has ended: its tokens are queued for revocation; the ID token is handed back
/// as the `id_token_hint` of RP-initiated logout.
pub struct EndedLogin {
    pub token_id: Uuid,
    pub user_id: Uuid,
    /// Its provider, whose end-session endpoint the browser goes to.
    pub issuer: String,
    pub id_token: Option<SecretString>,
}

#[derive(sqlx::FromRow)]
struct EndedRow {
    token_id: Uuid,
    user_id: Uuid,
    issuer: String,
    key_id: String,
    id_token: Option<Vec<u8>>,
}

fn ended(cipher: &TokenCipher, rows: Vec<EndedRow>) -> Vec<EndedLogin> {
    rows.into_iter()
        .map(|row| EndedLogin {
            id_token: row.id_token.as_deref().and_then(|sealed| {
                decrypt_id_token(cipher, row.token_id, &row.key_id, sealed)
                    .inspect_err(|e| tracing::warn!(error = %e, token_id = %row.token_id, "Cannot decrypt an ended login's ID token"))
                    .ok()
            }),
            token_id: row.token_id,
            user_id: row.user_id,
            issuer: row.issuer,
        })
        .collect()
}

/// The columns an ending statement's `gone` CTE returns, for [`queue_from!`] and [`EndedRow`].
macro_rules! gone_columns {
    () => {
        "t.token_id, t.user_id, t.issuer, t.key_id, t.access_token, t.refresh_token, \
         t.id_token, t.access_expires_at, t.refresh_status"
    };
}

/// Deletes these logins (their sessions go with them) and queues their tokens for
/// revocation, in one statement.
pub async fn delete_logins(
    conn: impl Into<crate::db::Route<'_>>,
    cipher: &TokenCipher,
    token_ids: &[Uuid],
    reason: EndReason,
) -> Result<Vec<EndedLogin>, sqlx::Error> {
    let rows: Vec<EndedRow> = crate::db::query_as(concat!(
        "WITH gone AS (DELETE FROM oauth_tokens t WHERE t.token_id = ANY($1) RETURNING ",
        gone_columns!(),
        "), ",
        queue_from!("gone", "$2"),
        " SELECT token_id, user_id, issuer, key_id, id_token FROM gone"
    ))
    .bind(token_ids)
    .bind(reason)
    .fetch_all(conn)
    .await?;
    Ok(ended(cipher, rows))
}

/// Deletes these logins and queues their tokens for revocation; returns how many ended.
pub async fn end_logins(
    conn: impl Into<crate::db::Route<'_>>,
    token_ids: &[Uuid],
    reason: EndReason,
) -> Result<u64, sqlx::Error> {
    let ended: i64 = crate::db::query_scalar(concat!(
        "WITH gone AS (DELETE FROM oauth_tokens t WHERE t.token_id = ANY($1) RETURNING ",
        gone_columns!(),
        "), ",
        queue_from!("gone", "$2"),
        " SELECT count(*) FROM gone"
    ))
    .bind(token_ids)
    .bind(reason)
    .fetch_one(conn)
    .await?;
    Ok(ended as u64)
}

/// Deletes every login of one user and queues their tokens for revocation.
pub async fn delete_logins_of_user(
    conn: impl Into<crate::db::Route<'_>>,
    cipher: &TokenCipher,
    user_id: Uuid,
    reason: EndReason,
) -> Result<Vec<EndedLogin>, sqlx::Error> {
    let rows: Vec<EndedRow> = crate::db::query_as(concat!(
        "WITH gone AS (DELETE FROM oauth_tokens t WHERE t.user_id = $1 RETURNING ",
        gone_columns!(),
        "), ",
        queue_from!("gone", "$2"),
        " SELECT token_id, user_id, issuer, key_id, id_token FROM gone"
    ))
    .bind(user_id)
    .bind(reason)
    .fetch_all(conn)
    .await?;
    Ok(ended(cipher, rows))
}

/// Ends the logins a back-channel logout token names: with a `sid`, that provider session
/// (of that subject, when named); with only a `sub`, every login of that user at `issuer`.
/// Their tokens are queued for revocation. Returns how many logins ended.
pub async fn end_provider_sessions(
    conn: &mut sqlx::PgConnection,
    issuer: &str,
    subject: Option<&str>,
    sid: Option<&str>,
) -> Result<u64, sqlx::Error> {
    let ended: i64 = crate::db::query_scalar(concat!(
        "WITH gone AS (
           DELETE FROM oauth_tokens t
           WHERE t.issuer = $1
             AND ($2::text IS NULL OR t.subject = $2)
             AND ($3::text IS NULL OR t.provider_sid = $3)
           RETURNING ",
        gone_columns!(),
        "), ",
        queue_from!("gone", "$4"),
        " SELECT count(*) FROM gone"
    ))
    .bind(issuer)
    .bind(subject)
    .bind(sid)
    .bind(EndReason::Backchannel)
    .fetch_one(conn)
    .await?;
    Ok(ended as u64)
}

/// Deletes up to `limit` logins no session holds any more (a crash between storing the
/// tokens and saving the session, a login dropped after its provider refused a refresh),
/// older than an hour, and queues their tokens for revocation. This reads every token row, so
/// cleanup runs it once per pass rather than once per batch.
pub async fn delete_orphans(conn: &mut sqlx::PgConnection, limit: i64) -> Result<u64, sqlx::Error> {
    let orphans: i64 = crate::db::query_scalar(concat!(
        "WITH gone AS (
           DELETE FROM oauth_tokens t
           WHERE t.token_id IN (
               SELECT token_id FROM oauth_tokens o
               WHERE o.created_at < now() - interval '1 hour'
                 AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.token_id = o.token_id)
               LIMIT $1
               FOR UPDATE SKIP LOCKED
           )
           RETURNING ",
        gone_columns!(),
        "), ",
        queue_from!("gone", "$2"),
        " SELECT count(*) FROM gone"
    ))
    .bind(limit)
    .bind(EndReason::Orphaned)
    .fetch_one(conn)
    .await?;
    Ok(orphans as u64)
}
