//! Prometheus metrics, one registry per app (no process-global state, so several apps can run
//! in one process, as the tests do). Counters and histograms are updated as things happen;
//! gauges that describe the database (active sessions, due-token backlog, pool use) are read
//! when `/metrics` is scraped.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use sqlx::PgPool;

use crate::auth::tokens;

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    pub logins: IntCounterVec,
    pub refreshes: IntCounterVec,
    /// From a refresh answer to its committed write.
    pub refresh_write: Histogram,
    /// Time spent waiting for the provider, by call (`token_exchange`).
    pub provider_duration: HistogramVec,
    active_sessions: IntGauge,
    revocations_pending: IntGauge,
    due_backlog: IntGauge,
    pool_connections: IntGaugeVec,
    pool_max: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("storefront".into()), None).expect("a valid prefix");
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route pattern, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to the response head, by route pattern and method",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route", "method"],
        )
        .expect("valid metric");
        let logins = IntCounterVec::new(
            Opts::new("logins_total", "Completed /callback requests by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let refreshes = IntCounterVec::new(
            Opts::new("token_refreshes_total", "Token refresh attempts by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let provider_duration = HistogramVec::new(
            HistogramOpts::new(
                "provider_request_duration_seconds",
                "Time spent in calls to the identity provider, by call",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["call"],
        )
        .expect("valid metric");
        let refresh_write = Histogram::with_opts(
            HistogramOpts::new(
                "refresh_write_seconds",
                "From a refresh answer to its committed write (the window a crash would lose a rotated token in)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
        )
        .expect("valid metric");
        let active_sessions = IntGauge::new(
            "active_sessions",
            "Live logged-in sessions (read every metrics.gauges_interval_secs)",
        )
        .expect("valid metric");
        let due_backlog = IntGauge::new(
            "due_tokens",
            "Tokens within the refresh lead time and not backing off (read every metrics.gauges_interval_secs)",
        )
        .expect("valid metric");
        let revocations_pending = IntGauge::new(
            "revocations_pending",
            "Tokens of ended logins not yet revoked at the provider (read every metrics.gauges_interval_secs)",
        )
        .expect("valid metric");
        let pool_connections = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Postgres pool connections by state"),
            &["state"],
        )
        .expect("valid metric");
        let pool_max = IntGauge::new("db_pool_max_connections", "Postgres pool size limit")
            .expect("valid metric");
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(logins.clone()),
            Box::new(refreshes.clone()),
            Box::new(refresh_write.clone()),
            Box::new(provider_duration.clone()),
            Box::new(active_sessions.clone()),
            Box::new(due_backlog.clone()),
            Box::new(revocations_pending.clone()),
            Box::new(pool_connections.clone()),
            Box::new(pool_max.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            http_requests,
            http_duration,
            logins,
            refreshes,
            refresh_write,
            provider_duration,
            active_sessions,
            due_backlog,
            revocations_pending,
            pool_connections,
            pool_max,
        }
    }

    pub fn observe(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .with_label_values(&[route, method, status.to_string().as_str()])
            .inc();
        self.http_duration
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
    }

    /// Reads the gauges that need SQL (left at their last values if Postgres does not answer
    /// within a second). Run by [`Self::read_gauges_until_stopped`], never by a scrape.
    pub async fn read_database_gauges(&self, pool: &PgPool) {
        let counts = tokio::time::timeout(Duration::from_secs(1), async {
            tokio::try_join!(
                crate::session::count_logged_in(pool),
                tokens::counts(pool),
                tokens::outbox_counts(pool)
            )
        })
        .await;
        match counts {
            Ok(Ok((sessions, tokens, outbox))) => {
                self.active_sessions.set(sessions);
                self.due_backlog.set(tokens.due_backlog);
                self.revocations_pending.set(outbox.pending);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "Metrics: database gauges not read"),
            Err(_) => tracing::warn!("Metrics: database gauges timed out"),
        }
    }

    /// Reads the database gauges every `every` until `stop` is cancelled.
    pub async fn read_gauges_until_stopped(
        self: std::sync::Arc<Self>,
        pool: PgPool,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.read_database_gauges(&pool).await,
            }
        }
    }

    /// The text exposition. Costs no query: the database gauges are read in the background.
    pub fn render(&self, pool: &PgPool) -> String {
        // Read apart from `size`, so never more than it.
        let idle = i64::try_from(pool.num_idle())
            .unwrap_or(i64::MAX)
            .min(i64::from(pool.size()));
        self.pool_connections.with_label_values(&["idle"]).set(idle);
        self.pool_connections
            .with_label_values(&["in_use"])
            .set(i64::from(pool.size()) - idle);
        self.pool_max
            .set(i64::from(pool.options().get_max_connections()));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The series the token refresher feeds.
    pub fn refresh_metrics(&self) -> crate::auth::refresh::RefreshMetrics {
        crate::auth::refresh::RefreshMetrics {
            outcomes: self.refreshes.clone(),
            write_seconds: self.refresh_write.clone(),
        }
    }
}
