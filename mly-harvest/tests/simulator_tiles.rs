//! The simulator's tiles against the live service's known behaviour (issue 10 items 3 and 6), and
//! the harvester against the render buffer (issue 11 item 5), all over loopback HTTP:
//! - the tile server takes the token only as `?access_token=` (§13.4);
//! - `mly1_computed_public` carries computed positions plus `quality_score`, `foot`, `creator_id` (§13.6);
//! - the `sequence` layer at z6–13 and the `overview` layer at z0–5, generalised from z14;
//! - the render buffer (§13.5): on by default, `--no-render-buffer` turns it off; the harvester's
//!   tables are the same either way and the copies cost no Graph call;
//! - independence: no file outside the repository is read unless `--fixtures` says so, and the
//!   simulator has its own fixture reader.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use geozero::mvt::{Message, Tile, tile};
use mly_contract::Tileset;
use mly_contract::tiles::TileId;
use mly_core::mvt;
use serde_json::Value;

/// A suburban Malmö tile: thousands of images, quick to generate.
const SUBURB_TILE: TileId = TileId { z: 14, x: 8785, y: 5134 };
/// Malmö's dense core: panoramas, plaza walks on foot, organizations.
const CORE_TILE: TileId = TileId { z: 14, x: 8783, y: 5134 };
/// Two adjacent outer-suburb Malmö tiles (14/8789/5133 and 14/8790/5133), some hundred images each.
const OUTSKIRTS: &str = "13.135,55.598,13.145,55.600";

fn tok_q() -> String {
    format!("access_token={}", SIM_TOKEN.replace('|', "%7C"))
}

fn tile_url(sim: &Sim, ts: &str, t: TileId) -> String {
    format!("{}/maps/vtp/{ts}/2/{}/{}/{}?{}", sim.url, t.z, t.x, t.y, tok_q())
}

fn get_tile(sim: &Sim, ts: &str, t: TileId) -> Tile {
    let (status, body) = http_get(&tile_url(sim, ts, t), &[]);
    assert_eq!(status, 200, "{ts} {t}: {}", String::from_utf8_lossy(&body));
    Tile::decode(body.as_slice()).expect("an MVT")
}

fn graph(sim: &Sim, path: &str) -> Value {
    let auth = format!("OAuth {SIM_TOKEN}");
    let (status, body) = http_get(&format!("{}{path}", sim.url), &[("Authorization", auth.as_str())]);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("JSON")
}

fn zz(v: u32) -> i64 {
    i64::from((v >> 1) as i32 ^ -((v & 1) as i32))
}

/// Every vertex of a feature's geometry, in tile pixels (MoveTo/LineTo only; no polygons here).
fn vertices(f: &tile::Feature) -> Vec<(i64, i64)> {
    let (mut x, mut y, mut i, mut out) = (0i64, 0i64, 0usize, Vec::new());
    while i < f.geometry.len() {
        let (id, count) = (f.geometry[i] & 7, (f.geometry[i] >> 3) as usize);
        i += 1;
        if id == 7 {
            continue;
        }
        for _ in 0..count {
            x += zz(f.geometry[i]);
            y += zz(f.geometry[i + 1]);
            out.push((x, y));
            i += 2;
        }
    }
    out
}

/// A feature's property `key`, as JSON (int, double, bool or string).
fn prop(layer: &tile::Layer, f: &tile::Feature, key: &str) -> Option<Value> {
    let k = layer.keys.iter().position(|k| k == key)? as u32;
    let pair = f.tags.chunks(2).find(|p| p[0] == k)?;
    let v = &layer.values[pair[1] as usize];
    Some(if let Some(i) = v.int_value {
        Value::from(i)
    } else if let Some(d) = v.double_value {
        Value::from(d)
    } else if let Some(b) = v.bool_value {
        Value::from(b)
    } else {
        Value::from(v.string_value.clone().unwrap_or_default())
    })
}

