//! What a run did, kept for callers that report on it however it ended (the metrics file): the
//! summary only exists for runs that end normally, a failed run's counters would be lost.

use std::sync::{Arc, Mutex};

use crate::api::ApiCounters;

use super::counters::ProcessCounters;
use super::run::RunCtx;

/// The run id and counters of a sync, filled in when the run's context goes away.
#[derive(Debug, Default)]
pub struct RunTrace {
    state: Mutex<TraceState>,
}

/// A copy of what the trace holds.
#[derive(Debug, Clone, Default)]
pub struct TraceState {
    /// The run, once planned (None when the run failed before it existed).
    pub run_id: Option<i64>,
    /// Requests of this process, per API family.
    pub requests: Option<ApiCounters>,
    /// The record counters of this process (the summary's `this_process`).
    pub process: Option<ProcessCounters>,
}

impl RunTrace {
    /// What the run recorded so far.
    pub fn get(&self) -> TraceState {
        // A poisoned lock only means a panic elsewhere; the counters are still worth reporting.
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a run without a tile loop (a scope run): its id and this process's figures.
    pub(crate) fn record(&self, run_id: i64, requests: ApiCounters, process: ProcessCounters) {
        self.set(|s| {
            s.run_id = Some(run_id);
            s.requests = Some(requests);
            s.process = Some(process);
        });
    }

    fn set(&self, f: impl FnOnce(&mut TraceState)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Records the requests of a run that stopped before it existed (while it was planned).
    pub(super) fn requests_only(&self, requests: ApiCounters) {
        self.set(|s| s.requests = Some(requests));
    }
}

/// Copies the run's counters into the trace when dropped, on every way out of `sync`.
pub(super) struct Guard {
    trace: Option<Arc<RunTrace>>,
    ctx: Arc<RunCtx>,
}

impl Guard {
    pub(super) fn new(trace: Option<&Arc<RunTrace>>, ctx: &Arc<RunCtx>) -> Guard {
        if let Some(t) = trace {
            t.set(|s| s.run_id = Some(ctx.run.0));
        }
        Guard { trace: trace.cloned(), ctx: Arc::clone(ctx) }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(t) = &self.trace {
            let requests = self.ctx.api.counters();
            let process = self.ctx.counters.snapshot();
            t.set(|s| {
                s.requests = Some(requests);
                s.process = Some(process);
            });
        }
    }
}
