//! `write_tile`: one transaction per tile — COPY into temp staging tables, set-based upserts,
//! tombstones, sequence rebuild, bookkeeping, and the lease-checked `done` mark.

use std::time::Instant;

use geozero::{CoordDimensions, ToWkb};
use sqlx::{PgConnection, Row};

use super::{Store, StoreError, TileWrite, WriteCounts, feature_kind, query_err, tile_key};
use crate::model::Tileset;

/// How often a tile write is retried after a deadlock/serialization failure with a concurrent writer.
const MAX_ATTEMPTS: u32 = 3;

/// Temp staging tables, dropped at commit. Created per transaction because temp tables are per session.
const CREATE_STAGING: &str = "
CREATE TEMP TABLE stage_img (
    id bigint, seq text, captured_ms bigint, compass double precision, is_pano boolean, org bigint,
    creator bigint, tile_hash bigint, geom geometry(Point,4326), has_details boolean,
    computed_compass double precision, creator_username text, camera_type text, make text, model text,
    width integer, height integer, altitude double precision, computed_altitude double precision,
    quality double precision, computed_geom geometry(Point,4326)
) ON COMMIT DROP;
CREATE TEMP TABLE stage_seq (
    id text, captured_ms bigint, is_pano boolean, org bigint, creator bigint
) ON COMMIT DROP;
CREATE TEMP TABLE stage_feat (
    id bigint, kind text, value text, first_ms bigint, last_ms bigint, aligned double precision,
    geom geometry(Point,4326), tile_hash bigint, has_details boolean
) ON COMMIT DROP;
CREATE TEMP TABLE stage_link (feature_id bigint, image_id bigint) ON COMMIT DROP;
CREATE TEMP TABLE stage_det (
    id bigint, image_id bigint, feature_id bigint, value text, created_ms bigint, wkb bytea, b64 text
) ON COMMIT DROP;
CREATE TEMP TABLE touched_seq (id text) ON COMMIT DROP;
";

const COUNT_IMAGES: &str = "
SELECT count(*) FILTER (WHERE i.id IS NULL),
       count(*) FILTER (WHERE i.id IS NOT NULL AND i.deleted_at IS NULL
                        AND (i.tile_hash IS DISTINCT FROM s.tile_hash OR s.has_details
                             OR i.tile_z IS DISTINCT FROM $1 OR i.tile_x IS DISTINCT FROM $2
                             OR i.tile_y IS DISTINCT FROM $3)),
       count(*) FILTER (WHERE i.deleted_at IS NOT NULL),
       count(*)
FROM (SELECT DISTINCT ON (id) id, tile_hash, has_details FROM stage_img ORDER BY id, has_details DESC) s
LEFT JOIN images i ON i.id = s.id";

const COUNT_FEATURES: &str = "
SELECT count(*) FILTER (WHERE f.id IS NULL),
       count(*) FILTER (WHERE f.id IS NOT NULL AND f.deleted_at IS NULL
                        AND (f.tile_hash IS DISTINCT FROM s.tile_hash OR s.has_details
                             OR f.tile_z IS DISTINCT FROM $1 OR f.tile_x IS DISTINCT FROM $2
                             OR f.tile_y IS DISTINCT FROM $3)),
       count(*) FILTER (WHERE f.deleted_at IS NOT NULL),
       count(*)
FROM (SELECT DISTINCT ON (id) id, tile_hash, has_details FROM stage_feat ORDER BY id, has_details DESC) s
LEFT JOIN map_features f ON f.id = s.id";

/// Sequences whose geometry may change: the ones written images belong to now and belonged to before.
const TOUCH_SEQUENCES: &str = "
INSERT INTO touched_seq (id)
SELECT i.sequence_id FROM images i
WHERE i.id = ANY(ARRAY(SELECT id FROM stage_img)) AND i.sequence_id IS NOT NULL
UNION SELECT seq FROM stage_img WHERE seq IS NOT NULL
UNION SELECT id FROM stage_seq";

// $1: the tileset is computed (its tile positions are SfM positions, not the original GPS ones).
// enriched_at of the proposed row is non-NULL exactly when details were given, so ON CONFLICT uses
// it as the has_details flag (EXCLUDED only exposes target-table columns).
const UPSERT_IMAGES: &str = "
INSERT INTO images AS i (id, sequence_id, captured_at, compass_angle, computed_compass_angle, is_pano,
    creator_id, creator_username, organization_id, camera_type, make, model, width, height, altitude,
    computed_altitude, quality_score, geom, computed_geom, tile_z, tile_x, tile_y, tile_hash,
    first_harvested_at, last_harvested_at, enriched_at, deleted_at)
SELECT DISTINCT ON (id) id, seq, to_timestamp(captured_ms / 1000.0), compass, computed_compass, is_pano,
    creator, creator_username, org, camera_type, make, model, width, height, altitude,
    computed_altitude, quality, geom, computed_geom, $2, $3, $4, tile_hash,
    now(), now(), CASE WHEN has_details THEN now() END, NULL
