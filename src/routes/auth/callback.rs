use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::provider_error;
use crate::auth::tokens::store_login;
use crate::error::{AppError, Result};
use crate::routes::respond::found;
use crate::session::{ClientInfo, TypedSession};
use crate::state::State;

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn stale_login() -> AppError {
    AppError::Forbidden(
        "This sign-in link is invalid, was already used or has expired. Please log in again."
            .into(),
    )
}

/// Completes the Authorization Code flow: state, `iss`, one code exchange, full ID-token
/// validation, then a renewed session bound to the stored (encrypted) tokens.
#[tracing::instrument(name = "Login callback", skip_all)]
pub async fn login_callback(
    req: HttpRequest,
    state: State,
    session: TypedSession,
    query: web::Query<CallbackQuery>,
) -> Result<HttpResponse> {
    let result = complete_login(&req, &state, &session, query.into_inner()).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(AppError::Unavailable(_) | AppError::BadGateway(_)) => "provider_unavailable",
        Err(AppError::Unexpected(_)) => "error",
        Err(_) => "rejected",
    };
    state.metrics.logins.with_label_values(&[outcome]).inc();
    result
}

async fn complete_login(
    req: &HttpRequest,
    state: &State,
    session: &TypedSession,
    query: CallbackQuery,
) -> Result<HttpResponse> {
    let Some(state_param) = query
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= 512)
    else {
        if let Some(error) = query.error {
            return Err(provider_said_no(&error, query.error_description.as_deref()));
        }
        return Err(stale_login());
    };
    // Single use: whatever happens next, this state cannot be presented again.
    let login = session
        .take_login(state_param)
        .map_err(|e| AppError::Unexpected(e.into()))?
        .ok_or_else(stale_login)?;
    if let Some(error) = query.error {
        return Err(provider_said_no(&error, query.error_description.as_deref()));
    }
    // RFC 9207: an `iss` that is not our provider means a mix-up attack; a missing one, from
    // a provider that announced it sends one, too.
    match &query.iss {
        Some(iss) if iss.trim_end_matches('/') != state.oidc.issuer().trim_end_matches('/') => {
            tracing::warn!("Callback `iss` does not match the configured issuer");
            return Err(AppError::Forbidden(
                "The sign-in response came from an unexpected identity provider.".into(),
            ));
        }
        None if state.oidc.requires_iss().await.map_err(provider_error)? => {
            tracing::warn!("Callback without the `iss` its provider announced (RFC 9207)");
            return Err(AppError::Forbidden(
                "The sign-in response did not say which identity provider sent it.".into(),
            ));
        }
        _ => {}
    }
    let code = query
        .code
        .filter(|c| !c.is_empty() && c.len() <= 2048)
        .ok_or_else(|| {
            AppError::BadRequest("The sign-in response has no authorization code.".into())
        })?;
    let started = std::time::Instant::now();
    let exchanged = state.oidc.exchange_code(code, &login).await;
    state
        .metrics
        .provider_duration
        .with_label_values(&["token_exchange"])
        .observe(started.elapsed().as_secs_f64());
    let tokens = exchanged.map_err(provider_error)?;
    let token_id = store_login(
        &state.pool,
        &state.cipher,
        &state.settings.refresh.cadence(),
        state.oidc.issuer(),
        &tokens,
    )
    .await?;
    let client = ClientInfo {
        ip: crate::routes::client_ip(req),
        user_agent: req
            .headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(512).collect()),
    };
    session
        .log_in(token_id, &client)
        .map_err(|e| AppError::Unexpected(e.into()))?;
    tracing::info!(%token_id, "User logged in");
    // 302, as the login flow's redirects are (the design's contract for `/callback`).
    Ok(found(&login.return_to))
}

fn provider_said_no(error: &str, description: Option<&str>) -> AppError {
    let error: String = error.chars().take(100).collect();
    let message = match error.as_str() {
        "access_denied" => "The sign-in was cancelled.".to_owned(),
        "login_required" | "interaction_required" | "consent_required" => {
            "The identity provider needs you to sign in again.".to_owned()
        }
        _ => match description {
            Some(d) => format!(
                "The identity provider could not sign you in ({error}: {}).",
                d.chars().take(300).collect::<String>()
            ),
            None => format!("The identity provider could not sign you in ({error})."),
        },
    };
    AppError::BadRequest(message)
}
