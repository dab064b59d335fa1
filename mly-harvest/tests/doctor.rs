//! `mly-harvest doctor` (issue 11 item 7): one line per check, a summary, the exit code of the
//! first failed check; each check fails on its own here while the others pass; doctor writes
//! nothing but the budget count of its one tile, and a read-only role can run it.

mod common;

use std::process::Output;

use common::{SIM_TOKEN, Sim, admin_url, fresh_db, harvest_env, psql, run};

fn doctor(env: &[(&str, &str)], extra: &[&str]) -> Output {
    let mut args = vec!["doctor"];
    args.extend_from_slice(extra);
    run(&args, env)
}

/// The status word of every check line, by check name.
fn statuses(o: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.starts_with("doctor:"))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// Asserts the exit code and that exactly `failed` checks FAIL (the rest ok/skip as listed).
fn expect(o: &Output, code: i32, want: &[(&str, &str)]) {
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(code), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    let got = statuses(o);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["config", "database", "postgis", "schema", "rights", "block", "token", "tiles"],
        "{out}"
    );
    for (name, status) in want {
        let s = &got.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(s, status, "check {name}:\n{out}");
    }
    let summary = out.lines().last().unwrap_or_default();
    assert!(summary.starts_with("doctor: 8 checks:"), "{out}");
    assert!(!out.contains("0123456789abcdef") && !out.contains("hunter2"), "secret printed: {out}");
}

fn line(o: &Output, check: &str) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(check))
        .unwrap_or_default()
        .to_string()
}

fn migrated(sim: &Sim, tag: &str) -> String {
    let db = fresh_db(tag);
    let o = run(&["migrate"], &harvest_env(sim, &db));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    db
}

fn tile_requests(sim: &Sim) -> u64 {
    sim.stats()["requests"]["tiles"].as_u64().unwrap()
}

/// A login role on the test cluster, and the URL of `db_url`'s database as that role.
fn role_url(db_url: &str, role: &str) -> String {
    psql(&admin_url(), &format!("DROP ROLE IF EXISTS {role}"));
    psql(&admin_url(), &format!("CREATE ROLE {role} LOGIN"));
    let after_scheme = db_url.split_once("://").unwrap().1;
    let host_and_db = after_scheme.rsplit_once('@').map_or(after_scheme, |(_, h)| h);
    format!("postgres://{role}@{host_and_db}")
}

fn db_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_string()
}

