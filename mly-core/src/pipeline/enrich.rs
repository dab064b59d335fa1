//! Enrichment planning: which Graph API calls fetch the details of the records a tile needs,
//! at the lowest cost. The tile itself tells how many records lie in each quadtree cell, so bbox
//! searches are planned on cells that fit under the API's 2000-result cap instead of discovering
//! the cap by failing; records that a search does not return, and cells with only a few records
//! to fetch, go through multi-id lookups of up to 50.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use futures::StreamExt;

use crate::api::{ApiClient, ApiError, ByIds, Search};
use crate::model::{ImageDetails, ImageId, MapFeatureDetails, MapFeatureId};
use mly_contract::tiles::{MAX_ENRICH_ZOOM, TileId};

/// Images a bbox search cell is planned to hold at most (below the API's 2000-result cap, with
/// head-room for images the tile does not show yet).
pub const SEARCH_CELL_TARGET: u64 = 1500;
/// Ids per multi-id lookup (the documented cap).
pub const IDS_PER_CALL: u64 = mly_contract::api::MAX_IDS_PER_CALL as u64;

/// Bbox searches of one tile in flight at once (the search pacer keeps their rate; a dense tile
/// plans a few dozen cells, and their latencies overlap instead of adding up).
const SEARCH_PARALLELISM: usize = 32;

/// A record of the tile: its id and tile position.
#[derive(Debug, Clone, Copy)]
pub struct Located {
    pub id: i64,
    pub lon: f64,
    pub lat: f64,
}

/// The plan for one tile: cells to search and ids to look up directly.
#[derive(Debug, Default, PartialEq)]
pub struct EnrichPlan {
    pub search_cells: Vec<TileId>,
    pub lookups: Vec<i64>,
}

/// What enrichment found.
#[derive(Debug)]
pub struct Enriched<T> {
    pub details: HashMap<i64, T>,
    /// Ids the API says do not exist (deleted, hidden, or not yet processed).
    pub missing: Vec<i64>,
}

/// Plans the calls for `needed` ids among the tile's `records`.
pub fn plan(tile: TileId, records: &[Located], needed: &HashSet<i64>) -> EnrichPlan {
    let mut out = EnrichPlan::default();
    if needed.is_empty() {
        return out;
    }
    // A few multi-id lookups beat any search when little is needed.
    if needed.len() as u64 <= 2 * IDS_PER_CALL {
        out.lookups = sorted(needed.iter().copied());
        return out;
    }
    let cells: Vec<(TileId, bool)> = records
        .iter()
        .map(|r| (TileId::containing(MAX_ENRICH_ZOOM, r.lon, r.lat), needed.contains(&r.id)))
        .filter(|(c, _)| c.is_within(&tile))
        .collect();
    let in_tile: HashSet<i64> =
        records.iter().zip(&cells).filter(|(_, (c, _))| c.is_within(&tile)).map(|(r, _)| r.id).collect();
    // Needed ids the tile places outside itself (should not happen) are looked up directly.
    out.lookups.extend(needed.iter().filter(|id| !in_tile.contains(id)));
    let mut stack = vec![tile];
    while let Some(cell) = stack.pop() {
        let (mut all, mut need) = (0u64, 0u64);
        for (c, n) in &cells {
            if c.is_within(&cell) {
                all += 1;
                need += u64::from(*n);
            }
        }
        if need == 0 {
            continue;
        }
        if need <= IDS_PER_CALL {
            out.lookups.extend(
                records.iter().zip(&cells).filter(|(_, (c, n))| *n && c.is_within(&cell)).map(|(r, _)| r.id),
            );
        } else if all <= SEARCH_CELL_TARGET || cell.z >= MAX_ENRICH_ZOOM {
            out.search_cells.push(cell);
        } else {
            stack.extend(cell.children());
        }
    }
    out.lookups.sort_unstable();
    out.lookups.dedup();
    out.search_cells.sort();
    out
}

fn sorted(it: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut v: Vec<i64> = it.collect();
    v.sort_unstable();
    v
}

/// A Graph record that knows its id.
pub trait Record {
    /// The record's id.
    fn id(&self) -> i64;
}

impl Record for ImageDetails {
    fn id(&self) -> i64 {
        self.id.0
    }
}

impl Record for MapFeatureDetails {
    fn id(&self) -> i64 {
        self.id.0
    }
}

/// Fetches image details for `needed` ids of the tile.
pub async fn images(
    api: &ApiClient,
    tile: TileId,
    records: &[Located],
    needed: &HashSet<i64>,
) -> Result<Enriched<ImageDetails>, ApiError> {
    run(
        plan(tile, records, needed),
        needed,
        |cell| async move { api.search_images(&cell.bounds()).await },
        |ids| async move { api.images_by_id(&ids.into_iter().map(ImageId).collect::<Vec<_>>()).await },
    )
    .await
}

