//! Golden bytes of the simulator: FNV-1a hashes of what it serves over HTTP for fixed seeds
//! (tiles of every tileset at z14 and below, two epochs, with and without the render buffer and the
//! real fixture; Graph JSON answers of every route). A refactoring of `mly-sim` must keep every
//! value: the world, the encoders and the Graph rendering are part of what tests and benchmarks
//! measure against. A deliberate change of the world updates the table (run with `--nocapture`
//! to print the new values).
//!
//! Not hashed: anything that depends on the clock or the port (signed thumbnail, mesh and sfm URLs;
//! `paging.next` carries the simulator's address, which is replaced by `SIM` first) and the random
//! `fbtrace_id` of error bodies (removed first).

mod common;

use common::*;
use mly_contract::hash::fnv1a;
use mly_contract::tiles::TileId;
use serde_json::Value;

fn tok() -> String {
    format!("access_token={}", SIM_TOKEN.replace('|', "%7C"))
}

/// (status, body) of a GET with the token appended.
fn get(sim: &Sim, path_and_query: &str) -> (u16, Vec<u8>) {
    let sep = if path_and_query.contains('?') { '&' } else { '?' };
    sim.get(&format!("{path_and_query}{sep}{}", tok()))
}

fn tile_path(ts: &str, t: TileId) -> String {
    format!("/maps/vtp/{ts}/2/{}/{}/{}", t.z, t.x, t.y)
}

/// The Graph answer as JSON, with the run-dependent parts normalised (see the module comment).
fn graph(sim: &Sim, path_and_query: &str) -> (u16, Value) {
    let (s, b) = get(sim, path_and_query);
    let text = String::from_utf8_lossy(&b).replace(&sim.url, "SIM");
    let mut v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path_and_query}: not JSON ({e}): {text}"));
    if let Some(e) = v.get_mut("error").and_then(Value::as_object_mut) {
        e.remove("fbtrace_id");
    }
    (s, v)
}

/// Collects `name -> hash` rows and compares them with the recorded table at the end.
struct Golden {
    rows: Vec<(String, u64)>,
}

impl Golden {
    fn bytes(&mut self, name: &str, status: u16, body: &[u8]) {
        let mut b = status.to_be_bytes().to_vec();
        b.extend_from_slice(body);
        self.rows.push((name.to_string(), fnv1a(&b)));
    }

    fn tile(&mut self, sim: &Sim, name: &str, ts: &str, t: TileId) {
        let (s, b) = get(sim, &tile_path(ts, t));
        assert!(s == 200, "{name}: {s}");
        self.bytes(name, s, &b);
    }

    fn json(&mut self, sim: &Sim, name: &str, path_and_query: &str) -> Value {
        self.json_status(sim, name, path_and_query, 200)
    }

    fn json_status(&mut self, sim: &Sim, name: &str, path_and_query: &str, want: u16) -> Value {
        let (s, v) = graph(sim, path_and_query);
        assert_eq!(s, want, "{name}: {v}");
        if want == 200
            && let Some(data) = v.get("data").and_then(Value::as_array)
        {
            assert!(!data.is_empty(), "{name}: no data");
        }
        self.bytes(name, s, v.to_string().as_bytes());
        v
    }

    fn check(self, want: &[(&str, u64)]) {
        let mut bad = Vec::new();
        for (name, got) in &self.rows {
            println!("        (\"{name}\", 0x{got:016x}),");
            match want.iter().find(|(n, _)| n == name) {
                Some((_, w)) if w == got => {}
                Some((_, w)) => bad.push(format!("{name}: got 0x{got:016x}, recorded 0x{w:016x}")),
                None => bad.push(format!("{name}: not recorded")),
            }
        }
        for (name, _) in want {
            if !self.rows.iter().any(|(n, _)| n == name) {
                bad.push(format!("{name}: recorded but not produced"));
            }
        }
        assert!(bad.is_empty(), "served bytes changed:\n{}", bad.join("\n"));
    }
}

/// Image fields whose values do not depend on the clock.
const IMAGE_FIELDS: &str = "id,altitude,atomic_scale,camera_parameters,camera_type,captured_at,compass_angle,\
computed_altitude,computed_compass_angle,computed_geometry,computed_rotation,creator,exif_orientation,geometry,\
height,width,is_pano,make,model,merge_cc,organization,quality_score,sequence";

const FEATURE_FIELDS: &str =
    "id,aligned_direction,first_seen_at,last_seen_at,object_value,object_type,geometry,images";

const DETECTION_FIELDS: &str = "id,created_at,geometry,value,image,map_feature";

