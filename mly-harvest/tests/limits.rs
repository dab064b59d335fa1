//! Surviving the live service's limits (issue 11 items 3 and 6, issue 16 item 10): the circuit
//! breaker stops a run whose API host does not answer, and the daily tile budget and the tile pace
//! belong to the token's app, shared by every process and schema.

mod common;

use std::time::{Duration, Instant};

use common::{SIM_TOKEN, Sim, fresh_db, harvest_env, psql, run};

/// A loopback URL where nothing listens (connections are refused at once).
fn refused_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

fn set(env: &mut Vec<(&'static str, String)>, key: &'static str, value: &str) {
    env.retain(|(k, _)| *k != key);
    env.push((key, value.to_string()));
}

fn owned(env: Vec<(&str, &str)>) -> Vec<(&'static str, String)> {
    env.into_iter()
        .map(|(k, v)| {
            // Keys are the static names harvest_env uses.
            let k: &'static str = Box::leak(k.to_string().into_boxed_str());
            (k, v.to_string())
        })
        .collect()
}

fn run_owned(args: &[&str], env: &[(&'static str, String)]) -> std::process::Output {
    let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run(args, &e)
}

/// A token of another app, which the simulator also accepts in the budget test.
const OTHER_APP: &str = "MLY|4000000000000002|0123456789abcdef0123456789abcdef";

/// Fifteen suburban z14 tiles east of Malmö (7,541 images): enrichment needs the Graph API for each.
const FIFTEEN_TILES: &str = "13.10,55.54,13.145,55.58";

/// The error line (the last line of stderr).
fn error_line(o: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr);
    stderr.lines().rfind(|l| l.starts_with("mly-harvest: error:")).unwrap_or_default().to_string()
}

#[test]
fn an_unreachable_graph_api_stops_the_run_fast_with_exit_9_and_fails_no_tile() {
    let db = fresh_db("breaker");
    let sim = Sim::start(&[]);
    let dead = refused_url();
    let mut env = owned(harvest_env(&sim, &db));
    set(&mut env, "MLY_MAPILLARY__GRAPH_URL", &dead);
    set(&mut env, "MLY_HARVEST__TILESETS", "mly1_public");
    let started = Instant::now();
    let o = run_owned(&["sync", FIFTEEN_TILES], &env);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(9), "{}", String::from_utf8_lossy(&o.stderr));
    let line = error_line(&o);
    let host = dead.trim_start_matches("http://");
    assert!(line.contains(host) && line.contains("20 times in a row"), "{line}");
    assert!(line.contains("graph_url"), "{line}");
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!all.contains("0123456789abcdef"), "token printed");
    // Before the breaker: 12 tiles x 7 attempts each took 75 s. Generous bound for 2 shared cores.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // No tile was failed for a host that is down, none is left leased, the run is not `running`.
    assert_eq!(
        psql(&db, "SELECT count(*) FROM mapillary.harvest_tile WHERE state IN ('failed', 'leased')"),
        "0"
    );
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.harvest_run WHERE status = 'running'"), "0");

    // With the Graph API back, the same command resumes the run and finishes it.
    set(&mut env, "MLY_MAPILLARY__GRAPH_URL", &sim.url);
    let o = run_owned(&["sync", FIFTEEN_TILES], &env);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.harvest_run"), "1", "one run, resumed");
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.harvest_tile WHERE state <> 'done'"), "0");
}

#[test]
fn a_tile_server_that_never_answers_trips_the_breaker_on_timeouts() {
    let db = fresh_db("breaker_timeout");
    let sim = Sim::start(&[]);
    // Accepts connections (the kernel's backlog) but never answers a byte.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let mut env = owned(harvest_env(&sim, &db));
    set(&mut env, "MLY_MAPILLARY__TILES_URL", &silent_url);
    set(&mut env, "MLY_MAPILLARY__TIMEOUT_SECS", "1");
    set(&mut env, "MLY_MAPILLARY__BREAKER_AFTER", "4");
    set(&mut env, "MLY_HARVEST__TILESETS", "mly1_public");
    let o = run_owned(&["sync", FIFTEEN_TILES], &env);
    assert_eq!(o.status.code(), Some(9), "{}", String::from_utf8_lossy(&o.stderr));
    let line = error_line(&o);
    assert!(
        line.contains("the tile server") && line.contains(silent_url.trim_start_matches("http://")),
        "{line}"
    );
    assert!(line.contains("4 times in a row") && line.contains("tiles_url"), "{line}");
    assert!(!line.contains("access_token") && !line.contains("0123456789abcdef"), "{line}");
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.harvest_tile WHERE state = 'failed'"), "0");
    drop(silent);
}

