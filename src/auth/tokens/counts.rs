//! What the dashboard and the metrics count of the token rows.

use serde::Serialize;
use sqlx::PgPool;

use super::claims::due_tokens;

#[derive(Debug, Clone, Copy, Default, Serialize, sqlx::FromRow)]
pub struct TokenCounts {
    /// Logins backing off after transient provider failures.
    pub retrying: i64,
    /// Tokens past their refresh time and not backing off: the refresher's backlog.
    pub due_backlog: i64,
}

/// Both counts in one statement. The statuses are literals so that the planner can use the
/// partial indexes that name them.
pub async fn counts(pool: &PgPool) -> Result<TokenCounts, sqlx::Error> {
    crate::db::query_as(concat!(
        "SELECT
           (SELECT count(*) FROM oauth_tokens WHERE refresh_status = 'retrying') AS retrying,
           (SELECT count(*) FROM oauth_tokens WHERE ",
        due_tokens!(),
        ") AS due_backlog"
    ))
    .fetch_one(pool)
    .await
}
