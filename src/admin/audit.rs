//! The audit trail: what admins did to sessions, and what shoppers did to their own (and the
//! session limit did for them), newest first.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::Cursor;
use crate::db::text_enum;

text_enum! {
    /// What was done (`admin_audit.action`).
    pub enum AuditAction {
        /// An admin ended one session.
        RevokeSession = "revoke_session",
        /// An admin ended every session of a user.
        RevokeUserSessions = "revoke_user_sessions",
        /// A shopper signed one of their other sessions out.
        SignOutSession = "sign_out_session",
        /// A shopper signed out every session but the one they used.
        SignOutOtherSessions = "sign_out_other_sessions",
        /// A shopper signed out everywhere, this session too.
        SignOutEverywhere = "sign_out_everywhere",
        /// A login beyond the per-user limit ended the least recently used session.
        SessionLimit = "session_limit",
    }
}

/// Who acted, as the trail records it: an admin, or the shopper themself.
pub struct Actor<'a> {
    pub user_id: Uuid,
    pub subject: &'a str,
    pub email: Option<&'a str>,
    pub ip: Option<String>,
}

/// Whom it was done to.
pub struct Target<'a> {
    pub user_id: Uuid,
    pub subject: &'a str,
    pub email: Option<&'a str>,
    pub session_id: Option<Uuid>,
}

/// Writes one entry of the trail (in the caller's transaction).
pub async fn record(
    conn: &mut sqlx::PgConnection,
    actor: &Actor<'_>,
    action: AuditAction,
    target: &Target<'_>,
    sessions_ended: i64,
) -> Result<(), sqlx::Error> {
    crate::db::query(
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
    .bind(action)
    .bind(target.user_id)
    .bind(target.subject)
    .bind(target.email)
    .bind(target.session_id)
    .bind(sessions_ended as i32)
    .bind(actor.ip.as_deref())
    .execute(conn)
    .await?;
    Ok(())
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
