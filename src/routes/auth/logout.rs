use actix_web::{HttpResponse, web};
use secrecy::SecretString;
use serde::Deserialize;

use crate::auth::tokens;
use crate::error::Result;
use crate::routes::page::{page_layout, render};
use crate::routes::require_csrf;
use crate::routes::respond::{NoStore, see_other};
use crate::session::TypedSession;
use crate::state::State;

#[derive(Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf_token: String,
}

/// Ends the session here and at the provider: RFC 7009 revocation (queued in the same
/// statement and sent by the revocation sender, so a slow provider never blocks logout and a
/// restart loses nothing), then RP-initiated logout when the provider offers it.
#[tracing::instrument(name = "Log out", skip_all)]
pub async fn log_out(
    state: State,
    session: TypedSession,
    form: web::Form<LogoutForm>,
) -> Result<HttpResponse> {
    require_csrf(&session, &form.csrf_token)?;
    let Some(auth) = session.auth() else {
        session.log_out();
        return Ok(see_other("/"));
    };
    // One statement: the tokens are deleted (the session rows with them) and queued for
    // revocation; the ID token comes back as the logout hint.
    let ended = tokens::delete_logins(
        &state.pool,
        &state.cipher,
        &[auth.token_id],
        tokens::EndReason::Logout,
    )
    .await?
    .pop();
    session.log_out();
    let Some(ended) = ended else {
        return Ok(see_other("/"));
    };
    state.revoker.nudge();
    tracing::info!(user_id = %auth.user_id, "User logged out");
    Ok(to_provider_logout(&state, &ended.issuer, ended.id_token.as_ref()).await)
}

/// Where the browser goes once its login has ended: the end-session endpoint of the login's
/// own provider (RP-initiated logout), or, when it has none (Google) or is no longer
/// configured, the shop's own page saying what happened.
pub async fn to_provider_logout(
    state: &State,
    issuer: &str,
    id_token_hint: Option<&SecretString>,
) -> HttpResponse {
    let end_session = match state.providers.by_issuer(issuer) {
        Some(oidc) => {
            oidc.end_session_url(id_token_hint, &crate::crypto::random_token(16))
                .await
        }
        None => None,
    };
    see_other(end_session.as_ref().map_or("/signed-out", |u| u.as_str()))
}

/// `GET /signed-out`: where logout ends when the provider has no `end_session_endpoint`.
pub async fn signed_out_page(state: State, session: TypedSession) -> Result<HttpResponse> {
    let layout = page_layout(&state, &session);
    Ok(render(
        &state.tera,
        "auth/signed_out.html",
        &layout,
        serde_json::json!({}),
    )?
    .with_no_store())
}
