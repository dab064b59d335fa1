//! The circuit breaker of an API family: calls in a row that got no answer trip it, and the run
//! stops naming the host instead of failing tile after tile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use mly_contract::Family;

/// What a family talks to, and the config key of its URL, for the breaker's message.
pub(super) fn service(f: Family) -> (&'static str, &'static str) {
    match f {
        Family::Tiles => ("the tile server", "tiles_url"),
        Family::Search => ("the Graph API (searches)", "graph_url"),
        Family::Entity => ("the Graph API (lookups)", "graph_url"),
    }
}

/// One family's circuit breaker: counts calls in a row that failed to connect or timed out.
/// Any answer from the server (whatever its status) resets the count; reaching the limit trips
/// it for the rest of the process, and every waiting retry of the family wakes up and fails.
pub(crate) struct Breaker {
    pub(super) after: u32,
    pub(super) in_a_row: AtomicU32,
    /// `Some(error)` once tripped; receivers wait on it instead of sleeping out their backoff.
    pub(super) tripped: tokio::sync::watch::Sender<Option<Arc<str>>>,
}

impl Breaker {
    pub(super) fn new(after: u32) -> Breaker {
        Breaker {
            after: after.max(1),
            in_a_row: AtomicU32::new(0),
            tripped: tokio::sync::watch::Sender::new(None),
        }
    }

    /// The breaker's error message once it has tripped.
    pub(super) fn tripped(&self) -> Option<Arc<str>> {
        self.tripped.borrow().clone()
    }

    /// An answer came back: the host is reachable.
    pub(super) fn answered(&self) {
        self.in_a_row.store(0, Ordering::Relaxed);
    }

    /// A call failed to connect or timed out; trips the breaker on the `after`-th in a row.
    pub(super) fn failed(&self, message: &str) {
        let n = self.in_a_row.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n >= self.after {
            self.tripped.send_if_modified(|t| {
                if t.is_some() {
                    return false;
                }
                *t = Some(Arc::from(message));
                true
            });
        }
    }

    /// Resolves when the breaker trips (at once if it has).
    pub(super) async fn wait_tripped(&self) {
        let mut rx = self.tripped.subscribe();
        // Err only when the sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(Option::is_some).await;
    }
}
