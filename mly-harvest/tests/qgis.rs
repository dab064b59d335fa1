//! The schema as QGIS users see it: `scripts/qgis/check_layers.py` opens every table and view
//! (and the analyst queries under `sql/`) through QGIS's own PostGIS provider, then opens the
//! project `mly-harvest qgis-project` stored and renders it headlessly. Needs Debian's
//! `python3-qgis` (scripts/test.sh installs it); `MLY_SKIP_QGIS=1` skips these tests, loudly.

mod common;
use common::*;

use std::process::{Command, Output};

/// Two suburban Malmö tiles (14/8785/5134 and 14/8786/5134): images, sequences, features, signs.
const SUBURB: &str = "13.035,55.595,13.06,55.600";

/// Whether the QGIS check can run; panics (fails the test) when QGIS is missing and not skipped.
fn qgis_or_skip(test: &str) -> bool {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import qgis.core"])
        .env("QT_QPA_PLATFORM", "offscreen")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    if std::env::var("MLY_SKIP_QGIS").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED {test}: python3-qgis is not installed and MLY_SKIP_QGIS=1");
        return false;
    }
    panic!(
        "python3-qgis is not installed (apt-get install python3-qgis; scripts/test.sh does it), or set MLY_SKIP_QGIS=1"
    );
}

/// QGIS's connection string (libpq keywords) for a postgres:// URL.
fn qgis_conn(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let (auth, hostdb) = rest.rsplit_once('@').unwrap_or(("postgres", rest));
    let (user, pw) = auth.split_once(':').unwrap_or((auth, ""));
    let (hostport, db) = hostdb.split_once('/').unwrap();
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    let mut s = format!("dbname='{db}' host={host} port={port} user='{user}'");
    if !pw.is_empty() {
        s += &format!(" password='{pw}'");
    }
    s
}

fn check(db: &str, extra: &[&str]) -> (Output, String) {
    let root = repo_root();
    let o = Command::new("/usr/bin/python3")
        .arg(root.join("scripts/qgis/check_layers.py"))
        .args(["--conn", &qgis_conn(db), "--schema", "mapillary"])
        .args(extra)
        .env("QT_QPA_PLATFORM", "offscreen")
        .current_dir(&root)
        .output()
        .expect("python3 runs");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o, text)
}

/// A harvested database; with detections, so the SRID-0 pixel-space layer has rows too.
fn harvested(tag: &str) -> String {
    let db = fresh_db(tag);
    let sim = Sim::start(&[]);
    let mut env = harvest_env(&sim, &db);
    env.push(("MLY_HARVEST__DETECTIONS", "true"));
    sync_ok(&run(&["sync", SUBURB], &env));
    db
}

/// A copy of `db` (CREATE DATABASE ... TEMPLATE) to break on purpose.
fn copy_of(db: &str, suffix: &str) -> String {
    let (base, name) = db.rsplit_once('/').unwrap();
    let copy = format!("{name}_{suffix}");
    let admin = admin_url();
    psql(&admin, &format!("DROP DATABASE IF EXISTS {copy}"));
    psql(&admin, &format!("CREATE DATABASE {copy} TEMPLATE {name}"));
    format!("{base}/{copy}")
}

