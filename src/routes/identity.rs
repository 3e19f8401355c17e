//! Who the request is, decided once per request from the loaded session: the `identify`
//! middleware turns a login the provider has ended into a trip through `/login`, and the
//! extractors hand handlers the user they need (or the reason they cannot have one).

use std::future::{Ready, ready};
use std::ops::Deref;
use std::rc::Rc;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError};

use crate::auth::identity::AuthState;
use crate::error::AppError;
use crate::session::TypedSession;
use crate::state::State;

/// Paths that work whatever state the login is in.
const LOGIN_EXEMPT: [&str; 6] = [
    "/login",
    "/callback",
    "/logout",
    "/backchannel-logout",
    "/health",
    "/static/",
];

/// Where to come back to after logging in: the page itself for a GET, the page the form was
/// on (a same-site `Referer`) for anything else, since a POST cannot be replayed by a redirect.
pub fn return_path(req: &HttpRequest) -> String {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return match req.query_string() {
            "" => req.path().to_owned(),
            q => format!("{}?{q}", req.path()),
        };
    }
    req.app_data::<State>()
        .and_then(|state| same_site_referer(req, &state.settings.server.public_url))
        .unwrap_or_else(|| "/".to_owned())
}

/// The path and query of the `Referer`, if it is a page of this shop (other than `/login`).
pub fn same_site_referer(req: &HttpRequest, public_url: &url::Url) -> Option<String> {
    let referer = req.headers().get(header::REFERER)?.to_str().ok()?;
    let url = url::Url::parse(referer).ok()?;
    if url.origin() != public_url.origin() || url.path() == "/login" {
        return None;
    }
    Some(match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    })
}

/// A request from a session whose login the provider has ended (its refresh token was
/// refused) goes to `/login?return_to=…`, which explains and starts a new login; GETs and
/// POSTs alike, so no form acts on a dead login.
pub async fn identify(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<BoxBody, impl MessageBody>>, actix_web::Error> {
    let path = req.path();
    let exempt = LOGIN_EXEMPT
        .iter()
        .any(|p| path == *p || (p.ends_with('/') && path.starts_with(p)));
    if !exempt {
        let session = TypedSession::from_service_request(&req);
        if session.auth().is_some_and(|a| a.needs_login()) {
            let return_to = return_path(req.request());
            let redirect = AppError::LoginRequired { return_to }.error_response();
            return Ok(req.into_response(redirect).map_into_left_body());
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_right_body)
}

/// The signed-in user; extracting it from an anonymous request answers with a trip through
/// `/login` that comes back to [`return_path`].
#[derive(Debug, Clone)]
pub struct CurrentUser(Rc<AuthState>);

impl Deref for CurrentUser {
    type Target = AuthState;

    fn deref(&self) -> &AuthState {
        &self.0
    }
}

impl FromRequest for CurrentUser {
    type Error = AppError;
    type Future = Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let user = TypedSession::of(req)
            .auth()
            .filter(|a| !a.needs_login())
            .map(CurrentUser)
            .ok_or_else(|| AppError::LoginRequired {
                return_to: return_path(req),
            });
        ready(user)
    }
}

/// A signed-in admin, as the `/admin` scope's guard has established for this request.
#[derive(Debug, Clone)]
pub struct Admin(Rc<AuthState>);

impl Admin {
    /// Marks the request as an admin's; only the admin guard calls this.
    pub fn grant(req: &ServiceRequest, user: Rc<AuthState>) {
        req.extensions_mut().insert(Admin(user));
    }
}

impl Deref for Admin {
    type Target = AuthState;

    fn deref(&self) -> &AuthState {
        &self.0
    }
}

impl FromRequest for Admin {
    type Error = AppError;
    type Future = Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(req.extensions().get::<Admin>().cloned().ok_or_else(|| {
            AppError::Forbidden("This page is for the shop's administrators only.".into())
        }))
    }
}
