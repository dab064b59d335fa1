//! The MVT decoder against every real tile and detection in `../shared/fixtures/real`, a GDAL
//! cross-check, garbage robustness, and an `#[ignore]`d release-mode throughput measurement.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use geozero::mvt::{Message, Tile};
use mly_contract::Tileset;
use mly_contract::tiles::TileId;
use mly_core::model::{DecodedTile, ImageId};
use mly_core::mvt::{LayerStats, decode_detection, decode_tile, decode_tile_with_stats};

const FIX: &str = "../../shared/fixtures/real";
const V2024: &str = "vespucci-mly1_public-14_unknown_2024.mvt";
const V2021: &str = "vespucci-mly1_public-14_8574_5735_2021.mvt";
const JOSM: &str = "josm-mly1_public-14_3251_6257.mvt";

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(FIX).join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(path(name)).unwrap_or_else(|e| panic!("reading fixture {name}: {e}"))
}

fn tid(z: u8, x: u32, y: u32) -> TileId {
    TileId::new(z, x, y).unwrap()
}

/// The 2024 tile's x/y were not recorded; positions are then only relative, counts still hold.
fn tile_of(name: &str) -> TileId {
    if name == V2024 {
        return tid(14, 8574, 5735);
    }
    let digits: Vec<u32> =
        name.trim_end_matches(".mvt").split(['-', '_']).filter_map(|s| s.parse().ok()).collect();
    match digits.as_slice() {
        [14, x, y, ..] => tid(14, *x, *y),
        other => panic!("no tile in {name}: {other:?}"),
    }
}

fn decode(name: &str) -> (DecodedTile, Vec<LayerStats>) {
    decode_tile_with_stats(Tileset::Public, tile_of(name), &read(name)).unwrap()
}

fn layer<'a>(st: &'a [LayerStats], name: &str) -> &'a LayerStats {
    st.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no layer {name} in {st:?}"))
}

#[test]
fn every_real_tile_has_the_manifest_layer_counts() {
    // (file, layer order, sequence features, image features) from MANIFEST.md.
    let table = [
        (V2024, ["sequence", "image"], 222, 10231),
        (V2021, ["image", "sequence"], 51, 3012),
        (JOSM, ["sequence", "image"], 331, 31261),
        ("josm-mly1_public-14_3251_6258.mvt", ["sequence", "image"], 96, 7890),
        ("josm-mly1_public-14_3252_6257.mvt", ["sequence", "image"], 89, 8695),
        ("josm-mly1_public-14_3252_6258.mvt", ["sequence", "image"], 70, 4888),
    ];
    let mut seen = 0;
    for entry in std::fs::read_dir(path("")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".mvt") {
            seen += 1;
            assert!(table.iter().any(|t| t.0 == name), "fixture {name} missing from the table");
        }
    }
    assert_eq!(seen, table.len());
    for (name, order, seqs, imgs) in table {
        let (d, st) = decode(name);
        let names: Vec<&str> = st.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, order, "{name}");
        assert_eq!(layer(&st, "sequence").features, seqs, "{name}");
        assert_eq!(layer(&st, "image").features, imgs, "{name}");
        // Every sequence has its string id, even in the pre-launch tiles.
        assert_eq!(d.sequences.len(), seqs, "{name}");
        if name.starts_with("josm") {
            // Pre-launch tiles blank the image `id` to "": no usable id, so no image records.
            assert_eq!(d.images.len(), 0, "{name}");
            assert_eq!(layer(&st, "image").skipped, imgs, "{name}");
            assert!(d.sequences.iter().all(|s| s.image_id.is_none() && s.organization_id.is_none()));
        } else {
            assert_eq!(d.images.len(), imgs, "{name}");
            assert_eq!(layer(&st, "image").skipped, 0);
        }
    }
}

