//! The counters behind `GET /__sim/stats`.

use std::collections::BTreeMap;
use std::sync::MutexGuard;

use serde_json::{Map, Value, json};

use super::AppState;
use crate::limits::{Family, Limits};

/// Every counter of the running simulator, and the rate limits (which count too).
#[derive(Debug)]
pub(super) struct Stats {
    pub(super) limits: Limits,
    requests: [u64; 3],
    pub(super) throttled: u64,
    statuses: BTreeMap<String, u64>,
    faults: BTreeMap<&'static str, u64>,
}

impl Stats {
    /// Zero counters over `limits`.
    pub(super) fn new(limits: Limits) -> Stats {
        Stats { limits, requests: [0; 3], throttled: 0, statuses: BTreeMap::new(), faults: BTreeMap::new() }
    }

    /// One more API request of `family` (before it is admitted or refused).
    pub(super) fn count_request(&mut self, family: Family) {
        self.requests[family as usize] += 1;
    }

    /// One more answer with this status (`reset` for a connection closed without one).
    pub(super) fn count_status(&mut self, status: &str) {
        *self.statuses.entry(status.to_string()).or_default() += 1;
    }
}

impl AppState {
    /// The counters, locked.
    pub(super) fn stats(&self) -> MutexGuard<'_, Stats> {
        // A poisoned lock only means a panic elsewhere mid-update of counters: keep serving.
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more answer shaped by the fault `name`.
    pub(super) fn count_fault(&self, name: &'static str) {
        *self.stats().faults.entry(name).or_default() += 1;
    }

    /// The `/__sim/stats` document.
    pub(super) fn stats_json(&self) -> Value {
        let s = self.stats();
        let mut per = Map::new();
        let mut maxes = Map::new();
        for f in Family::ALL {
            per.insert(f.name().into(), json!(s.requests[f as usize]));
            maxes.insert(f.name().into(), json!(s.limits.max_per_minute(f)));
        }
        json!({
            "requests": per,
            "throttled": s.throttled,
            "statuses": s.statuses,
            "faults": s.faults,
            "max_per_minute": maxes,
            "latency": self.latency.stats_json(),
        })
    }
}
