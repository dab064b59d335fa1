//! The simulator over real HTTP on loopback: shapes, caps, auth errors, limits, faults.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use geozero::mvt::{Message, Tile, tile};
use mly_contract::tiles::TileId;
use serde_json::Value;

/// A suburban Zurich tile (the 2021 Vespucci fixture tile).
const CITY: (u32, u32) = (8574, 5735);
/// The dense core of Zurich (tens of thousands of images).
const CORE: (u32, u32) = (8580, 5737);

/// Raw GET: (status, lower-cased head, body bytes, whether the connection closed before a full answer).
fn raw_get(url: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, String::new(), buf);
    };
    let head = String::from_utf8_lossy(&buf[..end + 4]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, head, buf[end + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::trim))
}

fn tok() -> String {
    format!("access_token={}", SIM_TOKEN.replace('|', "%7C"))
}

fn tile_path(ts: &str, z: u8, x: u32, y: u32) -> String {
    format!("/maps/vtp/{ts}/2/{z}/{x}/{y}?{}", tok())
}

fn json(sim: &Sim, path_and_query: &str) -> (u16, Value) {
    let sep = if path_and_query.contains('?') { '&' } else { '?' };
    let (s, b) = sim.get(&format!("{path_and_query}{sep}{}", tok()));
    (
        s,
        serde_json::from_slice(&b)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&b))),
    )
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join(name)).unwrap()).unwrap()
}

/// A coarse JSON type name, to compare shapes.
fn jtype(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shape(v: &Value) -> BTreeMap<String, &'static str> {
    v.as_object().unwrap().iter().map(|(k, v)| (k.clone(), jtype(v))).collect()
}

/// Value kinds of a tile layer's properties, keyed by property name.
fn value_kinds(layer: &tile::Layer) -> BTreeMap<String, BTreeSet<&'static str>> {
    let mut out: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for f in &layer.features {
        for kv in f.tags.chunks(2) {
            let v = &layer.values[kv[1] as usize];
            let kind = if v.string_value.is_some() {
                "string"
            } else if v.double_value.is_some() || v.float_value.is_some() {
                "float"
            } else if v.bool_value.is_some() {
                "bool"
            } else {
                "int"
            };
            out.entry(layer.keys[kv[0] as usize].clone()).or_default().insert(kind);
        }
    }
    out
}

fn int_of(v: &tile::Value) -> Option<i64> {
    v.int_value.or(v.sint_value).or(v.uint_value.map(|u| u as i64))
}

/// (image id, pixel x, pixel y) of every image of a coverage tile (its own: the render buffer's
/// copies of the neighbours' images, outside [0, 4096), are left out).
fn tile_images(bytes: &[u8]) -> Vec<(i64, i64, i64)> {
    let t = Tile::decode(bytes).expect("tile decodes");
    let Some(layer) = t.layers.iter().find(|l| l.name == "image") else { return vec![] };
    let id_key = layer.keys.iter().position(|k| k == "id").unwrap() as u32;
    let zz = |v: u32| i64::from((v >> 1) as i32 ^ -((v & 1) as i32));
    layer
        .features
        .iter()
        .map(|f| {
            let vi = f.tags.chunks(2).find(|kv| kv[0] == id_key).unwrap()[1];
            let id = int_of(&layer.values[vi as usize]).unwrap();
            assert_eq!(f.geometry[0], 9, "one MoveTo");
            (id, zz(f.geometry[1]), zz(f.geometry[2]))
        })
        .filter(|(_, x, y)| (0..4096).contains(x) && (0..4096).contains(y))
        .collect()
}

fn get_tile(sim: &Sim, x: u32, y: u32) -> Vec<u8> {
    let (s, b) = sim.get(&tile_path("mly1_public", 14, x, y));
    assert_eq!(s, 200);
    b
}

/// The most populated of a few city tiles, with its images.
fn populated_tile(sim: &Sim) -> (TileId, Vec<(i64, i64, i64)>) {
    let mut best = None::<(TileId, Vec<(i64, i64, i64)>)>;
    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let t = TileId::new(14, CITY.0 + dx, CITY.1 + dy).unwrap();
        let imgs = tile_images(&get_tile(sim, t.x, t.y));
        if best.as_ref().is_none_or(|b| imgs.len() > b.1.len()) {
            best = Some((t, imgs));
        }
    }
    let best = best.unwrap();
    assert!(!best.1.is_empty(), "some city tile has images");
    best
}