/// Issue 16 item 10: two schemas harvested with one token spend one `tiles_per_day`; the
/// budget table holds a key derived from the app, never the token.
#[test]
fn two_schemas_on_one_token_share_one_daily_budget() {
    let db = fresh_db("budget_shared");
    let sim = Sim::start(&["--token", SIM_TOKEN, "--token", OTHER_APP]);
    let mut env = owned(harvest_env(&sim, &db));
    set(&mut env, "MLY_LIMITS__TILES_PER_DAY", "5");
    set(&mut env, "MLY_HARVEST__TILESETS", "mly1_public");
    set(&mut env, "MLY_HARVEST__ENRICH", "false");
    // Three tiles in each schema: the first takes 3, the second only the 2 left.
    let region = "13.035,55.595,13.08,55.600";
    let o = run_owned(&["sync", region, "--budget-day", "2026-03-01"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    set(&mut env, "MLY_DATABASE__SCHEMA", "second");
    let o = run_owned(&["sync", region, "--budget-day", "2026-03-01"], &env);
    assert_eq!(o.status.code(), Some(7), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(psql(&db, "SELECT count(*) FROM second.harvest_tile WHERE state = 'done'"), "2");
    assert_eq!(psql(&db, "SELECT sum(used) FROM mly_harvest_global.tile_budget"), "5");
    let key = psql(&db, "SELECT app_key FROM mly_harvest_global.tile_budget");
    assert!(key.starts_with("app-") && !key.contains("4000000000000001"), "{key}");
    assert!(!SIM_TOKEN.contains(&key));
    // Another app (token) on the same database has its own budget: all three tiles.
    set(&mut env, "MAPILLARY_ACCESS_TOKEN", OTHER_APP);
    set(&mut env, "MLY_DATABASE__SCHEMA", "third");
    let o = run_owned(&["sync", region, "--budget-day", "2026-03-01"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(psql(&db, "SELECT count(*) FROM third.harvest_tile WHERE state = 'done'"), "3");
    assert_eq!(psql(&db, "SELECT count(DISTINCT app_key) FROM mly_harvest_global.tile_budget"), "2");
}

/// Issue 11 item 3: `limits.tiles_per_minute` spaces tile requests evenly, across processes.
#[test]
fn tile_requests_keep_the_pace_across_processes() {
    let db = fresh_db("pace");
    let sim = Sim::start(&[]);
    let mut env = owned(harvest_env(&sim, &db));
    // One tile every 400 ms for the app, shared by two processes on two schemas.
    set(&mut env, "MLY_LIMITS__TILES_PER_MINUTE", "150");
    set(&mut env, "MLY_HARVEST__TILESETS", "mly1_public");
    set(&mut env, "MLY_HARVEST__ENRICH", "false");
    let region = "13.035,55.595,13.08,55.600";
    let mut env2 = env.clone();
    set(&mut env2, "MLY_DATABASE__SCHEMA", "second");
    // Both schemas exist first, so that the timed part is only the two syncs.
    for e in [&env, &env2] {
        let o = run_owned(&["migrate"], e);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let started = Instant::now();
    let spawn = |e: &[(&'static str, String)]| {
        let mut c = std::process::Command::new(common::bin());
        c.args(["sync", region]).env_remove("MAPILLARY_ACCESS_TOKEN");
        for (k, v) in e {
            c.env(k, v);
        }
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let (a, b) = (spawn(&env), spawn(&env2));
    for child in [a, b] {
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // Six tile requests at 400 ms apart: the last starts at least 2 s after the first.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2000), "six tiles in {took:?}: the pace was not kept");
    assert_eq!(
        psql(&db, "SELECT count(*) FROM mly_harvest_global.rate_timeline WHERE family = 'tiles'"),
        "1",
        "one pace per app"
    );
}
