//! Web-mercator tile math: tile ids, validated bounding boxes, lon/lat ↔ tile pixel conversion
//! and the quadtree below a tile. Both sides of the API address tiles this way.

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

use geo_types::{MultiPolygon, Rect, coord};

/// The zoom at which Mapillary serves coverage and map-feature tiles: the unit of fetching.
pub const HARVEST_ZOOM: u8 = 14;
/// The deepest zoom of the enrichment quadtree (the Mapillary FAQ splits bbox searches to z18).
pub const MAX_ENRICH_ZOOM: u8 = 18;
/// The web-mercator latitude limit.
pub const MAX_LAT: f64 = 85.051_128_779_806_59;
/// MVT extent used by every Mapillary tile.
pub const EXTENT: u32 = 4096;

/// Errors of tile math and bbox validation.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TileError {
    #[error("bbox must be four numbers 'west,south,east,north', got {0:?}")]
    BboxSyntax(String),
    #[error("bbox {what} {value} is not a finite number")]
    NotFinite { what: &'static str, value: f64 },
    #[error("bbox longitude {0} is outside -180..180")]
    Longitude(f64),
    #[error("bbox latitude {0} is outside -85.0511..85.0511 (web-mercator limit)")]
    Latitude(f64),
    #[error("bbox south {south} must be less than north {north}")]
    SouthNotBelowNorth { south: f64, north: f64 },
    #[error("bbox west and east are both {0}: the box has no width")]
    ZeroWidth(f64),
    #[error("tile {0} is not a valid z/x/y")]
    BadTile(String),
}

/// A slippy-map tile (XYZ scheme, y down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileId {
    pub z: u8,
    pub x: u32,
    pub y: u32,
}

impl TileId {
    /// A tile id, checked to lie inside the zoom level's grid.
    pub fn new(z: u8, x: u32, y: u32) -> Result<TileId, TileError> {
        let n = 1u64 << z.min(31);
        if z > 30 || u64::from(x) >= n || u64::from(y) >= n {
            return Err(TileError::BadTile(format!("{z}/{x}/{y}")));
        }
        Ok(TileId { z, x, y })
    }

    /// The tile at zoom `z` containing the point; lat is clamped to the mercator limit.
    pub fn containing(z: u8, lon: f64, lat: f64) -> TileId {
        let n = (1u64 << z) as f64;
        let fx = ((lon + 180.0) / 360.0 * n).floor();
        let lat = lat.clamp(-MAX_LAT, MAX_LAT).to_radians();
        let fy = ((1.0 - (lat.tan() + 1.0 / lat.cos()).ln() / PI) / 2.0 * n).floor();
        let max = n - 1.0;
        TileId { z, x: fx.clamp(0.0, max) as u32, y: fy.clamp(0.0, max) as u32 }
    }

    /// Geographic bounds of the tile.
    pub fn bounds(&self) -> Bbox {
        let n = (1u64 << self.z) as f64;
        let lon = |x: f64| x / n * 360.0 - 180.0;
        let lat = |y: f64| (PI * (1.0 - 2.0 * y / n)).sinh().atan().to_degrees();
        Bbox {
            west: lon(self.x as f64),
            south: lat(self.y as f64 + 1.0),
            east: lon(self.x as f64 + 1.0),
            north: lat(self.y as f64),
        }
    }

    /// Converts a tile pixel coordinate (origin top-left, y down) to lon/lat.
    pub fn pixel_to_lonlat(&self, px: f64, py: f64, extent: u32) -> (f64, f64) {
        let n = (1u64 << self.z) as f64;
        let e = extent as f64;
        let fx = (self.x as f64 + px / e) / n;
        let fy = (self.y as f64 + py / e) / n;
        (fx * 360.0 - 180.0, (PI * (1.0 - 2.0 * fy)).sinh().atan().to_degrees())
    }

    /// Converts lon/lat to tile pixel coordinates (may fall outside 0..extent).
    pub fn lonlat_to_pixel(&self, lon: f64, lat: f64, extent: u32) -> (f64, f64) {
        let n = (1u64 << self.z) as f64;
        let e = extent as f64;
        let lat = lat.clamp(-MAX_LAT, MAX_LAT).to_radians();
        let fx = (lon + 180.0) / 360.0 * n;
        let fy = (1.0 - (lat.tan() + 1.0 / lat.cos()).ln() / PI) / 2.0 * n;
        ((fx - self.x as f64) * e, (fy - self.y as f64) * e)
    }

