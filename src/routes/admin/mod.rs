//! The admin dashboard: one `/admin` scope behind one guard ([`require_admin`]), which checks
//! the admin rule on every request from the session's freshly loaded user (no cached verdict)
//! and hands the handlers an [`Admin`]. Every answer is `no-store`.

mod audit;
mod chart;
mod dashboard;
mod revoke;
mod sessions;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpResponse, ResponseError, web};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::identity::{Admin, return_path};
use crate::auth::is_admin;
use crate::error::AppError;
use crate::rate_limit::RateLimits;
use crate::routes::page::relative;
use crate::session::TypedSession;
use crate::state::State;

/// Rows per page of the session table and the audit log.
const PAGE_SIZE: i64 = 50;

/// Every `/admin` route, behind the guard.
pub fn configure(cfg: &mut web::ServiceConfig, limits: &RateLimits) {
    cfg.service(
        web::scope("/admin")
            .wrap(from_fn(require_admin))
            .route("", web::get().to(dashboard::dashboard))
            .route("/sessions", web::get().to(sessions::sessions_page))
            .service(
                web::resource("/sessions/{id}/revoke")
                    .wrap(limits.admin())
                    .route(web::post().to(revoke::revoke)),
            )
            .route("/audit", web::get().to(audit::audit_page))
            .route("/api/sessions", web::get().to(sessions::sessions_api)),
    );
}

/// Anonymous visitors log in first (and come back); everyone but an admin gets a 403. The
/// JSON API answers 401 and 403 as JSON.
async fn require_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<BoxBody, impl MessageBody>>, actix_web::Error> {
    let api = req.path().starts_with("/admin/api/");
    let Some(state) = req.app_data::<State>().cloned() else {
        let refused = AppError::Forbidden("The dashboard is not available.".into());
        return Ok(req
            .into_response(refused.error_response())
            .map_into_left_body());
    };
    let refusal = match TypedSession::from_service_request(&req).auth() {
        Some(user) if is_admin(&state.settings, &user) => {
            Admin::grant(&req, user);
            return next
                .call(req)
                .await
                .map(ServiceResponse::map_into_right_body);
        }
        None if api => api_error(StatusCode::UNAUTHORIZED, "login required"),
        None => AppError::LoginRequired {
            return_to: return_path(req.request()),
        }
        .error_response(),
        Some(user) => {
            tracing::warn!(user_id = %user.user_id, path = req.path(), "Admin page refused to a non-admin");
            if api {
                api_error(StatusCode::FORBIDDEN, "admins only")
            } else {
                AppError::Forbidden("This page is for the shop's administrators only.".into())
                    .error_response()
            }
        }
    };
    Ok(req.into_response(refusal).map_into_left_body())
}

/// JSON errors for the API, with the same statuses the pages use.
fn api_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "error": message }))
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}
