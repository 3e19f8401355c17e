use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use secrecy::ExposeSecret;

use crate::crypto::constant_time_eq;
use crate::startup::State;

/// `GET /metrics`: Prometheus text format; behind a bearer token when `metrics.token` is set.
pub async fn metrics(state: State, req: HttpRequest) -> HttpResponse {
    if let Some(token) = &state.settings.metrics.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !constant_time_eq(presented, token.expose_secret()) {
            return HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .content_type("text/plain; charset=utf-8")
                .body("a bearer token is required\n");
        }
    }
    let body = state
        .metrics
        .render(&state.pool, state.settings.refresh.lead_secs)
        .await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}
