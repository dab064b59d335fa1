//! The MVT layer builder (keys and values stored once per layer, as real tiles do) and the
//! geometry command encoding.

use std::collections::HashMap;

use geozero::mvt::tile::{Feature, GeomType, Layer, Value};
use geozero::mvt::{Message, Tile};

use mly_contract::tiles::EXTENT;

/// A pixel gap (at extent 4096) beyond which consecutive images of a sequence are drawn as
/// separate line parts: the drive left the tile (or images in between were deleted or moved).
const PART_BREAK_PX: i64 = 120;

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

pub(super) fn zigzag(v: i64) -> u32 {
    ((v << 1) ^ (v >> 63)) as u32
}

pub(super) fn command(id: u32, count: u32) -> u32 {
    (id & 0x7) | (count << 3)
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

/// An MVT with one empty layer `mapillary-empty`, as an earlier Mapillary tile API served for
/// empty tiles (`--empty-tile mvt-empty`).
pub(crate) fn empty_layer_tile() -> Vec<u8> {
    let layer =
        Layer { version: 2, name: "mapillary-empty".into(), extent: Some(EXTENT), ..Default::default() };
    Tile { layers: vec![layer] }.encode_to_vec()
}
