//! Surviving the live service (issue 11 items 1, 2, 4) against the simulator's failure modes
//! (issue 10 item 4): nothing is deleted on an answer that proves nothing, a real deletion is
//! still found (and its Graph confirmation counted), a per-IP block stops every tile request at
//! once and is remembered, query timeouts split the search, and 403 code-4 throttling is retried.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;

use mly_contract::Secret;
use mly_contract::Tileset;
use mly_contract::tiles::TileId;
use mly_core::api::{ApiClient, ApiError, ApiSettings, Pacing};

/// Two suburban Malmö tiles (14/8785/5134 and 14/8786/5134), a few thousand images each.
/// A nightly re-sync that re-reads every tile (the rolling refresh made due for all), as these
/// tests need the z14 tiles read again.
const FULL_REREAD: &str = "--refresh-tiles-older-than=0s";
const SUBURB: &str = "13.035,55.595,13.06,55.600";

fn write_file(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_str().unwrap().to_string()
}

fn with<'a>(mut env: Vec<(&'a str, &'a str)>, key: &'a str, value: &'a str) -> Vec<(&'a str, &'a str)> {
    env.retain(|(k, _)| *k != key);
    env.push((key, value));
    env
}

fn tiles(s: &serde_json::Value) -> u64 {
    s["requests"]["tiles"].as_u64().unwrap()
}

fn entity(s: &serde_json::Value) -> u64 {
    s["requests"]["entity"].as_u64().unwrap()
}

fn count(db: &str, sql: &str) -> i64 {
    psql(db, sql).parse().unwrap()
}

fn set(db: &str, sql: &str) -> BTreeSet<String> {
    psql(db, sql).lines().map(str::to_string).collect()
}

