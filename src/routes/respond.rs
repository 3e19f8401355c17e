//! Responses every route group builds: the redirects of the login flow and of forms, and
//! `Cache-Control: no-store` for pages that show personal data.

use actix_web::HttpResponse;
use actix_web::http::header::{self, HeaderValue};

/// 302 Found, not cached: the redirects of the login flow.
pub fn found(location: &str) -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// 303 See Other, not cached: after a form, or to send the browser elsewhere.
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// `Cache-Control: no-store` for pages that show personal data.
pub trait NoStore {
    fn with_no_store(self) -> Self;
}

impl NoStore for HttpResponse {
    fn with_no_store(mut self) -> Self {
        self.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self
    }
}