#[test]
fn vespucci_2024_current_schema() {
    let (d, _) = decode(V2024);
    assert_eq!(d.images.len(), 10231);
    assert_eq!(d.sequences.len(), 222);
    assert_eq!(d.images.iter().filter(|i| i.is_pano == Some(true)).count(), 2230);
    assert!(d.images.iter().all(|i| i.is_pano.is_some()));
    assert_eq!(d.images.iter().filter(|i| i.organization_id.is_some()).count(), 2410);
    assert_eq!(d.images.iter().filter(|i| i.captured_at_ms == Some(0)).count(), 4);
    assert!(d.images.iter().all(|i| i.captured_at_ms.is_some()));
    assert!(d.images.iter().all(|i| i.creator_id.is_some() && i.compass_angle.is_some()));
    assert!(d.images.iter().all(|i| i.sequence_id.as_ref().is_some_and(|s| !s.is_empty())));
    let newest = d.images.iter().filter_map(|i| i.captured_at_ms).max().unwrap();
    // 2024-07-03 UTC, per the manifest.
    assert!((1_719_964_800_000..1_720_051_200_000).contains(&newest), "{newest}");
    assert_eq!(d.sequences.iter().filter(|s| s.organization_id.is_some()).count(), 35);
    assert_eq!(d.sequences.iter().filter(|s| s.geom.0.len() > 1).count(), 63);
    assert!(d.sequences.iter().all(|s| s.image_id.is_some() && s.creator_id.is_some()));
    assert!(d.sequences.iter().all(|s| s.id.len() == 22), "sequence keys are 22 chars");
}

#[test]
fn vespucci_2021_positions_and_sequence() {
    let t = tid(14, 8574, 5735);
    let (d, _) = decode(V2021);
    assert_eq!(d.images.len(), 3012);
    assert_eq!(d.sequences.len(), 51);
    assert_eq!(d.sequences.iter().filter(|s| s.geom.0.len() > 1).count(), 7);
    let b = t.bounds();
    assert!((b.west - 8.3936).abs() < 1e-4 && (b.north - 47.4132).abs() < 1e-4);
    for i in &d.images {
        assert!(b.contains(i.lon, i.lat), "image {} at {},{}", i.id, i.lon, i.lat);
        assert!(i.creator_id.is_none() && i.organization_id.is_none());
    }
    for s in &d.sequences {
        for c in s.geom.0.iter().flat_map(|l| l.0.iter()) {
            assert!(b.contains(c.x, c.y), "sequence {} vertex {c:?}", s.id);
        }
    }
    let s = d.sequences.iter().find(|s| s.id == "feL24LE73P_5h95xjtvLqQ").expect("sequence present");
    assert_eq!(s.image_id, Some(ImageId(272743017840261)));
    let imgs = d.images.iter().filter(|i| i.sequence_id.as_deref() == Some("feL24LE73P_5h95xjtvLqQ")).count();
    assert_eq!(imgs, 62);
    // The Graph fixture's image 178993950747668 lies in this tile.
    assert!(d.images.iter().any(|i| i.id == ImageId(178993950747668)));
}

/// EPSG:3857 metres → lon/lat degrees.
fn merc_to_lonlat(x: f64, y: f64) -> (f64, f64) {
    const R: f64 = 6_378_137.0;
    ((x / R).to_degrees(), (2.0 * (y / R).exp().atan() - std::f64::consts::FRAC_PI_2).to_degrees())
}

#[test]
fn positions_match_gdal() {
    let p = path(V2021);
    let out = Command::new("ogrinfo")
        .args(["-ro", "-oo", "Z=14", "-oo", "X=8574", "-oo", "Y=5735", "-al"])
        .arg(&p)
        .arg("image")
        .output()
        .expect("ogrinfo (gdal-bin) must be installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    // GDAL prints each feature's `id (Integer64) = N` before its `POINT (x y)`.
    let mut gdal: HashMap<i64, (f64, f64)> = HashMap::new();
    let mut cur_id = None;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("id (Integer64) = ") {
            cur_id = Some(v.parse::<i64>().unwrap());
        } else if let Some(v) = line.strip_prefix("POINT (") {
            let mut it = v.trim_end_matches(')').split_whitespace().map(|n| n.parse::<f64>().unwrap());
            let (x, y) = (it.next().unwrap(), it.next().unwrap());
            gdal.insert(cur_id.take().expect("id before point"), merc_to_lonlat(x, y));
        }
    }
    assert_eq!(gdal.len(), 3012);
    let (d, _) = decode(V2021);
    for i in &d.images {
        let (lon, lat) = gdal[&i.id.0];
        assert!(
            (lon - i.lon).abs() < 1e-6 && (lat - i.lat).abs() < 1e-6,
            "{}: {lon},{lat} vs {},{}",
            i.id,
            i.lon,
            i.lat
        );
    }
}

