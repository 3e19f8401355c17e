use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse};
use secrecy::ExposeSecret;

use crate::crypto::constant_time_eq;
use crate::state::State;

/// `GET /metrics` on the public listener: served only where
/// [`crate::configuration::Settings::metrics_on_public_listener`] allows, else a 404 as for
/// any unknown path.
pub async fn public_metrics(state: State, req: HttpRequest) -> actix_web::Result<HttpResponse> {
    if !state.settings.metrics_on_public_listener() {
        return Err(crate::error::AppError::NotFound(
            "The page you asked for does not exist.".into(),
        )
        .into());
    }
    Ok(metrics(state, req).await)
}

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
    let body = state.metrics.render(&state.pool);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

/// Counts every request by its route pattern (`/products/{slug}`, never the raw path, so
/// the label set stays bounded) and times it.
pub async fn record_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<State>().cloned();
    let method = req.method().clone();
    let result = next.call(req).await;
    if let Some(state) = state {
        let (route, status) = match &result {
            Ok(res) => (
                res.request()
                    .match_pattern()
                    .unwrap_or_else(|| "unmatched".to_owned()),
                res.status().as_u16(),
            ),
            Err(e) => (
                "unmatched".to_owned(),
                e.as_response_error().status_code().as_u16(),
            ),
        };
        state
            .metrics
            .observe(&route, method.as_str(), status, started.elapsed());
    }
    result
}
