//! The official Python SDK (PyPI `mapillary`, pinned) runs UNMODIFIED against the simulator, its two
//! hosts redirected by `tests/sdk/sitecustomize.py`; every call issue 10 lists must succeed and
//! return what the simulator serves (compared here with the simulator's own tiles and Graph
//! answers). The SDK is installed once into a venv under the target directory (reruns reuse it).
//! The test skips, saying why, only when Python or the package index is unavailable.
//!
//! Where the SDK is wrong against the real API too, the comparison says so and checks the rest:
//! - `image_from_key` / `feature_from_key` drop the geometry (`feature_to_geojson` writes `{}`);
//! - detections' `image_id` is always None (`"image" in "feature"` tests a string literal);
//! - `images_in_bbox` drops panoramas (its image_type filter keeps flat images unless "pano");
//! - `get_detections_with_map_feature_id` without `fields` crashes (`len(None)`), so it is called
//!   with the SDK's own field list.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use geozero::mvt::{Message, Tile};
use mly_contract::tiles::{EXTENT, TileId};
use serde_json::{Map, Value, json};

/// The SDK release the test pins (the newest on PyPI, 2026-09).
const SDK: &str = "mapillary==1.0.16";
/// A busy synthetic tile east of Zürich's core: images, sequences, both feature kinds, detections.
const TILE: TileId = TileId { z: 14, x: 8582, y: 5737 };

fn skip(why: &str) {
    eprintln!("SKIPPED sdk_conformance: {why}");
}

/// The venv with the pinned SDK, made on first use; `Err` says why it cannot be had.
fn sdk_python() -> Result<PathBuf, String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&python).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err(format!("no Python interpreter ({python})")),
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sdk-venv-{}", SDK.replace("==", "-")));
    let py = dir.join("bin/python");
    let stamp = dir.join(".installed");
    if stamp.exists() {
        return Ok(py);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let o = Command::new(&python).args(["-m", "venv"]).arg(&dir).output().expect("python runs");
    // Not a skip: scripts/test.sh installs python3-venv; a machine without it is set up wrong.
    assert!(
        o.status.success(),
        "python3 -m venv failed (install python3-venv): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new(&py)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", SDK])
        .output()
        .expect("pip runs");
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(format!("pip cannot install {SDK} (package index unavailable?): {}", tail.join(" | ")));
    }
    std::fs::write(&stamp, SDK).expect("stamp written");
    Ok(py)
}

fn tok() -> String {
    format!("access_token={}", SIM_TOKEN.replace('|', "%7C"))
}

fn graph(sim: &Sim, path_and_query: &str) -> Value {
    let sep = if path_and_query.contains('?') { '&' } else { '?' };
    let (s, b) = sim.get(&format!("{path_and_query}{sep}{}", tok()));
    assert_eq!(s, 200, "{path_and_query}: {}", String::from_utf8_lossy(&b));
    serde_json::from_slice(&b).expect("JSON")
}

/// One feature of a served tile: its layer, properties as JSON, and first point in tile pixels.
#[derive(Debug, Clone)]
struct Feat {
    layer: String,
    props: Map<String, Value>,
    px: (i64, i64),
}

impl Feat {
    fn id(&self) -> Value {
        self.props["id"].clone()
    }

    /// Strictly inside the tile: the SDK's bbox (the tile shrunk by half a pixel) holds it.
    fn inside(&self) -> bool {
        let e = i64::from(EXTENT);
        (1..e).contains(&self.px.0) && (1..e).contains(&self.px.1)
    }
}

/// Decodes a tile with geozero's raw protobuf types (independent of the harvester's decoder).
fn decode(bytes: &[u8]) -> Vec<Feat> {
    let t = Tile::decode(bytes).expect("tile decodes");
    let zz = |v: u32| i64::from((v >> 1) as i32 ^ -((v & 1) as i32));
    let mut out = Vec::new();
    for l in &t.layers {
        for f in &l.features {
            let mut props = Map::new();
            for kv in f.tags.chunks(2) {
                let v = &l.values[kv[1] as usize];
                let jv = if let Some(s) = &v.string_value {
                    json!(s)
                } else if let Some(d) = v.double_value {
                    json!(d)
                } else if let Some(x) = v.float_value {
                    json!(f64::from(x))
                } else if let Some(b) = v.bool_value {
                    json!(b)
                } else if let Some(i) = v.int_value.or(v.sint_value) {
                    json!(i)
                } else {
                    json!(v.uint_value.expect("some value"))
                };
                props.insert(l.keys[kv[0] as usize].clone(), jv);
            }
            out.push(Feat { layer: l.name.clone(), props, px: (zz(f.geometry[1]), zz(f.geometry[2])) });
        }
    }
    out
}

