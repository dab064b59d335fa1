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
    let before = db_state(&db);

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
    ];
    assert!(cases.len() >= 25);
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