/// Layer key → MVT value kinds seen.
fn kinds(layer: &tile::Layer) -> BTreeMap<String, BTreeSet<&'static str>> {
    let mut out: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for f in &layer.features {
        for pair in f.tags.chunks(2) {
            let v = &layer.values[pair[1] as usize];
            let kind = match v {
                tile::Value { string_value: Some(_), .. } => "string",
                tile::Value { double_value: Some(_), .. } => "double",
                tile::Value { int_value: Some(_), .. } => "int",
                tile::Value { bool_value: Some(_), .. } => "bool",
                _ => "other",
            };
            out.entry(layer.keys[pair[0] as usize].clone()).or_default().insert(kind);
        }
    }
    out
}

fn layer<'a>(t: &'a Tile, name: &str) -> &'a tile::Layer {
    t.layers.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no layer {name}"))
}

#[test]
fn the_tile_server_takes_the_token_only_as_access_token() {
    let sim = Sim::start(&[]);
    let path = format!("/maps/vtp/mly1_public/2/14/{}/{}", SUBURB_TILE.x, SUBURB_TILE.y);
    let auth = format!("OAuth {SIM_TOKEN}");
    // Only in the header, as the SDK once did (SDK #124): 403, like the live tile server.
    let (status, body) = http_get(&format!("{}{path}", sim.url), &[("Authorization", auth.as_str())]);
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(!String::from_utf8_lossy(&body).contains(SIM_TOKEN));
    // No token at all: 403 too.
    assert_eq!(sim.get(&path).0, 403);
    // In the query (with or without the header): the tile.
    let (status, body) = http_get(&format!("{}{path}?{}", sim.url, tok_q()), &[]);
    assert_eq!(status, 200);
    assert!(!body.is_empty());
    let (status, _) =
        http_get(&format!("{}{path}?{}", sim.url, tok_q()), &[("Authorization", auth.as_str())]);
    assert_eq!(status, 200);
    // A token the simulator never issued, in the query: refused like the Graph API refuses it.
    let (status, _) = sim.get(&format!("{path}?access_token=MLY%7C1%7C0123456789abcdef0123456789abcdef"));
    assert_eq!(status, 400);
    // The Graph API still takes the header.
    assert!(graph(&sim, "/images?bbox=13.04,55.596,13.041,55.597&fields=id")["data"].is_array());
    let stats = sim.stats();
    assert_eq!(stats["statuses"]["403"], 2, "{stats}");
}

#[test]
fn computed_tiles_carry_computed_positions_quality_score_foot_and_creator() {
    let sim = Sim::start(&[]);
    let t = get_tile(&sim, "mly1_computed_public", CORE_TILE);
    let img = layer(&t, "image");
    let k = kinds(img);
    for (key, kind) in [
        ("captured_at", "int"),
        ("compass_angle", "double"),
        ("creator_id", "int"),
        ("foot", "bool"),
        ("id", "int"),
        ("is_pano", "bool"),
        ("organization_id", "int"),
        ("quality_score", "double"),
        ("sequence_id", "string"),
    ] {
        assert_eq!(k.get(key), Some(&BTreeSet::from([kind])), "image.{key}: {k:?}");
    }
    assert_eq!(k.len(), 9, "{k:?}");
    let seq = kinds(layer(&t, "sequence"));
    assert!(seq.contains_key("foot") && seq.contains_key("quality_score"), "{seq:?}");
    // The core's plaza walks are on foot; drives are not.
    let feet: Vec<bool> =
        img.features.iter().filter_map(|f| prop(img, f, "foot").and_then(|v| v.as_bool())).collect();
    assert!(feet.iter().any(|f| *f) && feet.iter().any(|f| !*f));
    // The public tileset keeps the 2024 schema (no foot, no quality_score).
    let public = get_tile(&sim, "mly1_public", CORE_TILE);
    let pk = kinds(layer(&public, "image"));
    assert!(!pk.contains_key("foot") && !pk.contains_key("quality_score"), "{pk:?}");

    // Positions are the Graph API's computed_geometry (quantised to the tile), quality its quality_score.
    let decoded = mvt::decode_tile(Tileset::ComputedPublic, CORE_TILE, &t.encode_to_vec()).expect("decodes");
    let sample: Vec<_> = decoded.images.iter().step_by(decoded.images.len() / 40 + 1).collect();
    let ids: Vec<String> = sample.iter().map(|i| i.id.0.to_string()).collect();
    let v = graph(
        &sim,
        &format!("/?ids={}&fields=id,computed_geometry,geometry,quality_score,creator", ids.join(",")),
    );
    let quality: HashMap<i64, Option<f64>> = img
        .features
        .iter()
        .filter_map(|f| {
            Some((prop(img, f, "id")?.as_i64()?, prop(img, f, "quality_score").and_then(|q| q.as_f64())))
        })
        .collect();
    let mut moved = 0;
    for i in &sample {
        let g = &v[i.id.0.to_string()];
        let c = &g["computed_geometry"]["coordinates"];
        let (lon, lat) = (c[0].as_f64().expect("lon"), c[1].as_f64().expect("lat"));
        // One z14 pixel is about 0.34 m: 1e-5 degrees is well above the quantisation.
        assert!((lon - i.lon).abs() < 1e-5 && (lat - i.lat).abs() < 1e-5, "{}: {g}", i.id);
        let o = &g["geometry"]["coordinates"];
        if (o[0].as_f64().expect("lon") - lon).abs() > 1e-7 {
            moved += 1;
        }
        let q = (quality[&i.id.0], g["quality_score"].as_f64());
        assert!(
            matches!(q, (Some(a), Some(b)) if (a - b).abs() < 1e-12) || q == (None, None),
            "{}: {q:?}",
            i.id
        );
        assert_eq!(
            i.creator_id.map(|c| c.to_string()),
            g["creator"]["id"].as_str().map(str::to_string),
            "{g}"
        );
    }
    assert!(moved > 0, "computed positions differ from the original ones");
}

