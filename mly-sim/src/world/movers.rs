//! Images that move into a neighbouring tile: one short drive along each edge of a busy tile.

use super::density::density;
use super::epochs::{alive, gone_epoch};
use super::fixture_world::{FIXTURE_TILE, Fx};
use super::ids::{EDGE_IMAGES, LOCAL_EDGE, SEQ_EDGE};
use super::images::make_image;
use super::random::{P_EDGE, P_MOVE, hash};
use super::records::SimImage;
use super::sequences::{SeqAttrs, seq_attrs};
use super::streets::{Frame, StreetPoint};
use mly_contract::hash::{splitmix64 as mix, unit};
use mly_contract::tiles::TileId;

/// The edge of a tile: 0 north, 1 east, 2 south, 3 west.
pub(super) fn neighbour(tile: TileId, edge: u8) -> Option<TileId> {
    let n = 1u32 << tile.z;
    match edge {
        0 => (tile.y > 0).then(|| TileId { y: tile.y - 1, ..tile }),
        1 => Some(TileId { x: (tile.x + 1) % n, ..tile }),
        2 => (tile.y + 1 < n).then(|| TileId { y: tile.y + 1, ..tile }),
        _ => Some(TileId { x: (tile.x + n - 1) % n, ..tile }),
    }
}

/// One image of an edge sequence, wherever it is at `epoch`: (image, moved into the neighbour).
pub(super) struct EdgeImage {
    pub(super) image: SimImage,
    pub(super) moved: bool,
}

/// The mover stream of one tile edge: a short drive along the edge, inside `tile`, whose images
/// drift one by one into the neighbour (~3 % per epoch). Defined from the tile alone, so the
/// neighbour computes its arrivals without generating this tile.
pub(super) fn edge_sequence(
    seed: u64,
    fx: Fx<'_>,
    tile: TileId,
    edge: u8,
    epoch: u32,
) -> Option<(SeqAttrs, Vec<EdgeImage>)> {
    let nb = neighbour(tile, edge)?;
    // The fixture tile is a static real snapshot: no synthetic drives cross into or out of it.
    if (tile == FIXTURE_TILE || nb == FIXTURE_TILE) && fx.is_some() {
        return None;
    }
    if density(seed, tile) < 100 {
        return None;
    }
    let frame = Frame::new(tile);
    let nframe = Frame::new(nb);
    let seq = seq_attrs(seed, tile, SEQ_EDGE, u64::from(edge), false, 0);
    let h = hash(seed, &[P_EDGE, u64::from(tile.x), u64::from(tile.y), u64::from(edge)]);
    let inset = 8.0 + 15.0 * unit(h);
    let along_len = if edge.is_multiple_of(2) { frame.w } else { frame.h };
    let start = along_len * (0.1 + 0.6 * unit(mix(h)));
    let step = 5.0;
    let mut out = Vec::new();
    for k in 0..EDGE_IMAGES {
        let a = start + step * k as f64;
        // Street point inside `tile` (x east, y north), its bearing along the edge.
        let (x, y, bearing) = match edge {
            0 => (a, frame.h - inset, 90.0),
            1 => (frame.w - inset, a, 0.0),
            2 => (a, inset, 90.0),
            _ => (inset, a, 0.0),
        };
        let local = LOCAL_EDGE + i64::from(edge) * 64 + k;
        let sp = StreetPoint { x, y, bearing };
        let Some(mut image) = make_image(seed, fx, tile, &frame, local, &seq, k as usize, sp, epoch) else {
            continue;
        };
        if !alive(seed, image.id, epoch) {
            continue;
        }
        let moved = epoch >= gone_epoch(seed, P_MOVE, image.id, 0.03);
        if moved {
            // Mirror the point across the edge into the neighbour, 3–15 m past it.
            let past = 3.0 + 12.0 * unit(hash(seed, &[P_MOVE, image.id as u64, 1]));
            let (lon, lat) = frame.lonlat(x, y);
            let (px, py) = match edge {
                0 => (nframe.w * (lon - nframe.west) / nframe.dlon, past),
                1 => (past, nframe.h * (lat - nframe.south) / nframe.dlat),
                2 => (nframe.w * (lon - nframe.west) / nframe.dlon, nframe.h - past),
                _ => (nframe.w - past, nframe.h * (lat - nframe.south) / nframe.dlat),
            };
            let (px, py) = nframe.clamp(px, py);
            (image.lon, image.lat) = nframe.lonlat(px, py);
            if image.computed.is_some() {
                let (cx, cy) = nframe.clamp(px + 0.5, py - 0.5);
                image.computed = Some(nframe.lonlat(cx, cy));
            }
        }
        out.push(EdgeImage { image, moved });
    }
    Some((seq, out))
}
