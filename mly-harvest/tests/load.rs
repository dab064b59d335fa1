//! The load path (issue 17): a re-read of an unchanged region writes no data row, and a changed
//! record rewrites only itself. Proved with PostgreSQL's own table statistics.

mod common;
use common::*;

use std::time::{Duration, Instant};

/// Two suburban Malmö tiles (14/8785/5134 and 14/8786/5134), a few thousand images each.
const SUBURB: &str = "13.035,55.595,13.06,55.600";
/// The tables a re-read must not write (their rows are the harvest's data).
const DATA_TABLES: [&str; 3] = ["images", "map_features", "sequences"];

/// (inserted, updated, deleted, dead) tuples of one table of the harvest schema.
fn table_stats(db: &str, table: &str) -> [i64; 4] {
    let row = psql(
        db,
        &format!(
            "SELECT n_tup_ins || '|' || n_tup_upd || '|' || n_tup_del || '|' || n_dead_tup
             FROM pg_stat_user_tables WHERE schemaname = 'mapillary' AND relname = '{table}'"
        ),
    );
    let v: Vec<i64> = row.split('|').map(|n| n.parse().unwrap()).collect();
    [v[0], v[1], v[2], v[3]]
}

/// Waits until `tile_state` shows `writes` inserted+updated rows: every tile transaction writes
/// its state row, so once those are counted, the statistics of everything the same transactions
/// wrote are flushed too (a backend flushes all its table counters at once when it exits).
fn await_tile_state_writes(db: &str, writes: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let [ins, upd, _, _] = table_stats(db, "tile_state");
        if ins + upd >= writes {
            assert_eq!(ins + upd, writes, "more tile state writes than tile jobs");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "statistics never showed {writes} tile state writes (saw {})",
            ins + upd
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn data_stats(db: &str) -> Vec<[i64; 4]> {
    DATA_TABLES.iter().map(|t| table_stats(db, t)).collect()
}

#[test]
fn an_unchanged_reread_writes_nothing_and_a_changed_record_only_itself() {
    let db = fresh_db("load_reread");
    let sim = Sim::start(&[]);
    let env = harvest_env(&sim, &db);
    let first = sync_ok(&run(&["sync", SUBURB], &env));
    let jobs: i64 = psql(&db, "SELECT count(*) FROM mapillary.harvest_tile").parse().unwrap();
    assert_eq!(jobs, 6, "{first}");
    let images: i64 = psql(&db, "SELECT count(*) FROM mapillary.images").parse().unwrap();
    let features: i64 = psql(&db, "SELECT count(*) FROM mapillary.map_features").parse().unwrap();
    assert!(images > 1000 && features > 10, "{images} images, {features} features");
    // Dead tuples must only ever grow here: no vacuum may hide a rewrite.
    for t in DATA_TABLES {
        psql(&db, &format!("ALTER TABLE mapillary.{t} SET (autovacuum_enabled = false)"));
    }
    await_tile_state_writes(&db, jobs);

    // The tile server does not honour ETags: every tile comes back in full, unchanged.
    psql(&db, "UPDATE mapillary.tile_state SET etag = NULL");
    let before = data_stats(&db);
    let fetched_before: String = psql(
        &db,
        "SELECT string_agg(last_fetched_at::text, ',' ORDER BY x, tileset) FROM mapillary.tile_state",
    );
    let s0 = sim.stats();
    // A re-read of every tile (the rolling refresh made due for all): the case where the tile
    // server ignores ETags and a night re-reads unchanged tiles.
    let out = sync_ok(&run(&["sync", SUBURB, "--refresh-tiles-older-than=0s"], &env));
    let s1 = sim.stats();
    assert_eq!(
        s1["requests"]["tiles"].as_u64().unwrap() - s0["requests"]["tiles"].as_u64().unwrap(),
        jobs as u64
    );
    assert!(out.contains("(0 not modified)"), "the tiles must have been read in full: {out}");
    assert!(out.contains(" 0 new, 0 changed, 0 deleted"), "{out}");
    // Nothing needed enrichment either.
    assert_eq!(s1["requests"]["search"], s0["requests"]["search"], "{out}");
    assert_eq!(s1["requests"]["entity"], s0["requests"]["entity"], "{out}");
    // Written so far: the first fetch, clearing the ETags, the re-read.
    await_tile_state_writes(&db, 3 * jobs);
    let after = data_stats(&db);
    for (i, t) in DATA_TABLES.iter().enumerate() {
        assert_eq!(
            after[i], before[i],
            "{t}: (inserted, updated, deleted, dead) moved on an unchanged re-read"
        );
    }
    // Only the tile state records the fetch.
    let fetched_after: String = psql(
        &db,
        "SELECT string_agg(last_fetched_at::text, ',' ORDER BY x, tileset) FROM mapillary.tile_state",
    );
    assert_ne!(fetched_after, fetched_before);
    assert_eq!(
        psql(&db, "SELECT count(*) FROM mapillary.tile_state WHERE etag IS NOT NULL"),
        jobs.to_string()
    );

    // One image's stored fingerprint no longer matches its tile (as if its tile properties had
    // changed): the next re-read rewrites that one row, and its sequence line, unchanged, stays.
    let id = psql(&db, "SELECT id FROM mapillary.images WHERE sequence_id IS NOT NULL ORDER BY id LIMIT 1");
    // One session, so that its statistics are flushed together (seen with the tile state's).
    psql(
        &db,
        &format!(
            "UPDATE mapillary.images SET tile_hash = tile_hash + 1 WHERE id = {id};
             UPDATE mapillary.tile_state SET etag = NULL"
        ),
    );
    await_tile_state_writes(&db, 4 * jobs);
    let before = data_stats(&db);
    let out = sync_ok(&run(&["sync", SUBURB, "--refresh-tiles-older-than=0s"], &env));
    assert!(out.contains(" 0 new, 1 changed, 0 deleted"), "{out}");
    await_tile_state_writes(&db, 5 * jobs);
    let after = data_stats(&db);
    let delta = |i: usize, k: usize| after[i][k] - before[i][k];
    assert_eq!((delta(0, 0), delta(0, 1), delta(0, 2)), (0, 1, 0), "images: one row rewritten");
    assert_eq!(after[1], before[1], "map_features untouched");
    assert_eq!(after[2], before[2], "sequences: the line came out equal, so it was not rewritten");
    // And the tables hold exactly what a fresh harvest holds.
    let fresh = fresh_db("load_fresh");
    sync_ok(&run(&["sync", SUBURB], &harvest_env(&sim, &fresh)));
    assert_eq!(checksum(&db), checksum(&fresh));
}
