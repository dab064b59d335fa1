//! MVT encoding of the simulated world: coverage tiles (`mly1_public`, `mly1_computed_public`),
//! map-feature tiles, and the base64 MVT blobs of detection geometries.
//!
//! The byte layout follows the real 2024 `mly1_public` tile (layer order, key order, value kinds,
//! positional feature ids), so the harvester's decoder is exercised against the real format.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use geozero::mvt::tile::{Feature, GeomType, Layer, Value};
use geozero::mvt::{Message, Tile};

use crate::world::{SimFeature, SimImage, SimSequence, TileWorld};
use mly_contract::tiles::{EXTENT, TileId};
use mly_contract::{FeatureKind, Tileset};

/// A pixel gap (at extent 4096) beyond which consecutive images of a sequence are drawn as
/// separate line parts: the drive left the tile (or images in between were deleted or moved).
const PART_BREAK_PX: i64 = 120;

/// How far past a z14 tile's edge (in pixels of 4096) the render buffer reaches (§13.5: the live
/// service repeats records near an edge in the neighbouring tile; its width is not known, 64 px is
/// about 20–40 m).
pub const RENDER_BUFFER_PX: f64 = 64.0;

/// The MVT bytes of tileset `ts` for z14 tile content (empty Vec if the tile has nothing for that
/// tileset), without render-buffer copies.
pub fn encode_tile(tw: &TileWorld, ts: Tileset) -> Vec<u8> {
    encode_tile_buffered(tw, &[], ts)
}

/// Like [`encode_tile`], plus the render buffer: the records of `neighbours` (the surrounding
/// z14 tiles' worlds) that lie within [`RENDER_BUFFER_PX`] of this tile's edge, drawn after the
/// tile's own records at coordinates quantised to this tile and always outside [0, extent), so
/// each record is inside exactly one tile (its home).
pub fn encode_tile_buffered(tw: &TileWorld, neighbours: &[Arc<TileWorld>], ts: Tileset) -> Vec<u8> {
    let layers = match ts {
        Tileset::Public => coverage_layers(tw, neighbours, false),
        Tileset::ComputedPublic => coverage_layers(tw, neighbours, true),
        Tileset::FeaturePoint => feature_layers(tw, neighbours, FeatureKind::Point),
        Tileset::FeatureTrafficSign => feature_layers(tw, neighbours, FeatureKind::TrafficSign),
    };
    if layers.is_empty() {
        return Vec::new();
    }
    Tile { layers }.encode_to_vec()
}

/// Hash key of an MVT value, so equal values are stored once per layer as real tiles do.
#[derive(PartialEq, Eq, Hash)]
pub(super) enum ValueKey {
    Int(i64),
    Double(u64),
    Bool(bool),
    Str(String),
}

/// Accumulates one layer's features, keys and deduplicated values.
pub(super) struct LayerBuilder {
    pub(super) layer: Layer,
    keys: HashMap<&'static str, u32>,
    values: HashMap<ValueKey, u32>,
}

impl LayerBuilder {
    pub(super) fn new(name: &str) -> LayerBuilder {
        LayerBuilder {
            layer: Layer {
                version: 2,
                name: name.to_string(),
                features: Vec::new(),
                keys: Vec::new(),
                values: Vec::new(),
                extent: Some(EXTENT),
            },
            keys: HashMap::new(),
            values: HashMap::new(),
        }
    }

    fn key(&mut self, k: &'static str) -> u32 {
        let layer = &mut self.layer;
        *self.keys.entry(k).or_insert_with(|| {
            layer.keys.push(k.to_string());
            (layer.keys.len() - 1) as u32
        })
    }

    fn value(&mut self, v: ValueKey) -> u32 {
        if let Some(i) = self.values.get(&v) {
            return *i;
        }
        let mvt = match &v {
            ValueKey::Int(i) => Value { int_value: Some(*i), ..Default::default() },
            ValueKey::Double(bits) => {
                Value { double_value: Some(f64::from_bits(*bits)), ..Default::default() }
            }
            ValueKey::Bool(b) => Value { bool_value: Some(*b), ..Default::default() },
            ValueKey::Str(s) => Value { string_value: Some(s.clone()), ..Default::default() },
        };
        self.layer.values.push(mvt);
        let i = (self.layer.values.len() - 1) as u32;
        self.values.insert(v, i);
        i
    }

