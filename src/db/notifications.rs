//! LISTEN/NOTIFY for the in-memory caches (sessions, catalogue). Triggers in Postgres say what
//! changed (migration `cache_notifications`); every instance listens on a direct connection
//! and tells its caches ([`Subscriber`]). A cache serves from memory only while its instance
//! provably hears: each instance sends itself a ping every [`PING_EVERY`] (on a second direct
//! connection to the same server) and must hear it back within [`DEAF_AFTER`]. When the listening connection drops, or
//! pings stop arriving, every cache is flushed and stops serving (requests read Postgres)
//! until pings are heard again — then it is flushed once more, for what was missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

pub const SESSIONS: &str = "storefront_sessions";
pub const PRODUCTS: &str = "storefront_products";
pub const ORDERS: &str = "storefront_orders";
const PING: &str = "storefront_ping";
/// How often an instance pings itself.
pub const PING_EVERY: Duration = Duration::from_millis(250);
/// Caches stop serving when the instance's own ping has not come back for this long: the
/// bound on how stale a cache can be when the listening connection fails silently.
pub const DEAF_AFTER: Duration = Duration::from_secs(1);

/// Something kept in memory that a notification can make stale.
pub trait Subscriber: Send + Sync {
    /// A notification on one of the channels.
    fn notified(&self, channel: &str, payload: &str);
    /// Forget everything (notifications may have been missed).
    fn flush(&self);
}

/// Counts what made a cache's memory stale (a notification, a flush). A value read from
/// Postgres may be kept only if nothing of the kind came between the start of the read and
/// the keeping: else the read may have seen the row before the change it was told of.
#[derive(Debug, Default)]
pub struct Generation(std::sync::atomic::AtomicU64);

impl Generation {
    /// Where a read starts.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Something changed: reads in flight may not be kept.
    pub fn advance(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether nothing changed since `start` (a value read from there may be kept).
    pub fn unchanged_since(&self, start: u64) -> bool {
        self.current() == start
    }
}

/// Whether this instance hears Postgres' notifications right now.
#[derive(Default)]
pub struct Hearing {
    usable: AtomicBool,
    last_ping: Mutex<Option<Instant>>,
}

impl Hearing {
    /// Whether caches may serve from memory.
    pub fn usable(&self) -> bool {
        self.usable.load(Ordering::Acquire)
    }

    /// For unit tests of the caches: hearing without a listener.
    #[doc(hidden)]
    pub fn set_usable_for_tests(&self) {
        self.usable.store(true, Ordering::Release);
    }
}

/// The listener and its subscribers.
pub struct Notifications {
    hearing: Arc<Hearing>,
    subscribers: Vec<Arc<dyn Subscriber>>,
    instance: String,
}

impl Notifications {
    pub fn new(hearing: Arc<Hearing>, subscribers: Vec<Arc<dyn Subscriber>>) -> Self {
        Self {
            hearing,
            subscribers,
            instance: uuid::Uuid::new_v4().to_string(),
        }
    }

    fn flush(&self) {
        for s in &self.subscribers {
            s.flush();
        }
    }

    /// Stop serving from memory (and forget it).
    fn deaf(&self, why: &str) {
        if self.hearing.usable.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                why,
                "Not hearing Postgres notifications: caches off until they are back"
            );
        }
        self.flush();
    }

    fn heard_ping(&self) {
        *self.hearing.last_ping.lock().expect("not poisoned") = Some(Instant::now());
        if !self.hearing.usable() {
            // Whatever was missed while deaf is forgotten before serving again.
            self.flush();
            self.hearing.usable.store(true, Ordering::Release);
            tracing::info!("Hearing Postgres notifications: caches on");
        }
    }

    fn dispatch(&self, channel: &str, payload: &str) {
        if channel == PING {
            if payload == self.instance {
                self.heard_ping();
            }
            return;
        }
        for s in &self.subscribers {
            s.notified(channel, payload);
        }
    }

    /// Listens and pings on `listen` (two direct connections, never through a transaction
    /// pooler), until `stop`.
    pub async fn run_until_stopped(self: Arc<Self>, listen: PgPool, stop: CancellationToken) {
        let pinger = tokio::spawn(
            self.clone()
                .ping_until_stopped(listen.clone(), stop.clone()),
        );
        let mut listener: Option<PgListener> = None;
        loop {
            if listener.is_none() {
                match connect(&listen).await {
                    Ok(l) => listener = Some(l),
                    Err(e) => {
                        self.deaf("cannot listen");
                        tracing::debug!(error = %e, "LISTEN failed; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        }
                    }
                }
            }
            let l = listener.as_mut().expect("connected above");
            tokio::select! {
                _ = stop.cancelled() => break,
                received = l.try_recv() => match received {
                    Ok(Some(n)) => self.dispatch(n.channel(), n.payload()),
                    Ok(None) | Err(_) => {
                        self.deaf("the listening connection was lost");
                        listener = None;
                    }
                },
            }
        }
        self.hearing.usable.store(false, Ordering::Release);
        let _ = pinger.await;
    }

    async fn ping_until_stopped(self: Arc<Self>, pool: PgPool, stop: CancellationToken) {
        let mut tick = tokio::time::interval(PING_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sent = super::query("SELECT pg_notify($1, $2)")
                .bind(PING)
                .bind(&self.instance)
                .execute(&pool)
                .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "Ping not sent");
            }
            let last = *self.hearing.last_ping.lock().expect("not poisoned");
            if self.hearing.usable() && last.is_none_or(|at| at.elapsed() > DEAF_AFTER) {
                self.deaf("pings stopped coming back");
            }
        }
    }
}

async fn connect(listen: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(listen).await?;
    listener
        .listen_all([SESSIONS, PRODUCTS, ORDERS, PING])
        .await?;
    Ok(listener)
}