#[test]
fn low_zoom_sequence_and_overview_layers_generalise_the_z14_tiles() {
    // (Low zooms do not depend on the render buffer; without it the z14 tiles are quicker.)
    let sim = Sim::start(&["--no-render-buffer"]);
    // z12 draws every z14 tile under it: the same sequences with the same attributes.
    let z12 = TileId::containing(12, 13.06, 55.6);
    for ts in ["mly1_public", "mly1_computed_public"] {
        let low = get_tile(&sim, ts, z12);
        assert_eq!(low.layers.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["sequence"], "{ts}");
        let l = &low.layers[0];
        let mut want: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut z14_points: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        let keys =
            ["captured_at", "creator_id", "image_id", "is_pano", "organization_id", "foot", "quality_score"];
        for t in z12.descendants_at(14) {
            let (status, body) = http_get(&tile_url(&sim, ts, t), &[]);
            assert_eq!(status, 200);
            if body.is_empty() {
                continue;
            }
            let tile = Tile::decode(body.as_slice()).expect("MVT");
            let Some(seq) = tile.layers.iter().find(|l| l.name == "sequence") else { continue };
            for f in &seq.features {
                let id = prop(seq, f, "id").and_then(|v| v.as_str().map(str::to_string)).expect("id");
                let attrs: Vec<Value> = keys.iter().map(|k| prop(seq, f, k).unwrap_or(Value::Null)).collect();
                // A sequence crossing tiles has one line per tile; its attributes are the first tile's.
                want.entry(id.clone()).or_insert(attrs);
                let pts = z14_points.entry(id).or_default();
                pts.extend(vertices(f).iter().map(|&(x, y)| t.pixel_to_lonlat(x as f64, y as f64, 4096)));
            }
        }
        let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let z12_px = (z12.bounds().east - z12.bounds().west) / 4096.0;
        for f in &l.features {
            let id = prop(l, f, "id").and_then(|v| v.as_str().map(str::to_string)).expect("id");
            let attrs: Vec<Value> = keys.iter().map(|k| prop(l, f, k).unwrap_or(Value::Null)).collect();
            // Every vertex lies on (within two z12 pixels of) the sequence's z14 line.
            let pts = &z14_points[&id];
            for (x, y) in vertices(f) {
                let (lon, lat) = z12.pixel_to_lonlat(x as f64, y as f64, 4096);
                let near =
                    pts.iter().any(|(a, b)| (a - lon).abs() < 2.0 * z12_px && (b - lat).abs() < 2.0 * z12_px);
                assert!(near, "{ts} {id}: vertex ({lon}, {lat}) is on no z14 line of the sequence");
            }
            assert!(got.insert(id, attrs).is_none(), "{ts}: one feature per sequence");
        }
        assert!(got.len() > 20, "{ts}: {} sequences", got.len());
        // Attribute-equal except where a line crossing tiles reports another tile's first image quality.
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{ts}: the z14 sequences"
        );
        for (id, attrs) in &got {
            assert_eq!(attrs[..6], want[id][..6], "{ts} {id}");
        }
    }

    // z6: a sequence layer, drawn from a sample, each sequence one that exists.
    let z6 = TileId::containing(6, 13.0, 55.6);
    let t = get_tile(&sim, "mly1_public", z6);
    let l = layer(&t, "sequence");
    assert!(!l.features.is_empty());
    for f in l.features.iter().step_by(l.features.len() / 5 + 1) {
        let id = prop(l, f, "id").and_then(|v| v.as_str().map(str::to_string)).expect("id");
        let first = prop(l, f, "image_id").and_then(|v| v.as_i64()).expect("image_id");
        let v = graph(&sim, &format!("/image_ids?sequence_id={id}"));
        assert_eq!(v["data"][0]["id"], first.to_string(), "{id}");
    }

    // z5: the overview layer, points of real images of their sequence.
    let z5 = z6.parent().expect("z5");
    for ts in ["mly1_public", "mly1_computed_public"] {
        let t = get_tile(&sim, ts, z5);
        assert_eq!(t.layers.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["overview"], "{ts}");
        let l = &t.layers[0];
        let k: Vec<String> = kinds(l).into_keys().collect();
        assert_eq!(k, ["captured_at", "id", "is_pano", "sequence_id"], "{ts}");
        assert!(l.features.len() > 100, "{ts}: {}", l.features.len());
        let sample: Vec<&tile::Feature> = l.features.iter().step_by(l.features.len() / 20 + 1).collect();
        let ids: Vec<String> = sample.iter().map(|f| prop(l, f, "id").expect("id").to_string()).collect();
        let v = graph(&sim, &format!("/?ids={}&fields=id,captured_at,sequence,geometry", ids.join(",")));
        for f in sample {
            let id = prop(l, f, "id").expect("id").to_string();
            assert_eq!(v[&id]["sequence"], prop(l, f, "sequence_id").expect("sequence_id"), "{id}");
            assert_eq!(
                v[&id]["captured_at"].as_i64(),
                prop(l, f, "captured_at").and_then(|c| c.as_i64()),
                "{id}"
            );
            let (x, y) = vertices(f)[0];
            let (lon, lat) = z5.pixel_to_lonlat(x as f64, y as f64, 4096);
            let c = &v[&id]["geometry"]["coordinates"];
            let px = (z5.bounds().east - z5.bounds().west) / 4096.0;
            assert!((c[0].as_f64().expect("lon") - lon).abs() < 2.0 * px, "{id}");
            assert!((c[1].as_f64().expect("lat") - lat).abs() < 2.0 * px, "{id}");
        }
    }
    // Map-feature tilesets exist at z14 only.
    let (status, body) = http_get(&tile_url(&sim, "mly_map_feature_point", z12), &[]);
    assert_eq!((status, body.len()), (200, 0));
}

