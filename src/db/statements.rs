//! How the shop's statements reach Postgres. Every statement is built with [`query`],
//! [`query_as`] or [`query_scalar`] and run on a [`Route`]: the pool or a connection (a
//! transaction's, usually).
//!
//! Straight to Postgres they are sqlx's own: named, cached prepared statements, one round
//! trip each once prepared. Behind a PgBouncer in transaction pooling (1.18 keeps no prepared
//! statement from one transaction to the next, and forwards no startup options) two things
//! change, once, for the whole process ([`use_transaction_pooler`]):
//! - statements are unnamed (sqlx 0.8 still names them when its cache is off, and the names
//!   of different clients collide on a shared server connection);
//! - a statement run on the pool runs in a transaction of its own (`BEGIN` with the timeouts
//!   as `SET LOCAL`, the statement, `COMMIT`): sqlx sends an unnamed statement in two parts,
//!   each ended by a Sync, and outside a transaction PgBouncer may hand the second part to
//!   another server connection — where another client's unnamed statement could be bound.
//!   The answer is returned only once the `COMMIT` is acknowledged.
//!
//! Behind a transaction pooler a statement on the pool costs about four round trips instead
//! of one: the price of PgBouncer 1.18's transaction pooling with a driver that describes
//! every unnamed statement before binding it.
//!
//! A statement run on a connection the caller holds (a transaction of [`begin`]) is sent as
//! it is: the caller's transaction keeps both parts on one server.

use std::sync::OnceLock;

use sqlx::postgres::{PgArguments, PgQueryResult, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{Encode, PgConnection, PgPool, Postgres, Transaction, Type};

/// Set once when `serve` talks to a transaction pooler: how every transaction begins
/// (`BEGIN` and the timeouts as `SET LOCAL`).
static POOLER_BEGIN: OnceLock<String> = OnceLock::new();

/// From now on, statements of this process are unnamed, and each one run on the pool is a
/// transaction of its own that begins with `begin` (`BEGIN; SET LOCAL …`), as do the
/// transactions of [`begin`].
pub fn use_transaction_pooler(begin: String) {
    let _ = POOLER_BEGIN.set(begin);
}

fn pooler_begin() -> Option<&'static str> {
    POOLER_BEGIN.get().map(String::as_str)
}

/// A transaction on the pool: `pool.begin()`, or behind a transaction pooler one that sets
/// the statement and lock timeouts first.
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    match pooler_begin() {
        Some(statement) => pool.begin_with(statement).await,
        None => pool.begin().await,
    }
}

/// Where a statement runs.
pub enum Route<'c> {
    Pool(&'c PgPool),
    Connection(&'c mut PgConnection),
}

impl<'c> From<&'c PgPool> for Route<'c> {
    fn from(pool: &'c PgPool) -> Self {
        Route::Pool(pool)
    }
}

impl<'c> From<&'c mut PgConnection> for Route<'c> {
    fn from(conn: &'c mut PgConnection) -> Self {
        Route::Connection(conn)
    }
}

macro_rules! statement {
    ($(#[$meta:meta])* $name:ident<$($o:ident)?>, $inner:ty, where [$($bounds:tt)*],
     { $($method:ident -> $out:ty),* $(,)? }) => {
        $(#[$meta])*
        #[must_use = "a statement does nothing until it is run"]
        pub struct $name<'q $(, $o)?>($inner);

        impl<'q $(, $o)?> $name<'q $(, $o)?>
        where
            $($bounds)*
        {
            pub fn bind<T: 'q + Encode<'q, Postgres> + Type<Postgres>>(self, value: T) -> Self {
                Self(self.0.bind(value))
            }

            $(
                /// Runs on `route`; on the pool behind a transaction pooler, in a
                /// transaction of its own, answered once committed.
                pub async fn $method<'c>(self, route: impl Into<Route<'c>>) -> Result<$out, sqlx::Error> {
                    let query = self.0;
                    match (route.into(), pooler_begin()) {
                        (Route::Pool(pool), Some(statement)) => {
                            let mut tx = pool.begin_with(statement).await?;
                            let out = query.$method(&mut *tx).await?;
                            tx.commit().await?;
                            Ok(out)
                        }
                        (Route::Pool(pool), None) => query.$method(pool).await,
                        (Route::Connection(conn), _) => query.$method(conn).await,
                    }
                }
            )*
        }
    };
}

statement!(
    /// A statement whose rows are read as [`PgRow`]s, or not at all.
    Statement<>, Query<'q, Postgres, PgArguments>, where [],
    {
        execute -> PgQueryResult,
        fetch_one -> PgRow,
        fetch_optional -> Option<PgRow>,
        fetch_all -> Vec<PgRow>,
    }
);

statement!(
    /// A statement whose rows are read as `O`.
    StatementAs<O>, QueryAs<'q, Postgres, O, PgArguments>,
    where [O: Send + Unpin + for<'r> sqlx::FromRow<'r, PgRow>],
    {
        fetch_one -> O,
        fetch_optional -> Option<O>,
        fetch_all -> Vec<O>,
    }
);

statement!(
    /// A statement whose rows are one column, read as `O`.
    StatementScalar<O>, QueryScalar<'q, Postgres, O, PgArguments>,
    where [O: Send + Unpin, (O,): for<'r> sqlx::FromRow<'r, PgRow>],
    {
        fetch_one -> O,
        fetch_optional -> Option<O>,
        fetch_all -> Vec<O>,
    }
);

fn named() -> bool {
    pooler_begin().is_none()
}

pub fn query(sql: &str) -> Statement<'_> {
    Statement(sqlx::query(sql).persistent(named()))
}

pub fn query_as<'q, O>(sql: &'q str) -> StatementAs<'q, O>
where
    O: for<'r> sqlx::FromRow<'r, PgRow>,
{
    StatementAs(sqlx::query_as(sql).persistent(named()))
}

pub fn query_scalar<'q, O>(sql: &'q str) -> StatementScalar<'q, O>
where
    (O,): for<'r> sqlx::FromRow<'r, PgRow>,
{
    StatementScalar(sqlx::query_scalar(sql).persistent(named()))
}
