//! `running_instances`: each `storefront serve` says it is alive every [`HEARTBEAT`], with the
//! schema version it was built with, so a DBA can see which binaries a migration would meet
//! (`storefront migrate status`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::migrations::binary_version;

pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// An instance not heard of for this long is taken to be gone.
const GONE_AFTER_SECS: f64 = 45.0;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunningInstance {
    pub instance_id: Uuid,
    pub host: String,
    pub pid: i32,
    pub binary_version: i64,
    pub started_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

async fn beat(pool: &PgPool, id: Uuid, host: &str) -> Result<(), sqlx::Error> {
    super::query(
        r#"
        INSERT INTO running_instances (instance_id, host, pid, binary_version)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (instance_id) DO UPDATE SET last_seen_at = now()
        "#,
    )
    .bind(id)
    .bind(host)
    .bind(std::process::id() as i32)
    .bind(binary_version())
    .execute(pool)
    .await?;
    Ok(())
}

/// Heartbeats until `stop`, then removes this instance (and instances silent for a day).
pub async fn heartbeat_until_stopped(pool: PgPool, stop: CancellationToken) {
    let id = Uuid::now_v7();
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                if let Err(e) = beat(&pool, id, &host).await {
                    tracing::debug!(error = %e, "Instance heartbeat not recorded");
                }
            }
        }
    }
    let gone = super::query(
        "DELETE FROM running_instances
         WHERE instance_id = $1 OR last_seen_at < now() - interval '1 day'",
    )
    .bind(id)
    .execute(&pool)
    .await;
    if let Err(e) = gone {
        tracing::debug!(error = %e, "Instance not removed from running_instances");
    }
}

/// Instances heard of recently, oldest first; empty if the table does not exist yet.
pub async fn running(pool: &PgPool) -> Result<Vec<RunningInstance>, sqlx::Error> {
    let rows = super::query_as(
        r#"
        SELECT instance_id, host, pid, binary_version, started_at, last_seen_at
        FROM running_instances
        WHERE last_seen_at > now() - make_interval(secs => $1)
        ORDER BY started_at
        "#,
    )
    .bind(GONE_AFTER_SECS)
    .fetch_all(pool)
    .await;
    match rows {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(Vec::new()),
        other => other,
    }
}
