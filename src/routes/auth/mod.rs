pub mod backchannel;
pub mod callback;
pub mod login;
pub mod logout;
pub mod profile;

use actix_session::SessionExt;
use actix_web::ResponseError;
use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;

use crate::auth::oidc::OidcError;
use crate::error::AppError;
use crate::session::TypedSession;

/// Paths that work whatever state the login is in.
const LOGIN_EXEMPT: [&str; 6] = [
    "/login",
    "/callback",
    "/logout",
    "/backchannel-logout",
    "/health",
    "/static/",
];

/// A page request from a session whose login the provider has ended (its refresh token was
/// refused) goes to `/login?return_to=<this page>`, which explains and starts a new login.
pub async fn require_live_login(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<BoxBody, impl MessageBody>>, actix_web::Error> {
    let path = req.path();
    let page = matches!(*req.method(), Method::GET | Method::HEAD)
        && !LOGIN_EXEMPT
            .iter()
            .any(|p| path == *p || (p.ends_with('/') && path.starts_with(p)));
    if page {
        let session = TypedSession::from_session(req.get_session());
        if session.auth().is_some_and(|a| a.needs_login()) {
            let here = match req.query_string() {
                "" => path.to_owned(),
                q => format!("{path}?{q}"),
            };
            let redirect = AppError::LoginRequired { return_to: here }.error_response();
            return Ok(req.into_response(redirect).map_into_left_body());
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_right_body)
}

/// How a provider failure looks to a shopper.
pub fn provider_error(err: OidcError) -> AppError {
    tracing::warn!(error = %err, "Identity provider call failed");
    match err {
        OidcError::Unavailable(_) => AppError::Unavailable(
            "Sign-in is temporarily unavailable: the identity provider did not answer. Please try again in a moment.".into(),
        ),
        OidcError::Refused { .. } => AppError::BadRequest(
            "The sign-in could not be completed (the code was already used or has expired). Please log in again.".into(),
        ),
        OidcError::InvalidResponse(_) => AppError::BadGateway(
            "The identity provider sent an answer we could not use. Please try again.".into(),
        ),
        OidcError::InvalidToken(_) => AppError::Forbidden(
            "The sign-in could not be verified. Please log in again.".into(),
        ),
    }
}