FROM stage_img ORDER BY id, has_details DESC
ON CONFLICT (id) DO UPDATE SET
    sequence_id = COALESCE(EXCLUDED.sequence_id, i.sequence_id),
    captured_at = COALESCE(EXCLUDED.captured_at, i.captured_at),
    compass_angle = COALESCE(EXCLUDED.compass_angle, i.compass_angle),
    is_pano = COALESCE(EXCLUDED.is_pano, i.is_pano),
    creator_id = COALESCE(EXCLUDED.creator_id, i.creator_id),
    organization_id = COALESCE(EXCLUDED.organization_id, i.organization_id),
    computed_compass_angle = CASE WHEN EXCLUDED.enriched_at IS NOT NULL
        THEN EXCLUDED.computed_compass_angle ELSE i.computed_compass_angle END,
    creator_username = CASE WHEN EXCLUDED.enriched_at IS NOT NULL
        THEN EXCLUDED.creator_username ELSE i.creator_username END,
    camera_type = CASE WHEN EXCLUDED.enriched_at IS NOT NULL THEN EXCLUDED.camera_type ELSE i.camera_type END,
    make = CASE WHEN EXCLUDED.enriched_at IS NOT NULL THEN EXCLUDED.make ELSE i.make END,
    model = CASE WHEN EXCLUDED.enriched_at IS NOT NULL THEN EXCLUDED.model ELSE i.model END,
    width = CASE WHEN EXCLUDED.enriched_at IS NOT NULL THEN EXCLUDED.width ELSE i.width END,
    height = CASE WHEN EXCLUDED.enriched_at IS NOT NULL THEN EXCLUDED.height ELSE i.height END,
    altitude = CASE WHEN EXCLUDED.enriched_at IS NOT NULL THEN EXCLUDED.altitude ELSE i.altitude END,
    computed_altitude = CASE WHEN EXCLUDED.enriched_at IS NOT NULL
        THEN EXCLUDED.computed_altitude ELSE i.computed_altitude END,
    quality_score = CASE WHEN EXCLUDED.enriched_at IS NOT NULL
        THEN EXCLUDED.quality_score ELSE i.quality_score END,
    -- Without details, the tile's quantised position replaces the stored (exact, enriched) one
    -- only when the tile shows the image elsewhere than before.
    geom = CASE WHEN ($1 OR i.tile_hash = EXCLUDED.tile_hash) AND EXCLUDED.enriched_at IS NULL
        THEN i.geom ELSE EXCLUDED.geom END,
    computed_geom = CASE WHEN $1 OR EXCLUDED.enriched_at IS NOT NULL
        THEN EXCLUDED.computed_geom ELSE i.computed_geom END,
    tile_z = EXCLUDED.tile_z, tile_x = EXCLUDED.tile_x, tile_y = EXCLUDED.tile_y,
    tile_hash = EXCLUDED.tile_hash,
    last_harvested_at = now(),
    enriched_at = COALESCE(EXCLUDED.enriched_at, i.enriched_at),
    missing_from_tile_at = NULL,
    deleted_at = NULL";

// $4 is unused for images; both statements take the same binds.
const HAS_LIVE_IMAGES: &str = "SELECT EXISTS (SELECT 1 FROM images
    WHERE tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND deleted_at IS NULL AND $4::text IS NOT NULL)";
const HAS_LIVE_FEATURES: &str = "SELECT EXISTS (SELECT 1 FROM map_features
    WHERE tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND object_type = $4 AND deleted_at IS NULL)";

// Only ids the Graph API confirmed gone ($4), and only while they are still this tile's, live and
// unlisted: a concurrent writer may have moved one to its own tile since the snapshot.
const TOMBSTONE_IMAGES: &str = "
WITH t AS (
    UPDATE images i SET deleted_at = now()
    WHERE i.id = ANY($4) AND i.tile_z = $1 AND i.tile_x = $2 AND i.tile_y = $3 AND i.deleted_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM stage_img s WHERE s.id = i.id)
    RETURNING i.sequence_id
), touched AS (
    INSERT INTO touched_seq (id) SELECT sequence_id FROM t WHERE sequence_id IS NOT NULL
)
SELECT count(*) FROM t";

/// Rebuilds every touched sequence from its live images: ordered by capture time then id, a new
/// line part wherever consecutive images are more than 150 m apart; parts of one image are dropped
/// (a one-point line is invalid), so a sequence of isolated images has a NULL geometry.
// `= ANY(ARRAY(...))` rather than a join with the temp tables: temp tables have no statistics, and
// the planner's default guess (about 1,400 rows) made it read every live image for each tile
// (seconds per tile once `images` holds a few hundred thousand rows); an array lookup is always
// an index scan on images_sequence_idx / the primary key.
const REBUILD_SEQUENCES: &str = "
WITH ids AS (SELECT DISTINCT id FROM touched_seq),
pts AS (
    SELECT i.sequence_id AS sid, i.id, i.captured_at, i.geom, i.is_pano, i.creator_id, i.organization_id,
           CASE WHEN lag(i.geom) OVER w IS NULL OR ST_DistanceSphere(lag(i.geom) OVER w, i.geom) > 150
                THEN 1 ELSE 0 END AS brk
    FROM images i
    WHERE i.sequence_id = ANY(ARRAY(SELECT id FROM ids)) AND i.deleted_at IS NULL
    WINDOW w AS (PARTITION BY i.sequence_id ORDER BY i.captured_at NULLS LAST, i.id)
),
numbered AS (
    SELECT *, sum(brk) OVER (PARTITION BY sid ORDER BY captured_at NULLS LAST, id) AS part FROM pts
),
parts AS (
    SELECT sid, part, ST_MakeLine(geom ORDER BY captured_at NULLS LAST, id) AS line, count(*) AS n
    FROM numbered GROUP BY sid, part
),
lines AS (
    SELECT sid, ST_Multi(ST_Collect(line ORDER BY part)) AS g FROM parts WHERE n >= 2 GROUP BY sid
),
agg AS (
    SELECT sid, count(*) AS n, min(captured_at) AS first_at, max(captured_at) AS last_at,
           bool_or(is_pano) AS is_pano, max(creator_id) AS creator_id, max(organization_id) AS org
    FROM pts GROUP BY sid
),
tile_seq AS (
    SELECT DISTINCT ON (id) id, is_pano, org, creator FROM stage_seq ORDER BY id
)
INSERT INTO sequences AS s (id, geom, image_count, first_captured_at, last_captured_at, is_pano,
    creator_id, organization_id, updated_at)
