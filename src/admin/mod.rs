//! What the admin dashboard reads and does: live counts, activity per hour, the session table
//! with search, filters and keyset pagination, revocation with an audit trail.

pub mod user_agent;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::refresh::due_tokens;
use crate::auth::tokens::{self, StoredTokens};
use crate::crypto::TokenCipher;

/// A session is "online" when it was used this recently (its `last_seen_at` is throttled to
/// `session.touch_interval_secs`, so this is accurate to that).
const ONLINE_WINDOW_MINUTES: i32 = 15;

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Overview {
    pub active_sessions: i64,
    pub anonymous_sessions: i64,
    pub users_online: i64,
    pub logins_24h: i64,
    pub refreshes_ok_1h: i64,
    pub refreshes_failed_1h: i64,
    pub retrying: i64,
    pub needs_login: i64,
    pub due_backlog: i64,
}

/// The dashboard's counts, in one statement.
pub async fn overview(pool: &PgPool, lead_secs: u64) -> Result<Overview, sqlx::Error> {
    sqlx::query_as(concat!(
        r#"
        SELECT
          (SELECT count(*) FROM sessions
            WHERE token_id IS NOT NULL AND expires_at > now()) AS active_sessions,
          (SELECT count(*) FROM sessions
            WHERE token_id IS NULL AND expires_at > now()) AS anonymous_sessions,
          (SELECT count(DISTINCT t.user_id) FROM sessions s JOIN oauth_tokens t USING (token_id)
            WHERE s.expires_at > now()
              AND s.last_seen_at > now() - make_interval(mins => $2)) AS users_online,
          (SELECT coalesce(sum(count), 0)::bigint FROM activity_stats
            WHERE event = 'login' AND minute > now() - interval '24 hours') AS logins_24h,
          (SELECT coalesce(sum(count), 0)::bigint FROM activity_stats
            WHERE event IN ('refresh_ok', 'refresh_race_recovered')
              AND minute > now() - interval '1 hour') AS refreshes_ok_1h,
          (SELECT coalesce(sum(count), 0)::bigint FROM activity_stats
            WHERE event IN ('refresh_transient_failure', 'refresh_invalid_grant')
              AND minute > now() - interval '1 hour') AS refreshes_failed_1h,
          (SELECT count(*) FROM oauth_tokens WHERE refresh_status = 'retrying') AS retrying,
          (SELECT count(*) FROM sessions s JOIN oauth_tokens t USING (token_id)
            WHERE t.refresh_status = 'needs_login' AND s.expires_at > now()) AS needs_login,
          (SELECT count(*) FROM oauth_tokens WHERE "#,
        due_tokens!(),
        ") AS due_backlog"
    ))
    .bind(lead_secs as f64)
    .bind(ONLINE_WINDOW_MINUTES)
    .fetch_one(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct HourlyActivity {
    pub hour: DateTime<Utc>,
    pub logins: i64,
    pub refreshes_ok: i64,
    pub refreshes_failed: i64,
}

/// Logins and refreshes per hour over the last 24 hours (the current hour last).
pub async fn hourly_activity(pool: &PgPool) -> Result<Vec<HourlyActivity>, sqlx::Error> {
    sqlx::query_as(
        r#"
        SELECT h AS hour,
               coalesce(sum(a.count) FILTER (WHERE a.event = 'login'), 0)::bigint AS logins,
               coalesce(sum(a.count) FILTER (WHERE a.event IN ('refresh_ok', 'refresh_race_recovered')), 0)::bigint
                   AS refreshes_ok,
               coalesce(sum(a.count) FILTER (WHERE a.event IN ('refresh_transient_failure', 'refresh_invalid_grant')), 0)::bigint
                   AS refreshes_failed
        FROM generate_series(date_trunc('hour', now()) - interval '23 hours',
                             date_trunc('hour', now()), interval '1 hour') AS h
        LEFT JOIN activity_stats a ON a.minute >= h AND a.minute < h + interval '1 hour'
        GROUP BY h
        ORDER BY h
        "#,
    )
    .fetch_all(pool)
    .await
}

/// How the session table is ordered. Every order ends with the session id, so the keyset
/// cursor is exact even when many sessions share a timestamp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    /// Most recently used first.
    #[default]
    LastSeen,
    /// Newest first.
    Created,
    /// Access token expiring soonest first.
    Expires,
}

impl SortOrder {
    fn column(self) -> &'static str {
        match self {
            SortOrder::LastSeen => "s.last_seen_at",
            SortOrder::Created => "s.created_at",
            SortOrder::Expires => "t.access_expires_at",
        }
    }

    fn descending(self) -> bool {
        !matches!(self, SortOrder::Expires)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    Ok,
    Retrying,
    NeedsLogin,
}

impl StatusFilter {
    fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Ok => "ok",
            StatusFilter::Retrying => "retrying",
            StatusFilter::NeedsLogin => "needs_login",
        }
    }
}

