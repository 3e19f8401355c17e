//! Wiring: builds the application state, the middleware stack and the HTTP server, and
//! spawns the background tasks. Nothing here is used by the modules it wires.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_files::Files;
use actix_session::SessionMiddleware;
use actix_session::config::{CookieContentSecurity, PersistentSession, TtlExtensionPolicy};
use actix_web::cookie::{Key, SameSite};
use actix_web::dev::Server;
use actix_web::middleware::{DefaultHeaders, ErrorHandlers, from_fn};
use actix_web::{App, HttpServer, web};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing_actix_web::TracingLogger;

use crate::auth::oidc::Providers;
use crate::auth::refresh::{Refresher, RefresherPools};
use crate::auth::revocation::Revoker;
use crate::configuration::Settings;
use crate::crypto::TokenCipher;
use crate::db::notifications::{Hearing, Notifications};
use crate::metrics::Metrics;
use crate::net::TrustedProxies;
use crate::rate_limit::RateLimits;
use crate::routes;
use crate::session::cache::SessionCache;
use crate::session::csrf::CsrfKey;
use crate::session::{PgSessionStore, SessionTimeouts};
use crate::shop::catalogue::CatalogueCache;
use crate::shop::orders::OrdersCache;
use crate::state::{AppState, State};

/// How often rate-limit buckets that are full again are dropped.
const RATE_LIMIT_PRUNE_EVERY: Duration = Duration::from_secs(30);

pub struct Application {
    port: u16,
    server: Server,
    /// `/metrics` on its own address (`metrics.listen`), and that address's port.
    metrics_server: Option<(u16, Server)>,
    state: State,
}

