//! An admin ends one session or every session of its user: the rows go, the audit row is
//! written and their tokens queued for revocation, in one transaction.

use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::AuditAction;
use super::audit::{self, Actor};
use crate::auth::tokens::{self, EndReason, EndedLogin};
use crate::crypto::TokenCipher;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeScope {
    /// This session only.
    #[default]
    Session,
    /// Every session of the session's user.
    User,
}

pub struct Revoked {
    pub sessions_ended: i64,
    /// The ended logins (their tokens are queued for revocation).
    pub logins: Vec<EndedLogin>,
}

/// The session being revoked and its user.
#[derive(sqlx::FromRow)]
struct Target {
    token_id: Uuid,
    user_id: Uuid,
    subject: String,
    email: Option<String>,
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
    let mut tx = crate::db::begin(pool).await?;
    // The session row is locked, so a concurrent save cannot slip in between.
    let target: Option<Target> = crate::db::query_as(
        r#"
        SELECT l.token_id, l.user_id, l.subject, l.email
        FROM sessions s
        JOIN logins l ON l.token_id = s.token_id
        WHERE s.session_id = $1
        FOR UPDATE OF s
        "#,
    )
    .bind(session_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(target) = target else {
        return Ok(None);
    };
    let (sessions_ended, logins) = match scope {
        RevokeScope::Session => {
            let ended = crate::session::end_sessions_of_logins(&mut tx, &[target.token_id]).await?;
            (
                ended,
                tokens::delete_logins(&mut *tx, cipher, &[target.token_id], EndReason::AdminRevoke)
                    .await?,
            )
        }
        RevokeScope::User => {
            let ended = crate::session::end_sessions_of_user(&mut tx, target.user_id).await?;
            (
                ended,
                tokens::delete_logins_of_user(
                    &mut *tx,
                    cipher,
                    target.user_id,
                    EndReason::AdminRevoke,
                )
                .await?,
            )
        }
    };
    let action = match scope {
        RevokeScope::Session => AuditAction::RevokeSession,
        RevokeScope::User => AuditAction::RevokeUserSessions,
    };
    let target_row = audit::Target {
        user_id: target.user_id,
        subject: &target.subject,
        email: target.email.as_deref(),
        session_id: Some(session_id),
    };
    audit::record(&mut tx, actor, action, &target_row, sessions_ended).await?;
    tx.commit().await?;
    tracing::info!(admin = %actor.user_id, target_user = %target.user_id, %session_id, ?scope, sessions_ended, "Sessions revoked by an admin");
    Ok(Some(Revoked {
        sessions_ended,
        logins,
    }))
}
