//! The command line as a user runs it: `plan`, `migrate`, and bad input giving one-line errors
//! with documented exit codes.

mod common;
use common::*;

use std::io::Write;
use std::process::Output;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn plan_json(region: &str) -> serde_json::Value {
    let o = run(&["plan", region, "--json"], &[]);
    assert!(o.status.success(), "plan failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("plan --json prints JSON")
}

/// An independent implementation of the slippy-map tile index (not the crate's).
fn tile_xy(lon: f64, lat: f64) -> (i64, i64) {
    let n = 16384.0;
    let x = ((lon + 180.0) / 360.0 * n).floor() as i64;
    let r = lat.to_radians();
    let y = ((1.0 - (r.tan() + 1.0 / r.cos()).ln() / std::f64::consts::PI) / 2.0 * n).floor() as i64;
    (x, y)
}

fn bbox_tiles(w: f64, s: f64, e: f64, n: f64) -> i64 {
    let (x0, y0) = tile_xy(w, n);
    let (x1, y1) = tile_xy(e, s);
    (x1 - x0 + 1) * (y1 - y0 + 1)
}

/// Asserts a failed run: the expected exit code, exactly one line on stderr that mentions
/// `needle`, and no panic.
fn assert_one_line_error(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].to_lowercase().contains(&needle.to_lowercase()), "{needle:?} not in {err:?}");
}

#[test]
fn plan_malmo_bbox_counts_tiles() {
    let v = plan_json("12.9,55.5,13.1,55.65");
    assert_eq!(v["tiles_z14"].as_i64().unwrap(), bbox_tiles(12.9, 55.5, 13.1, 55.65));
    assert_eq!(v["tiles_z14"].as_i64().unwrap(), 10 * 13);
    // Three default tilesets: one request per tile and tileset.
    assert_eq!(v["requests"]["tiles"].as_i64().unwrap(), 3 * 10 * 13);
    assert!(v["requests"]["search"].as_i64().unwrap() > 0);
    // The human-readable form states the model.
    let o = run(&["plan", "12.9,55.5,13.1,55.65"], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("130 z14 tiles") && out.contains("model:"), "{out}");
}

#[test]
fn plan_polygon_covers_fewer_tiles_than_its_bbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("malmo-l.geojson");
    // An L-shaped polygon inside the Malmö bbox.
    let gj = r#"{"type":"Feature","properties":{"name":"L"},"geometry":{"type":"Polygon","coordinates":[[
        [12.9,55.5],[13.1,55.5],[13.1,55.53],[12.93,55.53],[12.93,55.65],[12.9,55.65],[12.9,55.5]]]}}"#;
    std::fs::write(&path, gj).unwrap();
    let poly = plan_json(path.to_str().unwrap())["tiles_z14"].as_i64().unwrap();
    let bbox = bbox_tiles(12.9, 55.5, 13.1, 55.65);
    // The L's two arms: a full-width strip and a narrow column, overlapping in one corner.
    let strip = bbox_tiles(12.9, 55.5, 13.1, 55.53);
    let column = bbox_tiles(12.9, 55.5, 12.93, 55.65);
    let corner = bbox_tiles(12.9, 55.5, 12.93, 55.53);
    assert_eq!(poly, strip + column - corner, "polygon {poly}, bbox {bbox}");
    assert!(poly < bbox / 2);
}

#[test]
fn plan_antimeridian_box_is_the_sum_of_its_halves() {
    let whole = plan_json("179.9,-16.9,-179.9,-16.7")["tiles_z14"].as_i64().unwrap();
    let east = plan_json("179.9,-16.9,180,-16.7")["tiles_z14"].as_i64().unwrap();
    let west = plan_json("-180,-16.9,-179.9,-16.7")["tiles_z14"].as_i64().unwrap();
    assert!(whole > 0);
    assert_eq!(whole, east + west);
}

