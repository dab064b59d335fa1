//! Covering a region polygon with web-mercator tiles.

use geo::{Intersects, Relate};
use geo_types::{MultiPolygon, Polygon};
use mly_contract::tiles::TileId;

/// Tiles at zoom `z` whose area intersects the shape (not merely its bounding box).
///
/// Walks the quadtree from zoom 0 so that a large polygon is tested once per boundary tile per
/// zoom, and whole subtrees inside or outside it are taken or skipped without testing each tile.
pub fn cover(shape: &MultiPolygon<f64>, z: u8) -> Vec<TileId> {
    let mut out = Vec::new();
    walk(shape, z, &mut |t, inside| {
        if inside && t.z < z {
            out.extend(t.descendants_at(z));
        } else {
            out.push(t);
        }
    });
    out.sort_unstable();
    out
}

/// The number of tiles `cover` would return, without listing them.
pub fn count_cover(shape: &MultiPolygon<f64>, z: u8) -> u64 {
    let mut n = 0u64;
    walk(shape, z, &mut |t, _| n += 1u64 << (2 * u32::from(z - t.z)));
    n
}

fn walk(shape: &MultiPolygon<f64>, z: u8, emit: &mut dyn FnMut(TileId, bool)) {
    let prepared = geo::PreparedGeometry::from(shape.clone());
    let mut stack = vec![TileId { z: 0, x: 0, y: 0 }];
    while let Some(t) = stack.pop() {
        let poly: Polygon<f64> = t.bounds().rect().to_polygon();
        if !shape.intersects(&poly) {
            continue;
        }
        if t.z == z {
            emit(t, false);
            continue;
        }
        // A tile wholly inside the shape: every descendant intersects it, no need to test them.
        if prepared.relate(&poly).is_contains() {
            emit(t, true);
            continue;
        }
        stack.extend(t.children());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mly_contract::tiles::Bbox;

    #[test]
    fn cover_bbox_matches_tile_range() {
        let b: Bbox = "12.9,55.5,13.1,55.65".parse().unwrap();
        let tiles = cover(&b.to_multipolygon(), 14);
        let lo = TileId::containing(14, 12.9, 55.65);
        let hi = TileId::containing(14, 13.1, 55.5);
        let expected = (hi.x - lo.x + 1) * (hi.y - lo.y + 1);
        assert_eq!(tiles.len() as u32, expected);
        assert_eq!(count_cover(&b.to_multipolygon(), 14), expected as u64);
    }

    #[test]
    fn cover_polygon_is_smaller_than_its_bbox() {
        // A thin diagonal triangle covers far fewer tiles than its bounding box.
        let tri = Polygon::new(vec![(12.9, 55.5), (13.1, 55.65), (12.9, 55.52), (12.9, 55.5)].into(), vec![]);
        let shape = MultiPolygon(vec![tri]);
        let bbox: Bbox = "12.9,55.5,13.1,55.65".parse().unwrap();
        let n_poly = cover(&shape, 14).len();
        let n_box = cover(&bbox.to_multipolygon(), 14).len();
        assert!(n_poly > 0 && n_poly < n_box / 2, "{n_poly} vs {n_box}");
        assert_eq!(count_cover(&shape, 14), n_poly as u64);
    }

    #[test]
    fn cover_antimeridian() {
        let b: Bbox = "179.95,-17,-179.95,-16.95".parse().unwrap();
        let tiles = cover(&b.to_multipolygon(), 14);
        let max_x = (1u32 << 14) - 1;
        assert!(tiles.iter().any(|t| t.x == max_x));
        assert!(tiles.iter().any(|t| t.x == 0));
        assert!(tiles.iter().all(|t| t.x == max_x || t.x <= 3 || t.x >= max_x - 3));
    }
}
