//! Where a record lands in a tile's pixel grid: its home tile, or a neighbour's render buffer.

use crate::world::SimImage;
use mly_contract::tiles::{EXTENT, TileId};

/// How far past a z14 tile's edge (in pixels of 4096) the render buffer reaches (§13.5: the live
/// service repeats records near an edge in the neighbouring tile; its width is not known, 64 px is
/// about 20–40 m).
pub(super) const RENDER_BUFFER_PX: f64 = 64.0;

/// The pixel of a record in its home tile: rounded, and kept inside [0, extent) so that a record
/// near the far edge never lands on the neighbour's first pixel (a record is inside one tile only).
pub(crate) fn home_pixel(tile: TileId, lon: f64, lat: f64) -> (i64, i64) {
    let (px, py) = tile.lonlat_to_pixel(lon, lat, EXTENT);
    let e = i64::from(EXTENT);
    ((px.round() as i64).clamp(0, e - 1), (py.round() as i64).clamp(0, e - 1))
}

/// The pixel of a neighbour's record in this tile's render buffer, or `None` when it is farther
/// than [`RENDER_BUFFER_PX`] (or inside the tile, which a neighbour's record never is). Coordinates
/// outside the tile are rounded away from it: a copy is never inside [0, extent).
pub(super) fn buffer_pixel(tile: TileId, lon: f64, lat: f64) -> Option<(i64, i64)> {
    let (px, py) = tile.lonlat_to_pixel(lon, lat, EXTENT);
    let (e, b) = (f64::from(EXTENT), RENDER_BUFFER_PX);
    let near = |v: f64| (-b..e + b).contains(&v);
    let inside = |v: f64| (0.0..e).contains(&v);
    if !near(px) || !near(py) || (inside(px) && inside(py)) {
        return None;
    }
    let ei = i64::from(EXTENT);
    let q = |v: f64| {
        if v < 0.0 {
            (v.round() as i64).min(-1)
        } else if v >= e {
            (v.round() as i64).max(ei + 1)
        } else {
            (v.round() as i64).clamp(0, ei - 1)
        }
    };
    Some((q(px), q(py)))
}

pub(super) fn image_position(img: &SimImage, computed: bool) -> (f64, f64) {
    if computed { img.computed.unwrap_or((img.lon, img.lat)) } else { (img.lon, img.lat) }
}
