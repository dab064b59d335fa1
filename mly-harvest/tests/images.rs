//! `mly-harvest images download` against the simulator over HTTP and a real PostGIS: every file
//! complete (length and sha256 as recorded, a JPEG), sidecars listing them, reruns fetching only
//! what is missing or changed, kills and interrupts that cost no complete file a second download,
//! expired URLs refreshed, a bad `--where` refused without a trace, and the Graph calls a download
//! spends.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Two z14 tiles east of Malmö: 694 images in 6 tiles, 24 map features.
const REGION: &str = "13.15,55.62,13.17,55.621";

/// A simulator logging every request, and a database holding a sync of [`REGION`].
struct World {
    sim: Sim,
    db: String,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl World {
    fn new(tag: &str, sim_args: &[&str]) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("access.log");
        let mut args: Vec<String> = vec!["--access-log".into(), log.display().to_string()];
        args.extend(sim_args.iter().map(|s| s.to_string()));
        let sim = Sim::start_bare(&args, None);
        let db = fresh_db(tag);
        sync_ok(&run(&["sync", REGION], &harvest_env(&sim, &db)));
        World { sim, db, log, _tmp: tmp }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self._tmp.path().join(name)
    }

    fn download(&self, args: &[&str]) -> Output {
        let mut all = vec!["images", "download"];
        all.extend_from_slice(args);
        run(&all, &harvest_env(&self.sim, &self.db))
    }

    fn spawn(&self, args: &[&str]) -> std::process::Child {
        let mut c = Command::new(bin());
        c.args(["images", "download"]).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.env_remove("MAPILLARY_ACCESS_TOKEN");
        for (k, v) in harvest_env(&self.sim, &self.db) {
            c.env(k, v);
        }
        c.spawn().unwrap()
    }

    /// Graph API calls the simulator has answered so far (searches and entity calls).
    fn graph_calls(&self) -> u64 {
        let s = self.sim.stats();
        s["requests"]["search"].as_u64().unwrap() + s["requests"]["entity"].as_u64().unwrap()
    }

    /// The image server's answers so far: (status, image id), in order.
    fn cdn(&self) -> Vec<(u16, i64)> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                if f.get(2) != Some(&"cdn") {
                    return None;
                }
                let opaque = f.get(4)?.strip_prefix("/m1/v/t6/An")?;
                let hex = opaque.split('_').next()?;
                Some((f[1].parse().ok()?, i64::from_str_radix(hex, 16).ok()?))
            })
            .collect()
    }

    fn count(&self, sql: &str) -> u64 {
        psql(&self.db, sql).parse().unwrap()
    }
}

/// Successful images download: its summary line.
fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "download failed: {out}\n{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// The number just before `what` in a summary ("12 refreshed URLs" -> 12).
fn num_before(summary: &str, what: &str) -> u64 {
    let head = &summary[..summary.find(what).unwrap_or_else(|| panic!("{what:?} not in {summary}"))];
    head.rsplit(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty()).unwrap().parse().unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The `image_files` rows of a directory: id -> (path, bytes, sha256, size).
fn rows(db: &str, dir: &Path) -> BTreeMap<i64, (String, u64, String, String)> {
    let root = std::fs::canonicalize(dir).unwrap();
    let out = psql(
        db,
        &format!(
            "SELECT image_id || '|' || path || '|' || bytes || '|' || sha256 || '|' || size FROM mapillary.image_files WHERE root = '{}'",
            root.display()
        ),
    );
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (
                f[0].parse().unwrap(),
                (f[1].to_string(), f[2].parse().unwrap(), f[3].to_string(), f[4].to_string()),
            )
        })
        .collect()
}

