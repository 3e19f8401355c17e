//! The audit trail of admin actions, newest first.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::Cursor;
use crate::db::text_enum;

text_enum! {
    /// What an admin did (`admin_audit.action`).
    pub enum AuditAction {
        RevokeSession = "revoke_session",
        RevokeUserSessions = "revoke_user_sessions",
    }
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub audit_id: Uuid,
    pub at: DateTime<Utc>,
    pub admin_subject: String,
    pub admin_email: Option<String>,
    pub action: AuditAction,
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
    let mut entries: Vec<AuditEntry> = crate::db::query_as(
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
    let next = Cursor::page(&mut entries, limit, |e| Cursor {
        key: e.at,
        id: e.audit_id,
    });
    Ok(AuditPage { entries, next })
}
