//! One rate budget for all processes of a run, on any number of hosts (issue 12 item 4): the
//! Graph API's per-minute limits are the app's, so the processes share one timeline per app and
//! family in the database (`budget::timeline`), and `status` lists the live workers.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use mly_contract::Family;
use mly_core::jobs::budget::AppKey;
use mly_core::jobs::budget::timeline::{self, Reserved};
use mly_core::store::Store;

use common::{Sim, checksum, fresh_db, harvest_env, psql, read_only_role, run, spawn_to_files, sync_ok};

/// Twelve z14 tiles south-east of Malmö (36 tile jobs with the three tilesets): with detections,
/// 46 searches and 610 entity calls.
const REGION: &str = "13.05,55.56,13.10,55.58";
/// Lowered limits, on the simulator and in the harvester: the run needs more calls of each family
/// than a minute allows (46 > 40 searches, 610 > 480 entity calls), so it is Graph-bound for about
/// 90 s, and processes that each kept the limit on their own would exceed it together.
const SEARCH_PER_MINUTE: u64 = 40;
const ENTITY_PER_MINUTE: u64 = 480;

async fn migrated(tag: &str) -> (Store, String) {
    let url = fresh_db(tag);
    let store = Store::connect(&url, "mapillary", 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    (store, url)
}

/// Two schemas (two processes' stores) reserving spans of one app's timeline at once: no two
/// spans overlap, whoever asks, and each starts where the one before it ends or later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reservers_never_overlap() {
    let (a, url) = migrated("rate_overlap").await;
    let b = Store::connect(&url, "second", 4).await.unwrap();
    b.migrate().await.unwrap();
    let app = AppKey::from_token("MLY|5150|secret-of-the-rate-test");
    let mut tasks = tokio::task::JoinSet::new();
    for (i, store) in [a.clone(), b.clone(), a, b].into_iter().enumerate() {
        let app = app.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            for k in 0..40u64 {
                let span = Duration::from_micros(1000 + 997 * ((k * 7 + i as u64) % 13));
                got.push(timeline::reserve(store.pool(), &app, Family::Entity, span).await.unwrap());
            }
            got
        });
    }
    let mut all: Vec<Reserved> = tasks.join_all().await.into_iter().flatten().collect();
    assert_eq!(all.len(), 160);
    all.sort_by_key(|r| r.start);
    for w in all.windows(2) {
        assert!(w[1].start >= w[0].end(), "{:?} overlaps {:?}", w[1], w[0]);
    }
    // The spans were asked for faster than they pass: back to back, so the timeline ran ahead.
    let busy: Duration = all.iter().map(|r| r.span).sum();
    let covered = (all[159].end() - all[0].start).to_std().unwrap();
    assert!(covered >= busy && covered < busy + Duration::from_millis(500), "{covered:?} for {busy:?}");
    assert!(all.iter().any(|r| r.first_in > Duration::ZERO), "no reserver ever waited");
    // One timeline per app and family, never the token.
    assert_eq!(psql(&url, "SELECT count(*) FROM mly_harvest_global.rate_timeline"), "1");
    let key = psql(&url, "SELECT app_key FROM mly_harvest_global.rate_timeline");
    assert_eq!(key, app.as_str());
}

/// A reserver that dies holds back the others only until the end of the span it reserved:
/// the next reserver starts exactly there, and once it has passed, at once.
#[tokio::test]
async fn a_dead_reservers_unused_slots_cost_others_nothing_beyond_its_span() {
    let (store, _url) = migrated("rate_dead").await;
    let app = AppKey::from_token("MLY|5151|secret-of-the-rate-test");
    let dead =
        timeline::reserve(store.pool(), &app, Family::Search, Duration::from_millis(1500)).await.unwrap();
    // ... and it never uses them. Another process joins at once:
    let next =
        timeline::reserve(store.pool(), &app, Family::Search, Duration::from_millis(100)).await.unwrap();
    assert_eq!(next.start, dead.end(), "the joiner's slots follow the dead one's span, no later");
    assert!(next.first_in <= Duration::from_millis(1500) && next.first_in > Duration::from_millis(1000));
    tokio::time::sleep(next.first_in + next.span + Duration::from_millis(50)).await;
    let later =
        timeline::reserve(store.pool(), &app, Family::Search, Duration::from_millis(100)).await.unwrap();
    assert_eq!(later.first_in, Duration::ZERO, "the past span still counted: {later:?}");
    assert!(later.start > next.end());
    // Families and apps have their own timelines.
    let entity = timeline::reserve(store.pool(), &app, Family::Entity, Duration::from_secs(5)).await.unwrap();
    assert_eq!(entity.first_in, Duration::ZERO);
    // A throttle holds every process of the app off the family.
    timeline::hold_off(store.pool(), &app, Family::Search, Duration::from_secs(2)).await.unwrap();
    let held =
        timeline::reserve(store.pool(), &app, Family::Search, Duration::from_millis(100)).await.unwrap();
    assert!(held.first_in > Duration::from_millis(1800), "{held:?}");
}