SELECT ids.id, lines.g, COALESCE(agg.n, 0), agg.first_at, agg.last_at,
       COALESCE(tile_seq.is_pano, agg.is_pano), COALESCE(tile_seq.creator, agg.creator_id),
       COALESCE(tile_seq.org, agg.org), now()
FROM ids
LEFT JOIN agg ON agg.sid = ids.id
LEFT JOIN lines ON lines.sid = ids.id
LEFT JOIN tile_seq ON tile_seq.id = ids.id
ORDER BY ids.id
ON CONFLICT (id) DO UPDATE SET
    geom = EXCLUDED.geom, image_count = EXCLUDED.image_count,
    first_captured_at = EXCLUDED.first_captured_at, last_captured_at = EXCLUDED.last_captured_at,
    is_pano = COALESCE(EXCLUDED.is_pano, s.is_pano),
    creator_id = COALESCE(EXCLUDED.creator_id, s.creator_id),
    organization_id = COALESCE(EXCLUDED.organization_id, s.organization_id),
    updated_at = now()";

const UPSERT_FEATURES: &str = "
INSERT INTO map_features AS f (id, object_value, object_type, first_seen_at, last_seen_at, aligned_direction,
    geom, tile_z, tile_x, tile_y, tile_hash, first_harvested_at, last_harvested_at, enriched_at, deleted_at)
SELECT DISTINCT ON (id) id, value, kind, to_timestamp(first_ms / 1000.0), to_timestamp(last_ms / 1000.0),
    aligned, geom, $1, $2, $3, tile_hash, now(), now(), CASE WHEN has_details THEN now() END, NULL
FROM stage_feat ORDER BY id, has_details DESC
ON CONFLICT (id) DO UPDATE SET
    object_value = COALESCE(EXCLUDED.object_value, f.object_value),
    object_type = EXCLUDED.object_type,
    -- Graph gives seconds, the tile milliseconds: keep the enriched value unless the tile changed.
    first_seen_at = CASE WHEN f.tile_hash = EXCLUDED.tile_hash AND EXCLUDED.enriched_at IS NULL
        THEN f.first_seen_at ELSE COALESCE(EXCLUDED.first_seen_at, f.first_seen_at) END,
    last_seen_at = CASE WHEN f.tile_hash = EXCLUDED.tile_hash AND EXCLUDED.enriched_at IS NULL
        THEN f.last_seen_at ELSE COALESCE(EXCLUDED.last_seen_at, f.last_seen_at) END,
    aligned_direction = CASE WHEN EXCLUDED.enriched_at IS NOT NULL
        THEN EXCLUDED.aligned_direction ELSE f.aligned_direction END,
    geom = CASE WHEN f.tile_hash = EXCLUDED.tile_hash AND EXCLUDED.enriched_at IS NULL
        THEN f.geom ELSE EXCLUDED.geom END,
    tile_z = EXCLUDED.tile_z, tile_x = EXCLUDED.tile_x, tile_y = EXCLUDED.tile_y,
    tile_hash = EXCLUDED.tile_hash,
    last_harvested_at = now(),
    enriched_at = COALESCE(EXCLUDED.enriched_at, f.enriched_at),
    missing_from_tile_at = NULL,
    deleted_at = NULL";

const TOMBSTONE_FEATURES: &str = "
UPDATE map_features f SET deleted_at = now()
WHERE f.id = ANY($5) AND f.tile_z = $1 AND f.tile_x = $2 AND f.tile_y = $3 AND f.object_type = $4
  AND f.deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM stage_feat s WHERE s.id = f.id)";

/// Confirmed-present records missing from their tile are kept; the stamp says since when.
const MARK_MISSING_IMAGES: &str = "
UPDATE images i SET missing_from_tile_at = COALESCE(i.missing_from_tile_at, now())
WHERE i.id = ANY($4) AND i.tile_z = $1 AND i.tile_x = $2 AND i.tile_y = $3 AND i.deleted_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM stage_img s WHERE s.id = i.id)";
const MARK_MISSING_FEATURES: &str = "
UPDATE map_features f SET missing_from_tile_at = COALESCE(f.missing_from_tile_at, now())
WHERE f.id = ANY($5) AND f.tile_z = $1 AND f.tile_x = $2 AND f.tile_y = $3 AND f.object_type = $4
  AND f.deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM stage_feat s WHERE s.id = f.id)";