/// Asserts every row's file is there, complete and a JPEG; returns the ids.
fn assert_complete(db: &str, dir: &Path) -> BTreeSet<i64> {
    let rows = rows(db, dir);
    for (id, (path, bytes, sha, _)) in &rows {
        assert!(path.ends_with(&format!("_{id}.jpg")) && path.matches('/').count() == 1, "{path}");
        let body = std::fs::read(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(body.len() as u64, *bytes, "{path}: length");
        assert_eq!(&sha256_hex(&body), sha, "{path}: sha256");
        assert_eq!(&body[..3], &[0xFF, 0xD8, 0xFF], "{path}: not a JPEG");
    }
    rows.keys().copied().collect()
}

/// Every file under `dir` (recursively), relative, split into final pictures and the rest.
fn files(dir: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut jpg, mut other) = (BTreeSet::new(), BTreeSet::new());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".jpg") && !name.starts_with('.') {
                jpg.insert(rel)
            } else {
                other.insert(rel)
            };
        }
    }
    (jpg, other)
}

fn id_of(rel: &str) -> i64 {
    rel.rsplit('_').next().unwrap().trim_end_matches(".jpg").parse().unwrap()
}

/// Ids the sidecars list: (GeoJSON features, CSV rows).
fn sidecar_ids(dir: &Path) -> (BTreeSet<i64>, BTreeSet<i64>) {
    let gj: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("images.geojson")).unwrap()).unwrap();
    assert_eq!(gj["type"], "FeatureCollection");
    let features = gj["features"].as_array().unwrap();
    for f in features {
        assert_eq!(f["geometry"]["type"], "Point", "{f}");
        assert!(dir.join(f["properties"]["path"].as_str().unwrap()).is_file(), "{f}");
    }
    let gj_ids = features.iter().map(|f| f["properties"]["image_id"].as_i64().unwrap()).collect();
    let csv = std::fs::read_to_string(dir.join("images.csv")).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("image_id,sequence_id,captured_at,lon,lat,"));
    let csv_ids = lines.map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    (gj_ids, csv_ids)
}

