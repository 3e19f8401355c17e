//! The connection pool and the embedded migrations.

pub mod migrations;

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::configuration::DatabaseSettings;

/// Every migration in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl DatabaseSettings {
    pub fn connect_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        self.url
            .expose_secret()
            .parse::<PgConnectOptions>()
            .map(|o| o.application_name("storefront"))
    }

    /// Pool settings shared by the server, the workers and the tests.
    pub fn pool_options(&self) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout())
            // A connection that died with a Postgres restart is noticed before it is used.
            .test_before_acquire(true)
    }
}

/// A pool that connects on first use, so the shop starts while Postgres is still coming up.
pub fn lazy_pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    Ok(settings
        .pool_options()
        .connect_lazy_with(settings.connect_options()?))
}

/// True for errors that mean "the database is not reachable right now" (answer 503).
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
    ) || matches!(err, sqlx::Error::Database(e) if e.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}
