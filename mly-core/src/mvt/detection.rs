//! Detection geometries: a base64 MVT with one `mpy-or` layer whose polygons are the detected
//! shape in image-normalised coordinates.

use base64::Engine;
use geo::MapCoords;
use geo_types::{Coord, LineString, MultiPolygon, Polygon};

use super::geometry::{Part, parse_parts};
use geozero::mvt::tile;

use super::layer::layer_extent;
use super::{DETECTION_LAYER, Issue, MvtError, parse_tile};

/// Decodes a detection `geometry` (base64 MVT, layer `mpy-or`, extent 4096) into image-normalised
/// polygons (x,y in 0..1, origin top-left, y down).
pub fn decode_detection(b64: &str) -> Result<MultiPolygon<f64>, MvtError> {
    decode_detection_inner(b64).map_err(MvtError::Detection)
}

/// Scales normalised detection polygons to pixels of an image of width × height.
pub fn to_pixels(shape: &MultiPolygon<f64>, width: u32, height: u32) -> MultiPolygon<f64> {
    let (w, h) = (f64::from(width), f64::from(height));
    shape.map_coords(|c| Coord { x: c.x * w, y: c.y * h })
}

pub(super) fn decode_detection_inner(b64: &str) -> Result<MultiPolygon<f64>, Issue> {
    let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(compact.as_bytes()))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(compact.as_bytes()))
        .map_err(Issue::Base64)?;
    let parsed = parse_tile(&raw)?;
    let layer = parsed.layers.iter().find(|l| l.name == DETECTION_LAYER).ok_or(Issue::NoDetectionLayer)?;
    let extent = layer_extent(layer)?;
    let mut polygons = Vec::new();
    for (i, f) in layer.features.iter().enumerate() {
        let gt = f.r#type.unwrap_or(0);
        if gt != tile::GeomType::Polygon as i32 && gt != tile::GeomType::Unknown as i32 {
            continue;
        }
        let rings = parse_parts(&f.geometry).map_err(|reason| Issue::Geometry {
            layer: layer.name.clone(),
            feature: i,
            reason,
        })?;
        assemble_polygons(&rings, extent, &mut polygons);
    }
    if polygons.is_empty() {
        return Err(Issue::NoPolygon);
    }
    Ok(MultiPolygon(polygons))
}

/// Turns closed MVT rings into polygons: a ring winding like the first ring starts a polygon, a
/// ring winding the other way is a hole. Keying on the first ring (not the spec's fixed
/// orientation) accepts both the v1 and v2 detection variants whatever their winding.
pub(super) fn assemble_polygons(parts: &[Part], extent: f64, out: &mut Vec<Polygon<f64>>) {
    let mut exterior_sign = 0.0f64;
    let mut current: Option<(LineString<f64>, Vec<LineString<f64>>)> = None;
    for part in parts.iter().filter(|p| p.closed) {
        let area = signed_area(&part.points);
        if area == 0.0 {
            continue;
        }
        let mut coords: Vec<Coord<f64>> =
            part.points.iter().map(|&(x, y)| Coord { x: x as f64 / extent, y: y as f64 / extent }).collect();
        if let Some(&first) = coords.first() {
            coords.push(first);
        }
        let ring = LineString(coords);
        if exterior_sign == 0.0 {
            exterior_sign = area.signum();
        }
        if area.signum() == exterior_sign || current.is_none() {
            if let Some((ext, holes)) = current.take() {
                out.push(Polygon::new(ext, holes));
            }
            current = Some((ring, Vec::new()));
        } else if let Some((_, holes)) = current.as_mut() {
            holes.push(ring);
        }
    }
    if let Some((ext, holes)) = current {
        out.push(Polygon::new(ext, holes));
    }
}

/// Shoelace sum (twice the signed area) in integer tile space; f64 avoids i64 overflow on hostile input.
pub(super) fn signed_area(points: &[(i64, i64)]) -> f64 {
    let n = points.len();
    if n < 3 {
        return 0.0;
    }
    let mut sum = 0.0;
    for i in 0..n {
        let (x0, y0) = points[i];
        let (x1, y1) = points[(i + 1) % n];
        sum += x0 as f64 * y1 as f64 - x1 as f64 * y0 as f64;
    }
    sum
}
