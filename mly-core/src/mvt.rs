//! Decoding of Mapillary vector tiles and detection geometries.
//!
//! Protobuf parsing is geozero's prost-generated `Tile`; geometry commands and properties are
//! interpreted here so that hostile or odd input (old string-typed tiles, huge counts, truncated
//! streams) yields an error or a skipped feature, never a panic or an unbounded allocation.

use std::io::Read;

use base64::Engine;
use geo::MapCoords;
use geo_types::{Coord, LineString, MultiLineString, MultiPolygon, Polygon};
use geozero::mvt::{Message, Tile, tile};

use crate::model::{DecodedTile, ImageId, MapFeatureId, TileFeature, TileImage, TileSequence};
use mly_contract::tiles::{EXTENT, TileId};
use mly_contract::{FeatureKind, Tileset};

/// Upper bound for a gzip-decompressed tile; real dense z14 tiles are ~10 MB compressed.
pub const MAX_DECOMPRESSED: u64 = 256 * 1024 * 1024;

/// Layer name of the base64 MVT inside a detection's `geometry`.
const DETECTION_LAYER: &str = "mpy-or";

/// Errors of tile decoding.
#[derive(Debug, thiserror::Error)]
pub enum MvtError {
    /// A coverage or map-feature tile could not be decoded.
    #[error("while decoding {tileset} tile {tile}: {issue}")]
    Tile { tileset: Tileset, tile: TileId, issue: Issue },
    /// A detection `geometry` string could not be decoded.
    #[error("while decoding a detection geometry: {0}")]
    Detection(Issue),
}

/// What exactly was wrong with the bytes (wrapped in [`MvtError`] with the tile's name).
#[derive(Debug, thiserror::Error)]
pub enum Issue {
    /// The gzip stream is corrupt.
    #[error("gzip decompression failed: {0}")]
    Gzip(std::io::Error),
    /// Decompression would exceed [`MAX_DECOMPRESSED`].
    #[error("gzip content exceeds the {limit} byte limit")]
    TooLarge { limit: u64 },
    /// The bytes are not a valid vector-tile protobuf.
    #[error("not a vector tile protobuf: {0}")]
    Protobuf(String),
    /// A layer declares extent 0, so no coordinate can be scaled.
    #[error("layer {layer:?} has extent 0")]
    ZeroExtent { layer: String },
    /// A feature's geometry command stream is malformed.
    #[error("layer {layer:?} feature #{feature}: malformed geometry: {reason}")]
    Geometry { layer: String, feature: usize, reason: &'static str },
    /// The detection string is not base64.
    #[error("invalid base64: {0}")]
    Base64(base64::DecodeError),
    /// The detection tile has no `mpy-or` layer.
    #[error("no layer named {DETECTION_LAYER:?}")]
    NoDetectionLayer,
    /// The detection tile holds no polygon with area.
    #[error("no polygon with a non-zero area")]
    NoPolygon,
}

/// Per-layer counts of one decode, for tests, benchmarks and diagnostics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Layer name as in the tile.
    pub name: String,
    /// Features in the layer.
    pub features: usize,
    /// Features turned into records.
    pub decoded: usize,
    /// Features skipped (no usable id, wrong geometry type, empty geometry); 0 for ignored layers.
    pub skipped: usize,
    /// Whether the layer was ignored (`overview`, unknown names, layers of the other tileset kind).
    pub ignored: bool,
    /// Points outside the tile (render-buffer copies of a neighbour's records), left out.
    pub buffered: usize,
}

/// Decodes one Mapillary vector tile of `tileset` at `tile` into records with lon/lat positions.
pub fn decode_tile(tileset: Tileset, tile: TileId, bytes: &[u8]) -> Result<DecodedTile, MvtError> {
    decode_tile_with_stats(tileset, tile, bytes).map(|(decoded, _)| decoded)
}

