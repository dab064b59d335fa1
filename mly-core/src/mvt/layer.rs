//! One layer of a coverage or map-feature tile: its properties (any MVT value type the service
//! has used) and its features turned into records with lon/lat positions.

use geo_types::{Coord, LineString, MultiLineString};
use geozero::mvt::tile;

use super::geometry::{first_point, parse_parts};
use super::{Issue, LayerStats};
use crate::model::{DecodedTile, ImageId, MapFeatureId, TileFeature, TileImage, TileSequence};
use mly_contract::tiles::{EXTENT, TileId};
use mly_contract::{FeatureKind, Tileset};

pub(super) fn layer_extent(layer: &tile::Layer) -> Result<f64, Issue> {
    match layer.extent.unwrap_or(EXTENT) {
        0 => Err(Issue::ZeroExtent { layer: layer.name.clone() }),
        e => Ok(f64::from(e)),
    }
}

/// What a known layer turns into for this tileset.
#[derive(Clone, Copy)]
pub(super) enum LayerKind {
    Image,
    Sequence,
    Feature(FeatureKind),
}

pub(super) fn layer_kind(tileset: Tileset, name: &str) -> Option<LayerKind> {
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
pub(super) enum Key {
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
pub(super) enum Val<'a> {
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
pub(super) struct Props<'a> {
    vals: [Option<Val<'a>>; 11],
}

impl<'a> Props<'a> {
    fn get(&self, k: Key) -> Val<'a> {
        let idx = k as usize;
        self.vals.get(idx).copied().flatten().unwrap_or(Val::Empty)
    }
}

pub(super) fn read_props<'a>(tags: &[u32], keys: &[Key], vals: &[Val<'a>]) -> Props<'a> {
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

pub(super) fn decode_layer(
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
pub(super) enum Placement {
    /// In [0, extent) on both axes: the tile's own record.
    Inside,
    /// On the east or south edge (coordinate == extent): also the neighbour's first pixel, so the
    /// neighbour may list the record as its own.
    FarEdge,
    /// Beyond the edge: a render-buffer copy of a neighbour's record.
    Outside,
}

pub(super) fn placement((x, y): (i64, i64), extent: u32) -> Placement {
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
pub(super) fn push_point(
    kind: LayerKind,
    props: &Props<'_>,
    lon: f64,
    lat: f64,
    out: &mut DecodedTile,
) -> bool {
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