/// (id, pixel) of every point of layer `name`.
fn points(t: &Tile, name: &str) -> Vec<(i64, (i64, i64))> {
    let Some(l) = t.layers.iter().find(|l| l.name == name) else { return Vec::new() };
    l.features
        .iter()
        .map(|f| (prop(l, f, "id").and_then(|v| v.as_i64()).expect("id"), vertices(f)[0]))
        .collect()
}

fn inside(p: (i64, i64)) -> bool {
    (0..4096).contains(&p.0) && (0..4096).contains(&p.1)
}

#[test]
fn render_buffer_repeats_edge_records_in_the_neighbour_outside_its_extent() {
    let on = Sim::start(&[]);
    let off = Sim::start(&["--no-render-buffer"]);
    let n = 1u32 << 14;
    let around = |t: TileId| -> Vec<TileId> {
        let mut v = Vec::new();
        for dy in [-1i64, 0, 1] {
            for dx in [-1i64, 0, 1] {
                if (dx, dy) != (0, 0) {
                    let x = (i64::from(t.x) + dx).rem_euclid(i64::from(n)) as u32;
                    v.push(TileId { z: 14, x, y: (i64::from(t.y) + dy) as u32 });
                }
            }
        }
        v
    };
    for (ts, name) in
        [("mly1_public", "image"), ("mly1_computed_public", "image"), ("mly_map_feature_point", "point")]
    {
        let with = points(&get_tile(&on, ts, SUBURB_TILE), name);
        let without = points(&get_tile(&off, ts, SUBURB_TILE), name);
        // Without the buffer every point is inside; with it, the same inside points plus copies outside.
        assert!(without.iter().all(|(_, p)| inside(*p)), "{ts}");
        let own: Vec<_> = with.iter().filter(|(_, p)| inside(*p)).cloned().collect();
        assert_eq!(own, without, "{ts}: the tile's own records are unchanged");
        let copies: Vec<_> = with.iter().filter(|(_, p)| !inside(*p)).cloned().collect();
        assert!(!copies.is_empty(), "{ts}: no render-buffer copies");
        assert!(
            copies.iter().all(|(_, (x, y))| (-64..4096 + 65).contains(x) && (-64..4096 + 65).contains(y)),
            "{ts}: copies reach at most 64 px past the edge"
        );
        // Each copy is a record of exactly one neighbour, where it is inside; quantised to this tile.
        let mut home: HashMap<i64, (TileId, (i64, i64))> = HashMap::new();
        for nb in around(SUBURB_TILE) {
            for (id, p) in points(&get_tile(&off, ts, nb), name) {
                assert!(home.insert(id, (nb, p)).is_none(), "{ts}: {id} in two tiles");
            }
        }
        for (id, (x, y)) in &copies {
            let (nb, (hx, hy)) =
                home.get(id).unwrap_or_else(|| panic!("{ts}: copy {id} is no neighbour's record"));
            let (dx, dy) =
                (i64::from(nb.x) - i64::from(SUBURB_TILE.x), i64::from(nb.y) - i64::from(SUBURB_TILE.y));
            let (ex, ey) = (hx + dx * 4096, hy + dy * 4096);
            assert!(
                (x - ex).abs() <= 1 && (y - ey).abs() <= 1,
                "{ts} {id}: ({x},{y}) vs its home pixel ({ex},{ey})"
            );
        }
    }
}

