use std::time::Duration;

use actix_web::HttpResponse;

use crate::routes::respond::NoStore;
use serde_json::json;

use crate::state::State;

/// Answers within about two seconds even when Postgres hangs.
const DB_CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

#[tracing::instrument(name = "Health check", skip_all)]
pub async fn health_check(state: State) -> HttpResponse {
    let db = tokio::time::timeout(
        DB_CHECK_TIMEOUT,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await;
    let provider = if state.oidc.is_ready() {
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
        sqlx::query_scalar("SELECT name FROM products WHERE product_id = $1")
            .bind(1_i64)
            .fetch_optional(&state.pool)
            .await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(name.unwrap_or_default()))
}
