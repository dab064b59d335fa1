//! Interrupts at random points: SIGINT and SIGTERM always end in exit 130 with the run marked
//! stopped and no tile left leased; SIGKILL ends in 137 (the next run takes the dead process's
//! leases over). Whatever the sequence, finishing the run gives the tables of an uninterrupted run.
//!
//! The points are seeded: `MLY_TEST_SEED=<n>` replays a failure (the seed is printed).

mod common;
use common::*;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Two z14 tiles east of Malmö (about 700 images, 24 features): a run takes a second or two, so
/// signals land in every phase (start-up, migration, planning, fetching, enrichment, writing,
/// finishing).
const REGION: &str = "13.15,55.62,13.17,55.621";

/// `SELECT count(*) FROM mapillary.<table> WHERE <cond>`, or 0 while the table does not exist
/// (an interrupt can land before the first migration).
fn count(db: &str, table: &str, cond: &str) -> String {
    if psql(db, &format!("SELECT to_regclass('mapillary.{table}') IS NULL")) == "t" {
        return "0".into();
    }
    psql(db, &format!("SELECT count(*) FROM mapillary.{table} WHERE {cond}"))
}

/// Empties the harvest (data and job tables), keeping the migrated schema: the next run is a
/// first harvest again, without paying for a new database.
fn reset(db: &str) {
    psql(
        db,
        "TRUNCATE mapillary.images, mapillary.sequences, mapillary.map_features, mapillary.map_feature_images, \
         mapillary.detections, mapillary.harvest_run, mapillary.harvest_tile, mapillary.tile_state, \
         mapillary.tile_budget CASCADE",
    );
}

/// How many interruptions the test makes.
const INTERRUPTS: usize = 50;

fn kill(pid: u32, sig: &str) {
    let s = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap();
    assert!(s.success(), "kill -{sig} {pid}");
}

#[test]
fn fifty_seeded_interrupts_end_in_130_or_137_and_the_clean_tables() {
    let sim = Sim::start(&[]);
    let clean = fresh_db("int_clean");
    let t = Instant::now();
    sync_ok(&run(&["sync", REGION], &harvest_env(&sim, &clean)));
    let full_run = t.elapsed();
    let expected = checksum(&clean);

    let seed: u64 = std::env::var("MLY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    });
    eprintln!("MLY_TEST_SEED={seed} (uninterrupted run: {full_run:?})");
    let mut rng = fastrand::Rng::with_seed(seed);
    // Signals land within the first 1.5 s of each process (or its whole run if shorter): every
    // interrupted process leaves progress behind, so later phases are reached over the
    // iterations while the test stays around a minute.
    let span = (full_run.as_millis() as u64).clamp(400, 1_500);

    let mut done = 0;
    let mut outcomes: std::collections::BTreeMap<String, usize> = Default::default();
    let db = fresh_db("int");
    let mut finished = 0;
    while done < INTERRUPTS {
        let sig = ["INT", "TERM", "KILL"][rng.usize(0..3)];
        let after = Duration::from_millis(rng.u64(40..span));
        let mut c = Command::new(bin());
        c.args(["sync", REGION])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("MAPILLARY_ACCESS_TOKEN");
        for (k, v) in harvest_env(&sim, &db) {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + after;
        let mut exited = None;
        while Instant::now() < deadline {
            if let Some(s) = child.try_wait().unwrap() {
                exited = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if exited.is_none() {
            kill(child.id(), sig);
        }
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        let what = format!("seed {seed}, interrupt {done}: SIG{sig} after {after:?}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        let running = count(&db, "harvest_run", "status = 'running'");
        let leased = count(&db, "harvest_tile", "state = 'leased'");
        let code = o.status.code();
        let outcome = match (exited.is_some(), code, o.status.signal()) {
            (true, Some(0), _) | (false, Some(0), _) => {
                // Finished before (or as) the signal arrived: a complete run, compared below.
                assert_eq!(running, "0", "{what}: exit 0 left a running run");
                assert_eq!(checksum(&db), expected, "{what}: tables differ from an uninterrupted run");
                finished += 1;
                reset(&db);
                "finished".to_string()
            }
            (false, Some(130), _) if sig != "KILL" => {
                // The log line of a process that had the run ("run started run=…"), not the
                // error of one stopped before it ("interrupted before the run started").
                if err.contains("run started run=") {
                    // This process had the run: it released its leases and marked it stopped.
                    assert_eq!(running, "0", "{what}: the run was left running: {err}");
                    assert_eq!(leased, "0", "{what}: tiles left leased: {err}");
                }
                done += 1;
                format!("SIG{sig} -> 130")
            }
            (false, None, Some(9)) if sig == "KILL" => {
                done += 1;
                "SIGKILL -> 137".to_string()
            }
            other => panic!("{what}: ended {other:?} / {:?}: {err}", o.status),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    // Finish the last database's run uninterrupted: the same tables as the clean run.
    let out = sync_ok(&run(&["sync", REGION], &harvest_env(&sim, &db)));
    assert!(out.contains("Done"), "{out}");
    assert_eq!(checksum(&db), expected, "seed {seed}: tables differ from an uninterrupted run");
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.harvest_run WHERE status = 'running'"), "0");
    eprintln!("seed {seed}: {outcomes:?}; {finished} runs finished between interrupts, each compared");
    assert!(outcomes.keys().any(|k| k.contains("INT")) && outcomes.keys().any(|k| k.contains("TERM")));
}