fn bbox_q(b: &mly_contract::tiles::Bbox) -> String {
    format!("{},{},{},{}", b.west, b.south, b.east, b.north)
}

#[test]
fn listening_line_and_stats() {
    let sim = Sim::start(&[]);
    assert!(sim.url.starts_with("http://127.0.0.1:"));
    let s = sim.stats();
    for f in ["tiles", "search", "entity"] {
        assert_eq!(s["requests"][f], 0);
        assert_eq!(s["max_per_minute"][f], 0);
    }
    assert_eq!(s["throttled"], 0);
    get_tile(&sim, CITY.0, CITY.1);
    let _ = json(&sim, "/images?image_ids=1");
    let s = sim.stats();
    assert_eq!(s["requests"]["tiles"], 1);
    assert_eq!(s["requests"]["search"], 1);
    assert_eq!(s["requests"]["entity"], 0, "stats calls are not counted");
    assert_eq!(s["statuses"]["200"], 2);
    assert_eq!(s["max_per_minute"]["tiles"], 1);
}

#[test]
fn city_tile_matches_the_2024_fixture_schema_and_etag_works() {
    let sim = Sim::start(&[]);
    let url = format!("{}{}", sim.url, tile_path("mly1_public", 14, CORE.0, CORE.1));
    let (s, head, body) = raw_get(&url, &[]);
    assert_eq!(s, 200);
    assert!(tile_images(&body).len() > 20_000, "a city core is dense");
    assert_eq!(header(&head, "content-type"), Some("application/x-protobuf"));
    assert!(header(&head, "x-app-usage").unwrap().contains("\"call_count\":"));
    let ours = Tile::decode(body.as_slice()).unwrap();
    let real = Tile::decode(
        std::fs::read(fixtures().join("vespucci-mly1_public-14_unknown_2024.mvt")).unwrap().as_slice(),
    )
    .unwrap();
    let names = |t: &Tile| t.layers.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&real));
    for (o, r) in ours.layers.iter().zip(&real.layers) {
        assert_eq!(o.extent, r.extent);
        assert_eq!(o.version, r.version);
        let (ok, rk) = (value_kinds(o), value_kinds(r));
        for (key, kinds) in &ok {
            assert_eq!(Some(kinds), rk.get(key), "layer {} key {key}", o.name);
        }
    }
    // ETag / If-None-Match.
    let etag = header(&head, "etag").expect("etag").to_string();
    let (s2, _, body2) = raw_get(&url, &[]);
    assert_eq!((s2, &body2), (200, &body), "stable bytes");
    let (s3, head3, body3) = raw_get(&url, &[("If-None-Match", &etag)]);
    assert_eq!(s3, 304);
    assert!(body3.is_empty());
    assert_eq!(header(&head3, "etag"), Some(etag.as_str()));
    assert_eq!(sim.stats()["requests"]["tiles"], 3, "304 counts as a tile request");
    // Zoom rules and unknown tilesets.
    assert_eq!(sim.get(&tile_path("mly1_public", 15, CITY.0 * 2, CITY.1 * 2)).0, 404);
    assert_eq!(sim.get(&tile_path("nope", 14, CITY.0, CITY.1)).0, 404);
    let (s, b) = sim.get(&tile_path("mly1_public", 12, CITY.0 / 4, CITY.1 / 4));
    assert_eq!(s, 200);
    assert_eq!(
        Tile::decode(b.as_slice()).unwrap().layers[0].name,
        "sequence",
        "below z14: the sequence layer"
    );
}

#[test]
fn empty_tile_modes() {
    // Mid-Pacific has no imagery.
    for (mode, status) in [("204", 204), ("404", 404), ("403", 403), ("mvt-empty", 200)] {
        let sim = Sim::start(&["--empty-tile", mode]);
        let (s, b) = sim.get(&tile_path("mly1_public", 14, 100, 8000));
        assert_eq!(s, status, "{mode}");
        if mode == "mvt-empty" {
            assert_eq!(Tile::decode(b.as_slice()).unwrap().layers[0].name, "mapillary-empty");
        }
    }
}

