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
    /// A re-authentication before a large order: the new ID token's `auth_time` must be this
    /// recent (seconds), and its `acr` one of the values asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_up: Option<StepUp>,
    /// The provider it went to (`[[oidc.providers]] id`; empty: the first).
    #[serde(default)]
    pub provider: String,
}

/// What a step-up login asked the provider for (`max_age`, `acr_values`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepUp {
    pub max_age_secs: u64,
    #[serde(default)]
    pub acr_values: Vec<String>,
}

/// Who is logged in, as the session load reads it from the `logins` view on every request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthState {
    pub user_id: Uuid,
    pub token_id: Uuid,
    pub subject: String,
    /// The provider the person signed in with (its issuer).
    #[serde(default)]
    pub issuer: String,
    pub email: Option<String>,
    /// The provider vouches for `email`.
    #[serde(default)]
    pub email_verified: bool,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_status: RefreshStatus,
    /// When the person last authenticated at the provider (the login's `auth_time`, else
    /// the login itself).
    #[serde(default)]
    pub auth_time: Option<DateTime<Utc>>,
    /// The authentication context class of that authentication, if the provider said.
    #[serde(default)]
    pub acr: Option<String>,
}

impl AuthState {
    /// The provider refused the refresh token: the shopper must log in again.
    pub fn needs_login(&self) -> bool {
        self.refresh_status == RefreshStatus::NeedsLogin
    }

    /// Whether the person authenticated within `max_age_secs`, with one of `acr_values`
    /// (any, when none are asked for).
    pub fn authenticated_recently(&self, max_age_secs: u64, acr_values: &[String]) -> bool {
        let recent = self.auth_time.is_some_and(|at| {
            (Utc::now() - at).num_seconds() <= i64::try_from(max_age_secs).unwrap_or(i64::MAX)
        });
        let acr_ok = acr_values.is_empty()
            || self
                .acr
                .as_ref()
                .is_some_and(|acr| acr_values.iter().any(|v| v == acr));
        recent && acr_ok
    }

    pub fn display_name(&self) -> &str {
        self.name
            .as_deref()
            .or(self.email.as_deref())
            .unwrap_or(&self.subject)
    }
}
