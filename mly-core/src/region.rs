//! Regions: a config region name, a `west,south,east,north` bbox, a point with a radius
//! (`lon,lat@200m`, see [`point`]), or a GeoJSON (Multi)Polygon file (bare geometry, Feature or
//! FeatureCollection), validated and turned into a lon/lat shape.

pub mod point;

use std::path::{Path, PathBuf};

use geo::BoundingRect;
use geo_types::{Coord, Geometry, LineString, MultiPolygon, Polygon};

use crate::cover;
use mly_contract::hash::fnv1a;
use mly_contract::tiles::{Bbox, MAX_LAT, TileError, TileId};
pub use point::{Circle, PointError};

/// GeoJSON files larger than this are refused before parsing.
pub const MAX_GEOJSON_BYTES: u64 = 64 * 1024 * 1024;
/// Region polygons with more vertices than this must be simplified first.
pub const MAX_VERTICES: usize = 50_000;

/// Errors while resolving a REGION argument.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error(
        "region {0:?} is not a configured region name, a bbox 'west,south,east,north', or an existing GeoJSON file"
    )]
    Unknown(String),
    #[error("region {name:?}: {source}")]
    Bbox { name: String, source: TileError },
    #[error("region file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("region {name:?}: {source}")]
    Point { name: String, source: PointError },
}

/// A region to harvest: its shape in lon/lat (EPSG:4326) and its envelope.
#[derive(Debug, Clone)]
pub struct Region {
    /// The name the user gave (config name, bbox text, or file path).
    pub name: String,
    /// The area, as one or more polygons; an antimeridian-crossing bbox becomes two.
    pub shape: MultiPolygon<f64>,
    /// A canonical description used to recognise the same region on resume.
    pub key: String,
    /// A point region's circle: only records inside it are kept (`shape` is a polygon around it).
    pub circle: Option<Circle>,
}

/// A region as the config defines it under a name (`[regions.NAME]`).
#[derive(Debug, Clone, PartialEq)]
pub enum RegionSpec {
    /// `bbox = "west,south,east,north"`.
    Bbox(String),
    /// `geojson = "path/to/file.geojson"`.
    GeoJson(PathBuf),
    /// `point = "lon,lat@radius"`.
    Point(String),
}

impl Region {
    /// Resolves REGION: the named region `named` (the config's definition of `arg`, if it has
    /// one) first, then an existing GeoJSON file, then a point (`lon,lat@radius`), then a bbox.
    pub fn resolve(arg: &str, named: Option<&RegionSpec>) -> Result<Region, RegionError> {
        match named {
            Some(RegionSpec::Bbox(b)) => return Region::from_bbox_text(arg, b),
            Some(RegionSpec::GeoJson(p)) => return Region::from_geojson_file(arg, p),
            Some(RegionSpec::Point(p)) => return Region::from_point_text(arg, p),
            None => {}
        }
        let path = Path::new(arg);
        if path.exists() {
            return Region::from_geojson_file(arg, path);
        }
        if arg.contains('@') {
            return Region::from_point_text(arg, arg);
        }
        if arg.contains(',') {
            return Region::from_bbox_text(arg, arg);
        }
        Err(RegionError::Unknown(arg.to_string()))
    }

    /// A region from bbox text.
    pub fn from_bbox_text(name: &str, text: &str) -> Result<Region, RegionError> {
        let b: Bbox = text.parse().map_err(|source| RegionError::Bbox { name: name.to_string(), source })?;
        Ok(Region::from_bbox(name, b))
    }

    /// A region from a validated bbox.
    pub fn from_bbox(name: &str, b: Bbox) -> Region {
        Region {
            name: name.to_string(),
            shape: b.to_multipolygon(),
            key: format!("bbox:{}", b.to_query()),
            circle: None,
        }
    }

    /// A point region from `lon,lat@radius` text.
    pub fn from_point_text(name: &str, text: &str) -> Result<Region, RegionError> {
        let c =
            Circle::parse(text).map_err(|source| RegionError::Point { name: name.to_string(), source })?;
        Ok(Region { name: name.to_string(), shape: c.polygon(), key: c.key(), circle: Some(c) })
    }

    /// A region from a GeoJSON file.
    pub fn from_geojson_file(name: &str, path: &Path) -> Result<Region, RegionError> {
        let err = |message: String| RegionError::File { path: path.to_path_buf(), message };
        // Capped while reading, not by the file's stated size: /dev/zero or a FIFO states 0.
        let text = crate::io::read_capped(path, MAX_GEOJSON_BYTES).map_err(|e| err(e.to_string()))?;
        let shape = parse_geojson(&text).map_err(err)?;
        let key = format!("geojson:{:016x}", fnv1a(format!("{:?}", shape.0).as_bytes()));
        Ok(Region { name: name.to_string(), shape, key, circle: None })
    }