/// Confirmed-present records the Graph API places in another tile now move there, with that
/// position ($9: the tileset's positions are computed ones); their sequences are rebuilt.
const MOVE_AWAY_IMAGES: &str = "
WITH m AS (
    SELECT * FROM unnest($4::bigint[], $5::integer[], $6::integer[], $7::float8[], $8::float8[])
        AS m(id, x, y, lon, lat)
), u AS (
    UPDATE images i SET tile_x = m.x, tile_y = m.y, missing_from_tile_at = NULL,
        geom = CASE WHEN $9 THEN i.geom ELSE ST_SetSRID(ST_MakePoint(m.lon, m.lat), 4326) END,
        computed_geom = CASE WHEN $9 THEN ST_SetSRID(ST_MakePoint(m.lon, m.lat), 4326) ELSE i.computed_geom END
    FROM m
    WHERE i.id = m.id AND i.tile_z = $1 AND i.tile_x = $2 AND i.tile_y = $3 AND i.deleted_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM stage_img s WHERE s.id = i.id)
    RETURNING i.sequence_id
), touched AS (
    INSERT INTO touched_seq (id) SELECT sequence_id FROM u WHERE sequence_id IS NOT NULL
)
SELECT count(*) FROM u";
const MOVE_AWAY_FEATURES: &str = "
WITH m AS (
    SELECT * FROM unnest($5::bigint[], $6::integer[], $7::integer[], $8::float8[], $9::float8[])
        AS m(id, x, y, lon, lat)
)
UPDATE map_features f SET tile_x = m.x, tile_y = m.y, missing_from_tile_at = NULL,
    geom = ST_SetSRID(ST_MakePoint(m.lon, m.lat), 4326)
FROM m
WHERE f.id = m.id AND f.tile_z = $1 AND f.tile_x = $2 AND f.tile_y = $3 AND f.object_type = $4
  AND f.deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM stage_feat s WHERE s.id = f.id)";

const REPLACE_LINKS: &str = "
DELETE FROM map_feature_images WHERE map_feature_id IN (SELECT id FROM stage_feat WHERE has_details)";
const INSERT_LINKS: &str = "
INSERT INTO map_feature_images (map_feature_id, image_id)
SELECT DISTINCT feature_id, image_id FROM stage_link ORDER BY 1, 2 ON CONFLICT DO NOTHING";

const UPSERT_DETECTIONS: &str = "
INSERT INTO detections AS d (id, image_id, map_feature_id, value, created_at, geom, geometry_b64)
SELECT DISTINCT ON (id) id, image_id, feature_id, value, to_timestamp(created_ms / 1000.0),
    CASE WHEN wkb IS NOT NULL THEN ST_Multi(ST_CollectionExtract(ST_GeomFromWKB(wkb, 0), 3)) END, b64
FROM stage_det ORDER BY id
ON CONFLICT (id) DO UPDATE SET
    image_id = EXCLUDED.image_id,
    map_feature_id = COALESCE(EXCLUDED.map_feature_id, d.map_feature_id),
    value = COALESCE(EXCLUDED.value, d.value),
    created_at = COALESCE(EXCLUDED.created_at, d.created_at),
    geom = COALESCE(EXCLUDED.geom, d.geom),
    geometry_b64 = COALESCE(EXCLUDED.geometry_b64, d.geometry_b64)";

const LOCK_JOB: &str = "
SELECT 1 FROM harvest_tile
WHERE run_id = $1 AND tileset = $2 AND z = $3 AND x = $4 AND y = $5 AND lease_owner = $6 AND state = 'leased'
FOR UPDATE";

const UPSERT_TILE_STATE: &str = "
INSERT INTO tile_state AS t (tileset, z, x, y, etag, last_fetched_at, last_changed_at, record_count)
VALUES ($1, $2, $3, $4, $5, now(), CASE WHEN $6 THEN now() END, $7)
ON CONFLICT (tileset, z, x, y) DO UPDATE SET
    etag = CASE WHEN $8 THEN COALESCE(EXCLUDED.etag, t.etag) ELSE EXCLUDED.etag END,
    last_fetched_at = now(),
    last_changed_at = COALESCE(EXCLUDED.last_changed_at, t.last_changed_at),
    record_count = CASE WHEN $8 THEN t.record_count ELSE EXCLUDED.record_count END";

const MARK_DONE: &str = "
UPDATE harvest_tile SET state = 'done', lease_expires_at = NULL, last_error = NULL,
    images = $7, sequences = $8, features = $9, new = $10, changed = $11, deleted = $12, updated_at = now()
WHERE run_id = $1 AND tileset = $2 AND z = $3 AND x = $4 AND y = $5 AND lease_owner = $6 AND state = 'leased'";

