//! Server-side sessions: the Postgres store, typed access to what a session holds, and cleanup.

pub mod cleanup;
pub mod pg_store;
mod typed;

pub use pg_store::{PgSessionStore, SessionTimeouts, StoreUnavailable};
pub use typed::{PendingLogin, TypedSession};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Read-only entry the store adds on load: the logged-in user and their token health.
pub(crate) const AUTH_KEY: &str = "__auth";
/// The login (row of `oauth_tokens`) this session belongs to.
pub(crate) const TOKEN_KEY: &str = "token_id";
/// IP address and user agent recorded at login, for the admin dashboard.
pub(crate) const CLIENT_KEY: &str = "client";

/// Who is logged in, as joined from `users` and `oauth_tokens` on every load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthState {
    pub user_id: Uuid,
    pub token_id: Uuid,
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_status: String,
}

impl AuthState {
    /// The provider refused the refresh token: the shopper must log in again.
    pub fn needs_login(&self) -> bool {
        self.refresh_status == "needs_login"
    }

    pub fn display_name(&self) -> &str {
        self.name
            .as_deref()
            .or(self.email.as_deref())
            .unwrap_or(&self.subject)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}
