use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::provider_error;
use crate::account::{self, Me};
use crate::auth::grants_admin;
use crate::auth::identity::StepUp;
use crate::auth::oidc::{Login, ShopIdTokenClaims};
use crate::auth::tokens::{LoginSource, StoredLogin, store_login};
use crate::error::{AppError, Result};
use crate::routes::page::relative;
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
    // The provider this login was sent to; only its answer is accepted.
    let oidc = if login.provider.is_empty() {
        state.providers.first()
    } else {
        state
            .providers
            .by_id(&login.provider)
            .ok_or_else(stale_login)?
    };
    if let Some(error) = query.error {
        if login.step_up.is_some() {
            // A cancelled or refused re-authentication: back to the cart, nothing ordered.
            tracing::info!("Step-up re-authentication not completed at the provider");
            return Ok(back_with(
                session,
                &login.return_to,
                "You did not confirm it was you, so your order was not placed. Your cart is as you left it.",
            ));
        }
        return Err(provider_said_no(&error, query.error_description.as_deref()));
    }
    // RFC 9207: an `iss` that is not the provider this login went to means a mix-up attack
    // (another of the shop's providers included); a missing one, from a provider that
    // announced it sends one, too.
    match &query.iss {
        Some(iss) if iss.trim_end_matches('/') != oidc.issuer().trim_end_matches('/') => {
            tracing::warn!(provider = %oidc.id(), "Callback `iss` does not match the login's provider");
            return Err(AppError::Forbidden(
                "The sign-in response came from an unexpected identity provider.".into(),
            ));
        }
        None if oidc.requires_iss().await.map_err(provider_error)? => {
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
    let exchanged = oidc.exchange_code(code, &login).await;
    state
        .metrics
        .provider_duration
        .with_label_values(&["token_exchange"])
        .observe(started.elapsed().as_secs_f64());
    let tokens = exchanged.map_err(provider_error)?;
    if let Some(step_up) = &login.step_up
        && let Err(why) = confirms(step_up, &tokens.claims)
    {
        tracing::warn!(
            reason = why,
            "Step-up re-authentication not confirmed by the ID token"
        );
        return Ok(back_with(
            session,
            &login.return_to,
            "We could not confirm it was you, so your order was not placed. Please try again.",
        ));
    }
    let stored = store_login(
        &state.pool,
        &state.cipher,
        &state.settings.refresh.cadence(),
        &LoginSource {
            issuer: oidc.issuer(),
            link_verified_emails: oidc.links_verified_emails(),
            linking_issuers: &state.providers.linking_issuers(),
        },
        &tokens,
    )
    .await?;
    let token_id = stored.token_id;
    let ip = crate::routes::client_ip(req);
    enforce_session_limit(state, session, oidc.issuer(), &tokens, stored, ip.clone()).await?;
    if login.step_up.is_some() {
        let _ = session.set_notice(
            "Large orders need a recent sign-in: thank you for confirming it is you. You can place your order now.",
        );
    }
    let client = ClientInfo {
        ip,
        user_agent: req
            .headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(512).collect()),
    };
    session
        .log_in(token_id, &client)
        .map_err(|e| AppError::Unexpected(e.into()))?;
    tracing::info!(%token_id, provider = %oidc.id(), "User logged in");
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

/// Back to `return_to` (the cart) with a sentence, after a step-up that did not complete.
fn back_with(session: &TypedSession, return_to: &str, notice: &str) -> HttpResponse {
    let _ = session.set_notice(notice);
    found(return_to)
}

/// Whether a step-up login's ID token shows a fresh authentication: `auth_time` within
/// `max_age` (a minute of clock skew allowed) and, when asked for, one of the `acr` values.
fn confirms(step_up: &StepUp, claims: &ShopIdTokenClaims) -> Result<(), &'static str> {
    const SKEW_SECS: i64 = 60;
    let auth_time = claims.auth_time().ok_or("no auth_time in the ID token")?;
    let age = (chrono::Utc::now() - auth_time).num_seconds();
    if age > i64::try_from(step_up.max_age_secs).unwrap_or(i64::MAX) + SKEW_SECS {
        return Err("auth_time older than max_age");
    }
    if !step_up.acr_values.is_empty() {
        let acr = claims.auth_context_ref().map(|a| a.as_str().to_owned());
        if !acr.is_some_and(|acr| step_up.acr_values.contains(&acr)) {
            return Err("acr not one of the values asked for");
        }
    }
    Ok(())
}

/// Ends the user's least recently used sessions beyond their limit (`admin.max_sessions` for
/// admins, `session.max_per_user` for others) and tells them which.
async fn enforce_session_limit(
    state: &State,
    session: &TypedSession,
    oidc_issuer: &str,
    login: &Login,
    stored: StoredLogin,
    ip: Option<String>,
) -> Result<()> {
    let s = &state.settings;
    let claims = &login.claims;
    let email = claims.email().map(|e| e.as_str().to_owned());
    let subject = claims.subject().as_str();
    let admin = grants_admin(
        s,
        oidc_issuer,
        subject,
        email.as_deref(),
        login.email_verified,
        &login.groups,
    );
    let limit = if admin {
        s.admin.max_sessions
    } else {
        s.session.max_per_user
    };
    let me = Me {
        user_id: stored.user_id,
        subject,
        email: email.as_deref(),
        current: stored.token_id,
        ip,
    };
    let ended = account::enforce_limit(&state.pool, &me, limit).await?;
    if !ended.is_empty() {
        state.revoker.nudge();
        let devices: Vec<String> = ended
            .iter()
            .map(|d| format!("{} (last used {})", d.device, relative(d.last_seen_at)))
            .collect();
        let _ = session.set_notice(format!(
            "You can be signed in on at most {limit} devices at once, so we signed you out of {}.",
            devices.join(" and ")
        ));
    }
    Ok(())
}