    /// z14 (or any zoom) tiles intersecting the region's shape (a point region: the tiles its
    /// circle touches).
    pub fn tiles(&self, z: u8) -> Vec<TileId> {
        let mut tiles = cover::cover(&self.shape, z);
        if let Some(c) = &self.circle {
            tiles.retain(|t| c.touches(*t));
        }
        tiles
    }

    /// How many tiles `tiles` would return (without listing them, except for a point region,
    /// whose at most ~5,000 tiles are listed and tested against the circle).
    pub fn tile_count(&self, z: u8) -> u64 {
        match self.circle {
            Some(_) => self.tiles(z).len() as u64,
            None => cover::count_cover(&self.shape, z),
        }
    }

    /// Whether a record at (`lon`, `lat`) belongs to the region's harvest when it lies in one of
    /// the region's tiles: always, except outside a point region's circle.
    pub fn keeps(&self, lon: f64, lat: f64) -> bool {
        self.circle.is_none_or(|c| c.contains(lon, lat))
    }

    /// The region's envelope (of all parts).
    pub fn envelope(&self) -> Option<geo_types::Rect<f64>> {
        self.shape.bounding_rect()
    }

    /// The shape as ISO WKB (for storing the run's region).
    pub fn to_wkb(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Writing WKB into a Vec cannot fail: the only error source is the writer, and Vec writes
        // are infallible.
        let _ = wkb::writer::write_multi_polygon(&mut buf, &self.shape, &Default::default());
        buf
    }
}

/// Parses GeoJSON text into polygons, validating coordinates.
pub fn parse_geojson(text: &str) -> Result<MultiPolygon<f64>, String> {
    use geozero::ToGeo;
    // geozero reads the GeoJSON (a geometry, a Feature, or a FeatureCollection, whose geometries
    // come back as a GeometryCollection); the region's own rules are checked on the result.
    let geom = geozero::geojson::GeoJson(text)
        .to_geo()
        .map_err(|e| format!("is not valid JSON/GeoJSON (check its type, coordinates and nesting): {e}"))?;
    let mut polys = Vec::new();
    collect(geom, &mut polys, 0)?;
    if polys.is_empty() {
        return Err("contains no Polygon or MultiPolygon".into());
    }
    let vertices: usize = polys
        .iter()
        .map(|p| p.exterior().0.len() + p.interiors().iter().map(|r| r.0.len()).sum::<usize>())
        .sum();
    if vertices > MAX_VERTICES {
        return Err(format!(
            "has {vertices} vertices; at most {MAX_VERTICES} are accepted (simplify it, e.g. ogr2ogr -simplify 0.0001)"
        ));
    }
    let mut out = Vec::with_capacity(polys.len());
    for p in polys {
        let exterior = ring(p.exterior())?;
        let interiors = p.interiors().iter().map(ring).collect::<Result<Vec<_>, _>>()?;
        out.extend(split_antimeridian(Polygon::new(exterior, interiors)));
    }
    Ok(MultiPolygon(out))
}

/// The polygons of a region geometry; any other kind of geometry is an error.
fn collect(g: Geometry<f64>, out: &mut Vec<Polygon<f64>>, depth: usize) -> Result<(), String> {
    if depth > 4 {
        return Err("nests geometries too deeply".into());
    }
    match g {
        Geometry::Polygon(p) => out.push(p),
        Geometry::MultiPolygon(mp) => out.extend(mp.0),
        Geometry::GeometryCollection(gc) => {
            for g in gc.0 {
                collect(g, out, depth + 1)?;
            }
        }
        other => {
            let kind = match other {
                Geometry::Point(_) => "Point",
                Geometry::MultiPoint(_) => "MultiPoint",
                Geometry::LineString(_) | Geometry::Line(_) => "LineString",
                Geometry::MultiLineString(_) => "MultiLineString",
                _ => "non-polygon",
            };
            return Err(format!("has a {kind} geometry; a region must be a Polygon or MultiPolygon"));
        }
    }
    Ok(())
}

