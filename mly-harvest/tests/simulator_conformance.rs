//! The simulator answers like the live service (issue 10, Graph side), over real HTTP on loopback:
//! paths and shapes (item 1), search filters and cursor paging (item 2), image bytes (item 5).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use mly_contract::tiles::TileId;
use serde_json::Value;

/// The dense core of Zürich (tens of thousands of images).
const CORE: TileId = TileId { z: 14, x: 8580, y: 5737 };
/// A synthetic suburban tile next to the real fixture tile.
const SUBURB: TileId = TileId { z: 14, x: 8575, y: 5736 };

/// Raw GET: (status, lower-cased head, body).
fn raw_get(url: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head");
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

/// GET with the token as a query parameter; (status, JSON).
fn json(sim: &Sim, path_and_query: &str) -> (u16, Value) {
    let sep = if path_and_query.contains('?') { '&' } else { '?' };
    let (s, b) = sim.get(&format!("{path_and_query}{sep}{}", tok()));
    let v = serde_json::from_slice(&b)
        .unwrap_or_else(|e| panic!("{path_and_query}: not JSON ({e}): {}", String::from_utf8_lossy(&b)));
    (s, v)
}

fn ok(sim: &Sim, path_and_query: &str) -> Value {
    let (s, v) = json(sim, path_and_query);
    assert_eq!(s, 200, "{path_and_query}: {v}");
    v
}

fn bbox_q(b: &mly_contract::tiles::Bbox) -> String {
    format!("{},{},{},{}", b.west, b.south, b.east, b.north)
}

fn data(v: &Value) -> &Vec<Value> {
    v["data"].as_array().unwrap_or_else(|| panic!("no data array: {v}"))
}

fn ids(v: &Value) -> Vec<i64> {
    data(v).iter().map(|d| d["id"].as_str().expect("string id").parse().expect("numeric id")).collect()
}

/// Some images of a suburban tile with the fields the tests look at.
fn suburb_images(sim: &Sim) -> Vec<Value> {
    let v = ok(
        sim,
        &format!(
            "/images?bbox={}&fields=captured_at,creator,organization,sequence,is_pano",
            bbox_q(&SUBURB.bounds())
        ),
    );
    let d = data(&v).clone();
    assert!(d.len() > 100, "the suburb has images: {}", d.len());
    d
}

// ------------------------------------------------------------------------------------------------
// Item 1: paths and shapes.

#[test]
fn one_trailing_slash_is_accepted_on_every_graph_and_tile_path() {
    let sim = Sim::start(&[]);
    let imgs = suburb_images(&sim);
    let id = imgs[0]["id"].as_str().unwrap();
    let seq = imgs[0]["sequence"].as_str().unwrap();
    let feature = ok(&sim, &format!("/map_features?bbox={}&limit=1", bbox_q(&CORE.bounds())));
    let fid = data(&feature)[0]["id"].as_str().unwrap().to_string();
    for (plain, slashed) in [
        (format!("/{id}?fields=captured_at"), format!("/{id}/?fields=captured_at")),
        (format!("/{id}/detections?fields=value"), format!("/{id}/detections/?fields=value")),
        (format!("/{fid}?fields=object_value"), format!("/{fid}/?fields=object_value")),
        (format!("/{fid}/detections?fields=value"), format!("/{fid}/detections/?fields=value")),
        (format!("/images?image_ids={id}"), format!("/images/?image_ids={id}")),
        (format!("/image_ids?sequence_id={seq}"), format!("/image_ids/?sequence_id={seq}")),
        (
            format!("/map_features?bbox={}&limit=3", bbox_q(&CORE.bounds())),
            format!("/map_features/?bbox={}&limit=3", bbox_q(&CORE.bounds())),
        ),
    ] {
        let a = ok(&sim, &plain);
        let b = ok(&sim, &slashed);
        assert_eq!(a, b, "{slashed} answers like {plain}");
    }
    // Tiles: the same bytes with and without the slash, every tileset.
    for ts in ["mly1_public", "mly1_computed_public", "mly_map_feature_point", "mly_map_feature_traffic_sign"]
    {
        let path = format!("/maps/vtp/{ts}/2/14/{}/{}", CORE.x, CORE.y);
        let (s1, b1) = sim.get(&format!("{path}?{}", tok()));
        let (s2, b2) = sim.get(&format!("{path}/?{}", tok()));
        assert_eq!((s1, s2), (200, 200), "{ts}");
        assert!(!b1.is_empty() && b1 == b2, "{ts}: same tile with a trailing slash");
    }
    // Only one slash: a doubled one is no path of the service.
    let (s, _) = json(&sim, &format!("/{id}//?fields=id"));
    assert_eq!(s, 400);
}

#[test]
fn id_comes_back_whatever_fields_lists() {
    let sim = Sim::start(&[]);
    let imgs = suburb_images(&sim);
    let id = imgs[0]["id"].as_str().unwrap();
    // Not asked for, like the Vespucci capture (`fields=thumb_2048_url,computed_geometry`).
    let v = ok(&sim, &format!("/{id}?fields=captured_at,geometry"));
    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    keys.sort_unstable();
    assert_eq!(keys, ["captured_at", "geometry", "id"], "{v}");
    assert_eq!(v["id"], Value::String(id.into()));
    // Users (like the JOSM capture `fields=username`), features, detections, search results,
    // multi-id lookups, and objects inside edges.
    let creator = imgs[0]["creator"]["id"].as_str().unwrap();
    let v = ok(&sim, &format!("/{creator}?fields=username"));
    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    keys.sort_unstable();
    assert_eq!(keys, ["id", "username"]);
    let feats =
        ok(&sim, &format!("/map_features?bbox={}&limit=5&fields=object_value", bbox_q(&CORE.bounds())));
    assert!(data(&feats).iter().all(|f| f["id"].is_string() && f["object_value"].is_string()), "{feats}");
    let fid = data(&feats)[0]["id"].as_str().unwrap();
    let v = ok(&sim, &format!("/{fid}?fields=images.captured_at,detections.value"));
    assert!(data(&v["images"]).iter().all(|i| i["id"].is_string() && i["captured_at"].is_i64()), "{v}");
    assert!(data(&v["detections"]).iter().all(|d| d["id"].is_string() && d["value"].is_string()), "{v}");
    let v = ok(&sim, &format!("/{fid}/detections?fields=value"));
    assert!(!data(&v).is_empty() && data(&v).iter().all(|d| d["id"].is_string()), "{v}");
    let v = ok(&sim, &format!("/images?image_ids={id}&fields=is_pano"));
    assert_eq!(data(&v)[0]["id"], Value::String(id.into()));
    let v = ok(&sim, &format!("/?ids={id}&fields=captured_at"));
    assert_eq!(v[id]["id"], Value::String(id.into()));
}

#[test]
fn merge_cc_is_a_float_and_some_altitudes_wrap_and_the_harvester_reads_them() {
    let sim = Sim::start(&[]);
    let mut wrapped = Vec::new();
    let mut seen = 0;
    // z16 cells of the dense core until a few wrapped altitudes turned up (about 1 in 200).
    for cell in CORE.descendants_at(16) {
        let (s, body) = sim.get(&format!(
            "/images?bbox={}&fields=merge_cc,altitude,captured_at&{}",
            bbox_q(&cell.bounds()),
            tok()
        ));
        assert_eq!(s, 200);
        let text = String::from_utf8(body).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        for img in data(&v) {
            seen += 1;
            let m = &img["merge_cc"];
            assert!(m.is_f64() && m.as_f64().unwrap() > 1e3, "merge_cc is a JSON float: {img}");
            if let Some(a) = img["altitude"].as_u64().filter(|a| *a >= 1 << 31) {
                let parsed = mly_core::api::graph::parse_image(img).unwrap();
                wrapped.push((a, parsed.altitude));
            }
        }
        // On the wire too: exponent form, no 19-digit integer.
        assert!(!text.contains("\"merge_cc\":-") && text.contains("\"merge_cc\":"), "{}", &text[..200]);
        if wrapped.len() >= 3 {
            break;
        }
    }
    assert!(wrapped.len() >= 3, "{} wrapped altitudes in {seen} images", wrapped.len());
    for (raw, parsed) in wrapped {
        // 4294967281 is −15 m: the harvester stores the unwrapped value.
        let want = raw as f64 - 4_294_967_296.0;
        assert!((-40.0..0.0).contains(&want), "{raw}");
        assert_eq!(parsed, Some(want), "{raw}");
    }
}

#[test]
fn x_app_usage_counts_the_apps_own_calls() {
    let sim = Sim::start(&["--entity-per-minute", "50", "--search-per-minute", "20"]);
    let usage = |head: &str| {
        header(head, "x-app-usage").map(|u| {
            let v: Value = serde_json::from_str(u).unwrap();
            v["call_count"].as_u64().unwrap()
        })
    };
    let url = |q: &str| format!("{}/1{q}", sim.url);
    let bearer = format!("OAuth {SIM_TOKEN}");
    let mut last = 0;
    for i in 1..=5u64 {
        let (s, head, _) = raw_get(&url("?fields=id"), &[("Authorization", &bearer)]);
        assert_eq!(s, 400, "an unknown id, still one of the app's calls");
        last = usage(&head).unwrap();
        assert_eq!(last, i * 2, "{i} calls of 50 per minute");
    }
    // Calls that are not the app's (no token, a token never issued) neither report nor count.
    let (s, head, _) = raw_get(&url(""), &[]);
    assert_eq!((s, usage(&head)), (500, None));
    let (s, head, _) = raw_get(
        &url(""),
        &[("Authorization", "OAuth MLY|1234567890123456|ffffffffffffffffffffffffffffffff")],
    );
    assert_eq!((s, usage(&head)), (401, None));
    let _ = sim.stats();
    let (_, head, _) = raw_get(&url(""), &[("Authorization", &bearer)]);
    assert_eq!(usage(&head), Some(last + 2));
    // Search calls count against the search quota.
    let (_, head, _) = raw_get(&format!("{}/images?image_ids=1", sim.url), &[("Authorization", &bearer)]);
    assert_eq!(usage(&head), Some(5), "1 of 20 search calls");
}

// ------------------------------------------------------------------------------------------------
// Item 2: search.

#[test]
fn dense_refusal_is_about_what_would_be_returned() {
    let sim = Sim::start(&["--dense-limit", "3000"]);
    let b = bbox_q(&CORE.bounds());
    // limit=1 on the densest bbox answers (mapillary-dl's token check, §13.14).
    let v = ok(&sim, &format!("/images?bbox={b}&limit=1"));
    assert_eq!(data(&v).len(), 1);
    assert!(v.get("paging").is_none(), "bbox searches have no cursor");
    // A full page fills long before 3,000 matches were read.
    let v = ok(&sim, &format!("/images?bbox={b}&fields=captured_at"));
    assert_eq!(data(&v).len(), 2000);
    // A filter that rejects nearly everything makes the service read the whole dense area.
    let (s, v) = json(&sim, &format!("/images?bbox={b}&start_captured_at=2100-01-01T00:00:00Z"));
    assert_eq!(s, 500, "{v}");
    assert_eq!(v["error"]["message"], "Please reduce the amount of data you're asking for");
    // Map features follow the same rule (the core holds fewer features than images).
    drop(sim);
    let sim = Sim::start(&["--dense-limit", "500"]);
    let (s, v) = json(&sim, &format!("/map_features?bbox={b}&object_values=no--such--value"));
    assert_eq!(s, 500, "{v}");
    let v = ok(&sim, &format!("/map_features?bbox={b}&limit=1"));
    assert_eq!(data(&v).len(), 1);
}

#[test]
fn image_search_filters() {
    let sim = Sim::start(&[]);
    let all = suburb_images(&sim);
    let b = bbox_q(&SUBURB.bounds());
    let search = |q: &str| -> BTreeSet<String> {
        let v = ok(&sim, &format!("/images?bbox={b}&{q}"));
        data(&v).iter().map(|d| d["id"].as_str().unwrap().to_string()).collect()
    };
    let want = |f: &dyn Fn(&Value) -> bool| -> BTreeSet<String> {
        all.iter().filter(|i| f(i)).map(|i| i["id"].as_str().unwrap().to_string()).collect()
    };
    let x = &all[all.len() / 2];
    let creator = x["creator"]["username"].as_str().unwrap();
    let got = search(&format!("creator_username={creator}"));
    assert!(!got.is_empty());
    assert_eq!(got, want(&|i| i["creator"]["username"] == creator));
    let org = all.iter().find_map(|i| i["organization"]["id"].as_str()).expect("an organization");
    assert_eq!(search(&format!("organization_id={org}")), want(&|i| i["organization"]["id"] == org));
    let seqs: Vec<&str> = {
        let mut s: Vec<&str> = all.iter().map(|i| i["sequence"].as_str().unwrap()).collect();
        s.sort_unstable();
        s.dedup();
        s.into_iter().take(2).collect()
    };
    assert_eq!(seqs.len(), 2);
    let got = search(&format!("sequence_id={}", seqs.join(",")));
    assert_eq!(got, want(&|i| seqs.contains(&i["sequence"].as_str().unwrap())));
    assert_eq!(search(&format!("sequence_ids={}", seqs.join(","))), got);
    // Both ends inclusive: an image's own capture time as start and end finds it.
    let t = x["captured_at"].as_i64().unwrap();
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    };
    let got = search(&format!("start_captured_at={}&end_captured_at={}", iso(t), iso(t)));
    assert!(got.contains(x["id"].as_str().unwrap()));
    assert_eq!(got, want(&|i| i["captured_at"].as_i64() == Some(t)));
    let got = search(&format!("start_captured_at={}", iso(t)));
    assert_eq!(got, want(&|i| i["captured_at"].as_i64().unwrap() >= t));
    let got = search(&format!("end_captured_at={}", iso(t)));
    assert_eq!(got, want(&|i| i["captured_at"].as_i64().unwrap() <= t));
    for pano in [true, false] {
        assert_eq!(search(&format!("is_pano={pano}")), want(&|i| i["is_pano"] == pano), "is_pano={pano}");
    }
    let some: Vec<&str> = all.iter().step_by(7).take(5).map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(
        search(&format!("image_ids={}", some.join(","))),
        some.iter().map(|s| s.to_string()).collect()
    );
    // Filters combine.
    let got = search(&format!("creator_username={creator}&is_pano={}", x["is_pano"]));
    assert_eq!(got, want(&|i| i["creator"]["username"] == creator && i["is_pano"] == x["is_pano"]));
    // Bad values are the service's 400s.
    for q in ["is_pano=maybe", "organization_id=abc", "start_captured_at=yesterday"] {
        let (s, v) = json(&sim, &format!("/images?bbox={b}&{q}"));
        assert_eq!((s, &v["error"]["code"]), (400, &Value::from(100)), "{q}: {v}");
    }
    let (s, _) = json(&sim, "/images?organization_id=1");
    assert_eq!(s, 400, "organization_id alone is no search");
}

