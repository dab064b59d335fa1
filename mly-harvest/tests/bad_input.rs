//! A table of bad inputs — command line, region files, config files, environment values and API
//! responses — each ending in a one-line error (or a recorded tile failure) with a documented exit
//! code, no panic, and no change in the database.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

/// A small region of one suburban tile (14/8785/5134).
const ONE_TILE: &str = "13.05,55.596,13.051,55.597";
const TILE: (u32, u32, u32) = (14, 8785, 5134);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn assert_no_panic(o: &Output, what: &str) {
    let err = text(&o.stderr);
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{what}: panic: {err}");
}

/// Asserts a failed run: the expected exit code, exactly one line on stderr that mentions
/// `needle`, and no panic.
fn assert_one_line_error(o: &Output, code: i32, needle: &str, what: &str) {
    let err = text(&o.stderr);
    assert_no_panic(o, what);
    assert_eq!(o.status.code(), Some(code), "{what}: exit code; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line, got: {err}");
    assert!(lines[0].to_lowercase().contains(&needle.to_lowercase()), "{what}: {needle:?} not in {err:?}");
}

/// clap's usage errors: exit 2, the first line names the problem (clap adds a usage hint).
fn assert_usage_error(o: &Output, needle: &str, what: &str) {
    let err = text(&o.stderr);
    assert_no_panic(o, what);
    assert_eq!(o.status.code(), Some(2), "{what}: exit code; stderr: {err}");
    let first = err.lines().next().unwrap_or("");
    assert!(first.starts_with("error:") && first.contains(needle), "{what}: {needle:?} not in {err:?}");
}

/// A case's environment value meaning "remove this variable".
const UNSET: &str = "\u{0}unset";

/// Row counts of every table the harvester writes: must not change on bad input.
fn db_state(db: &str) -> String {
    psql(
        db,
        "SELECT concat_ws(',', (SELECT count(*) FROM mapillary.images), (SELECT count(*) FROM mapillary.sequences),
            (SELECT count(*) FROM mapillary.map_features), (SELECT count(*) FROM mapillary.harvest_run),
            (SELECT count(*) FROM mapillary.harvest_tile), (SELECT count(*) FROM mapillary.map_feature_images))",
    )
}

fn write_file(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_str().unwrap().to_string()
}

/// One case: arguments, extra environment, expected code and the word the error must name.
struct Case {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    code: i32,
    needle: &'static str,
}

