//! Where a harvested region changed, learnt from low-zoom tiles: one z12 coverage tile answers
//! for 16 z14 tiles. Its `sequence` layer lists every sequence under it with a generalised
//! line; compared with the sequences the database holds there, it shows new sequences (an
//! upload), sequences that reach new z14 tiles, and sequences that vanished. Only the z14 tiles
//! concerned are fetched; what no low-zoom tile shows (a deletion inside an old sequence) is left
//! to the rolling refresh.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use futures::StreamExt;

use crate::api::{ApiClient, ApiError, TileResponse};
use crate::jobs::budget::{self, AppKey, TileLimits};
use crate::model::TileSequence;
use crate::mvt;
use crate::store::{Store, StoreError};
use mly_contract::Tileset;
use mly_contract::tiles::{HARVEST_ZOOM, TileId};

/// The zooms the tiles read for changes are taken from, finest first: one z12 tile answers for
/// 16 z14 tiles, one z10 tile for 256.
pub const CHANGE_ZOOMS: [u8; 3] = [12, 11, 10];
/// At most this share of the candidate z14 tiles is spent on low-zoom tiles (a coarser zoom is
/// chosen when the finest would cost more).
const MAX_SHARE: f64 = 0.08;

/// The finest change zoom whose tiles over `candidates` cost at most [`MAX_SHARE`] of them
/// (at least one tile), or the coarsest.
pub fn change_zoom(candidates: &[TileId]) -> u8 {
    let budget = ((candidates.len() as f64 * MAX_SHARE).floor() as usize).max(1);
    for z in CHANGE_ZOOMS {
        let parents: HashSet<TileId> = candidates.iter().map(|t| t.ancestor_at(z)).collect();
        if parents.len() <= budget {
            return z;
        }
    }
    CHANGE_ZOOMS[CHANGE_ZOOMS.len() - 1]
}
/// Low-zoom tiles in flight at once (their requests are paced by the shared tile pace).
const IN_FLIGHT: usize = 4;

/// Why a change check failed in a way that stops the run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChangesError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the low-zoom tiles said.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Candidate z14 tiles where something changed.
    pub(crate) changed: HashSet<TileId>,
    /// Candidate z14 tiles whose low-zoom tile could not be read (budget, errors): fetched.
    pub(crate) unread: HashSet<TileId>,
    /// Low-zoom tile requests made.
    pub(crate) requests: u64,
}

/// The z14 tiles (within `parent`) where a sequence's generalised line has its points: where its
/// images are (a generalised line keeps points of the path; the segments between them cut
/// corners). A tile counts with two of the line's points or more, or when it holds all of them:
/// a z12 point is quantised to a quarter of a z14 tile's pixel grid, so a lone point a pixel
/// across a tile edge is most likely an image on the neighbour's side.
fn point_tiles(seq: &TileSequence, parent: TileId) -> HashSet<TileId> {
    let mut counts: HashMap<TileId, usize> = HashMap::new();
    for c in seq.geom.0.iter().flat_map(|part| part.0.iter()) {
        *counts.entry(TileId::containing(HARVEST_ZOOM, c.x, c.y)).or_default() += 1;
    }
    let only = counts.len() == 1;
    counts.into_iter().filter(|(t, n)| (*n >= 2 || only) && t.is_within(&parent)).map(|(t, _)| t).collect()
}

/// The z14 tiles under `parent` where the low-zoom `listed` sequences and the database's
/// (`held`: sequence → z14 tiles with its live images) disagree.
pub(crate) fn disagreements(
    parent: TileId,
    listed: &[TileSequence],
    held: &HashMap<String, HashSet<TileId>>,
) -> HashSet<TileId> {
    let mut out = HashSet::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let (mut new, mut reaching, mut vanished) = (0, 0, 0);
    for seq in listed {
        seen.insert(seq.id.as_str());
        match held.get(&seq.id) {
            // A new sequence: the tiles its line has points in.
            None => {
                let tiles = point_tiles(seq, parent);
                new += usize::from(!tiles.is_empty());
                out.extend(tiles);
            }
            // A known one with points in tiles where the database has none of its images.
            Some(have) => {
                let more: Vec<TileId> = point_tiles(seq, parent).difference(have).copied().collect();
                reaching += usize::from(!more.is_empty());
                out.extend(more);
            }
        }
    }
    // Vanished sequences: the tiles that held their images.
    for (id, tiles) in held {
        if !seen.contains(id.as_str()) {
            vanished += 1;
            out.extend(tiles.iter().copied());
        }
    }
    tracing::debug!(%parent, listed = listed.len(), held = held.len(), new, reaching, vanished,
        tiles = out.len(), "low-zoom tile compared with the database");
    out
}