#[test]
fn render_buffer_copies_leave_the_tables_alone_and_cost_no_graph_call() {
    let on = Sim::start(&[]);
    let off = Sim::start(&["--no-render-buffer"]);
    // The two tiles repeat each other's edge records.
    let (west, east) = (TileId { z: 14, x: 8789, y: 5133 }, TileId { z: 14, x: 8790, y: 5133 });
    let ids = |t: TileId, copies: bool| -> BTreeSet<i64> {
        points(&get_tile(&on, "mly1_public", t), "image")
            .into_iter()
            .filter(|(_, p)| inside(*p) != copies)
            .map(|(id, _)| id)
            .collect()
    };
    assert!(
        !ids(west, true).is_disjoint(&ids(east, false)),
        "no copy of the east tile's records in the west tile"
    );
    assert!(
        !ids(east, true).is_disjoint(&ids(west, false)),
        "no copy of the west tile's records in the east tile"
    );
    let (db_on, db_off) = (fresh_db("buffer_on"), fresh_db("buffer_off"));
    sync_ok(&run(&["sync", OUTSKIRTS], &harvest_env(&on, &db_on)));
    sync_ok(&run(&["sync", OUTSKIRTS], &harvest_env(&off, &db_off)));
    let sum = checksum(&db_on);
    assert_eq!(sum, checksum(&db_off), "a world with the render buffer harvests to the same tables");
    assert!(psql(&db_on, "SELECT count(*) FROM mapillary.images_live").parse::<u64>().expect("count") > 300);
    assert!(
        psql(&db_on, "SELECT count(*) FROM mapillary.map_features_live").parse::<u64>().expect("count") > 10
    );

    // Re-sync each database against the other simulator: every tile's bytes differ (no 304), the
    // copies appear or vanish, and nothing moves, changes or costs a Graph call.
    for (db, sim) in [(&db_off, &on), (&db_on, &off)] {
        let before = sim.stats();
        let out = sync_ok(&run(&["sync", OUTSKIRTS], &harvest_env(sim, db)));
        let after = sim.stats();
        let d =
            |k: &str| after["requests"][k].as_u64().expect("n") - before["requests"][k].as_u64().expect("n");
        let not_modified = |s: &Value| s["statuses"]["304"].as_u64().unwrap_or(0);
        // At least both coverage tiles come back whole (a feature tile without an edge record
        // reads the same with or without the buffer, and may answer 304).
        let read = d("tiles") - (not_modified(&after) - not_modified(&before));
        assert!(read >= 2, "tiles read again in full: {read}: {out}");
        assert_eq!((d("search"), d("entity")), (0, 0), "Graph calls on re-sync: {out}");
        assert!(out.contains("0 new, 0 changed, 0 deleted"), "{out}");
        assert_eq!(checksum(db), sum);
    }
}

