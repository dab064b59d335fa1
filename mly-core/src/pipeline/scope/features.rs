//! Map features of a scope: those seen in its images. Graph `/map_features?bbox=` searches of
//! the z14 cells around the listed images (split where a cell holds more than one answer), kept
//! when their `images` edge names a live image of the scope. Graph searches, not map-feature
//! tiles: tile requests are the scarce resource (a per-IP block can come after ~1,500 a day),
//! searches are plentiful (10,000/min), and one search per cell costs what the two feature
//! tiles of that cell would, without touching the tile budget.
//!
//! The cells are collected while the pages are committed and searched after the listing, each
//! once per pass, so that a feature seen in images of two pages is searched once, and which
//! features are kept depends only on the stored images (the same after a crash and a resume).

use std::collections::{BTreeSet, HashMap};

use super::ScopeFailure;
use super::plan::Keep;
use super::quadtree::search_split;
use crate::api::ApiClient;
use crate::model::MapFeatureDetails;
use crate::store::ScopeFeature;
use mly_contract::FeatureKind;
use mly_contract::tiles::{MAX_LAT, TileId};

/// How far from an image a feature seen in it may stand: the cells within this distance of an
/// image are searched. Mapillary places a feature from its detections, a few to some tens of
/// metres from the camera.
const SIGHT_M: f64 = 100.0;
/// Metres per degree of latitude.
const M_PER_DEG: f64 = 111_320.0;
/// The zoom of the cells searched first (split where one holds more than an answer).
pub(crate) const CELL_ZOOM: u8 = 12;

/// The cells (at [`CELL_ZOOM`]) within [`SIGHT_M`] of any of the positions, sorted.
pub(crate) fn cells_around(positions: impl IntoIterator<Item = (f64, f64)>) -> Vec<TileId> {
    let mut cells = BTreeSet::new();
    for (lon, lat) in positions {
        let dlat = SIGHT_M / M_PER_DEG;
        let dlon = dlat / lat.to_radians().cos().max(0.01);
        // Longitudes past ±180 continue on the other side of the antimeridian.
        let wrap = |l: f64| {
            if l > 180.0 {
                l - 360.0
            } else if l < -180.0 {
                l + 360.0
            } else {
                l
            }
        };
        let nw = TileId::containing(CELL_ZOOM, wrap(lon - dlon), (lat + dlat).min(MAX_LAT));
        let se = TileId::containing(CELL_ZOOM, wrap(lon + dlon), (lat - dlat).max(-MAX_LAT));
        let n = 1u32 << CELL_ZOOM;
        // Across the antimeridian the west corner's x is larger than the east one's.
        let xs: Vec<u32> =
            if nw.x <= se.x { (nw.x..=se.x).collect() } else { (nw.x..n).chain(0..=se.x).collect() };
        for x in xs {
            for y in nw.y..=se.y {
                cells.insert(TileId { z: CELL_ZOOM, x, y });
            }
        }
    }
    cells.into_iter().collect()
}

/// Every map feature in `cell`, splitting it while a search holds too much.
pub(crate) async fn search_cell(
    api: &ApiClient,
    cell: TileId,
) -> Result<Vec<MapFeatureDetails>, ScopeFailure> {
    let found = search_split(cell, |c| async move { api.search_map_features(&c.bounds()).await }).await?;
    // Quarters do not overlap, but the service may list a feature on a quarter's edge twice.
    let by_id: HashMap<i64, MapFeatureDetails> = found.into_iter().map(|f| (f.id.0, f)).collect();
    let mut out: Vec<MapFeatureDetails> = by_id.into_values().collect();
    out.sort_unstable_by_key(|f| f.id);
    Ok(out)
}

/// The image ids the features' `images` edges name (to ask the database which are the scope's).
pub(crate) fn edge_images(found: &[MapFeatureDetails]) -> Vec<i64> {
    let ids: BTreeSet<i64> = found.iter().flat_map(|f| f.images.iter().map(|i| i.0)).collect();
    ids.into_iter().collect()
}

/// The features to store: a harvested kind, in the region, seen in one of `scope_images`.
pub(crate) fn keep(
    found: Vec<MapFeatureDetails>,
    keep: &Keep,
    kinds: &[FeatureKind],
    scope_images: &std::collections::HashSet<i64>,
) -> Vec<ScopeFeature> {
    found
        .into_iter()
        .filter(|f| f.images.iter().any(|i| scope_images.contains(&i.0)))
        .filter_map(|f| keep.feature(&f, kinds).map(|kind| ScopeFeature { kind, details: f }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_reach_the_neighbour_near_an_edge_only() {
        let t = TileId::containing(CELL_ZOOM, 13.0, 55.6);
        let b = t.bounds();
        let mid = ((b.west + b.east) / 2.0, (b.south + b.north) / 2.0);
        assert_eq!(cells_around([mid]), vec![t]);
        // 50 m inside the west edge: the western neighbour too.
        let near_west = (b.west + 50.0 / M_PER_DEG / 55.6f64.to_radians().cos(), mid.1);
        let cells = cells_around([near_west]);
        assert_eq!(cells.len(), 2, "{cells:?}");
        assert!(cells.contains(&TileId { z: CELL_ZOOM, x: t.x - 1, y: t.y }));
        // Across the antimeridian.
        let max_x = (1u32 << CELL_ZOOM) - 1;
        let cells = cells_around([(179.9999, -16.8)]);
        assert!(cells.iter().any(|c| c.x == max_x) && cells.iter().any(|c| c.x == 0), "{cells:?}");
    }
}