/// Reads the z12 tiles over `candidates` (known z14 tiles not due for a refresh) and returns
/// those where something changed. Every low-zoom request is taken from the app's shared daily
/// tile budget and pace like any tile request.
pub(crate) async fn changed_tiles(
    api: &ApiClient,
    store: &Store,
    candidates: &[TileId],
    app: &AppKey,
    day: NaiveDate,
    limits: TileLimits,
) -> Result<Changes, ChangesError> {
    let zoom = change_zoom(candidates);
    let mut by_parent: HashMap<TileId, Vec<TileId>> = HashMap::new();
    for t in candidates {
        by_parent.entry(t.ancestor_at(zoom)).or_default().push(*t);
    }
    let mut parents: Vec<TileId> = by_parent.keys().copied().collect();
    parents.sort_unstable();
    let mut out = Changes::default();
    let mut reads = futures::stream::iter(parents.into_iter().map(|p| async move {
        // After an interrupt no new read starts (the tiles under it count as unread, the safe
        // side); reads in flight finish, their database statements are never cut.
        if crate::pipeline::interrupt::is_set() {
            return Ok::<_, ChangesError>((p, None, false));
        }
        let grant = budget::take(store, app, day, limits, 1).await?;
        if grant.tiles == 0 {
            return Ok((p, None, false));
        }
        tokio::time::sleep(grant.start_of(0)).await;
        let listed = match api.tile(Tileset::Public, p, None).await {
            Ok(TileResponse::Data { bytes, .. }) => {
                match tokio::task::spawn_blocking(move || mvt::decode_tile(Tileset::Public, p, &bytes)).await {
                    Ok(Ok(d)) => Some(d.sequences),
                    _ => None,
                }
            }
            // An empty answer proves nothing (§13.3): the tiles under it are fetched.
            Ok(_) => None,
            Err(e) if e.is_auth() || e.is_unreachable() || matches!(e, ApiError::Blocked { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(tile = %p, error = %e, "low-zoom tile not read; its z14 tiles will be fetched");
                None
            }
        };
        let Some(listed) = listed else { return Ok((p, None, true)) };
        let held = store.sequence_tiles(p, HARVEST_ZOOM).await?;
        Ok((p, Some(disagreements(p, &listed, &held)), true))
    }))
    .buffer_unordered(IN_FLIGHT);
    while let Some(r) = reads.next().await {
        let (p, changed, requested) = r?;
        out.requests += u64::from(requested);
        let under = by_parent.get(&p).map(Vec::as_slice).unwrap_or_default();
        match changed {
            Some(c) => out.changed.extend(under.iter().filter(|t| c.contains(t))),
            None => out.unread.extend(under.iter().copied()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo_types::{LineString, MultiLineString};

    fn seq(id: &str, pts: &[(f64, f64)]) -> TileSequence {
        TileSequence {
            id: id.into(),
            image_id: None,
            captured_at_ms: None,
            is_pano: None,
            organization_id: None,
            creator_id: None,
            geom: MultiLineString(vec![LineString::from(pts.to_vec())]),
        }
    }

    /// The centre of a z14 tile.
    fn centre(t: TileId) -> (f64, f64) {
        let b = t.bounds();
        ((b.west + b.east) / 2.0, (b.south + b.north) / 2.0)
    }

    #[test]
    fn new_extended_and_vanished_sequences_mark_their_tiles() {
        let a = TileId::containing(14, 13.0, 55.6);
        let parent = a.ancestor_at(12);
        let kids = parent.descendants_at(14);
        let (t1, t2, t3) = (kids[0], kids[1], kids[5]);
        let line = seq("known", &[centre(t1), centre(t2)]);
        let mut held: HashMap<String, HashSet<TileId>> = HashMap::new();
        held.insert("known".into(), HashSet::from([t1, t2]));
        // Unchanged: nothing to fetch.
        assert!(disagreements(parent, std::slice::from_ref(&line), &held).is_empty());
        // A new sequence in t3.
        let new = seq("new", &[centre(t3), centre(t3)]);
        assert_eq!(disagreements(parent, &[line.clone(), new], &held), HashSet::from([t3]));
        // The known sequence now reaches t3 too.
        let c3 = centre(t3);
        let longer = seq("known", &[centre(t1), centre(t2), c3, (c3.0 + 1e-5, c3.1)]);
        assert!(disagreements(parent, &[longer], &held).contains(&t3));
        // A vanished sequence: the tiles that held it.
        held.insert("gone".into(), HashSet::from([t3]));
        assert_eq!(disagreements(parent, &[line], &held), HashSet::from([t3]));
    }

    #[test]
    fn the_change_zoom_is_the_finest_within_the_share() {
        let block = |w: u32, h: u32| -> Vec<TileId> {
            (0..w * h).map(|i| TileId::new(14, 8800 + i % w, 5100 + i / w).unwrap()).collect()
        };
        // 64 tiles aligned on z12 tiles: 4 z12 tiles (6%).
        assert_eq!(change_zoom(&block(8, 8)), 12);
        // 130 tiles (10 x 13) straddle 20 z12 tiles (15%): z11 (6 to 12 tiles) or z10.
        assert!(change_zoom(&block(10, 13)) <= 11);
        // One tile: one low-zoom tile whatever the zoom; the finest.
        assert_eq!(change_zoom(&block(1, 1)), 12);
    }

    #[test]
    fn a_lone_point_across_an_edge_does_not_mark_the_neighbour() {
        let a = TileId::containing(14, 13.0, 55.6);
        let parent = a.ancestor_at(12);
        let kids = parent.descendants_at(14);
        let (left, right) = (kids[0], kids[1]);
        let b = left.bounds();
        let inside = centre(left);
        let edge = (b.east + (b.east - b.west) / 4096.0, inside.1);
        let s = seq("s", &[inside, (inside.0 + 1e-5, inside.1), edge]);
        assert_eq!(point_tiles(&s, parent), HashSet::from([left]));
        let s = seq("t", &[edge]);
        assert_eq!(
            point_tiles(&s, parent),
            HashSet::from([right]),
            "a sequence all in one tile counts there"
        );
    }
}