#[test]
fn the_simulator_reads_no_file_unless_told_and_has_its_own_fixture_reader() {
    let zurich = TileId { z: 14, x: 8574, y: 5735 };
    let real = std::fs::read(fixtures().join("vespucci-mly1_public-14_8574_5735_2021.mvt")).expect("fixture");
    // Started elsewhere (no ../shared anywhere near) and without --fixtures: it serves, synthetically.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start_bare::<&str>(&[], Some(elsewhere.path()));
    let (status, body) = http_get(&tile_url(&sim, "mly1_public", zurich), &[]);
    assert_eq!(status, 200);
    assert!(!body.is_empty() && body != real, "without --fixtures the real tile is not served");
    let fixture_image = mvt::decode_tile(Tileset::Public, zurich, &real).expect("fixture").images[0].id.0;
    let (status, _) = http_get(
        &format!("{}/{fixture_image}?fields=id", sim.url),
        &[("Authorization", format!("OAuth {SIM_TOKEN}").as_str())],
    );
    assert_eq!(status, 400, "the real images are unknown without --fixtures");
    drop(sim);
    // With --fixtures, from the same place: the real tile, byte for byte.
    let sim = Sim::start_bare(
        &[std::ffi::OsStr::new("--fixtures"), fixtures().as_os_str()],
        Some(elsewhere.path()),
    );
    let (status, body) = http_get(&tile_url(&sim, "mly1_public", zurich), &[]);
    assert_eq!((status, body == real), (200, true));
    drop(sim);
    // Told a directory without the capture: one line naming it, not a silent synthetic world.
    let out = std::process::Command::new(bin())
        .args(["simulate", "--listen", "127.0.0.1:0", "--fixtures"])
        .arg(elsewhere.path())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--fixtures") && err.contains("vespucci-mly1_public-14_8574_5735_2021.mvt"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // The binary holds no path into the development checkout to read at run time.
    let binary = std::fs::read(bin()).expect("binary");
    let needle = format!("{}/../shared", repo_root().display());
    let needle = needle.as_bytes();
    assert!(!binary.windows(needle.len()).any(|w| w == needle), "the binary names the checkout's ../shared");
    // And the simulator's run-time code never decodes with the harvester's decoder (nor depends
    // on the harvester's crate at all).
    let manifest = std::fs::read_to_string(repo_root().join("mly-sim/Cargo.toml")).expect("manifest");
    assert!(!manifest.contains("mly-core"), "mly-sim depends on the harvester");
    let mut dirs = vec![repo_root().join("mly-sim/src")];
    let mut files = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("mly-sim/src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            files += 1;
            let src = std::fs::read_to_string(&path).expect("source");
            let runtime = src.split("#[cfg(test)]").next().unwrap_or("");
            assert!(
                !runtime.contains("mvt::decode")
                    && !runtime.contains("crate::mvt")
                    && !src.contains("mly_core"),
                "{} uses the harvester's decoder",
                path.display()
            );
        }
    }
    assert!(files > 10, "read {files} source files of mly-sim");
}
