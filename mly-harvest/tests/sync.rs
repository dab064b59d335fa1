//! The harvest end to end: `mly-harvest sync` against the simulator into a real PostGIS.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mly_contract::Tileset;
use mly_contract::tiles::TileId;
use mly_core::mvt;
use mly_core::region::Region;

/// Malmö's dense core tile (14/8783/5134, >30k images, forcing quadtree splits) with two suburban
/// neighbours, plus a countryside patch 40 km away whose two tiles are empty: a GeoJSON MultiPolygon.
const STRIP_GEOJSON: &str = r#"{"type":"MultiPolygon","coordinates":[
  [[[12.99,55.595],[13.05,55.595],[13.05,55.600],[12.99,55.600],[12.99,55.595]]],
  [[[13.585,55.385],[13.60,55.385],[13.60,55.395],[13.585,55.395],[13.585,55.385]]]]}"#;
/// The dense core tile and one neighbour (for the crash tests, which run many times).
pub const CORE: &str = "12.99,55.595,13.03,55.600";

/// Writes the strip region file and returns its path (kept alive by the returned dir).
fn strip_region() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strip.geojson");
    std::fs::write(&path, STRIP_GEOJSON).unwrap();
    let p = path.to_str().unwrap().to_string();
    (dir, p)
}

/// Decodes the simulator's tiles of a region: the world the database must hold.
struct Truth {
    images: BTreeSet<i64>,
    sequences: BTreeSet<String>,
    features: BTreeSet<i64>,
    tiles: Vec<TileId>,
    per_tile_images: BTreeMap<TileId, usize>,
}

fn truth(sim: &Sim, region: &str) -> Truth {
    let r = if region.ends_with(".geojson") {
        Region::from_geojson_file(region, std::path::Path::new(region)).unwrap()
    } else {
        Region::from_bbox_text(region, region).unwrap()
    };
    let tiles = r.tiles(14);
    let mut t = Truth {
        images: BTreeSet::new(),
        sequences: BTreeSet::new(),
        features: BTreeSet::new(),
        tiles: tiles.clone(),
        per_tile_images: BTreeMap::new(),
    };
    for tile in tiles {
        for ts in [Tileset::Public, Tileset::FeaturePoint, Tileset::FeatureTrafficSign] {
            let (status, body) = sim.get(&format!(
                "/maps/vtp/{}/2/{}/{}/{}?access_token={}",
                ts.name(),
                tile.z,
                tile.x,
                tile.y,
                SIM_TOKEN.replace('|', "%7C")
            ));
            assert!(matches!(status, 200 | 204 | 404), "tile status {status}");
            let d = mvt::decode_tile(ts, tile, &body).unwrap();
            if ts == Tileset::Public {
                t.per_tile_images.insert(tile, d.images.len());
            }
            t.images.extend(d.images.iter().map(|i| i.id.0));
            t.sequences.extend(d.images.iter().filter_map(|i| i.sequence_id.clone()));
            t.features.extend(d.features.iter().map(|f| f.id.0));
        }
    }
    t
}

fn ids(db: &str, sql: &str) -> BTreeSet<i64> {
    psql(db, sql).lines().filter(|l| !l.is_empty()).map(|l| l.parse().unwrap()).collect()
}

