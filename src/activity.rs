//! Activity counted per minute in `activity_stats`, summed over every instance, for the
//! admin dashboard. Refresh outcomes are added here in batches; logins are counted by the
//! statement that stores them (`auth::tokens::store_login`).

use sqlx::PgPool;

use crate::db::text_enum;

text_enum! {
    /// What `activity_stats` counts (its CHECK lists the same names).
    pub enum ActivityEvent {
        Login = "login",
        RefreshOk = "refresh_ok",
        RefreshTransientFailure = "refresh_transient_failure",
        RefreshInvalidGrant = "refresh_invalid_grant",
        RefreshRaceRecovered = "refresh_race_recovered",
    }
}

impl ActivityEvent {
    /// Refreshes that left the login usable, as the dashboard counts them.
    pub const REFRESHES_OK: [ActivityEvent; 2] = [
        ActivityEvent::RefreshOk,
        ActivityEvent::RefreshRaceRecovered,
    ];
    /// Refreshes that failed, transiently or for good.
    pub const REFRESHES_FAILED: [ActivityEvent; 2] = [
        ActivityEvent::RefreshTransientFailure,
        ActivityEvent::RefreshInvalidGrant,
    ];
}

/// How long counts are kept.
pub const RETENTION_DAYS: i32 = 30;

/// Adds `n` to the current minute's count of `event`.
pub async fn record(pool: &PgPool, event: ActivityEvent, n: u64) -> Result<(), sqlx::Error> {
    crate::db::query(
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
    let deleted = crate::db::query(
        "DELETE FROM activity_stats WHERE minute < now() - make_interval(days => $1)",
    )
    .bind(RETENTION_DAYS)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}