/// Like [`decode_tile`], also returning per-layer feature counts.
pub fn decode_tile_with_stats(
    tileset: Tileset,
    tile: TileId,
    bytes: &[u8],
) -> Result<(DecodedTile, Vec<LayerStats>), MvtError> {
    let err = |issue| MvtError::Tile { tileset, tile, issue };
    let parsed = parse_tile(bytes).map_err(err)?;
    let mut out = DecodedTile::default();
    let mut stats = Vec::with_capacity(parsed.layers.len());
    for layer in &parsed.layers {
        let st = decode_layer(tileset, tile, layer, &mut out).map_err(err)?;
        if st.skipped > 0 {
            tracing::warn!(
                tileset = tileset.name(),
                tile = %tile,
                layer = %st.name,
                skipped = st.skipped,
                features = st.features,
                "skipped tile features without a usable id or geometry"
            );
        }
        stats.push(st);
    }
    Ok((out, stats))
}

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

fn decode_detection_inner(b64: &str) -> Result<MultiPolygon<f64>, Issue> {
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
fn assemble_polygons(parts: &[Part], extent: f64, out: &mut Vec<Polygon<f64>>) {
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
fn signed_area(points: &[(i64, i64)]) -> f64 {
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

/// Gunzips if needed and parses the protobuf; empty input is an empty tile.
fn parse_tile(bytes: &[u8]) -> Result<Tile, Issue> {
    if bytes.is_empty() {
        return Ok(Tile::default());
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut buf = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .take(MAX_DECOMPRESSED + 1)
            .read_to_end(&mut buf)
            .map_err(Issue::Gzip)?;
        if buf.len() as u64 > MAX_DECOMPRESSED {
            return Err(Issue::TooLarge { limit: MAX_DECOMPRESSED });
        }
        return Tile::decode(buf.as_slice()).map_err(|e| Issue::Protobuf(e.to_string()));
    }
    Tile::decode(bytes).map_err(|e| Issue::Protobuf(e.to_string()))
}

fn layer_extent(layer: &tile::Layer) -> Result<f64, Issue> {
    match layer.extent.unwrap_or(EXTENT) {
        0 => Err(Issue::ZeroExtent { layer: layer.name.clone() }),
        e => Ok(f64::from(e)),
    }
}

/// What a known layer turns into for this tileset.
#[derive(Clone, Copy)]
enum LayerKind {
    Image,
    Sequence,
    Feature(FeatureKind),
}

fn layer_kind(tileset: Tileset, name: &str) -> Option<LayerKind> {
    match (tileset.is_coverage(), name) {
        (true, "image") => Some(LayerKind::Image),
        (true, "sequence") => Some(LayerKind::Sequence),
        (false, "point") => Some(LayerKind::Feature(FeatureKind::Point)),
        (false, "traffic_sign") => Some(LayerKind::Feature(FeatureKind::TrafficSign)),
        _ => None,
    }
}

/// The property keys of the real schema; anything else is ignored.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Id,
    CapturedAt,
    CompassAngle,
    SequenceId,
    IsPano,
    OrganizationId,
    CreatorId,
    ImageId,
    Value,
    FirstSeenAt,
    LastSeenAt,
    Other,
}

impl Key {
    fn from_name(s: &str) -> Key {
        match s {
            "id" => Key::Id,
            "captured_at" => Key::CapturedAt,
            "compass_angle" => Key::CompassAngle,
            "sequence_id" => Key::SequenceId,
            "is_pano" => Key::IsPano,
            "organization_id" => Key::OrganizationId,
            "creator_id" => Key::CreatorId,
            "image_id" => Key::ImageId,
            "value" => Key::Value,
            "first_seen_at" => Key::FirstSeenAt,
            "last_seen_at" => Key::LastSeenAt,
            _ => Key::Other,
        }
    }
}

/// A property value normalised once per layer; `""` (old pre-launch tiles) is `Empty`.
#[derive(Clone, Copy)]
enum Val<'a> {
    Empty,
    Str(&'a str),
    Int(i64),
    /// A uint beyond i64: never wrapped into a negative id.
    BigUint(u64),
    Float(f64),
    Bool(bool),
}

impl<'a> Val<'a> {
    fn from_value(v: &'a tile::Value) -> Val<'a> {
        if let Some(s) = v.string_value.as_deref() {
            let s = s.trim();
            return if s.is_empty() { Val::Empty } else { Val::Str(s) };
        }
        if let Some(i) = v.int_value.or(v.sint_value) {
            return Val::Int(i);
        }
        if let Some(u) = v.uint_value {
            return i64::try_from(u).map_or(Val::BigUint(u), Val::Int);
        }
        if let Some(d) = v.double_value {
            return Val::Float(d);
        }
        if let Some(f) = v.float_value {
            return Val::Float(f64::from(f));
        }
        if let Some(b) = v.bool_value {
            return Val::Bool(b);
        }
        Val::Empty
    }

    /// Exact integers only (ids): floats are refused so an id never passes through f64.
    fn id(self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(i),
            Val::Str(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// Integers such as ms timestamps; an integral float within f64's exact range is accepted.
    fn int(self) -> Option<i64> {
        match self {
            Val::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => {
                Some(f as i64)
            }
            Val::Str(s) => s.parse().ok().or_else(|| Val::Float(s.parse().ok()?).int()),
            other => other.id(),
        }
    }

    fn float(self) -> Option<f64> {
        match self {
            Val::Float(f) if f.is_finite() => Some(f),
            Val::Int(i) => Some(i as f64),
            Val::Str(s) => s.parse::<f64>().ok().filter(|f| f.is_finite()),
            _ => None,
        }
    }

    fn bool(self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(b),
            Val::Int(0) => Some(false),
            Val::Int(1) => Some(true),
            Val::Str(s) => match s {
                "true" | "True" | "TRUE" | "1" => Some(true),
                "false" | "False" | "FALSE" | "0" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    fn string(self) -> Option<String> {
        match self {
            Val::Str(s) => Some(s.to_owned()),
            Val::Int(i) => Some(i.to_string()),
            Val::BigUint(u) => Some(u.to_string()),
            _ => None,
        }
    }
}

/// The properties of one feature, by key (last occurrence wins).
#[derive(Default)]
struct Props<'a> {
    vals: [Option<Val<'a>>; 11],
}

impl<'a> Props<'a> {
    fn get(&self, k: Key) -> Val<'a> {
        let idx = k as usize;
        self.vals.get(idx).copied().flatten().unwrap_or(Val::Empty)
    }
}

fn read_props<'a>(tags: &[u32], keys: &[Key], vals: &[Val<'a>]) -> Props<'a> {
    let mut p = Props::default();
    // A dangling odd tag or an out-of-range index is ignored: properties are best-effort, only a
    // missing id makes the feature unusable.
    for pair in tags.chunks_exact(2) {
        let (Some(&k), Some(&v)) = (keys.get(pair[0] as usize), vals.get(pair[1] as usize)) else {
            continue;
        };
        if let Some(slot) = p.vals.get_mut(k as usize) {
            *slot = Some(v);
        }
    }
    p
}

fn decode_layer(
    tileset: Tileset,
    tile_id: TileId,
    layer: &tile::Layer,
    out: &mut DecodedTile,
) -> Result<LayerStats, Issue> {
    let mut st =
        LayerStats { name: layer.name.clone(), features: layer.features.len(), ..Default::default() };
    let Some(kind) = layer_kind(tileset, &layer.name) else {
        st.ignored = true;
        return Ok(st);
    };
    let extent = layer.extent.unwrap_or(EXTENT);
    if extent == 0 {
        return Err(Issue::ZeroExtent { layer: layer.name.clone() });
    }
    let keys: Vec<Key> = layer.keys.iter().map(|k| Key::from_name(k)).collect();
    let vals: Vec<Val<'_>> = layer.values.iter().map(Val::from_value).collect();
    let to_lonlat = |(x, y): (i64, i64)| tile_id.pixel_to_lonlat(x as f64, y as f64, extent);
    let geom_err = |feature, reason| Issue::Geometry { layer: layer.name.clone(), feature, reason };
    match kind {
        LayerKind::Image => out.images.reserve(layer.features.len()),
        LayerKind::Sequence => out.sequences.reserve(layer.features.len()),
        LayerKind::Feature(_) => out.features.reserve(layer.features.len()),
    }

    for (i, f) in layer.features.iter().enumerate() {
        let gt = f.r#type.unwrap_or(0);
        let props = read_props(&f.tags, &keys, &vals);
        let ok = match kind {
            LayerKind::Image | LayerKind::Feature(_) => {
                if gt != tile::GeomType::Point as i32 && gt != tile::GeomType::Unknown as i32 {
                    false
                } else {
                    // A multi-point would be odd here; its first point is the record's position.
                    match first_point(&f.geometry).map_err(|r| geom_err(i, r))? {
                        None => false,
                        Some(px) => match placement(px, extent) {
                            Placement::Outside => {
                                // A render-buffer copy (§13.5): the record belongs to the tile
                                // that contains it, which lists it too.
                                st.buffered += 1;
                                continue;
                            }
                            place => {
                                let (lon, lat) = to_lonlat(px);
                                let pushed = push_point(kind, &props, lon, lat, out);
                                if pushed && place == Placement::FarEdge {
                                    let id = match kind {
                                        LayerKind::Feature(_) => out.features.last().map(|f| f.id.0),
                                        _ => out.images.last().map(|i| i.id.0),
                                    };
                                    out.far_edge.extend(id);
                                }
                                pushed
                            }
                        },
                    }
                }
            }
            LayerKind::Sequence => {
                if gt != tile::GeomType::Linestring as i32 && gt != tile::GeomType::Unknown as i32 {
                    false
                } else {
                    match props.get(Key::Id).string() {
                        None => false,
                        Some(id) => {
                            let parts = parse_parts(&f.geometry).map_err(|r| geom_err(i, r))?;
                            let lines: Vec<LineString<f64>> = parts
                                .iter()
                                .filter(|p| p.points.len() >= 2)
                                .map(|p| {
                                    LineString(
                                        p.points
                                            .iter()
                                            .map(|&px| {
                                                let (x, y) = to_lonlat(px);
                                                Coord { x, y }
                                            })
                                            .collect(),
                                    )
                                })
                                .collect();
                            if lines.is_empty() {
                                false
                            } else {
                                out.sequences.push(TileSequence {
                                    id,
                                    image_id: props.get(Key::ImageId).id().map(ImageId),
                                    captured_at_ms: props.get(Key::CapturedAt).int(),
                                    is_pano: props.get(Key::IsPano).bool(),
                                    organization_id: props.get(Key::OrganizationId).id(),
                                    creator_id: props.get(Key::CreatorId).id(),
                                    geom: MultiLineString(lines),
                                });
                                true
                            }
                        }
                    }
                }
            }
        };
        if ok {
            st.decoded += 1;
        } else {
            st.skipped += 1;
        }
    }
    Ok(st)
}

/// Where a point lies relative to its tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// In [0, extent) on both axes: the tile's own record.
    Inside,
    /// On the east or south edge (coordinate == extent): also the neighbour's first pixel, so the
    /// neighbour may list the record as its own.
    FarEdge,
    /// Beyond the edge: a render-buffer copy of a neighbour's record.
    Outside,
}

fn placement((x, y): (i64, i64), extent: u32) -> Placement {
    let e = i64::from(extent);
    if x < 0 || y < 0 || x > e || y > e {
        Placement::Outside
    } else if x == e || y == e {
        Placement::FarEdge
    } else {
        Placement::Inside
    }
}

/// Pushes an image or map feature; false when the id is unusable.
fn push_point(kind: LayerKind, props: &Props<'_>, lon: f64, lat: f64, out: &mut DecodedTile) -> bool {
    let Some(id) = props.get(Key::Id).id() else {
        return false;
    };
    match kind {
        LayerKind::Image => out.images.push(TileImage {
            id: ImageId(id),
            lon,
            lat,
            captured_at_ms: props.get(Key::CapturedAt).int(),
            compass_angle: props.get(Key::CompassAngle).float(),
            sequence_id: props.get(Key::SequenceId).string(),
            is_pano: props.get(Key::IsPano).bool(),
            organization_id: props.get(Key::OrganizationId).id(),
            creator_id: props.get(Key::CreatorId).id(),
        }),
        LayerKind::Feature(fk) => out.features.push(TileFeature {
            id: MapFeatureId(id),
            kind: fk,
            lon,
            lat,
            value: props.get(Key::Value).string(),
            first_seen_at_ms: props.get(Key::FirstSeenAt).int(),
            last_seen_at_ms: props.get(Key::LastSeenAt).int(),
        }),
        LayerKind::Sequence => return false,
    }
    true
}

const CMD_MOVE_TO: u32 = 1;
const CMD_LINE_TO: u32 = 2;
const CMD_CLOSE_PATH: u32 = 7;

fn zigzag(v: u32) -> i64 {
    i64::from((v >> 1) as i32 ^ -((v & 1) as i32))
}

/// One MoveTo-started run of vertices (line part or ring), in tile pixels.
#[derive(Debug, Default, PartialEq)]
struct Part {
    points: Vec<(i64, i64)>,
    closed: bool,
}

/// Walks a command stream, checking every count against the remaining input before touching it.
fn walk(geom: &[u32], mut on: impl FnMut(u32, (i64, i64))) -> Result<(), &'static str> {
    let (mut x, mut y) = (0i64, 0i64);
    let mut i = 0usize;
    let mut started = false;
    while let Some(&cmd) = geom.get(i) {
        i += 1;
        let (id, count) = (cmd & 0x7, (cmd >> 3) as usize);
        match id {
            CMD_MOVE_TO | CMD_LINE_TO => {
                if id == CMD_LINE_TO && !started {
                    return Err("LineTo before any MoveTo");
                }
                if count == 0 {
                    return Err("MoveTo/LineTo with count 0");
                }
                let params = geom.get(i..).unwrap_or(&[]);
                if count > params.len() / 2 {
                    return Err("command count exceeds the remaining parameters");
                }
                for pair in params[..count * 2].chunks_exact(2) {
                    // checked: thousands of extreme deltas could otherwise overflow i64.
                    x = x.checked_add(zigzag(pair[0])).ok_or("coordinate overflow")?;
                    y = y.checked_add(zigzag(pair[1])).ok_or("coordinate overflow")?;
                    on(id, (x, y));
                }
                i += count * 2;
                started = true;
            }
            CMD_CLOSE_PATH => {
                if !started {
                    return Err("ClosePath before any MoveTo");
                }
                if count != 1 {
                    return Err("ClosePath with count other than 1");
                }
                on(id, (x, y));
            }
            _ => return Err("unknown command id"),
        }
    }
    Ok(())
}

/// The first MoveTo point, after validating the whole stream; `None` for an empty geometry.
fn first_point(geom: &[u32]) -> Result<Option<(i64, i64)>, &'static str> {
    let mut first = None;
    walk(geom, |id, p| {
        if id == CMD_MOVE_TO && first.is_none() {
            first = Some(p);
        }
    })?;
    Ok(first)
}

