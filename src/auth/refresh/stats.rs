//! What refresh attempts came to, counted per process: totals since start (the Prometheus
//! counter `token_refreshes_total`) and what has not yet been added to `activity_stats` (for
//! the dashboard, across instances).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{Histogram, IntCounterVec};
use sqlx::PgPool;

use crate::activity::{self, ActivityEvent};

/// What one refresh attempt came to; each is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Network error, timeout, 5xx, 429 or a malformed answer: retried with backoff.
    TransientFailure,
    /// The provider refused the refresh token: the user must log in again.
    InvalidGrant,
    /// `invalid_grant`, but the row already held a newer refresh token (another instance won).
    RaceRecovered,
    /// Sent but never answered: the refresh token may be spent and was dropped.
    NoAnswer,
    /// The provider refused the shop itself (`invalid_client`, a bare 401): a configuration
    /// fault of ours; sessions kept, retried with backoff, shown on the dashboard.
    ClientRejected,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::TransientFailure,
        Outcome::InvalidGrant,
        Outcome::RaceRecovered,
        Outcome::NoAnswer,
        Outcome::ClientRejected,
    ];

    /// The outcome's label on `token_refreshes_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::TransientFailure => "transient_failure",
            Outcome::InvalidGrant => "invalid_grant",
            Outcome::RaceRecovered => "race_recovered",
            Outcome::NoAnswer => "no_answer",
            Outcome::ClientRejected => "client_rejected",
        }
    }

    /// The outcome's event in `activity_stats`.
    fn activity_event(self) -> ActivityEvent {
        match self {
            Outcome::Ok => ActivityEvent::RefreshOk,
            Outcome::TransientFailure => ActivityEvent::RefreshTransientFailure,
            Outcome::InvalidGrant => ActivityEvent::RefreshInvalidGrant,
            Outcome::RaceRecovered => ActivityEvent::RefreshRaceRecovered,
            // A failure, as far as the dashboard's counts go.
            Outcome::NoAnswer | Outcome::ClientRejected => ActivityEvent::RefreshTransientFailure,
        }
    }
}

/// The Prometheus series the refresher feeds.
#[derive(Clone)]
pub struct RefreshMetrics {
    /// `token_refreshes_total{outcome}`.
    pub outcomes: IntCounterVec,
    /// `refresh_write_seconds`: from the provider's answer to its committed write, the
    /// window in which a crash would lose a rotated refresh token.
    pub write_seconds: Histogram,
}

pub struct RefreshStats {
    total: IntCounterVec,
    write_seconds: Histogram,
    unflushed: [AtomicU64; Outcome::ALL.len()],
}

impl RefreshStats {
    pub(super) fn new(metrics: RefreshMetrics) -> Self {
        Self {
            total: metrics.outcomes,
            write_seconds: metrics.write_seconds,
            unflushed: Default::default(),
        }
    }

    pub(super) fn observe_write(&self, took: std::time::Duration) {
        self.write_seconds.observe(took.as_secs_f64());
    }

    pub(super) fn record(&self, outcome: Outcome) {
        self.total.with_label_values(&[outcome.as_str()]).inc();
        self.unflushed[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn total(&self, outcome: Outcome) -> u64 {
        self.total.with_label_values(&[outcome.as_str()]).get()
    }

    /// Adds the unflushed counts to `activity_stats`.
    pub async fn flush(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        for outcome in Outcome::ALL {
            let n = self.unflushed[outcome as usize].swap(0, Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            if let Err(e) = activity::record(pool, outcome.activity_event(), n).await {
                // Keep the counts for the next flush.
                self.unflushed[outcome as usize].fetch_add(n, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    }
}