#[test]
fn qgis_opens_every_layer_and_renders_the_stored_project() {
    if !qgis_or_skip("qgis_opens_every_layer_and_renders_the_stored_project") {
        return;
    }
    let db = harvested("qgis_ok");
    let o = run(&["qgis-project"], &[("DATABASE_URL", db.as_str())]);
    let out = sync_ok(&o);
    assert!(out.contains("schema=mapillary&project=mly-harvest"), "{out}");
    let png = std::env::temp_dir().join(format!("mly-qgis-{}.png", std::process::id()));
    let (o, text) =
        check(&db, &["--sql-dir", "sql", "--project", "mly-harvest", "--png", png.to_str().unwrap()]);
    assert!(o.status.success(), "QGIS check failed:\n{text}");
    // Every table and view of the schema, and every sql/ query, was opened and passed.
    for layer in [
        "mapillary.images(geom)",
        "mapillary.images(computed_geom)",
        "mapillary.images_live(geom)",
        "mapillary.sequences(geom)",
        "mapillary.map_features(geom)",
        "mapillary.map_features_live(geom)",
        "mapillary.detections(geom)",
        "mapillary.harvest_run(region_geom)",
        "mapillary.coverage_freshness(geom)",
        "mapillary.sqlcheck_coverage_by_tile(geom)",
        "mapillary.sqlcheck_freshness:",
        "mapillary.sqlcheck_feature_inventory:",
        "mapillary.sqlcheck_last_run_changes:",
        "mapillary.harvest_tile:",
        "mapillary.tile_state:",
        "mapillary.map_feature_images:",
        "mapillary.qgis_projects:",
    ] {
        assert!(text.contains(&format!("ok   {layer}")), "{layer} not checked:\n{text}");
    }
    assert!(text.contains("0 failure(s)"), "{text}");
    // The pixel-space detections (SRID 0) went through the same checks with rows in them.
    let det = text.lines().find(|l| l.starts_with("ok   mapillary.detections(geom)")).unwrap();
    assert!(det.contains("MultiPolygon SRID 0, bbox "), "{det}");
    // The script rendered the project; the PNG's pixels were counted there, here it must exist.
    let bytes = std::fs::read(&png).expect("the rendering was written");
    assert_eq!(&bytes[1..4], b"PNG");
    let line = text
        .lines()
        .find(|l| l.starts_with("project mly-harvest: 5 layers"))
        .unwrap_or_else(|| panic!("{text}"));
    eprintln!("{line}");
    let _ = std::fs::remove_file(&png);

    // The same project connected through a pg_service.conf service instead of host/port/user.
    let dir = tempfile::tempdir().unwrap();
    let services = dir.path().join("pg_service.conf");
    let (rest, dbname) = db.rsplit_once('/').unwrap();
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h).trim_start_matches("postgres://");
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    std::fs::write(
        &services,
        format!("[mly_test]\nhost={host}\nport={port}\ndbname={dbname}\nuser=postgres\n"),
    )
    .unwrap();
    let svc = services.to_str().unwrap();
    let o = run(
        &["qgis-project", "--service", "mly_test", "--name", "by-service"],
        &[("DATABASE_URL", db.as_str())],
    );
    assert!(sync_ok(&o).contains("postgresql:///?service=mly_test&schema=mapillary&project=by-service"));
    let root = repo_root();
    let o = Command::new("/usr/bin/python3")
        .arg(root.join("scripts/qgis/check_layers.py"))
        .args(["--conn", "service='mly_test'", "--project", "by-service"])
        .env("QT_QPA_PLATFORM", "offscreen")
        .env("PGSERVICEFILE", svc)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    assert!(text.contains("project by-service: 5 layers"), "{text}");
}

#[test]
fn qgis_check_fails_when_a_typmod_or_a_primary_key_is_lost() {
    if !qgis_or_skip("qgis_check_fails_when_a_typmod_or_a_primary_key_is_lost") {
        return;
    }
    let db = harvested("qgis_broken");
    let typmod = copy_of(&db, "typmod");
    psql(&typmod, "ALTER TABLE mapillary.sequences ALTER COLUMN geom TYPE geometry USING geom");
    let (o, text) = check(&typmod, &[]);
    assert!(!o.status.success(), "a geometry column without typmod passed:\n{text}");
    assert!(
        text.contains("FAIL mapillary.sequences(geom): the column has no specific geometry type"),
        "{text}"
    );

    let pk = copy_of(&db, "pk");
    psql(&pk, "ALTER TABLE mapillary.map_feature_images DROP CONSTRAINT map_feature_images_pkey");
    let (o, text) = check(&pk, &[]);
    assert!(!o.status.success(), "a table without primary key passed:\n{text}");
    assert!(text.contains("FAIL mapillary.map_feature_images: the table has no primary key"), "{text}");
    // Nothing else failed: the check points at the broken table only.
    assert!(text.contains("1 failure(s)"), "{text}");
}
