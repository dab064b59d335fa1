//! The sync pipeline, one way: plan → fetch → decode → diff → enrich → store.
//!
//! A run's tiles live in the job tables (`jobs`); the claim loop ([`claim`]) leases them and
//! keeps up to `limits.concurrency` in flight, each within the app's shared tile budget and pace.
//! One tile goes through [`tile`]: its request ([`fetch`], decoded on the blocking pool), the
//! [`diff`] against the database, the by-id check of records it no longer lists ([`confirm`]),
//! Graph enrichment of what is new or changed ([`enrich`]), and [`commit`]: its rows and its done
//! state in one transaction. [`run`] starts or resumes a run and closes it.

mod claim;
pub mod commit;
mod confirm;
mod counters;
mod detections;
pub mod diff;
pub mod enrich;
pub mod estimate;
mod fetch;
pub mod interrupt;
mod outcome;
mod plan;
mod progress;
mod run;
pub mod scope;
mod tile;
pub mod trace;
mod within;

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;

use crate::api::{ApiCounters, ApiError};
use crate::jobs::{JobsError, block};
use crate::store::StoreError;

pub use commit::{CommitError, commit_tile};
pub use counters::ProcessCounters;
pub use plan::{CHANGE_ZOOMS, DEFAULT_REFRESH_PERIOD, TilesetRoles, change_zoom};
pub use run::sync;

/// Options of one `sync` invocation.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Re-enrich records enriched before this age.
    pub refresh_older_than: Option<Duration>,
    /// Stop after this many tiles.
    pub max_tiles: Option<u64>,
    /// The UTC day the tile budget counts against (default today).
    pub budget_day: Option<NaiveDate>,
    /// Receives the run's counters however the run ends (for the metrics file).
    pub trace: Option<Arc<trace::RunTrace>>,
    /// Ask the tile server even though a block is recorded for this machine.
    pub ignore_block: bool,
    /// The rolling refresh: known tiles are re-read at least this often, a slice a night
    /// (default [`DEFAULT_REFRESH_PERIOD`]); zero re-reads every tile of the region.
    pub refresh_tiles_older_than: Option<Duration>,
}

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("no access token is configured; set MAPILLARY_ACCESS_TOKEN or mapillary.access_token")]
    NoToken,
    #[error(
        "Mapillary refused the access token ({0}); check MAPILLARY_ACCESS_TOKEN / mapillary.access_token"
    )]
    Auth(#[source] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Jobs(#[from] JobsError),
    #[error("{0}")]
    Api(#[source] ApiError),
    /// The circuit breaker tripped: an API host does not answer (the message names it).
    #[error("{0}")]
    Unreachable(#[source] ApiError),
    /// The tile server blocked this IP (now, or in a run before and the block is not over).
    #[error("{}", .0.message())]
    Blocked(block::Block),
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every tile done.
    Done,
    /// Some tiles failed for good; a re-run retries them.
    Partial,
    /// The daily tile budget ran out; the next run carries on.
    QuotaExhausted,
    /// Stopped by a signal or `--max-tiles`; the next run carries on.
    Stopped,
}

/// What planning a new run cost (zero for a resumed run).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Planning {
    /// Graph searches probing unknown tiles for coverage.
    pub probes: u64,
    /// Low-zoom tile requests made to learn where the region changed.
    pub low_zoom_requests: u64,
}

/// The end-of-run summary.
#[derive(Debug, serde::Serialize)]
pub struct SyncSummary {
    pub run_id: i64,
    pub resumed: bool,
    pub outcome: Outcome,
    pub tiles_total: i64,
    pub tiles_done: i64,
    pub tiles_failed: i64,
    pub tiles_pending: i64,
    /// Tiles the plan did not fetch (empty or unchanged).
    pub tiles_skipped: i64,
    /// What planning cost.
    pub planning: Planning,
    /// What this process did.
    pub this_process: ProcessCounters,
    /// This process's requests per API family.
    pub requests: ApiCounters,
    pub seconds: f64,
}
