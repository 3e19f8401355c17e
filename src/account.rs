//! The signed-in person's own sessions: the devices page, signing out one session, all the
//! others or every one, and the per-user session limit applied at login. Sessions end through
//! the token store (their tokens queued for revocation) and every action is written to the
//! audit trail as the person's own (or the limit's).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::admin::user_agent::describe;
use crate::admin::{self, Actor, AuditAction, Target};
use crate::auth::tokens::{self, EndReason, EndedLogin, RefreshStatus};
use crate::crypto::TokenCipher;

/// Sessions started this recently are highlighted on the devices page.
const RECENT_HOURS: i64 = 24;

/// One live session of the user, as the devices page shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Device {
    pub session_id: Uuid,
    /// The provider it signed in with.
    #[serde(skip)]
    pub issuer: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub ip: Option<String>,
    #[serde(skip)]
    pub user_agent: Option<String>,
    #[serde(skip)]
    pub token_id: Uuid,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_status: RefreshStatus,
    /// "Firefox 128 on Linux".
    #[sqlx(skip)]
    pub device: String,
    /// The session this page is shown in.
    #[sqlx(skip)]
    pub this_device: bool,
    /// Started in the last 24 hours.
    #[sqlx(skip)]
    pub recent: bool,
}

/// Every live session of `user_id`, most recently used first; `current` (the login of the
/// request) marks "this device".
pub async fn devices(
    pool: &PgPool,
    user_id: Uuid,
    current: Uuid,
) -> Result<Vec<Device>, sqlx::Error> {
    let mut devices: Vec<Device> = crate::db::query_as(
        r#"
        SELECT s.session_id, l.issuer, s.created_at, s.last_seen_at, host(s.ip) AS ip,
               s.user_agent, l.token_id, l.access_expires_at, l.refresh_status
        FROM logins l
        JOIN sessions s USING (token_id)
        WHERE l.user_id = $1 AND s.expires_at > now()
        ORDER BY s.last_seen_at DESC, s.session_id
        "#,
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    let recent = Utc::now() - chrono::Duration::hours(RECENT_HOURS);
    for d in &mut devices {
        d.device = describe(d.user_agent.as_deref());
        d.this_device = d.token_id == current;
        d.recent = d.created_at > recent;
    }
    Ok(devices)
}

/// Which sessions a person signs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignOut {
    /// One other session (by its id).
    One(Uuid),
    /// Every session but the current one.
    Others,
    /// Every session, the current one too.
    Everywhere,
}

/// The person acting on their own sessions, from the current login.
pub struct Me<'a> {
    pub user_id: Uuid,
    pub subject: &'a str,
    pub email: Option<&'a str>,
    pub current: Uuid,
    pub ip: Option<String>,
}

/// Ends the chosen sessions of `me` (their tokens queued for revocation) and audits it, in
/// one transaction. Returns the logins ended (the current one's ID token is the logout hint).
pub async fn sign_out(
    pool: &PgPool,
    cipher: &TokenCipher,
    me: &Me<'_>,
    which: SignOut,
) -> Result<Vec<EndedLogin>, sqlx::Error> {
    let mut tx = crate::db::begin(pool).await?;
    let logins: Vec<Uuid> = match which {
        SignOut::One(session_id) => {
            crate::db::query_scalar(
                "SELECT l.token_id FROM sessions s JOIN logins l USING (token_id)
                 WHERE s.session_id = $1 AND l.user_id = $2 AND l.token_id <> $3",
            )
            .bind(session_id)
            .bind(me.user_id)
            .bind(me.current)
            .fetch_all(&mut *tx)
            .await?
        }
        SignOut::Others => {
            crate::db::query_scalar(
                "SELECT token_id FROM logins WHERE user_id = $1 AND token_id <> $2",
            )
            .bind(me.user_id)
            .bind(me.current)
            .fetch_all(&mut *tx)
            .await?
        }
        SignOut::Everywhere => {
            crate::db::query_scalar("SELECT token_id FROM logins WHERE user_id = $1")
                .bind(me.user_id)
                .fetch_all(&mut *tx)
                .await?
        }
    };
    let ended = tokens::delete_logins(&mut *tx, cipher, &logins, EndReason::SignedOut).await?;
    let action = match which {
        SignOut::One(_) => AuditAction::SignOutSession,
        SignOut::Others => AuditAction::SignOutOtherSessions,
        SignOut::Everywhere => AuditAction::SignOutEverywhere,
    };
    let actor = Actor {
        user_id: me.user_id,
        subject: me.subject,
        email: me.email,
        ip: me.ip.clone(),
    };
    let target = Target {
        user_id: me.user_id,
        subject: me.subject,
        email: me.email,
        session_id: match which {
            SignOut::One(id) => Some(id),
            _ => None,
        },
    };
    admin::record(&mut tx, &actor, action, &target, ended.len() as i64).await?;
    tx.commit().await?;
    Ok(ended)
}

/// A session the limit ended, described for the person who just logged in.
#[derive(Debug, Clone, Serialize)]
pub struct EndedDevice {
    pub device: String,
    pub last_seen_at: DateTime<Utc>,
}

/// A login of `me` has just completed: if that makes more than `limit` sessions (0: no
/// limit), the least recently used ones end (tokens queued for revocation), audited as the
/// limit's doing. The new login itself has no session row yet and is never ended.
pub async fn enforce_limit(
    pool: &PgPool,
    me: &Me<'_>,
    limit: u32,
) -> Result<Vec<EndedDevice>, sqlx::Error> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    #[derive(sqlx::FromRow)]
    struct Over {
        session_id: Uuid,
        token_id: Uuid,
        user_agent: Option<String>,
        last_seen_at: DateTime<Utc>,
    }
    let mut tx = crate::db::begin(pool).await?;
    let over: Vec<Over> = crate::db::query_as(
        r#"
        SELECT s.session_id, l.token_id, s.user_agent, s.last_seen_at
        FROM logins l
        JOIN sessions s USING (token_id)
        WHERE l.user_id = $1 AND l.token_id <> $2 AND s.expires_at > now()
        ORDER BY s.last_seen_at DESC, s.session_id
        OFFSET $3
        FOR UPDATE OF s
        "#,
    )
    .bind(me.user_id)
    .bind(me.current)
    .bind(i64::from(limit) - 1)
    .fetch_all(&mut *tx)
    .await?;
    if over.is_empty() {
        return Ok(Vec::new());
    }
    let logins: Vec<Uuid> = over.iter().map(|o| o.token_id).collect();
    let ended = tokens::end_logins(&mut *tx, &logins, EndReason::SessionLimit).await?;
    let actor = Actor {
        user_id: me.user_id,
        subject: me.subject,
        email: me.email,
        ip: me.ip.clone(),
    };
    for o in &over {
        let target = Target {
            user_id: me.user_id,
            subject: me.subject,
            email: me.email,
            session_id: Some(o.session_id),
        };
        admin::record(&mut tx, &actor, AuditAction::SessionLimit, &target, 1).await?;
    }
    tx.commit().await?;
    tracing::info!(user_id = %me.user_id, ended, limit, "Session limit ended older sessions");
    Ok(over
        .into_iter()
        .map(|o| EndedDevice {
            device: describe(o.user_agent.as_deref()),
            last_seen_at: o.last_seen_at,
        })
        .collect())
}
