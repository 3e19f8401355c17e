//! `/account/sessions`: the signed-in person's own sessions — every device with its address,
//! when it signed in and was last used, and its token's health — and signing out one of them,
//! all the others, or everywhere.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::account::{self, Me, SignOut};
use crate::error::Result;
use crate::routes::auth::logout::to_provider_logout;
use crate::routes::identity::CurrentUser;
use crate::routes::page::{page_layout, relative, render};
use crate::routes::respond::{NoStore, see_other};
use crate::routes::{client_ip, require_csrf};
use crate::session::TypedSession;
use crate::state::State;

#[derive(Serialize)]
struct DeviceView {
    #[serde(flatten)]
    device: account::Device,
    signed_in: String,
    last_seen: String,
    token_health: &'static str,
    /// Which provider it signed in with, when the shop has several.
    provider: Option<String>,
}

#[derive(Serialize)]
struct SessionsPage {
    devices: Vec<DeviceView>,
    others: usize,
}

fn token_health(device: &account::Device) -> &'static str {
    use crate::auth::tokens::RefreshStatus;
    match device.refresh_status {
        RefreshStatus::NeedsLogin => "signed out by the provider",
        RefreshStatus::Retrying => "renewal retrying",
        RefreshStatus::Ok if device.access_expires_at < chrono::Utc::now() => "renewing",
        RefreshStatus::Ok => "healthy",
    }
}

/// `GET /account/sessions`.
#[tracing::instrument(name = "Your sessions", skip_all)]
pub async fn sessions_page(
    state: State,
    session: TypedSession,
    user: CurrentUser,
) -> Result<HttpResponse> {
    session.csrf_token();
    let devices = account::devices(&state.pool, user.user_id, user.token_id).await?;
    let others = devices.iter().filter(|d| !d.this_device).count();
    let devices = devices
        .into_iter()
        .map(|device| DeviceView {
            signed_in: relative(device.created_at),
            last_seen: relative(device.last_seen_at),
            token_health: token_health(&device),
            provider: state
                .providers
                .several()
                .then(|| state.providers.display_name(&device.issuer)),
            device,
        })
        .collect();
    let layout = page_layout(&state, &session);
    Ok(render(
        &state.tera,
        "account/sessions.html",
        &layout,
        SessionsPage { devices, others },
    )?
    .with_no_store())
}

#[derive(Deserialize)]
pub struct SignOutForm {
    #[serde(default)]
    csrf_token: String,
}

/// The CSRF check, the sign-out, and the revocation sender woken: what every form here does.
async fn sign_out(
    state: &State,
    req: &HttpRequest,
    session: &TypedSession,
    user: &CurrentUser,
    csrf_token: &str,
    which: SignOut,
) -> Result<Vec<crate::auth::tokens::EndedLogin>> {
    require_csrf(session, csrf_token)?;
    let me = Me {
        user_id: user.user_id,
        subject: &user.subject,
        email: user.email.as_deref(),
        current: user.token_id,
        ip: client_ip(req),
    };
    let ended = account::sign_out(&state.pool, &state.cipher, &me, which).await?;
    state.revoker.nudge();
    Ok(ended)
}

/// `POST /account/sessions/{id}/sign-out`: one of the person's other sessions.
#[tracing::instrument(name = "Sign out a session", skip_all)]
pub async fn sign_out_one(
    state: State,
    req: HttpRequest,
    session: TypedSession,
    user: CurrentUser,
    session_id: web::Path<Uuid>,
    form: web::Form<SignOutForm>,
) -> Result<HttpResponse> {
    let which = SignOut::One(*session_id);
    let ended = sign_out(&state, &req, &session, &user, &form.csrf_token, which).await?;
    let _ = session.set_notice(if ended.is_empty() {
        "That session had already ended."
    } else {
        "That session is signed out. Its next page will ask it to log in again."
    });
    Ok(see_other("/account/sessions"))
}

/// `POST /account/sessions/sign-out-others`: every session but this one.
#[tracing::instrument(name = "Sign out other sessions", skip_all)]
pub async fn sign_out_others(
    state: State,
    req: HttpRequest,
    session: TypedSession,
    user: CurrentUser,
    form: web::Form<SignOutForm>,
) -> Result<HttpResponse> {
    let which = SignOut::Others;
    let ended = sign_out(&state, &req, &session, &user, &form.csrf_token, which).await?;
    let _ = session.set_notice(match ended.len() {
        0 => "You had no other session.".to_owned(),
        1 => "Your other session is signed out.".to_owned(),
        n => format!("Your {n} other sessions are signed out."),
    });
    Ok(see_other("/account/sessions"))
}

/// `POST /account/sessions/sign-out-everywhere`: every session, this one too, then
/// RP-initiated logout at the provider.
#[tracing::instrument(name = "Sign out everywhere", skip_all)]
pub async fn sign_out_everywhere(
    state: State,
    req: HttpRequest,
    session: TypedSession,
    user: CurrentUser,
    form: web::Form<SignOutForm>,
) -> Result<HttpResponse> {
    let which = SignOut::Everywhere;
    let ended = sign_out(&state, &req, &session, &user, &form.csrf_token, which).await?;
    session.log_out();
    let hint = ended
        .iter()
        .find(|e| e.token_id == user.token_id)
        .and_then(|e| e.id_token.as_ref());
    tracing::info!(user_id = %user.user_id, sessions = ended.len(), "Signed out everywhere");
    Ok(to_provider_logout(&state, &user.issuer, hint).await)
}
