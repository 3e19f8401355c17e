//! Server-side sessions: the Postgres store, typed access to what a session holds, and cleanup.

pub mod cache;
pub mod cleanup;
pub mod csrf;
pub mod merge;
pub mod pg_store;
mod typed;

pub use pg_store::{PgSessionStore, SessionTimeouts, StoreTrouble, watch_store};
pub use typed::TypedSession;

use serde::{Deserialize, Serialize};

pub use crate::auth::identity::{AuthState, PendingLogin};

/// Read-only entry the store adds on load: the logged-in user and their token health.
pub(crate) const AUTH_KEY: &str = "__auth";
/// The login (its `token_id`) this session belongs to.
pub(crate) const TOKEN_KEY: &str = "token_id";
/// IP address and user agent recorded at login, for the admin dashboard.
pub(crate) const CLIENT_KEY: &str = "client";
/// Logins in flight (several tabs may log in at once).
pub(crate) const PENDING_LOGINS_KEY: &str = "pending_logins";

/// Entries the store adds on load and reads back on save, never persisted: the row's version
/// and the state as read (for the compare-and-set and the merge), the cart changes a request
/// made (to make them again on a fresher cart), and a request for a new session key.
pub(crate) const VERSION_KEY: &str = "__version";
pub(crate) const BASE_KEY: &str = "__base";
pub(crate) const CART_CHANGES_KEY: &str = "__cart_changes";
pub(crate) const REKEY_KEY: &str = "__rekey";
const DERIVED_KEYS: [&str; 5] = [AUTH_KEY, VERSION_KEY, BASE_KEY, CART_CHANGES_KEY, REKEY_KEY];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Live logged-in sessions (the dashboard's and the metrics' "active sessions").
pub async fn count_logged_in(pool: &sqlx::PgPool) -> Result<i64, sqlx::Error> {
    crate::db::query_scalar(
        "SELECT count(*) FROM sessions WHERE token_id IS NOT NULL AND expires_at > now()",
    )
    .fetch_one(pool)
    .await
}

/// Deletes the sessions of these logins; returns how many ended.
pub async fn end_sessions_of_logins(
    conn: &mut sqlx::PgConnection,
    token_ids: &[uuid::Uuid],
) -> Result<i64, sqlx::Error> {
    let ended = crate::db::query("DELETE FROM sessions WHERE token_id = ANY($1)")
        .bind(token_ids)
        .execute(conn)
        .await?;
    Ok(ended.rows_affected() as i64)
}

/// Deletes every logged-in session of one user; returns how many ended.
pub async fn end_sessions_of_user(
    conn: &mut sqlx::PgConnection,
    user_id: uuid::Uuid,
) -> Result<i64, sqlx::Error> {
    let ended = crate::db::query(
        "DELETE FROM sessions WHERE token_id IN (SELECT token_id FROM logins WHERE user_id = $1)",
    )
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(ended.rows_affected() as i64)
}
