//! Hands every request its cookie-bound CSRF state ([`AnonymousCsrf`]) and sets the cookie
//! when a page handed out the first token. No session, no database.

use std::rc::Rc;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::cookie::{Cookie, SameSite, time};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

use crate::session::csrf::{AnonymousCsrf, CSRF_COOKIE};
use crate::state::State;

/// The cookie's name: `__Host-` pins it to this origin under https.
pub fn cookie_name(https: bool) -> String {
    if https {
        format!("__Host-{CSRF_COOKIE}")
    } else {
        CSRF_COOKIE.to_owned()
    }
}

pub async fn anonymous_csrf(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(state) = req.app_data::<State>().cloned() else {
        return next.call(req).await;
    };
    let https = state.settings.is_https();
    let name = cookie_name(https);
    let sent = req.cookie(&name).map(|c| c.value().to_owned());
    let csrf = Rc::new(AnonymousCsrf::new(state.csrf_key.clone(), sent.as_deref()));
    req.extensions_mut().insert(csrf.clone());
    let mut response = next.call(req).await?;
    if let Some(value) = csrf.cookie_to_set() {
        let cookie = Cookie::build(name, value)
            .path("/")
            .http_only(true)
            .secure(https)
            .same_site(SameSite::Lax)
            .max_age(time::Duration::seconds(
                state.settings.session.absolute_timeout_secs as i64,
            ))
            .finish();
        response.response_mut().add_cookie(&cookie)?;
    }
    Ok(response)
}