pub(super) async fn write_tile(store: &Store, w: &TileWrite) -> Result<WriteCounts, StoreError> {
    // Encoding is pure CPU work: do it once, outside the retried transaction.
    let staged = Staged::encode(w)?;
    let mut attempt = 1;
    loop {
        let started = Instant::now();
        match write_once(store, w, &staged).await {
            Ok(c) => {
                tracing::debug!(
                    tileset = %w.tileset, tile = %w.tile, new = c.new, changed = c.changed, deleted = c.deleted,
                    revived = c.revived, total = c.total, ms = started.elapsed().as_millis() as u64,
                    "tile written"
                );
                return Ok(c);
            }
            Err(StoreError::Query { context, source }) if attempt < MAX_ATTEMPTS && is_retryable(&source) => {
                tracing::warn!(tileset = %w.tileset, tile = %w.tile, attempt, %context, error = %source,
                    "tile write conflicted with a concurrent writer, retrying");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Deadlocks and serialization failures between concurrent tile writers are safe to retry.
fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01") | Some("40001")))
}

async fn write_once(store: &Store, w: &TileWrite, s: &Staged) -> Result<WriteCounts, StoreError> {
    let tile = w.tile;
    let ctx = |what: &str| format!("{what} for {} tile {tile}", w.tileset);
    let (z, x, y) = tile_key(tile);
    let mut tx = store.pool().begin().await.map_err(query_err(ctx("starting the write")))?;

    // Lock our job row first: fail fast if the lease is gone, and make a concurrent claimer skip it.
    let held = sqlx::query(LOCK_JOB)
        .bind(w.run_id)
        .bind(w.tileset.name())
        .bind(z)
        .bind(x)
        .bind(y)
        .bind(&w.lease_owner)
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_err(ctx("checking the lease")))?;
    if held.is_none() {
        return Err(StoreError::LeaseLost { run_id: w.run_id, tileset: w.tileset, tile });
    }

    let mut counts = WriteCounts::default();
    if !w.unchanged {
        sqlx::raw_sql(CREATE_STAGING)
            .execute(&mut *tx)
            .await
            .map_err(query_err(ctx("creating staging tables")))?;
        let conn: &mut PgConnection = &mut tx;
        copy(conn, "COPY stage_img FROM STDIN", &s.images, &ctx("staging images")).await?;
        copy(conn, "COPY stage_seq FROM STDIN", &s.sequences, &ctx("staging sequences")).await?;
        copy(conn, "COPY stage_feat FROM STDIN", &s.features, &ctx("staging map features")).await?;
        copy(conn, "COPY stage_link FROM STDIN", &s.links, &ctx("staging feature images")).await?;
        copy(conn, "COPY stage_det FROM STDIN", &s.detections, &ctx("staging detections")).await?;
        let coverage = w.tileset.is_coverage();
        // A tile with no live rows yet (every tile of a first harvest) has nothing to tombstone: we
        // hold its lease, and only this tile's own writes give rows its coordinates.
        let had_live: bool = sqlx::query_scalar(if coverage { HAS_LIVE_IMAGES } else { HAS_LIVE_FEATURES })
            .bind(z)
            .bind(x)
            .bind(y)
            .bind(feature_kind(w.tileset).unwrap_or(""))
            .fetch_one(&mut *conn)
            .await
            .map_err(query_err(ctx("checking for live rows")))?;
        if had_live {
            // Temp tables have no statistics and no index: without both, the tombstone anti-join of a
            // 30k-image tile became a 30k x 30k nested loop (42 s instead of milliseconds).
            sqlx::raw_sql(
                "CREATE INDEX ON stage_img (id); CREATE INDEX ON stage_feat (id); ANALYZE stage_img; ANALYZE stage_feat",
            )
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("analyzing staging tables")))?;
        }

        if !w.images.is_empty() {
            add(
                &mut counts,
                fetch_counts(conn, COUNT_IMAGES, (z, x, y), &ctx("counting image changes")).await?,
            );
            sqlx::query(TOUCH_SEQUENCES)
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("collecting touched sequences")))?;
            sqlx::query(UPSERT_IMAGES)
                .bind(w.tileset == Tileset::ComputedPublic)
                .bind(z)
                .bind(x)
                .bind(y)
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("upserting images")))?;
        } else if !w.sequences.is_empty() {
            sqlx::query(TOUCH_SEQUENCES)
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("collecting touched sequences")))?;
        }
        let gone = &w.vanished;
        let moved = MovedColumns::of(&gone.moved);
        if coverage && had_live {
            if !gone.deleted.is_empty() {
                let deleted: i64 = sqlx::query_scalar(TOMBSTONE_IMAGES)
                    .bind(z)
                    .bind(x)
                    .bind(y)
                    .bind(&gone.deleted)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(query_err(ctx("tombstoning images confirmed gone")))?;
                counts.deleted += deleted as u64;
            }
            if !gone.missing.is_empty() {
                let r = sqlx::query(MARK_MISSING_IMAGES)
                    .bind(z)
                    .bind(x)
                    .bind(y)
                    .bind(&gone.missing)
                    .execute(&mut *conn)
                    .await
                    .map_err(query_err(ctx("keeping images missing from their tile")))?;
                counts.missing_from_tile += r.rows_affected();
            }
            if !gone.moved.is_empty() {
                let n: i64 = sqlx::query_scalar(MOVE_AWAY_IMAGES)
                    .bind(z)
                    .bind(x)
                    .bind(y)
                    .bind(&moved.ids)
                    .bind(&moved.xs)
                    .bind(&moved.ys)
                    .bind(&moved.lons)
                    .bind(&moved.lats)
                    .bind(w.tileset == Tileset::ComputedPublic)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(query_err(ctx("moving images to their new tile")))?;
                counts.moved_away += n as u64;
            }
        }
        if coverage || !w.images.is_empty() || !w.sequences.is_empty() {
            sqlx::query(REBUILD_SEQUENCES)
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("rebuilding sequences")))?;
        }
        if !w.features.is_empty() {
            add(
                &mut counts,
                fetch_counts(conn, COUNT_FEATURES, (z, x, y), &ctx("counting feature changes")).await?,
            );
            sqlx::query(UPSERT_FEATURES)
                .bind(z)
                .bind(x)
                .bind(y)
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("upserting map features")))?;
            sqlx::query(REPLACE_LINKS)
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("replacing feature images")))?;
            sqlx::query(INSERT_LINKS)
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("linking feature images")))?;
        }
        if let Some(kind) = feature_kind(w.tileset).filter(|_| had_live) {
            if !gone.deleted.is_empty() {
                let r = sqlx::query(TOMBSTONE_FEATURES)
                    .bind(z)
                    .bind(x)
                    .bind(y)
                    .bind(kind)
                    .bind(&gone.deleted)
                    .execute(&mut *conn)
                    .await
                    .map_err(query_err(ctx("tombstoning map features confirmed gone")))?;
                counts.deleted += r.rows_affected();
            }
            if !gone.missing.is_empty() {
                let r = sqlx::query(MARK_MISSING_FEATURES)
                    .bind(z)
                    .bind(x)
                    .bind(y)
                    .bind(kind)
                    .bind(&gone.missing)
                    .execute(&mut *conn)
                    .await
                    .map_err(query_err(ctx("keeping map features missing from their tile")))?;
                counts.missing_from_tile += r.rows_affected();
            }
            if !gone.moved.is_empty() {
                let r = sqlx::query(MOVE_AWAY_FEATURES)
                    .bind(z)
                    .bind(x)
                    .bind(y)
                    .bind(kind)
                    .bind(&moved.ids)
                    .bind(&moved.xs)
                    .bind(&moved.ys)
                    .bind(&moved.lons)
                    .bind(&moved.lats)
                    .execute(&mut *conn)
                    .await
                    .map_err(query_err(ctx("moving map features to their new tile")))?;
                counts.moved_away += r.rows_affected();
            }
        }
        if !w.detections.is_empty() {
            sqlx::query(UPSERT_DETECTIONS)
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("upserting detections")))?;
        }
    }

    let changed = counts.new + counts.changed + counts.deleted + counts.revived > 0;
    let record_count = if w.tileset.is_coverage() { s.image_count } else { s.feature_count };
    sqlx::query(UPSERT_TILE_STATE)
        .bind(w.tileset.name())
        .bind(z)
        .bind(x)
        .bind(y)
        .bind(w.etag.as_deref())
        .bind(changed)
        .bind(record_count)
        .bind(w.unchanged)
        .execute(&mut *tx)
        .await
        .map_err(query_err(ctx("updating the tile state")))?;

    let done = sqlx::query(MARK_DONE)
        .bind(w.run_id)
        .bind(w.tileset.name())
        .bind(z)
        .bind(x)
        .bind(y)
        .bind(&w.lease_owner)
        .bind(s.image_count)
        .bind(to_i32(w.sequences.len()))
        .bind(s.feature_count)
        .bind(to_i32(counts.new as usize + counts.revived as usize))
        .bind(to_i32(counts.changed as usize))
        .bind(to_i32(counts.deleted as usize))
        .execute(&mut *tx)
        .await
        .map_err(query_err(ctx("marking the tile done")))?;
    if done.rows_affected() == 0 {
        // Dropping `tx` rolls back every row written above.
        return Err(StoreError::LeaseLost { run_id: w.run_id, tileset: w.tileset, tile });
    }
    tx.commit().await.map_err(query_err(ctx("committing")))?;
    Ok(counts)
}

