//! The dashboard's counts and its chart of activity per hour.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::activity::ActivityEvent;
use crate::auth::tokens;

/// A session is "online" when it was used this recently (its `last_seen_at` is throttled to
/// `session.touch_interval_secs`, so this is accurate to that).
const ONLINE_WINDOW_MINUTES: i32 = 15;

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Overview {
    pub active_sessions: i64,
    pub anonymous_sessions: i64,
    pub users_online: i64,
    pub logins_24h: i64,
    pub refreshes_ok_1h: i64,
    pub refreshes_failed_1h: i64,
    pub needs_login: i64,
    #[sqlx(skip)]
    pub retrying: i64,
    #[sqlx(skip)]
    pub due_backlog: i64,
    /// Tokens of ended logins still to be revoked at the provider.
    #[sqlx(skip)]
    pub revocations: tokens::OutboxCounts,
}

/// The dashboard's counts: sessions and activity in one statement, the token rows' health
/// (from the token store) beside it.
pub async fn overview(pool: &PgPool) -> Result<Overview, sqlx::Error> {
    let counts = crate::db::query_as::<Overview>(
        r#"
        SELECT
          (SELECT count(*) FROM sessions
            WHERE token_id IS NOT NULL AND expires_at > now()) AS active_sessions,
          (SELECT count(*) FROM sessions
            WHERE token_id IS NULL AND expires_at > now()) AS anonymous_sessions,
          (SELECT count(DISTINCT l.user_id) FROM sessions s JOIN logins l USING (token_id)
            WHERE s.expires_at > now()
              AND s.last_seen_at > now() - make_interval(mins => $1)) AS users_online,
          (SELECT coalesce(sum(count), 0)::bigint FROM activity_stats
            WHERE event = $2 AND minute > now() - interval '24 hours') AS logins_24h,
          (SELECT coalesce(sum(count), 0)::bigint FROM activity_stats
            WHERE event = ANY($3) AND minute > now() - interval '1 hour') AS refreshes_ok_1h,
          (SELECT coalesce(sum(count), 0)::bigint FROM activity_stats
            WHERE event = ANY($4) AND minute > now() - interval '1 hour') AS refreshes_failed_1h,
          (SELECT count(*) FROM sessions s JOIN logins l USING (token_id)
            WHERE l.refresh_status = 'needs_login' AND s.expires_at > now()) AS needs_login
        "#,
    )
    .bind(ONLINE_WINDOW_MINUTES)
    .bind(ActivityEvent::Login)
    .bind(&ActivityEvent::REFRESHES_OK[..])
    .bind(&ActivityEvent::REFRESHES_FAILED[..]);
    let (mut overview, counts, revocations) = tokio::try_join!(
        counts.fetch_one(pool),
        tokens::counts(pool),
        tokens::outbox_counts(pool)
    )?;
    overview.retrying = counts.retrying;
    overview.due_backlog = counts.due_backlog;
    overview.revocations = revocations;
    Ok(overview)
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct HourlyActivity {
    pub hour: DateTime<Utc>,
    pub logins: i64,
    pub refreshes_ok: i64,
    pub refreshes_failed: i64,
}

/// Logins and refreshes per hour over the last 24 hours (the current hour last).
pub async fn hourly_activity(pool: &PgPool) -> Result<Vec<HourlyActivity>, sqlx::Error> {
    crate::db::query_as(
        r#"
        SELECT h AS hour,
               coalesce(sum(a.count) FILTER (WHERE a.event = $1), 0)::bigint AS logins,
               coalesce(sum(a.count) FILTER (WHERE a.event = ANY($2)), 0)::bigint
                   AS refreshes_ok,
               coalesce(sum(a.count) FILTER (WHERE a.event = ANY($3)), 0)::bigint
                   AS refreshes_failed
        FROM generate_series(date_trunc('hour', now()) - interval '23 hours',
                             date_trunc('hour', now()), interval '1 hour') AS h
        LEFT JOIN activity_stats a ON a.minute >= h AND a.minute < h + interval '1 hour'
        GROUP BY h
        ORDER BY h
        "#,
    )
    .bind(ActivityEvent::Login)
    .bind(&ActivityEvent::REFRESHES_OK[..])
    .bind(&ActivityEvent::REFRESHES_FAILED[..])
    .fetch_all(pool)
    .await
}
