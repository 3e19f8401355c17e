//! Activity counted per minute in `activity_stats`, summed over every instance, for the
//! admin dashboard. Refresh outcomes are added here in batches; logins are counted by the
//! statement that stores them (`auth::tokens::store_login`).

use sqlx::PgPool;

/// How long counts are kept.
pub const RETENTION_DAYS: i32 = 30;

/// Adds `n` to the current minute's count of `event` (one of the names the table's CHECK
/// allows).
pub async fn record(pool: &PgPool, event: &str, n: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"
        INSERT INTO activity_stats (minute, event, count)
        VALUES (date_trunc('minute', now()), $1, $2)
        ON CONFLICT (minute, event) DO UPDATE SET count = activity_stats.count + EXCLUDED.count
        "#,
    )
    .bind(event)
    .bind(i64::try_from(n).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// Drops counts older than [`RETENTION_DAYS`].
pub async fn delete_old(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let deleted =
        sqlx::query("DELETE FROM activity_stats WHERE minute < now() - make_interval(days => $1)")
            .bind(RETENTION_DAYS)
            .execute(pool)
            .await?;
    Ok(deleted.rows_affected())
}