/// `sync REGION` in the background, its output and metrics file under `dir`.
fn spawn_sync(env: &[(&str, &str)], dir: &Path, tag: &str) -> Child {
    let metrics = dir.join(format!("{tag}.prom"));
    spawn_to_files(&["sync", REGION, "--metrics-file", metrics.to_str().unwrap()], env, dir, tag)
}

/// The harvester's environment for the lowered limits; detections make entity calls.
fn limited_env<'a>(sim: &'a Sim, db: &'a str, lease: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut env = harvest_env(sim, db);
    env.retain(|(k, _)| *k != "MLY_HARVEST__LEASE_SECS");
    env.extend([
        ("MLY_HARVEST__DETECTIONS", "true"),
        ("MLY_LIMITS__SEARCH_PER_MINUTE", "40"),
        ("MLY_LIMITS__ENTITY_PER_MINUTE", "480"),
        // Four tiles at a time per process, so that the twelve coverage tiles (where the Graph
        // calls are) spread over the processes instead of going to the first one to claim.
        ("MLY_LIMITS__CONCURRENCY", "4"),
        ("MLY_HARVEST__LEASE_SECS", lease),
    ]);
    env
}

fn limited_sim() -> Sim {
    Sim::start(&[
        "--search-per-minute",
        &SEARCH_PER_MINUTE.to_string(),
        "--entity-per-minute",
        &ENTITY_PER_MINUTE.to_string(),
    ])
}

/// The tables a single process harvests from an unlimited simulator.
fn reference_checksum() -> String {
    let sim = Sim::start(&[]);
    let db = fresh_db("rate_reference");
    let mut env = harvest_env(&sim, &db);
    env.push(("MLY_HARVEST__DETECTIONS", "true"));
    sync_ok(&run(&["sync", REGION], &env));
    assert_ne!(psql(&db, "SELECT count(*) FROM mapillary.detections"), "0");
    checksum(&db)
}

