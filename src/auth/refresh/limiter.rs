//! The cap on refresh traffic to the provider: calls in flight, and calls started per second
//! (paced evenly, so a burst of due tokens becomes a steady stream).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

pub(super) struct Limiter {
    in_flight: Semaphore,
    spacing: Duration,
    next_slot: Mutex<Instant>,
}

impl Limiter {
    pub(super) fn new(max_concurrency: usize, max_per_sec: u32) -> Self {
        Self {
            in_flight: Semaphore::new(max_concurrency),
            spacing: Duration::from_secs(1) / max_per_sec.max(1),
            next_slot: Mutex::new(Instant::now()),
        }
    }

    /// Waits for a free call slot and for this call's turn in the pacing.
    pub(super) async fn acquire(&self) -> SemaphorePermit<'_> {
        let permit = self.in_flight.acquire().await.expect("never closed");
        let slot = {
            let mut next = self.next_slot.lock().expect("not poisoned");
            let slot = (*next).max(Instant::now());
            *next = slot + self.spacing;
            slot
        };
        tokio::time::sleep_until(slot).await;
        permit
    }
}