    /// The four children one zoom deeper, in quadtree order (NW, NE, SW, SE).
    pub fn children(&self) -> [TileId; 4] {
        let (z, x, y) = (self.z + 1, self.x * 2, self.y * 2);
        [
            TileId { z, x, y },
            TileId { z, x: x + 1, y },
            TileId { z, x, y: y + 1 },
            TileId { z, x: x + 1, y: y + 1 },
        ]
    }

    /// The parent tile, or `None` at zoom 0.
    pub fn parent(&self) -> Option<TileId> {
        (self.z > 0).then(|| TileId { z: self.z - 1, x: self.x / 2, y: self.y / 2 })
    }

    /// The ancestor (or self) at zoom `z` (`z` ≤ self.z).
    pub fn ancestor_at(&self, z: u8) -> TileId {
        let d = self.z.saturating_sub(z);
        TileId { z: self.z - d, x: self.x >> d, y: self.y >> d }
    }

    /// All descendants at zoom `z` (≥ self.z), row by row.
    pub fn descendants_at(&self, z: u8) -> Vec<TileId> {
        let d = z.saturating_sub(self.z);
        let n = 1u32 << d;
        let mut out = Vec::with_capacity((n * n) as usize);
        for dy in 0..n {
            for dx in 0..n {
                out.push(TileId { z: self.z + d, x: (self.x << d) + dx, y: (self.y << d) + dy });
            }
        }
        out
    }

    /// Whether this tile lies inside (or is) `other`.
    pub fn is_within(&self, other: &TileId) -> bool {
        self.z >= other.z && self.ancestor_at(other.z) == *other
    }
}

impl fmt::Display for TileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.z, self.x, self.y)
    }
}

impl FromStr for TileId {
    type Err = TileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TileError::BadTile(s.to_string());
        let mut it = s.split('/');
        let (Some(z), Some(x), Some(y), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(bad());
        };
        TileId::new(
            z.parse().map_err(|_| bad())?,
            x.parse().map_err(|_| bad())?,
            y.parse().map_err(|_| bad())?,
        )
    }
}

/// A validated geographic bounding box in degrees. `west > east` means it crosses the antimeridian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bbox {
    pub west: f64,
    pub south: f64,
    pub east: f64,
    pub north: f64,
}

impl Bbox {
    /// Validates and builds a bbox; a box with `west > east` wraps across the antimeridian.
    pub fn new(west: f64, south: f64, east: f64, north: f64) -> Result<Bbox, TileError> {
        for (what, v) in [("west", west), ("south", south), ("east", east), ("north", north)] {
            if !v.is_finite() {
                return Err(TileError::NotFinite { what, value: v });
            }
        }
        for lon in [west, east] {
            if !(-180.0..=180.0).contains(&lon) {
                return Err(TileError::Longitude(lon));
            }
        }
        // Four decimals of slack so users can type the commonly quoted 85.0511.
        for lat in [south, north] {
            if lat.abs() > 85.0512 {
                return Err(TileError::Latitude(lat));
            }
        }
        if south >= north {
            return Err(TileError::SouthNotBelowNorth { south, north });
        }
        // 180 and -180 are the same meridian: a box starting at 180 (or ending at -180) does not
        // wrap, and `180,..,-180,..` has no width at all.
        let west = if west == 180.0 && east < 180.0 { -180.0 } else { west };
        let east = if east == -180.0 && west > -180.0 { 180.0 } else { east };
        if west == east {
            return Err(TileError::ZeroWidth(west));
        }
        Ok(Bbox { west, south: south.max(-MAX_LAT), east, north: north.min(MAX_LAT) })
    }

    /// Whether the box wraps across the antimeridian.
    pub fn crosses_antimeridian(&self) -> bool {
        self.west > self.east
    }

    /// The box as one or two boxes that do not cross the antimeridian.
    pub fn split_antimeridian(&self) -> Vec<Bbox> {
        if self.crosses_antimeridian() {
            vec![
                Bbox { west: self.west, south: self.south, east: 180.0, north: self.north },
                Bbox { west: -180.0, south: self.south, east: self.east, north: self.north },
            ]
        } else {
            vec![*self]
        }
    }

    /// Width in degrees (accounting for antimeridian wrap).
    pub fn width(&self) -> f64 {
        if self.crosses_antimeridian() { 360.0 - self.west + self.east } else { self.east - self.west }
    }