#[test]
fn every_real_detection_decodes() {
    let mut n = 0;
    let mut multi = 0;
    for entry in std::fs::read_dir(path("")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with("-detections.json") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&read(&name)).unwrap();
        for det in v["data"].as_array().unwrap() {
            let g = det["geometry"].as_str().unwrap();
            let mp = decode_detection(g).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!mp.0.is_empty());
            if mp.0.len() == 3 {
                multi += 1;
            }
            for poly in &mp.0 {
                assert!(poly.exterior().0.len() >= 4, "{name}: ring too short");
                for c in poly.exterior().coords().chain(poly.interiors().iter().flat_map(|r| r.coords())) {
                    assert!((0.0..=1.0).contains(&c.x) && (0.0..=1.0).contains(&c.y), "{name}: {c:?}");
                }
            }
            n += 1;
        }
    }
    assert_eq!(n, 28);
    assert_eq!(multi, 1);
}

#[test]
fn truncations_and_byte_flips_never_panic() {
    let full = read(V2021);
    let t = tile_of(V2021);
    let (whole, _) = decode_tile_with_stats(Tileset::Public, t, &full).unwrap();
    let mut rng = fastrand::Rng::with_seed(0x6d6c79);
    let mut errors = 0;
    let cuts: Vec<usize> =
        (0..150).map(|_| rng.usize(1..full.len())).chain([1, 2, 3, full.len() - 1]).collect();
    for cut in cuts {
        match decode_tile(Tileset::Public, t, &full[..cut]) {
            Err(e) => {
                errors += 1;
                assert!(e.to_string().contains("14/8574/5735"), "{e}");
            }
            Ok(d) => assert!(d.images.len() <= whole.images.len()),
        }
    }
    assert!(errors > 100, "most cuts land inside a message: {errors}");
    for _ in 0..150 {
        let mut b = full.clone();
        for _ in 0..rng.usize(1..8) {
            let i = rng.usize(..b.len());
            b[i] = rng.u8(..);
        }
        let _ = decode_tile(Tileset::Public, t, &b);
    }
    for _ in 0..300 {
        let len = rng.usize(0..512);
        let junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        let _ = decode_tile(Tileset::Public, t, &junk);
        let _ = decode_detection(&String::from_utf8_lossy(&junk));
    }
    // A layer claiming a multi-gigabyte length, and a gzip header with garbage after it.
    let huge = [0x1a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x0a];
    assert!(decode_tile(Tileset::Public, t, &huge).is_err());
    assert!(decode_tile(Tileset::Public, t, &[0x1f, 0x8b, 8, 0, 1, 2, 3]).is_err());
}

/// Release-mode throughput: `cargo test --release --test mvt_fixtures -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    for name in [V2024, JOSM] {
        let bytes = read(name);
        let t = tile_of(name);
        let feats: usize = decode(name).1.iter().map(|l| l.features).sum();
        let rounds = 20;
        let start = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(Tile::decode(bytes.as_slice()).unwrap());
        }
        let parse = start.elapsed().as_secs_f64() / rounds as f64;
        let start = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(decode_tile(Tileset::Public, t, &bytes).unwrap());
        }
        let full = start.elapsed().as_secs_f64() / rounds as f64;
        // For comparison only: geozero's own geometry decoder (geometry only, no properties, no
        // lon/lat). Not used in `mvt` because it indexes the command stream unchecked (panics on
        // truncated geometry) and keeps the cursor in i32.
        let start = Instant::now();
        for _ in 0..rounds {
            let tile = Tile::decode(bytes.as_slice()).unwrap();
            for f in tile.layers.iter().flat_map(|l| l.features.iter()) {
                std::hint::black_box(geozero::ToGeo::to_geo(f).unwrap());
            }
        }
        let gz = start.elapsed().as_secs_f64() / rounds as f64;
        println!(
            "BENCH file={name} bytes={} features={feats} protobuf_only_ms={:.2} protobuf_only_features_per_s={:.0} \
             decode_tile_ms={:.2} decode_tile_features_per_s={:.0} geozero_to_geo_ms={:.2} \
             geozero_to_geo_features_per_s={:.0}",
            bytes.len(),
            parse * 1e3,
            feats as f64 / parse,
            full * 1e3,
            feats as f64 / full,
            gz * 1e3,
            feats as f64 / gz
        );
    }
}