/// The moved records as column arrays for `unnest`.
struct MovedColumns {
    ids: Vec<i64>,
    xs: Vec<i32>,
    ys: Vec<i32>,
    lons: Vec<f64>,
    lats: Vec<f64>,
}

impl MovedColumns {
    fn of(moved: &[super::MovedAway]) -> MovedColumns {
        let mut m = MovedColumns {
            ids: Vec::with_capacity(moved.len()),
            xs: Vec::with_capacity(moved.len()),
            ys: Vec::with_capacity(moved.len()),
            lons: Vec::with_capacity(moved.len()),
            lats: Vec::with_capacity(moved.len()),
        };
        for r in moved {
            let (_, x, y) = tile_key(r.tile);
            m.ids.push(r.id);
            m.xs.push(x);
            m.ys.push(y);
            m.lons.push(r.lon);
            m.lats.push(r.lat);
        }
        m
    }
}

fn add(c: &mut WriteCounts, (new, changed, revived, total): (u64, u64, u64, u64)) {
    c.new += new;
    c.changed += changed;
    c.revived += revived;
    c.total += total;
}

fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// (new, changed, revived, total) of the staged rows; a record that moved in from another tile is changed.
async fn fetch_counts(
    conn: &mut PgConnection,
    sql: &'static str,
    (z, x, y): (i16, i32, i32),
    ctx: &str,
) -> Result<(u64, u64, u64, u64), StoreError> {
    let r = sqlx::query(sql).bind(z).bind(x).bind(y).fetch_one(&mut *conn).await.map_err(query_err(ctx))?;
    let get = |i: usize| -> Result<u64, StoreError> {
        let v: i64 = r.try_get(i).map_err(query_err(ctx))?;
        Ok(v.max(0) as u64)
    };
    Ok((get(0)?, get(1)?, get(2)?, get(3)?))
}

