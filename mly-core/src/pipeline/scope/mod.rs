//! Scope harvests: everything of one creator or organization ("where's my data?"), listed
//! through the Graph API's `/images` search instead of the region's tiles, into the same tables.
//!
//! A pass runs in phases, each resumable from the job tables (`jobs::scopes`): [`listing`] pages
//! (a page's rows and its cursor advance commit together, [`commit`]), then the map features
//! around the listed images ([`features`]), then — for a complete pass — the by-id check of the
//! scope's stored records the pass no longer listed ([`vanished`]). A pass is complete the first
//! time (and when `--refresh-older-than` says the last complete one is too old), else
//! incremental: it asks only for captures from the previous pass's newest one on. [`run`] drives
//! it; [`plan`] says what the scope is and which listed records it keeps.

mod commit;
mod features;
mod listing;
pub mod plan;
mod quadtree;
mod run;
mod vanished;

use std::sync::Arc;
use std::time::Duration;

use super::ProcessCounters;
use super::outcome::TileFailure;
use super::trace::RunTrace;
use super::{Outcome, PipelineError};
use crate::api::{ApiCounters, ApiError};
use crate::jobs::scopes::Pass;
use crate::store::ScopeCounts;
use mly_contract::tiles::TileId;

pub use plan::{Scope, ScopeError};
pub use run::sync_scope;

/// Options of one scope `sync`.
#[derive(Debug, Clone, Default)]
pub struct ScopeOptions {
    /// Make a complete pass when the last one finished longer ago than this.
    pub refresh_older_than: Option<Duration>,
    /// Receives the run's counters however the run ends (for the metrics file).
    pub trace: Option<Arc<RunTrace>>,
}

/// What this process did in a scope run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScopeProcess {
    /// Pages (or cells of an organization's region) committed.
    pub pages: u64,
    /// Images the pages listed.
    pub listed: u64,
    /// Of them, inside the region and the capture window (written).
    pub kept: u64,
    /// Cells whose map features were searched and written.
    pub feature_cells: u64,
    /// Map features kept (seen in the scope's images).
    pub features: u64,
    /// Stored records of the scope the complete pass no longer listed, checked by id.
    pub checked: u64,
    /// Of them, still there upstream (kept).
    pub still_there: u64,
    /// What the writes changed.
    pub writes: ScopeCounts,
}

impl ScopeProcess {
    /// The figures in the terms of an area run (for the metrics file): records written, new,
    /// changed and deleted; every stored record was described by the Graph API.
    pub fn as_process_counters(&self) -> ProcessCounters {
        let w = &self.writes;
        ProcessCounters {
            images: self.kept,
            features: self.features,
            new: w.images_new + w.images_revived + w.features_new + w.features_revived,
            changed: w.images_changed + w.features_changed,
            deleted: w.images_deleted + w.features_deleted,
            enriched: self.kept + self.features,
            ..ProcessCounters::default()
        }
    }

    fn add(&mut self, c: &ScopeCounts) {
        let w = &mut self.writes;
        w.images_new += c.images_new;
        w.images_changed += c.images_changed;
        w.images_revived += c.images_revived;
        w.images_deleted += c.images_deleted;
        w.features_new += c.features_new;
        w.features_changed += c.features_changed;
        w.features_revived += c.features_revived;
        w.features_deleted += c.features_deleted;
    }
}

/// The end-of-run summary of a scope harvest.
#[derive(Debug, serde::Serialize)]
pub struct ScopeSummary {
    pub run_id: i64,
    /// The run's name (`creator:NAME in REGION`).
    pub name: String,
    pub resumed: bool,
    pub outcome: Outcome,
    pub pass: Pass,
    /// Pages of the pass so far (every process).
    pub pages_total: i64,
    /// What this process did.
    pub this_process: ScopeProcess,
    /// This process's requests per API family.
    pub requests: ApiCounters,
    pub seconds: f64,
}

/// Why a scope stage stopped early.
#[derive(Debug)]
pub(crate) enum ScopeFailure {
    Api(ApiError),
    /// SIGINT/SIGTERM while waiting for the API.
    Stopped,
    /// A z18 cell still holds more than one search answer.
    TooDense(TileId),
    Pipeline(PipelineError),
}

impl From<TileFailure> for ScopeFailure {
    fn from(f: TileFailure) -> Self {
        match f {
            TileFailure::Api(e) => ScopeFailure::Api(e),
            TileFailure::Stopped => ScopeFailure::Stopped,
            TileFailure::Store(e) => ScopeFailure::Pipeline(e.into()),
            TileFailure::Jobs(e) => ScopeFailure::Pipeline(e.into()),
            TileFailure::Decode(m) => ScopeFailure::Pipeline(PipelineError::Internal(m)),
        }
    }
}

impl From<PipelineError> for ScopeFailure {
    fn from(e: PipelineError) -> Self {
        ScopeFailure::Pipeline(e)
    }
}

impl From<super::CommitError> for ScopeFailure {
    fn from(e: super::CommitError) -> Self {
        match e {
            super::CommitError::Store(e) => ScopeFailure::Pipeline(e.into()),
            super::CommitError::Jobs(e) => ScopeFailure::Pipeline(e.into()),
        }
    }
}

/// The run-stopping error of an API failure.
pub(crate) fn api_error(e: ApiError) -> PipelineError {
    if e.is_auth() {
        PipelineError::Auth(e)
    } else if e.is_unreachable() {
        PipelineError::Unreachable(e)
    } else {
        PipelineError::Api(e)
    }
}

/// An API call that SIGINT/SIGTERM ends at once (see `pipeline::interrupt`).
pub(crate) async fn cancellable<T>(
    call: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ScopeFailure> {
    super::outcome::cancellable(call).await.map_err(ScopeFailure::from)
}
