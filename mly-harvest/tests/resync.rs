//! Nightly re-sync: the world advances an epoch; only what changed costs Graph calls, deleted
//! records are kept and marked, and the daily tile budget holds across processes and days.

mod common;
use common::*;

use std::collections::BTreeSet;

/// Two suburban Malmö tiles (14/8785/5134 and 14/8786/5134), a few thousand images each.
const SUBURB: &str = "13.035,55.595,13.06,55.600";

fn set(db: &str, sql: &str) -> BTreeSet<String> {
    psql(db, sql).lines().map(str::to_string).collect()
}

/// Records in the region's tiles: a record that moved out of the region is still live upstream
/// (the Graph API confirms it), so the re-synced database keeps it in its new tile, where a fresh
/// harvest of the region never looks.
const IN_REGION: &str =
    "EXISTS (SELECT 1 FROM mapillary.harvest_tile t WHERE t.x = r.tile_x AND t.y = r.tile_y)";

/// Live content in the region, excluding what a tile diff cannot see (the SfM-computed position,
/// which only `--refresh-older-than` re-reads), harvest bookkeeping, and sequences that reach
/// out of the region (`skip`: their lines include images a fresh harvest of the region lacks).
fn live(db: &str, skip: &BTreeSet<String>) -> Vec<BTreeSet<String>> {
    vec![
        set(
            db,
            &format!(
                "SELECT concat_ws('|', id, sequence_id, captured_at, compass_angle, is_pano, creator_id, creator_username,
                organization_id, camera_type, make, model, width, height, altitude, quality_score, ST_AsEWKT(geom),
                tile_x, tile_y, tile_hash) FROM mapillary.images_live r WHERE {IN_REGION}"
            ),
        ),
        set(
            db,
            "SELECT concat_ws('|', id, ST_AsEWKT(geom), image_count, first_captured_at, last_captured_at)
             FROM mapillary.sequences WHERE image_count > 0",
        )
        .into_iter()
        .filter(|row| !skip.contains(row.split('|').next().unwrap_or("")))
        .collect(),
        set(
            db,
            &format!(
                "SELECT concat_ws('|', id, object_value, object_type, first_seen_at, last_seen_at, aligned_direction,
                ST_AsEWKT(geom)) FROM mapillary.map_features_live r WHERE {IN_REGION}"
            ),
        ),
        set(
            db,
            &format!(
                "SELECT l.map_feature_id || '-' || l.image_id FROM mapillary.map_feature_images l
             JOIN mapillary.map_features_live f ON f.id = l.map_feature_id
             JOIN mapillary.images_live r ON r.id = l.image_id WHERE {IN_REGION}"
            ),
        ),
    ]
}

fn delta(a: &serde_json::Value, b: &serde_json::Value, k: &str) -> u64 {
    b["requests"][k].as_u64().unwrap() - a["requests"][k].as_u64().unwrap()
}

