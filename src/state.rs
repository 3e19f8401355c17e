//! The application state every handler and middleware reads: built once by `startup`, shared
//! by all workers behind one `web::Data`.

use std::sync::Arc;

use actix_web::web;
use sqlx::PgPool;
use tera::Tera;

use crate::auth::oidc::Providers;
use crate::auth::refresh::Refresher;
use crate::auth::revocation::Revoker;
use crate::configuration::Settings;
use crate::crypto::TokenCipher;
use crate::db::notifications::Hearing;
use crate::metrics::Metrics;
use crate::net::TrustedProxies;
use crate::rate_limit::RateLimits;
use crate::session::cache::SessionCache;
use crate::session::csrf::CsrfKey;
use crate::shop::catalogue::CatalogueCache;
use crate::shop::orders::OrdersCache;

/// Everything a handler needs, shared by all workers.
pub struct AppState {
    /// For request handlers.
    pub pool: PgPool,
    /// For the background tasks and the refresh calls, on the main runtime: its connections
    /// outlive the HTTP workers, which stop first on shutdown.
    pub background_pool: PgPool,
    pub tera: Tera,
    /// Every configured OpenID provider's client.
    pub providers: Arc<Providers>,
    pub cipher: Arc<TokenCipher>,
    pub refresher: Arc<Refresher>,
    /// Sends the revocation outbox; nudged whenever a request ends a login.
    pub revoker: Arc<Revoker>,
    pub metrics: Arc<Metrics>,
    pub proxies: TrustedProxies,
    /// The rate-limit buckets, shared by every worker and pruned in the background.
    pub rate_limits: RateLimits,
    /// Signs the CSRF tokens of visitors without a session.
    pub csrf_key: CsrfKey,
    /// Whether this instance hears Postgres' notifications (the caches serve only then).
    pub hearing: Arc<Hearing>,
    /// Sessions in memory, shared by every worker's session store.
    pub sessions: Arc<SessionCache>,
    /// The catalogue in memory.
    pub catalogue: Arc<CatalogueCache>,
    /// Each user's orders in memory.
    pub orders: Arc<OrdersCache>,
    pub settings: Settings,
    /// Set on SIGTERM/SIGINT: `/health` answers 503 and responses close their connections
    /// until the listener closes (`server.drain_secs` later).
    pub draining: std::sync::atomic::AtomicBool,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What handlers take as an extractor.
pub type State = web::Data<AppState>;