impl Application {
    /// Binds the listener and prepares the server; nothing runs until [`Self::run_until_stopped`].
    pub async fn build(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {}:{} (server.host/server.port): {e}",
                    settings.server.host,
                    settings.server.port
                )
            })?;
        Self::build_on(settings, pool, listener).await
    }

    /// Like [`Self::build`], on a listener bound by the caller (tests need the port early).
    pub async fn build_on(
        settings: Settings,
        pool: PgPool,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        let tera = crate::templates::load(&settings.server.templates_dir)?;
        let providers = Arc::new(Providers::new(&settings)?);
        // One attempt now; if a provider is down the shop starts anyway and
        // `spawn_background_tasks` keeps trying.
        providers.discover_all().await;
        let cipher = Arc::new(TokenCipher::new(settings.tokens.keys()));
        let metrics = Arc::new(Metrics::new());
        let background_pool = crate::db::background_pool(&pool);
        let revoker = Arc::new(Revoker::new(
            background_pool.clone(),
            cipher.clone(),
            providers.clone(),
        ));
        let refresher = Arc::new(Refresher::new(
            RefresherPools {
                requests: pool.clone(),
                background: background_pool.clone(),
            },
            cipher.clone(),
            providers.clone(),
            revoker.clone(),
            settings.refresh.clone(),
            metrics.refresh_metrics(),
        ));
        let proxies = TrustedProxies::new(settings.server.trusted_proxies.clone());
        let hearing = Arc::new(Hearing::default());
        let sessions = Arc::new(SessionCache::new(
            settings.session.cache_max_entries,
            settings.session.cache_max_bytes,
            hearing.clone(),
        ));
        let catalogue = Arc::new(CatalogueCache::new(hearing.clone()));
        // A quarter of the session cache's budget for users' order lists.
        let orders = Arc::new(OrdersCache::new(
            settings.session.cache_max_bytes / 4,
            hearing.clone(),
        ));
        let port = listener.local_addr()?.port();
        let state = web::Data::new(AppState {
            pool,
            background_pool,
            tera,
            providers,
            cipher,
            refresher,
            revoker,
            metrics,
            rate_limits: RateLimits::new(&settings.rate_limit, &proxies),
            proxies,
            csrf_key: CsrfKey::derive(settings.session.secret_key.bytes()),
            hearing,
            sessions,
            catalogue,
            orders,
            settings,
            draining: Default::default(),
        });
        let server = run(listener, state.clone())?;
        let metrics_server = match &state.settings.metrics.listen {
            Some(address) => Some(run_metrics(address, state.clone())?),
            None => None,
        };
        Ok(Self {
            port,
            server,
            metrics_server,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `metrics.listen`, when it is set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_server.as_ref().map(|(port, _)| *port)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Discovery retries, session cleanup and (if `refresh.enabled`) the token refresher, on
    /// the background pool. They stop when `stop` is cancelled; on-demand refreshes still
    /// running then are waited for (up to one call timeout), so their answers are written.
    pub fn spawn_background_tasks(
        &self,
        stop: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let s = &self.state.settings;
        let providers = self.state.providers.clone();
        let retry = Duration::from_secs(s.oidc.discovery_retry_secs.max(1));
        let discovery_stop = stop.clone();
        let mut tasks = vec![
            tokio::spawn(providers.discover_until_ready(retry, discovery_stop)),
            tokio::spawn(crate::session::cleanup::run_until_stopped(
                self.state.background_pool.clone(),
                self.state.cipher.clone(),
                Duration::from_secs(s.session.cleanup_interval_secs.max(1)),
                s.session.cleanup_batch_size.max(1),
                stop.clone(),
            )),
        ];
        tasks.push(tokio::spawn(
            self.state.revoker.clone().run_until_stopped(stop.clone()),
        ));
        if let Some(listening) = spawn_notifications(&self.state, stop.clone()) {
            tasks.push(listening);
        }
        tasks.push(tokio::spawn(crate::db::instances::heartbeat_until_stopped(
            self.state.background_pool.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(
            self.state.metrics.clone().read_gauges_until_stopped(
                self.state.background_pool.clone(),
                Duration::from_secs(s.metrics.gauges_interval_secs.max(1)),
                stop.clone(),
            ),
        ));
        tasks.push(tokio::spawn(
            self.state
                .rate_limits
                .clone()
                .prune_until_stopped(RATE_LIMIT_PRUNE_EVERY, stop.clone()),
        ));
        let refresher = self.state.refresher.clone();
        let drain_stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            drain_stop.cancelled().await;
            refresher.finish_in_flight().await;
        }));
        if s.refresh.enabled {
            let refresher = self.state.refresher.clone();
            tasks.push(tokio::spawn(refresher.run_until_stopped(stop)));
        }
        tasks
    }

    /// After the server and the background tasks have stopped: closes both pools, so the
    /// process leaves Postgres with every connection ended properly.
    pub async fn close_pools(state: &State) {
        state.background_pool.close().await;
        state.pool.close().await;
    }

    /// Stops the server gracefully when awaited (what SIGTERM does in `serve`).
    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped; the metrics listener stops with it.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let metrics = self.metrics_server.map(|(_, server)| {
            let handle = server.handle();
            tokio::spawn(server);
            handle
        });
        let result = self.server.await;
        if let Some(handle) = metrics {
            handle.stop(true).await;
        }
        result
    }
}

/// Listens for Postgres' notifications so the caches may serve from memory; `None` when
/// there is no direct connection to listen on (a transaction pooler without
/// `database.listen_url`): the caches then stay off.
pub fn spawn_notifications(
    state: &State,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let database = &state.settings.database;
    let options = match &database.listen_url {
        Some(url) => match secrecy::ExposeSecret::expose_secret(url)
            .parse::<sqlx::postgres::PgConnectOptions>()
        {
            Ok(options) => options.application_name("storefront-listen"),
            Err(e) => {
                tracing::error!(error = %e, "database.listen_url is not a Postgres URL; caches off");
                return None;
            }
        },
        None if database.pooler == crate::configuration::Pooler::Transaction => {
            tracing::warn!(
                "No database.listen_url behind a transaction pooler: session and catalogue caches off"
            );
            return None;
        }
        None => (*state.pool.connect_options()).clone(),
    };
    // One connection listens, one pings.
    let listen = crate::db::without_reaper(sqlx::postgres::PgPoolOptions::new())
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options);
    let subscribers: Vec<Arc<dyn crate::db::notifications::Subscriber>> = vec![
        state.sessions.clone(),
        state.catalogue.clone(),
        state.orders.clone(),
    ];
    let notifications = Arc::new(Notifications::new(state.hearing.clone(), subscribers));
    Some(tokio::spawn(notifications.run_until_stopped(listen, stop)))
}