#[test]
fn sync_holds_exactly_the_simulated_world() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let sim = Sim::start(&["--access-log", log.to_str().unwrap()]);
    let db = fresh_db("sync_world");
    let (_dir, strip) = strip_region();
    let strip = strip.as_str();
    let truth = truth(&sim, strip);
    let max = truth.per_tile_images.values().max().copied().unwrap_or(0);
    let empty = truth.per_tile_images.values().filter(|n| **n == 0).count();
    assert!(max > 30_000, "the strip needs a dense tile: {:?}", truth.per_tile_images);
    assert!(empty >= 1, "the strip needs empty tiles: {:?}", truth.per_tile_images);

    let before = sim.stats();
    let out = sync_ok(&run(&["sync", strip], &harvest_env(&sim, &db)));
    assert!(out.contains("Done"), "{out}");
    let after = sim.stats();

    // Every image, sequence and map feature of the tiles, and nothing else.
    assert_eq!(ids(&db, "SELECT id FROM mapillary.images_live ORDER BY id"), truth.images);
    assert_eq!(ids(&db, "SELECT id FROM mapillary.map_features_live ORDER BY id"), truth.features);
    let seqs: BTreeSet<String> =
        psql(&db, "SELECT id FROM mapillary.sequences ORDER BY id").lines().map(str::to_string).collect();
    assert_eq!(seqs, truth.sequences);
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.images WHERE enriched_at IS NULL"), "0");
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.map_features WHERE enriched_at IS NULL"), "0");
    assert_eq!(
        psql(&db, "SELECT count(*) FROM mapillary.harvest_tile WHERE state NOT IN ('done', 'skipped')"),
        "0",
        "every tile done or skipped"
    );
    // The empty tiles were found empty by a Graph probe and never fetched, in any tileset.
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM mapillary.harvest_tile WHERE state = 'skipped' AND skip_reason = 'empty'"
        ),
        empty.to_string(),
        "{out}"
    );

    // Enriched fields equal the simulator's Graph answers, for a sample of images.
    let sample: Vec<i64> =
        truth.images.iter().copied().step_by((truth.images.len() / 100).max(1)).take(100).collect();
    for chunk in sample.chunks(50) {
        let list: Vec<String> = chunk.iter().map(|i| i.to_string()).collect();
        let (status, body) = http_get(
            &format!(
                "{}/?ids={}&fields=id,captured_at,compass_angle,computed_compass_angle,camera_type,make,model,width,height,quality_score,creator,sequence,computed_geometry,geometry",
                sim.url,
                list.join(",")
            ),
            &[("Authorization", &format!("OAuth {SIM_TOKEN}"))],
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for id in chunk {
            let g = &v[id.to_string()];
            let row = psql(
                &db,
                &format!(
                    "SELECT concat_ws('|', (extract(epoch from captured_at)*1000)::bigint, camera_type, make, model, width, height,
                            creator_username, sequence_id, round(ST_X(computed_geom)::numeric, 6), round(ST_Y(computed_geom)::numeric, 6),
                            round(compass_angle::numeric, 4))
                     FROM mapillary.images WHERE id = {id}"
                ),
            );
            let cg = &g["computed_geometry"]["coordinates"];
            let f6 = |x: &serde_json::Value| x.as_f64().map(|f| format!("{f:.6}")).unwrap_or_default();
            let expected = [
                g["captured_at"].as_i64().unwrap().to_string(),
                g["camera_type"].as_str().unwrap_or("").to_string(),
                g["make"].as_str().unwrap_or("").to_string(),
                g["model"].as_str().unwrap_or("").to_string(),
                g["width"].to_string(),
                g["height"].to_string(),
                g["creator"]["username"].as_str().unwrap_or("").to_string(),
                g["sequence"].as_str().unwrap_or("").to_string(),
                f6(&cg[0]),
                f6(&cg[1]),
                format!("{:.4}", g["compass_angle"].as_f64().unwrap()),
            ]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("|");
            assert_eq!(row, expected, "image {id}");
        }
    }

    // The dense tile forced bbox searches down to z18 cells (width 360/2^18 degrees).
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        !log.contains(SIM_TOKEN) && !log.contains("0123456789abcdef0123456789abcdef"),
        "token in access log"
    );
    let z18_width = 360.0 / f64::from(1u32 << 18);
    let searched_z18 = log.lines().filter(|l| l.contains("/images?")).any(|l| {
        let l = l.replace("%2C", ",").replace("%2c", ",");
        let Some(b) = l.split("bbox=").nth(1) else { return false };
        let b: Vec<f64> =
            b.split(['&', ' ']).next().unwrap_or("").split(',').filter_map(|x| x.parse().ok()).collect();
        b.len() == 4 && ((b[2] - b[0]) - z18_width).abs() < 1e-9
    });
    assert!(searched_z18, "no z18 bbox search in the access log");

    // Economy: a few Graph calls per thousand images, never one per image.
    let graph = (after["requests"]["search"].as_u64().unwrap()
        - before["requests"]["search"].as_u64().unwrap())
        + (after["requests"]["entity"].as_u64().unwrap() - before["requests"]["entity"].as_u64().unwrap());
    let per_thousand = graph as f64 * 1000.0 / truth.images.len() as f64;
    eprintln!("graph calls: {graph} for {} images = {per_thousand:.2} per 1000", truth.images.len());
    assert!(per_thousand < 5.0, "{per_thousand} Graph calls per 1000 images");
    let tile_requests =
        after["requests"]["tiles"].as_u64().unwrap() - before["requests"]["tiles"].as_u64().unwrap();
    assert_eq!(
        tile_requests,
        3 * (truth.tiles.len() - empty) as u64,
        "one request per tile with coverage and tileset, none for an empty tile"
    );

    // A second sync of the unchanged world reads only the z12 tiles above the strip (which show
    // no change) and makes no Graph call.
    let before = sim.stats();
    let out = sync_ok(&run(&["sync", strip], &harvest_env(&sim, &db)));
    let after = sim.stats();
    let d = |k: &str| after["requests"][k].as_u64().unwrap() - before["requests"][k].as_u64().unwrap();
    let zoom = mly_core::pipeline::change_zoom(&truth.tiles);
    let parents: BTreeSet<TileId> = truth.tiles.iter().map(|t| t.ancestor_at(zoom)).collect();
    assert_eq!(d("tiles"), parents.len() as u64, "{out}");
    assert_eq!(d("search") + d("entity"), 0, "an unchanged re-sync made Graph calls: {out}");
}

