//! `mly-harvest plan`: what a first harvest of a region would cost, without spending quota.

use serde::Serialize;

use crate::region::Region;
use crate::settings::{Harvest, Limits as LimitSettings};
use mly_contract::Tileset;
use mly_contract::tiles::HARVEST_ZOOM;

/// Images a bbox search cell is planned to hold at most (below the API's 2000-result cap, with
/// head-room for images the tile does not show yet).
pub const SEARCH_CELL_TARGET: u64 = 1500;
/// Ids per multi-id lookup (the documented cap).
pub const IDS_PER_CALL: u64 = mly_contract::api::MAX_IDS_PER_CALL as u64;

/// The estimate `plan` prints.
#[derive(Debug, Serialize)]
pub struct PlanEstimate {
    pub region: String,
    pub tiles_z14: u64,
    pub tilesets: Vec<TilesetCount>,
    pub assumed_images_per_tile: u64,
    pub requests: Requests,
    pub limits: Limits,
    /// Wall-clock lower bound in seconds from the per-minute limits (Graph API).
    pub graph_seconds: f64,
    /// Days of tile quota the tile requests take.
    pub tile_days: f64,
    pub model: &'static str,
}

/// Tile count for one tileset.
#[derive(Debug, Serialize)]
pub struct TilesetCount {
    pub tileset: String,
    pub tiles: u64,
}

/// Requests per API family.
#[derive(Debug, Serialize)]
pub struct Requests {
    pub tiles: u64,
    pub search: u64,
    pub entity: u64,
}

/// The configured limits the estimate used.
#[derive(Debug, Serialize)]
pub struct Limits {
    pub tiles_per_day: u32,
    pub search_per_minute: u32,
    pub entity_per_minute: u32,
}

const MODEL: &str = "tiles = z14 tiles x tilesets; per z14 tile with n images (assumed): \
search = 1 + ceil(n / 1500) bbox searches on the z14->z18 quadtree (cells planned from the tile's own \
image positions); entity = ceil(n/15 features / 50) multi-id lookups per map-feature tileset, plus \
ceil(n / 50) detection lookups when detections are on. A re-sync of an unchanged tile costs 1 tile \
request and no Graph calls.";

/// Estimates the requests and time for a first harvest of `region`.
pub fn estimate(
    region: &Region,
    harvest: &Harvest,
    limits: &LimitSettings,
    images_per_tile: u64,
) -> PlanEstimate {
    let tiles = region.tile_count(HARVEST_ZOOM);
    let sets = &harvest.tilesets;
    let n = images_per_tile;
    let mut search = 0;
    let mut entity = 0;
    if harvest.enrich {
        if sets.iter().any(|t| t.is_coverage()) {
            search += tiles * (1 + n.div_ceil(SEARCH_CELL_TARGET));
            if harvest.detections {
                entity += tiles * n.div_ceil(IDS_PER_CALL);
            }
        }
        let feature_sets = sets.iter().filter(|t| !t.is_coverage()).count() as u64;
        entity += tiles * feature_sets * (n / 15).div_ceil(IDS_PER_CALL);
    }
    let l = limits;
    let graph_seconds = (search as f64 / f64::from(l.search_per_minute))
        .max(entity as f64 / f64::from(l.entity_per_minute))
        * 60.0;
    PlanEstimate {
        region: region.name.clone(),
        tiles_z14: tiles,
        tilesets: sets.iter().map(|t: &Tileset| TilesetCount { tileset: t.name().into(), tiles }).collect(),
        assumed_images_per_tile: n,
        requests: Requests { tiles: tiles * sets.len() as u64, search, entity },
        limits: Limits {
            tiles_per_day: l.tiles_per_day,
            search_per_minute: l.search_per_minute,
            entity_per_minute: l.entity_per_minute,
        },
        graph_seconds,
        tile_days: (tiles * sets.len() as u64) as f64 / f64::from(l.tiles_per_day),
        model: MODEL,
    }
}

impl PlanEstimate {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = format!("region {}: {} z14 tiles\n", self.region, self.tiles_z14);
        for t in &self.tilesets {
            s += &format!("  {:<30} {:>10} tiles\n", t.tileset, t.tiles);
        }
        s += &format!(
            "first harvest, assuming {} images per tile:\n  tile requests   {:>10}  ({:.2} days of a {}/day quota)\n  search calls    {:>10}  (limit {}/min)\n  entity calls    {:>10}  (limit {}/min)\n  Graph API time  >= {}\n",
            self.assumed_images_per_tile,
            self.requests.tiles,
            self.tile_days,
            self.limits.tiles_per_day,
            self.requests.search,
            self.limits.search_per_minute,
            self.requests.entity,
            self.limits.entity_per_minute,
            humantime::format_duration(std::time::Duration::from_secs(self.graph_seconds.ceil() as u64)),
        );
        s += &format!("model: {}\n", self.model);
        s
    }
}
