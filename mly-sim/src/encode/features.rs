//! The map-feature tilesets (`mly_map_feature_point`, `mly_map_feature_traffic_sign`), z14 only.

use std::sync::Arc;

use geozero::mvt::tile::{GeomType, Layer};

use super::layer::{LayerBuilder, ValueKey, point_geometry};
use super::pixels::{buffer_pixel, home_pixel};
use crate::world::{SimFeature, TileWorld};
use mly_contract::FeatureKind;

fn feature_props(f: &SimFeature) -> Vec<(&'static str, ValueKey)> {
    vec![
        ("first_seen_at", ValueKey::Int(f.first_seen_at_ms)),
        ("id", ValueKey::Int(f.id)),
        ("last_seen_at", ValueKey::Int(f.last_seen_at_ms)),
        ("value", ValueKey::Str(f.value.clone())),
    ]
}

pub(super) fn feature_layers(tw: &TileWorld, neighbours: &[Arc<TileWorld>], kind: FeatureKind) -> Vec<Layer> {
    let mut layer = LayerBuilder::new(kind.as_str());
    let mut next_id = 0u64;
    for f in tw.features.iter().filter(|f| f.kind == kind) {
        layer.push(
            next_id,
            GeomType::Point,
            point_geometry(home_pixel(tw.tile, f.lon, f.lat)),
            feature_props(f),
        );
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