async fn copy(conn: &mut PgConnection, stmt: &str, data: &[u8], ctx: &str) -> Result<(), StoreError> {
    if data.is_empty() {
        return Ok(());
    }
    let mut c = conn.copy_in_raw(stmt).await.map_err(query_err(ctx))?;
    if let Err(e) = c.send(data).await {
        // Abort so the connection leaves COPY mode cleanly; the original error is what matters.
        let _ = c.abort("staging failed").await;
        return Err(query_err(ctx)(e));
    }
    c.finish().await.map_err(query_err(ctx))?;
    Ok(())
}

/// COPY text-format payloads of one tile, encoded once.
struct Staged {
    images: Vec<u8>,
    sequences: Vec<u8>,
    features: Vec<u8>,
    links: Vec<u8>,
    detections: Vec<u8>,
    image_count: i32,
    feature_count: i32,
}

impl Staged {
    fn encode(w: &TileWrite) -> Result<Staged, StoreError> {
        let computed = w.tileset == Tileset::ComputedPublic;
        let mut img = CopyText::with_capacity(w.images.len() * 160);
        for r in &w.images {
            let t = &r.tile;
            let d = r.details.as_ref();
            let tile_pos = (t.lon, t.lat);
            let geom = d.and_then(|d| d.geometry).unwrap_or(tile_pos);
            let computed_geom = match d.and_then(|d| d.computed_geometry) {
                Some(p) => Some(p),
                None if computed => Some(tile_pos),
                None => None,
            };
            let what = || format!("image {}", t.id);
            img.int(Some(t.id.0));
            img.text(d.and_then(|d| d.sequence_id.as_deref()).or(t.sequence_id.as_deref()));
            img.int(d.and_then(|d| d.captured_at_ms).or(t.captured_at_ms));
            img.float(d.and_then(|d| d.compass_angle).or(t.compass_angle));
            img.bool(d.and_then(|d| d.is_pano).or(t.is_pano));
            img.int(d.and_then(|d| d.organization_id).or(t.organization_id));
            img.int(d.and_then(|d| d.creator_id).or(t.creator_id));
            img.int(Some(r.tile_hash));
            img.point(Some(geom), &what)?;
            img.bool(Some(d.is_some()));
            img.float(d.and_then(|d| d.computed_compass_angle));
            img.text(d.and_then(|d| d.creator_username.as_deref()));
            img.text(d.and_then(|d| d.camera_type.as_deref()));
            img.text(d.and_then(|d| d.make.as_deref()));
            img.text(d.and_then(|d| d.model.as_deref()));
            img.int(d.and_then(|d| d.width).map(i64::from));
            img.int(d.and_then(|d| d.height).map(i64::from));
            img.float(d.and_then(|d| d.altitude));
            img.float(d.and_then(|d| d.computed_altitude));
            img.float(d.and_then(|d| d.quality_score));
            img.point(computed_geom, &what)?;
            img.end_row();
        }
        let mut seq = CopyText::with_capacity(w.sequences.len() * 64);
        for s in &w.sequences {
            seq.text(Some(&s.id));
            seq.int(s.captured_at_ms);
            seq.bool(s.is_pano);
            seq.int(s.organization_id);
            seq.int(s.creator_id);
            seq.end_row();
        }
        let mut feat = CopyText::with_capacity(w.features.len() * 120);
        let mut links = CopyText::with_capacity(0);
        for r in &w.features {
            let t = &r.tile;
            let d = r.details.as_ref();
            let what = || format!("map feature {}", t.id);
            feat.int(Some(t.id.0));
            // The tile's kind, not the API's spelling ("trafficsign"): tombstones select on it.
            feat.text(Some(t.kind.as_str()));
            feat.text(d.and_then(|d| d.object_value.as_deref()).or(t.value.as_deref()));
            feat.int(d.and_then(|d| d.first_seen_at_ms).or(t.first_seen_at_ms));
            feat.int(d.and_then(|d| d.last_seen_at_ms).or(t.last_seen_at_ms));
            feat.float(d.and_then(|d| d.aligned_direction));
            feat.point(Some(d.and_then(|d| d.geometry).unwrap_or((t.lon, t.lat))), &what)?;
            feat.int(Some(r.tile_hash));
            feat.bool(Some(d.is_some()));
            feat.end_row();
            for img in d.map(|d| d.images.as_slice()).unwrap_or_default() {
                links.int(Some(t.id.0));
                links.int(Some(img.0));
                links.end_row();
            }
        }
        let mut det = CopyText::with_capacity(w.detections.len() * 200);
        for r in &w.detections {
            let d = &r.det;
            det.int(Some(d.id));
            det.int(Some(d.image_id.0));
            det.int(d.map_feature_id.map(|f| f.0));
            det.text(d.value.as_deref());
            det.int(d.created_at_ms);
            det.bytea(r.pixel_geom_wkb.as_deref());
            det.text(d.geometry_b64.as_deref());
            det.end_row();
        }
        Ok(Staged {
            images: img.buf,
            sequences: seq.buf,
            features: feat.buf,
            links: links.buf,
            detections: det.buf,
            image_count: to_i32(w.images.len()),
            feature_count: to_i32(w.features.len()),
        })
    }
}