/// Where the previous page ended: the sort key and id of its last row (a session's, or an
/// audit entry's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub key: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}|{}", self.key.timestamp_micros(), self.id))
    }

    /// `None` for anything that is not a cursor this module made.
    pub fn decode(s: &str) -> Option<Cursor> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s.as_bytes()).ok()?).ok()?;
        let (micros, id) = raw.split_once('|')?;
        Some(Cursor {
            key: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

/// Filters and position of one page of the session table.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    /// Substring of the user's email, name or subject.
    pub search: Option<String>,
    pub status: Option<StatusFilter>,
    pub sort: SortOrder,
    pub after: Option<Cursor>,
    pub limit: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SessionRow {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub provider_sid: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_status: String,
    pub failure_count: i32,
    pub last_refreshed_at: Option<DateTime<Utc>>,
}

impl SessionRow {
    fn sort_key(&self, sort: SortOrder) -> DateTime<Utc> {
        match sort {
            SortOrder::LastSeen => self.last_seen_at,
            SortOrder::Created => self.created_at,
            SortOrder::Expires => self.access_expires_at,
        }
    }
}

pub struct SessionPage {
    pub rows: Vec<SessionRow>,
    /// Set when there are more rows after these.
    pub next: Option<Cursor>,
}

/// The columns of [`SessionRow`]: a logged-in session with its login and user.
const SESSION_ROWS: &str = r#"
    SELECT s.session_id, u.user_id, u.subject, u.email, u.name, t.provider_sid,
           s.created_at, s.last_seen_at, host(s.ip) AS ip, s.user_agent,
           t.access_expires_at, t.refresh_status, t.failure_count, t.last_refreshed_at
    FROM sessions s
    JOIN oauth_tokens t ON t.token_id = s.token_id
    JOIN users u ON u.user_id = t.user_id
"#;

/// `%` and `_` in a search are literal characters, not patterns.
fn like_pattern(search: &str) -> String {
    let escaped = search
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// One page of live logged-in sessions, in one statement. The sort column and direction
/// come from [`SortOrder`], never from the request.
pub async fn sessions(pool: &PgPool, query: &SessionQuery) -> Result<SessionPage, sqlx::Error> {
    let column = query.sort.column();
    let (direction, after) = if query.sort.descending() {
        ("DESC", "<")
    } else {
        ("ASC", ">")
    };
    let sql = format!(
        r#"
        {SESSION_ROWS}
        WHERE s.token_id IS NOT NULL AND s.expires_at > now()
          AND ($1::text IS NULL OR
               (coalesce(u.email, '') || ' ' || coalesce(u.name, '') || ' ' || u.subject) ILIKE $1)
          AND ($2::text IS NULL OR t.refresh_status = $2)
          AND ($3::timestamptz IS NULL OR ({column}, s.session_id) {after} ($3, $4::uuid))
        ORDER BY {column} {direction}, s.session_id {direction}
        LIMIT $5
        "#
    );
    let limit = query.limit.clamp(1, 500);
    let mut rows: Vec<SessionRow> = sqlx::query_as(&sql)
        .bind(query.search.as_deref().map(like_pattern))
        .bind(query.status.map(StatusFilter::as_str))
        .bind(query.after.map(|c| c.key))
        .bind(query.after.map(|c| c.id))
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| Cursor {
            key: r.sort_key(query.sort),
            id: r.session_id,
        })
    } else {
        None
    };
    Ok(SessionPage { rows, next })
}

/// One live session, for the revoke confirmation.
pub async fn session(pool: &PgPool, session_id: Uuid) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SESSION_ROWS} WHERE s.session_id = $1 AND s.expires_at > now()"
    ))
    .bind(session_id)
    .fetch_optional(pool)
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeScope {
    /// This session only.
    Session,
    /// Every session of the session's user.
    User,
}

/// The admin acting, as recorded in the audit trail.
pub struct Actor<'a> {
    pub user_id: Uuid,
    pub subject: &'a str,
    pub email: Option<&'a str>,
    pub ip: Option<String>,
}

