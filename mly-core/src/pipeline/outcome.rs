//! How one tile's processing ends, and how failures are told apart: retry, fail, defer, or stop
//! the whole run.

use std::future::Future;

use chrono::{DateTime, Utc};

use super::interrupt;
use crate::api::ApiError;
use crate::jobs::{JobsError, block};
use crate::store::StoreError;

/// What one tile's processing ended in (the claim loop records it in the job table).
pub(crate) enum TileEnd {
    /// Written, with its done mark.
    Written,
    /// Retryable failure; goes back to pending (or failed after its attempts).
    Retry(String),
    /// Permanent failure for this tile.
    Fail(String),
    /// The token was refused: stop everything.
    Auth(ApiError),
    /// The circuit breaker tripped (an API host does not answer): stop everything.
    Unreachable(ApiError),
    /// Another worker owns the tile now (our lease expired); nothing to do.
    LeaseLost,
    /// SIGINT/SIGTERM arrived before anything was written; the tile is released for the next run.
    Stopped,
    /// The run stopped before the tile's slot came; it is handed back at the end of the run.
    NotStarted,
    /// The tile read empty while the database holds live records for it: read it again later.
    Recheck,
    /// The tile server blocked this IP: stop every tile request. `recorded` when the block came
    /// from the database (another process met it), else it is recorded when settled.
    Blocked { at: DateTime<Utc>, detail: String, recorded: Option<block::Block> },
}

/// Why a tile's processing stopped early.
pub(crate) enum TileFailure {
    Api(ApiError),
    /// Interrupted while waiting for the API.
    Stopped,
    Store(StoreError),
    Jobs(JobsError),
    Decode(String),
}

impl From<ApiError> for TileFailure {
    fn from(e: ApiError) -> Self {
        TileFailure::Api(e)
    }
}
impl From<StoreError> for TileFailure {
    fn from(e: StoreError) -> Self {
        TileFailure::Store(e)
    }
}
impl From<JobsError> for TileFailure {
    fn from(e: JobsError) -> Self {
        TileFailure::Jobs(e)
    }
}

impl From<TileFailure> for TileEnd {
    fn from(f: TileFailure) -> TileEnd {
        match f {
            TileFailure::Api(e) => classify(e),
            TileFailure::Jobs(JobsError::LeaseLost { .. }) => TileEnd::LeaseLost,
            TileFailure::Jobs(e) => TileEnd::Retry(e.to_string()),
            TileFailure::Store(e) => TileEnd::Retry(e.to_string()),
            TileFailure::Decode(msg) => TileEnd::Retry(msg),
            TileFailure::Stopped => TileEnd::Stopped,
        }
    }
}

/// An API error's meaning for the tile (and the run).
fn classify(e: ApiError) -> TileEnd {
    if e.is_auth() {
        return TileEnd::Auth(e);
    }
    if e.is_unreachable() {
        return TileEnd::Unreachable(e);
    }
    match e {
        ApiError::Blocked { at, detail } => TileEnd::Blocked { at, detail, recorded: None },
        ApiError::Permanent { .. } | ApiError::TooLarge { .. } => TileEnd::Fail(e.to_string()),
        other => TileEnd::Retry(other.to_string()),
    }
}

/// Runs an API call unless SIGINT/SIGTERM arrives first. Only API futures are cancelled this
/// way, never a database statement (see `interrupt`).
pub(crate) async fn cancellable<T>(
    call: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, TileFailure> {
    tokio::select! {
        biased;
        _ = interrupt::wait() => Err(TileFailure::Stopped),
        r = call => r.map_err(TileFailure::Api),
    }
}