#[test]
fn bbox_search_agrees_with_the_tile_and_honours_caps() {
    let sim = Sim::start(&["--dense-limit", "1000000"]);
    let t = TileId::new(14, CORE.0, CORE.1).unwrap();
    let imgs = tile_images(&get_tile(&sim, t.x, t.y));
    assert!(imgs.len() > 2000);
    let tile_ids: BTreeSet<i64> = imgs.iter().map(|i| i.0).collect();
    let mut compared = 0;
    // Every z16 cell inside the tile: ids strictly inside the cell (off its edge pixels) must match.
    for cell in t.descendants_at(16) {
        let (cx, cy) = ((cell.x - t.x * 4) as i64 * 1024, (cell.y - t.y * 4) as i64 * 1024);
        let inside: BTreeSet<i64> = imgs
            .iter()
            .filter(|(_, px, py)| *px > cx && *px < cx + 1024 && *py > cy && *py < cy + 1024)
            .map(|i| i.0)
            .collect();
        let edge: BTreeSet<i64> = imgs
            .iter()
            .filter(|(_, px, py)| {
                (*px == cx || *px == cx + 1024 || *py == cy || *py == cy + 1024)
                    && (cx..=cx + 1024).contains(px)
                    && (cy..=cy + 1024).contains(py)
            })
            .map(|i| i.0)
            .collect();
        let (s, v) = json(&sim, &format!("/images?bbox={}&fields=id", bbox_q(&cell.bounds())));
        assert_eq!(s, 200, "{v}");
        let got: BTreeSet<i64> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().parse().unwrap())
            .collect();
        if inside.len() + edge.len() <= 2000 {
            // Images of neighbour tiles quantised onto the shared edge pixel also match the
            // (edge-inclusive) bbox; compare only this tile's images off the cell's edge pixels.
            let got_inner: BTreeSet<i64> =
                got.difference(&edge).filter(|id| tile_ids.contains(id)).copied().collect();
            let missing: Vec<_> = inside.difference(&got_inner).collect();
            let extra: Vec<_> = got_inner.difference(&inside).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "cell {cell:?}: missing {missing:?} extra {extra:?}"
            );
            compared += 1;
        } else {
            assert_eq!(got.len(), 2000, "cell {cell:?} is capped");
        }
    }
    assert!(compared > 0, "some z16 cell holds at most 2000 images");
    // The whole tile: capped at 2000, and `limit` is honoured.
    let b = t.bounds();
    let (s, v) = json(&sim, &format!("/images?bbox={}&fields=id,captured_at", bbox_q(&b)));
    assert_eq!(s, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 2000);
    let (_, v) = json(&sim, &format!("/images?bbox={}&limit=3", bbox_q(&b)));
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    drop(sim);
    // Dense: filling the answer means reading more matches than --dense-limit (a filter that
    // rejects them all); a full page without filters fills early and answers.
    let sim = Sim::start(&["--dense-limit", &(imgs.len() - 1).to_string()]);
    let (s, v) =
        json(&sim, &format!("/images?bbox={}&is_pano=true&start_captured_at=2100-01-01", bbox_q(&b)));
    assert_eq!(s, 500);
    assert_eq!(v["error"]["message"], "Please reduce the amount of data you're asking for");
    assert_eq!(v["error"]["type"], "MLYApiException");
    // Too large: 0.2 x 0.2 degrees.
    let (s, v) = json(&sim, "/images?bbox=8.3,47.3,8.5,47.5");
    assert_eq!(s, 500);
    assert_eq!(
        v["error"]["message"],
        "Bounding box area is too large. Maximum allowed area is 0.010 square degrees, but got 0.040 square degrees."
    );
    assert!(v["error"]["fbtrace_id"].as_str().unwrap().len() > 10);
}

#[test]
fn multi_id_lookups() {
    let sim = Sim::start(&[]);
    let (_, imgs) = populated_tile(&sim);
    let ids: Vec<String> = imgs.iter().take(2).map(|i| i.0.to_string()).collect();
    let (s, v) = json(&sim, &format!("/?ids={}&fields=id,captured_at,geometry", ids.join(",")));
    assert_eq!(s, 200, "{v}");
    for id in &ids {
        assert_eq!(v[id]["id"], Value::String(id.clone()));
        assert!(v[id]["captured_at"].is_i64());
        assert_eq!(v[id]["geometry"]["type"], "Point");
    }
    let many: Vec<String> = (0..51).map(|i| (imgs[0].0 + i).to_string()).collect();
    let (s, v) = json(&sim, &format!("/?ids={}", many.join(",")));
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], 100);
    // One unknown id fails the whole request with the not-found error.
    let (s, v) = json(&sim, &format!("/?ids={},1", ids[0]));
    assert_eq!((s, &v["error"]["code"], &v["error"]["error_subcode"]), (400, &100.into(), &33.into()));
    // image_ids on /images: data wrapper.
    let (s, v) = json(&sim, &format!("/images?image_ids={}&fields=id", ids.join(",")));
    assert_eq!(s, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
}

