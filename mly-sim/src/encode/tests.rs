//! Tests of the encoders against the real captures' schema.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use geozero::mvt::tile::{GeomType, Value};

use super::*;
use crate::world::World;
use mly_contract::tiles::{EXTENT, TileId};

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
    let real = std::fs::read(format!("{FIXTURES}vespucci-mly1_public-14_unknown_2024.mvt")).expect("fixture");
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

#[test]
fn empty_layer_tile_decodes() {
    let t = Tile::decode(empty_layer_tile().as_slice()).unwrap();
    assert_eq!(t.layers[0].name, "mapillary-empty");
}

#[test]
fn same_seed_same_bytes_other_seed_differs() {
    let t = suburb();
    let (a, b, c) = (World::new(7), World::new(7), World::new(8));
    for ts in Tileset::ALL {
        let (x, y) = (encode_tile(&a.tile(t, 0), ts), encode_tile(&b.tile(t, 0), ts));
        assert!(!x.is_empty(), "{ts} empty");
        assert_eq!(x, y, "{ts}");
        assert_ne!(x, encode_tile(&c.tile(t, 0), ts), "{ts}");
    }
}

#[test]
#[ignore = "timing; run with --release --ignored --nocapture"]
fn dense_tile_generation_speed() {
    let w = World::new(1);
    let t0 = std::time::Instant::now();
    let tw = w.tile(TileId::containing(14, 13.0, 55.6), 0);
    let gen_t = t0.elapsed();
    let t1 = std::time::Instant::now();
    let bytes = encode_tile(&tw, Tileset::Public);
    println!(
        "{} images, {} sequences, {} features: generate {:?}, encode {:?}, {} bytes",
        tw.images.len(),
        tw.sequences.len(),
        tw.features.len(),
        gen_t,
        t1.elapsed(),
        bytes.len()
    );
}