fn bbox_around(t: TileId) -> String {
    // A bbox of 0.008 x 0.004 deg in the middle of the tile (0.000032 deg2).
    let b = t.bounds();
    let (lon, lat) = ((b.west + b.east) / 2.0, (b.south + b.north) / 2.0);
    format!("{},{},{},{}", lon - 0.004, lat - 0.002, lon + 0.004, lat + 0.002)
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_else(|| panic!("no {ptr} in {v}"))
}

#[test]
fn served_bytes_stay_the_same_for_fixed_seeds() {
    let mut g = Golden { rows: Vec::new() };
    let suburb = TileId::containing(14, 13.06, 55.6);
    let town = TileId::containing(14, 13.2, 55.7);

    // Tiles: every tileset at two epochs, low zooms, without the render buffer.
    for epoch in ["0", "3"] {
        let sim = Sim::start_bare(&["--seed", "11", "--epoch", epoch], None);
        for ts in
            ["mly1_public", "mly1_computed_public", "mly_map_feature_point", "mly_map_feature_traffic_sign"]
        {
            g.tile(&sim, &format!("e{epoch} {ts} suburb"), ts, suburb);
        }
        g.tile(&sim, &format!("e{epoch} mly1_public town"), "mly1_public", town);
        for z in [12u8, 9, 5] {
            let t = TileId::containing(z, 13.06, 55.6);
            g.tile(&sim, &format!("e{epoch} mly1_public z{z}"), "mly1_public", t);
            g.tile(&sim, &format!("e{epoch} mly1_computed_public z{z}"), "mly1_computed_public", t);
        }
    }
    let sim = Sim::start_bare(&["--seed", "11", "--no-render-buffer"], None);
    g.tile(&sim, "no-buffer mly1_public suburb", "mly1_public", suburb);
    g.tile(&sim, "no-buffer mly_map_feature_point suburb", "mly_map_feature_point", suburb);
    drop(sim);

    // The real fixture tile and its synthetic neighbour.
    let sim = Sim::start(&["--seed", "11", "--epoch", "2"]);
    let fx = TileId::new(14, 8574, 5735).unwrap();
    let east = TileId::new(14, 8575, 5735).unwrap();
    g.tile(&sim, "fixture mly1_public", "mly1_public", fx);
    g.tile(&sim, "fixture mly1_computed_public", "mly1_computed_public", fx);
    g.tile(&sim, "fixture east mly1_public", "mly1_public", east);
    g.json(
        &sim,
        "fixture images bbox",
        &format!("/images?bbox={}&limit=20&fields={IMAGE_FIELDS}", bbox_around(fx)),
    );
    drop(sim);

    // Graph answers of every route.
    let sim = Sim::start_bare(&["--seed", "11", "--epoch", "3"], None);
    let bbox = bbox_around(suburb);
    let imgs = g.json(&sim, "images bbox", &format!("/images?bbox={bbox}&limit=50&fields={IMAGE_FIELDS}"));
    let data = imgs["data"].as_array().expect("data");
    assert!(data.len() >= 10, "{} images", data.len());
    let img = str_at(&data[0], "/id").to_string();
    let seq = str_at(&data[0], "/sequence").to_string();
    let creator = str_at(&data[0], "/creator/id").to_string();
    let username = str_at(&data[0], "/creator/username").to_string();
    let ids: Vec<&str> = data.iter().take(7).map(|d| str_at(d, "/id")).collect();
    g.json(&sim, "multi ids", &format!("/?ids={}&fields=id,captured_at,geometry,sequence", ids.join(",")));
    g.json(&sim, "user", &format!("/{creator}?fields=id,username"));
    g.json(&sim, "image_ids", &format!("/image_ids?sequence_id={seq}"));
    let page =
        g.json(&sim, "sequence page 1", &format!("/images?sequence_ids={seq}&limit=5&fields=id,captured_at"));
    let after = str_at(&page, "/paging/cursors/after").to_string();
    g.json(
        &sim,
        "sequence page 2",
        &format!("/images?sequence_ids={seq}&limit=5&after={after}&fields=id,captured_at"),
    );
    g.json(
        &sim,
        "images filters",
        &format!("/images?bbox={bbox}&is_pano=false&start_captured_at=2016-01-01&fields=id"),
    );
    g.json(
        &sim,
        "creator search",
        &format!("/images?creator_username={username}&limit=4&fields=id,captured_at"),
    );
    let feats =
        g.json(&sim, "map_features bbox", &format!("/map_features?bbox={bbox}&fields={FEATURE_FIELDS}"));
    let feat = str_at(&feats, "/data/0/id").to_string();
    // An image with detections: one the feature was seen in.
    let seen = str_at(&feats, "/data/0/images/data/0/id").to_string();
    g.json(&sim, "image entity", &format!("/{seen}?fields={IMAGE_FIELDS},detections.id,detections.value"));
    g.json(&sim, "image detections", &format!("/{seen}/detections?fields={DETECTION_FIELDS}"));
    g.json(
        &sim,
        "map_features values",
        &format!("/map_features?bbox={bbox}&object_values=regulatory--*&fields=id,object_value"),
    );
    g.json(
        &sim,
        "feature entity",
        &format!("/{feat}?fields={FEATURE_FIELDS},detections.value,detections.image"),
    );
    g.json(&sim, "feature detections", &format!("/{feat}/detections?fields={DETECTION_FIELDS}"));
    g.json_status(&sim, "not found", "/12345?fields=id", 400);
    g.json_status(&sim, "unknown field", &format!("/{img}?fields=id,bogus"), 400);
    g.json_status(&sim, "too many ids", &format!("/?ids={}", vec!["1"; 51].join(",")), 400);
    g.json_status(&sim, "bbox too large", "/images?bbox=13,55,13.2,55.2", 500);
    drop(sim);

    g.check(GOLDEN);
}

