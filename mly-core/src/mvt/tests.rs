//! Decoder tests on hand-built tiles and detections: layers, properties, geometry commands,
//! render-buffer copies, gzip, and malformed input.

use super::detection::*;
use super::geometry::*;
use super::layer::*;
use super::*;
use crate::model::{ImageId, MapFeatureId};
use base64::Engine as _;
use geozero::mvt::tile;
use mly_contract::FeatureKind;

const DOCS_SAMPLE: &str = "GjgKBm1weS1vchIYEgIAABgDIhAJnC3uFxroAwAA7AbnAwAPGgR0eXBlIgkKB3BvbHlnb24ogCB4AQ==";

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

fn layer(name: &str, keys: &[&str], values: Vec<tile::Value>, features: Vec<tile::Feature>) -> tile::Layer {
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
    let pt = layer("point", &keys, values.clone(), vec![point_feature(vec![0, 0, 1, 1, 2, 2, 3, 2], 5, 5)]);
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
    let empty =
        base64::engine::general_purpose::STANDARD.encode(encode(vec![layer("mpy-or", &[], vec![], vec![])]));
    assert!(matches!(decode_detection(&empty), Err(MvtError::Detection(Issue::NoPolygon))));
}
