//! What operators and desktop GIS users see of a harvest outside the harvester itself: the
//! metrics file for cron/systemd runs ([`metrics`]), a picture of a run ([`report`]) and a styled
//! QGIS project stored in the database ([`qgis`]).

pub mod doctor;
pub mod metrics;
pub mod qgis;
pub mod report;

use std::path::PathBuf;

use chrono::NaiveDate;

use crate::exit;
use mly_core::jobs::{self, JobsError};
use mly_core::store::{Store, StoreError, query_err};

/// Errors of the report and QGIS project commands.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Jobs(#[from] JobsError),
    #[error("run {0} does not exist (see `mly-harvest status`)")]
    NoSuchRun(i64),
    #[error("cannot tell the output format of {0}: name it .png, .svg or .html")]
    OutputKind(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot render the picture: {0}")]
    Render(String),
    #[error("invalid {what}: {problem}")]
    Input { what: &'static str, problem: String },
}

impl OpsError {
    /// The documented exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            OpsError::Store(_) | OpsError::Jobs(_) => exit::DATABASE,
            OpsError::NoSuchRun(_) | OpsError::Input { .. } => exit::INPUT,
            OpsError::OutputKind(_) => exit::USAGE,
            OpsError::Write { .. } => exit::CONFIG,
            OpsError::Render(_) => exit::INTERNAL,
        }
    }
}

/// How one tile of a run ended, as the report colours it and the metrics count it.
///
/// `harvest_tile.state` only knows pending/leased/done/failed; "unchanged" and "empty" are told
/// apart from "done" by the tile's counts (see `jobs::tile_outcomes`). States other engineers add to
/// `harvest_tile.state` (e.g. `blocked`) pass through unchanged and land in [`TileOutcome::Other`]
/// until they get their own arm here.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TileOutcome {
    /// Fetched, and records were new, changed or deleted.
    Done,
    /// Fetched (or 304 Not Modified) and nothing changed.
    Unchanged,
    /// Fetched, and the tile holds no records.
    Empty,
    /// Given up after its attempts; the next run retries it.
    Failed,
    /// The tile server refused this machine (IP block).
    Blocked,
    /// Not finished yet (pending or leased).
    Pending,
    /// A state this version does not know by name.
    Other(String),
}

impl TileOutcome {
    /// Parses an outcome of `jobs::tile_outcomes`.
    pub fn from_db(s: &str) -> TileOutcome {
        match s {
            "done" => TileOutcome::Done,
            "unchanged" => TileOutcome::Unchanged,
            "empty" => TileOutcome::Empty,
            "failed" => TileOutcome::Failed,
            "blocked" => TileOutcome::Blocked,
            "pending" | "leased" => TileOutcome::Pending,
            other => TileOutcome::Other(other.to_string()),
        }
    }

    /// The label used in metrics and the report legend.
    pub fn label(&self) -> &str {
        match self {
            TileOutcome::Done => "done",
            TileOutcome::Unchanged => "unchanged",
            TileOutcome::Empty => "empty",
            TileOutcome::Failed => "failed",
            TileOutcome::Blocked => "blocked",
            TileOutcome::Pending => "pending",
            TileOutcome::Other(s) => s,
        }
    }

    /// Every named outcome, so metrics list zeros too (an alert on `failed > 0` needs the series).
    pub const NAMED: [TileOutcome; 6] = [
        TileOutcome::Done,
        TileOutcome::Unchanged,
        TileOutcome::Empty,
        TileOutcome::Failed,
        TileOutcome::Blocked,
        TileOutcome::Pending,
    ];

    /// Which outcome wins when several tilesets of one z14 tile are drawn as one square.
    pub fn severity(&self) -> u8 {
        match self {
            TileOutcome::Failed => 6,
            TileOutcome::Blocked => 5,
            TileOutcome::Other(_) => 4,
            TileOutcome::Pending => 3,
            TileOutcome::Done => 2,
            TileOutcome::Unchanged => 1,
            TileOutcome::Empty => 0,
        }
    }
}

/// One tile of a run and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct RunTile {
    pub tileset: String,
    pub z: u8,
    pub x: u32,
    pub y: u32,
    pub outcome: TileOutcome,
}

/// The tiles of `run` with their outcomes.
pub async fn run_tiles(store: &Store, run: i64) -> Result<Vec<RunTile>, JobsError> {
    Ok(jobs::tile_outcomes(store, jobs::RunId(run))
        .await?
        .into_iter()
        .map(|t| RunTile {
            tileset: t.tileset,
            z: t.tile.z,
            x: t.tile.x,
            y: t.tile.y,
            outcome: TileOutcome::from_db(&t.outcome),
        })
        .collect())
}

/// Tiles of the UTC day's budget already spent, wherever this version keeps the budget (the
/// shared `mly_harvest_global` schema when it exists, else the harvest schema). None: no row yet.
/// `app_key` selects the token's app in the shared table (None: every app's tiles together).
pub async fn tile_budget_used(
    store: &Store,
    day: NaiveDate,
    app_key: Option<&str>,
) -> Result<Option<i64>, StoreError> {
    let global: bool = sqlx::query_scalar("SELECT to_regclass('mly_harvest_global.tile_budget') IS NOT NULL")
        .fetch_one(store.pool())
        .await
        .map_err(query_err("looking for the tile budget table"))?;
    let q = if global {
        sqlx::query_scalar(
            "SELECT sum(used)::bigint FROM mly_harvest_global.tile_budget \
             WHERE day = $1 AND ($2::text IS NULL OR app_key = $2)",
        )
        .bind(day)
        .bind(app_key)
    } else {
        sqlx::query_scalar("SELECT sum(used)::bigint FROM tile_budget WHERE day = $1").bind(day)
    };
    q.fetch_one(store.pool()).await.map_err(query_err(format!("reading the tile budget of {day}")))
}

/// When a run of this schema last ended with every tile done (seconds since the epoch).
pub async fn last_success(store: &Store) -> Result<Option<f64>, JobsError> {
    jobs::last_success(store).await
}