#[test]
fn auth_errors_match_the_real_envelopes() {
    let sim = Sim::start(&[]);
    let path = "/1?fields=id";
    let body_of = |name: &str| fixture_json(name)["body"].clone();
    let check = |got: (u16, Vec<u8>), fixture: &str| {
        let want = fixture_json(fixture);
        let v: Value = serde_json::from_slice(&got.1).unwrap();
        assert_eq!(got.0 as u64, want["status"].as_u64().unwrap(), "{fixture}: {v}");
        let (mut gv, mut wv) = (v["error"].clone(), body_of(fixture)["error"].clone());
        assert!(gv["fbtrace_id"].as_str().unwrap().starts_with('A'));
        gv["fbtrace_id"] = Value::Null;
        wv["fbtrace_id"] = Value::Null;
        assert_eq!(gv, wv, "{fixture}");
    };
    check(sim.get(path), "psw-error-500-no-auth-header.json");
    check(
        http_get(&format!("{}{path}", sim.url), &[("Authorization", "OAuth MLY|bogus")]),
        "psw-error-401-malformed-token.json",
    );
    let unissued = "MLY|1234567890123456|ffffffffffffffffffffffffffffffff";
    check(
        http_get(&format!("{}{path}", sim.url), &[("Authorization", &format!("OAuth {unissued}"))]),
        "psw-error-401-unissued-token-header.json",
    );
    check(
        sim.get(&format!("{path}&access_token={}", unissued.replace('|', "%7C"))),
        "psw-error-400-unissued-token-query-param.json",
    );
    // `Bearer` is not the keyword: treated as no token.
    let (s, _) =
        http_get(&format!("{}{path}", sim.url), &[("Authorization", &format!("Bearer {SIM_TOKEN}"))]);
    assert_eq!(s, 500);
    // The header with a good token works, and the unknown id gives the exact real error.
    check(
        http_get(&format!("{}{path}", sim.url), &[("Authorization", &format!("OAuth {SIM_TOKEN}"))]),
        "psw-error-400-not-found-id-1.json",
    );
    // Tiles need the token too, and only in the query (§13.4): 403 without it.
    assert_eq!(sim.get(&format!("/maps/vtp/mly1_public/2/14/{}/{}", CITY.0, CITY.1)).0, 403);
}

#[test]
fn unknown_field_is_an_error() {
    let sim = Sim::start(&[]);
    let (_, imgs) = populated_tile(&sim);
    let (s, v) = json(&sim, &format!("/{}?fields=id,bogus_field", imgs[0].0));
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], 100);
    assert_eq!(
        v["error"]["message"],
        "(#100) Tried accessing nonexisting field (bogus_field) on node type (Image)"
    );
    let (s, v) = json(&sim, &format!("/{}", imgs[0].0));
    assert_eq!(s, 200);
    assert_eq!(v, serde_json::json!({"id": imgs[0].0.to_string()}), "only id without fields");
}

#[test]
fn image_json_has_the_real_shape() {
    let sim = Sim::start(&[]);
    let (_, imgs) = populated_tile(&sim);
    let real = fixture_json("josm-image-135511895288847.json");
    let fields = "altitude,atomic_scale,camera_parameters,camera_type,captured_at,compass_angle,computed_altitude,computed_compass_angle,computed_geometry,computed_rotation,exif_orientation,geometry,height,thumb_256_url,thumb_1024_url,thumb_2048_url,merge_cc,mesh,quality_score,sequence,sfm_cluster,width,id,thumb_original_url,detections";
    let want = shape(&real);
    let mut full = 0;
    for (id, _, _) in imgs.iter().take(40) {
        let (s, v) = json(&sim, &format!("/{id}?fields={fields}"));
        assert_eq!(s, 200, "{v}");
        let got = shape(&v);
        for (k, t) in &got {
            assert_eq!(want.get(k), Some(t), "key {k} of image {id}: {v}");
        }
        assert_eq!(v["id"], Value::String(id.to_string()));
        assert_eq!(v["geometry"]["type"], "Point");
        assert!(v["thumb_1024_url"].as_str().unwrap().contains("/m1/v/t6/"), "the CDN's path");
        assert!(v["thumb_1024_url"].as_str().unwrap().contains("&oe="));
        if got == want {
            full += 1;
            let d = &v["detections"]["data"];
            assert!(
                d.as_array()
                    .unwrap()
                    .iter()
                    .all(|x| x.as_object().unwrap().len() == 1 && x["id"].is_string())
            );
        }
    }
    assert!(full > 0, "at least one image has every field of the fixture (incl. mesh)");
    // Nested detection fields and the detections endpoint.
    let id = imgs[0].0;
    let (s, v) = json(&sim, &format!("/{id}?fields=detections.value,detections.geometry"));
    assert_eq!(s, 200);
    for d in v["detections"]["data"].as_array().unwrap() {
        assert!(d["value"].is_string() && d["geometry"].is_string() && d["id"].is_string(), "{d}");
    }
    let (s, v) = json(&sim, &format!("/{id}/detections?fields=created_at,geometry,image,value,id"));
    assert_eq!(s, 200);
    let real = fixture_json("josm-image-135511895288847-detections.json");
    for d in v["data"].as_array().unwrap() {
        assert_eq!(shape(d), shape(&real["data"][0]));
        assert_eq!(d["created_at"].as_str().unwrap().len(), "2021-05-22T15:20:45+0000".len());
        assert!(d["created_at"].as_str().unwrap().ends_with("+0000"));
    }
}

