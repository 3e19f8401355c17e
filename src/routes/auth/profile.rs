use actix_web::HttpResponse;

use crate::routes::respond::NoStore;
use serde::Serialize;

use secrecy::ExposeSecret;

use crate::auth::oidc::{OidcError, stored_token_claims};
use crate::auth::refresh::AccessError;
use crate::error::{AppError, Result};
use crate::routes::identity::CurrentUser;
use crate::routes::page::page_layout;
use crate::routes::page::render;
use crate::session::TypedSession;
use crate::state::State;

#[derive(Serialize)]
struct ProfilePage {
    claims: Vec<(String, String)>,
    /// Why the claims come from the ID token rather than userinfo.
    notice: Option<String>,
}

pub fn access_error(err: AccessError, return_to: &str) -> AppError {
    match err {
        AccessError::Gone | AccessError::NeedsLogin => AppError::LoginRequired {
            return_to: return_to.into(),
        },
        AccessError::Provider(e) => {
            tracing::warn!(error = %e, "Token refresh failed");
            AppError::Unavailable(
                "The sign-in provider is unavailable; we are retrying. Please try again in a moment.".into(),
            )
        }
        AccessError::Database(e) => e.into(),
        AccessError::Store(e) => AppError::Unexpected(e.into()),
    }
}

/// The user's claims, fetched from userinfo with their access token (never from the browser).
#[tracing::instrument(name = "Profile page", skip_all)]
pub async fn profile_page(
    state: State,
    session: TypedSession,
    auth: CurrentUser,
) -> Result<HttpResponse> {
    const HERE: &str = "/profile";
    let mut rejected = None;
    let (tokens, info) =
        loop {
            let tokens = state
                .refresher
                .usable_access_token(auth.token_id, rejected)
                .await
                .map_err(|e| access_error(e, HERE))?;
            let oidc = state.providers.by_issuer(&tokens.issuer).ok_or_else(|| {
                AppError::LoginRequired {
                    return_to: HERE.into(),
                }
            })?;
            match oidc.userinfo(&tokens.access_token).await {
                Ok(info) => break (tokens, info),
                // The provider no longer accepts the access token: refresh once, then re-login.
                Err(OidcError::Refused { .. }) if rejected.is_none() => {
                    rejected = Some(tokens.access_expires_at);
                }
                Err(OidcError::Refused { .. }) => {
                    return Err(AppError::LoginRequired {
                        return_to: HERE.into(),
                    });
                }
                Err(e) => return Err(super::provider_error(e)),
            }
        };
    // Userinfo must describe the signed-in subject (OIDC Core 5.3.2); if it names another,
    // its answer is ignored and the page shows what the verified ID token vouches for.
    let (claims, notice) = if info.subject().as_str() == auth.subject {
        let value = serde_json::to_value(&info).map_err(|e| AppError::Unexpected(e.into()))?;
        (value.as_object().cloned().unwrap_or_default(), None)
    } else {
        tracing::warn!(user_id = %auth.user_id, "Userinfo named another subject; ignored");
        let from_id_token = tokens
            .id_token
            .as_ref()
            .and_then(|t| stored_token_claims(t.expose_secret()))
            .unwrap_or_default();
        (
            from_id_token,
            Some("The provider's profile service answered for another account, so this page shows only what your sign-in itself vouches for.".to_owned()),
        )
    };
    let claims = claims
        .iter()
        .map(|(k, v)| {
            let shown = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), shown)
        })
        .collect();
    let layout = page_layout(&state, &session);
    Ok(render(
        &state.tera,
        "auth/profile.html",
        &layout,
        ProfilePage { claims, notice },
    )?
    .with_no_store())
}
