//! What operators get from a run: the Prometheus metrics file (parsed by Python's
//! `prometheus_client`, equal to the run summary, written for failed runs too), JSON log lines,
//! and the picture of a run (`report`).

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Two suburban Malmö tiles (14/8785/5134 and 14/8786/5134).
const SUBURB: &str = "13.035,55.595,13.06,55.600";

/// Parses a metrics file with prometheus_client's text parser (in a venv under target/).
/// None when the package index is unreachable: then the test says so and uses its own parser.
fn parse_with_prometheus_client(path: &Path) -> Option<BTreeMap<String, f64>> {
    let venv = repo_root().join("target/py-prometheus");
    let py = venv.join("bin/python3");
    let ready =
        Command::new(&py).args(["-c", "import prometheus_client"]).output().is_ok_and(|o| o.status.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .is_ok_and(|o| o.status.success());
        let installed = made
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check", "prometheus_client"])
                .output()
                .is_ok_and(|o| o.status.success());
        if !installed {
            eprintln!("SKIPPED the prometheus_client parse: pip could not install it (no package index?)");
            return None;
        }
    }
    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("schema", "region"))
        out[s.name + "{" + labels + "}"] = s.value
print(json.dumps(out))
"#;
    let o = Command::new(&py).args(["-c", script]).arg(path).output().expect("python runs");
    assert!(o.status.success(), "prometheus_client rejects the file: {}", String::from_utf8_lossy(&o.stderr));
    Some(serde_json::from_slice(&o.stdout).expect("json"))
}

/// The same map from a plain reading of the text format (used to compare, and as fallback).
fn parse_plain(path: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(path).expect("metrics file");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = series.split_once('{').expect("labels");
        let mut ls: Vec<String> = labels
            .trim_end_matches('}')
            .split("\",")
            .map(|kv| kv.trim_end_matches('"').replacen("=\"", "=", 1))
            .filter(|kv| !kv.starts_with("schema=") && !kv.starts_with("region="))
            .collect();
        ls.sort();
        out.insert(format!("{name}{{{}}}", ls.join(",")), value.parse().expect("number"));
    }
    out
}

fn metrics(path: &Path) -> BTreeMap<String, f64> {
    let plain = parse_plain(path);
    if let Some(p) = parse_with_prometheus_client(path) {
        // The same samples; values equal up to the last bit of a float printed by Python and read
        // back by serde_json (whose fast float parsing may differ by one unit in the last place).
        assert_eq!(
            p.keys().collect::<Vec<_>>(),
            plain.keys().collect::<Vec<_>>(),
            "prometheus_client and the plain reading differ"
        );
        for (k, v) in &plain {
            let w = p[k];
            assert!((v - w).abs() <= v.abs().max(1.0) * 1e-12, "{k}: prometheus_client {w}, plain {v}");
        }
    }
    plain
}

