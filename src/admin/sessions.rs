//! The session table: live logged-in sessions with their user and token health, searched,
//! filtered by refresh status, sorted three ways and paged by keyset.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::Cursor;
use crate::auth::tokens::RefreshStatus;
use crate::db::UnknownValue;

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
            SortOrder::Expires => "l.access_expires_at",
        }
    }

    fn descending(self) -> bool {
        !matches!(self, SortOrder::Expires)
    }
}

impl FromStr for SortOrder {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "last_seen" => Ok(SortOrder::LastSeen),
            "created" => Ok(SortOrder::Created),
            "expires" => Ok(SortOrder::Expires),
            other => Err(UnknownValue(other.to_owned())),
        }
    }
}

/// Filters and position of one page of the session table.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    /// Substring of the user's email, name or subject.
    pub search: Option<String>,
    /// One user's sessions only.
    pub user: Option<Uuid>,
    pub status: Option<RefreshStatus>,
    pub sort: SortOrder,
    pub after: Option<Cursor>,
    pub limit: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SessionRow {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub subject: String,
    /// The provider the session signed in with.
    pub issuer: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub provider_sid: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_status: RefreshStatus,
    pub failure_count: i32,
    pub last_refreshed_at: Option<DateTime<Utc>>,
}

impl SessionRow {
    fn cursor(&self, sort: SortOrder) -> Cursor {
        let key = match sort {
            SortOrder::LastSeen => self.last_seen_at,
            SortOrder::Created => self.created_at,
            SortOrder::Expires => self.access_expires_at,
        };
        Cursor {
            key,
            id: self.session_id,
        }
    }
}

pub struct SessionPage {
    pub rows: Vec<SessionRow>,
    /// Set when there are more rows after these.
    pub next: Option<Cursor>,
}

/// The columns of [`SessionRow`]: a logged-in session with its login.
const SESSION_ROWS: &str = r#"
    SELECT s.session_id, l.user_id, l.subject, l.issuer, l.email, l.name, l.provider_sid,
           s.created_at, s.last_seen_at, host(s.ip) AS ip, s.user_agent,
           l.access_expires_at, l.refresh_status, l.failure_count, l.last_refreshed_at
    FROM sessions s
    JOIN logins l ON l.token_id = s.token_id
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
               (coalesce(l.email, '') || ' ' || coalesce(l.name, '') || ' ' || l.subject) ILIKE $1)
          AND ($2::text IS NULL OR l.refresh_status = $2)
          AND ($3::timestamptz IS NULL OR ({column}, s.session_id) {after} ($3, $4::uuid))
          AND ($6::uuid IS NULL OR l.user_id = $6)
        ORDER BY {column} {direction}, s.session_id {direction}
        LIMIT $5
        "#
    );
    let limit = query.limit.clamp(1, 500);
    let mut rows: Vec<SessionRow> = crate::db::query_as(&sql)
        .bind(query.search.as_deref().map(like_pattern))
        .bind(query.status)
        .bind(query.after.map(|c| c.key))
        .bind(query.after.map(|c| c.id))
        .bind(limit + 1)
        .bind(query.user)
        .fetch_all(pool)
        .await?;
    let next = Cursor::page(&mut rows, limit, |r| r.cursor(query.sort));
    Ok(SessionPage { rows, next })
}

/// One live session, for the revoke confirmation.
pub async fn session(pool: &PgPool, session_id: Uuid) -> Result<Option<SessionRow>, sqlx::Error> {
    crate::db::query_as(&format!(
        "{SESSION_ROWS} WHERE s.session_id = $1 AND s.expires_at > now()"
    ))
    .bind(session_id)
    .fetch_optional(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_wildcards_are_literal() {
        assert_eq!(like_pattern("a%b_c\\"), "%a\\%b\\_c\\\\%");
    }

    #[test]
    fn sorts_parse_from_their_names_only() {
        assert_eq!(
            "expires".parse::<SortOrder>().ok(),
            Some(SortOrder::Expires)
        );
        assert!("EXPIRES".parse::<SortOrder>().is_err());
    }
}