/// Builder of PostgreSQL COPY text format (tab-separated, `\N` for NULL, backslash escapes).
struct CopyText {
    buf: Vec<u8>,
    at_row_start: bool,
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

impl CopyText {
    fn with_capacity(n: usize) -> CopyText {
        CopyText { buf: Vec::with_capacity(n), at_row_start: true }
    }

    fn sep(&mut self) {
        if !self.at_row_start {
            self.buf.push(b'\t');
        }
        self.at_row_start = false;
    }

    fn end_row(&mut self) {
        self.buf.push(b'\n');
        self.at_row_start = true;
    }

    fn null(&mut self) {
        self.buf.extend_from_slice(b"\\N");
    }

    fn text(&mut self, v: Option<&str>) {
        self.sep();
        let Some(s) = v else { return self.null() };
        for b in s.bytes() {
            match b {
                b'\\' => self.buf.extend_from_slice(b"\\\\"),
                b'\t' => self.buf.extend_from_slice(b"\\t"),
                b'\n' => self.buf.extend_from_slice(b"\\n"),
                b'\r' => self.buf.extend_from_slice(b"\\r"),
                // NUL cannot be stored in PostgreSQL text at all; drop it rather than fail the tile.
                0 => {}
                _ => self.buf.push(b),
            }
        }
    }

    fn int(&mut self, v: Option<i64>) {
        self.sep();
        match v {
            Some(n) => self.buf.extend_from_slice(n.to_string().as_bytes()),
            None => self.null(),
        }
    }

    fn float(&mut self, v: Option<f64>) {
        self.sep();
        match v.filter(|f| f.is_finite()) {
            // `{:?}` prints the shortest representation that round-trips exactly.
            Some(f) => self.buf.extend_from_slice(format!("{f:?}").as_bytes()),
            None => self.null(),
        }
    }

    fn bool(&mut self, v: Option<bool>) {
        self.sep();
        match v {
            Some(true) => self.buf.push(b't'),
            Some(false) => self.buf.push(b'f'),
            None => self.null(),
        }
    }

    fn hex(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.buf.push(HEX[usize::from(b >> 4)]);
            self.buf.push(HEX[usize::from(b & 0xf)]);
        }
    }

    /// A point as hex EWKB with SRID 4326, the text input form of `geometry`.
    fn point(&mut self, v: Option<(f64, f64)>, what: &dyn Fn() -> String) -> Result<(), StoreError> {
        self.sep();
        let Some((lon, lat)) = v else {
            self.null();
            return Ok(());
        };
        if !(lon.is_finite() && lat.is_finite()) {
            return Err(StoreError::Encode {
                what: what(),
                reason: format!("position {lon},{lat} is not finite"),
            });
        }
        let g = geo_types::Geometry::Point(geo_types::Point::new(lon, lat));
        let ewkb = g
            .to_ewkb(CoordDimensions::xy(), Some(4326))
            .map_err(|e| StoreError::Encode { what: what(), reason: e.to_string() })?;
        self.hex(&ewkb);
        Ok(())
    }

    /// bytea in COPY text: `\x` + hex, with the backslash itself escaped for COPY.
    fn bytea(&mut self, v: Option<&[u8]>) {
        self.sep();
        match v {
            Some(b) => {
                self.buf.extend_from_slice(b"\\\\x");
                self.hex(b);
            }
            None => self.null(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes() {
        let mut c = CopyText::with_capacity(0);
        c.text(Some("a\tb\\c\nd\re\0f"));
        c.text(None);
        c.int(Some(-5));
        c.float(Some(f64::NAN));
        c.float(Some(0.1));
        c.bool(Some(true));
        c.bytea(Some(&[0x01, 0xab]));
        c.end_row();
        assert_eq!(
            String::from_utf8(c.buf).unwrap(),
            "a\\tb\\\\c\\nd\\ref\t\\N\t-5\t\\N\t0.1\tt\t\\\\x01AB\n"
        );
    }

    #[test]
    fn point_is_ewkb_with_srid() {
        let mut c = CopyText::with_capacity(0);
        c.point(Some((8.5, 47.4)), &|| "x".into()).unwrap();
        let s = String::from_utf8(c.buf).unwrap();
        // little endian, type Point with the SRID flag (0x20000001), SRID 4326 (0x10E6)
        assert!(s.starts_with("0101000020E6100000"), "{s}");
        assert!(c_point_err());
    }

    fn c_point_err() -> bool {
        let mut c = CopyText::with_capacity(0);
        c.point(Some((f64::NAN, 1.0)), &|| "image 1".into()).is_err()
    }
}