/// Recorded with mly-sim before it was split into one-concept modules.
const GOLDEN: &[(&str, u64)] = &[
    ("e0 mly1_public suburb", 0xbe7d5c405b20b0c3),
    ("e0 mly1_computed_public suburb", 0xbbe58cac05f7c918),
    ("e0 mly_map_feature_point suburb", 0xb1df9fdcd9f99dc1),
    ("e0 mly_map_feature_traffic_sign suburb", 0xb24b957558be96cd),
    ("e0 mly1_public town", 0x0831c007b4ea1c15),
    ("e0 mly1_public z12", 0xa4591472c769178d),
    ("e0 mly1_computed_public z12", 0x983f59e3adf0f26b),
    ("e0 mly1_public z9", 0x06734246bccd3fea),
    ("e0 mly1_computed_public z9", 0x36d661b4b8b6eed3),
    ("e0 mly1_public z5", 0xe7f4943984f096c0),
    ("e0 mly1_computed_public z5", 0xe4f4326383967a12),
    ("e3 mly1_public suburb", 0xa4286e4c5aa371bc),
    ("e3 mly1_computed_public suburb", 0x6bbcff58465672c6),
    ("e3 mly_map_feature_point suburb", 0xd84bfd483b2d623a),
    ("e3 mly_map_feature_traffic_sign suburb", 0xd37fac4c77e170a4),
    ("e3 mly1_public town", 0x0831c007b4ea1c15),
    ("e3 mly1_public z12", 0x191a94cd678df23a),
    ("e3 mly1_computed_public z12", 0x4e82e388024c32e7),
    ("e3 mly1_public z9", 0xc01fdf221f0a8c01),
    ("e3 mly1_computed_public z9", 0x0a04f7ddb024860e),
    ("e3 mly1_public z5", 0x3946e7bcb22b2b39),
    ("e3 mly1_computed_public z5", 0xd4147275dddaa031),
    ("no-buffer mly1_public suburb", 0x906b95263b26fb74),
    ("no-buffer mly_map_feature_point suburb", 0xff0c29ae89118d6d),
    ("fixture mly1_public", 0x2de3aeff3608e73b),
    ("fixture mly1_computed_public", 0xc000bcb0cb9a0357),
    ("fixture east mly1_public", 0xe30374d8b9a99b96),
    ("fixture images bbox", 0xc9ca3d104d659929),
    ("images bbox", 0x9c0e95c681038f25),
    ("multi ids", 0x3b4b186ce251ad82),
    ("user", 0x41ed6b3f02d0c98c),
    ("image_ids", 0x3611fb8e2220c05d),
    ("sequence page 1", 0x7c65e757cd6ef704),
    ("sequence page 2", 0xf1bd23cef4abea26),
    ("images filters", 0x58448aaeae926a65),
    ("creator search", 0x8e9f4df19972d15d),
    ("map_features bbox", 0x7710f08bd0cf51a1),
    ("image entity", 0xaa7d1e87be04b176),
    ("image detections", 0x0b4e220c92fb42a2),
    ("map_features values", 0x9b7adec76d6a4062),
    ("feature entity", 0xd91c92284207628c),
    ("feature detections", 0x68ead4a8018f360e),
    ("not found", 0x3f2109f2a5e2c5b3),
    ("unknown field", 0xd028f8c68f24c7d0),
    ("too many ids", 0x9bce2ad1bb5661d9),
    ("bbox too large", 0x4857268a4380c6ca),
];