#[test]
fn resync_after_an_epoch_equals_a_fresh_harvest_and_keeps_deletions() {
    let db = fresh_db("resync");
    let epoch0 = Sim::start(&["--epoch", "0"]);
    sync_ok(&run(&["sync", SUBURB], &harvest_env(&epoch0, &db)));
    let ids0 = set(&db, "SELECT id FROM mapillary.images_live");
    let feats0 = set(&db, "SELECT id FROM mapillary.map_features_live");
    drop(epoch0);

    let epoch1 = Sim::start(&["--epoch", "1"]);
    let before = epoch1.stats();
    // Every tile re-read (the rolling refresh due for all): the re-sync must then equal a fresh
    // harvest, deletions inside old sequences included (tests/economy.rs covers the nights in
    // between, which read only what the low-zoom tiles show changed).
    let out = sync_ok(&run(&["sync", SUBURB, "--refresh-tiles-older-than=0s"], &harvest_env(&epoch1, &db)));
    let after = epoch1.stats();

    let fresh = fresh_db("resync_fresh");
    sync_ok(&run(&["sync", SUBURB], &harvest_env(&epoch1, &fresh)));
    let moved_out = set(&db, &format!("SELECT id FROM mapillary.images_live r WHERE NOT {IN_REGION}"));
    let skip = set(
        &db,
        &format!(
            "SELECT DISTINCT sequence_id FROM mapillary.images_live r WHERE NOT {IN_REGION} AND sequence_id IS NOT NULL"
        ),
    );
    for (i, (a, b)) in live(&db, &skip).iter().zip(live(&fresh, &skip)).enumerate() {
        let only_resync: Vec<_> = a.difference(&b).take(3).collect();
        let only_fresh: Vec<_> = b.difference(a).take(3).collect();
        assert!(
            only_resync.is_empty() && only_fresh.is_empty(),
            "table #{i}: re-sync has {} rows, fresh {}; only in re-sync: {only_resync:?}; only in fresh: {only_fresh:?}",
            a.len(),
            b.len()
        );
    }

    // Deleted records are kept and marked, not lost; records that left the region are not deleted.
    let ids1 = set(&fresh, "SELECT id FROM mapillary.images_live");
    let gone: BTreeSet<String> =
        ids0.difference(&ids1).filter(|id| !moved_out.contains(*id)).cloned().collect();
    assert!(!gone.is_empty(), "epoch 1 deleted nothing in the region");
    let marked = set(&db, "SELECT id FROM mapillary.images WHERE deleted_at IS NOT NULL");
    assert_eq!(marked, gone);
    let feats1 = set(&fresh, "SELECT id FROM mapillary.map_features_live");
    let feats_out = set(&db, &format!("SELECT id FROM mapillary.map_features_live r WHERE NOT {IN_REGION}"));
    let gone_f: BTreeSet<String> =
        feats0.difference(&feats1).filter(|id| !feats_out.contains(*id)).cloned().collect();
    assert_eq!(set(&db, "SELECT id FROM mapillary.map_features WHERE deleted_at IS NOT NULL"), gone_f);
    assert!(ids1.difference(&ids0).count() > 0, "epoch 1 added nothing");

    // Cost: at most one tile request per tile and tileset; Graph calls bounded by the changes.
    let tiles = 2 * 3;
    assert!(delta(&before, &after, "tiles") <= tiles, "{out}");
    let changed: u64 = psql(
        &db,
        "SELECT coalesce(sum(new + changed), 0) FROM mapillary.harvest_tile
         WHERE run_id = (SELECT max(id) FROM mapillary.harvest_run)",
    )
    .parse()
    .unwrap();
    // Deletions cost Graph calls too: each is confirmed by id before the record is tombstoned.
    let deleted: u64 = psql(
        &db,
        "SELECT coalesce(sum(deleted), 0) FROM mapillary.harvest_tile
         WHERE run_id = (SELECT max(id) FROM mapillary.harvest_run)",
    )
    .parse()
    .unwrap();
    let confirm: u64 = out
        .split(" Graph calls)")
        .next()
        .and_then(|h| h.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no confirmation count in {out}"));
    // One call per 50 vanished ids, plus one per id in a batch that held a deleted one.
    assert!(confirm <= 2 * (deleted + moved_out.len() as u64) + tiles, "{confirm} confirmation calls: {out}");
    let graph = delta(&before, &after, "search") + delta(&before, &after, "entity") - confirm;
    let full = {
        let s = epoch1.stats();
        delta(&after, &s, "search") + delta(&after, &s, "entity")
    };
    eprintln!("re-sync: {changed} new/changed records, {graph} Graph calls (a fresh harvest took {full})");
    assert!(changed > 0);
    assert!(graph <= changed.div_ceil(50) + 2 * tiles, "{graph} Graph calls for {changed} changes");
    assert!(graph < full, "a re-sync must cost less than a fresh harvest");
    assert!(out.contains("deleted"), "{out}");
}

#[test]
fn daily_tile_budget_holds_across_processes_and_days() {
    let db = fresh_db("budget");
    let sim = Sim::start(&[]);
    let mut e = harvest_env(&sim, &db);
    e.push(("MLY_LIMITS__TILES_PER_DAY", "2"));
    e.push(("MLY_HARVEST__TILESETS", "mly1_public"));
    // Three tiles, two a day.
    let region = "13.035,55.595,13.08,55.600";

    let s0 = sim.stats();
    let o = run(&["sync", region, "--budget-day", "2026-01-01"], &e);
    assert_eq!(o.status.code(), Some(7), "{}", String::from_utf8_lossy(&o.stderr));
    let s1 = sim.stats();
    assert_eq!(delta(&s0, &s1, "tiles"), 2);

    // A second process on the same day gets nothing.
    let o = run(&["sync", region, "--budget-day", "2026-01-01"], &e);
    assert_eq!(o.status.code(), Some(7));
    let s2 = sim.stats();
    assert_eq!(delta(&s1, &s2, "tiles"), 0, "the budget was overspent");
    assert_eq!(psql(&db, "SELECT used FROM mly_harvest_global.tile_budget WHERE day = '2026-01-01'"), "2");

    // The next day the same run carries on and finishes.
    let o = run(&["sync", region, "--budget-day", "2026-01-02"], &e);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    let s3 = sim.stats();
    assert_eq!(delta(&s2, &s3, "tiles"), 1);
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.harvest_run"), "1", "one run, resumed");
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.harvest_tile WHERE state = 'done'"), "3");
}

#[test]
fn detections_are_decoded_to_pixels_and_linked() {
    let db = fresh_db("detections");
    let sim = Sim::start(&[]);
    let mut e = harvest_env(&sim, &db);
    e.push(("MLY_HARVEST__DETECTIONS", "true"));
    sync_ok(&run(&["sync", "13.06,55.595,13.07,55.600"], &e));
    let n: i64 = psql(&db, "SELECT count(*) FROM mapillary.detections").parse().unwrap();
    assert!(n > 0, "no detections stored");
    // Every decoded polygon lies within its image's pixel frame.
    let outside = psql(
        &db,
        "SELECT count(*) FROM mapillary.detections d JOIN mapillary.images i ON i.id = d.image_id
         WHERE d.geom IS NULL OR ST_XMin(d.geom) < 0 OR ST_YMin(d.geom) < 0
            OR ST_XMax(d.geom) > i.width OR ST_YMax(d.geom) > i.height",
    );
    assert_eq!(outside, "0");
    let linked: i64 = psql(&db, "SELECT count(*) FROM mapillary.detections WHERE map_feature_id IS NOT NULL")
        .parse()
        .unwrap();
    assert!(linked > 0, "no detection linked to a map feature");
}
