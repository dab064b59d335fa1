//! Point regions: `lon,lat@radius` (`13.0,55.6@200m`, `@1.5km`), a circle on the WGS 84
//! ellipsoid. Its tiles are the z14 tiles the circle touches; its records are those whose
//! geodesic distance from the centre is at most the radius (what PostGIS's
//! `ST_DWithin(geom::geography, centre::geography, radius)` says, to the millimetre).

use geo::{Destination, Distance, Geodesic};
use geo_types::{Coord, LineString, MultiPolygon, Point, Polygon};

use mly_contract::tiles::{Bbox, MAX_LAT, TileId};

/// The largest radius a point region may have.
pub const MAX_RADIUS_M: f64 = 50_000.0;
/// Vertices of the polygon that stands for the circle (stored as the run's region, covered).
const VERTICES: usize = 64;

/// Why `lon,lat@radius` is not a point region.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PointError {
    #[error("expected 'lon,lat@radius' with a unit, e.g. 13.0,55.6@200m or 13.0,55.6@1.5km")]
    Syntax,
    #[error("{what} {value:?} is not a number")]
    NotNumber { what: &'static str, value: String },
    #[error("longitude {0} is outside -180..180")]
    Longitude(f64),
    #[error("latitude {0} is outside -85.0511..85.0511 (web-mercator limit)")]
    Latitude(f64),
    #[error("radius {0:?} needs a unit: m or km (e.g. 200m, 1.5km)")]
    NoUnit(String),
    #[error("radius unit {0:?} is not m or km")]
    Unit(String),
    #[error("radius must be greater than 0, got {0}")]
    NotPositive(String),
    #[error("radius {0} m is more than the 50 km a point region may have")]
    TooLarge(f64),
}

/// A circle: every point within `radius_m` metres (geodesic, WGS 84) of (`lon`, `lat`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Circle {
    pub lon: f64,
    pub lat: f64,
    pub radius_m: f64,
}

impl Circle {
    /// Parses `lon,lat@radius` with the radius unit `m` or `km`.
    pub fn parse(text: &str) -> Result<Circle, PointError> {
        let (at, radius) = text.trim().split_once('@').ok_or(PointError::Syntax)?;
        let (lon, lat) = at.split_once(',').ok_or(PointError::Syntax)?;
        let number = |what: &'static str, s: &str| -> Result<f64, PointError> {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| PointError::NotNumber { what, value: s.trim().to_string() })
        };
        let lon = number("longitude", lon)?;
        let lat = number("latitude", lat)?;
        if !(-180.0..=180.0).contains(&lon) {
            return Err(PointError::Longitude(lon));
        }
        if !(-MAX_LAT..=MAX_LAT).contains(&lat) {
            return Err(PointError::Latitude(lat));
        }
        let radius = radius.trim();
        // The unit is the trailing run of letters (`1e3m` is a number, then `m`).
        let (value, unit) = radius.split_at(radius.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
        if unit.is_empty() {
            return Err(PointError::NoUnit(radius.to_string()));
        }
        let scale = match unit.to_ascii_lowercase().as_str() {
            "m" => 1.0,
            "km" => 1000.0,
            _ => return Err(PointError::Unit(unit.to_string())),
        };
        let radius_m = number("radius", value)? * scale;
        if radius_m <= 0.0 {
            return Err(PointError::NotPositive(radius.to_string()));
        }
        if radius_m > MAX_RADIUS_M {
            return Err(PointError::TooLarge(radius_m));
        }
        Ok(Circle { lon, lat, radius_m })
    }

    /// The canonical text of the circle (recognises the same region on resume).
    pub fn key(&self) -> String {
        format!("point:{:.7},{:.7}@{}m", self.lon, self.lat, self.radius_m)
    }

    /// Geodesic distance in metres from the centre.
    pub fn distance_m(&self, lon: f64, lat: f64) -> f64 {
        Geodesic.distance(Point::new(self.lon, self.lat), Point::new(lon, lat))
    }

    /// Whether (`lon`, `lat`) lies in the circle (its rim included).
    pub fn contains(&self, lon: f64, lat: f64) -> bool {
        self.distance_m(lon, lat) <= self.radius_m
    }

    /// Whether the circle reaches into the tile. The point of the tile nearest the centre is
    /// taken in lon/lat (exact enough for a z14 tile), and a metre of slack keeps a tile the rim
    /// grazes: a tile too many costs one request, a tile too few would lose records.
    pub fn touches(&self, tile: TileId) -> bool {
        let b = tile.bounds();
        let lon = if b.west <= self.lon && self.lon <= b.east {
            self.lon
        } else {
            // The nearer edge, measured around the globe (a tile across the antimeridian from
            // the centre is near, not 359° away).
            let gap = |edge: f64| ((edge - self.lon + 540.0).rem_euclid(360.0) - 180.0).abs();
            if gap(b.west) <= gap(b.east) { b.west } else { b.east }
        };
        let lat = self.lat.clamp(b.south, b.north);
        self.distance_m(lon, lat) <= self.radius_m * 1.000_001 + 1.0
    }