fn session_middleware(state: &State) -> SessionMiddleware<PgSessionStore> {
    let settings = &state.settings;
    let s = &settings.session;
    let key = Key::from(s.secret_key.bytes());
    let store = PgSessionStore::with_cache(
        state.pool.clone(),
        SessionTimeouts {
            idle: Duration::from_secs(s.idle_timeout_secs),
            absolute: Duration::from_secs(s.absolute_timeout_secs),
            touch_interval: Duration::from_secs(s.touch_interval_secs),
        },
        state.sessions.clone(),
    );
    // `__Host-` pins the cookie to this exact origin, but browsers accept it only with Secure.
    let name = if settings.is_https() {
        format!("__Host-{}", s.cookie_name)
    } else {
        s.cookie_name.clone()
    };
    SessionMiddleware::builder(store, key)
        .cookie_name(name)
        .cookie_secure(settings.is_https())
        .cookie_http_only(true)
        .cookie_same_site(SameSite::Lax)
        .cookie_path("/".into())
        .cookie_content_security(CookieContentSecurity::Signed)
        .session_lifecycle(
            PersistentSession::default()
                .session_ttl(actix_web::cookie::time::Duration::seconds(
                    s.absolute_timeout_secs as i64,
                ))
                // The store extends idle expiry itself, throttled, inside the load query.
                .session_ttl_extension_policy(TtlExtensionPolicy::OnStateChanges),
        )
        .build()
}

/// `/metrics` alone, on `metrics.listen`: one worker, no session, no page.
fn run_metrics(address: &str, state: State) -> anyhow::Result<(u16, Server)> {
    let listener = TcpListener::bind(address)
        .map_err(|e| anyhow::anyhow!("cannot listen on {address} (metrics.listen): {e}"))?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/metrics", web::get().to(routes::metrics::metrics))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((port, server))
}

fn run(listener: TcpListener, state: State) -> anyhow::Result<Server> {
    // Built once, outside the worker factory, so every worker shares the same buckets.
    let limits = state.rate_limits.clone();
    let server_settings = state.settings.server.clone();
    let server = HttpServer::new(move || {
        let static_dir = state.settings.server.static_dir.clone();
        App::new()
            .wrap(from_fn(routes::identity::identify))
            .wrap(from_fn(routes::csrf::anonymous_csrf))
            .wrap(session_middleware(&state))
            .wrap(from_fn(routes::errors::errors_to_responses))
            .wrap(from_fn(routes::errors::limit_query_length))
            .wrap(ErrorHandlers::new().default_handler(routes::errors::render_error_page))
            .wrap(routes::security::headers(&state.settings))
            .wrap(from_fn(routes::metrics::record_requests))
            .wrap(from_fn(routes::health::close_when_draining))
            .wrap(TracingLogger::<routes::request_span::RedactedRootSpan>::new())
            .app_data(state.clone())
            .app_data(web::QueryConfig::default().error_handler(routes::errors::bad_query))
            .app_data(web::PathConfig::default().error_handler(routes::errors::bad_path))
            .app_data(
                web::FormConfig::default()
                    .limit(16 * 1024)
                    .error_handler(routes::errors::bad_form),
            )
            .configure(|cfg| routes::configure(cfg, &limits, server_settings.baseline_route))
            .service(
                web::scope("/static")
                    .wrap(DefaultHeaders::new().add(("Cache-Control", "public, max-age=3600")))
                    .service(
                        Files::new("", static_dir)
                            .prefer_utf8(true)
                            .use_etag(true)
                            .use_last_modified(true),
                    ),
            )
            .default_service(web::to(routes::errors::not_found))
    })
    .client_request_timeout(Duration::from_secs(server_settings.request_timeout_secs))
    .client_disconnect_timeout(Duration::from_secs(5))
    .shutdown_timeout(server_settings.shutdown_timeout_secs)
    // `serve` handles SIGTERM/SIGINT itself: it drains first (`server.drain_secs`).
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
