//! Shared helpers for integration tests: a fresh PostGIS database per test, the simulator and
//! the harvester run as real processes over loopback HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Path of the built `mly-harvest` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mly-harvest"))
}

/// The repository root (the workspace's directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared fixtures directory `../shared/fixtures/real` next to the repository.
pub fn fixtures() -> PathBuf {
    repo_root().join("../shared/fixtures/real")
}

/// Admin URL of the test cluster (scripts/pg.sh starts one; DATABASE_URL points at it).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL must be set: run the tests through scripts/test.sh")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Creates a fresh, empty database (PostGIS not yet installed) and returns its URL.
pub fn fresh_db(tag: &str) -> String {
    let admin = admin_url();
    let name = format!(
        "t_{}_{}_{}",
        tag.to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    psql(&admin, &format!("DROP DATABASE IF EXISTS {name}"));
    psql(&admin, &format!("CREATE DATABASE {name}"));
    match admin.rfind('/') {
        Some(i) => format!("{}/{}", &admin[..i], name),
        None => panic!("bad DATABASE_URL {admin}"),
    }
}

/// Runs one SQL statement with psql and returns its unaligned, tuples-only output.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "psql failed on {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A running simulator process; killed on drop.
pub struct Sim {
    pub child: Child,
    pub url: String,
}

impl Sim {
    /// Starts `mly-harvest simulate --listen 127.0.0.1:0 --fixtures <shared fixtures> ARGS...`
    /// and waits for its ready line.
    pub fn start(args: &[&str]) -> Sim {
        let fixtures = fixtures();
        let mut all: Vec<&std::ffi::OsStr> = vec!["--fixtures".as_ref(), fixtures.as_os_str()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        Sim::start_bare(&all, None)
    }

    /// Starts `mly-harvest simulate --listen 127.0.0.1:0 ARGS...` exactly as given (no fixtures),
    /// in `cwd` when given, and waits for its ready line.
    pub fn start_bare<S: AsRef<std::ffi::OsStr>>(args: &[S], cwd: Option<&std::path::Path>) -> Sim {
        let mut cmd = Command::new(bin());
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .args(["simulate", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("simulator starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "simulator did not print its listening line");
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.trim().strip_prefix("listening on ") {
                        let url = url.trim_end_matches('/').to_string();
                        // Keep draining stdout so the simulator never blocks on a full pipe.
                        std::thread::spawn(move || for _ in lines.by_ref() {});
                        return Sim { child, url };
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("simulator exited before it was ready")
                }
            }
        }
    }

    /// GET a path on the simulator, returning (status, body).
    pub fn get(&self, path_and_query: &str) -> (u16, Vec<u8>) {
        http_get(&format!("{}{}", self.url, path_and_query), &[])
    }

    /// The `/__sim/stats` JSON.
    pub fn stats(&self) -> serde_json::Value {
        let (s, b) = self.get("/__sim/stats");
        assert_eq!(s, 200);
        serde_json::from_slice(&b).expect("stats are JSON")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The token the simulator accepts by default.
pub const SIM_TOKEN: &str = "MLY|4000000000000001|0123456789abcdef0123456789abcdef";

/// A minimal blocking HTTP/1.1 GET over loopback (no extra client dependency in tests).
pub fn http_get(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("http head") + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let mut body = buf[head_end..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[i + 2 + size + 2..];
    }
    out
}

/// Runs `mly-harvest ARGS` to completion with extra environment variables.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).env_remove("MAPILLARY_ACCESS_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("mly-harvest runs")
}

/// Spawns `mly-harvest ARGS` with stdout/stderr into files `TAG.out`/`TAG.err` under `dir`.
pub fn spawn_to_files(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path, tag: &str) -> Child {
    let mut c = Command::new(bin());
    c.args(args)
        .env_remove("MAPILLARY_ACCESS_TOKEN")
        .stdout(std::fs::File::create(dir.join(format!("{tag}.out"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{tag}.err"))).unwrap());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// A login role that may only read the harvest schema `mapillary` of `db`: (role, its URL).
/// Roles belong to the cluster: drop it at the end (`DROP OWNED BY`, `DROP ROLE`).
pub fn read_only_role(db: &str, tag: &str) -> (String, String) {
    let role = format!("{tag}_{}", std::process::id());
    psql(db, &format!("DROP ROLE IF EXISTS {role}"));
    psql(db, &format!("CREATE ROLE {role} LOGIN"));
    psql(db, &format!("GRANT USAGE ON SCHEMA mapillary TO {role}"));
    psql(db, &format!("GRANT SELECT ON ALL TABLES IN SCHEMA mapillary TO {role}"));
    let url = db.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, db, "the test URL names the postgres user");
    (role, url)
}

/// Environment for `mly-harvest sync` against `sim`, writing into `db`.
pub fn harvest_env<'a>(sim: &'a Sim, db: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("DATABASE_URL", db),
        ("MLY_MAPILLARY__GRAPH_URL", sim.url.as_str()),
        ("MLY_MAPILLARY__TILES_URL", sim.url.as_str()),
        ("MAPILLARY_ACCESS_TOKEN", SIM_TOKEN),
        ("MLY_HARVEST__LEASE_SECS", "30"),
        ("MLY_MAPILLARY__TIMEOUT_SECS", "20"),
        // The simulator is not the live tile server: no pace between tile requests (the default
        // 20/min would make every test minutes long). Pacing has its own tests.
        ("MLY_LIMITS__TILES_PER_MINUTE", "6000000"),
    ]
}

/// Asserts a successful run and returns its stdout (the summary).
pub fn sync_ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "sync failed ({:?}): {}\n{}",
        o.status.code(),
        out,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A digest of every table's content (not the harvest timestamps), to compare two databases.
pub fn checksum(db: &str) -> String {
    psql(
        db,
        "SELECT md5(coalesce((SELECT string_agg(concat_ws('|', id, sequence_id, captured_at, compass_angle,
              computed_compass_angle, is_pano, creator_id, creator_username, organization_id, camera_type,
              make, model, width, height, altitude, computed_altitude, quality_score, ST_AsEWKT(geom),
              ST_AsEWKT(computed_geom), tile_x, tile_y, tile_hash, deleted_at IS NULL, enriched_at IS NULL), ',' ORDER BY id)
            FROM mapillary.images), '')
          || coalesce((SELECT string_agg(concat_ws('|', id, ST_AsEWKT(geom), image_count, first_captured_at,
              last_captured_at), ',' ORDER BY id) FROM mapillary.sequences), '')
          || coalesce((SELECT string_agg(concat_ws('|', id, object_value, object_type, first_seen_at, last_seen_at,
              aligned_direction, ST_AsEWKT(geom), deleted_at IS NULL), ',' ORDER BY id) FROM mapillary.map_features), '')
          || coalesce((SELECT string_agg(map_feature_id || '-' || image_id, ',' ORDER BY map_feature_id, image_id)
              FROM mapillary.map_feature_images), ''))",
    )
}

/// GDAL's connection string for a postgres:// URL (user[:pw]@host:port/db).
pub fn ogr_conn(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let (auth, hostdb) = rest.rsplit_once('@').unwrap_or(("postgres", rest));
    let (user, pw) = auth.split_once(':').unwrap_or((auth, ""));
    let (hostport, db) = hostdb.split_once('/').unwrap();
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    let mut s = format!("PG:host={host} port={port} user={user} dbname={db}");
    if !pw.is_empty() {
        s += &format!(" password={pw}");
    }
    s
}
