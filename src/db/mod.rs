//! The connection pool and the embedded migrations.

pub mod instances;
pub mod migrations;
pub mod notifications;
mod statements;

pub use statements::{Route, begin, query, query_as, query_scalar};

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::configuration::{DatabaseSettings, Pooler};

/// Every migration in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl DatabaseSettings {
    pub fn connect_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        self.url
            .expose_secret()
            .parse::<PgConnectOptions>()
            .map(|o| o.application_name("storefront"))
    }

    /// The statement and lock timeouts that are set, as (name, value) pairs.
    fn timeouts(&self) -> Vec<(&'static str, String)> {
        [
            ("statement_timeout", self.statement_timeout_ms),
            ("lock_timeout", self.lock_timeout_ms),
        ]
        .into_iter()
        .filter(|(_, ms)| *ms > 0)
        .map(|(name, ms)| (name, format!("{ms}ms")))
        .collect()
    }

    /// The options of `serve`'s connections. Straight to Postgres: the statement and lock
    /// timeouts as startup options, so they hold from the first statement. Through a
    /// transaction pooler: no statement cache and no startup options (see
    /// [`Self::serve_pool_options`]). `migrate` uses neither: a migration may rightly take
    /// long.
    pub fn tune(&self, options: PgConnectOptions) -> PgConnectOptions {
        match self.pooler {
            Pooler::Transaction => options.statement_cache_capacity(0),
            Pooler::None => match self.timeouts() {
                timeouts if timeouts.is_empty() => options,
                timeouts => options.options(timeouts),
            },
        }
    }

    /// The pool options of `serve`: behind a transaction pooler, statements become unnamed
    /// and run in transactions of their own ([`statements`]), which set the timeouts.
    pub fn serve_pool_options(&self) -> PgPoolOptions {
        if self.pooler == Pooler::Transaction {
            let begin = std::iter::once("BEGIN".to_owned())
                .chain(
                    self.timeouts()
                        .into_iter()
                        .map(|(name, value)| format!("SET LOCAL {name} = '{value}'")),
                )
                .collect::<Vec<_>>()
                .join("; ");
            statements::use_transaction_pooler(begin);
        }
        self.pool_options()
    }

    /// Pool settings shared by the server, the workers and the tests.
    pub fn pool_options(&self) -> PgPoolOptions {
        without_reaper(PgPoolOptions::new())
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout())
            // A connection that died with a Postgres restart is noticed before it is used.
            .test_before_acquire(true)
    }
}

/// `options` without sqlx's idle reaper (no idle timeout, no maximum lifetime), for every
/// pool the shop opens.
///
/// In sqlx 0.8 the reaper walks `0..num_idle()`, and a connection released on one thread
/// while another takes it can leave that count wrapped to `usize::MAX` for a moment: the
/// reaper then spins a core without ever yielding, and every task of the runtime it runs on
/// (the refresher's, for `serve`) stops (launchbadge/sqlx#3645, fixed in sqlx 0.9.1). The
/// shop loses nothing without it: the pool is small and bounded, a connection that died is
/// noticed before use (`test_before_acquire`), and a pooler in front of Postgres
/// (`server_lifetime`, `server_idle_timeout`) recycles server connections.
pub fn without_reaper(options: PgPoolOptions) -> PgPoolOptions {
    options.idle_timeout(None).max_lifetime(None)
}

/// A pool that connects on first use, so the shop starts while Postgres is still coming up.
pub fn lazy_pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    Ok(settings
        .pool_options()
        .connect_lazy_with(settings.connect_options()?))
}

/// `serve`'s pool: connections [`DatabaseSettings::tune`]d, pool options
/// [`DatabaseSettings::serve_pool_options`].
pub fn serve_pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    Ok(settings
        .serve_pool_options()
        .connect_lazy_with(settings.tune(settings.connect_options()?)))
}

/// A second, small pool to the same database, with the same options, for the background work
/// (refresher, cleanup): its connections are opened on the main runtime and so outlive the
/// HTTP workers.
pub fn background_pool(requests: &PgPool) -> PgPool {
    requests
        .options()
        .clone()
        .max_connections(BACKGROUND_CONNECTIONS)
        .connect_lazy_with((*requests.connect_options()).clone())
}

/// Background statements are short (a claim, a write, a cleanup batch): a few connections
/// serve any number of refresh calls in flight.
const BACKGROUND_CONNECTIONS: u32 = 4;

/// True for errors that mean "the database cannot be reached right now" (answer 503): any
/// failure to get a working connection (pool timeout, I/O, TLS, protocol) and the SQLSTATEs a
/// server sends while it refuses or loses connections: class 08 (connection exception), 53
/// (insufficient resources, e.g. too many connections), 55000 (object not in prerequisite
/// state: `ALLOW_CONNECTIONS false`), 57P (shutting down, crash recovery), and the
/// connection-time refusals 28 (authentication) and 3D000 (no such database). A statement the
/// server cancelled for running past `statement_timeout` (57014) or waiting past
/// `lock_timeout` (55P03) is the database being too busy right now: a 503 too, never a hang.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| is_outage_sqlstate(&code)),
        _ => false,
    }
}

fn is_outage_sqlstate(code: &str) -> bool {
    ["08", "53", "57P", "28"]
        .iter()
        .any(|class| code.starts_with(class))
        || matches!(code, "55000" | "3D000" | "55P03" | "57014")
}

#[cfg(test)]
mod tests {
    use super::{is_outage_sqlstate, without_reaper};
    use sqlx::postgres::PgPoolOptions;

    #[test]
    fn pools_run_no_idle_reaper() {
        // sqlx spawns its reaper only when one of the two is set.
        let options =
            without_reaper(PgPoolOptions::new().idle_timeout(std::time::Duration::from_secs(1)));
        assert_eq!(options.get_idle_timeout(), None);
        assert_eq!(options.get_max_lifetime(), None);
    }

    #[test]
    fn connection_refusals_are_outages_and_query_errors_are_not() {
        for code in [
            "08006", "08001", "53300", "53100", "55000", "57P01", "57P03", "28P01", "3D000",
            "55P03", "57014",
        ] {
            assert!(is_outage_sqlstate(code), "{code}");
        }
        for code in ["23505", "22P02", "42P01", "40001"] {
            assert!(!is_outage_sqlstate(code), "{code}");
        }
    }
}

/// A value read from a `text` column that is not one of its enum's names.
#[derive(Debug, thiserror::Error)]
#[error("unknown value `{0}`")]
pub struct UnknownValue(pub String);

/// An enum stored in a `text` column whose CHECK constraint lists the same names: it encodes
/// and decodes as its name (through `&str`, so no type lookup by name on a connection), parses
/// from it (`FromStr`) and serialises as it (serde).
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        $vis enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::db::UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err($crate::db::UnknownValue(other.to_owned())),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?;
                Ok(text.parse::<$name>()?)
            }
        }
    };
}
pub(crate) use text_enum;