/// RFC 7946 §3.1.9: a ring edge spanning more than 180° of longitude crosses the antimeridian the
/// short way (drawn from 179.9 to −179.9 it is 0.2° wide, not a world-wide band). Such a polygon
/// is made continuous by shifting its western longitudes by +360°, then cut at 180° into its
/// eastern part and its western part (shifted back by −360°).
fn split_antimeridian(p: Polygon<f64>) -> Vec<Polygon<f64>> {
    use geo::{BooleanOps, MapCoords};
    let crosses = std::iter::once(p.exterior())
        .chain(p.interiors())
        .any(|r| r.lines().any(|l| (l.end.x - l.start.x).abs() > 180.0));
    if !crosses {
        return vec![p];
    }
    let shift = |r: &LineString<f64>| {
        LineString(
            r.0.iter().map(|c| Coord { x: if c.x < 0.0 { c.x + 360.0 } else { c.x }, y: c.y }).collect(),
        )
    };
    let shifted = Polygon::new(shift(p.exterior()), p.interiors().iter().map(shift).collect());
    let east = geo_types::Rect::new(Coord { x: -180.0, y: -90.0 }, Coord { x: 180.0, y: 90.0 }).to_polygon();
    let west = geo_types::Rect::new(Coord { x: 180.0, y: -90.0 }, Coord { x: 540.0, y: 90.0 }).to_polygon();
    let mut out = shifted.intersection(&east).0;
    out.extend(
        shifted.intersection(&west).0.into_iter().map(|q| q.map_coords(|c| Coord { x: c.x - 360.0, y: c.y })),
    );
    out
}

/// A ring checked and closed: every position a finite lon/lat, latitudes clamped to the
/// web-mercator limit, and at least 3 distinct positions.
fn ring(r: &LineString<f64>) -> Result<LineString<f64>, String> {
    let mut out = Vec::with_capacity(r.0.len() + 1);
    for &Coord { x, y } in &r.0 {
        if !x.is_finite() || !y.is_finite() {
            return Err(format!("position [{x}, {y}] is not [lon, lat] numbers"));
        }
        if !(-180.0..=180.0).contains(&x) || !(-90.0..=90.0).contains(&y) {
            return Err(format!("position [{x}, {y}] is outside lon -180..180 / lat -90..90"));
        }
        out.push(Coord { x, y: y.clamp(-MAX_LAT, MAX_LAT) });
    }
    if out.first() != out.last()
        && let Some(first) = out.first().copied()
    {
        out.push(first);
    }
    if out.len() < 4 {
        return Err("has a ring with fewer than 3 distinct positions".into());
    }
    Ok(LineString(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polygon_feature_collection_and_errors() {
        let fc = r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},
            "geometry":{"type":"Polygon","coordinates":[[[12.9,55.5],[13.1,55.65],[12.9,55.52],[12.9,55.5]]]}}]}"#;
        let mp = parse_geojson(fc).unwrap();
        assert_eq!(mp.0.len(), 1);
        assert!(parse_geojson("{").unwrap_err().contains("not valid JSON"));
        assert!(parse_geojson(r#"{"type":"FeatureCollection","features":[]}"#).is_err());
        assert!(parse_geojson(r#"{"type":"Point","coordinates":[1,2]}"#).unwrap_err().contains("Point"));
        assert!(parse_geojson(r#"{"type":"Polygon","coordinates":[[[1,2],[3,4]]]}"#).is_err());
        assert!(
            parse_geojson(r#"{"type":"Polygon","coordinates":[[[1,2],[300,4],[1,5],[1,2]]]}"#)
                .unwrap_err()
                .contains("outside")
        );
        assert!(parse_geojson(r#"{"type":"Polygon","coordinates":[[["a",2],[3,4],[1,5],[1,2]]]}"#).is_err());
    }

    #[test]
    fn a_polygon_across_the_antimeridian_is_split_not_a_world_band() {
        let fiji = r#"{"type":"Polygon","coordinates":[[[179.9,-16.9],[-179.9,-16.9],[-179.9,-16.7],[179.9,-16.7],[179.9,-16.9]]]}"#;
        let mp = parse_geojson(fiji).unwrap();
        assert_eq!(mp.0.len(), 2, "{mp:?}");
        let r = Region { name: "fiji".into(), shape: mp, key: String::new(), circle: None };
        let n = r.tile_count(14);
        // 0.2° x 0.2° at z14 (0.022° per tile): about 10 x 10 tiles, not 163,760.
        assert!((50..=200).contains(&n), "{n} tiles");
        let env = r.envelope().unwrap();
        assert!(env.min().x < -179.0 && env.max().x > 179.0, "{env:?}");
    }

    #[test]
    fn too_many_vertices() {
        let n = MAX_VERTICES + 10;
        let pts: Vec<String> = (0..n)
            .map(|i| {
                let a = i as f64 / n as f64 * std::f64::consts::TAU;
                format!("[{},{}]", 13.0 + 0.01 * a.cos(), 55.6 + 0.01 * a.sin())
            })
            .collect();
        let text = format!(r#"{{"type":"Polygon","coordinates":[[{},{}]]}}"#, pts.join(","), pts[0]);
        assert!(parse_geojson(&text).unwrap_err().contains("vertices"));
    }
}