/// Follows `paging.next` from `first` (the token goes in the header, as the next URL has none).
fn all_pages(sim: &Sim, first: &str) -> (Vec<Value>, usize) {
    let auth = format!("OAuth {SIM_TOKEN}");
    let mut url = format!("{}{first}", sim.url);
    let mut out = Vec::new();
    let mut pages = 0;
    loop {
        let (s, _, body) = raw_get(&url, &[("Authorization", &auth)]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(s, 200, "{url}: {v}");
        pages += 1;
        assert!(pages < 100, "paging ends");
        out.extend(data(&v).iter().cloned());
        match v["paging"]["next"].as_str() {
            None => return (out, pages),
            Some(next) => {
                assert!(next.starts_with(&sim.url), "{next}");
                assert!(!next.contains("access_token"), "no token in {next}");
                let after = v["paging"]["cursors"]["after"].as_str().unwrap();
                assert!(next.ends_with(&format!("after={after}")), "{next}");
                url = next.to_string();
            }
        }
    }
}

fn newest_first_without_overlap(imgs: &[Value]) {
    let keys: Vec<(i64, i64)> = imgs
        .iter()
        .map(|i| (i["captured_at"].as_i64().unwrap(), i["id"].as_str().unwrap().parse().unwrap()))
        .collect();
    assert!(keys.windows(2).all(|w| w[0] > w[1]), "strictly newest first, no repeats");
}

#[test]
fn searches_without_bbox_page_newest_first() {
    let sim = Sim::start(&[]);
    let all = suburb_images(&sim);
    // A sequence, in pages of 7.
    let seq = all[0]["sequence"].as_str().unwrap();
    let want: BTreeSet<i64> = ids(&ok(&sim, &format!("/image_ids?sequence_id={seq}"))).into_iter().collect();
    assert!(want.len() > 7);
    let (got, pages) = all_pages(&sim, &format!("/images?sequence_id={seq}&limit=7&fields=captured_at"));
    assert_eq!(pages, want.len().div_ceil(7));
    newest_first_without_overlap(&got);
    let got_ids: BTreeSet<i64> = got.iter().map(|i| i["id"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(got_ids, want);
    // image_ids: one page, newest first, with cursors but no next.
    let some: Vec<&str> = all.iter().take(5).map(|i| i["id"].as_str().unwrap()).collect();
    let v = ok(&sim, &format!("/images?image_ids={}&fields=captured_at", some.join(",")));
    newest_first_without_overlap(data(&v));
    assert!(v["paging"]["cursors"]["after"].is_string() && v["paging"].get("next").is_none(), "{v}");
    // A creator, over the whole world: everything the creator has in the suburb is among the
    // results, pages are at most `limit` (≤ 2000) long and never overlap.
    let creator = all[0]["creator"]["username"].as_str().unwrap();
    let t0 = std::time::Instant::now();
    let (got, pages) =
        all_pages(&sim, &format!("/images?creator_username={creator}&limit=400&fields=captured_at,creator"));
    eprintln!("creator {creator}: {} images in {pages} pages, {:?}", got.len(), t0.elapsed());
    newest_first_without_overlap(&got);
    assert!(got.iter().all(|i| i["creator"]["username"] == creator));
    assert_eq!(pages, got.len().div_ceil(400));
    let got_ids: BTreeSet<&str> = got.iter().map(|i| i["id"].as_str().unwrap()).collect();
    for i in all.iter().filter(|i| i["creator"]["username"] == creator) {
        assert!(got_ids.contains(i["id"].as_str().unwrap()), "{i}");
    }
    // A time window narrows it, both ends inclusive.
    let mid = &got[got.len() / 2];
    let t = mid["captured_at"].as_i64().unwrap();
    let iso =
        chrono::DateTime::from_timestamp_millis(t).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let v = ok(
        &sim,
        &format!("/images?creator_username={creator}&end_captured_at={iso}&limit=2000&fields=captured_at"),
    );
    assert_eq!(data(&v).first().map(|i| i["captured_at"].as_i64().unwrap()), Some(t));
    // A limit over 2000 is 2000; a bad cursor is a 400.
    let v = ok(&sim, &format!("/images?creator_username={creator}&limit=5000"));
    assert_eq!(data(&v).len(), got.len().min(2000));
    let (s, _) = json(&sim, &format!("/images?creator_username={creator}&after=bm9wZQ"));
    assert_eq!(s, 400);
}

// ------------------------------------------------------------------------------------------------
// Item 5: image bytes.

/// (width, height) from a JPEG's SOF0 segment.
fn jpeg_size(b: &[u8]) -> (u32, u32) {
    assert_eq!(&b[..2], &[0xFF, 0xD8], "a JPEG");
    let sof = b.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline SOF");
    (
        u32::from(u16::from_be_bytes([b[sof + 7], b[sof + 8]])),
        u32::from(u16::from_be_bytes([b[sof + 5], b[sof + 6]])),
    )
}

#[test]
fn thumbnails_are_jpegs_of_the_right_size_and_expire() {
    let sim = Sim::start(&["--url-ttl", "2"]);
    // The core's plaza walks are panoramas; the suburb's drives flat.
    let core = ok(&sim, &format!("/images?bbox={}&fields=is_pano", bbox_q(&CORE.bounds())));
    let all: Vec<Value> = data(&core).iter().cloned().chain(suburb_images(&sim)).collect();
    let fields = "width,height,thumb_256_url,thumb_1024_url,thumb_2048_url,thumb_original_url";
    let pano = all.iter().find(|i| i["is_pano"] == true).expect("a panorama");
    let flat = all.iter().find(|i| i["is_pano"] == false).expect("a flat image");
    let mut urls = Vec::new();
    for img in [pano, flat] {
        let v = ok(&sim, &format!("/{}?fields={fields}", img["id"].as_str().unwrap()));
        let (w, h) = (v["width"].as_u64().unwrap() as u32, v["height"].as_u64().unwrap() as u32);
        for (field, tw) in [
            ("thumb_256_url", 256),
            ("thumb_1024_url", 1024),
            ("thumb_2048_url", 2048),
            ("thumb_original_url", w),
        ] {
            let url = v[field].as_str().unwrap().to_string();
            assert!(url.starts_with(&format!("{}/m1/v/t6/", sim.url)), "{url}");
            assert!(url.contains("&oe=") && url.contains("&oh=00_"), "{url}");
            // Image bytes need no token (the CDN's URL is signed).
            let (s, head, body) = raw_get(&url, &[]);
            assert_eq!(s, 200, "{url}");
            assert_eq!(header(&head, "content-type"), Some("image/jpeg"));
            let th = (f64::from(tw) * f64::from(h) / f64::from(w)).round() as u32;
            assert_eq!(jpeg_size(&body), (tw, th), "{field} of a {w}x{h} image");
            if field != "thumb_original_url" {
                assert!(url.contains(&format!("stp=s{tw}x{th}&")), "{url}");
            }
            urls.push((url, body));
        }
    }
    // Deterministic: the same URL gives the same bytes.
    assert_eq!(raw_get(&urls[0].0, &[]).2, urls[0].1);
    // An independent decoder (GDAL's libjpeg) reads it: right size, one grey level.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("thumb.jpg");
    std::fs::write(&file, &urls[1].1).unwrap();
    let out = std::process::Command::new("gdalinfo")
        .args(["-json", "-stats"])
        .arg(&file)
        .output()
        .expect("gdalinfo runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["driverShortName"], "JPEG");
    assert_eq!(info["size"], serde_json::json!(jpeg_size(&urls[1].1)));
    let band = &info["bands"][0];
    assert_eq!(band["minimum"], band["maximum"], "{band}");
    // A forged signature and an expired URL answer 403 like the CDN.
    let forged = urls[0].0.replace("_256x", "_257x");
    let (s, _, body) = raw_get(&forged, &[]);
    assert_eq!((s, body.as_slice()), (403, b"Bad URL hash".as_slice()));
    std::thread::sleep(Duration::from_millis(3100));
    let (s, _, body) = raw_get(&urls[0].0, &[]);
    assert_eq!((s, body.as_slice()), (403, b"URL signature expired".as_slice()));
    // A fresh URL from the Graph API works again.
    let v = ok(&sim, &format!("/{}?fields=thumb_256_url", pano["id"].as_str().unwrap()));
    assert_eq!(raw_get(v["thumb_256_url"].as_str().unwrap(), &[]).0, 200);
}

#[test]
fn public_url_changes_the_base_of_handed_out_urls() {
    let sim = Sim::start(&["--public-url", "https://mly.example.org:8443/"]);
    let all = suburb_images(&sim);
    let id = all[0]["id"].as_str().unwrap();
    let v = ok(&sim, &format!("/{id}?fields=thumb_1024_url"));
    let url = v["thumb_1024_url"].as_str().unwrap();
    assert!(url.starts_with("https://mly.example.org:8443/m1/v/t6/"), "{url}");
    // The path and query still work on the simulator itself.
    let local = format!("{}{}", sim.url, &url["https://mly.example.org:8443".len()..]);
    assert_eq!(raw_get(&local, &[]).0, 200);
    let seq = all[0]["sequence"].as_str().unwrap();
    let v = ok(&sim, &format!("/images?sequence_id={seq}&limit=1"));
    assert!(v["paging"]["next"].as_str().unwrap().starts_with("https://mly.example.org:8443/images?"), "{v}");
    let bad = std::process::Command::new(bin())
        .args(["simulate", "--listen", "127.0.0.1:0", "--public-url", "ftp://x"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(4), "{}", String::from_utf8_lossy(&bad.stderr));
}
