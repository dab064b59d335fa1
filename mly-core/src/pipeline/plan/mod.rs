//! The plan stage: which z14 tiles of the region a new run fetches, spending the scarce tile
//! requests least. Per z14 tile of the region:
//! - never seen (no tile state): a Graph search probe (`discover`) tells whether it holds any
//!   image; an empty one is skipped, and remembered;
//! - seen, and due for its rolling refresh (`rolling`): fetched;
//! - seen, not due: fetched only where the z12 tile above it shows a change (`changes`),
//!   otherwise skipped as unchanged.
//!
//! Only the region's first coverage tileset is planned this way; the other tilesets of a tile
//! (the map features, the computed coverage) become jobs when its coverage tile is written with
//! images (`pipeline::commit`), so a tile without coverage costs no map-feature request.
//! A tile that cannot be judged (an error, no budget for its z12 tile) is always fetched.

mod changes;
mod discover;
mod rolling;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

use crate::api::{ApiClient, ApiError};
use crate::jobs::budget::{AppKey, TileLimits};
use crate::jobs::{PlannedTile, SkipReason};
use crate::settings::Harvest;
use crate::store::{Store, StoreError};
use mly_contract::Tileset;
use mly_contract::tiles::TileId;

pub use changes::{CHANGE_ZOOMS, change_zoom};
pub use rolling::Rolling;

/// Why planning could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Jobs(#[from] crate::jobs::JobsError),
}

impl From<changes::ChangesError> for PlanError {
    fn from(e: changes::ChangesError) -> Self {
        match e {
            changes::ChangesError::Api(e) => PlanError::Api(e),
            changes::ChangesError::Store(e) => PlanError::Store(e),
        }
    }
}

/// Where the tilesets of a harvest stand in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TilesetRoles {
    /// Planned per z14 tile (the first coverage tileset; or every tileset when none is coverage).
    pub primary: Vec<Tileset>,
    /// Added as jobs when the tile's coverage is written with images.
    pub dependents: Vec<Tileset>,
}

impl TilesetRoles {
    /// The roles of the configured tilesets.
    pub fn of(tilesets: &[Tileset]) -> TilesetRoles {
        match tilesets.iter().position(|t| t.is_coverage()) {
            Some(i) => TilesetRoles {
                primary: vec![tilesets[i]],
                dependents: tilesets.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, t)| *t).collect(),
            },
            None => TilesetRoles { primary: tilesets.to_vec(), dependents: Vec::new() },
        }
    }
}

/// The plan of a new run, and what making it cost.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Every planned job (fetched or skipped), primary tilesets only.
    pub(crate) tiles: Vec<PlannedTile>,
    /// Graph probes made to discover coverage.
    pub(crate) probes: u64,
    /// Low-zoom tile requests made to learn changes.
    pub(crate) change_requests: u64,
}

/// What planning needs besides the region's tiles.
pub(crate) struct PlanInputs<'a> {
    pub(crate) store: &'a Store,
    pub(crate) api: &'a ApiClient,
    pub(crate) harvest: &'a Harvest,
    pub(crate) rolling: Rolling,
    pub(crate) app: &'a AppKey,
    pub(crate) day: NaiveDate,
    pub(crate) limits: TileLimits,
}

/// Plans a new run over `tiles` (z14).
pub(crate) async fn plan(inp: &PlanInputs<'_>, tiles: &[TileId]) -> Result<Plan, PlanError> {
    let roles = TilesetRoles::of(&inp.harvest.tilesets);
    let mut out = Plan::default();
    // Which z14 tiles to fetch is judged on the first primary tileset's tile state.
    let Some(&judge) = roles.primary.first() else { return Ok(out) };
    let known = inp.store.known_tiles(judge, tiles).await?;
    let mut unknown = Vec::new();
    let mut to_probe_again = Vec::new();
    let mut candidates = Vec::new();
    let mut fetch: HashSet<TileId> = HashSet::new();
    for t in tiles {
        match known.get(t) {
            None => unknown.push(*t),
            Some(k) if inp.rolling.due(*t, k) => {
                if k.last_fetched_at.is_none() {
                    // Only ever found empty by a probe: a new probe is the cheap re-read.
                    to_probe_again.push(*t);
                } else {
                    fetch.insert(*t);
                }
            }
            Some(_) => candidates.push(*t),
        }
    }
    // Images harvested before detections were switched on need their tiles read again.
    if inp.harvest.enrich && inp.harvest.detections && !candidates.is_empty() {
        let lacking = inp.store.tiles_lacking_detections(&candidates).await?;
        candidates.retain(|t| !lacking.contains(t));
        fetch.extend(lacking);
    }
    let mut empty: HashSet<TileId> = HashSet::new();
    unknown.extend(to_probe_again);
    if !unknown.is_empty() {
        let probed = discover::probe(inp.api, &unknown).await?;
        out.probes = unknown.len() as u64;
        inp.store.record_probes(judge, &probed.empty).await?;
        fetch.extend(probed.with_images);
        empty.extend(probed.empty);
    }
    if !candidates.is_empty() {
        let c = changes::changed_tiles(inp.api, inp.store, &candidates, inp.app, inp.day, inp.limits).await?;
        out.change_requests = c.requests;
        fetch.extend(c.changed);
        fetch.extend(c.unread);
    }
    for t in tiles {
        let skip = if fetch.contains(t) {
            None
        } else if empty.contains(t) || known.get(t).is_some_and(|k| k.last_fetched_at.is_none()) {
            Some(SkipReason::Empty)
        } else {
            Some(SkipReason::Unchanged)
        };
        for ts in &roles.primary {
            out.tiles.push(PlannedTile { tileset: *ts, tile: *t, skip });
        }
    }
    tracing::info!(
        tiles = tiles.len(),
        fetch = fetch.len(),
        probes = out.probes,
        low_zoom_requests = out.change_requests,
        "planned the run"
    );
    Ok(out)
}

/// The default rolling refresh period (`--refresh-tiles-older-than`).
pub const DEFAULT_REFRESH_PERIOD: Duration = Duration::from_secs(7 * 86_400);

/// The rolling refresh of a run starting `now` with `period`.
pub fn rolling(period: Duration, now: DateTime<Utc>) -> Rolling {
    Rolling { period, now }
}
