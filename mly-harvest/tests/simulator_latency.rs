//! The simulator's latency model (`--latency`) over real HTTP: off by default; with a median set,
//! every answer (errors, 304s, throttles too) waits at least the distribution's minimum (0.4 ×
//! the median), the waits overlap, a per-family median applies to its family only, and the draws
//! do not depend on the order of concurrent requests. Bounds are loose on purpose: how fast the
//! harvester is against a slow service is measured in `scripts/bench.sh`, not here.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn tok() -> String {
    format!("access_token={}", SIM_TOKEN.replace('|', "%7C"))
}

/// GET `path_and_query` (the token appended), with `headers`: (status, body, time taken).
fn timed(sim: &Sim, path_and_query: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>, Duration) {
    let sep = if path_and_query.contains('?') { '&' } else { '?' };
    let t0 = Instant::now();
    let (s, b) = http_get(&format!("{}{path_and_query}{sep}{}", sim.url, tok()), headers);
    (s, b, t0.elapsed())
}

/// Every request at once, one thread each: (status, time taken) per request, and the wall time.
fn all_at_once(sim: &Sim, reqs: &[(String, Vec<(&str, &str)>)]) -> (Vec<(u16, Duration)>, Duration) {
    let t0 = Instant::now();
    let out = std::thread::scope(|s| {
        let handles: Vec<_> = reqs
            .iter()
            .map(|(pq, h)| {
                s.spawn(move || {
                    let (status, _, took) = timed(sim, pq, h);
                    (status, took)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("request thread")).collect()
    });
    (out, t0.elapsed())
}

fn latency_stats(sim: &Sim) -> Value {
    sim.stats()["latency"].clone()
}

/// A z14 tile of the Zürich fixture capture (served verbatim with `--fixtures`).
const FIXTURE_TILE: &str = "/maps/vtp/mly1_public/2/14/8574/5735";
/// A bbox inside the fixture tile.
const FIXTURE_BBOX: &str = "8.4025,47.4043,8.4065,47.4073";

#[test]
fn latency_is_off_by_default() {
    let sim = Sim::start(&[]);
    let t0 = Instant::now();
    for i in 0..20 {
        let (s, _, _) = timed(&sim, &format!("/{}?fields=id", 12_345 + i), &[]);
        assert_eq!(s, 400);
    }
    // 20 answers of a 1 s service would take 20 s; unloaded loopback answers take milliseconds.
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "20 sequential lookups took {took:?}");
    assert_eq!(latency_stats(&sim), serde_json::json!({}));
}

#[test]
fn every_answer_waits_at_least_the_minimum_and_the_waits_overlap() {
    let median = Duration::from_millis(600);
    let min = median.mul_f64(0.4);
    let sim = Sim::start(&["--latency", "600ms", "--search-per-minute", "3"]);
    // Warm the fixture tile (its first answer builds the tile's world) and learn an image id.
    let (s, body, _) = timed(&sim, &format!("/images?bbox={FIXTURE_BBOX}&limit=3&fields=id"), &[]);
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let found: Value = serde_json::from_slice(&body).expect("JSON");
    let image = found["data"][0]["id"].as_str().expect("an image id").to_string();

    // 50 at once, of every kind of answer: 200s, 304s, 400s and throttled searches.
    let mut reqs: Vec<(String, Vec<(&str, &str)>)> = Vec::new();
    for i in 0..20 {
        reqs.push((format!("/{image}?fields=id,captured_at&n={i}"), vec![]));
        reqs.push((format!("/{}?fields=id", 99_000 + i), vec![]));
    }
    for _ in 0..4 {
        reqs.push((FIXTURE_TILE.to_string(), vec![("If-None-Match", "*")]));
    }
    for i in 0..6 {
        reqs.push((format!("/images?bbox={FIXTURE_BBOX}&limit={}&fields=id", i + 1), vec![]));
    }
    let (answers, wall) = all_at_once(&sim, &reqs);
    let statuses: std::collections::BTreeSet<u16> = answers.iter().map(|a| a.0).collect();
    for want in [200, 304, 400, 429] {
        assert!(statuses.contains(&want), "no {want} among {statuses:?}");
    }
    for ((pq, _), (status, took)) in reqs.iter().zip(&answers) {
        assert!(*took >= min, "{pq} answered {status} after {took:?}, under the minimum {min:?}");
    }
    // Serialised, 50 waits of at least 0.4 × the median take 20 medians; overlapped, about the
    // longest one (at most 5 medians).
    assert!(wall < median * 12, "50 concurrent requests took {wall:?}: the waits do not overlap");

    let st = latency_stats(&sim);
    assert_eq!(st["entity"]["count"], 40, "{st}");
    assert_eq!(st["tiles"]["count"], 4, "{st}");
    assert_eq!(st["search"]["count"], 7, "{st}");
    assert_eq!(st["entity"]["median_ms"], 600.0, "{st}");
    let mean = st["entity"]["mean_ms"].as_f64().expect("mean");
    let max = st["entity"]["max_ms"].as_f64().expect("max");
    assert!((240.0..3000.0).contains(&mean) && mean <= max && max <= 3000.0, "{st}");
    // The throttled answers were throttles, and waited like every other answer.
    assert!(sim.stats()["throttled"].as_u64().expect("throttled") >= 3);
}

#[test]
fn a_family_median_applies_to_that_family_only() {
    let sim = Sim::start(&["--latency", "tiles=1500ms,cdn=1s"]);
    // A thumbnail URL from the Graph API (which answers at once).
    let (s, body, _) =
        timed(&sim, &format!("/images?bbox={FIXTURE_BBOX}&limit=1&fields=id,thumb_256_url"), &[]);
    assert_eq!(s, 200);
    let found: Value = serde_json::from_slice(&body).expect("JSON");
    let thumb = found["data"][0]["thumb_256_url"].as_str().expect("thumb url").to_string();
    let image = found["data"][0]["id"].as_str().expect("id").to_string();

    let (s, _, took) = timed(&sim, FIXTURE_TILE, &[]);
    assert_eq!(s, 200);
    assert!(took >= Duration::from_millis(600), "a tile answered after {took:?}");
    let t0 = Instant::now();
    let (s, jpeg) = http_get(&thumb, &[]);
    let took = t0.elapsed();
    assert_eq!((s, &jpeg[..2]), (200, &[0xFF, 0xD8][..]));
    assert!(took >= Duration::from_millis(400), "a thumbnail answered after {took:?}");

    // The Graph API families have no latency: ten calls of each take less than five of the
    // shortest answers a delayed family gives (0.6 s for tiles).
    for pq in [format!("/{image}?fields=id"), format!("/images?bbox={FIXTURE_BBOX}&limit=5&fields=id")] {
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(timed(&sim, &pq, &[]).0, 200);
        }
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(3), "10 × {pq} took {took:?}");
    }
    let st = latency_stats(&sim);
    let keys: Vec<&str> = st.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(keys, ["cdn", "tiles"], "{st}");
    assert_eq!((st["tiles"]["count"].as_u64(), st["cdn"]["count"].as_u64()), (Some(1), Some(1)), "{st}");
    assert_eq!(st["tiles"]["median_ms"], 1500.0);
}

#[test]
fn the_draws_are_the_same_for_a_seed_whatever_the_order_of_requests() {
    let args = ["--latency", "tiles=200ms,entity=200ms", "--seed", "5"];
    let (a, b) = (Sim::start(&args), Sim::start(&args));
    let mut reqs: Vec<(String, Vec<(&str, &str)>)> = (0..24)
        .map(|i| (format!("/{}?fields=id", 77_000 + i % 12), vec![]))
        .chain((0..6).map(|_| (FIXTURE_TILE.to_string(), vec![])))
        .collect();
    let (first, _) = all_at_once(&a, &reqs);
    reqs.reverse();
    let (second, _) = all_at_once(&b, &reqs);
    assert!(first.iter().chain(&second).all(|(_, took)| *took >= Duration::from_millis(80)));
    let (sa, sb) = (latency_stats(&a), latency_stats(&b));
    assert_eq!(sa, sb, "same seed, same requests in another order");
    assert_eq!(sa["entity"]["count"], 24);
    // Another seed draws other waits.
    let c = Sim::start(&["--latency", "tiles=200ms,entity=200ms", "--seed", "6"]);
    all_at_once(&c, &reqs);
    assert_ne!(latency_stats(&c)["entity"], sa["entity"]);
}