#[test]
fn a_download_after_a_sync_writes_every_file_complete_with_sidecars_and_a_rerun_fetches_only_what_changed() {
    let w = World::new("img_full", &[]);
    let n = w.count("SELECT count(*) FROM mapillary.images_live");
    assert!(n > 600, "{n}");
    let dir = w.dir("pics");
    let calls = w.graph_calls();
    let out = ok(&w.download(&["--where", "true", "--size", "1024", "--out", dir.to_str().unwrap()]));
    let spent = w.graph_calls() - calls;
    assert_eq!(num_before(&out, " files,"), n, "{out}");
    assert_eq!(num_before(&out, " failed"), 0, "{out}");
    let ids = assert_complete(&w.db, &dir);
    assert_eq!(ids.len() as u64, n);
    let (jpg, other) = files(&dir);
    assert_eq!(jpg.iter().map(|r| id_of(r)).collect::<BTreeSet<_>>(), ids, "files on disk = rows");
    assert_eq!(
        other,
        BTreeSet::from(["images.csv".to_string(), "images.geojson".to_string()]),
        "no temp file left"
    );
    assert_eq!(sidecar_ids(&dir), (ids.clone(), ids.clone()));
    // GDAL (what QGIS reads them with) sees n points in each.
    for (file, oo) in [
        ("images.geojson", vec![]),
        ("images.csv", vec!["-oo", "X_POSSIBLE_NAMES=lon", "-oo", "Y_POSSIBLE_NAMES=lat"]),
    ] {
        let o = Command::new("ogrinfo")
            .args(["-ro", "-al", "-so"])
            .args(&oo)
            .arg(dir.join(file))
            .output()
            .expect("ogrinfo runs (gdal-bin)");
        let info = String::from_utf8_lossy(&o.stdout);
        assert!(
            info.contains("Geometry: Point") && info.contains(&format!("Feature Count: {n}")),
            "{file}: {info}"
        );
    }
    // One multi-id lookup per 50 pictures, and nothing else.
    assert!(spent <= 20 + n.div_ceil(50), "{spent} Graph calls for {n} pictures");
    eprintln!("{n} pictures, {spent} Graph calls ({:.1} per 1,000)", 1000.0 * spent as f64 / n as f64);
    let cdn = w.cdn();
    assert_eq!(cdn.len() as u64, n, "one image-server request per picture");

    // A rerun fetches nothing.
    let out = ok(&w.download(&["--where", "true", "--size", "1024", "--out", dir.to_str().unwrap()]));
    assert_eq!(num_before(&out, " skipped"), n, "{out}");
    assert_eq!(w.cdn().len() as u64, n, "a rerun of a complete directory fetches nothing");

    // A deleted file, a truncated one, and one with a byte changed (same length).
    let mut it = jpg.iter();
    let (gone, cut, flipped) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    std::fs::remove_file(dir.join(gone)).unwrap();
    let body = std::fs::read(dir.join(cut)).unwrap();
    std::fs::write(dir.join(cut), &body[..body.len() / 2]).unwrap();
    let mut body = std::fs::read(dir.join(flipped)).unwrap();
    let last = body.len() - 3;
    body[last] ^= 0x55;
    std::fs::write(dir.join(flipped), &body).unwrap();
    let before = w.cdn().len();
    let out = ok(&w.download(&["--where", "true", "--size", "1024", "--out", dir.to_str().unwrap()]));
    let fetched: BTreeSet<i64> = w.cdn()[before..].iter().map(|(_, id)| *id).collect();
    assert_eq!(fetched, BTreeSet::from([id_of(gone), id_of(cut)]), "{out}");
    assert_eq!(num_before(&out, " files,"), 2, "{out}");
    // Only --verify re-hashes, and finds the changed byte.
    let before = w.cdn().len();
    let out =
        ok(&w.download(&["--where", "true", "--size", "1024", "--out", dir.to_str().unwrap(), "--verify"]));
    let fetched: BTreeSet<i64> = w.cdn()[before..].iter().map(|(_, id)| *id).collect();
    assert_eq!(fetched, BTreeSet::from([id_of(flipped)]), "{out}");
    assert_eq!(assert_complete(&w.db, &dir), ids);

    // The other selections, each into its own directory.
    let seq = psql(
        &w.db,
        "SELECT sequence_id FROM mapillary.images_live GROUP BY 1 ORDER BY count(*) DESC LIMIT 1",
    );
    let in_seq = w.count(&format!("SELECT count(*) FROM mapillary.images_live WHERE sequence_id = '{seq}'"));
    let sdir = w.dir("seq");
    ok(&w.download(&["--sequence", &seq, "--size", "256", "--out", sdir.to_str().unwrap()]));
    let got = assert_complete(&w.db, &sdir);
    assert_eq!(got.len() as u64, in_seq);
    assert!(files(&sdir).0.iter().all(|r| r.starts_with(&format!("{seq}/"))), "one sequence, one directory");
    let (feature, seen_in) = psql(
        &w.db,
        "SELECT m.map_feature_id || ' ' || count(*) FROM mapillary.map_feature_images m \
         JOIN mapillary.images_live i ON i.id = m.image_id GROUP BY m.map_feature_id ORDER BY count(*) DESC, m.map_feature_id LIMIT 1",
    )
    .split_once(' ')
    .map(|(a, b)| (a.to_string(), b.parse::<usize>().unwrap()))
    .unwrap();
    let fdir = w.dir("feature");
    ok(&w.download(&["--map-feature", &feature, "--size", "256", "--out", fdir.to_str().unwrap()]));
    assert_eq!(assert_complete(&w.db, &fdir).len(), seen_in);
    let rdir = w.dir("region");
    let bbox = "13.16,55.6205,13.165,55.621";
    let out = ok(&w.download(&["--region", bbox, "--size", "256", "--out", rdir.to_str().unwrap()]));
    let in_box = w.count(
        "SELECT count(*) FROM mapillary.images_live WHERE ST_Intersects(geom, ST_MakeEnvelope(13.16, 55.6205, 13.165, 55.621, 4326))",
    );
    assert!(in_box > 0, "{out}");
    assert_eq!(assert_complete(&w.db, &rdir).len() as u64, in_box, "{out}");

    // Usage errors are clap's (exit 2): no selection, two selections, a size that is not one.
    for args in [
        vec!["--size", "256", "--out", "x"],
        vec!["--where", "true", "--sequence", "s", "--size", "256", "--out", "x"],
        vec!["--where", "true", "--size", "512", "--out", "x"],
        vec!["--where", "true", "--size", "256", "--out", "x", "--concurrency", "0"],
    ] {
        let o = w.download(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// Waits until `dir` holds at least `n` pictures (or the process ended).
fn wait_for_files(child: &mut std::process::Child, dir: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while files(dir).0.len() < n {
        assert!(child.try_wait().unwrap().is_none(), "the download ended before it could be interrupted");
        assert!(Instant::now() < deadline, "no {n} files after 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_killed_or_interrupted_download_resumes_without_fetching_a_complete_file_again() {
    use std::os::unix::process::ExitStatusExt;
    let w = World::new("img_kill", &[]);
    let n = w.count("SELECT count(*) FROM mapillary.images_live") as usize;
    for sig in ["KILL", "INT"] {
        let dir = w.dir(&format!("pics_{sig}"));
        let args =
            ["--where", "true", "--size", "original", "--out", dir.to_str().unwrap(), "--concurrency", "4"];
        let before = w.cdn().len();
        let mut child = w.spawn(&args);
        wait_for_files(&mut child, &dir, n / 4);
        if sig == "KILL" {
            // One download into a directory at a time: a second is refused and touches nothing.
            let o = w.download(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(4), "{err}");
            assert!(err.contains("another `mly-harvest images download` is writing into"), "{err}");
        }
        let s = Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().unwrap();
        assert!(s.success());
        let o = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        match sig {
            "KILL" => assert_eq!(o.status.signal(), Some(9)),
            _ => {
                assert_eq!(o.status.code(), Some(130), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
                assert!(stdout.contains("interrupted"), "{stdout}");
            }
        }
        // Give the simulator a moment to log requests it was answering at the kill.
        std::thread::sleep(Duration::from_millis(300));
        // Only complete files under their final names: each has its row and matches it.
        let (jpg, other) = files(&dir);
        assert!(jpg.len() < n, "SIG{sig} came after the end");
        let rows = rows(&w.db, &dir);
        for rel in &jpg {
            let (path, bytes, sha, _) = rows.get(&id_of(rel)).unwrap_or_else(|| panic!("{rel} has no row"));
            assert_eq!(path, rel);
            let body = std::fs::read(dir.join(rel)).unwrap();
            assert_eq!(
                (body.len() as u64, sha256_hex(&body)),
                (*bytes, sha.clone()),
                "{rel} is not complete"
            );
        }
        if sig == "INT" {
            assert!(
                other.iter().all(|f| f.starts_with("images.")),
                "temp files left after SIGINT: {other:?}"
            );
            assert_eq!(rows.len(), jpg.len(), "rows without files");
        }
        let complete: BTreeSet<i64> = jpg.iter().map(|r| id_of(r)).collect();
        let first = w.cdn().len();
        let out = ok(&w.download(&args));
        let again: BTreeSet<i64> =
            w.cdn()[first..].iter().filter(|(s, _)| *s == 200).map(|(_, id)| *id).collect();
        let twice: Vec<&i64> = again.intersection(&complete).collect();
        assert!(twice.is_empty(), "SIG{sig}: complete files fetched again: {twice:?}\n{out}");
        assert_eq!(assert_complete(&w.db, &dir).len(), n, "{out}");
        assert_eq!(files(&dir).1.len(), 2, "only the sidecars besides the pictures");
        // Per picture, how often it was fetched over both runs.
        let mut per: BTreeMap<i64, usize> = BTreeMap::new();
        for (status, id) in &w.cdn()[before..] {
            if *status == 200 {
                *per.entry(*id).or_default() += 1;
            }
        }
        let doubles = per.values().filter(|c| **c > 1).count();
        eprintln!("SIG{sig} after {} of {n} files: {doubles} pictures fetched twice", complete.len());
        assert_eq!(per.len(), n);
        if sig == "INT" {
            // Downloads in flight at SIGINT finish before the process ends: nothing is fetched twice.
            assert_eq!(doubles, 0, "{per:?}");
        } else {
            // Only what was in flight (4) or downloaded but not yet recorded (~20 ms of files).
            assert!(doubles <= 16, "{doubles} pictures fetched twice");
        }
    }
}

#[test]
fn urls_that_expire_mid_run_are_refreshed_not_failed() {
    // --url-ttl 0: a URL is valid until the second it was signed in ends.
    let w = World::new("img_ttl", &["--url-ttl", "0"]);
    let n = w.count("SELECT count(*) FROM mapillary.images_live");
    let dir = w.dir("pics");
    let calls = w.graph_calls();
    let out = ok(&w.download(&[
        "--where",
        "true",
        "--size",
        "original",
        "--out",
        dir.to_str().unwrap(),
        "--concurrency",
        "2",
    ]));
    let spent = w.graph_calls() - calls;
    let refreshed = num_before(&out, " refreshed URLs");
    assert!(refreshed > 0, "no URL expired: {out}");
    assert_eq!(num_before(&out, " failed"), 0, "{out}");
    assert_eq!(assert_complete(&w.db, &dir).len() as u64, n);
    let cdn = w.cdn();
    assert_eq!(cdn.iter().filter(|(s, _)| *s == 403).count() as u64, refreshed, "every 403 refreshed once");
    assert_eq!(cdn.iter().filter(|(s, _)| *s == 200).count() as u64, n);
    // Refreshed URLs ride along in the next lookups of 50.
    assert!(spent <= 20 + n.div_ceil(50), "{spent} Graph calls for {n} pictures and {refreshed} refreshes");
    eprintln!("{n} pictures, {refreshed} refreshed URLs, {spent} Graph calls");
}

#[test]
fn a_bad_where_is_one_line_exit_4_and_changes_nothing() {
    let w = World::new("img_where", &[]);
    // A function that writes, as a user might have in the schema.
    psql(
        &w.db,
        "CREATE FUNCTION mapillary.wipe() RETURNS boolean LANGUAGE sql AS 'DELETE FROM mapillary.images RETURNING true'",
    );
    let images = psql(&w.db, "SELECT count(*) FROM mapillary.images");
    let seq = psql(&w.db, "SELECT last_value FROM mapillary.harvest_run_id_seq");
    for (clause, says) in [
        ("nosuchcolumn = 1", "column \"nosuchcolumn\" does not exist"),
        ("captured_at >", "syntax error"),
        ("1=1; DELETE FROM images", "syntax error"),
        (
            "true); DELETE FROM images; SELECT (true",
            "cannot insert multiple commands into a prepared statement",
        ),
        ("wipe()", "read-only transaction"),
        ("nextval('harvest_run_id_seq') > 0", "read-only transaction"),
        ("set_config('transaction_read_only', 'off', false) IS NOT NULL", "read-write mode"),
        ("id = 'x'", "invalid input syntax"),
    ] {
        let dir = w.dir("never");
        let o = w.download(&["--where", clause, "--size", "256", "--out", dir.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(4), "{clause}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.contains(" INFO ")).collect();
        assert_eq!(lines.len(), 1, "{clause}: {err}");
        assert!(lines[0].starts_with("mly-harvest: error: --where "), "{clause}: {err}");
        assert!(lines[0].contains(says), "{clause}: {err}");
        assert!(!dir.exists(), "{clause}: the output directory was created");
        assert!(o.stdout.is_empty(), "{clause}");
    }
    assert_eq!(psql(&w.db, "SELECT count(*) FROM mapillary.images"), images);
    assert_eq!(psql(&w.db, "SELECT last_value FROM mapillary.harvest_run_id_seq"), seq);
    assert_eq!(psql(&w.db, "SELECT count(*) FROM mapillary.image_files"), "0");
    assert!(w.cdn().is_empty());
    // A good clause with a subquery and a bbox works, read-only as well.
    let dir = w.dir("some");
    let out = ok(&w.download(&[
        "--where",
        "id IN (SELECT id FROM images_live WHERE ST_Intersects(geom, ST_MakeEnvelope(13.15, 55.62, 13.17, 55.621, 4326)) ORDER BY id LIMIT 2)",
        "--size",
        "256",
        "--out",
        dir.to_str().unwrap(),
    ]));
    assert_eq!(num_before(&out, " files,"), 2, "{out}");
}