/// Splits a line or polygon stream into parts at each MoveTo.
fn parse_parts(geom: &[u32]) -> Result<Vec<Part>, &'static str> {
    let mut parts: Vec<Part> = Vec::new();
    walk(geom, |id, p| match id {
        CMD_MOVE_TO => parts.push(Part { points: vec![p], closed: false }),
        CMD_LINE_TO => {
            if let Some(part) = parts.last_mut() {
                part.points.push(p);
            }
        }
        _ => {
            if let Some(part) = parts.last_mut() {
                part.closed = true;
            }
        }
    })?;
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS_SAMPLE: &str =
        "GjgKBm1weS1vchIYEgIAABgDIhAJnC3uFxroAwAA7AbnAwAPGgR0eXBlIgkKB3BvbHlnb24ogCB4AQ==";

    fn zz(v: i64) -> u32 {
        ((v << 1) ^ (v >> 63)) as u32
    }

    fn cmd(id: u32, count: u32) -> u32 {
        id | (count << 3)
    }

    fn value_int(i: i64) -> tile::Value {
        tile::Value { int_value: Some(i), ..Default::default() }
    }

    fn value_str(s: &str) -> tile::Value {
        tile::Value { string_value: Some(s.into()), ..Default::default() }
    }

    fn point_feature(tags: Vec<u32>, x: i64, y: i64) -> tile::Feature {
        tile::Feature {
            id: None,
            tags,
            r#type: Some(tile::GeomType::Point as i32),
            geometry: vec![cmd(1, 1), zz(x), zz(y)],
        }
    }

    fn layer(
        name: &str,
        keys: &[&str],
        values: Vec<tile::Value>,
        features: Vec<tile::Feature>,
    ) -> tile::Layer {
        tile::Layer {
            version: 2,
            name: name.into(),
            features,
            keys: keys.iter().map(|k| k.to_string()).collect(),
            values,
            extent: Some(4096),
        }
    }

    fn encode(layers: Vec<tile::Layer>) -> Vec<u8> {
        Tile { layers }.encode_to_vec()
    }

    const T: TileId = TileId { z: 14, x: 8574, y: 5735 };

    #[test]
    fn zigzag_roundtrip() {
        for v in [0i64, 1, -1, 2047, -2048, i32::MAX as i64, i32::MIN as i64] {
            assert_eq!(zigzag(zz(v)), v);
        }
    }

    #[test]
    fn empty_input_is_empty_tile() {
        let d = decode_tile(Tileset::Public, T, &[]).unwrap();
        assert_eq!(d, DecodedTile::default());
    }

    #[test]
    fn junk_is_an_error_naming_the_tile() {
        let e = decode_tile(Tileset::Public, T, b"not a vector tile at all").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("while decoding mly1_public tile 14/8574/5735"), "{msg}");
    }

    #[test]
    fn render_buffer_copies_are_left_out_and_far_edge_records_are_marked() {
        let keys = ["id"];
        let values: Vec<tile::Value> = (1..=7).map(value_int).collect();
        let feats = vec![
            point_feature(vec![0, 0], 0, 0), // id 1: inside (the first pixel is the tile's)
            point_feature(vec![0, 1], 4095, 4095), // id 2: inside
            point_feature(vec![0, 2], 4096, 100), // id 3: on the east edge
            point_feature(vec![0, 3], 100, 4096), // id 4: on the south edge
            point_feature(vec![0, 4], -1, 100), // id 5: a copy from the west neighbour
            point_feature(vec![0, 5], 4097, 4096), // id 6: a copy from the east neighbour
            point_feature(vec![0, 6], 2000, -64), // id 7: a copy from the north neighbour
        ];
        for (ts, name) in [(Tileset::Public, "image"), (Tileset::FeaturePoint, "point")] {
            let bytes = encode(vec![layer(name, &keys, values.clone(), feats.clone())]);
            let (d, st) = decode_tile_with_stats(ts, T, &bytes).unwrap();
            assert_eq!((st[0].buffered, st[0].skipped, st[0].decoded), (3, 0, 4), "{ts}");
            let ids: Vec<i64> = match ts {
                Tileset::Public => d.images.iter().map(|i| i.id.0).collect(),
                _ => d.features.iter().map(|f| f.id.0).collect(),
            };
            assert_eq!(ids, [1, 2, 3, 4], "{ts}");
            assert_eq!(d.far_edge, [3, 4], "{ts}");
        }
        assert_eq!(placement((4096, 4096), 4096), Placement::FarEdge);
        assert_eq!(placement((0, 4095), 4096), Placement::Inside);
        assert_eq!(placement((0, 4097), 4096), Placement::Outside);
    }

    #[test]
    fn int_variants_strings_and_absent_keys() {
        let keys = ["id", "captured_at", "compass_angle", "is_pano", "organization_id", "sequence_id"];
        let values = vec![
            tile::Value { uint_value: Some(42), ..Default::default() }, // 0 id as uint
            tile::Value { sint_value: Some(0), ..Default::default() },  // 1 captured_at 0
            tile::Value { float_value: Some(90.5), ..Default::default() }, // 2
            tile::Value { bool_value: Some(true), ..Default::default() }, // 3
            value_str(""),                                              // 4
            value_str("seq"),                                           // 5
            value_str("9007199254740993"),                              // 6 id beyond f64 exactness
            value_int(7),                                               // 7
            tile::Value { uint_value: Some(u64::MAX), ..Default::default() }, // 8
            value_str("12.25"),                                         // 9
        ];
        let feats = vec![
            point_feature(vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5], 2048, 2048),
            point_feature(vec![0, 6, 2, 9, 4, 7], 0, 0),
            point_feature(vec![0, 8], 10, 10), // id beyond i64: skipped
            point_feature(vec![0, 4], 10, 10), // id "": skipped
            point_feature(vec![1, 1], 10, 10), // no id: skipped
        ];
        let bytes = encode(vec![layer("image", &keys, values, feats)]);
        let (d, st) = decode_tile_with_stats(Tileset::Public, T, &bytes).unwrap();
        assert_eq!(st[0].features, 5);
        assert_eq!(st[0].skipped, 3);
        assert_eq!(d.images.len(), 2);
        let a = &d.images[0];
        assert_eq!(a.id, ImageId(42));
        assert_eq!(a.captured_at_ms, Some(0));
        assert_eq!(a.compass_angle, Some(90.5));
        assert_eq!(a.is_pano, Some(true));
        assert_eq!(a.organization_id, None);
        assert_eq!(a.sequence_id.as_deref(), Some("seq"));
        let b = &d.images[1];
        assert_eq!(b.id, ImageId(9_007_199_254_740_993));
        assert_eq!(b.compass_angle, Some(12.25));
        assert_eq!(b.organization_id, Some(7));
        assert_eq!(b.captured_at_ms, None);
        let c = T.bounds();
        assert!((b.lon - c.west).abs() < 1e-12 && (b.lat - c.north).abs() < 1e-12);
    }

    #[test]
    fn multipart_sequence_and_layer_order() {
        let seq = tile::Feature {
            id: Some(0),
            tags: vec![0, 0, 1, 1],
            r#type: Some(tile::GeomType::Linestring as i32),
            geometry: vec![
                cmd(1, 1),
                zz(0),
                zz(0),
                cmd(2, 2),
                zz(10),
                zz(0),
                zz(0),
                zz(10),
                cmd(1, 1),
                zz(100),
                zz(100),
                cmd(2, 1),
                zz(-5000),
                zz(5000),
            ],
        };
        let lone = tile::Feature {
            id: Some(1),
            tags: vec![0, 2],
            r#type: Some(tile::GeomType::Linestring as i32),
            geometry: vec![cmd(1, 1), zz(3), zz(3)],
        };
        let seq_layer = layer(
            "sequence",
            &["id", "image_id"],
            vec![value_str("abc"), value_int(5), value_str("lonely")],
            vec![seq, lone],
        );
        let img_layer = layer("image", &["id"], vec![value_int(5)], vec![point_feature(vec![0, 0], 1, 1)]);
        let overview = layer("overview", &["id"], vec![value_int(9)], vec![point_feature(vec![0, 0], 1, 1)]);
        let bytes = encode(vec![overview, seq_layer, img_layer]);
        let (d, st) = decode_tile_with_stats(Tileset::ComputedPublic, T, &bytes).unwrap();
        assert!(st[0].ignored);
        assert_eq!(d.images.len(), 1);
        assert_eq!(d.sequences.len(), 1);
        assert_eq!(st[1].skipped, 1, "a single-vertex line is no sequence");
        let s = &d.sequences[0];
        assert_eq!(s.id, "abc");
        assert_eq!(s.image_id, Some(ImageId(5)));
        assert_eq!(s.geom.0.len(), 2);
        assert_eq!(s.geom.0[0].0.len(), 3);
        // The second part leaves the tile (buffer) westward: tolerated, and lies west of the tile.
        assert!(s.geom.0[1].0[1].x < T.bounds().west);
    }

    #[test]
    fn feature_tilesets_use_their_layers() {
        let keys = ["id", "value", "first_seen_at", "last_seen_at"];
        let values =
            vec![value_int(481978503020355), value_str("object--street-light"), value_int(1422984049000)];
        let pt =
            layer("point", &keys, values.clone(), vec![point_feature(vec![0, 0, 1, 1, 2, 2, 3, 2], 5, 5)]);
        let ts = layer("traffic_sign", &keys, values, vec![point_feature(vec![0, 0], 5, 5)]);
        let img = layer("image", &["id"], vec![value_int(1)], vec![point_feature(vec![0, 0], 5, 5)]);
        let bytes = encode(vec![pt, ts, img]);
        let d = decode_tile(Tileset::FeaturePoint, T, &bytes).unwrap();
        assert!(d.images.is_empty());
        assert_eq!(d.features.len(), 2);
        assert_eq!(d.features[0].kind, FeatureKind::Point);
        assert_eq!(d.features[0].id, MapFeatureId(481978503020355));
        assert_eq!(d.features[0].value.as_deref(), Some("object--street-light"));
        assert_eq!(d.features[0].last_seen_at_ms, Some(1422984049000));
        assert_eq!(d.features[1].kind, FeatureKind::TrafficSign);
    }

    #[test]
    fn malformed_command_streams_are_errors() {
        let cases: Vec<Vec<u32>> = vec![
            vec![cmd(1, 1), zz(1)],           // truncated params
            vec![cmd(1, 1 << 28), 0, 0],      // hostile count
            vec![cmd(2, 1), 0, 0],            // LineTo first
            vec![cmd(7, 1)],                  // ClosePath first
            vec![cmd(3, 1), 0, 0],            // unknown command
            vec![cmd(1, 0)],                  // zero count
            vec![cmd(1, 1), 0, 0, cmd(7, 2)], // ClosePath count 2
            vec![u32::MAX],                   // garbage
        ];
        for g in cases {
            let f = tile::Feature { id: None, tags: vec![0, 0], r#type: Some(1), geometry: g.clone() };
            let bytes = encode(vec![layer("image", &["id"], vec![value_int(1)], vec![f])]);
            let e = decode_tile(Tileset::Public, T, &bytes);
            assert!(matches!(e, Err(MvtError::Tile { issue: Issue::Geometry { .. }, .. })), "{g:?}: {e:?}");
        }
    }

    #[test]
    fn gzip_input_is_decompressed() {
        use std::io::Write;
        let bytes =
            encode(vec![layer("image", &["id"], vec![value_int(3)], vec![point_feature(vec![0, 0], 1, 1)])]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        let gz = gz.finish().unwrap();
        let d = decode_tile(Tileset::Public, T, &gz).unwrap();
        assert_eq!(d.images[0].id, ImageId(3));
        assert!(decode_tile(Tileset::Public, T, &gz[..gz.len() / 2]).is_err());
    }

    #[test]
    fn docs_sample_detection() {
        let mp = decode_detection(DOCS_SAMPLE).unwrap();
        assert_eq!(mp.0.len(), 1);
        let ext = mp.0[0].exterior();
        assert!(ext.0.len() >= 4);
        for c in ext.coords() {
            assert!((0.0..=1.0).contains(&c.x) && (0.0..=1.0).contains(&c.y), "{c:?}");
        }
        // The first vertex of the docs sample is (2894, 1527) in a 4096 extent.
        assert!((ext.0[0].x - 2894.0 / 4096.0).abs() < 1e-12, "{:?}", ext.0[0]);
        let px = to_pixels(&mp, 4096, 2048);
        assert!((px.0[0].exterior().0[0].x - 2894.0).abs() < 1e-9);
        assert!((px.0[0].exterior().0[0].y - 1527.0 / 2.0).abs() < 1e-9);
    }

    #[test]
    fn polygon_holes_follow_the_first_ring_winding() {
        // Outer square clockwise in y-down tile space (positive area), inner counter-clockwise.
        let g = vec![
            cmd(1, 1),
            zz(0),
            zz(0),
            cmd(2, 3),
            zz(100),
            zz(0),
            zz(0),
            zz(100),
            zz(-100),
            zz(0),
            cmd(7, 1),
            cmd(1, 1),
            zz(10),
            zz(-90),
            cmd(2, 3),
            zz(0),
            zz(10),
            zz(10),
            zz(0),
            zz(0),
            zz(-10),
            cmd(7, 1),
        ];
        let f = tile::Feature { id: Some(1), tags: vec![], r#type: Some(3), geometry: g };
        let bytes = encode(vec![layer("mpy-or", &[], vec![], vec![f])]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let mp = decode_detection(&b64).unwrap();
        assert_eq!(mp.0.len(), 1);
        assert_eq!(mp.0[0].interiors().len(), 1);
    }

    #[test]
    fn detection_errors() {
        assert!(matches!(decode_detection("!!!"), Err(MvtError::Detection(Issue::Base64(_)))));
        let other =
            base64::engine::general_purpose::STANDARD.encode(encode(vec![layer("x", &[], vec![], vec![])]));
        assert!(matches!(decode_detection(&other), Err(MvtError::Detection(Issue::NoDetectionLayer))));
        let empty = base64::engine::general_purpose::STANDARD.encode(encode(vec![layer(
            "mpy-or",
            &[],
            vec![],
            vec![],
        )]));
        assert!(matches!(decode_detection(&empty), Err(MvtError::Detection(Issue::NoPolygon))));
    }
}