pub struct Revoked {
    pub sessions_ended: i64,
    /// The ended logins' tokens, to revoke at the provider.
    pub logins: Vec<StoredTokens>,
}

/// Ends one session or all of its user's sessions and writes the audit row, in one
/// transaction. `None` if the session no longer exists.
pub async fn revoke(
    pool: &PgPool,
    cipher: &TokenCipher,
    actor: &Actor<'_>,
    session_id: Uuid,
    scope: RevokeScope,
) -> Result<Option<Revoked>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Lock the target's token rows so a concurrent login refresh cannot slip in between.
    let target: Option<(Uuid, Uuid, String, Option<String>)> = sqlx::query_as(
        r#"
        SELECT t.token_id, u.user_id, u.subject, u.email
        FROM sessions s
        JOIN oauth_tokens t ON t.token_id = s.token_id
        JOIN users u ON u.user_id = t.user_id
        WHERE s.session_id = $1
        FOR UPDATE OF t
        "#,
    )
    .bind(session_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((token_id, user_id, subject, email)) = target else {
        return Ok(None);
    };
    let token_ids: Vec<Uuid> = match scope {
        RevokeScope::Session => vec![token_id],
        RevokeScope::User => {
            sqlx::query_scalar("SELECT token_id FROM oauth_tokens WHERE user_id = $1 FOR UPDATE")
                .bind(user_id)
                .fetch_all(&mut *tx)
                .await?
        }
    };
    let sessions_ended = sqlx::query("DELETE FROM sessions WHERE token_id = ANY($1)")
        .bind(&token_ids)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
    let logins = tokens::delete_logins(&mut *tx, cipher, &token_ids).await?;
    sqlx::query(
        r#"
        INSERT INTO admin_audit (audit_id, admin_user_id, admin_subject, admin_email, action,
                                 target_user_id, target_subject, target_email,
                                 target_session_id, sessions_ended, ip)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::inet)
        "#,
    )
    .bind(Uuid::now_v7())
    .bind(actor.user_id)
    .bind(actor.subject)
    .bind(actor.email)
    .bind(match scope {
        RevokeScope::Session => "revoke_session",
        RevokeScope::User => "revoke_user_sessions",
    })
    .bind(user_id)
    .bind(&subject)
    .bind(&email)
    .bind(session_id)
    .bind(sessions_ended as i32)
    .bind(actor.ip.as_deref())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(admin = %actor.user_id, target_user = %user_id, %session_id, ?scope, sessions_ended, "Sessions revoked by an admin");
    Ok(Some(Revoked {
        sessions_ended,
        logins,
    }))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub audit_id: Uuid,
    pub at: DateTime<Utc>,
    pub admin_subject: String,
    pub admin_email: Option<String>,
    pub action: String,
    pub target_subject: Option<String>,
    pub target_email: Option<String>,
    pub target_session_id: Option<Uuid>,
    pub sessions_ended: i32,
    pub ip: Option<String>,
}

pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Set when there are older entries.
    pub next: Option<Cursor>,
}

/// The audit trail, newest first: `limit` entries after `before`.
pub async fn audit(
    pool: &PgPool,
    before: Option<Cursor>,
    limit: i64,
) -> Result<AuditPage, sqlx::Error> {
    let limit = limit.clamp(1, 500);
    let mut entries: Vec<AuditEntry> = sqlx::query_as(
        r#"
        SELECT audit_id, at, admin_subject, admin_email, action, target_subject, target_email,
               target_session_id, sessions_ended, host(ip) AS ip
        FROM admin_audit
        WHERE $1::timestamptz IS NULL OR (at, audit_id) < ($1, $2::uuid)
        ORDER BY at DESC, audit_id DESC
        LIMIT $3
        "#,
    )
    .bind(before.map(|c| c.key))
    .bind(before.map(|c| c.id))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let next = if entries.len() as i64 > limit {
        entries.truncate(limit as usize);
        entries.last().map(|e| Cursor {
            key: e.at,
            id: e.audit_id,
        })
    } else {
        None
    };
    Ok(AuditPage { entries, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor {
            key: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in [
            "",
            "!!!",
            "bm90LWEtY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("1|nope"),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn search_wildcards_are_literal() {
        assert_eq!(like_pattern("a%b_c\\"), "%a\\%b\\_c\\\\%");
    }
}
