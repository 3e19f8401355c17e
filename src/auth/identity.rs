//! Who is logged in, and a login on its way: the values the session carries for the auth flow.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::tokens::RefreshStatus;

/// One `/login` in flight: what `/callback` needs to finish it. Single use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub return_to: String,
    pub created_at: i64,
}

/// Who is logged in, as the session load reads it from the `logins` view on every request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthState {
    pub user_id: Uuid,
    pub token_id: Uuid,
    pub subject: String,
    pub email: Option<String>,
    /// The provider vouches for `email`.
    #[serde(default)]
    pub email_verified: bool,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_status: RefreshStatus,
}

impl AuthState {
    /// The provider refused the refresh token: the shopper must log in again.
    pub fn needs_login(&self) -> bool {
        self.refresh_status == RefreshStatus::NeedsLogin
    }

    pub fn display_name(&self) -> &str {
        self.name
            .as_deref()
            .or(self.email.as_deref())
            .unwrap_or(&self.subject)
    }
}
