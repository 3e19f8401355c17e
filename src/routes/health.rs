use std::time::Duration;

use actix_web::HttpResponse;

use crate::routes::respond::NoStore;
use serde_json::json;

use crate::state::State;

/// Answers within about two seconds even when Postgres hangs.
const DB_CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

/// `GET /health`: readiness. 200 when Postgres answers; 503 when it does not, or while the
/// instance drains before stopping, so a load balancer takes it out.
#[tracing::instrument(name = "Health check", skip_all)]
pub async fn health_check(state: State) -> HttpResponse {
    if state.is_draining() {
        return HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(json!({ "status": "draining" }))
            .with_no_store();
    }
    let db = tokio::time::timeout(
        DB_CHECK_TIMEOUT,
        crate::db::query_scalar::<i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await;
    let provider = if state.providers.all_ready() {
        "ok"
    } else {
        "unavailable"
    };
    match db {
        Ok(Ok(_)) => HttpResponse::Ok().json(json!({
            "status": "ok", "database": "ok", "identity_provider": provider,
        })),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Health check: database unreachable");
            unavailable(provider)
        }
        Err(_) => unavailable(provider),
    }
    .with_no_store()
}

/// `GET /health/live`: liveness. 200 while the process serves at all, whatever its
/// dependencies: restart it only when this fails.
pub async fn liveness() -> HttpResponse {
    HttpResponse::Ok()
        .json(json!({ "status": "alive" }))
        .with_no_store()
}

/// While draining, every response asks the client to close its connection: a keep-alive
/// client's next request opens a new one, which the load balancer sends elsewhere.
pub async fn close_when_draining(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let draining = req.app_data::<State>().is_some_and(|s| s.is_draining());
    let mut response = next.call(req).await?;
    if draining {
        response
            .response_mut()
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(response)
}

fn unavailable(provider: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({
        "status": "unavailable", "database": "unreachable", "identity_provider": provider,
    }))
}

/// `GET /_bench/baseline` (only with `server.baseline_route`): the least a database-backed
/// handler can do — one primary-key select on the shop's pool — for benchmarks to compare the
/// real pages with.
pub async fn baseline(state: State) -> Result<HttpResponse, crate::error::AppError> {
    let name: Option<String> =
        crate::db::query_scalar("SELECT name FROM products WHERE product_id = $1")
            .bind(1_i64)
            .fetch_optional(&state.pool)
            .await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(name.unwrap_or_default()))
}