    /// A polygon around the circle: its vertices lie outside the circle so that every edge
    /// does too (circumscribed), so the polygon's tile cover holds every tile the circle touches.
    /// Split at the antimeridian when the circle crosses it.
    pub fn polygon(&self) -> MultiPolygon<f64> {
        let out = self.radius_m / (std::f64::consts::PI / VERTICES as f64).cos() * 1.001;
        let centre = Point::new(self.lon, self.lat);
        let mut ring: Vec<Coord<f64>> = (0..VERTICES)
            .map(|i| {
                let bearing = i as f64 * 360.0 / VERTICES as f64;
                let p = Geodesic.destination(centre, bearing, out);
                Coord { x: p.x(), y: p.y().clamp(-MAX_LAT, MAX_LAT) }
            })
            .collect();
        ring.push(ring[0]);
        super::split_antimeridian(Polygon::new(LineString(ring), vec![])).into()
    }

    /// The circle's envelope as bboxes (two across the antimeridian).
    pub fn envelope(&self) -> Vec<Bbox> {
        use geo::BoundingRect;
        self.polygon()
            .0
            .iter()
            .filter_map(|p| p.bounding_rect())
            .filter_map(|r| Bbox::new(r.min().x, r.min().y, r.max().x, r.max().y).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mly_contract::tiles::HARVEST_ZOOM;

    #[test]
    fn parses_and_validates() {
        let c = Circle::parse("13.0,55.6@200m").unwrap();
        assert_eq!(c, Circle { lon: 13.0, lat: 55.6, radius_m: 200.0 });
        assert_eq!(Circle::parse(" 13.0, 55.6 @ 1.5km ").unwrap().radius_m, 1500.0);
        assert_eq!(Circle::parse("13,55.6@50KM").unwrap().radius_m, 50_000.0);
        assert_eq!(Circle::parse("13.0,55.6@200"), Err(PointError::NoUnit("200".into())));
        assert_eq!(Circle::parse("13.0,55.6@200mi"), Err(PointError::Unit("mi".into())));
        assert_eq!(Circle::parse("13.0,55.6@0m"), Err(PointError::NotPositive("0m".into())));
        assert_eq!(Circle::parse("13.0,55.6@-5m"), Err(PointError::NotPositive("-5m".into())));
        assert_eq!(Circle::parse("13.0,55.6@50.001km"), Err(PointError::TooLarge(50_001.0)));
        assert_eq!(Circle::parse("190,55.6@2m"), Err(PointError::Longitude(190.0)));
        assert_eq!(Circle::parse("13,86@2m"), Err(PointError::Latitude(86.0)));
        assert!(matches!(Circle::parse("x,55@2m"), Err(PointError::NotNumber { what: "longitude", .. })));
        assert!(matches!(Circle::parse("13,NaN@2m"), Err(PointError::NotNumber { what: "latitude", .. })));
        assert!(matches!(Circle::parse("13,55@1e999m"), Err(PointError::NotNumber { what: "radius", .. })));
        assert_eq!(Circle::parse("13,55@2e2m").unwrap().radius_m, 200.0);
        assert_eq!(Circle::parse("13,55@infm"), Err(PointError::Unit("infm".into())));
        assert_eq!(Circle::parse("13.0@2m"), Err(PointError::Syntax));
        assert_eq!(Circle::parse("13.0,55.6"), Err(PointError::Syntax));
    }

    #[test]
    fn distances_and_tiles() {
        let c = Circle::parse("13.0,55.6@200m").unwrap();
        assert!(c.contains(13.0, 55.6));
        // 0.0017° of latitude is about 189 m; 0.0019° about 211 m.
        assert!(c.contains(13.0, 55.6017));
        assert!(!c.contains(13.0, 55.6019));
        let tiles: Vec<TileId> =
            crate::cover::cover(&c.polygon(), HARVEST_ZOOM).into_iter().filter(|t| c.touches(*t)).collect();
        assert!(tiles.contains(&TileId::containing(HARVEST_ZOOM, 13.0, 55.6)));
        assert!(!tiles.is_empty() && tiles.len() <= 4, "{tiles:?}");
        // Every point of the rim is in a tile of the cover.
        for i in 0..360 {
            let p = Geodesic.destination(Point::new(c.lon, c.lat), f64::from(i), 199.9);
            assert!(tiles.contains(&TileId::containing(HARVEST_ZOOM, p.x(), p.y())), "bearing {i}");
        }
    }

    #[test]
    fn a_circle_across_the_antimeridian_covers_both_sides() {
        let c = Circle::parse("179.999,-16.8@1km").unwrap();
        let poly = c.polygon();
        assert_eq!(poly.0.len(), 2, "{poly:?}");
        let tiles: Vec<TileId> =
            crate::cover::cover(&poly, HARVEST_ZOOM).into_iter().filter(|t| c.touches(*t)).collect();
        let max_x = (1u32 << HARVEST_ZOOM) - 1;
        assert!(tiles.iter().any(|t| t.x == max_x) && tiles.iter().any(|t| t.x == 0), "{tiles:?}");
        assert!(tiles.len() < 10, "{tiles:?}");
        assert!(c.contains(-179.999, -16.8));
    }
}