fn case(
    name: &'static str,
    args: &[&str],
    env: &[(&'static str, &str)],
    code: i32,
    needle: &'static str,
) -> Case {
    Case {
        name,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        code,
        needle,
    }
}

/// A polygon of `n` vertices on a small circle in Malmö.
fn circle_geojson(n: usize) -> String {
    let pts: Vec<String> = (0..=n)
        .map(|i| {
            let a = (i % n) as f64 / n as f64 * std::f64::consts::TAU;
            format!("[{:.7},{:.7}]", 13.0 + 0.01 * a.cos(), 55.6 + 0.01 * a.sin())
        })
        .collect();
    format!(r#"{{"type":"Polygon","coordinates":[[{}]]}}"#, pts.join(","))
}

#[test]
fn bad_command_line_region_config_and_environment() {
    let sim = Sim::start(&[]);
    let db = fresh_db("bad_input");
    let base: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", db.as_str()),
        ("MLY_MAPILLARY__GRAPH_URL", sim.url.as_str()),
        ("MLY_MAPILLARY__TILES_URL", sim.url.as_str()),
        ("MAPILLARY_ACCESS_TOKEN", SIM_TOKEN),
        ("MLY_MAPILLARY__MAX_RETRIES", "1"),
        ("MLY_MAPILLARY__TIMEOUT_SECS", "5"),
    ];
    let o = run(&["migrate"], &base);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut before = db_state(&db);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bad_json = write_file(d, "bad.geojson", r#"{"type":"Polygon","coordinates":[[[13,55],"#);
    let wrong_types = write_file(d, "types.geojson", r#"{"type":"Polygon","coordinates":"13,55,14,56"}"#);
    let string_coords = write_file(
        d,
        "strings.geojson",
        r#"{"type":"Polygon","coordinates":[[["a","b"],["c","d"],["e","f"],["a","b"]]]}"#,
    );
    let nan_coords = write_file(
        d,
        "nan.geojson",
        r#"{"type":"Polygon","coordinates":[[[13,55],[NaN,55],[13.1,55.1],[13,55]]]}"#,
    );
    let huge_coords = write_file(
        d,
        "huge.geojson",
        r#"{"type":"Polygon","coordinates":[[[13,55],[1e400,55],[13.1,55.1],[13,55]]]}"#,
    );
    let many = write_file(d, "many.geojson", &circle_geojson(100_000));
    let point = write_file(d, "point.geojson", r#"{"type":"Point","coordinates":[13,55]}"#);
    let bad_toml = write_file(d, "bad.toml", "[mapillary\ngraph_url = ");
    let unknown_key = write_file(d, "unknown.toml", "[mapillary]\ngraph_urll = \"http://x\"\n");
    let wrong_type_toml = write_file(d, "type.toml", "[limits]\nconcurrency = \"eight\"\n");
    let empty_url = write_file(d, "empty.toml", "[mapillary]\ngraph_url = \"\"\n");
    let quote_schema = write_file(d, "schema.toml", "[database]\nschema = \"mly'; DROP TABLE x; --\"\n");
    let bad_region_cfg = write_file(d, "region.toml", "[regions.malmo]\nbbox = \"13,55,x,56\"\n");
    // Issue 16 families: unbounded reads, strict config types and ranges, reserved schemas.
    let zero_region_cfg = write_file(d, "zero.toml", "[regions.zero]\ngeojson = \"/dev/zero\"\n");
    let conc_bool = write_file(d, "conc_bool.toml", "[limits]\nconcurrency = true\n");
    let conc_float = write_file(d, "conc_float.toml", "[limits]\nconcurrency = 2.7\n");
    let conc_string = write_file(d, "conc_string.toml", "[limits]\nconcurrency = \"8\"\n");
    let enrich_string = write_file(d, "enrich_string.toml", "[harvest]\nenrich = \"yes\"\n");
    let enrich_int = write_file(d, "enrich_int.toml", "[harvest]\nenrich = 1\n");
    let url_int = write_file(d, "url_int.toml", "[mapillary]\ngraph_url = 5\n");
    let lease_years = write_file(d, "lease.toml", "[harvest]\nlease_secs = 10000000000\n");
    let section_scalar = write_file(d, "section.toml", "limits = 5\n");
    let pg_catalog = write_file(d, "pg_catalog.toml", "[database]\nschema = \"pg_catalog\"\n");
    let fiji_zero = "180,-16.9,-180,-16.7";
    let evil_name = "\u{1b}[31mevil\nregion\u{7}";

    let cases = vec![
        // Command line.
        case("unknown subcommand", &["harvest", ONE_TILE], &[], 2, "harvest"),
        case("negative --max-tiles", &["sync", ONE_TILE, "--max-tiles=-5"], &[], 2, "max-tiles"),
        case(
            "bad duration",
            &["sync", ONE_TILE, "--refresh-older-than", "soon"],
            &[],
            2,
            "refresh-older-than",
        ),
        case("run id not a number", &["status", "abc"], &[], 2, "abc"),
        // Regions.
        case("huge number in bbox", &["sync", "1e400,55,13,56"], &[], 4, "finite"),
        case("NaN in bbox", &["sync", "NaN,55,13,56"], &[], 4, "NaN"),
        case("letters in bbox", &["sync", "a,b,c,d"], &[], 4, "four numbers"),
        case("three numbers", &["sync", "13,55,13.1"], &[], 4, "four numbers"),
        case("south above north", &["sync", "13,56,13.1,55"], &[], 4, "south"),
        case("latitude out of range", &["sync", "13,55,13.1,95"], &[], 4, "95"),
        case("whole world without --yes", &["sync", "-180,-85,180,85"], &[], 4, "--yes"),
        case("unknown region name", &["sync", "atlantis"], &[], 4, "atlantis"),
        case("invalid GeoJSON", &["sync", &bad_json], &[], 4, "JSON"),
        case("GeoJSON wrong types", &["sync", &wrong_types], &[], 4, "coordinates"),
        case("GeoJSON string coordinates", &["sync", &string_coords], &[], 4, "strings.geojson"),
        case("GeoJSON NaN", &["sync", &nan_coords], &[], 4, "nan.geojson"),
        case("GeoJSON 1e400", &["sync", &huge_coords], &[], 4, "huge.geojson"),
        case("GeoJSON 100,000 vertices", &["sync", &many], &[], 4, "vertices"),
        case("GeoJSON point", &["sync", &point], &[], 4, "point"),
        case("missing GeoJSON file", &["sync", "/nonexistent/region.geojson"], &[], 4, "region.geojson"),
        // Config files.
        case("config not TOML", &["--config", &bad_toml, "sync", ONE_TILE], &[], 3, "bad.toml"),
        case("config unknown key", &["--config", &unknown_key, "sync", ONE_TILE], &[], 3, "graph_urll"),
        case("config wrong type", &["--config", &wrong_type_toml, "sync", ONE_TILE], &[], 3, "concurrency"),
        case(
            "config empty graph url",
            &["--config", &empty_url, "sync", ONE_TILE],
            &[("MLY_MAPILLARY__GRAPH_URL", UNSET)],
            3,
            "graph_url",
        ),
        case("config schema with a quote", &["--config", &quote_schema, "sync", ONE_TILE], &[], 3, "schema"),
        case("config region with bad bbox", &["--config", &bad_region_cfg, "sync", "malmo"], &[], 4, "malmo"),
        case(
            "config file missing",
            &["--config", "/nonexistent/mly.toml", "sync", ONE_TILE],
            &[],
            3,
            "mly.toml",
        ),
        // Environment values.
        case(
            "negative concurrency",
            &["sync", ONE_TILE],
            &[("MLY_LIMITS__CONCURRENCY", "-1")],
            3,
            "concurrency",
        ),
        case("zero concurrency", &["sync", ONE_TILE], &[("MLY_LIMITS__CONCURRENCY", "0")], 3, "concurrency"),
        case(
            "concurrency not a number",
            &["sync", ONE_TILE],
            &[("MLY_LIMITS__CONCURRENCY", "many")],
            3,
            "concurrency",
        ),
        case(
            "unknown tileset",
            &["sync", ONE_TILE],
            &[("MLY_HARVEST__TILESETS", "mly1_privat")],
            3,
            "mly1_privat",
        ),
        case("schema with a quote", &["sync", ONE_TILE], &[("MLY_DATABASE__SCHEMA", "a\"b")], 3, "schema"),
        case("empty graph url", &["sync", ONE_TILE], &[("MLY_MAPILLARY__GRAPH_URL", "")], 3, "graph_url"),
        case(
            "graph url not a url",
            &["sync", ONE_TILE],
            &[("MLY_MAPILLARY__GRAPH_URL", "not a url")],
            3,
            "graph_url",
        ),
        case("database url not a url", &["sync", ONE_TILE], &[("DATABASE_URL", "not-a-url")], 5, "database"),
        // The API refuses or is absent.
        case(
            "token never issued",
            &["sync", ONE_TILE],
            &[("MAPILLARY_ACCESS_TOKEN", "MLY|4000000000000009|ffffffffffffffffffffffffffffffff")],
            6,
            "token",
        ),
        case("malformed token", &["sync", ONE_TILE], &[("MAPILLARY_ACCESS_TOKEN", "hello")], 6, "token"),
        case("empty token", &["sync", ONE_TILE], &[("MAPILLARY_ACCESS_TOKEN", "")], 6, "token"),
        // Issue 16, item 3: user numbers that overflowed.
        case(
            "refresh age of 274 million years",
            &["sync", ONE_TILE, "--refresh-older-than", "99999999999d"],
            &[],
            2,
            "refresh-older-than",
        ),
        case(
            "images per tile at u64::MAX",
            &["plan", ONE_TILE, "--images-per-tile", "18446744073709551615"],
            &[],
            2,
            "images-per-tile",
        ),
        case("images per tile 0", &["plan", ONE_TILE, "--images-per-tile", "0"], &[], 2, "images-per-tile"),
        case("max tiles 0", &["sync", ONE_TILE, "--max-tiles", "0"], &[], 2, "max-tiles"),
        case(
            "max tiles beyond u64",
            &["sync", ONE_TILE, "--max-tiles", "99999999999999999999"],
            &[],
            2,
            "max-tiles",
        ),
        // Item 2: reads are capped while reading.
        case("plan /dev/zero", &["plan", "/dev/zero"], &[], 4, "larger than"),
        case("sync /dev/zero", &["sync", "/dev/zero"], &[], 4, "larger than"),
        case(
            "named region at /dev/zero",
            &["--config", &zero_region_cfg, "plan", "zero"],
            &[],
            4,
            "larger than",
        ),
        case("config file /dev/zero", &["--config", "/dev/zero", "sync", ONE_TILE], &[], 3, "larger than"),
        case("region file is a directory", &["plan", "/tmp"], &[], 4, "/tmp"),
        case("config file is a directory", &["--config", "/tmp", "plan", ONE_TILE], &[], 3, "/tmp"),
        // Item 7: the antimeridian.
        case("zero width across the antimeridian", &["sync", fiji_zero], &[], 4, "no width"),
        case("zero width at 180", &["plan", "180,-16.9,180,-16.7"], &[], 4, "no width"),
        case(
            "tile requests over the confirm threshold",
            &["sync", "13.0,55.59,13.1,55.62"],
            &[("MLY_HARVEST__MAX_TILES_WITHOUT_CONFIRM", "10")],
            4,
            "tile requests",
        ),
        case(
            "tiles per day 0",
            &["sync", ONE_TILE],
            &[("MLY_LIMITS__TILES_PER_DAY", "0")],
            3,
            "tiles_per_day",
        ),
        case(
            "more than a week of tile budget",
            &["sync", "13.0,55.59,13.1,55.62"],
            &[("MLY_LIMITS__TILES_PER_DAY", "3")],
            4,
            "days",
        ),
        // Item 8: strict types, ranges, conflicts, tokens.
        case("concurrency = true", &["--config", &conc_bool, "sync", ONE_TILE], &[], 3, "concurrency"),
        case("concurrency = 2.7", &["--config", &conc_float, "sync", ONE_TILE], &[], 3, "concurrency"),
        case("concurrency = \"8\"", &["--config", &conc_string, "sync", ONE_TILE], &[], 3, "concurrency"),
        case("enrich = \"yes\"", &["--config", &enrich_string, "sync", ONE_TILE], &[], 3, "enrich"),
        case("enrich = 1", &["--config", &enrich_int, "sync", ONE_TILE], &[], 3, "enrich"),
        case(
            "graph_url = 5",
            &["--config", &url_int, "sync", ONE_TILE],
            &[("MLY_MAPILLARY__GRAPH_URL", UNSET)],
            3,
            "graph_url",
        ),
        case("lease of 317 years", &["--config", &lease_years, "sync", ONE_TILE], &[], 3, "lease_secs"),
        case(
            "a section that is a number",
            &["--config", &section_scalar, "sync", ONE_TILE],
            &[],
            3,
            "limits",
        ),
        case(
            "env concurrency 2.7",
            &["sync", ONE_TILE],
            &[("MLY_LIMITS__CONCURRENCY", "2.7")],
            3,
            "concurrency",
        ),
        case(
            "env concurrency true",
            &["sync", ONE_TILE],
            &[("MLY_LIMITS__CONCURRENCY", "true")],
            3,
            "concurrency",
        ),
        case("env enrich yes", &["sync", ONE_TILE], &[("MLY_HARVEST__ENRICH", "yes")], 3, "enrich"),
        case(
            "env lease at u64::MAX",
            &["sync", ONE_TILE],
            &[("MLY_HARVEST__LEASE_SECS", "18446744073709551615")],
            3,
            "lease_secs",
        ),
        case(
            "env lease beyond u64",
            &["sync", ONE_TILE],
            &[("MLY_HARVEST__LEASE_SECS", "18446744073709551616")],
            3,
            "lease_secs",
        ),
        case(
            "env timeout 0",
            &["sync", ONE_TILE],
            &[("MLY_MAPILLARY__TIMEOUT_SECS", "0")],
            3,
            "timeout_secs",
        ),
        case(
            "env timeout a day",
            &["sync", ONE_TILE],
            &[("MLY_MAPILLARY__TIMEOUT_SECS", "86400")],
            3,
            "timeout_secs",
        ),
        case(
            "env retries 1000",
            &["sync", ONE_TILE],
            &[("MLY_MAPILLARY__MAX_RETRIES", "1000")],
            3,
            "max_retries",
        ),
        case(
            "env connections 0",
            &["sync", ONE_TILE],
            &[("MLY_DATABASE__MAX_CONNECTIONS", "0")],
            3,
            "max_connections",
        ),
        case(
            "DATABASE_URL and MLY_DATABASE__URL differ",
            &["sync", ONE_TILE],
            &[("MLY_DATABASE__URL", "postgres://someone@127.0.0.1:1/else")],
            3,
            "MLY_DATABASE__URL",
        ),
        case(
            "two different tokens",
            &["sync", ONE_TILE],
            &[("MLY_MAPILLARY__ACCESS_TOKEN", "MLY|4000000000000001|ffffffffffffffffffffffffffffffff")],
            3,
            "MLY_MAPILLARY__ACCESS_TOKEN",
        ),
        case(
            "token with a space inside",
            &["sync", ONE_TILE],
            &[("MAPILLARY_ACCESS_TOKEN", "MLY|4000000000000001|0123456789abcdef 0123456789abcdef")],
            6,
            "token",
        ),
        case(
            "token with a control character",
            &["sync", ONE_TILE],
            &[("MAPILLARY_ACCESS_TOKEN", "MLY|4000000000000001|0123456789abcdef\u{7}0123456789abcdef")],
            6,
            "token",
        ),
        // Item 9: schemas PostgreSQL reserves are refused by config validation.
        case("schema pg_catalog", &["--config", &pg_catalog, "sync", ONE_TILE], &[], 3, "reserved"),
        case("env schema pg_toast", &["status"], &[("MLY_DATABASE__SCHEMA", "pg_toast")], 3, "reserved"),
        case(
            "env schema information_schema",
            &["migrate"],
            &[("MLY_DATABASE__SCHEMA", "information_schema")],
            3,
            "reserved",
        ),
        // Item 10: control characters never reach the terminal; unix sockets are named as such.
        case("region name with escapes", &["sync", evil_name], &[], 4, "evil"),
        case(
            "unix socket that does not exist",
            &["migrate"],
            &[("DATABASE_URL", "postgres://postgres@localhost/nothing?host=/nonexistent/dir")],
            5,
            "/nonexistent/dir/.s.PGSQL.5432",
        ),
    ];
    assert!(cases.len() >= 80, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let mut env: Vec<(&str, &str)> = base.clone();
        for (k, v) in &c.env {
            env.retain(|(k2, _)| k2 != k);
            if v != UNSET {
                env.push((k, v.as_str()));
            }
        }
        let args: Vec<&str> = std::iter::once("-q").chain(c.args.iter().map(String::as_str)).collect();
        let o = run(&args, &env);
        let r = std::panic::catch_unwind(|| {
            let err = text(&o.stderr);
            assert!(
                !err.chars().any(|ch| ch.is_control() && ch != '\n'),
                "{}: a control character reached the terminal: {err:?}",
                c.name
            );
            if c.code == 2 {
                assert_usage_error(&o, c.needle, c.name)
            } else {
                assert_one_line_error(&o, c.code, c.needle, c.name)
            }
        });
        if let Err(e) = r {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            failures.push(format!("{}: {msg}", c.name));
        }
        let now = db_state(&db);
        if matches!(c.code, 6 | 9) {
            // Refused by the API: the run's job rows exist (it resumes later), but no data changed.
            assert_eq!(
                now.split(',').take(3).collect::<Vec<_>>(),
                before.split(',').take(3).collect::<Vec<_>>(),
                "{}",
                c.name
            );
            assert_eq!(now.split(',').nth(5), before.split(',').nth(5), "{}", c.name);
            before = now;
        } else {
            assert_eq!(now, before, "{}: the database changed", c.name);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // An unreachable API: the documented outcome is failed tiles (exit 8) with the error recorded.
    let mut env = base.clone();
    env.retain(|(k, _)| !k.ends_with("_URL") || *k == "DATABASE_URL");
    env.push(("MLY_MAPILLARY__GRAPH_URL", "http://127.0.0.1:1"));
    env.push(("MLY_MAPILLARY__TILES_URL", "http://127.0.0.1:1"));
    let o = run(&["-q", "sync", ONE_TILE], &env);
    assert_no_panic(&o, "unreachable API");
    assert_eq!(o.status.code(), Some(8), "unreachable API: {}", text(&o.stderr));
    let errors =
        psql(&db, "SELECT string_agg(last_error, ' ') FROM mapillary.harvest_tile WHERE state = 'failed'");
    assert!(errors.contains("127.0.0.1:1") || errors.contains("onnect"), "unreachable API: {errors}");
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.images"), "0");

    let err = run(&["-q", "sync", ONE_TILE], &with_token(&base, "hello"));
    assert!(!text(&err.stderr).contains("hello"), "a malformed token was echoed");
}

fn with_token<'a>(base: &[(&'a str, &'a str)], token: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut e: Vec<(&str, &str)> =
        base.iter().filter(|(k, _)| *k != "MAPILLARY_ACCESS_TOKEN").copied().collect();
    e.push(("MAPILLARY_ACCESS_TOKEN", token));
    e
}

/// What the fake API answers.
#[derive(Clone, Copy, Debug)]
enum Fake {
    /// Every tile is text, not protobuf.
    NotProtobuf,
    /// Every tile is a 50 MB body.
    Huge,
    /// Real tiles, but the Graph API answers invalid JSON.
    InvalidJson,
    /// Real tiles, but the Graph API names an image id that is not a number.
    IdNotNumber,
}

/// A tiny HTTP/1.1 server on 127.0.0.1:0 answering per `mode`; real tile bodies come from `tiles`
/// (path prefix "/maps/vtp/TILESET/" → body).
fn fake_api(mode: Fake, tiles: Arc<Vec<(String, Vec<u8>)>>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let tiles = Arc::clone(&tiles);
            std::thread::spawn(move || serve(s, mode, &tiles));
        }
    });
    url
}

fn serve(mut s: TcpStream, mode: Fake, tiles: &[(String, Vec<u8>)]) {
    let mut r = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut first = String::new();
    if r.read_line(&mut first).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (ctype, body): (&str, Vec<u8>) = if path.starts_with("/maps/vtp/") {
        match mode {
            Fake::NotProtobuf => {
                // Plain text: an HTML page where a tile should be is the tile server's IP block
                // instead (exit 10, tests/survival.rs).
                ("application/x-protobuf", b"this is not a vector tile".to_vec())
            }
            Fake::Huge => {
                let len = 50 * 1024 * 1024;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                );
                if s.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![0x1au8; 1 << 20];
                for _ in 0..50 {
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                }
                return;
            }
            _ => (
                "application/x-protobuf",
                tiles
                    .iter()
                    .find(|(p, _)| path.starts_with(p.as_str()))
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default(),
            ),
        }
    } else {
        match mode {
            Fake::InvalidJson => ("application/json", b"{\"data\": [ {\"id\": \"1\", ".to_vec()),
            _ => {
                // An id that is not a number, wherever the client looks for one.
                let rec = r#"{"id":"not-a-number","captured_at":1500000000000,"geometry":{"type":"Point","coordinates":[13.05,55.596]},"computed_geometry":{"type":"Point","coordinates":[13.05,55.596]},"sequence":"abc","creator":{"id":"x","username":"u"}}"#;
                let body = if path.starts_with("/?ids=") || path.contains("ids=") {
                    format!(r#"{{"not-a-number":{rec}}}"#)
                } else {
                    format!(r#"{{"data":[{rec}]}}"#)
                };
                ("application/json", body.into_bytes())
            }
        }
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(&body);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

#[test]
fn bad_api_responses_fail_cleanly() {
    // Real tile bodies of the one tile, as the simulator serves them.
    let sim = Sim::start(&[]);
    let (z, x, y) = TILE;
    let mut tiles = Vec::new();
    for ts in ["mly1_public", "mly_map_feature_point", "mly_map_feature_traffic_sign"] {
        let (status, body) =
            sim.get(&format!("/maps/vtp/{ts}/2/{z}/{x}/{y}?access_token={}", SIM_TOKEN.replace('|', "%7C")));
        assert_eq!(status, 200);
        tiles.push((format!("/maps/vtp/{ts}/"), body));
    }
    assert!(tiles[0].1.len() > 1000, "the tile has images");
    let tiles = Arc::new(tiles);

    let mut report = Vec::new();
    for mode in [Fake::NotProtobuf, Fake::Huge, Fake::InvalidJson, Fake::IdNotNumber] {
        let url = fake_api(mode, Arc::clone(&tiles));
        let db = fresh_db("bad_api");
        let env: Vec<(&str, &str)> = vec![
            ("DATABASE_URL", db.as_str()),
            ("MLY_MAPILLARY__GRAPH_URL", url.as_str()),
            ("MLY_MAPILLARY__TILES_URL", url.as_str()),
            ("MAPILLARY_ACCESS_TOKEN", SIM_TOKEN),
            ("MLY_MAPILLARY__MAX_RETRIES", "1"),
            ("MLY_MAPILLARY__TIMEOUT_SECS", "10"),
        ];
        let t = std::time::Instant::now();
        let o = run(&["-q", "sync", ONE_TILE], &env);
        let what = format!("{mode:?}");
        assert_no_panic(&o, &what);
        let code = o.status.code();
        report.push(format!("{what}: exit {code:?} in {:?}: {}", t.elapsed(), text(&o.stderr).trim()));
        // The documented outcome: the tile fails (exit 8, error recorded, nothing half-stored).
        assert_eq!(code, Some(8), "{what}: {}", text(&o.stderr));
        let failed = psql(
            &db,
            "SELECT count(*) FROM mapillary.harvest_tile WHERE state = 'failed' AND coalesce(last_error, '') <> ''",
        );
        assert_ne!(failed, "0", "{what}: no failed tile recorded");
        let images = psql(&db, "SELECT count(*) FROM mapillary.images WHERE tile_x IS NULL");
        assert_eq!(images, "0", "{what}");
        let errors = psql(&db, "SELECT string_agg(last_error, ' ') FROM mapillary.harvest_tile");
        assert!(!errors.contains("0123456789abcdef0123456789abcdef"), "{what}: token in last_error");
    }
    eprintln!("{}", report.join("\n"));
}

// ---- Issue 16: hostile input and operator mistakes beyond the table above. ----

/// Runs `mly-harvest ARGS` with stdout going to `stdout`.
fn run_with_stdout(args: &[&str], env: &[(&str, &str)], stdout: std::process::Stdio) -> Output {
    let mut c = std::process::Command::new(bin());
    c.args(args).env_remove("MAPILLARY_ACCESS_TOKEN").stdout(stdout).stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn closed_pipes_and_full_disks_end_quietly_or_with_one_line() {
    let sim = Sim::start(&[]);
    let db = fresh_db("pipes");
    let env = harvest_env(&sim, &db);
    // `sync ... | head -1` with the reader gone before the summary is written: the run's own
    // exit code, no panic, and the run is recorded as done.
    let mut c = std::process::Command::new(bin());
    c.args(["sync", ONE_TILE])
        .env_remove("MAPILLARY_ACCESS_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in &env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take()); // the reader closes at once
    let o = child.wait_with_output().unwrap();
    assert_no_panic(&o, "sync into a closed pipe");
    assert_eq!(o.status.code(), Some(0), "sync into a closed pipe: {}", text(&o.stderr));
    assert_eq!(psql(&db, "SELECT status FROM mapillary.harvest_run"), "done");

    for args in [&["status", "--json"][..], &["status"][..], &["plan", ONE_TILE, "--json"][..]] {
        let mut c = std::process::Command::new(bin());
        c.args(args).env_remove("MAPILLARY_ACCESS_TOKEN").stdout(std::process::Stdio::piped());
        c.stderr(std::process::Stdio::piped());
        for (k, v) in &env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert_no_panic(&o, &format!("{args:?} into a closed pipe"));
        assert_eq!(o.status.code(), Some(0), "{args:?} into a closed pipe: {}", text(&o.stderr));
        assert_eq!(text(&o.stderr).trim(), "", "{args:?}: a closed pipe is not an error");

        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let o = run_with_stdout(args, &env, full.into());
        assert_one_line_error(&o, 3, "standard output", &format!("{args:?} > /dev/full"));
    }
}

#[test]
fn status_never_writes_and_runs_as_a_read_only_role() {
    let db = fresh_db("status_ro");
    // An empty database: status says there is no schema yet and creates nothing.
    let o = run(&["status"], &[("DATABASE_URL", db.as_str())]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("does not exist"), "{}", text(&o.stdout));
    assert_eq!(
        psql(&db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'mapillary'"),
        "0",
        "schema created"
    );
    assert_eq!(
        psql(&db, "SELECT count(*) FROM pg_extension WHERE extname = 'postgis'"),
        "0",
        "PostGIS created"
    );
    let o = run(&["status", "--json"], &[("DATABASE_URL", db.as_str())]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "[]");

    // A schema with a run whose region name carries a newline and ANSI escapes.
    let o = run(&["migrate"], &[("DATABASE_URL", db.as_str())]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    psql(
        &db,
        "INSERT INTO mapillary.harvest_run (region_name, run_key, status) VALUES (E'\\x1b[2J\\x1b[31mevil\\nrun 99 fake', 'k', 'done')",
    );
    // A read-only role (login, SELECT only) runs status.
    let (role, ro_url) = read_only_role(&db, "ro");
    let before = psql(&db, "SELECT count(*) FROM mapillary._sqlx_migrations");
    for args in [&["status"][..], &["status", "--json"][..]] {
        let o = run(args, &[("DATABASE_URL", ro_url.as_str())]);
        assert_eq!(o.status.code(), Some(0), "{args:?} as a read-only role: {}", text(&o.stderr));
        let out = text(&o.stdout);
        assert!(out.contains("evil"), "{out}");
        assert!(!out.contains('\u{1b}'), "an escape sequence reached the terminal: {out:?}");
        assert!(!out.lines().any(|l| l.starts_with("run 99")), "a newline in a name forged a line: {out}");
    }
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary._sqlx_migrations"), before);
    psql(&db, &format!("DROP OWNED BY {role}"));
    psql(&db, &format!("DROP ROLE {role}"));
}

#[test]
fn max_tiles_reports_completion_and_budget_hand_backs_cost_no_attempt() {
    let sim = Sim::start(&[]);
    let db = fresh_db("max_tiles");
    let env = harvest_env(&sim, &db);
    // Three tilesets of one tile: 3 job tiles. "Loop while 130" with --max-tiles 1 takes three
    // calls; the one doing the last tile reports completion.
    let mut codes = Vec::new();
    let mut last = String::new();
    while codes.len() < 5 {
        let o = run(&["sync", ONE_TILE, "--max-tiles", "1"], &env);
        codes.push(o.status.code());
        last = text(&o.stdout);
        if o.status.code() != Some(130) {
            break;
        }
    }
    assert_eq!(codes, [Some(130), Some(130), Some(0)], "{last}");
    assert!(last.contains("Done") && last.contains("0 pending"), "{last}");
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.harvest_run"), "1", "a new run was started");
    assert_eq!(psql(&db, "SELECT status FROM mapillary.harvest_run"), "done");

    // A budget of one tile a day: tiles handed back untried keep attempts at 0, night after night.
    let db = fresh_db("budget_attempts");
    let mut env = harvest_env(&sim, &db);
    env.push(("MLY_LIMITS__TILES_PER_DAY", "1"));
    for day in ["2026-01-01", "2026-01-02"] {
        let o = run(&["sync", ONE_TILE, "--budget-day", day], &env);
        assert_eq!(o.status.code(), Some(7), "{day}: {}", text(&o.stderr));
        assert_eq!(
            psql(
                &db,
                "SELECT coalesce(max(attempts), 0) FROM mapillary.harvest_tile WHERE state = 'pending'"
            ),
            "0",
            "{day}: a tile handed back for the budget counted an attempt"
        );
    }
    let o = run(&["sync", ONE_TILE, "--budget-day", "2026-01-03"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

#[test]
fn detections_switched_on_later_reach_images_harvested_before() {
    let sim = Sim::start(&[]);
    let db = fresh_db("late_detections");
    let env = harvest_env(&sim, &db);
    // The token pasted with a trailing newline is the same token.
    let token = format!("{SIM_TOKEN}\n");
    let mut first = with_token(&env, &token);
    first.push(("MLY_HARVEST__TILESETS", "mly1_public"));
    let o = run(&["sync", ONE_TILE], &first);
    assert_eq!(o.status.code(), Some(0), "a token with a trailing newline: {}", text(&o.stderr));
    let images = psql(&db, "SELECT count(*) FROM mapillary.images");
    assert_ne!(images, "0");
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.detections"), "0");

    let mut on = env.clone();
    on.push(("MLY_HARVEST__TILESETS", "mly1_public"));
    on.push(("MLY_HARVEST__DETECTIONS", "true"));
    let o = run(&["sync", ONE_TILE], &on);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let with = psql(&db, "SELECT count(DISTINCT image_id) FROM mapillary.detections");
    assert_ne!(with, "0", "no detections for images harvested before detections were on");
    assert_eq!(
        psql(&db, "SELECT count(*) FROM mapillary.images WHERE deleted_at IS NULL AND detections_at IS NULL"),
        "0"
    );
    // Once fetched, the next sync is a plain nightly re-sync again (nothing changed: the tile is
    // skipped, and no Graph call is made).
    let s0 = sim.stats();
    let o = run(&["sync", ONE_TILE], &on);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("1 skipped"), "{}", text(&o.stdout));
    let s1 = sim.stats();
    assert_eq!(s0["requests"]["entity"], s1["requests"]["entity"], "{s0} {s1}");
}

#[test]
fn a_polygon_across_the_antimeridian_plans_its_own_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let fiji = write_file(
        dir.path(),
        "fiji.geojson",
        r#"{"type":"Polygon","coordinates":[[[179.9,-16.9],[-179.9,-16.9],[-179.9,-16.7],[179.9,-16.7],[179.9,-16.9]]]}"#,
    );
    let o = run(&["plan", &fiji, "--json"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tiles = v["tiles_z14"].as_u64().unwrap();
    assert!((50..=200).contains(&tiles), "{tiles} tiles for a 0.2 x 0.2 degree box");
}

#[test]
fn a_damaged_schema_is_reported_as_drift_not_as_failed_tiles() {
    let sim = Sim::start(&[]);
    let db = fresh_db("drift");
    let env = harvest_env(&sim, &db);
    let o = run(&["migrate"], &env);
    assert!(o.status.success(), "{}", text(&o.stderr));
    psql(&db, "ALTER TABLE mapillary.images DROP COLUMN tile_hash CASCADE");
    psql(&db, "DROP INDEX mapillary.images_geom_gix");
    for args in [&["migrate"][..], &["sync", ONE_TILE][..]] {
        let o = run(args, &env);
        assert_one_line_error(&o, 5, "images.tile_hash is missing", &format!("{args:?}"));
        let err = text(&o.stderr);
        assert!(err.contains("images_geom_gix"), "{err}");
    }
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.harvest_run"), "0");
    // Database errors read as the server's message, not sqlx's "at line N" of PostgreSQL's C source.
    psql(&db, "DROP TABLE mapillary.harvest_tile");
    let o = run(&["status"], &env);
    assert_one_line_error(&o, 5, "harvest_tile", "status on a dropped table");
    assert!(!text(&o.stderr).contains(" at line "), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("SQLSTATE 42P01"), "{}", text(&o.stderr));
}