/// The number after `label` in the summary (e.g. "confirmed by 12 Graph calls").
fn summary_number(out: &str, before: &str) -> u64 {
    let i = out.find(before).unwrap_or_else(|| panic!("no {before:?} in {out}"));
    out[..i]
        .split_whitespace()
        .last()
        .and_then(|w| w.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or_else(|| panic!("no number before {before:?} in {out}"))
}

#[test]
fn a_transient_404_on_tiles_with_data_deletes_nothing() {
    let db = fresh_db("surv_404");
    {
        let sim = Sim::start(&[]);
        sync_ok(&run(&["sync", SUBURB], &harvest_env(&sim, &db)));
    }
    let clean = checksum(&db);
    let records = count(
        &db,
        "SELECT (SELECT count(*) FROM mapillary.images) + (SELECT count(*) FROM mapillary.map_features)",
    );
    assert!(records > 1000, "the region holds data");
    let with_data = count(&db, "SELECT count(*) FROM mapillary.tile_state WHERE record_count > 0") as u64;
    assert!(with_data >= 2, "{with_data}");

    // Every tile with data answers 404 at every read during the nightly re-sync.
    let dir = tempfile::tempdir().unwrap();
    let faults = write_file(dir.path(), "faults.toml", "seed = 3\n[tiles]\ntransient_404 = 1.0\n");
    let sim = Sim::start(&["--faults", &faults]);
    let env = with(harvest_env(&sim, &db), "MLY_HARVEST__RECHECK_SECS", "1");
    let before = sim.stats();
    let out = sync_ok(&run(&["sync", SUBURB, FULL_REREAD], &env));
    let after = sim.stats();
    assert_eq!(checksum(&db), clean, "a 404 changed the tables: {out}");
    assert_eq!(count(&db, "SELECT count(*) FROM mapillary.images WHERE deleted_at IS NOT NULL"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM mapillary.map_features WHERE deleted_at IS NOT NULL"), 0);
    // Each tile with data was read three times (once, then twice later in the run) ...
    assert_eq!(summary_number(&out, "tiles re-read"), 2 * with_data, "{out}");
    assert_eq!(tiles(&after) - tiles(&before), 3 * with_data + (6 - with_data), "{out}");
    // ... then its records were checked by id, found, kept and counted.
    assert_eq!(summary_number(&out, "missing_from_tile"), records as u64, "{out}");
    assert_eq!(summary_number(&out, "deleted (confirmed"), 0, "{out}");
    let confirm = summary_number(&out, "Graph calls)");
    assert!(confirm >= (records as u64).div_ceil(50), "{out}");
    assert!(entity(&after) - entity(&before) >= confirm);
    let listed = psql(&db, &std::fs::read_to_string(repo_root().join("sql/missing_from_tile.sql")).unwrap());
    assert_eq!(listed.lines().count() as i64, records, "sql/missing_from_tile.sql lists every kept record");

    // The next clean night reads them again: the marks go, the tables stay.
    drop(sim);
    let sim = Sim::start(&[]);
    sync_ok(&run(&["sync", SUBURB, FULL_REREAD], &harvest_env(&sim, &db)));
    assert_eq!(checksum(&db), clean);
    assert_eq!(
        count(
            &db,
            "SELECT (SELECT count(*) FROM mapillary.images WHERE missing_from_tile_at IS NOT NULL)
                  + (SELECT count(*) FROM mapillary.map_features WHERE missing_from_tile_at IS NOT NULL)"
        ),
        0
    );
}

/// One dense tile of central Malmö (17,230 images at epoch 0).
const DENSE: &str = "13.0,55.605,13.0005,55.6052";

#[test]
fn a_transient_404_on_a_dense_tile_deletes_nothing() {
    let db = fresh_db("surv_dense");
    {
        let sim = Sim::start(&[]);
        let env = with(harvest_env(&sim, &db), "MLY_HARVEST__TILESETS", "mly1_public");
        sync_ok(&run(&["sync", DENSE], &env));
    }
    let clean = checksum(&db);
    let images = count(&db, "SELECT count(*) FROM mapillary.images");
    assert!(images > 10_000, "{images}");
    let dir = tempfile::tempdir().unwrap();
    let faults = write_file(dir.path(), "faults.toml", "[tiles]\ntransient_404 = 1.0\n");
    let sim = Sim::start(&["--faults", &faults]);
    let env = with(harvest_env(&sim, &db), "MLY_HARVEST__TILESETS", "mly1_public");
    let env = with(env, "MLY_HARVEST__RECHECK_SECS", "1");
    let out = sync_ok(&run(&["sync", DENSE, FULL_REREAD], &env));
    assert_eq!(checksum(&db), clean, "{out}");
    assert_eq!(summary_number(&out, "deleted (confirmed"), 0, "{out}");
    assert_eq!(summary_number(&out, "missing_from_tile"), images as u64, "{out}");
    assert_eq!(summary_number(&out, "Graph calls)"), (images as u64).div_ceil(50), "{out}");
    assert_eq!(tiles(&sim.stats()), 3, "read once, then twice later in the run");
}

#[test]
fn a_real_deletion_is_confirmed_by_id_then_tombstoned() {
    // The same nightly re-sync (epoch 0 → 1) twice: once clean, once meeting transient 404s that
    // clear on a later read (seed 2: three tiles 404 at their first read, two also at their second).
    let (db, clean) = (fresh_db("surv_delete"), fresh_db("surv_delete_clean"));
    {
        let sim = Sim::start(&["--epoch", "0"]);
        sync_ok(&run(&["sync", SUBURB], &harvest_env(&sim, &db)));
        sync_ok(&run(&["sync", SUBURB], &harvest_env(&sim, &clean)));
    }
    {
        let sim = Sim::start(&["--epoch", "1"]);
        sync_ok(&run(&["sync", SUBURB], &harvest_env(&sim, &clean)));
    }
    let dir = tempfile::tempdir().unwrap();
    let faults = write_file(dir.path(), "faults.toml", "seed = 2\n[tiles]\ntransient_404 = 0.5\n");
    let sim = Sim::start(&["--epoch", "1", "--faults", &faults]);
    let env = with(harvest_env(&sim, &db), "MLY_HARVEST__RECHECK_SECS", "1");
    let before = sim.stats();
    let out = sync_ok(&run(&["sync", SUBURB, FULL_REREAD], &env));
    let after = sim.stats();
    assert_eq!(after["faults"]["transient_404"], 5, "{after}");
    assert_eq!(summary_number(&out, "tiles re-read"), 5, "{out}");
    assert_eq!(checksum(&db), checksum(&clean), "transient 404s changed the re-synced tables: {out}");
    let deleted = set(&db, "SELECT id FROM mapillary.images WHERE deleted_at IS NOT NULL");
    assert!(!deleted.is_empty(), "epoch 1 deleted images in the region: {out}");
    // Every tombstoned record is really gone upstream ...
    for id in deleted.iter().take(20) {
        let (status, body) =
            sim.get(&format!("/{id}?fields=id&access_token={}", SIM_TOKEN.replace('|', "%7C")));
        assert_eq!(status, 400, "image {id} was tombstoned but exists: {}", String::from_utf8_lossy(&body));
    }
    // ... and the confirmation calls are counted, in the summary and at the simulator.
    let confirm = summary_number(&out, "Graph calls)");
    assert!(confirm >= 1, "{out}");
    assert!(entity(&after) - entity(&before) >= confirm, "{out}");
    assert_eq!(
        summary_number(&out, "deleted (confirmed"),
        deleted.len() as u64
            + count(&db, "SELECT count(*) FROM mapillary.map_features WHERE deleted_at IS NOT NULL") as u64,
        "{out}"
    );
    // Images that moved out of the region are still there upstream: kept, in their new tile.
    let moved = summary_number(&out, "moved out");
    let outside = set(
        &db,
        "SELECT id FROM mapillary.images_live i WHERE NOT EXISTS (SELECT 1 FROM mapillary.harvest_tile t
           WHERE t.x = i.tile_x AND t.y = i.tile_y)",
    );
    assert!(outside.len() as u64 <= moved, "{out}");
    for id in outside.iter().take(10) {
        let (status, _) = sim.get(&format!("/{id}?fields=id&access_token={}", SIM_TOKEN.replace('|', "%7C")));
        assert_eq!(status, 200, "image {id} was moved out of the region but does not exist");
    }
}

#[test]
fn a_block_stops_every_tile_request_and_the_run_resumes_after_the_block_time() {
    let clean = {
        let sim = Sim::start(&[]);
        let db = fresh_db("surv_block_clean");
        sync_ok(&run(&["sync", SUBURB], &harvest_env(&sim, &db)));
        checksum(&db)
    };
    let dir = tempfile::tempdir().unwrap();
    let faults = write_file(dir.path(), "faults.toml", "[block]\nafter_tiles = 3\nsecs = 1.5\n");
    let sim = Sim::start(&["--faults", &faults]);
    let db = fresh_db("surv_block");
    let env = with(harvest_env(&sim, &db), "MLY_HARVEST__BLOCK_PAUSE_SECS", "20");

    let s0 = sim.stats();
    let o = run(&["sync", SUBURB], &env);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(10), "stdout: {} stderr: {err}", String::from_utf8_lossy(&o.stdout));
    let s1 = sim.stats();
    assert_eq!(tiles(&s1) - tiles(&s0), 4, "three tiles served, then exactly the blocked request: {s1}");
    assert_eq!(s1["faults"]["block"], 1, "{s1}");
    let line: Vec<&str> = err.lines().filter(|l| l.starts_with("mly-harvest: error:")).collect();
    assert_eq!(line.len(), 1, "{err}");
    assert!(
        line[0].contains("the tile server blocked this IP at ") && line[0].contains("`sync` resumes after "),
        "{err}"
    );
    assert!(!err.contains("0123456789abcdef0123456789abcdef") && !err.contains("REDACTED"), "{err}");
    assert_eq!(
        psql(&db, "SELECT extract(epoch FROM resume_after - blocked_at) FROM mly_harvest_global.tile_block"),
        "20.000000",
        "the block and its time are recorded, for every schema of the database"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM mapillary.harvest_tile WHERE state = 'done'"), 3);
    assert_eq!(count(&db, "SELECT count(*) FROM mapillary.harvest_tile WHERE state = 'failed'"), 0);

    let status = run(&["status"], &env);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(shown.contains("the tile server blocked this IP at "), "status shows the block: {shown}");

    // Before the block time: exit 10 at once, not one tile request.
    let t = Instant::now();
    let o = run(&["sync", SUBURB], &env);
    assert_eq!(o.status.code(), Some(10), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(t.elapsed() < Duration::from_secs(3));
    let s2 = sim.stats();
    assert_eq!(tiles(&s2) - tiles(&s1), 0, "a run during the block asked the tile server");

    // Every harvest schema of the database sees the block.
    let other = with(env.clone(), "MLY_DATABASE__SCHEMA", "other");
    let o = run(&["sync", SUBURB], &other);
    assert_eq!(o.status.code(), Some(10), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tiles(&sim.stats()) - tiles(&s2), 0, "a run of another schema asked the tile server");

    // After the block time the run completes with the tables of an uninterrupted run.
    let wait: f64 = psql(
        &db,
        "SELECT greatest(0, extract(epoch FROM resume_after - now()))::float8 FROM mly_harvest_global.tile_block",
    )
    .parse()
    .unwrap();
    std::thread::sleep(Duration::from_secs_f64(wait + 0.2));
    let out = sync_ok(&run(&["sync", SUBURB], &env));
    let s3 = sim.stats();
    assert_eq!(tiles(&s3) - tiles(&s2), 3, "{out}");
    assert_eq!(checksum(&db), clean);
    assert_eq!(count(&db, "SELECT count(DISTINCT id) FROM mapillary.harvest_run"), 1, "one run, resumed");
}

#[test]
fn a_block_stops_every_process_of_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let faults = write_file(dir.path(), "faults.toml", "[block]\nafter_tiles = 2\nsecs = 30\n");
    let sim = Sim::start(&["--faults", &faults]);
    let db = fresh_db("surv_block_two");
    let env = with(harvest_env(&sim, &db), "MLY_HARVEST__TILESETS", "mly1_public");
    let env = with(env, "MLY_LIMITS__CONCURRENCY", "2");
    // Six tiles, two processes.
    let region = "13.03,55.595,13.10,55.600";
    let spawn = || {
        let mut c = std::process::Command::new(bin());
        c.args(["-q", "sync", region]).env_remove("MAPILLARY_ACCESS_TOKEN");
        for (k, v) in &env {
            c.env(k, v);
        }
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for o in [&a, &b] {
        assert_eq!(o.status.code(), Some(10), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // Each process may have had one request on its way when the other met the block; no more.
    let stats = sim.stats();
    assert!(tiles(&stats) <= 2 + 2, "tile requests after the block: {stats}");
    assert_eq!(count(&db, "SELECT count(*) FROM mly_harvest_global.tile_block"), 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM mapillary.harvest_tile WHERE state IN ('leased', 'failed')"),
        0
    );
}

#[test]
fn ignore_block_overrides_a_recorded_block() {
    let sim = Sim::start(&[]);
    let db = fresh_db("surv_ignore");
    let env = with(harvest_env(&sim, &db), "MLY_HARVEST__TILESETS", "mly1_public");
    let region = "13.035,55.595,13.04,55.597";
    // A block recorded by an earlier run on this machine, not over yet.
    let o = run(&["migrate"], &env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().replace(':', "_");
    psql(
        &db,
        &format!(
            "INSERT INTO mly_harvest_global.tile_block VALUES ('{}', '{host}', now() - interval '1 hour',
               now() + interval '23 hours', 'HTTP 302 redirect to www.mapillary.com', 'mapillary', NULL)",
            sim.url
        ),
    );
    let s0 = sim.stats();
    let o = run(&["sync", region], &env);
    assert_eq!(o.status.code(), Some(10), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("(HTTP 302 redirect to www.mapillary.com)"), "{err}");
    assert_eq!(tiles(&sim.stats()) - tiles(&s0), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM mapillary.harvest_run"), 0, "no job state was touched");
    // --ignore-block asks anyway; the server answers normally, so the run completes.
    let out = sync_ok(&run(&["sync", region, "--ignore-block"], &env));
    assert!(tiles(&sim.stats()) - tiles(&s0) >= 1, "{out}");
}

#[test]
fn query_timeouts_split_the_search_and_403_throttling_is_retried() {
    let clean = {
        let sim = Sim::start(&[]);
        let db = fresh_db("surv_timeout_clean");
        sync_ok(&run(&["sync", SUBURB], &harvest_env(&sim, &db)));
        checksum(&db)
    };
    let dir = tempfile::tempdir().unwrap();
    let faults = write_file(
        dir.path(),
        "faults.toml",
        "seed = 5\n[search]\nquery_timeout = 0.6\nthrottle = 0.05\n[entity]\nquery_timeout = 0.05\nthrottle = 0.08\n",
    );
    let sim = Sim::start(&["--faults", &faults, "--throttle-status", "403"]);
    let db = fresh_db("surv_timeout");
    let out = sync_ok(&run(&["sync", SUBURB], &harvest_env(&sim, &db)));
    let stats = sim.stats();
    assert!(stats["faults"]["query_timeout"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(stats["statuses"]["403"].as_u64().unwrap_or(0) > 0, "no 403 throttle was answered: {stats}");
    assert_eq!(checksum(&db), clean, "{out}");
    assert_eq!(count(&db, "SELECT count(*) FROM mapillary.harvest_tile WHERE state <> 'done'"), 0);
}

async fn serve(router: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    format!("http://{addr}")
}

fn client(base: &str) -> ApiClient {
    ApiClient::new(
        ApiSettings {
            graph_url: base.to_string(),
            tiles_url: base.to_string(),
            token: Secret::new(SIM_TOKEN),
            timeout: Duration::from_secs(5),
            max_retries: 3,
            search_per_minute: 60_000,
            entity_per_minute: 60_000,
            tiles_in_flight: 1,
            breaker_after: 1000,
        },
        Pacing::ThisProcess,
    )
    .unwrap()
}

#[tokio::test]
async fn a_redirect_or_an_html_page_on_a_tile_is_a_block_and_stops_tile_requests() {
    let tile = TileId::new(14, 8785, 5134).unwrap();
    for kind in ["redirect", "html"] {
        let hits = Arc::new(AtomicUsize::new(0));
        let login = Arc::new(AtomicUsize::new(0));
        let (h, l) = (hits.clone(), login.clone());
        let router = Router::new()
            .route(
                "/login/",
                axum::routing::get(move || {
                    l.fetch_add(1, Ordering::SeqCst);
                    async { ([(header::CONTENT_TYPE, "text/html")], "<html>login</html>") }
                }),
            )
            .fallback(move |req: axum::extract::Request| {
                h.fetch_add(1, Ordering::SeqCst);
                let q = req.uri().to_string();
                async move {
                    if kind == "redirect" {
                        let mut r = StatusCode::FOUND.into_response();
                        let loc = format!("/login/?next={}", q.replace('&', "%26"));
                        r.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&loc).unwrap());
                        r
                    } else {
                        // Some proxies and captive portals answer 200 with a page and no HTML type.
                        (
                            [(header::CONTENT_TYPE, "application/octet-stream")],
                            "\n<!DOCTYPE html><html></html>",
                        )
                            .into_response()
                    }
                }
            });
        let base = serve(router).await;
        let c = client(&base);
        let e = c.tile(Tileset::Public, tile, None).await.unwrap_err();
        assert!(matches!(e, ApiError::Blocked { .. }), "{kind}: {e}");
        let m = e.to_string();
        assert!(m.contains("blocked this IP") && !m.contains("0123456789abcdef"), "{m}");
        // Not followed, not retried, and no further tile request leaves the client.
        let again = c.tile(Tileset::Public, tile, None).await.unwrap_err();
        assert!(matches!(again, ApiError::Blocked { .. }));
        assert_eq!(hits.load(Ordering::SeqCst), 1, "{kind}");
        assert_eq!(login.load(Ordering::SeqCst), 0, "{kind}: the redirect was followed");
        assert_eq!(c.counters().tiles, 1);
    }
}

/// GET over loopback returning (status, raw response head, body).
fn get_with_head(url: &str) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, buf[end..].to_vec())
}

#[test]
fn the_simulator_answers_the_live_failure_modes_over_http() {
    let token = SIM_TOKEN.replace('|', "%7C");
    let dir = tempfile::tempdir().unwrap();
    let faults = write_file(
        dir.path(),
        "faults.toml",
        "[block]\nafter_tiles = 2\nsecs = 1.0\n[search]\nquery_timeout = 1.0\n[entity]\nthrottle = 1.0\n",
    );
    let sim = Sim::start(&["--faults", &faults, "--throttle-status", "403"]);
    let tile = |ts: &str| format!("{}/maps/vtp/{ts}/2/14/8785/5134?access_token={token}", sim.url);
    // Two tile requests are served, then the block: 302 to the login page, the request echoed
    // without the token; it lasts while requests keep coming, and lifts after `secs` of silence.
    assert_eq!(get_with_head(&tile("mly1_public")).0, 200);
    assert_eq!(get_with_head(&tile("mly_map_feature_point")).0, 200);
    for _ in 0..3 {
        let (status, head, _) = get_with_head(&tile("mly1_public"));
        assert_eq!(status, 302, "{head}");
        let location = head
            .lines()
            .find_map(|l| l.strip_prefix("location: ").or_else(|| l.strip_prefix("Location: ")))
            .unwrap_or_else(|| panic!("no Location in {head}"));
        assert!(location.starts_with("https://www.mapillary.com/login/?next="), "{location}");
        assert!(location.contains("8785") && !location.contains("0123456789abcdef"), "{location}");
        std::thread::sleep(Duration::from_millis(600));
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(get_with_head(&tile("mly1_public")).0, 200, "the block lifts after a quiet second");
    // Graph calls are not blocked; searches time out as in §13.7; code-4 throttling comes as 403.
    let (status, _, body) =
        get_with_head(&format!("{}/images?bbox=13.035,55.595,13.036,55.596&access_token={token}", sim.url));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], -2);
    assert_eq!(v["error"]["error_subcode"], 3_404_014);
    assert_eq!(v["error"]["is_transient"], false);
    assert_eq!(v["error"]["error_user_title"], "Query Timeout");
    let (status, _, body) = get_with_head(&format!("{}/1?fields=id&access_token={token}", sim.url));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, v["error"]["code"].as_i64()), (403, Some(4)), "{v}");
    let stats = sim.stats();
    assert_eq!(stats["faults"]["block"], 3, "{stats}");

    // Transient 404s hit tiles with data only; an empty tile keeps its usual answer.
    let faults = write_file(dir.path(), "404.toml", "[tiles]\ntransient_404 = 1.0\n");
    let sim = Sim::start(&["--faults", &faults]);
    let (status, _, _) =
        get_with_head(&format!("{}/maps/vtp/mly1_public/2/14/8785/5134?access_token={token}", sim.url));
    assert_eq!(status, 404);
    // Open sea west of Malmö: no data.
    let (status, _, body) =
        get_with_head(&format!("{}/maps/vtp/mly1_public/2/14/8700/5100?access_token={token}", sim.url));
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(sim.stats()["faults"]["transient_404"], 1);
}
