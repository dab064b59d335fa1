//! Storage and job-state tests against a real PostgreSQL + PostGIS (one fresh database each).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use geozero::{CoordDimensions, ToWkb};
use mly_contract::tiles::TileId;
use mly_contract::{FeatureKind, Tileset};
use mly_core::jobs::budget::{self, AppKey, TileLimits};
use mly_core::jobs::{self, JobsError, Lease, PlannedTile, RunId, RunStatus, TileCount, TileState};
use mly_core::model::{
    Detection, ImageDetails, ImageId, MapFeatureDetails, MapFeatureId, TileFeature, TileImage, TileSequence,
};
use mly_core::pipeline::{CommitError, commit_tile};
use mly_core::store::{DetectionRow, FeatureRow, ImageRow, Store, TileWrite, Vanished};

use common::{ogr_conn, psql, repo_root};

/// Zurich, the tile of the real 2021 Vespucci fixture.
const T1: TileId = TileId { z: 14, x: 8574, y: 5735 };
const T2: TileId = TileId { z: 14, x: 8575, y: 5735 };

async fn migrated(tag: &str) -> (Store, String) {
    let url = common::fresh_db(tag);
    let store = Store::connect(&url, "mapillary", 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    (store, url)
}

fn region_wkb() -> Vec<u8> {
    let b = mly_contract::tiles::Bbox::new(8.39, 47.39, 8.44, 47.42).unwrap();
    geo_types::Geometry::MultiPolygon(b.to_multipolygon()).to_wkb(CoordDimensions::xy()).unwrap()
}

/// A new run holding just this tile, leased to a fresh owner.
async fn lease(store: &Store, tileset: Tileset, tile: TileId) -> (RunId, String) {
    let key = format!("k{}", fastrand::u64(..));
    let (run, resumed) = jobs::start_or_resume(
        store,
        "test",
        &region_wkb(),
        &key,
        &serde_json::json!({}),
        &[PlannedTile::fetch(tileset, tile)],
    )
    .await
    .unwrap();
    assert!(!resumed);
    let owner = jobs::owner_id();
    let c = jobs::claim(store, run, &owner, 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(c.len(), 1);
    (run, owner)
}

fn img(id: i64, lon: f64, lat: f64, seq: &str, captured_ms: i64) -> ImageRow {
    ImageRow {
        tile: TileImage {
            id: ImageId(id),
            lon,
            lat,
            captured_at_ms: Some(captured_ms),
            compass_angle: Some(90.0),
            sequence_id: Some(seq.to_string()),
            is_pano: Some(false),
            organization_id: None,
            creator_id: Some(42),
        },
        tile_hash: id * 7,
        details: None,
    }
}

/// A tile's write under a lease: the pipeline's commit (lease lock, rows, done mark in one
/// transaction), as `sync` runs it.
struct Job {
    run: RunId,
    owner: String,
    w: TileWrite,
}

impl std::ops::Deref for Job {
    type Target = TileWrite;
    fn deref(&self) -> &TileWrite {
        &self.w
    }
}

impl std::ops::DerefMut for Job {
    fn deref_mut(&mut self) -> &mut TileWrite {
        &mut self.w
    }
}

impl Job {
    async fn commit(&self, store: &Store) -> Result<mly_core::store::WriteCounts, CommitError> {
        let lease = Lease { run: self.run, tileset: self.w.tileset, tile: self.w.tile, owner: &self.owner };
        commit_tile(store, &lease, &self.w, &[]).await
    }
}

fn tile_write(run: RunId, owner: &str, tileset: Tileset, tile: TileId) -> Job {
    Job { run, owner: owner.to_string(), w: tile_write_only(tileset, tile) }
}

fn tile_write_only(tileset: Tileset, tile: TileId) -> TileWrite {
    TileWrite {
        tileset,
        tile,
        etag: Some("\"e1\"".into()),
        unchanged: false,
        images: vec![],
        sequences: vec![],
        features: vec![],
        detections: vec![],
        vanished: Vanished::default(),
    }
}

async fn write_images(store: &Store, tile: TileId, images: Vec<ImageRow>) -> mly_core::store::WriteCounts {
    write_images_judged(store, tile, images, Vanished::default()).await
}

/// Writes a tile with the Graph API's judgement on the records it no longer lists.
async fn write_images_judged(
    store: &Store,
    tile: TileId,
    images: Vec<ImageRow>,
    vanished: Vanished,
) -> mly_core::store::WriteCounts {
    let (run, owner) = lease(store, Tileset::Public, tile).await;
    let mut w = tile_write(run, &owner, Tileset::Public, tile);
    w.images = images;
    w.vanished = vanished;
    w.commit(store).await.expect("commit")
}

#[tokio::test]
async fn migrate_is_idempotent_and_schema_is_configurable() {
    let url = common::fresh_db("migrate");
    let s = Store::connect(&url, "mapillary", 2).await.unwrap();
    s.migrate().await.unwrap();
    s.migrate().await.unwrap();
    let custom = Store::connect(&url, "custom_schema_1", 2).await.unwrap();
    custom.migrate().await.unwrap();
    custom.migrate().await.unwrap();
    assert_eq!(custom.schema(), "custom_schema_1");
    for schema in ["mapillary", "custom_schema_1"] {
        let tables = psql(
            &url,
            &format!(
                "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables \
                 WHERE table_schema = '{schema}'"
            ),
        );
        for t in [
            "_sqlx_migrations",
            "detections",
            "harvest_run",
            "harvest_tile",
            "images",
            "images_live",
            "map_feature_images",
            "map_features",
            "map_features_live",
            "sequences",
            "tile_budget",
            "tile_state",
        ] {
            assert!(tables.split(',').any(|x| x == t), "{schema} lacks {t}: {tables}");
        }
        let geoms = psql(
            &url,
            &format!(
                "SELECT string_agg(f_table_name || '.' || f_geometry_column || ':' || type || ':' || srid, ' ' \
                 ORDER BY 1) FROM geometry_columns WHERE f_table_schema = '{schema}'"
            ),
        );
        for g in [
            "images.geom:POINT:4326",
            "images.computed_geom:POINT:4326",
            "sequences.geom:MULTILINESTRING:4326",
            "map_features.geom:POINT:4326",
            "detections.geom:MULTIPOLYGON:0",
            "images_live.geom:POINT:4326",
            "harvest_run.region_geom:MULTIPOLYGON:4326",
        ] {
            assert!(geoms.contains(g), "{schema}: {g} missing in {geoms}");
        }
        // Every table has a comment (QGIS shows it) and a primary key.
        let uncommented = psql(
            &url,
            &format!(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = '{schema}' AND c.relkind = 'r' AND c.relname <> '_sqlx_migrations' \
                 AND (obj_description(c.oid, 'pg_class') IS NULL \
                      OR NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p'))"
            ),
        );
        assert_eq!(uncommented, "0", "{schema}");
    }
    // PostGIS stays in public, not duplicated per schema.
    assert_eq!(
        psql(&url, "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'postgis'"),
        "public"
    );
}

#[tokio::test]
async fn ogrinfo_sees_typed_layers() {
    let (_store, url) = migrated("ogr").await;
    for (layer, geom) in [
        ("images", "Point"),
        ("sequences", "Multi Line String"),
        ("map_features", "Point"),
        ("images_live", "Point"),
    ] {
        let conn = ogr_conn(&url);
        let out = std::process::Command::new("ogrinfo")
            .args(["-ro", "-so", &conn, &format!("mapillary.{layer}")])
            .output()
            .expect("ogrinfo runs (gdal-bin)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{layer}: {text} {}", String::from_utf8_lossy(&out.stderr));
        // One geometry column prints "Geometry: T", several print "Geometry (geom): T".
        let geometry = text
            .lines()
            .find_map(|l| l.strip_prefix("Geometry: ").or_else(|| l.strip_prefix("Geometry (geom): ")))
            .unwrap_or_default();
        assert_eq!(geometry.trim(), geom, "{layer}: {text}");
        assert!(text.contains("ID[\"EPSG\",4326]"), "{layer} not EPSG:4326: {text}");
        // GDAL uses an integer primary key as FID; sequences have text ids and views have no key.
        if layer == "images" || layer == "map_features" {
            assert!(text.contains("FID Column = id"), "{layer}: {text}");
        }
    }
}

#[tokio::test]
async fn write_upsert_tombstone_revive_and_sequences() {
    let (store, url) = migrated("write").await;
    // Sequence s1: three images a few metres apart, a ~750 m gap, then two more → 2 line parts.
    let images = || {
        vec![
            img(1, 8.4000, 47.4000, "s1", 1_000),
            img(2, 8.4001, 47.4000, "s1", 2_000),
            img(3, 8.4002, 47.4000, "s1", 3_000),
            img(4, 8.4100, 47.4000, "s1", 4_000),
            img(5, 8.4101, 47.4000, "s1", 5_000),
            img(6, 8.4050, 47.4050, "s2", 1_000),
        ]
    };
    let c = write_images(&store, T1, images()).await;
    assert_eq!((c.new, c.changed, c.deleted, c.revived, c.total), (6, 0, 0, 0, 6));
    assert_eq!(
        psql(
            &url,
            "SELECT GeometryType(geom), ST_NumGeometries(geom), image_count FROM mapillary.sequences WHERE id = 's1'"
        ),
        "MULTILINESTRING|2|5"
    );
    // s2 has one image: no valid line, but the row exists with its count.
    assert_eq!(
        psql(&url, "SELECT geom IS NULL, image_count FROM mapillary.sequences WHERE id = 's2'"),
        "t|1"
    );
    assert_eq!(
        psql(&url, "SELECT ST_SRID(geom), ST_AsText(geom) FROM mapillary.images WHERE id = 1"),
        "4326|POINT(8.4 47.4)"
    );
    assert_eq!(
        psql(
            &url,
            "SELECT to_char(captured_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') FROM mapillary.images WHERE id = 2"
        ),
        "1970-01-01 00:00:02.000"
    );

    // Re-write the same tile: upsert, no duplicates, nothing counted as changed.
    let c = write_images(&store, T1, images()).await;
    assert_eq!((c.new, c.changed, c.deleted, c.revived, c.total), (0, 0, 0, 0, 6));
    assert_eq!(psql(&url, "SELECT count(*) FROM mapillary.images"), "6");

    // Enrich image 1 (details given) → changed; later writes without details keep the columns.
    let mut with_details = images();
    with_details[0].details = Some(ImageDetails {
        id: ImageId(1),
        make: Some("Canon\tEOS \\ \"x\"\n".into()),
        width: Some(4000),
        computed_geometry: Some((8.40001, 47.40001)),
        ..Default::default()
    });
    with_details[1].tile_hash = 999; // tile properties of image 2 changed
    let c = write_images(&store, T1, with_details).await;
    assert_eq!((c.new, c.changed), (0, 2));
    let c = write_images(&store, T1, images()).await;
    assert_eq!(c.changed, 1, "image 2's hash changed back");
    assert_eq!(
        psql(
            &url,
            "SELECT make, width, enriched_at IS NOT NULL, ST_AsText(computed_geom) FROM mapillary.images WHERE id = 1"
        ),
        "Canon\tEOS \\ \"x\"\n|4000|t|POINT(8.40001 47.40001)"
    );

    // Image 4 vanishes from the tile. Without the Graph API's word it is kept as it is ...
    let mut fewer = images();
    fewer.retain(|i| i.tile.id.0 != 4);
    let c = write_images(&store, T1, fewer.clone()).await;
    assert_eq!((c.new, c.deleted, c.missing_from_tile), (0, 0, 0));
    assert_eq!(psql(&url, "SELECT count(*) FROM mapillary.images_live"), "6");
    // ... confirmed present: kept and stamped ...
    let kept = Vanished { missing: vec![4], ..Vanished::default() };
    let c = write_images_judged(&store, T1, fewer.clone(), kept).await;
    assert_eq!((c.deleted, c.missing_from_tile), (0, 1));
    assert_eq!(
        psql(
            &url,
            "SELECT deleted_at IS NULL, missing_from_tile_at IS NOT NULL FROM mapillary.images WHERE id = 4"
        ),
        "t|t"
    );
    // ... confirmed gone: tombstoned, sequence rebuilt from live images (5 alone after the gap).
    let gone = Vanished { deleted: vec![4], ..Vanished::default() };
    let c = write_images_judged(&store, T1, fewer, gone).await;
    assert_eq!((c.new, c.deleted), (0, 1));
    assert_eq!(psql(&url, "SELECT deleted_at IS NOT NULL FROM mapillary.images WHERE id = 4"), "t");
    assert_eq!(psql(&url, "SELECT count(*) FROM mapillary.images_live"), "5");
    assert_eq!(
        psql(&url, "SELECT ST_NumGeometries(geom), image_count FROM mapillary.sequences WHERE id = 's1'"),
        "1|4",
        "image 5 alone after the gap forms no line part"
    );

    // It comes back: revived, not new.
    let c = write_images(&store, T1, images()).await;
    assert_eq!((c.new, c.revived, c.deleted), (0, 1, 0));
    assert_eq!(psql(&url, "SELECT count(*) FROM mapillary.images WHERE deleted_at IS NULL"), "6");
    assert_eq!(psql(&url, "SELECT ST_NumGeometries(geom) FROM mapillary.sequences WHERE id = 's1'"), "2");

    // Image 6 moves to the neighbouring tile T2: the row is moved, not duplicated...
    let c = write_images(&store, T2, vec![img(6, 8.4200, 47.4050, "s2", 1_000)]).await;
    assert_eq!((c.new, c.changed, c.deleted), (0, 1, 0));
    assert_eq!(psql(&url, "SELECT tile_x, deleted_at IS NULL FROM mapillary.images WHERE id = 6"), "8575|t");
    // ...and a later write of T1 without it does not tombstone it (it lives in T2 now), not even
    // when a lookup made before T2's write had judged it gone.
    let mut without6 = images();
    without6.retain(|i| i.tile.id.0 != 6);
    let stale = Vanished { deleted: vec![6], ..Vanished::default() };
    let c = write_images_judged(&store, T1, without6, stale).await;
    assert_eq!(c.deleted, 0);
    assert_eq!(psql(&url, "SELECT deleted_at IS NULL FROM mapillary.images WHERE id = 6"), "t");

    // Snapshot and known lookups reflect all of that.
    let snap = store.tile_snapshot(Tileset::Public, T1).await.unwrap();
    assert_eq!(snap.etag.as_deref(), Some("\"e1\""));
    let mut ids: Vec<i64> = snap.live.keys().copied().collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    assert!(snap.live[&1].enriched_at.is_some());
    let known = store.known_images(&[4, 6, 77]).await.unwrap();
    assert_eq!(known.len(), 2);
    assert_eq!(known[&6].tile_hash, 42);

    // An unchanged (304) tile only touches bookkeeping.
    let (run, owner) = lease(&store, Tileset::Public, T1).await;
    let mut w = tile_write(run, &owner, Tileset::Public, T1);
    w.unchanged = true;
    w.etag = None;
    let c = w.commit(&store).await.unwrap();
    assert_eq!(c, Default::default());
    assert_eq!(psql(&url, "SELECT count(*) FROM mapillary.images WHERE deleted_at IS NULL"), "6");
    assert_eq!(psql(&url, "SELECT etag, record_count FROM mapillary.tile_state WHERE x = 8574"), "\"e1\"|5");
    assert_eq!(
        psql(&url, &format!("SELECT state FROM mapillary.harvest_tile WHERE run_id = {}", run.0)),
        "done"
    );

    // The analysis queries run against this data.
    for f in ["coverage_by_tile", "freshness", "feature_inventory", "last_run_changes"] {
        let path = repo_root().join(format!("sql/{f}.sql"));
        let out = std::process::Command::new("psql")
            .args([url.as_str(), "-v", "ON_ERROR_STOP=1", "-tA", "-f", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
        if f != "feature_inventory" {
            assert!(!out.stdout.is_empty(), "{f} returned no rows");
        }
    }
}

#[tokio::test]
async fn features_links_and_detections() {
    let (store, url) = migrated("features").await;
    let feat = |id: i64, kind: FeatureKind| FeatureRow {
        tile: TileFeature {
            id: MapFeatureId(id),
            kind,
            lon: 8.401,
            lat: 47.401,
            value: Some("object--fire-hydrant".into()),
            first_seen_at_ms: Some(1_600_000_000_000),
            last_seen_at_ms: Some(1_700_000_000_000),
        },
        tile_hash: id,
        details: None,
    };
    let (run, owner) = lease(&store, Tileset::FeatureTrafficSign, T1).await;
    let mut w = tile_write(run, &owner, Tileset::FeatureTrafficSign, T1);
    w.features = vec![feat(100, FeatureKind::TrafficSign)];
    w.commit(&store).await.unwrap();

    // Real detection payload (base64 MVT) from the JOSM fixture; the pixel polygon built here.
    let fixture: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::fixtures().join("josm-image-135511895288847-detections.json")).unwrap(),
    )
    .unwrap();
    let b64 = fixture["data"][0]["geometry"].as_str().unwrap().to_string();
    let poly = geo_types::Geometry::Polygon(geo_types::Polygon::new(
        geo_types::LineString::from(vec![(10.0, 10.0), (200.0, 10.0), (200.0, 300.0), (10.0, 10.0)]),
        vec![],
    ));
    let (run, owner) = lease(&store, Tileset::FeaturePoint, T1).await;
    let mut w = tile_write(run, &owner, Tileset::FeaturePoint, T1);
    let mut f1 = feat(1, FeatureKind::Point);
    f1.details = Some(MapFeatureDetails {
        id: MapFeatureId(1),
        object_value: Some("object--fire-hydrant".into()),
        object_type: Some("point".into()),
        aligned_direction: Some(12.5),
        first_seen_at_ms: None,
        last_seen_at_ms: None,
        geometry: Some((8.4011, 47.4011)),
        images: vec![ImageId(135511895288847), ImageId(2)],
    });
    w.features = vec![f1, feat(2, FeatureKind::Point)];
    w.detections = vec![DetectionRow {
        det: Detection {
            id: 138291978344172,
            image_id: ImageId(135511895288847),
            map_feature_id: Some(MapFeatureId(1)),
            value: Some("object--junction-box".into()),
            created_at_ms: Some(1_621_696_845_000),
            geometry_b64: Some(b64.clone()),
        },
        pixel_geom_wkb: Some(poly.to_wkb(CoordDimensions::xy()).unwrap()),
    }];
    let c = w.commit(&store).await.unwrap();
    assert_eq!((c.new, c.total), (2, 2));
    assert_eq!(psql(&url, "SELECT count(*) FROM mapillary.map_feature_images WHERE map_feature_id = 1"), "2");
    assert_eq!(
        psql(
            &url,
            "SELECT aligned_direction, ST_AsText(geom), object_type FROM mapillary.map_features WHERE id = 1"
        ),
        "12.5|POINT(8.4011 47.4011)|point"
    );
    assert_eq!(
        psql(&url, "SELECT GeometryType(geom), ST_SRID(geom), geometry_b64 FROM mapillary.detections"),
        format!("MULTIPOLYGON|0|{b64}")
    );

    // Point feature 2 vanishes: tombstoned; the traffic sign in the same tile is untouched.
    let (run, owner) = lease(&store, Tileset::FeaturePoint, T1).await;
    let mut w = tile_write(run, &owner, Tileset::FeaturePoint, T1);
    w.features = vec![feat(1, FeatureKind::Point)];
    w.vanished.deleted = vec![2];
    let c = w.commit(&store).await.unwrap();
    assert_eq!((c.deleted, c.changed), (1, 0));
    assert_eq!(
        psql(
            &url,
            "SELECT string_agg(id || ':' || (deleted_at IS NULL), ',' ORDER BY id) FROM mapillary.map_features"
        ),
        "1:true,2:false,100:true"
    );
    // Links are kept when no details came.
    assert_eq!(psql(&url, "SELECT count(*) FROM mapillary.map_feature_images"), "2");
    let known = store.known_features(&[1, 2]).await.unwrap();
    assert!(known[&2].deleted && !known[&1].deleted);
}

#[tokio::test]
async fn lease_lost_rolls_back() {
    let (store, url) = migrated("leaselost").await;
    let (run, _owner) = lease(&store, Tileset::Public, T1).await;
    let mut w = tile_write(run, "otherhost:1:impostor", Tileset::Public, T1);
    w.images = vec![img(1, 8.4, 47.4, "s", 0)];
    let e = w.commit(&store).await.unwrap_err();
    assert!(matches!(e, CommitError::Jobs(JobsError::LeaseLost { .. })), "{e}");
    assert!(e.to_string().contains("14/8574/5735") || e.to_string().contains("8574"), "{e}");
    assert_eq!(psql(&url, "SELECT count(*) FROM mapillary.images"), "0");
    assert_eq!(psql(&url, "SELECT state FROM mapillary.harvest_tile"), "leased");
}

fn many_tiles(n: u32) -> Vec<PlannedTile> {
    (0..n)
        .map(|i| {
            PlannedTile::fetch(Tileset::Public, TileId::new(14, 8000 + i % 100, 5000 + i / 100).unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_share_a_tile() {
    let (store, _url) = migrated("claims").await;
    let (run, _) =
        jobs::start_or_resume(&store, "r", &region_wkb(), "claims", &serde_json::json!({}), &many_tiles(300))
            .await
            .unwrap();
    let mut handles = vec![];
    for w in 0..4 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let owner = format!("{}-{w}", jobs::owner_id());
            let mut got = vec![];
            loop {
                let c = jobs::claim(&store, run, &owner, 7, Duration::from_secs(600)).await.unwrap();
                if c.is_empty() {
                    return got;
                }
                got.extend(c.into_iter().map(|c| (c.tileset, c.tile)));
            }
        }));
    }
    let mut all = vec![];
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(all.len(), 300, "every tile handed out exactly once");
    assert_eq!(unique.len(), 300);
}

#[tokio::test]
async fn dead_owner_is_reclaimed_live_one_is_not_and_runs_resume() {
    let (store, url) = migrated("dead").await;
    let host = jobs::owner_id().split(':').next().unwrap().to_string();
    let tiles = many_tiles(4);
    let (run, resumed) = jobs::start_or_resume(
        &store,
        "r",
        &region_wkb(),
        "dead",
        &serde_json::json!({"access_token": "MLY|secret"}),
        &tiles,
    )
    .await
    .unwrap();
    assert!(!resumed);
    assert!(!psql(&url, "SELECT settings::text FROM mapillary.harvest_run").contains("secret"));
    let hour = Duration::from_secs(3600);
    let dead = format!("{host}:4194304999:dead");
    let alive = format!("{host}:1:alive");
    assert_eq!(jobs::claim(&store, run, &alive, 2, hour).await.unwrap().len(), 2);
    assert_eq!(jobs::claim(&store, run, &dead, 2, hour).await.unwrap().len(), 2);
    let me = jobs::owner_id();
    let got = jobs::claim(&store, run, &me, 10, hour).await.unwrap();
    assert_eq!(got.len(), 2, "only the dead owner's tiles are taken over");
    assert!(got.iter().all(|c| c.attempts == 2), "{got:?}");
    assert_eq!(jobs::renew(&store, run, &me, hour).await.unwrap(), 2);

    // One done, one failed for good; the live owner's two stay leased → stopped.
    let mut w = tile_write(run, &me, got[0].tileset, got[0].tile);
    w.images = vec![img(1, 8.4, 47.4, "s", 0)];
    w.commit(&store).await.unwrap();
    jobs::fail_tile(&store, run, &got[1], &me, "HTTP 500 for ?access_token=MLY|1|zzz", false).await.unwrap();
    assert!(
        !psql(&url, "SELECT string_agg(coalesce(last_error, ''), '') FROM mapillary.harvest_tile")
            .contains("zzz")
    );
    jobs::release(&store, run, &alive).await.unwrap();
    let s = jobs::finish(&store, run, &serde_json::json!({"requests": 3})).await.unwrap();
    assert_eq!((s.status.as_str(), s.total, s.done, s.failed, s.pending), ("stopped", 4, 1, 1, 2));

    // Resume: same run, failed tile back to pending.
    let (again, resumed) =
        jobs::start_or_resume(&store, "r", &region_wkb(), "dead", &serde_json::json!({}), &tiles)
            .await
            .unwrap();
    assert!(resumed);
    assert_eq!(again, run);
    let states = jobs::run_tiles(&store, run).await.unwrap();
    assert_eq!(
        states,
        vec![
            TileCount { tileset: "mly1_public".into(), state: TileState::Done, count: 1 },
            TileCount { tileset: "mly1_public".into(), state: TileState::Pending, count: 3 }
        ]
    );
    let infos = jobs::runs(&store, 10).await.unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!((infos[0].tiles_total, infos[0].tiles_done, infos[0].status.as_str()), (4, 1, "running"));
    assert!(serde_json::to_string(&infos[0]).unwrap().contains("\"requests\":3"));

    // Finish everything → done; a new start with the same key is then a new run.
    let rest = jobs::claim(&store, run, &me, 10, hour).await.unwrap();
    for c in &rest {
        let w = tile_write(run, &me, c.tileset, c.tile);
        w.commit(&store).await.unwrap();
    }
    assert_eq!(jobs::finish(&store, run, &serde_json::json!({})).await.unwrap().status, RunStatus::Done);
    let (next, resumed) =
        jobs::start_or_resume(&store, "r", &region_wkb(), "dead", &serde_json::json!({}), &tiles)
            .await
            .unwrap();
    assert!(!resumed && next != run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_is_never_overspent() {
    let (store, url) = migrated("budget").await;
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
    let app = AppKey::from_token("MLY|77|secret-of-the-budget-test");
    // A fast pace: this test is about the count, `tiles_are_paced_across_schemas` about time.
    let limits = TileLimits { per_day: 100, per_minute: 6_000_000 };
    let mut handles = vec![];
    for _ in 0..6 {
        let (store, app) = (store.clone(), app.clone());
        handles.push(tokio::spawn(async move {
            let mut total = 0u32;
            loop {
                let g = budget::take(&store, &app, day, limits, 7).await.unwrap();
                assert!(g.tiles <= 7);
                if g.tiles == 0 {
                    return total;
                }
                total += g.tiles;
            }
        }));
    }
    let mut sum = 0;
    for h in handles {
        sum += h.await.unwrap();
    }
    assert_eq!(sum, 100);
    assert_eq!(psql(&url, "SELECT used FROM mly_harvest_global.tile_budget"), "100");
    let other = chrono::NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
    assert_eq!(budget::take(&store, &app, other, limits, 30).await.unwrap().tiles, 30);
    // Another app has its own budget.
    let app2 = AppKey::from_token("MLY|78|secret-of-the-budget-test");
    assert_eq!(budget::take(&store, &app2, day, limits, 30).await.unwrap().tiles, 30);
}

/// Issue 16 item 10: two schemas on one token share one day's budget and one pace; the
/// token itself is stored nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiles_are_paced_and_budgeted_across_schemas() {
    let (a, url) = migrated("budget_schemas").await;
    let b = Store::connect(&url, "second", 2).await.unwrap();
    b.migrate().await.unwrap();
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
    let token = "MLY|4242|budgettokensecret0123456789abcdef";
    let app = AppKey::from_token(token);
    // 600/min = one tile every 100 ms.
    let limits = TileLimits { per_day: 10, per_minute: 600 };
    let ga = budget::take(&a, &app, day, limits, 4).await.unwrap();
    let gb = budget::take(&b, &app, day, limits, 4).await.unwrap();
    let gc = budget::take(&a, &app, day, limits, 4).await.unwrap();
    assert_eq!((ga.tiles, gb.tiles, gc.tiles), (4, 4, 2), "one budget of 10 for both schemas");
    assert_eq!(ga.spacing, Duration::from_millis(100));
    // The second schema's slots come after the first's four: about 400 ms later.
    assert!(ga.first_in < Duration::from_millis(50), "{:?}", ga.first_in);
    assert!(
        gb.first_in > Duration::from_millis(300) && gb.first_in <= Duration::from_millis(400),
        "{:?}",
        gb.first_in
    );
    assert!(gc.first_in > Duration::from_millis(700), "{:?}", gc.first_in);
    assert_eq!(budget::used(&b, &app, day).await.unwrap(), 10);
    let stored = psql(&url, "SELECT string_agg(app_key, ',') FROM mly_harvest_global.tile_budget");
    assert_eq!(stored, app.as_str());
    assert!(!stored.contains("4242") && !stored.contains("budgettokensecret"));
}

#[tokio::test]
async fn planning_100k_tiles_is_fast() {
    let (store, url) = migrated("plan").await;
    let tiles: Vec<PlannedTile> = (0..100_000u32)
        .map(|i| PlannedTile::fetch(Tileset::Public, TileId::new(14, i % 1000, i / 1000).unwrap()))
        .collect();
    let t = Instant::now();
    let (run, _) = jobs::start_or_resume(&store, "big", &region_wkb(), "big", &serde_json::json!({}), &tiles)
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    eprintln!("planned 100000 tiles in {secs:.2} s");
    assert_eq!(
        psql(&url, &format!("SELECT tiles_total FROM mapillary.harvest_run WHERE id = {}", run.0)),
        "100000"
    );
    assert!(secs < 20.0, "planning took {secs} s");
}

/// Throughput of one dense tile (30k images in 300 sequences): first write, then a full re-write.
#[tokio::test]
async fn write_throughput_30k_image_tile() {
    let (store, url) = migrated("bench").await;
    let b = T1.bounds();
    let rows = || {
        (0..30_000i64)
            .map(|i| {
                let (s, k) = (i / 100, i % 100);
                let lon = b.west + 0.0005 + (s % 20) as f64 * 0.001 + k as f64 * 0.000_005;
                let lat = b.south + 0.0005 + (s / 20) as f64 * 0.0009;
                img(10_000_000 + i, lon, lat, &format!("seq{s:04}"), 1_600_000_000_000 + k * 2000)
            })
            .collect::<Vec<_>>()
    };
    let t = Instant::now();
    let c = write_images(&store, T1, rows()).await;
    let first = t.elapsed().as_secs_f64();
    assert_eq!(c.new, 30_000);
    let t = Instant::now();
    let c = write_images(&store, T1, rows()).await;
    let second = t.elapsed().as_secs_f64();
    assert_eq!((c.new, c.changed, c.total), (0, 0, 30_000));
    eprintln!(
        "write_tile 30k images: insert {first:.2} s ({:.0} rows/s), re-write {second:.2} s ({:.0} rows/s)",
        30_000.0 / first,
        30_000.0 / second
    );
    assert_eq!(psql(&url, "SELECT count(*), sum(image_count) FROM mapillary.sequences"), "300|30000");
}

/// Two workers writing neighbouring tiles whose images share sequences at the same time: both
/// commit (a deadlock between them is retried), and the shared sequences come out whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_shared_sequences() {
    let (store, url) = migrated("shared").await;
    let tiles: Vec<PlannedTile> =
        [T1, T2].iter().map(|&tile| PlannedTile::fetch(Tileset::Public, tile)).collect();
    for round in 0..3 {
        let (run, _) = jobs::start_or_resume(
            &store,
            "r",
            &region_wkb(),
            &format!("shared{round}"),
            &serde_json::json!({}),
            &tiles,
        )
        .await
        .unwrap();
        let mut handles = vec![];
        for i in 0..2 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let owner = format!("{}-{i}", jobs::owner_id());
                let c = jobs::claim(&store, run, &owner, 1, Duration::from_secs(60)).await.unwrap();
                assert_eq!(c.len(), 1);
                let mut w = tile_write(run, &owner, Tileset::Public, c[0].tile);
                let base = if c[0].tile == T1 { 8.40 } else { 8.42 };
                // 40 sequences, each with 50 images in each tile.
                w.images = (0..2000i64)
                    .map(|k| {
                        let (s, n) = (k / 50, k % 50);
                        let id = if c[0].tile == T1 { k } else { 100_000 + k };
                        img(id, base + n as f64 * 0.00001, 47.40 + s as f64 * 0.0001, &format!("s{s}"), id)
                    })
                    .collect();
                w.sequences = (0..40)
                    .map(|s| TileSequence {
                        id: format!("s{s}"),
                        image_id: None,
                        captured_at_ms: None,
                        is_pano: Some(true),
                        organization_id: Some(7),
                        creator_id: Some(42),
                        geom: geo_types::MultiLineString::new(vec![]),
                    })
                    .collect();
                w.commit(&store).await.unwrap()
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    }
    assert_eq!(psql(&url, "SELECT count(*) FROM mapillary.images WHERE deleted_at IS NULL"), "4000");
    // Each sequence: 100 images, two 50-image runs ~1.5 km apart → two parts; attributes from the tile.
    assert_eq!(
        psql(
            &url,
            "SELECT count(*) FROM mapillary.sequences WHERE image_count = 100 AND ST_NumGeometries(geom) = 2 \
             AND is_pano AND organization_id = 7"
        ),
        "40"
    );
}