#[test]
fn entity_and_search_limits_are_respected() {
    let sim = Sim::start(&["--entity-per-minute", "600", "--search-per-minute", "300"]);
    let db = fresh_db("sync_limits");
    let mut env = harvest_env(&sim, &db);
    env.push(("MLY_LIMITS__ENTITY_PER_MINUTE", "600"));
    env.push(("MLY_LIMITS__SEARCH_PER_MINUTE", "300"));
    sync_ok(&run(&["sync", CORE], &env));
    let s = sim.stats();
    assert_eq!(s["throttled"].as_u64().unwrap(), 0, "{s}");
    assert!(s["max_per_minute"]["entity"].as_u64().unwrap() <= 600, "{s}");
    assert!(s["max_per_minute"]["search"].as_u64().unwrap() <= 300, "{s}");
    assert!(s["requests"]["search"].as_u64().unwrap() + s["requests"]["entity"].as_u64().unwrap() > 0);
}

/// Kills `sync` with SIGKILL after `after`, returning whether it was still running then.
fn sync_killed_after(sim: &Sim, db: &str, region: &str, after: Duration) -> bool {
    let mut c = Command::new(bin());
    c.args(["sync", region]).stdout(Stdio::null()).stderr(Stdio::null()).env_remove("MAPILLARY_ACCESS_TOKEN");
    for (k, v) in harvest_env(sim, db) {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    true
}

#[test]
fn sigkill_at_several_points_then_resume_gives_the_same_tables() {
    let sim = Sim::start(&[]);
    let clean = fresh_db("sync_clean");
    sync_ok(&run(&["sync", CORE], &harvest_env(&sim, &clean)));
    let expected = checksum(&clean);

    let db = fresh_db("sync_killed");
    // Seeded random kill points over the run's whole span (tile fetch, enrichment, COPY, upsert);
    // SYNC_KILL_SEED replays a failure.
    let seed: u64 = std::env::var("SYNC_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261123);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut points: Vec<u64> = (0..7).map(|_| rng.u64(100..3500)).collect();
    points.sort_unstable();
    eprintln!("kill points (seed {seed}): {points:?} ms");
    let mut kills = 0;
    for ms in points {
        if sync_killed_after(&sim, &db, CORE, Duration::from_millis(ms)) {
            kills += 1;
        }
    }
    let out = sync_ok(&run(&["sync", CORE], &harvest_env(&sim, &db)));
    assert!(kills >= 3, "only {kills} kills landed mid-run");
    assert!(out.contains("Done"), "{out}");
    assert_eq!(checksum(&db), expected, "tables differ from an uninterrupted run");
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM mapillary.harvest_tile WHERE state <> 'done' AND run_id = (SELECT max(id) FROM mapillary.harvest_run)"
        ),
        "0"
    );
    // No duplicates possible (primary keys), and no lost rows: the same counts as the clean run.
    for t in ["images", "sequences", "map_features", "map_feature_images"] {
        let q = format!("SELECT count(*) FROM mapillary.{t}");
        assert_eq!(psql(&db, &q), psql(&clean, &q), "{t}");
    }
}