#[test]
fn rate_limit_throttles_with_the_code_4_body() {
    let sim = Sim::start(&["--search-per-minute", "3"]);
    let url = format!("{}/images?image_ids=1&{}", sim.url, tok());
    let mut statuses = vec![];
    let mut last = (0, String::new(), vec![]);
    for _ in 0..5 {
        last = raw_get(&url, &[]);
        statuses.push(last.0);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    let v: Value = serde_json::from_slice(&last.2).unwrap();
    let want = fixture_json("josm-error-application_request_limit_reached.json");
    assert_eq!(shape(&v["error"]), shape(&want["error"]));
    assert_eq!(v["error"]["code"], 4);
    assert_eq!(v["error"]["is_transient"], true);
    assert_eq!(
        header(&last.1, "x-app-usage"),
        Some("{\"call_count\":100,\"total_cputime\":0,\"total_time\":0}")
    );
    let s = sim.stats();
    assert_eq!(s["throttled"], 2);
    assert_eq!(s["max_per_minute"]["search"], 5);
    // Other families are unaffected.
    assert_eq!(json(&sim, "/1").0, 400);
}

#[test]
fn epochs_change_the_world_and_seeds_are_reproducible() {
    let a = Sim::start(&["--seed", "7"]);
    let b = Sim::start(&["--seed", "7"]);
    let e1 = Sim::start(&["--seed", "7", "--epoch", "1"]);
    // CITY itself serves the real (static) fixture tile: watch a synthetic neighbour change.
    let t = TileId::new(14, CITY.0 + 1, CITY.1 + 1).unwrap();
    let imgs0 = tile_images(&get_tile(&a, t.x, t.y));
    assert!(!imgs0.is_empty(), "{t} has images");
    assert_eq!(get_tile(&a, t.x, t.y), get_tile(&b, t.x, t.y), "same seed, same bytes");
    let ids0: BTreeSet<i64> = imgs0.iter().map(|i| i.0).collect();
    let ids1: BTreeSet<i64> = tile_images(&get_tile(&e1, t.x, t.y)).iter().map(|i| i.0).collect();
    assert!(ids0.difference(&ids1).count() > 0, "epoch 1 deleted some images");
    assert!(ids1.difference(&ids0).count() > 0, "epoch 1 added some images");
    let gone = ids0.difference(&ids1).next().unwrap();
    assert_eq!(json(&e1, &format!("/{gone}")).0, 400);
    assert_eq!(json(&a, &format!("/{gone}")).0, 200);
}

#[test]
fn faults_are_injected() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("faults.toml");
    std::fs::write(
        &f,
        "seed = 5\npermanent = [\"14/8574/5736\"]\n[tiles]\nerror_5xx = 0.25\nreset = 0.25\ntruncate = 0.25\ncorrupt = 0.1\n[entity]\nslow = 1.0\nslow_secs = 0.3\n",
    )
    .unwrap();
    let log = dir.path().join("access.log");
    let sim = Sim::start(&["--faults", f.to_str().unwrap(), "--access-log", log.to_str().unwrap()]);
    let url = format!("{}{}", sim.url, tile_path("mly1_public", 14, CITY.0, CITY.1));
    let (mut e5, mut resets, mut truncs, mut ok, mut corrupt) = (0, 0, 0, 0, 0);
    for _ in 0..60 {
        let (s, head, body) = raw_get(&url, &[]);
        match s {
            0 => {
                assert!(body.is_empty());
                resets += 1
            }
            500 => {
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["error"]["code"], 2);
                assert_eq!(v["error"]["is_transient"], true);
                e5 += 1
            }
            200 => {
                let cl: usize = header(&head, "content-length").unwrap().parse().unwrap();
                if cl > body.len() {
                    truncs += 1
                } else if Tile::decode(body.as_slice()).is_err() {
                    corrupt += 1
                } else {
                    ok += 1
                }
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        e5 > 0 && resets > 0 && truncs > 0 && corrupt > 0 && ok > 0,
        "{e5} {resets} {truncs} {corrupt} {ok}"
    );
    for _ in 0..3 {
        assert_eq!(sim.get(&tile_path("mly1_public", 14, 8574, 5736)).0, 500, "permanent");
    }
    let t0 = std::time::Instant::now();
    assert_eq!(json(&sim, "/1").0, 400);
    assert!(t0.elapsed() >= Duration::from_millis(300), "slow");
    let s = sim.stats();
    assert_eq!(s["faults"]["reset"], resets);
    assert!(s["faults"]["permanent"].as_u64().unwrap() >= 3);
    // The access log has every request and never the token.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() >= 64, "{text}");
    assert!(text.contains("access_token=REDACTED"));
    assert!(!text.contains("0123456789abcdef0123456789abcdef"));
    assert!(!text.contains("4000000000000001"));
    assert!(text.contains(" reset tiles "));
}

#[test]
fn map_features_sequences_and_detections() {
    let sim = Sim::start(&[]);
    let b = TileId::new(14, CORE.0, CORE.1).unwrap().bounds();
    let (s, v) = json(
        &sim,
        &format!(
            "/map_features?bbox={}&fields=id,object_value,object_type,first_seen_at,geometry",
            bbox_q(&b)
        ),
    );
    assert_eq!(s, 200, "{v}");
    let feats = v["data"].as_array().unwrap();
    assert!(!feats.is_empty());
    let f0 = &feats[0];
    assert!(f0["first_seen_at"].as_str().unwrap().ends_with("+0000"));
    assert!(["point", "trafficsign"].contains(&f0["object_type"].as_str().unwrap()));
    // object_values with a wildcard filters by prefix.
    let value = f0["object_value"].as_str().unwrap();
    let prefix = value.split("--").next().unwrap();
    let (_, v) = json(
        &sim,
        &format!("/map_features?bbox={}&object_values={prefix}--*&fields=object_value", bbox_q(&b)),
    );
    assert!(
        v["data"].as_array().unwrap().iter().all(|f| f["object_value"].as_str().unwrap().starts_with(prefix))
    );
    // A feature's images edge and its detections, shaped like the JOSM captures.
    let id = f0["id"].as_str().unwrap();
    let (s, v) = json(
        &sim,
        &format!("/{id}?fields=first_seen_at,last_seen_at,object_value,object_type,geometry,images,id"),
    );
    assert_eq!(s, 200);
    assert_eq!(shape(&v), shape(&fixture_json("josm-map_feature-496980935069177.json")));
    let (s, v) = json(&sim, &format!("/{id}/detections?fields=created_at,geometry,image,value,id"));
    assert_eq!(s, 200);
    assert!(v["data"].is_array());
    // A sequence's image ids, in capture order.
    let (_, imgs) = populated_tile(&sim);
    let (_, img) = json(&sim, &format!("/{}?fields=sequence", imgs[0].0));
    let seq = img["sequence"].as_str().unwrap();
    let (s, v) = json(&sim, &format!("/image_ids?sequence_id={seq}"));
    assert_eq!(s, 200);
    let ids: Vec<String> =
        v["data"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert!(ids.contains(&imgs[0].0.to_string()));
    // A search without a bbox answers newest first (§13.8).
    let (_, v) = json(&sim, &format!("/images?sequence_id={seq}&fields=captured_at"));
    let times: Vec<i64> =
        v["data"].as_array().unwrap().iter().map(|d| d["captured_at"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
}

#[test]
fn stops_cleanly_on_sigterm() {
    let mut sim = Sim::start(&[]);
    let pid = sim.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let t0 = std::time::Instant::now();
    loop {
        if let Some(status) = sim.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