/// The number right before `word` in the summary text ("12187 images" -> 12187).
fn before(summary: &str, word: &str) -> f64 {
    let i = summary.find(word).unwrap_or_else(|| panic!("{word:?} in {summary}"));
    summary[..i].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[test]
fn metrics_file_parses_and_equals_the_run_summary_and_logs_are_json() {
    let db = fresh_db("metrics");
    let sim = Sim::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("mly.prom");
    let o = run(
        &["--log-format", "json", "sync", SUBURB, "--metrics-file", prom.to_str().unwrap()],
        &harvest_env(&sim, &db),
    );
    let summary = sync_ok(&o);
    let m = metrics(&prom);
    let g = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing in {m:#?}"));
    assert_eq!(g("mly_harvest_run_outcome{outcome=done}"), 1.0);
    assert_eq!(g("mly_harvest_run_outcome{outcome=failed}"), 0.0);
    assert_eq!(g("mly_harvest_run_exit_code{}"), 0.0);
    assert_eq!(g("mly_harvest_run_success{}"), 1.0);
    // Figures equal the summary the run printed.
    let this = summary.lines().find(|l| l.contains("this process:")).unwrap();
    let req = summary.lines().find(|l| l.contains("requests:")).unwrap();
    assert_eq!(g("mly_harvest_run_records{change=new}"), before(this, " new"));
    assert_eq!(g("mly_harvest_run_records{change=changed}"), before(this, " changed"));
    assert_eq!(g("mly_harvest_run_records{change=deleted}"), before(this, " deleted"));
    assert_eq!(g("mly_harvest_run_stored{kind=images}"), before(this, " images"));
    assert_eq!(g("mly_harvest_run_stored{kind=features}"), before(this, " features"));
    assert_eq!(g("mly_harvest_run_enriched{}"), before(this, " enriched"));
    assert_eq!(g("mly_harvest_run_requests{family=tiles}"), before(req, " tiles"));
    assert_eq!(g("mly_harvest_run_requests{family=search}"), before(req, " search"));
    assert_eq!(g("mly_harvest_run_requests{family=entity}"), before(req, " entity"));
    assert_eq!(g("mly_harvest_run_retries{}"), before(req, " retries"));
    assert_eq!(g("mly_harvest_run_throttled{}"), before(req, " throttled"));
    let done = before(summary.lines().next().unwrap(), "/");
    let tiles_done: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("mly_harvest_run_tiles{") && k.contains("state=done"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(tiles_done, done, "tiles done");
    assert_eq!(g("mly_harvest_run_tiles{state=failed,tileset=mly1_public}"), 0.0);
    assert_eq!(g("mly_harvest_run_id{}"), 1.0);
    // 2 tiles x 3 tilesets taken from the default 1,500 a day.
    assert_eq!(g("mly_harvest_tile_budget_remaining{}"), 1_500.0 - 6.0);
    assert!(g("mly_harvest_run_duration_seconds{}") > 0.0);
    let (last, end) =
        (g("mly_harvest_last_success_timestamp_seconds{}"), g("mly_harvest_run_end_timestamp_seconds{}"));
    assert!(last <= end && end - last < 5.0, "last success is this run: {last} vs {end}");
    // --log-format json: every log line is one JSON object with a level and a message.
    let stderr = String::from_utf8_lossy(&o.stderr);
    let mut lines = 0;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines >= 2, "expected log lines, got: {stderr}");
    assert!(stderr.contains("\"message\":\"run finished\""), "{stderr}");

    // A re-run that re-reads every tile: each answers 304, so the tiles are "unchanged", and
    // nothing is new.
    let summary2 = sync_ok(&run(
        &["sync", SUBURB, "--refresh-tiles-older-than=0s", "--metrics-file", prom.to_str().unwrap()],
        &harvest_env(&sim, &db),
    ));
    let m2 = metrics(&prom);
    assert_eq!(m2["mly_harvest_run_id{}"], 2.0, "{summary2}");
    let unchanged: f64 = m2
        .iter()
        .filter(|(k, _)| k.starts_with("mly_harvest_run_tiles{") && k.contains("state=unchanged"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(unchanged, before(&summary2, " unchanged"), "{summary2}");
    assert_eq!(m2["mly_harvest_run_records{change=new}"], 0.0);
    // A nightly re-run: the low-zoom tiles show no change, so every tile is skipped unread.
    let summary3 =
        sync_ok(&run(&["sync", SUBURB, "--metrics-file", prom.to_str().unwrap()], &harvest_env(&sim, &db)));
    let m3 = metrics(&prom);
    let skipped: f64 = m3
        .iter()
        .filter(|(k, _)| k.starts_with("mly_harvest_run_tiles{") && k.contains("state=skipped"))
        .map(|(_, v)| v)
        .sum();
    assert!(skipped > 0.0, "{summary3}");
    assert_eq!(skipped, before(&summary3, " skipped"), "{summary3}");
    assert!(
        !dir.path().read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp"))
    );
}

#[test]
fn a_failed_run_still_writes_the_metrics_file_and_keeps_the_last_success() {
    let db = fresh_db("metrics_failed");
    let sim = Sim::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("mly.prom");
    let p = prom.to_str().unwrap();
    sync_ok(&run(&["sync", "13.035,55.595,13.04,55.597", "--metrics-file", p], &harvest_env(&sim, &db)));
    let first = metrics(&prom);
    let success = first["mly_harvest_last_success_timestamp_seconds{}"];

    // A token the simulator refuses: exit 6, the run stops, the file is still written.
    let mut env = harvest_env(&sim, &db);
    env.retain(|(k, _)| *k != "MAPILLARY_ACCESS_TOKEN");
    env.push(("MAPILLARY_ACCESS_TOKEN", "MLY|4000000000000001|ffffffffffffffffffffffffffffffff"));
    let o = run(&["sync", SUBURB, "--metrics-file", p], &env);
    assert_eq!(o.status.code(), Some(6), "{}", String::from_utf8_lossy(&o.stderr));
    let m = metrics(&prom);
    assert_eq!(m["mly_harvest_run_outcome{outcome=failed}"], 1.0);
    assert_eq!(m["mly_harvest_run_outcome{outcome=done}"], 0.0);
    assert_eq!(m["mly_harvest_run_exit_code{}"], 6.0);
    assert_eq!(m["mly_harvest_run_success{}"], 0.0);
    // The refused token stopped it while it was planned (at its first request, a coverage probe
    // or a low-zoom tile): no run was created, and the request is counted.
    assert!(!m.contains_key("mly_harvest_run_id{}"), "{m:?}");
    let requests: f64 = ["tiles", "search", "entity"]
        .iter()
        .map(|f| m[&format!("mly_harvest_run_requests{{family={f}}}")])
        .sum();
    assert!(requests >= 1.0, "its requests are counted: {m:?}");
    assert_eq!(m["mly_harvest_last_success_timestamp_seconds{}"], success, "the last success is kept");
    assert!(m["mly_harvest_run_end_timestamp_seconds{}"] > success);
    assert!(
        !std::fs::read_to_string(&prom).unwrap().contains("ffffffff"),
        "the token never reaches the file"
    );

    // A database that is not there: no run at all, the file still says the run failed.
    let o = run(
        &["sync", SUBURB, "--metrics-file", p],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"), ("MAPILLARY_ACCESS_TOKEN", SIM_TOKEN)],
    );
    assert_eq!(o.status.code(), Some(5));
    let m = metrics(&prom);
    assert_eq!(m["mly_harvest_run_exit_code{}"], 5.0);
    assert_eq!(m["mly_harvest_last_success_timestamp_seconds{}"], success, "kept from the previous file");
}

#[test]
fn report_draws_the_run_as_png_svg_and_html() {
    let db = fresh_db("report");
    let sim = Sim::start(&[]);
    sync_ok(&run(&["sync", SUBURB], &harvest_env(&sim, &db)));
    let dir = tempfile::tempdir().unwrap();
    let env = [("DATABASE_URL", db.as_str())];
    for ext in ["svg", "html", "png"] {
        let out = dir.path().join(format!("run.{ext}"));
        let o = run(&["report", "1", "--out", out.to_str().unwrap()], &env);
        assert!(o.status.success(), "{ext}: {}", String::from_utf8_lossy(&o.stderr));
        let bytes = std::fs::read(&out).unwrap();
        match ext {
            "png" => {
                assert_eq!(&bytes[1..4], b"PNG");
                let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
                assert_eq!(width, 960);
            }
            _ => {
                let text = String::from_utf8(bytes).unwrap();
                assert!(text.contains("<svg"), "{ext}");
                // Both z14 tiles are drawn as done, and the coverage group holds image cells.
                assert_eq!(
                    text.matches("fill=\"#1b9e77\" fill-opacity=\"0.75\"><title>14/").count(),
                    2,
                    "{ext}"
                );
                let cov = text.split("<g id=\"coverage\"").nth(1).unwrap().split("</g>").next().unwrap();
                assert!(cov.matches("<rect").count() > 100, "coverage cells");
                assert!(text.contains("done 2") && text.contains("failed 0"), "legend");
                if ext == "html" {
                    assert!(text.contains("<td>mly1_public</td><td>2</td>"), "{text}");
                }
            }
        }
    }
    let o = run(&["report", "1", "--out", dir.path().join("x.pdf").to_str().unwrap()], &env);
    assert_eq!(o.status.code(), Some(2), "unknown format");
    let o = run(&["report", "99", "--out", dir.path().join("x.png").to_str().unwrap()], &env);
    assert_eq!(o.status.code(), Some(4), "unknown run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("mly-harvest: error: run 99 does not exist")).count(),
        1,
        "{err}"
    );
}

#[test]
fn systemd_units_verify_and_the_cron_line_parses() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("SKIPPED systemd_units_verify_and_the_cron_line_parses: systemd-analyze is not installed");
        return;
    }
    let root = repo_root();
    let o = Command::new(root.join("scripts/check-units.sh"))
        .env("CARGO_TARGET_DIR", bin().parent().unwrap().parent().unwrap())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