    /// Adds a feature; `props` must be in the (alphabetical) key order real tiles use.
    pub(super) fn push(
        &mut self,
        id: u64,
        ty: GeomType,
        geometry: Vec<u32>,
        props: Vec<(&'static str, ValueKey)>,
    ) {
        let mut tags = Vec::with_capacity(props.len() * 2);
        for (k, v) in props {
            let ki = self.key(k);
            let vi = self.value(v);
            tags.push(ki);
            tags.push(vi);
        }
        self.layer.features.push(Feature { id: Some(id), tags, r#type: Some(ty as i32), geometry });
    }
}

fn zigzag(v: i64) -> u32 {
    ((v << 1) ^ (v >> 63)) as u32
}

fn command(id: u32, count: u32) -> u32 {
    (id & 0x7) | (count << 3)
}

/// The pixel of a record in its home tile: rounded, and kept inside [0, extent) so that a record
/// near the far edge never lands on the neighbour's first pixel (a record is inside one tile only).
pub fn home_pixel(tile: TileId, lon: f64, lat: f64) -> (i64, i64) {
    let (px, py) = tile.lonlat_to_pixel(lon, lat, EXTENT);
    let e = i64::from(EXTENT);
    ((px.round() as i64).clamp(0, e - 1), (py.round() as i64).clamp(0, e - 1))
}

/// The pixel of a neighbour's record in this tile's render buffer, or `None` when it is farther
/// than [`RENDER_BUFFER_PX`] (or inside the tile, which a neighbour's record never is). Coordinates
/// outside the tile are rounded away from it: a copy is never inside [0, extent).
fn buffer_pixel(tile: TileId, lon: f64, lat: f64) -> Option<(i64, i64)> {
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

fn pixel(tile: TileId, lon: f64, lat: f64) -> (i64, i64) {
    home_pixel(tile, lon, lat)
}

pub(super) fn point_geometry(p: (i64, i64)) -> Vec<u32> {
    vec![command(1, 1), zigzag(p.0), zigzag(p.1)]
}

/// Encodes line parts (each ≥ 2 points) with one running cursor, as MVT requires.
pub(super) fn lines_geometry(parts: &[Vec<(i64, i64)>]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut cur = (0i64, 0i64);
    for part in parts {
        out.push(command(1, 1));
        out.push(zigzag(part[0].0 - cur.0));
        out.push(zigzag(part[0].1 - cur.1));
        cur = part[0];
        out.push(command(2, (part.len() - 1) as u32));
        for &p in &part[1..] {
            out.push(zigzag(p.0 - cur.0));
            out.push(zigzag(p.1 - cur.1));
            cur = p;
        }
    }
    out
}

pub(super) fn image_position(img: &SimImage, computed: bool) -> (f64, f64) {
    if computed { img.computed.unwrap_or((img.lon, img.lat)) } else { (img.lon, img.lat) }
}

/// Splits a sequence's in-tile pixels (capture order) into drawable parts.
pub(super) fn line_parts(points: &[(i64, i64)]) -> Vec<Vec<(i64, i64)>> {
    let mut parts: Vec<Vec<(i64, i64)>> = Vec::new();
    let mut part: Vec<(i64, i64)> = Vec::new();
    for &p in points {
        if let Some(&last) = part.last() {
            if last == p {
                continue;
            }
            let far = (p.0 - last.0).abs().max((p.1 - last.1).abs()) > PART_BREAK_PX;
            if far {
                parts.push(std::mem::take(&mut part));
            }
        }
        part.push(p);
    }
    parts.push(part);
    let e = i64::from(EXTENT);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|mut p| {
            // A lone image still gets a visible stub, as a line needs two distinct points.
            if p.len() == 1 {
                let (x, y) = p[0];
                p.push(if x < e { (x + 1, y) } else { (x - 1, y) });
            }
            p
        })
        .collect()
}

/// The properties of an image point, in the (alphabetical) key order of real tiles; the computed
/// tileset also carries `foot` and `quality_score` (§13.6).
fn image_props(img: &SimImage, computed: bool) -> Vec<(&'static str, ValueKey)> {
    let mut props = vec![
        ("captured_at", ValueKey::Int(img.captured_at_ms)),
        ("compass_angle", ValueKey::Double(img.compass_angle.to_bits())),
        ("creator_id", ValueKey::Int(img.creator_id)),
    ];
    if computed {
        props.push(("foot", ValueKey::Bool(img.foot)));
    }
    props.push(("id", ValueKey::Int(img.id)));
    props.push(("is_pano", ValueKey::Bool(img.is_pano)));
    if let Some(org) = img.organization_id {
        props.push(("organization_id", ValueKey::Int(org)));
    }
    if computed && let Some(q) = img.quality_score {
        props.push(("quality_score", ValueKey::Double(q.to_bits())));
    }
    props.push(("sequence_id", ValueKey::Str(img.sequence_id.clone())));
    props
}

fn coverage_layers(tw: &TileWorld, neighbours: &[Arc<TileWorld>], computed: bool) -> Vec<Layer> {
    let tile = tw.tile;
    let buffered: Vec<(&SimImage, (i64, i64))> = neighbours
        .iter()
        .flat_map(|n| n.images.iter())
        .filter_map(|img| {
            let (lon, lat) = image_position(img, computed);
            buffer_pixel(tile, lon, lat).map(|p| (img, p))
        })
        .collect();
    if tw.images.is_empty() && buffered.is_empty() {
        return Vec::new();
    }
    let by_id: HashMap<i64, &SimImage> = tw.images.iter().map(|i| (i.id, i)).collect();
    let mut next_id = 0u64;
    let mut seq_layer = LayerBuilder::new("sequence");
    for seq in &tw.sequences {
        // The sequence's in-tile images in capture order: synthetic ids grow along a drive, but real
        // (fixture) ids do not, so the sequence's own order is the one to follow.
        let imgs: Vec<&SimImage> = seq.image_ids.iter().filter_map(|id| by_id.get(id).copied()).collect();
        if imgs.is_empty() {
            continue;
        }
        let pts: Vec<(i64, i64)> = imgs
            .iter()
            .map(|i| {
                let (lon, lat) = image_position(i, computed);
                pixel(tile, lon, lat)
            })
            .collect();
        let parts = line_parts(&pts);
        seq_layer.push(
            next_id,
            GeomType::Linestring,
            lines_geometry(&parts),
            sequence_props(seq, imgs[0], computed),
        );
        next_id += 1;
    }
    let mut img_layer = LayerBuilder::new("image");
    for img in &tw.images {
        let (lon, lat) = image_position(img, computed);
        img_layer.push(
            next_id,
            GeomType::Point,
            point_geometry(pixel(tile, lon, lat)),
            image_props(img, computed),
        );
        next_id += 1;
    }
    for (img, p) in buffered {
        img_layer.push(next_id, GeomType::Point, point_geometry(p), image_props(img, computed));
        next_id += 1;
    }
    let mut layers = Vec::with_capacity(2);
    if !seq_layer.layer.features.is_empty() {
        layers.push(seq_layer.layer);
    }
    layers.push(img_layer.layer);
    layers
}

/// The properties of a sequence line; `first` is its first image in the tile (whose quality
/// the computed tileset reports for the line).
fn sequence_props(seq: &SimSequence, first: &SimImage, computed: bool) -> Vec<(&'static str, ValueKey)> {
    let mut props = vec![
        ("captured_at", ValueKey::Int(seq.captured_at_ms)),
        ("creator_id", ValueKey::Int(seq.creator_id)),
    ];
    if computed {
        props.push(("foot", ValueKey::Bool(seq.foot)));
    }
    props.push(("id", ValueKey::Str(seq.id.clone())));
    props.push(("image_id", ValueKey::Int(seq.image_ids.first().copied().unwrap_or(0))));
    props.push(("is_pano", ValueKey::Bool(seq.is_pano)));
    if let Some(org) = seq.organization_id {
        props.push(("organization_id", ValueKey::Int(org)));
    }
    if computed && let Some(q) = first.quality_score {
        props.push(("quality_score", ValueKey::Double(q.to_bits())));
    }
    props
}

fn feature_props(f: &SimFeature) -> Vec<(&'static str, ValueKey)> {
    vec![
        ("first_seen_at", ValueKey::Int(f.first_seen_at_ms)),
        ("id", ValueKey::Int(f.id)),
        ("last_seen_at", ValueKey::Int(f.last_seen_at_ms)),
        ("value", ValueKey::Str(f.value.clone())),
    ]
}

fn feature_layers(tw: &TileWorld, neighbours: &[Arc<TileWorld>], kind: FeatureKind) -> Vec<Layer> {
    let mut layer = LayerBuilder::new(kind.as_str());
    let mut next_id = 0u64;
    for f in tw.features.iter().filter(|f| f.kind == kind) {
        layer.push(next_id, GeomType::Point, point_geometry(pixel(tw.tile, f.lon, f.lat)), feature_props(f));
        next_id += 1;
    }
    for n in neighbours {
        for f in n.features.iter().filter(|f| f.kind == kind) {
            if let Some(p) = buffer_pixel(tw.tile, f.lon, f.lat) {
                layer.push(next_id, GeomType::Point, point_geometry(p), feature_props(f));
                next_id += 1;
            }
        }
    }
    if next_id == 0 { Vec::new() } else { vec![layer.layer] }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Base64 of a one-polygon MVT (layer `mpy-or`, version 2, extent 4096, feature id 1, no
/// properties) outlining `polygon_px` (image-normalised pixels, 0..4096, ring without repeat).
///
/// Hand-encoded rather than through prost because the real blobs put the layer's `version` and
/// `extent` before its features, an order prost's field-declaration order does not reproduce.
pub fn detection_geometry_b64(polygon_px: &[(u32, u32)]) -> String {
    let pts: Vec<(i64, i64)> = polygon_px.iter().map(|&(x, y)| (i64::from(x), i64::from(y))).collect();
    let mut geom = Vec::new();
    if pts.len() >= 3 {
        geom.push(command(1, 1));
        geom.push(zigzag(pts[0].0));
        geom.push(zigzag(pts[0].1));
        let mut cur = pts[0];
        geom.push(command(2, (pts.len() - 1) as u32));
        for &p in &pts[1..] {
            geom.push(zigzag(p.0 - cur.0));
            geom.push(zigzag(p.1 - cur.1));
            cur = p;
        }
        geom.push(command(7, 1));
    }
    let mut packed = Vec::new();
    for g in geom {
        put_varint(&mut packed, u64::from(g));
    }
    let mut feature = Vec::new();
    put_varint(&mut feature, 1 << 3); // id
    put_varint(&mut feature, 1);
    put_varint(&mut feature, 3 << 3); // type
    put_varint(&mut feature, GeomType::Polygon as u64);
    put_len(&mut feature, 4, &packed);
    let mut layer = Vec::new();
    put_varint(&mut layer, 15 << 3); // version
    put_varint(&mut layer, 2);
    put_len(&mut layer, 1, b"mpy-or");
    put_varint(&mut layer, 5 << 3); // extent
    put_varint(&mut layer, u64::from(EXTENT));
    put_len(&mut layer, 2, &feature);
    let mut tile = Vec::new();
    put_len(&mut tile, 3, &layer);
    base64::engine::general_purpose::STANDARD.encode(tile)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::world::World;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/real/");

    fn kind(v: &Value) -> &'static str {
        match v {
            Value { string_value: Some(_), .. } => "string",
            Value { double_value: Some(_), .. } => "double",
            Value { float_value: Some(_), .. } => "float",
            Value { int_value: Some(_), .. } => "int",
            Value { uint_value: Some(_), .. } => "uint",
            Value { sint_value: Some(_), .. } => "sint",
            Value { bool_value: Some(_), .. } => "bool",
            _ => "none",
        }
    }

    /// Per layer (in order): name, version, extent, and key -> set of value kinds.
    type Schema = Vec<(String, u32, Option<u32>, BTreeMap<String, BTreeSet<&'static str>>)>;

    fn schema(bytes: &[u8]) -> Schema {
        let tile = Tile::decode(bytes).expect("decodes");
        tile.layers
            .iter()
            .map(|l| {
                let mut keys: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
                for f in &l.features {
                    for pair in f.tags.chunks(2) {
                        let k = l.keys[pair[0] as usize].clone();
                        keys.entry(k).or_default().insert(kind(&l.values[pair[1] as usize]));
                    }
                }
                (l.name.clone(), l.version, l.extent, keys)
            })
            .collect()
    }

    fn suburb() -> TileId {
        TileId::containing(14, 13.06, 55.6)
    }

    #[test]
    fn coverage_tile_matches_the_2024_fixture_schema() {
        let real =
            std::fs::read(format!("{FIXTURES}vespucci-mly1_public-14_unknown_2024.mvt")).expect("fixture");
        let want = schema(&real);
        let w = World::new(1);
        let tw = w.tile(suburb(), 0);
        assert_eq!(schema(&encode_tile(&tw, Tileset::Public)), want);
        // The computed tileset adds `foot` and `quality_score` to both layers (§13.6).
        let mut computed = want.clone();
        for layer in &mut computed {
            layer.3.insert("foot".into(), BTreeSet::from(["bool"]));
            layer.3.insert("quality_score".into(), BTreeSet::from(["double"]));
        }
        assert_eq!(schema(&encode_tile(&tw, Tileset::ComputedPublic)), computed);
    }

    #[test]
    fn coverage_tile_geometry_and_ids() {
        let w = World::new(1);
        let tw = w.tile(suburb(), 0);
        let tile = Tile::decode(encode_tile(&tw, Tileset::Public).as_slice()).expect("decodes");
        let ids: Vec<u64> =
            tile.layers.iter().flat_map(|l| l.features.iter().map(|f| f.id.unwrap_or(u64::MAX))).collect();
        assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>(), "positional ids across layers");
        assert_eq!(tile.layers[0].features.len(), tw.sequences.len());
        assert_eq!(tile.layers[1].features.len(), tw.images.len());
        // Image positions decode back to within quantisation of the world's positions.
        use geozero::ToGeo;
        for (f, img) in tile.layers[1].features.iter().zip(&tw.images).step_by(50) {
            let Ok(geo_types::Geometry::Point(p)) = f.to_geo() else { panic!("not a point") };
            let (lon, lat) = tw.tile.pixel_to_lonlat(p.x(), p.y(), EXTENT);
            assert!((lon - img.lon).abs() < 1e-5 && (lat - img.lat).abs() < 1e-5);
        }
        let multi = tile.layers[0]
            .features
            .iter()
            .filter(|f| matches!(f.to_geo(), Ok(geo_types::Geometry::MultiLineString(_))))
            .count();
        assert!(multi > 0, "no multi-part sequence lines");
    }

    #[test]
    fn feature_tiles_have_point_layers() {
        let w = World::new(1);
        let tw = w.tile(suburb(), 0);
        for (ts, name) in [(Tileset::FeaturePoint, "point"), (Tileset::FeatureTrafficSign, "traffic_sign")] {
            let s = schema(&encode_tile(&tw, ts));
            assert_eq!(s.len(), 1);
            assert_eq!(s[0].0, name);
            let keys: Vec<(&str, Vec<&str>)> =
                s[0].3.iter().map(|(k, v)| (k.as_str(), v.iter().copied().collect())).collect();
            assert_eq!(
                keys,
                [
                    ("first_seen_at", vec!["int"]),
                    ("id", vec!["int"]),
                    ("last_seen_at", vec!["int"]),
                    ("value", vec!["string"])
                ]
            );
        }
        let empty = w.tile(TileId::containing(14, -30.0, 0.0), 0);
        assert!(Tileset::ALL.iter().all(|ts| encode_tile(&empty, *ts).is_empty()));
    }

    #[test]
    fn detection_blob_is_shaped_like_the_real_ones() {
        let b64 = detection_geometry_b64(&[(100, 200), (300, 200), (300, 400), (100, 400)]);
        let bytes = base64::engine::general_purpose::STANDARD.decode(&b64).expect("base64");
        let tile = Tile::decode(bytes.as_slice()).expect("mvt");
        assert_eq!(tile.layers.len(), 1);
        let l = &tile.layers[0];
        assert_eq!((l.name.as_str(), l.version, l.extent), ("mpy-or", 2, Some(4096)));
        assert!(l.keys.is_empty() && l.values.is_empty());
        assert_eq!(l.features.len(), 1);
        assert_eq!(l.features[0].id, Some(1));
        assert_eq!(l.features[0].r#type, Some(GeomType::Polygon as i32));
        // Same field order as a real version-2 blob: version, name, extent, then the feature.
        let real: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{FIXTURES}josm-image-4235112816526838-detections.json"))
                .expect("fixture"),
        )
        .expect("json");
        let real_b64 = real["data"][2]["geometry"].as_str().expect("geometry");
        let real_bytes = base64::engine::general_purpose::STANDARD.decode(real_b64).expect("base64");
        assert_eq!(real_bytes[2..14], bytes[2..14]);
        use geozero::ToGeo;
        let Ok(geo_types::Geometry::Polygon(p)) = l.features[0].to_geo() else { panic!("not a polygon") };
        assert_eq!(p.exterior().0.len(), 5);
    }
}
