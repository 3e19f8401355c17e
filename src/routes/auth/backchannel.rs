use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::auth::logout_tokens;
use crate::auth::oidc::{LogoutTokenNames, OidcError};
use crate::auth::tokens;
use crate::state::State;

#[derive(Deserialize)]
pub struct BackchannelForm {
    logout_token: Option<String>,
}

fn json_error(status: actix_web::http::StatusCode, description: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "error": "invalid_request", "error_description": description }))
}

/// OIDC Back-Channel Logout 1.0: a provider tells us a user's session ended there; only that
/// provider's logins end. Works across any number of instances because the sessions are
/// ended in Postgres.
#[tracing::instrument(name = "Back-channel logout", skip_all, fields(ended = tracing::field::Empty))]
pub async fn backchannel_logout(
    state: State,
    form: Result<web::Form<BackchannelForm>, actix_web::Error>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let Some(raw) = form.ok().and_then(|f| f.into_inner().logout_token) else {
        return json_error(StatusCode::BAD_REQUEST, "logout_token is missing");
    };
    // Matched by the token's `iss` (read before verification only to choose whose keys verify
    // it; the verification checks it again).
    let Some(oidc) = state.providers.for_logout_token(&raw) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "logout_token rejected: its issuer is not one of the shop's providers",
        );
    };
    let names = match oidc.verify_logout_token(&raw).await {
        Ok(names) => names,
        Err(OidcError::Unavailable(_) | OidcError::NoAnswer(_)) => {
            return HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "5"))
                .json(json!({ "error": "temporarily_unavailable" }));
        }
        Err(e) => {
            tracing::warn!(error = %e, "Rejected a logout token");
            return json_error(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    match end_sessions(&state, oidc.issuer(), &names).await {
        Ok(Some(ended)) => {
            tracing::Span::current().record("ended", ended);
            if ended > 0 {
                state.revoker.nudge();
            }
            HttpResponse::Ok()
                .insert_header(("Cache-Control", "no-store"))
                .finish()
        }
        Ok(None) => {
            tracing::warn!("Rejected a replayed logout token");
            json_error(
                StatusCode::BAD_REQUEST,
                "logout_token rejected: it was already used (jti seen before)",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "Back-channel logout could not end sessions");
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "5"))
                .json(json!({ "error": "temporarily_unavailable" }))
        }
    }
}

/// Remembers the token's `jti` and ends the logins it names, in one transaction (a provider
/// retrying after a failure is not taken for a replay). `None`: the `jti` was seen before.
async fn end_sessions(
    state: &State,
    issuer: &str,
    names: &LogoutTokenNames,
) -> Result<Option<u64>, sqlx::Error> {
    let mut tx = crate::db::begin(&state.pool).await?;
    if let Some(jti) = &names.jti
        && !logout_tokens::remember(&mut tx, issuer, jti, names.expires_at).await?
    {
        return Ok(None);
    }
    let ended =
        tokens::end_provider_sessions(&mut tx, issuer, names.sub.as_deref(), names.sid.as_deref())
            .await?;
    tx.commit().await?;
    Ok(Some(ended))
}
