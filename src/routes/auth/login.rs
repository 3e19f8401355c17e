use actix_web::HttpResponse;
use actix_web::http::header;
use actix_web::web;
use serde::Deserialize;

use super::provider_error;
use crate::auth::safe_return_to;
use crate::error::{AppError, Result};
use crate::session::TypedSession;
use crate::startup::State;

#[derive(Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
}

/// Sends the browser to the provider with a fresh `state`, `nonce` and PKCE S256 challenge.
#[tracing::instrument(name = "Start login", skip_all)]
pub async fn start_login(
    state: State,
    session: TypedSession,
    query: web::Query<LoginQuery>,
) -> Result<HttpResponse> {
    let return_to = safe_return_to(query.return_to.as_deref());
    if session.auth().is_some_and(|a| !a.needs_login()) {
        return Ok(redirect(&return_to));
    }
    let (url, pending) = state
        .oidc
        .authorization_request(return_to)
        .await
        .map_err(provider_error)?;
    session
        .begin_login(pending)
        .map_err(|e| AppError::Unexpected(e.into()))?;
    Ok(HttpResponse::Found()
        .insert_header((header::LOCATION, url.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

pub fn redirect(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}