#[test]
fn plan_named_region_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[regions.home]\nbbox = \"12.9,55.5,13.1,55.65\"\n").unwrap();
    let o = run(&["--config", cfg.to_str().unwrap(), "plan", "home", "--json"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tiles_z14"], 130);
}

#[test]
fn bad_bbox_latitude() {
    assert_one_line_error(&run(&["plan", "10,95,11,96"], &[]), 4, "latitude");
}

#[test]
fn bad_bbox_south_above_north() {
    assert_one_line_error(&run(&["plan", "10,50,11,49"], &[]), 4, "south");
}

#[test]
fn bad_bbox_not_numbers() {
    assert_one_line_error(&run(&["plan", "10,abc,11,49"], &[]), 4, "four numbers");
}

#[test]
fn malformed_geojson() {
    let mut f = tempfile::Builder::new().suffix(".geojson").tempfile().unwrap();
    f.write_all(b"{\"type\":\"Polygon\",\"coordinates\":[[[1,2],[3,").unwrap();
    assert_one_line_error(&run(&["plan", f.path().to_str().unwrap()], &[]), 4, "not valid JSON");
}

#[test]
fn geojson_point_is_not_a_region() {
    let mut f = tempfile::Builder::new().suffix(".geojson").tempfile().unwrap();
    f.write_all(br#"{"type":"Point","coordinates":[1,2]}"#).unwrap();
    assert_one_line_error(&run(&["plan", f.path().to_str().unwrap()], &[]), 4, "Polygon");
}

#[test]
fn unknown_region_name() {
    assert_one_line_error(&run(&["plan", "atlantis"], &[]), 4, "atlantis");
}

#[test]
fn unknown_config_key() {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(b"[limits]\nconcurency = 4\n").unwrap();
    let o = run(&["--config", f.path().to_str().unwrap(), "plan", "1,1,1.1,1.1"], &[]);
    assert_one_line_error(&o, 3, "concurency");
}

#[test]
fn unknown_env_key() {
    let o = run(&["plan", "1,1,1.1,1.1"], &[("MLY_LIMITS__TILES_PER_DAI", "5")]);
    assert_one_line_error(&o, 3, "tiles_per_dai");
}

#[test]
fn bad_schema_name() {
    let o = run(&["plan", "1,1,1.1,1.1"], &[("MLY_DATABASE__SCHEMA", "public; drop table x")]);
    assert_one_line_error(&o, 3, "schema");
}

#[test]
fn database_refusing_connections() {
    // Port 1 on loopback refuses connections.
    let o = run(&["migrate"], &[("DATABASE_URL", "postgres://postgres:hunter2secret@127.0.0.1:1/nothing")]);
    assert_one_line_error(&o, 5, "127.0.0.1:1");
    assert!(!stderr(&o).contains("hunter2secret"), "password leaked");
}

#[test]
fn whole_world_needs_yes() {
    let o = run(&["sync", "-180,-85,180,85"], &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")]);
    assert_one_line_error(&o, 4, "--yes");
}

#[test]
fn migrate_then_ogrinfo_lists_layers_in_4326() {
    let url = fresh_db("cli_migrate");
    let o = run(&["migrate"], &[("DATABASE_URL", &url)]);
    assert!(o.status.success(), "migrate: {}", stderr(&o));
    // Running it again is a no-op.
    let o = run(&["migrate"], &[("DATABASE_URL", &url)]);
    assert!(o.status.success(), "second migrate: {}", stderr(&o));
    let conn = ogr_conn(&url);
    let o = std::process::Command::new("ogrinfo").args(["-ro", "-so", &conn]).output().expect("ogrinfo runs");
    let listing = String::from_utf8_lossy(&o.stdout);
    for (layer, kind) in [
        ("mapillary.images", "Point"),
        ("mapillary.sequences", "Multi Line String"),
        ("mapillary.map_features", "Point"),
    ] {
        // images has two geometry columns (geom, computed_geom): "(Point, Point)".
        assert!(listing.contains(&format!("{layer} ({kind}")), "{layer} ({kind}) not in:\n{listing}");
        let o = std::process::Command::new("ogrinfo").args(["-ro", "-so", &conn, layer]).output().unwrap();
        let info = String::from_utf8_lossy(&o.stdout);
        assert!(info.contains("ID[\"EPSG\",4326]"), "{layer} is not EPSG:4326:\n{info}");
    }
}

#[test]
fn whole_world_with_yes_is_still_too_large_for_one_run() {
    let o =
        run(&["sync", "-180,-85,180,85", "--yes"], &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")]);
    assert_one_line_error(&o, 4, "split the region");
}

#[test]
fn migrate_without_rights_to_create_postgis_says_what_to_install() {
    // A role that may create schemas but not the (untrusted) postgis extension reaches the same
    // path as a server without the package.
    let url = fresh_db("cli_nopostgis");
    let db = url.rsplit('/').next().unwrap().to_string();
    let role = format!("{db}_role");
    psql(&admin_url(), &format!("DROP ROLE IF EXISTS {role}"));
    psql(&admin_url(), &format!("CREATE ROLE {role} LOGIN"));
    psql(&admin_url(), &format!("GRANT CREATE ON DATABASE {db} TO {role}"));
    // Same host and database, the new role as the user (whatever user the admin URL has).
    let after_scheme = url.split_once("://").unwrap().1;
    let host_and_db = after_scheme.rsplit_once('@').map_or(after_scheme, |(_, h)| h);
    let as_role = format!("postgres://{role}@{host_and_db}");
    let o = run(&["migrate"], &[("DATABASE_URL", &as_role)]);
    assert_one_line_error(&o, 5, "CREATE EXTENSION postgis");
    assert!(stderr(&o).contains("postgresql-15-postgis-3"), "{}", stderr(&o));
}
