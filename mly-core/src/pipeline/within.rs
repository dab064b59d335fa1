//! A point region keeps only records inside its circle. The tile's records are filtered twice:
//! before the diff on their tile positions (with a slack for the tile's quantisation, so that
//! records far outside cost no enrichment), and before the commit on the position that is
//! stored (`geom`: the Graph position when enriched), exactly, so that every stored record is
//! inside (what `ST_DWithin(geom::geography, centre, radius)` checks).
//!
//! Only the records written are filtered: the tile's own listing still decides which live
//! records vanished (a record outside the circle that the tile lists is not "missing"). A
//! filtered read stores no ETag, so a later area harvest of the tile reads it in full rather
//! than hearing "not modified" about records this run left out.

use std::collections::HashSet;

use crate::model::DecodedTile;
use crate::region::Circle;
use crate::store::TileWrite;
use mly_contract::Tileset;

/// How far outside the circle a tile position may lie and still be enriched: a z14 pixel is
/// under a metre; a computed tileset places images at their SfM position, which can lie metres
/// to tens of metres from the original GPS position that is stored.
fn slack_m(tileset: Tileset) -> f64 {
    match tileset {
        Tileset::ComputedPublic => 100.0,
        _ => 2.0,
    }
}

/// Leaves out the decoded records whose tile position is clearly outside the circle, and the
/// sequences none of the remaining images belongs to.
pub(crate) fn listed(c: &Circle, tileset: Tileset, d: &mut DecodedTile) {
    let reach = c.radius_m + slack_m(tileset);
    d.images.retain(|i| c.distance_m(i.lon, i.lat) <= reach);
    d.features.retain(|f| c.distance_m(f.lon, f.lat) <= reach);
    let seqs: HashSet<&str> = d.images.iter().filter_map(|i| i.sequence_id.as_deref()).collect();
    d.sequences.retain(|s| seqs.contains(s.id.as_str()));
}

/// Leaves out the rows whose stored position would be outside the circle (and their
/// detections), and stores no ETag for the tile.
pub(crate) fn written(c: &Circle, w: &mut TileWrite) {
    w.images.retain(|r| {
        let (lon, lat) = r.details.as_ref().and_then(|d| d.geometry).unwrap_or((r.tile.lon, r.tile.lat));
        c.contains(lon, lat)
    });
    w.features.retain(|r| {
        let (lon, lat) = r.details.as_ref().and_then(|d| d.geometry).unwrap_or((r.tile.lon, r.tile.lat));
        c.contains(lon, lat)
    });
    let kept: HashSet<i64> = w.images.iter().map(|r| r.tile.id.0).collect();
    w.detections.retain(|d| kept.contains(&d.det.image_id.0));
    let seqs: HashSet<String> = w.images.iter().filter_map(|r| r.tile.sequence_id.clone()).collect();
    w.sequences.retain(|s| seqs.contains(&s.id));
    w.etag = None;
}