    /// Area in square degrees, the unit of the Graph API's bbox cap.
    pub fn area_deg2(&self) -> f64 {
        self.width() * (self.north - self.south)
    }

    /// Whether the point lies in the box (edges inclusive).
    pub fn contains(&self, lon: f64, lat: f64) -> bool {
        let in_lat = lat >= self.south && lat <= self.north;
        let in_lon = if self.crosses_antimeridian() {
            lon >= self.west || lon <= self.east
        } else {
            lon >= self.west && lon <= self.east
        };
        in_lat && in_lon
    }

    /// The box as a polygon (or two, across the antimeridian).
    pub fn to_multipolygon(&self) -> MultiPolygon<f64> {
        MultiPolygon(self.split_antimeridian().iter().map(|b| b.rect().to_polygon()).collect())
    }

    /// The box as a rectangle (west > east across the antimeridian: use `split_antimeridian` first).
    pub fn rect(&self) -> Rect<f64> {
        Rect::new(coord! { x: self.west, y: self.south }, coord! { x: self.east, y: self.north })
    }

    /// `west,south,east,north` with enough digits to round-trip, as the Graph API takes it.
    pub fn to_query(&self) -> String {
        format!("{},{},{},{}", self.west, self.south, self.east, self.north)
    }
}

impl FromStr for Bbox {
    type Err = TileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let nums: Option<Vec<f64>> = parts.iter().map(|p| p.parse::<f64>().ok()).collect();
        match nums.as_deref() {
            Some([w, so, e, n]) => Bbox::new(*w, *so, *e, *n),
            _ => Err(TileError::BboxSyntax(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn zurich_tile_bounds() {
        let b = TileId::new(14, 8574, 5735).unwrap().bounds();
        assert!(close(b.west, 8.3936), "{b:?}");
        assert!(close(b.south, 47.3983), "{b:?}");
        assert!(close(b.east, 8.4155), "{b:?}");
        assert!(close(b.north, 47.4132), "{b:?}");
        assert_eq!(TileId::containing(14, 8.40, 47.40), TileId { z: 14, x: 8574, y: 5735 });
    }

    #[test]
    fn pixel_round_trip() {
        let t = TileId::new(14, 8574, 5735).unwrap();
        let (lon, lat) = t.pixel_to_lonlat(1000.0, 3000.0, EXTENT);
        let (px, py) = t.lonlat_to_pixel(lon, lat, EXTENT);
        assert!((px - 1000.0).abs() < 1e-6 && (py - 3000.0).abs() < 1e-6);
        let (w, n) = t.pixel_to_lonlat(0.0, 0.0, EXTENT);
        assert!(close(w, t.bounds().west) && close(n, t.bounds().north));
    }

    #[test]
    fn quadtree() {
        let t = TileId::new(14, 8574, 5735).unwrap();
        let kids = t.children();
        assert_eq!(kids[0], TileId { z: 15, x: 17148, y: 11470 });
        assert_eq!(kids[3].parent(), Some(t));
        assert_eq!(t.descendants_at(18).len(), 256);
        assert!(t.descendants_at(18).iter().all(|d| d.is_within(&t) && d.ancestor_at(14) == t));
        assert_eq!("14/8574/5735".parse::<TileId>().unwrap(), t);
        assert!("14/99999/1".parse::<TileId>().is_err());
    }

    #[test]
    fn bbox_validation() {
        assert!(matches!("1,95,2,96".parse::<Bbox>(), Err(TileError::Latitude(_))));
        assert!(matches!("1,10,2,5".parse::<Bbox>(), Err(TileError::SouthNotBelowNorth { .. })));
        assert!(matches!("1,2,3".parse::<Bbox>(), Err(TileError::BboxSyntax(_))));
        assert!(matches!("200,1,201,2".parse::<Bbox>(), Err(TileError::Longitude(_))));
        assert!(matches!("NaN,1,2,3".parse::<Bbox>(), Err(TileError::NotFinite { .. })));
        let am: Bbox = "179.9,-17,-179.9,-16.9".parse().unwrap();
        assert!(am.crosses_antimeridian());
        assert!(close(am.width(), 0.2));
        assert!(am.contains(179.95, -16.95) && am.contains(-179.95, -16.95) && !am.contains(0.0, -16.95));
    }
}
