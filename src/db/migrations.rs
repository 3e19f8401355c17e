//! What a DBA needs: which migrations are applied, pending, unknown or altered; apply; revert.

use std::collections::HashMap;

use anyhow::{Context, bail};
use sqlx::PgPool;
use sqlx::migrate::MigrationType;

use super::MIGRATOR;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    Applied,
    Pending,
    /// Applied, but the file in the binary differs from what ran (edited after release).
    ChecksumMismatch,
    /// Applied in the database, unknown to this binary (the database is ahead of it).
    Unknown,
}

#[derive(Debug, Clone)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub state: MigrationState,
}

/// Every migration the binary or the database knows about, oldest first. Read with the
/// shop's own statements (unnamed behind a transaction pooler), so `serve` can check the
/// schema through PgBouncer; a database without the migrations table has none applied.
pub async fn status(pool: &PgPool) -> anyhow::Result<Vec<MigrationStatus>> {
    let rows: Result<Vec<(i64, Vec<u8>)>, sqlx::Error> =
        super::query_as("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await;
    let rows = match rows {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
        other => other.context("reading the applied migrations")?,
    };
    let applied: HashMap<i64, Vec<u8>> = rows.into_iter().collect();
    let mut out: Vec<MigrationStatus> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type != MigrationType::ReversibleDown)
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            state: match applied.get(&m.version) {
                None => MigrationState::Pending,
                Some(sum) if sum[..] == m.checksum[..] => MigrationState::Applied,
                Some(_) => MigrationState::ChecksumMismatch,
            },
        })
        .collect();
    for version in applied.keys() {
        if !MIGRATOR.version_exists(*version) {
            out.push(MigrationStatus {
                version: *version,
                description: "(not in this binary)".into(),
                state: MigrationState::Unknown,
            });
        }
    }
    out.sort_by_key(|m| m.version);
    Ok(out)
}

/// Applies pending migrations, refusing when the database is ahead of or differs from the binary.
pub async fn apply(pool: &PgPool) -> anyhow::Result<usize> {
    let before = status(pool).await?;
    refuse_if_diverged(&before)?;
    let pending = before
        .iter()
        .filter(|m| m.state == MigrationState::Pending)
        .count();
    MIGRATOR.run(pool).await.context("applying migrations")?;
    Ok(pending)
}

/// Reverts the most recently applied migration; returns its version, if any.
pub async fn revert_last(pool: &PgPool) -> anyhow::Result<Option<MigrationStatus>> {
    let current = status(pool).await?;
    refuse_if_diverged(&current)?;
    let applied: Vec<&MigrationStatus> = current
        .iter()
        .filter(|m| m.state == MigrationState::Applied)
        .collect();
    let Some(last) = applied.last() else {
        return Ok(None);
    };
    let target = applied
        .len()
        .checked_sub(2)
        .map_or(0, |i| applied[i].version);
    MIGRATOR
        .undo(pool, target)
        .await
        .with_context(|| format!("reverting migration {}", last.version))?;
    Ok(Some((*last).clone()))
}

/// Fails with a DBA-readable reason when `serve` must not run against this schema.
pub fn check_ready(status: &[MigrationStatus]) -> anyhow::Result<()> {
    refuse_if_diverged(status)?;
    let pending: Vec<String> = status
        .iter()
        .filter(|m| m.state == MigrationState::Pending)
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    if !pending.is_empty() {
        bail!(
            "the database has {} pending migration(s) ({}); run `storefront migrate` or set database.migrate_on_start = true",
            pending.len(),
            pending.join(", ")
        );
    }
    Ok(())
}

fn refuse_if_diverged(status: &[MigrationStatus]) -> anyhow::Result<()> {
    if let Some(m) = status
        .iter()
        .find(|m| m.state == MigrationState::ChecksumMismatch)
    {
        bail!(
            "migration {} ({}) was changed after it was applied; refusing to continue",
            m.version,
            m.description
        );
    }
    if let Some(m) = status.iter().find(|m| m.state == MigrationState::Unknown) {
        bail!(
            "the database has migration {} which this binary does not know: it is newer than this build",
            m.version
        );
    }
    Ok(())
}