fn served_tile(sim: &Sim, tileset: &str) -> Vec<Feat> {
    let (s, b) = sim.get(&format!("/maps/vtp/{tileset}/2/{}/{}/{}?{}", TILE.z, TILE.x, TILE.y, tok()));
    assert_eq!(s, 200, "{tileset}");
    decode(&b)
}

/// The SDK's result of one call, failing the test with the SDK's own traceback when it raised.
fn result<'a>(out: &'a Value, call: &str) -> &'a Value {
    let r = &out[call];
    assert_eq!(r["ok"], true, "{call} failed: {}\n{}", r["error"], r["trace"].as_str().unwrap_or(""));
    &r["result"]
}

/// id → properties of a GeoJSON FeatureCollection's features.
fn by_id(fc: &Value) -> BTreeMap<String, Map<String, Value>> {
    fc["features"]
        .as_array()
        .expect("features")
        .iter()
        .map(|f| {
            let p = f["properties"].as_object().expect("properties").clone();
            (p["id"].to_string(), p)
        })
        .collect()
}

fn expected(feats: &[Feat], keep: impl Fn(&Feat) -> bool) -> BTreeMap<String, Map<String, Value>> {
    feats.iter().filter(|f| keep(f)).map(|f| (f.id().to_string(), f.props.clone())).collect()
}

/// Compares the SDK's features with the served tile's, id by id, properties included.
fn same_features(
    call: &str,
    got: &BTreeMap<String, Map<String, Value>>,
    want: &BTreeMap<String, Map<String, Value>>,
) {
    assert!(!want.is_empty(), "{call}: the tile has something to find");
    let g: BTreeSet<&String> = got.keys().collect();
    let w: BTreeSet<&String> = want.keys().collect();
    let only_sdk: Vec<_> = g.difference(&w).take(5).collect();
    let only_tile: Vec<_> = w.difference(&g).take(5).map(|id| (id, want[*id].clone())).collect();
    assert!(
        only_sdk.is_empty() && only_tile.is_empty(),
        "{call}: {} vs {}: only SDK {only_sdk:?}, only tile {only_tile:?}",
        g.len(),
        w.len()
    );
    for (id, p) in want {
        assert_eq!(&got[id], p, "{call}: properties of {id}");
    }
}

/// URLs carry a time-dependent expiry: compare them without their query.
fn strip_queries(v: &Value) -> Value {
    match v {
        Value::String(s) if s.starts_with("http") => json!(s.split('?').next().unwrap_or(s)),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), strip_queries(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(strip_queries).collect()),
        v => v.clone(),
    }
}

/// Initial great-circle bearing in degrees (-180..180), as turfpy's `bearing`.
fn bearing(from: (f64, f64), to: (f64, f64)) -> f64 {
    let (l1, p1, l2, p2) = (from.0.to_radians(), from.1.to_radians(), to.0.to_radians(), to.1.to_radians());
    let y = (l2 - l1).sin() * p2.cos();
    let x = p1.cos() * p2.sin() - p1.sin() * p2.cos() * (l2 - l1).cos();
    y.atan2(x).to_degrees()
}

