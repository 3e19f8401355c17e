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

/// The schema version this binary was built with: its newest migration.
pub fn binary_version() -> i64 {
    MIGRATOR
        .iter()
        .filter(|m| m.migration_type != MigrationType::ReversibleDown)
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// The oldest binary the schema still works with (`schema_compatibility`), if the database
/// records it: expand migrations leave it, contract migrations raise it.
pub async fn min_binary_version(pool: &PgPool) -> anyhow::Result<Option<i64>> {
    let min = super::query_scalar("SELECT min_binary_version FROM schema_compatibility")
        .fetch_optional(pool)
        .await;
    match min {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(None),
        other => Ok(other.context("reading schema_compatibility")?),
    }
}

/// Why a binary cannot serve a database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incompatible {
    #[error("migration {0} was changed after it was applied")]
    Altered(String),
    #[error("the database has pending migration(s): {0}; run `storefront migrate`")]
    Pending(String),
    #[error(
        "the schema was contracted for binaries of version {min} or newer; this one is {binary}"
    )]
    Contracted { min: i64, binary: i64 },
    #[error(
        "the database has migrations this binary does not know, and no record of which binaries they allow"
    )]
    Ahead,
}

/// Whether a binary of schema version `binary` can serve this database: every migration it
/// knows is applied and unaltered, and migrations it does not know (the database is ahead)
/// were all expand migrations (`min_binary` ≤ `binary`).
pub fn compatible(
    status: &[MigrationStatus],
    binary: i64,
    min_binary: Option<i64>,
) -> Result<(), Incompatible> {
    let named = |m: &MigrationStatus| format!("{} {}", m.version, m.description);
    if let Some(m) = status
        .iter()
        .find(|m| m.state == MigrationState::ChecksumMismatch)
    {
        return Err(Incompatible::Altered(named(m)));
    }
    let pending: Vec<String> = status
        .iter()
        .filter(|m| m.state == MigrationState::Pending && m.version <= binary)
        .map(named)
        .collect();
    if !pending.is_empty() {
        return Err(Incompatible::Pending(pending.join(", ")));
    }
    let ahead = status.iter().any(|m| m.state == MigrationState::Unknown);
    match min_binary {
        Some(min) if binary < min => Err(Incompatible::Contracted { min, binary }),
        None if ahead => Err(Incompatible::Ahead),
        _ => Ok(()),
    }
}

/// Fails with a DBA-readable reason when `serve` must not run against this schema (see
/// [`compatible`]). A database ahead of the binary by expand migrations only is fine, so a
/// rolling deploy can restart an old instance after the new release's migrations ran.
pub fn check_ready(status: &[MigrationStatus], min_binary: Option<i64>) -> anyhow::Result<()> {
    compatible(status, binary_version(), min_binary)
        .map_err(|why| anyhow::anyhow!("{why}; refusing to serve"))
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