#[test]
fn all_checks_pass_and_only_the_one_tile_is_written() {
    let sim = Sim::start(&[]);
    let db = migrated(&sim, "doctor_ok");
    let before = tile_requests(&sim);
    let o = doctor(&harvest_env(&sim, &db), &[]);
    let all_ok: Vec<(&str, &str)> =
        ["config", "database", "postgis", "schema", "rights", "block", "token", "tiles"]
            .map(|n| (n, "ok"))
            .to_vec();
    expect(&o, 0, &all_ok);
    assert!(
        line(&o, "tiles").contains("images") && line(&o, "tiles").contains("counted"),
        "{}",
        line(&o, "tiles")
    );
    assert!(line(&o, "schema").contains("up to date"), "{}", line(&o, "schema"));
    assert_eq!(tile_requests(&sim) - before, 1, "one tile request");
    assert_eq!(sim.stats()["requests"]["search"].as_u64().unwrap(), 1, "one Graph call");
    // The one write: the tile counted in today's budget of the token's app.
    assert_eq!(psql(&db, "SELECT sum(used) FROM mly_harvest_global.tile_budget"), "1");

    // --json: the same checks and the exit code, machine-readable.
    let o = doctor(&harvest_env(&sim, &db), &["--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("doctor --json prints JSON");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["checks"].as_array().unwrap().len(), 8);
    assert!(v["checks"].as_array().unwrap().iter().all(|c| c["status"] == "ok"), "{v}");
    assert_eq!(v["summary"]["ok"], 8);
}

#[test]
fn an_empty_database_is_ready_and_doctor_creates_nothing_in_it() {
    let sim = Sim::start(&[]);
    let db = fresh_db("doctor_empty");
    let o = doctor(&harvest_env(&sim, &db), &[]);
    expect(&o, 0, &[("postgis", "ok"), ("schema", "ok"), ("rights", "ok"), ("tiles", "ok")]);
    assert!(line(&o, "postgis").contains("first sync creates"), "{}", line(&o, "postgis"));
    assert!(line(&o, "tiles").contains("not counted"), "{}", line(&o, "tiles"));
    // Read-only: no extension, no schema, no budget table.
    assert_eq!(psql(&db, "SELECT count(*) FROM pg_extension WHERE extname = 'postgis'"), "0");
    assert_eq!(
        psql(&db, "SELECT count(*) FROM pg_namespace WHERE nspname IN ('mapillary', 'mly_harvest_global')"),
        "0"
    );
}

#[test]
fn a_bad_config_fails_config_and_skips_the_rest() {
    let o = doctor(&[("MLY_LIMITS__TILES_PER_DAY", "many")], &[]);
    expect(&o, 3, &[("config", "FAIL"), ("database", "skip"), ("token", "skip"), ("tiles", "skip")]);
    assert!(line(&o, "config").contains("tiles_per_day"), "{}", line(&o, "config"));
}

#[test]
fn an_unreachable_database_fails_database_alone() {
    let sim = Sim::start(&[]);
    let mut env = harvest_env(&sim, "");
    env.retain(|(k, _)| *k != "DATABASE_URL");
    env.push(("DATABASE_URL", "postgres://postgres:hunter2secret@127.0.0.1:1/nothing"));
    let before = tile_requests(&sim);
    let o = doctor(&env, &[]);
    expect(
        &o,
        5,
        &[
            ("config", "ok"),
            ("database", "FAIL"),
            ("postgis", "skip"),
            ("rights", "skip"),
            ("token", "ok"),
            ("tiles", "skip"),
        ],
    );
    assert!(line(&o, "database").contains("127.0.0.1:1"), "{}", line(&o, "database"));
    assert_eq!(tile_requests(&sim), before, "no tile without a database to count it and rule out a block");
}

#[test]
fn postgis_that_this_role_cannot_create_fails_postgis_alone() {
    let sim = Sim::start(&[]);
    let db = fresh_db("doctor_nopostgis");
    let role = format!("{}_owner", db_name(&db));
    let as_role = role_url(&db, &role);
    // The database's owner may create schemas, but not the untrusted postgis extension.
    psql(&admin_url(), &format!("ALTER DATABASE {} OWNER TO {role}", db_name(&db)));
    let mut env = harvest_env(&sim, &as_role);
    env.retain(|(k, v)| *k != "DATABASE_URL" || *v == as_role);
    let o = doctor(&env, &[]);
    expect(
        &o,
        5,
        &[
            ("database", "ok"),
            ("postgis", "FAIL"),
            ("schema", "ok"),
            ("rights", "ok"),
            ("token", "ok"),
            ("tiles", "ok"),
        ],
    );
    assert!(line(&o, "postgis").contains("CREATE EXTENSION postgis"), "{}", line(&o, "postgis"));
}

#[test]
fn a_schema_migrated_by_a_newer_version_fails_schema_alone() {
    let sim = Sim::start(&[]);
    let db = migrated(&sim, "doctor_newer");
    psql(
        &db,
        "INSERT INTO mapillary._sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', true, '\\x00', 0)",
    );
    let o = doctor(&harvest_env(&sim, &db), &[]);
    expect(
        &o,
        5,
        &[
            ("postgis", "ok"),
            ("schema", "FAIL"),
            ("rights", "ok"),
            ("block", "ok"),
            ("token", "ok"),
            ("tiles", "ok"),
        ],
    );
    assert!(line(&o, "schema").contains("9999"), "{}", line(&o, "schema"));
}

#[test]
fn a_read_only_role_runs_doctor_and_fails_rights_alone() {
    let sim = Sim::start(&[]);
    let db = migrated(&sim, "doctor_readonly");
    let role = format!("{}_ro", db_name(&db));
    let as_role = role_url(&db, &role);
    for sql in [
        format!("REVOKE CREATE, TEMPORARY ON DATABASE {} FROM PUBLIC", db_name(&db)),
        format!("GRANT USAGE ON SCHEMA mapillary, mly_harvest_global TO {role}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA mapillary, mly_harvest_global TO {role}"),
    ] {
        psql(&db, &sql);
    }
    let mut env = harvest_env(&sim, &as_role);
    env.retain(|(k, v)| *k != "DATABASE_URL" || *v == as_role);
    let o = doctor(&env, &[]);
    expect(
        &o,
        5,
        &[
            ("database", "ok"),
            ("postgis", "ok"),
            ("schema", "ok"),
            ("rights", "FAIL"),
            ("block", "ok"),
            ("token", "ok"),
            ("tiles", "ok"),
        ],
    );
    let rights = line(&o, "rights");
    assert!(rights.contains("CREATE on the database") && rights.contains("INSERT on mapillary."), "{rights}");
    // It could not count its tile, and says so; nothing was written.
    assert!(line(&o, "tiles").contains("not counted"), "{}", line(&o, "tiles"));
    assert_eq!(psql(&db, "SELECT count(*) FROM mly_harvest_global.tile_budget"), "0");
}

#[test]
fn a_recorded_block_fails_block_alone_and_spends_no_tile_request() {
    let sim = Sim::start(&[]);
    let db = migrated(&sim, "doctor_block");
    // As a run that met the block records it (migration 0006's table, `pipeline::block`).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().replace(':', "_");
    psql(
        &db,
        &format!(
            "INSERT INTO mly_harvest_global.tile_block VALUES ('{}', '{host}', now() - interval '1 hour', \
             now() + interval '23 hours', '302 to www.mapillary.com', 'mapillary', 1)",
            sim.url.trim_end_matches('/')
        ),
    );
    let before = tile_requests(&sim);
    let o = doctor(&harvest_env(&sim, &db), &[]);
    expect(&o, 10, &[("rights", "ok"), ("block", "FAIL"), ("token", "ok"), ("tiles", "skip")]);
    assert!(line(&o, "block").contains("blocked this IP"), "{}", line(&o, "block"));
    assert_eq!(tile_requests(&sim), before, "no tile request during a block");
}

#[test]
fn a_refused_token_fails_token_and_skips_the_tile() {
    let sim = Sim::start(&[]);
    let db = migrated(&sim, "doctor_token");
    let mut env = harvest_env(&sim, &db);
    env.retain(|(k, _)| *k != "MAPILLARY_ACCESS_TOKEN");
    env.push(("MAPILLARY_ACCESS_TOKEN", "MLY|4000000000000001|ffffffffffffffffffffffffffffffff"));
    let o = doctor(&env, &[]);
    expect(
        &o,
        6,
        &[("database", "ok"), ("rights", "ok"), ("block", "ok"), ("token", "FAIL"), ("tiles", "skip")],
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("ffffffffffffffff"), "token printed");
    let _ = SIM_TOKEN;
}

#[test]
fn a_tile_server_that_serves_no_tile_fails_tiles_alone() {
    let sim = Sim::start(&[]);
    let db = migrated(&sim, "doctor_tiles");
    let wrong = format!("{}/not-the-tile-server", sim.url);
    let mut env = harvest_env(&sim, &db);
    env.retain(|(k, _)| *k != "MLY_MAPILLARY__TILES_URL");
    env.push(("MLY_MAPILLARY__TILES_URL", wrong.as_str()));
    let o = doctor(&env, &[]);
    expect(
        &o,
        9,
        &[("database", "ok"), ("rights", "ok"), ("block", "ok"), ("token", "ok"), ("tiles", "FAIL")],
    );
    assert!(line(&o, "tiles").contains("14/8574/5735"), "{}", line(&o, "tiles"));
    assert_eq!(psql(&db, "SELECT sum(used) FROM mly_harvest_global.tile_budget"), "1", "counted");
}