fn run_sdk(py: &Path, sim: &Sim, input: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (dir.path().join("in.json"), dir.path().join("out.json"));
    std::fs::write(&inp, input.to_string()).unwrap();
    let sdk_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let o = Command::new(py)
        .arg(sdk_dir.join("conformance.py"))
        .args([&inp, &out])
        .env("PYTHONPATH", &sdk_dir)
        .env("MLY_SIM_URL", &sim.url)
        // The SDK logs every request to stdout at INFO.
        .env("LOG_LEVEL", "ERROR")
        .output()
        .expect("the SDK script runs");
    assert!(
        o.status.success(),
        "conformance.py failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

#[test]
fn the_official_sdk_runs_unmodified_against_the_simulator() {
    let py = match sdk_python() {
        Ok(p) => p,
        Err(why) => return skip(&why),
    };
    let sim = Sim::start(&[]);
    let e = f64::from(EXTENT);
    let (west, north) = TILE.pixel_to_lonlat(0.5, 0.5, EXTENT);
    let (east, south) = TILE.pixel_to_lonlat(e - 0.5, e - 0.5, EXTENT);
    let point = TILE.pixel_to_lonlat(e / 2.0, e / 2.0, EXTENT);
    let b = TILE.bounds();
    let bq = format!("{},{},{},{}", b.west, b.south, b.east, b.north);
    let with_dets = graph(&sim, &format!("/images?bbox={bq}&fields=detections,width,height&limit=500"));
    let image = with_dets["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| !i["detections"]["data"].as_array().unwrap().is_empty())
        .expect("an image with detections")
        .clone();
    let image_id = image["id"].as_str().unwrap();
    let feats = graph(&sim, &format!("/map_features?bbox={bq}&limit=1"));
    let feature_id = feats["data"][0]["id"].as_str().unwrap();
    let input = json!({
        "token": SIM_TOKEN,
        "bbox": {"west": west, "south": south, "east": east, "north": north},
        "point": [point.0, point.1],
        "image_id": image_id,
        "feature_id": feature_id,
    });
    let out = run_sdk(&py, &sim, &input);
    assert_eq!(out["sdk_version"], SDK.split("==").nth(1).unwrap());

    let public = served_tile(&sim, "mly1_public");
    let images: Vec<Feat> = public.iter().filter(|f| f.layer == "image").cloned().collect();
    // images_in_bbox: the tile's images inside the bbox, with their tile properties.
    // The SDK always applies its image_type filter, and anything but "pano" keeps flat images
    // only (`filters["image_type"] is not None or ... != "all"` is always true): panoramas are
    // missing from images_in_bbox against the real API too.
    same_features(
        "images_in_bbox",
        &by_id(result(&out, "images_in_bbox")),
        &expected(&images, |f| f.inside() && f.props["is_pano"] == false),
    );
    // sequences_in_bbox: every sequence piece of the tile (the SDK does not clip sequences).
    let mut got: Vec<String> = result(&out, "sequences_in_bbox")["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["properties"]["id"].to_string())
        .collect();
    // The same image_type filter drops panorama sequences.
    let mut want: Vec<String> = public
        .iter()
        .filter(|f| f.layer == "sequence" && f.props["is_pano"] == false)
        .map(|f| f.id().to_string())
        .collect();
    got.sort_unstable();
    want.sort_unstable();
    assert!(!want.is_empty());
    assert_eq!(got, want, "sequences_in_bbox");
    // Map features of both tilesets inside the bbox.
    let points = served_tile(&sim, "mly_map_feature_point");
    same_features(
        "map_feature_points_in_bbox",
        &by_id(result(&out, "map_feature_points_in_bbox")),
        &expected(&points, Feat::inside),
    );
    let signs = served_tile(&sim, "mly_map_feature_traffic_sign");
    same_features(
        "traffic_signs_in_bbox",
        &by_id(result(&out, "traffic_signs_in_bbox")),
        &expected(&signs, Feat::inside),
    );
    // get_image_close_to without filters: the whole tile holding the point.
    same_features(
        "get_image_close_to",
        &by_id(result(&out, "get_image_close_to")),
        &expected(&images, |_| true),
    );
    // get_image_looking_at: panoramas, and images whose compass points within 50° of the point.
    let looking = |f: &Feat| {
        if f.props["is_pano"] == true {
            return true;
        }
        let angle = f.props["compass_angle"].as_f64().unwrap();
        let at = TILE.pixel_to_lonlat(f.px.0 as f64, f.px.1 as f64, EXTENT);
        let diff = (bearing(at, point) - angle).abs() % 360.0;
        angle >= 0.0 && !(50.0..=310.0).contains(&diff)
    };
    let got = by_id(result(&out, "get_image_looking_at"));
    let mut want = expected(&images, looking);
    // Exactly on the 50° boundary the SDK's and our float arithmetic may disagree: leave those out.
    let borderline: BTreeSet<String> = images
        .iter()
        .filter(|f| {
            let angle = f.props["compass_angle"].as_f64().unwrap_or(0.0);
            let at = TILE.pixel_to_lonlat(f.px.0 as f64, f.px.1 as f64, EXTENT);
            let diff = (bearing(at, point) - angle).abs() % 360.0;
            (diff - 50.0).abs() < 1e-6 || (diff - 310.0).abs() < 1e-6
        })
        .map(|f| f.id().to_string())
        .collect();
    want.retain(|id, _| !borderline.contains(id));
    let got: BTreeMap<_, _> = got.into_iter().filter(|(id, _)| !borderline.contains(id)).collect();
    same_features("get_image_looking_at", &got, &want);
    assert!(want.len() < images.len(), "looking_at filters");

    // image_from_key: every image field the SDK knows, as the Graph API answers them. The SDK
    // drops the geometry (its bug), so only the properties are compared.
    let fields = "id,altitude,atomic_scale,camera_parameters,camera_type,captured_at,compass_angle,computed_altitude,computed_compass_angle,computed_geometry,computed_rotation,creator,exif_orientation,geometry,height,make,model,thumb_256_url,thumb_1024_url,thumb_2048_url,thumb_original_url,merge_cc,mesh,quality_score,sequence,sfm_cluster,width";
    let mut want = graph(&sim, &format!("/{image_id}/?fields={fields}"));
    want.as_object_mut().unwrap().remove("geometry");
    let got = &result(&out, "image_from_key")["features"]["properties"];
    assert_eq!(strip_queries(got), strip_queries(&want), "image_from_key");
    let mut want = graph(
        &sim,
        &format!(
            "/{feature_id}/?fields=id,first_seen_at,last_seen_at,object_value,object_type,geometry,images"
        ),
    );
    want.as_object_mut().unwrap().remove("geometry");
    assert_eq!(&result(&out, "feature_from_key")["features"]["properties"], &want, "feature_from_key");

    // Detections: id, value, created_at and the base64 geometry of each, at the image's position.
    for (call, id) in
        [("get_detections_with_image_id", image_id), ("get_detections_with_map_feature_id", feature_id)]
    {
        let want = graph(&sim, &format!("/{id}/detections/?fields=id,created_at,geometry,image,value"));
        let want: BTreeMap<String, &Value> = want["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["id"].as_str().unwrap().to_string(), d))
            .collect();
        assert!(!want.is_empty(), "{call}: {id} has detections");
        let got = result(&out, call)["features"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{call}");
        for f in got {
            let p = &f["properties"];
            let d = want
                .get(p["id"].as_str().unwrap())
                .unwrap_or_else(|| panic!("{call}: unknown detection {p}"));
            assert_eq!(
                (&p["value"], &p["created_at"], &p["pixel_geometry"]),
                (&d["value"], &d["created_at"], &d["geometry"]),
                "{call}"
            );
            assert_eq!(f["geometry"]["coordinates"], d["image"]["geometry"]["coordinates"], "{call}");
        }
    }

    // image_thumbnail: a URL on the simulator, then the JPEG itself, 256 px wide.
    let t = result(&out, "image_thumbnail");
    assert!(t["url"].as_str().unwrap().starts_with(&format!("{}/m1/v/t6/", sim.url)), "{t}");
    assert_eq!((t["status"].as_u64(), t["content_type"].as_str()), (Some(200), Some("image/jpeg")));
    let jpeg: Vec<u8> = (0..t["jpeg_hex"].as_str().unwrap().len() / 2)
        .map(|i| u8::from_str_radix(&t["jpeg_hex"].as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a baseline JPEG");
    let size = (
        u16::from_be_bytes([jpeg[sof + 7], jpeg[sof + 8]]),
        u16::from_be_bytes([jpeg[sof + 5], jpeg[sof + 6]]),
    );
    let (w, h) = (image["width"].as_f64().unwrap(), image["height"].as_f64().unwrap());
    assert_eq!(size, (256, (256.0 * h / w).round() as u16));
}