/// Fetches map-feature details for `needed` ids of the tile.
pub async fn features(
    api: &ApiClient,
    tile: TileId,
    records: &[Located],
    needed: &HashSet<i64>,
) -> Result<Enriched<MapFeatureDetails>, ApiError> {
    run(
        plan(tile, records, needed),
        needed,
        |cell| async move { api.search_map_features(&cell.bounds()).await },
        |ids| async move { api.map_features_by_id(&ids.into_iter().map(MapFeatureId).collect::<Vec<_>>()).await },
    )
    .await
}

/// Executes a plan: searches its cells level by level (splitting a cell that hits the cap, down to
/// z18), then looks up every needed id the searches did not return.
async fn run<T, S, SF, L, LF>(
    p: EnrichPlan,
    needed: &HashSet<i64>,
    search: S,
    lookup: L,
) -> Result<Enriched<T>, ApiError>
where
    T: Record,
    S: Fn(TileId) -> SF,
    SF: Future<Output = Result<Search<T>, ApiError>>,
    L: FnOnce(Vec<i64>) -> LF,
    LF: Future<Output = Result<ByIds<T>, ApiError>>,
{
    let mut details = HashMap::new();
    let mut cells = p.search_cells;
    while !cells.is_empty() {
        let results: Vec<(TileId, Result<Search<T>, ApiError>)> = futures::stream::iter(cells.drain(..))
            .map(|c| {
                let f = search(c);
                async move { (c, f.await) }
            })
            .buffer_unordered(SEARCH_PARALLELISM)
            .collect()
            .await;
        let mut next = Vec::new();
        for (cell, r) in results {
            match r? {
                Search::Complete(found) => {
                    details
                        .extend(found.into_iter().filter(|d| needed.contains(&d.id())).map(|d| (d.id(), d)));
                }
                // More than the cap: split the cell; at the floor, the lookups below take over.
                Search::TooMuch if cell.z < MAX_ENRICH_ZOOM => next.extend(cell.children()),
                Search::TooMuch => {}
            }
        }
        cells = next;
    }
    let rest = sorted(needed.iter().copied().filter(|id| !details.contains_key(id)));
    let mut missing = Vec::new();
    if !rest.is_empty() {
        let by = lookup(rest).await?;
        details.extend(by.found.into_iter().map(|d| (d.id(), d)));
        missing = by.missing;
    }
    Ok(Enriched { details, missing })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(tile: TileId, n: usize) -> Vec<Located> {
        let b = tile.bounds();
        (0..n)
            .map(|i| {
                let fx = (i % 173) as f64 / 173.0 + 0.001;
                let fy = (i / 173) as f64 / (n / 173 + 1) as f64 + 0.001;
                Located {
                    id: i as i64,
                    lon: b.west + fx * (b.east - b.west),
                    lat: b.south + fy * (b.north - b.south),
                }
            })
            .collect()
    }

    #[test]
    fn small_needs_use_lookups_only() {
        let t = TileId::new(14, 8574, 5735).unwrap();
        let recs = grid(t, 5000);
        let needed: HashSet<i64> = (0..60).collect();
        let p = plan(t, &recs, &needed);
        assert!(p.search_cells.is_empty());
        assert_eq!(p.lookups.len(), 60);
    }

    #[test]
    fn dense_tile_splits_into_cells_under_the_cap() {
        let t = TileId::new(14, 8574, 5735).unwrap();
        let recs = grid(t, 30_000);
        let needed: HashSet<i64> = recs.iter().map(|r| r.id).collect();
        let p = plan(t, &recs, &needed);
        assert!(p.lookups.is_empty(), "{:?}", p.lookups.len());
        // Every needed id falls in exactly one search cell, and no cell exceeds the target.
        for c in &p.search_cells {
            let n = recs.iter().filter(|r| TileId::containing(18, r.lon, r.lat).is_within(c)).count();
            assert!(n as u64 <= SEARCH_CELL_TARGET || c.z == 18, "{c}: {n}");
        }
        let covered: usize = recs
            .iter()
            .filter(|r| p.search_cells.iter().any(|c| TileId::containing(18, r.lon, r.lat).is_within(c)))
            .count();
        assert_eq!(covered, recs.len());
        // 30k images need at least 20 cells of 1500; the plan stays close to that bound.
        assert!(p.search_cells.len() >= 20 && p.search_cells.len() <= 64, "{}", p.search_cells.len());
    }
}