/// `status --json` as `url` sees it: (pid, host, heartbeat age) of each live worker of run 1.
fn live_workers(url: &str) -> Vec<(u32, String, f64)> {
    let o = run(&["status", "--json"], &[("DATABASE_URL", url)]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["workers"].as_array().unwrap().clone())
        .map(|w| {
            assert!(chrono::DateTime::parse_from_rfc3339(w["heartbeat_at"].as_str().unwrap()).is_ok(), "{w}");
            (
                w["pid"].as_u64().unwrap() as u32,
                w["host"].as_str().unwrap().to_string(),
                w["heartbeat_age_secs"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Asserts the simulator saw no minute over the limits and no throttle; returns the stats.
fn assert_within_limits(sim: &Sim) -> serde_json::Value {
    let s = sim.stats();
    assert_eq!(s["throttled"].as_u64().unwrap(), 0, "{s}");
    let max = |f: &str| s["max_per_minute"][f].as_u64().unwrap();
    assert!(max("search") <= SEARCH_PER_MINUTE, "{s}");
    assert!(max("entity") <= ENTITY_PER_MINUTE, "{s}");
    // The run needed more than a minute's worth of each family: the limits were what held it.
    assert!(s["requests"]["search"].as_u64().unwrap() > SEARCH_PER_MINUTE, "{s}");
    assert!(s["requests"]["entity"].as_u64().unwrap() > ENTITY_PER_MINUTE, "{s}");
    s
}

/// A sample of a process's metrics file: the first line of metric `name` that has `label`.
fn metric(dir: &Path, tag: &str, name: &str, label: &str) -> f64 {
    let text = std::fs::read_to_string(dir.join(format!("{tag}.prom"))).unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no {name} {label} in {text}"))
}

#[test]
fn three_processes_keep_the_apps_limits_together_and_status_lists_them() {
    let expected = reference_checksum();
    let sim = limited_sim();
    let db = fresh_db("rate_three");
    let env = limited_env(&sim, &db, "30");
    sync_ok(&run(&["migrate"], &env));
    // `status` runs as a read-only role: it lists the workers without writing anything.
    let (role, ro_url) = read_only_role(&db, "rate_ro");
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut children: Vec<Child> = (0..3).map(|i| spawn_sync(&env, dir.path(), &format!("p{i}"))).collect();
    let pids: Vec<u32> = children.iter().map(Child::id).collect();

    // While the run is in progress, status shows all three: this host, their pids, a fresh heartbeat.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().replace(':', "_");
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let w = live_workers(&ro_url);
        if w.len() == 3 || Instant::now() > deadline {
            break w;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut seen_pids: Vec<u32> = seen.iter().map(|w| w.0).collect();
    seen_pids.sort_unstable();
    let mut want = pids.clone();
    want.sort_unstable();
    assert_eq!(seen_pids, want, "status during the run: {seen:?}");
    assert!(seen.iter().all(|w| w.1 == host && w.2 < 30.0), "{seen:?}");
    let o = run(&["status"], &[("DATABASE_URL", ro_url.as_str())]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    for pid in &pids {
        assert!(text.contains(&format!("worker {host} pid {pid}: heartbeat ")), "{text}");
    }

    for (i, c) in children.iter_mut().enumerate() {
        let status = c.wait().unwrap();
        let err = std::fs::read_to_string(dir.path().join(format!("p{i}.err"))).unwrap();
        assert!(status.success(), "process {i} failed ({:?}): {err}", status.code());
    }
    let took = started.elapsed();
    let s = assert_within_limits(&sim);
    eprintln!(
        "3 processes: {:.1} s; max per minute: search {} of {SEARCH_PER_MINUTE}, entity {} of {ENTITY_PER_MINUTE}; requests {}",
        took.as_secs_f64(),
        s["max_per_minute"]["search"],
        s["max_per_minute"]["entity"],
        s["requests"]
    );
    // The limits were shared, not held by one process doing all the Graph work.
    let calls: Vec<f64> = (0..3)
        .map(|i| {
            let tag = format!("p{i}");
            metric(dir.path(), &tag, "mly_harvest_run_requests", "family=\"search\"")
                + metric(dir.path(), &tag, "mly_harvest_run_requests", "family=\"entity\"")
        })
        .collect();
    assert!(calls.iter().filter(|n| **n > 0.0).count() >= 2, "Graph calls per process: {calls:?}");
    // Batching: well under one database round trip per Graph call.
    let reservations: f64 =
        (0..3).map(|i| metric(dir.path(), &format!("p{i}"), "mly_harvest_run_rate_reservations", "")).sum();
    let total: f64 = calls.iter().sum();
    eprintln!("{reservations} rate reservations for {total} Graph calls; per process {calls:?}");
    assert!(reservations < 0.5 * total, "{reservations} reservations for {total} calls");

    assert_eq!(checksum(&db), expected, "three processes gave other tables than one");
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.harvest_tile WHERE state <> 'done'"), "0");
    // After the run: no live worker, and no row left behind.
    assert_eq!(live_workers(&ro_url), vec![]);
    let o = run(&["status"], &[("DATABASE_URL", ro_url.as_str())]);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("worker "),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.harvest_worker"), "0");
    psql(&db, &format!("DROP OWNED BY {role}"));
    psql(&db, &format!("DROP ROLE {role}"));
}

#[test]
fn a_killed_process_loses_nothing_and_the_others_finish_its_tiles_within_the_limits() {
    let expected = reference_checksum();
    let sim = limited_sim();
    let db = fresh_db("rate_kill");
    // A short lease: the killed process's tiles and its worker row expire within seconds.
    let env = limited_env(&sim, &db, "3");
    sync_ok(&run(&["migrate"], &env));
    let dir = tempfile::tempdir().unwrap();
    let mut children: Vec<Child> = (0..3).map(|i| spawn_sync(&env, dir.path(), &format!("p{i}"))).collect();
    // Mid-run: the Graph-bound part lasts over a minute.
    std::thread::sleep(Duration::from_secs(20));
    assert!(children[0].try_wait().unwrap().is_none(), "process 0 ended before the kill");
    // Child::kill sends SIGKILL: no cleanup at all.
    children[0].kill().unwrap();
    children[0].wait().unwrap();
    let killed = children[0].id();
    // Its heartbeat stops: once older than its lease it is no longer listed, the others are.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let w = live_workers(&db);
        if !w.iter().any(|w| w.0 == killed) {
            assert!(w.len() == 2, "the survivors are listed: {w:?}");
            break;
        }
        assert!(Instant::now() < deadline, "a killed worker still listed: {w:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    for (i, c) in children.iter_mut().enumerate().skip(1) {
        let status = c.wait().unwrap();
        let err = std::fs::read_to_string(dir.path().join(format!("p{i}.err"))).unwrap();
        assert!(status.success(), "process {i} failed ({:?}): {err}", status.code());
    }
    let s = assert_within_limits(&sim);
    eprintln!("3 processes, one killed: max per minute {}; requests {}", s["max_per_minute"], s["requests"]);
    assert_eq!(checksum(&db), expected, "a killed process changed the tables");
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.harvest_run"), "1");
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.harvest_tile WHERE state <> 'done'"), "0");
    assert_eq!(psql(&db, "SELECT status FROM mapillary.harvest_run"), "done");
    assert_eq!(live_workers(&db), vec![]);
}
