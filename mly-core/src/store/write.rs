//! `write_tile`: one transaction per tile — read what the tile holds in the database, write only
//! the rows that change (straight COPY into the table when the tile is new there, else COPY into a
//! temp staging table and a set-based upsert), tombstones by id, the lines of the sequences whose
//! images changed, bookkeeping, and the lease-checked `done` mark.
//!
//! A re-read of an unchanged tile writes no data row at all: records whose tile fingerprint and tile
//! are what the database holds are not sent, and every upsert is guarded so that a row that would
//! come out equal is not rewritten (no dead tuple, no WAL); only the tile's state row records the
//! fetch.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::time::Instant;

use sqlx::{PgConnection, Row};

use super::{Stage, Store, StoreError, TileWrite, WriteCounts, feature_kind, query_err, tile_key};
use mly_contract::Tileset;

/// How often a tile write is retried after a deadlock/serialization failure with a concurrent writer.
const MAX_ATTEMPTS: u32 = 3;

/// The images columns a tile write gives, in the order of the COPY rows ([`Staged::encode`]); the
/// staging table has the same columns, so one encoding serves both the direct COPY and the staging.
const COPY_IMAGES: &str = "COPY images (id, sequence_id, captured_at, compass_angle, is_pano, organization_id,
    creator_id, tile_hash, geom, enriched_at, computed_compass_angle, creator_username, camera_type, make, model,
    width, height, altitude, computed_altitude, quality_score, computed_geom, tile_z, tile_x, tile_y) FROM STDIN";
const CREATE_STAGE_IMAGES: &str = "
CREATE TEMP TABLE stage_img (
    id bigint, sequence_id text, captured_at timestamptz, compass_angle double precision, is_pano boolean,
    organization_id bigint, creator_id bigint, tile_hash bigint, geom geometry(Point,4326), enriched_at timestamptz,
    computed_compass_angle double precision, creator_username text, camera_type text, make text, model text,
    width integer, height integer, altitude double precision, computed_altitude double precision,
    quality_score double precision, computed_geom geometry(Point,4326), tile_z smallint, tile_x integer,
    tile_y integer
) ON COMMIT DROP";
const COPY_STAGE_IMAGES: &str = "COPY stage_img FROM STDIN";

/// The map_features columns of a tile write, in the order of the COPY rows.
const COPY_FEATURES: &str = "COPY map_features (id, object_type, object_value, first_seen_at, last_seen_at,
    aligned_direction, geom, tile_hash, enriched_at, tile_z, tile_x, tile_y) FROM STDIN";
const CREATE_STAGE_FEATURES: &str = "
CREATE TEMP TABLE stage_feat (
    id bigint, object_type text, object_value text, first_seen_at timestamptz, last_seen_at timestamptz,
    aligned_direction double precision, geom geometry(Point,4326), tile_hash bigint, enriched_at timestamptz,
    tile_z smallint, tile_x integer, tile_y integer
) ON COMMIT DROP";
const CREATE_STAGE_LINKS: &str =
    "CREATE TEMP TABLE stage_link (feature_id bigint, image_id bigint) ON COMMIT DROP";
const COPY_STAGE_FEATURES: &str = "COPY stage_feat FROM STDIN";

const CREATE_STAGE_DETECTIONS: &str = "
CREATE TEMP TABLE stage_det (
    id bigint, image_id bigint, feature_id bigint, value text, created_ms bigint, wkb bytea, b64 text
) ON COMMIT DROP";

/// The tile's live images as the database holds them: what a re-read is compared with. A record
/// stamped missing from its tile has no fingerprint here, so that a read listing it again clears
/// the stamp.
const LIVE_IMAGES: &str = "
SELECT id, CASE WHEN missing_from_tile_at IS NULL THEN tile_hash END FROM images
WHERE tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND deleted_at IS NULL";
const LIVE_FEATURES: &str = "
SELECT id, CASE WHEN missing_from_tile_at IS NULL THEN tile_hash END FROM map_features
WHERE tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND object_type = $4 AND deleted_at IS NULL";

// Staged rows only: the ones that differ from the tile's live rows (new, changed, moved in,
// revived, or with fresh details).
const COUNT_IMAGES: &str = "
SELECT count(*) FILTER (WHERE i.id IS NULL),
       count(*) FILTER (WHERE i.id IS NOT NULL AND i.deleted_at IS NULL
                        AND (i.tile_hash IS DISTINCT FROM s.tile_hash OR s.enriched_at IS NOT NULL
                             OR i.tile_z IS DISTINCT FROM $1 OR i.tile_x IS DISTINCT FROM $2
                             OR i.tile_y IS DISTINCT FROM $3)),
       count(*) FILTER (WHERE i.deleted_at IS NOT NULL),
       count(*)
FROM (SELECT DISTINCT ON (id) id, tile_hash, enriched_at FROM stage_img ORDER BY id, enriched_at IS NOT NULL DESC) s
LEFT JOIN images i ON i.id = s.id";

const COUNT_FEATURES: &str = "
SELECT count(*) FILTER (WHERE f.id IS NULL),
       count(*) FILTER (WHERE f.id IS NOT NULL AND f.deleted_at IS NULL
                        AND (f.tile_hash IS DISTINCT FROM s.tile_hash OR s.enriched_at IS NOT NULL
                             OR f.tile_z IS DISTINCT FROM $1 OR f.tile_x IS DISTINCT FROM $2
                             OR f.tile_y IS DISTINCT FROM $3)),
       count(*) FILTER (WHERE f.deleted_at IS NOT NULL),
       count(*)
FROM (SELECT DISTINCT ON (id) id, tile_hash, enriched_at FROM stage_feat ORDER BY id, enriched_at IS NOT NULL DESC) s
LEFT JOIN map_features f ON f.id = s.id";

/// The sequences the written images belonged to before (their lines lose those images).
const FORMER_SEQUENCES: &str = "
SELECT DISTINCT sequence_id FROM images WHERE id = ANY($1) AND sequence_id IS NOT NULL";

// $1: the tileset is computed (its tile positions are SfM positions, not the original GPS ones).
// enriched_at of the proposed row is non-NULL exactly when details were given ('now' in the COPY
// text), so ON CONFLICT uses it as the has-details flag. The WHERE keeps a row that would come out
// equal from being rewritten (a concurrent writer may have written it since the tile was read).
const UPSERT_IMAGES: &str = "
INSERT INTO images AS i (id, sequence_id, captured_at, compass_angle, computed_compass_angle, is_pano,
    creator_id, creator_username, organization_id, camera_type, make, model, width, height, altitude,
    computed_altitude, quality_score, geom, computed_geom, tile_z, tile_x, tile_y, tile_hash, enriched_at)
SELECT DISTINCT ON (id) id, sequence_id, captured_at, compass_angle, computed_compass_angle, is_pano,
    creator_id, creator_username, organization_id, camera_type, make, model, width, height, altitude,
    computed_altitude, quality_score, geom, computed_geom, tile_z, tile_x, tile_y, tile_hash, enriched_at
FROM stage_img ORDER BY id, enriched_at IS NOT NULL DESC
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
    deleted_at = NULL
WHERE EXCLUDED.enriched_at IS NOT NULL OR i.deleted_at IS NOT NULL OR i.missing_from_tile_at IS NOT NULL
   OR i.tile_hash IS DISTINCT FROM EXCLUDED.tile_hash
   OR (i.tile_z, i.tile_x, i.tile_y) IS DISTINCT FROM (EXCLUDED.tile_z, EXCLUDED.tile_x, EXCLUDED.tile_y)";

// Vanished records ($4 for images, $5 for features; never ids the tile lists, see `Gone`), only
// while they are still this tile's and live: a concurrent writer may have moved one to its own
// tile since the snapshot.

/// Only ids the Graph API confirmed gone. Returns their sequences.
const TOMBSTONE_IMAGES: &str = "
UPDATE images SET deleted_at = now()
WHERE id = ANY($4) AND tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND deleted_at IS NULL
RETURNING sequence_id";

/// Confirmed-present records missing from their tile are kept; the stamp says since when (set
/// once: a record missing night after night is not rewritten). Returns how many are kept.
const MARK_MISSING_IMAGES: &str = "
WITH kept AS (
    SELECT id, missing_from_tile_at FROM images
    WHERE id = ANY($4) AND tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND deleted_at IS NULL
), stamped AS (
    UPDATE images i SET missing_from_tile_at = now()
    FROM kept WHERE i.id = kept.id AND kept.missing_from_tile_at IS NULL
)
SELECT count(*) FROM kept";
const MARK_MISSING_FEATURES: &str = "
WITH kept AS (
    SELECT id, missing_from_tile_at FROM map_features
    WHERE id = ANY($5) AND tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND object_type = $4
      AND deleted_at IS NULL
), stamped AS (
    UPDATE map_features f SET missing_from_tile_at = now()
    FROM kept WHERE f.id = kept.id AND kept.missing_from_tile_at IS NULL
)
SELECT count(*) FROM kept";

/// Confirmed-present records the Graph API places in another tile now move there, with that
/// position ($9: the tileset's positions are computed ones). Returns their sequences.
const MOVE_AWAY_IMAGES: &str = "
WITH m AS (
    SELECT * FROM unnest($4::bigint[], $5::integer[], $6::integer[], $7::float8[], $8::float8[])
        AS m(id, x, y, lon, lat)
)
UPDATE images i SET tile_x = m.x, tile_y = m.y, missing_from_tile_at = NULL,
    geom = CASE WHEN $9 THEN i.geom ELSE ST_SetSRID(ST_MakePoint(m.lon, m.lat), 4326) END,
    computed_geom = CASE WHEN $9 THEN ST_SetSRID(ST_MakePoint(m.lon, m.lat), 4326) ELSE i.computed_geom END
FROM m
WHERE i.id = m.id AND i.tile_z = $1 AND i.tile_x = $2 AND i.tile_y = $3 AND i.deleted_at IS NULL
RETURNING i.sequence_id";
const MOVE_AWAY_FEATURES: &str = "
WITH m AS (
    SELECT * FROM unnest($5::bigint[], $6::integer[], $7::integer[], $8::float8[], $9::float8[])
        AS m(id, x, y, lon, lat)
)
UPDATE map_features f SET tile_x = m.x, tile_y = m.y, missing_from_tile_at = NULL,
    geom = ST_SetSRID(ST_MakePoint(m.lon, m.lat), 4326)
FROM m
WHERE f.id = m.id AND f.tile_z = $1 AND f.tile_x = $2 AND f.tile_y = $3 AND f.object_type = $4
  AND f.deleted_at IS NULL";

/// The tile's sequences (deduplicated arrays: id, is_pano, creator, organization) whose row is
/// missing or whose attributes the tile changes; the others need no rebuild for the tile's sake.
const SEQUENCES_TO_UPDATE: &str = "
SELECT t.id FROM unnest($1::text[], $2::boolean[], $3::bigint[], $4::bigint[]) AS t(id, is_pano, creator, org)
LEFT JOIN sequences s ON s.id = t.id
WHERE s.id IS NULL
   OR (t.is_pano IS NOT NULL AND t.is_pano IS DISTINCT FROM s.is_pano)
   OR (t.creator IS NOT NULL AND t.creator IS DISTINCT FROM s.creator_id)
   OR (t.org IS NOT NULL AND t.org IS DISTINCT FROM s.organization_id)";

/// Rebuilds sequences from their live images: ordered by capture time then id, a new line part
/// wherever consecutive images are more than 150 m apart; parts of one image are dropped (a
/// one-point line is invalid), so a sequence of isolated images has a NULL geometry. $1: the
/// sequence ids; $2..$5: the tile's sequence attributes (arrays as in SEQUENCES_TO_UPDATE).
// `= ANY($1)` is an index scan on images_sequence_idx whatever the planner knows of the tables.
macro_rules! rebuild_sequences {
    ($ids:literal, $conflict:literal) => {
        concat!(
            "WITH ids AS (",
            $ids,
            "),
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
    SELECT * FROM unnest($2::text[], $3::boolean[], $4::bigint[], $5::bigint[]) AS t(id, is_pano, creator, org)
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
",
            $conflict
        )
    };
}

/// Phase 1: inserts the touched sequences that have no row yet. A concurrent writer's uncommitted
/// row of the same id makes the insert wait for it, then skip the id (phase 2 rebuilds it).
const INSERT_NEW_SEQUENCES: &str = rebuild_sequences!(
    "SELECT DISTINCT t.id FROM unnest($1::text[]) AS t(id)
     WHERE NOT EXISTS (SELECT 1 FROM sequences q WHERE q.id = t.id)",
    "ON CONFLICT (id) DO NOTHING RETURNING s.id"
);

/// Phase 2 takes the row locks of the other touched sequences first (in id order), so that a
/// writer that changed their images before us has committed: READ COMMITTED gives the next
/// statement a snapshot with its images, and the line we write includes them. Without the lock,
/// two tiles sharing a sequence could each write a line from its own images only.
const LOCK_SEQUENCES: &str = "SELECT id FROM sequences WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// Phase 2: rebuilds the locked sequences; a row that comes out equal is not rewritten.
const REBUILD_SEQUENCES: &str = rebuild_sequences!(
    "SELECT DISTINCT unnest($1::text[]) AS id",
    "ON CONFLICT (id) DO UPDATE SET
    geom = EXCLUDED.geom, image_count = EXCLUDED.image_count,
    first_captured_at = EXCLUDED.first_captured_at, last_captured_at = EXCLUDED.last_captured_at,
    is_pano = COALESCE(EXCLUDED.is_pano, s.is_pano),
    creator_id = COALESCE(EXCLUDED.creator_id, s.creator_id),
    organization_id = COALESCE(EXCLUDED.organization_id, s.organization_id),
    updated_at = now()
WHERE (s.image_count, s.first_captured_at, s.last_captured_at, s.is_pano, s.creator_id, s.organization_id)
      IS DISTINCT FROM (EXCLUDED.image_count, EXCLUDED.first_captured_at, EXCLUDED.last_captured_at,
                        COALESCE(EXCLUDED.is_pano, s.is_pano), COALESCE(EXCLUDED.creator_id, s.creator_id),
                        COALESCE(EXCLUDED.organization_id, s.organization_id))
   OR ST_AsEWKB(s.geom) IS DISTINCT FROM ST_AsEWKB(EXCLUDED.geom)"
);

const UPSERT_FEATURES: &str = "
INSERT INTO map_features AS f (id, object_value, object_type, first_seen_at, last_seen_at, aligned_direction,
    geom, tile_z, tile_x, tile_y, tile_hash, enriched_at)
SELECT DISTINCT ON (id) id, object_value, object_type, first_seen_at, last_seen_at, aligned_direction,
    geom, tile_z, tile_x, tile_y, tile_hash, enriched_at
FROM stage_feat ORDER BY id, enriched_at IS NOT NULL DESC
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
    deleted_at = NULL
WHERE EXCLUDED.enriched_at IS NOT NULL OR f.deleted_at IS NOT NULL OR f.missing_from_tile_at IS NOT NULL
   OR f.tile_hash IS DISTINCT FROM EXCLUDED.tile_hash OR f.object_type IS DISTINCT FROM EXCLUDED.object_type
   OR (f.tile_z, f.tile_x, f.tile_y) IS DISTINCT FROM (EXCLUDED.tile_z, EXCLUDED.tile_x, EXCLUDED.tile_y)";

/// Only ids the Graph API confirmed gone.
const TOMBSTONE_FEATURES: &str = "
UPDATE map_features SET deleted_at = now()
WHERE id = ANY($5) AND tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND object_type = $4 AND deleted_at IS NULL";

const REPLACE_LINKS: &str = "
DELETE FROM map_feature_images WHERE map_feature_id IN (SELECT id FROM stage_feat WHERE enriched_at IS NOT NULL)";
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

/// PostgreSQL's unique_violation: a direct COPY met a record that exists after all.
const UNIQUE_VIOLATION: &str = "23505";

pub(super) async fn write_tile(store: &Store, w: &TileWrite) -> Result<WriteCounts, StoreError> {
    // Encoding is pure CPU work: do it once, outside the retried transaction.
    let encoding = Instant::now();
    let staged = Staged::encode(w)?;
    store.times().add(Stage::Encode, encoding);
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

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Query { source: sqlx::Error::Database(db), .. }
        if db.code().as_deref() == Some(UNIQUE_VIOLATION))
}

async fn write_once(store: &Store, w: &TileWrite, s: &Staged) -> Result<WriteCounts, StoreError> {
    let tile = w.tile;
    let ctx = |what: &str| format!("{what} for {} tile {tile}", w.tileset);
    let (z, x, y) = tile_key(tile);
    let times = store.times();
    let reading = Instant::now();
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
        let conn: &mut PgConnection = &mut tx;
        let kind = feature_kind(w.tileset);
        // What the tile holds in the database now. Under our lease only this tile's writer gives
        // rows these coordinates, so this is exact for the rest of the transaction (rows can only
        // leave, moved by a neighbour's writer; the statements below re-check the tile).
        let live = read_live(conn, kind, (z, x, y), &ctx("reading the tile's live rows")).await?;
        times.add(Stage::Read, reading);
        let (rows, plan) = match kind {
            None => (&s.images, plan(&s.images.keys, &live)),
            Some(_) => (&s.features, plan(&s.features.keys, &live)),
        };
        counts.total = plan.distinct;
        let mut touched: HashSet<String> = HashSet::new();

        let upserting = Instant::now();
        if !plan.write.is_empty() {
            let ids: Vec<i64> = plan.write.iter().map(|&i| rows.keys[i].id).collect();
            // A tile that has no live row and lists each record once is (almost always) new to the
            // database: COPY straight into the table. A record stored under another tile or
            // tombstoned makes the COPY fail on the primary key; the savepoint then gives the
            // staging path its turn, in the same transaction.
            let mut direct = live.is_empty() && plan.unique;
            if direct {
                match copy_direct(conn, kind, rows, &plan.write, &ctx).await {
                    Ok(()) => counts.new += ids.len() as u64,
                    Err(e) if is_unique_violation(&e) => direct = false,
                    Err(e) => return Err(e),
                }
                if direct && !rows.links.is_empty() {
                    // New features with details: their image links (no old ones to replace).
                    sqlx::raw_sql(CREATE_STAGE_LINKS)
                        .execute(&mut *conn)
                        .await
                        .map_err(query_err(ctx("creating the links staging table")))?;
                    copy(conn, "COPY stage_link FROM STDIN", &rows.links, &ctx("staging feature images"))
                        .await?;
                    sqlx::query(INSERT_LINKS)
                        .execute(&mut *conn)
                        .await
                        .map_err(query_err(ctx("linking feature images")))?;
                }
            }
            if !direct {
                add(
                    &mut counts,
                    stage_and_upsert(conn, w, kind, rows, &plan.write, &ids, &mut touched, &ctx).await?,
                );
            }
            if kind.is_none() {
                touched.extend(plan.write.iter().filter_map(|&i| s.image_sequences[i].clone()));
            }
        }
        times.add(Stage::Upsert, upserting);

        let tombstoning = Instant::now();
        let gone = Gone::of(w, &rows.keys);
        let computed = w.tileset == Tileset::ComputedPublic;
        match kind {
            None => {
                if !gone.deleted.is_empty() {
                    let seqs: Vec<Option<String>> = sqlx::query_scalar(TOMBSTONE_IMAGES)
                        .bind(z)
                        .bind(x)
                        .bind(y)
                        .bind(&gone.deleted)
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(query_err(ctx("tombstoning images confirmed gone")))?;
                    counts.deleted += seqs.len() as u64;
                    touched.extend(seqs.into_iter().flatten());
                }
                if !gone.missing.is_empty() {
                    let kept: i64 = sqlx::query_scalar(MARK_MISSING_IMAGES)
                        .bind(z)
                        .bind(x)
                        .bind(y)
                        .bind(&gone.missing)
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(query_err(ctx("keeping images missing from their tile")))?;
                    counts.missing_from_tile += kept.max(0) as u64;
                }
                if !gone.moved.ids.is_empty() {
                    let m = &gone.moved;
                    let seqs: Vec<Option<String>> = sqlx::query_scalar(MOVE_AWAY_IMAGES)
                        .bind(z)
                        .bind(x)
                        .bind(y)
                        .bind(&m.ids)
                        .bind(&m.xs)
                        .bind(&m.ys)
                        .bind(&m.lons)
                        .bind(&m.lats)
                        .bind(computed)
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(query_err(ctx("moving images to their new tile")))?;
                    counts.moved_away += seqs.len() as u64;
                    touched.extend(seqs.into_iter().flatten());
                }
            }
            Some(kind) => {
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
                    let kept: i64 = sqlx::query_scalar(MARK_MISSING_FEATURES)
                        .bind(z)
                        .bind(x)
                        .bind(y)
                        .bind(kind)
                        .bind(&gone.missing)
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(query_err(ctx("keeping map features missing from their tile")))?;
                    counts.missing_from_tile += kept.max(0) as u64;
                }
                if !gone.moved.ids.is_empty() {
                    let m = &gone.moved;
                    let r = sqlx::query(MOVE_AWAY_FEATURES)
                        .bind(z)
                        .bind(x)
                        .bind(y)
                        .bind(kind)
                        .bind(&m.ids)
                        .bind(&m.xs)
                        .bind(&m.ys)
                        .bind(&m.lons)
                        .bind(&m.lats)
                        .execute(&mut *conn)
                        .await
                        .map_err(query_err(ctx("moving map features to their new tile")))?;
                    counts.moved_away += r.rows_affected();
                }
            }
        }
        times.add(Stage::Tombstone, tombstoning);

        if kind.is_none() || !w.sequences.is_empty() {
            let rebuilding = Instant::now();
            let tile_seqs = TileSequences::of(w);
            if !tile_seqs.ids.is_empty() {
                let update: Vec<String> = sqlx::query_scalar(SEQUENCES_TO_UPDATE)
                    .bind(&tile_seqs.ids)
                    .bind(&tile_seqs.is_pano)
                    .bind(&tile_seqs.creator)
                    .bind(&tile_seqs.org)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(query_err(ctx("comparing the tile's sequences")))?;
                touched.extend(update);
            }
            if !touched.is_empty() {
                rebuild_sequences(conn, touched, &tile_seqs, &ctx).await?;
            }
            times.add(Stage::Sequences, rebuilding);
        }

        if !w.detections.is_empty() {
            let upserting = Instant::now();
            sqlx::raw_sql(CREATE_STAGE_DETECTIONS)
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("creating the detections staging table")))?;
            copy(conn, "COPY stage_det FROM STDIN", &s.detections, &ctx("staging detections")).await?;
            sqlx::query(UPSERT_DETECTIONS)
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("upserting detections")))?;
            times.add(Stage::Upsert, upserting);
        }
    } else {
        times.add(Stage::Read, reading);
    }

    let committing = Instant::now();
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
    times.add(Stage::Commit, committing);
    Ok(counts)
}

/// Rebuilds the lines of the touched sequences: new ones inserted, existing ones locked and
/// recomputed (see LOCK_SEQUENCES for why).
async fn rebuild_sequences(
    conn: &mut PgConnection,
    touched: HashSet<String>,
    tile_seqs: &TileSequences,
    ctx: &(dyn Fn(&str) -> String + Sync),
) -> Result<(), StoreError> {
    // Sorted: concurrent writers of shared sequences take them in the same order.
    let mut ids: Vec<String> = touched.into_iter().collect();
    ids.sort_unstable();
    let inserted: Vec<String> = sqlx::query_scalar(INSERT_NEW_SEQUENCES)
        .bind(&ids)
        .bind(&tile_seqs.ids)
        .bind(&tile_seqs.is_pano)
        .bind(&tile_seqs.creator)
        .bind(&tile_seqs.org)
        .fetch_all(&mut *conn)
        .await
        .map_err(query_err(ctx("inserting new sequences")))?;
    if inserted.len() == ids.len() {
        return Ok(());
    }
    let inserted: HashSet<String> = inserted.into_iter().collect();
    ids.retain(|id| !inserted.contains(id));
    sqlx::query(LOCK_SEQUENCES)
        .bind(&ids)
        .execute(&mut *conn)
        .await
        .map_err(query_err(ctx("locking sequences")))?;
    sqlx::query(REBUILD_SEQUENCES)
        .bind(&ids)
        .bind(&tile_seqs.ids)
        .bind(&tile_seqs.is_pano)
        .bind(&tile_seqs.creator)
        .bind(&tile_seqs.org)
        .execute(&mut *conn)
        .await
        .map_err(query_err(ctx("rebuilding sequences")))?;
    Ok(())
}

/// Live ids of the tile (images, or the features of one kind) with their stored fingerprints.
async fn read_live(
    conn: &mut PgConnection,
    kind: Option<&'static str>,
    (z, x, y): (i16, i32, i32),
    ctx: &str,
) -> Result<HashMap<i64, Option<i64>>, StoreError> {
    let rows: Vec<(i64, Option<i64>)> = match kind {
        None => sqlx::query_as(LIVE_IMAGES).bind(z).bind(x).bind(y).fetch_all(&mut *conn).await,
        Some(kind) => {
            sqlx::query_as(LIVE_FEATURES).bind(z).bind(x).bind(y).bind(kind).fetch_all(&mut *conn).await
        }
    }
    .map_err(query_err(ctx))?;
    Ok(rows.into_iter().collect())
}

/// COPY of the planned rows straight into the table, inside a savepoint so that a primary-key
/// conflict can be rolled back alone.
async fn copy_direct(
    conn: &mut PgConnection,
    kind: Option<&'static str>,
    rows: &EncodedRows,
    write: &[usize],
    ctx: &(dyn Fn(&str) -> String + Sync),
) -> Result<(), StoreError> {
    sqlx::raw_sql("SAVEPOINT direct_copy")
        .execute(&mut *conn)
        .await
        .map_err(query_err(ctx("opening a savepoint")))?;
    let stmt = if kind.is_none() { COPY_IMAGES } else { COPY_FEATURES };
    match copy(conn, stmt, &rows.select(write), &ctx("copying new rows")).await {
        Ok(()) => {
            sqlx::raw_sql("RELEASE SAVEPOINT direct_copy")
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("releasing a savepoint")))?;
            Ok(())
        }
        Err(e) => {
            if is_unique_violation(&e) {
                tracing::debug!(error = %e, "a direct COPY met a stored record; staging instead");
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT direct_copy")
                    .execute(&mut *conn)
                    .await
                    .map_err(query_err(ctx("rolling back to a savepoint")))?;
            }
            Err(e)
        }
    }
}

/// The staging path: COPY the planned rows into a temp table, count what they change, upsert.
/// Adds the sequences the written images belonged to before to `touched`.
#[allow(clippy::too_many_arguments)]
async fn stage_and_upsert(
    conn: &mut PgConnection,
    w: &TileWrite,
    kind: Option<&'static str>,
    rows: &EncodedRows,
    write: &[usize],
    ids: &[i64],
    touched: &mut HashSet<String>,
    ctx: &(dyn Fn(&str) -> String + Sync),
) -> Result<(u64, u64, u64, u64), StoreError> {
    let (z, x, y) = tile_key(w.tile);
    let data = rows.select(write);
    if kind.is_none() {
        sqlx::raw_sql(CREATE_STAGE_IMAGES)
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("creating the staging table")))?;
        copy(conn, COPY_STAGE_IMAGES, &data, &ctx("staging images")).await?;
        let counts = fetch_counts(conn, COUNT_IMAGES, (z, x, y), &ctx("counting image changes")).await?;
        let former: Vec<String> = sqlx::query_scalar(FORMER_SEQUENCES)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(query_err(ctx("collecting touched sequences")))?;
        touched.extend(former);
        sqlx::query(UPSERT_IMAGES)
            .bind(w.tileset == Tileset::ComputedPublic)
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("upserting images")))?;
        Ok(counts)
    } else {
        sqlx::raw_sql(CREATE_STAGE_FEATURES)
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("creating the staging table")))?;
        sqlx::raw_sql(CREATE_STAGE_LINKS)
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("creating the links staging table")))?;
        copy(conn, COPY_STAGE_FEATURES, &data, &ctx("staging map features")).await?;
        copy(conn, "COPY stage_link FROM STDIN", &rows.links, &ctx("staging feature images")).await?;
        let counts = fetch_counts(conn, COUNT_FEATURES, (z, x, y), &ctx("counting feature changes")).await?;
        sqlx::query(UPSERT_FEATURES)
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
        Ok(counts)
    }
}

fn add(c: &mut WriteCounts, (new, changed, revived, _staged): (u64, u64, u64, u64)) {
    c.new += new;
    c.changed += changed;
    c.revived += revived;
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

/// What a tile write must do with its rows, given what the tile holds in the database.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    /// Indexes of the rows to write: new, changed, moved in, revived, or with details. A record
    /// listed twice is always written (the upsert keeps one row per id).
    write: Vec<usize>,
    /// Distinct ids the tile lists.
    distinct: u64,
    /// No id is listed twice.
    unique: bool,
}

/// Compares a tile's rows with its live rows in the database (what became of live rows the tile
/// no longer lists is the pipeline's finding, by id: `TileWrite::vanished`).
fn plan(keys: &[RowKey], live: &HashMap<i64, Option<i64>>) -> Plan {
    let mut seen: HashMap<i64, u32> = HashMap::with_capacity(keys.len());
    for k in keys {
        *seen.entry(k.id).or_default() += 1;
    }
    let write = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| k.has_details || seen[&k.id] > 1 || live.get(&k.id) != Some(&Some(k.tile_hash)))
        .map(|(i, _)| i)
        .collect();
    Plan { write, distinct: seen.len() as u64, unique: seen.len() == keys.len() }
}

/// The identity of one encoded row.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RowKey {
    id: i64,
    tile_hash: i64,
    has_details: bool,
}

/// COPY text rows with each row's end, so that a write can send any subset of them.
#[derive(Debug, Default)]
struct EncodedRows {
    text: CopyText,
    ends: Vec<usize>,
    keys: Vec<RowKey>,
    /// stage_link rows (feature, image) of the features with details.
    links: Vec<u8>,
}

impl EncodedRows {
    fn end_row(&mut self, key: RowKey) {
        self.text.end_row();
        self.ends.push(self.text.buf.len());
        self.keys.push(key);
    }

    /// The rows `idx` (ascending, distinct), concatenated.
    fn select(&self, idx: &[usize]) -> Cow<'_, [u8]> {
        if idx.len() == self.ends.len() {
            return Cow::Borrowed(&self.text.buf);
        }
        let mut out = Vec::new();
        for &i in idx {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            out.extend_from_slice(&self.text.buf[start..self.ends[i]]);
        }
        Cow::Owned(out)
    }
}

/// What the write does with the tile's vanished records (as the pipeline confirmed them by id),
/// leaving out any id the tile lists after all: a listed record is never tombstoned or moved.
struct Gone {
    deleted: Vec<i64>,
    missing: Vec<i64>,
    moved: MovedColumns,
}

impl Gone {
    fn of(w: &TileWrite, listed: &[RowKey]) -> Gone {
        let v = &w.vanished;
        if v.deleted.is_empty() && v.missing.is_empty() && v.moved.is_empty() {
            return Gone { deleted: Vec::new(), missing: Vec::new(), moved: MovedColumns::of(&[]) };
        }
        let listed: HashSet<i64> = listed.iter().map(|k| k.id).collect();
        let keep = |ids: &[i64]| -> Vec<i64> {
            let mut out: Vec<i64> = ids.iter().copied().filter(|id| !listed.contains(id)).collect();
            // Sorted: row locks taken in id order.
            out.sort_unstable();
            out
        };
        let moved: Vec<super::MovedAway> =
            v.moved.iter().copied().filter(|m| !listed.contains(&m.id)).collect();
        Gone { deleted: keep(&v.deleted), missing: keep(&v.missing), moved: MovedColumns::of(&moved) }
    }
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

/// The tile's sequences as array binds (one entry per id, the first listed wins).
struct TileSequences {
    ids: Vec<String>,
    is_pano: Vec<Option<bool>>,
    creator: Vec<Option<i64>>,
    org: Vec<Option<i64>>,
}

impl TileSequences {
    fn of(w: &TileWrite) -> TileSequences {
        let mut t =
            TileSequences { ids: Vec::new(), is_pano: Vec::new(), creator: Vec::new(), org: Vec::new() };
        let mut seen = HashSet::new();
        for s in &w.sequences {
            if seen.insert(s.id.as_str()) {
                t.ids.push(s.id.clone());
                t.is_pano.push(s.is_pano);
                t.creator.push(s.creator_id);
                t.org.push(s.organization_id);
            }
        }
        t
    }
}

/// COPY text-format payloads of one tile, encoded once.
struct Staged {
    images: EncodedRows,
    /// The sequence each image row names (to rebuild the lines of written images' sequences).
    image_sequences: Vec<Option<String>>,
    features: EncodedRows,
    detections: Vec<u8>,
    image_count: i32,
    feature_count: i32,
}

impl Staged {
    fn encode(w: &TileWrite) -> Result<Staged, StoreError> {
        let computed = w.tileset == Tileset::ComputedPublic;
        let (z, x, y) = tile_key(w.tile);
        let mut img =
            EncodedRows { text: CopyText::with_capacity(w.images.len() * 200), ..Default::default() };
        let mut image_sequences = Vec::with_capacity(w.images.len());
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
            let seq = d.and_then(|d| d.sequence_id.as_deref()).or(t.sequence_id.as_deref());
            let c = &mut img.text;
            c.int(Some(t.id.0));
            c.text(seq);
            c.timestamp(d.and_then(|d| d.captured_at_ms).or(t.captured_at_ms), &what)?;
            c.float(d.and_then(|d| d.compass_angle).or(t.compass_angle));
            c.bool(d.and_then(|d| d.is_pano).or(t.is_pano));
            c.int(d.and_then(|d| d.organization_id).or(t.organization_id));
            c.int(d.and_then(|d| d.creator_id).or(t.creator_id));
            c.int(Some(r.tile_hash));
            c.point(Some(geom), &what)?;
            c.now_if(d.is_some());
            c.float(d.and_then(|d| d.computed_compass_angle));
            c.text(d.and_then(|d| d.creator_username.as_deref()));
            c.text(d.and_then(|d| d.camera_type.as_deref()));
            c.text(d.and_then(|d| d.make.as_deref()));
            c.text(d.and_then(|d| d.model.as_deref()));
            c.int(d.and_then(|d| d.width).map(i64::from));
            c.int(d.and_then(|d| d.height).map(i64::from));
            c.float(d.and_then(|d| d.altitude));
            c.float(d.and_then(|d| d.computed_altitude));
            c.float(d.and_then(|d| d.quality_score));
            c.point(computed_geom, &what)?;
            c.int(Some(i64::from(z)));
            c.int(Some(i64::from(x)));
            c.int(Some(i64::from(y)));
            image_sequences.push(seq.map(str::to_string));
            img.end_row(RowKey { id: t.id.0, tile_hash: r.tile_hash, has_details: d.is_some() });
        }
        let mut feat =
            EncodedRows { text: CopyText::with_capacity(w.features.len() * 160), ..Default::default() };
        let mut links = CopyText::with_capacity(0);
        for r in &w.features {
            let t = &r.tile;
            let d = r.details.as_ref();
            let what = || format!("map feature {}", t.id);
            let c = &mut feat.text;
            c.int(Some(t.id.0));
            // The tile's kind, not the API's spelling ("trafficsign"): tombstones select on it.
            c.text(Some(t.kind.as_str()));
            c.text(d.and_then(|d| d.object_value.as_deref()).or(t.value.as_deref()));
            c.timestamp(d.and_then(|d| d.first_seen_at_ms).or(t.first_seen_at_ms), &what)?;
            c.timestamp(d.and_then(|d| d.last_seen_at_ms).or(t.last_seen_at_ms), &what)?;
            c.float(d.and_then(|d| d.aligned_direction));
            c.point(Some(d.and_then(|d| d.geometry).unwrap_or((t.lon, t.lat))), &what)?;
            c.int(Some(r.tile_hash));
            c.now_if(d.is_some());
            c.int(Some(i64::from(z)));
            c.int(Some(i64::from(x)));
            c.int(Some(i64::from(y)));
            feat.end_row(RowKey { id: t.id.0, tile_hash: r.tile_hash, has_details: d.is_some() });
            for img in d.map(|d| d.images.as_slice()).unwrap_or_default() {
                links.int(Some(t.id.0));
                links.int(Some(img.0));
                links.end_row();
            }
        }
        feat.links = links.buf;
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
            images: img,
            image_sequences,
            features: feat,
            detections: det.buf,
            image_count: to_i32(w.images.len()),
            feature_count: to_i32(w.features.len()),
        })
    }
}

/// Builder of PostgreSQL COPY text format (tab-separated, `\N` for NULL, backslash escapes).
#[derive(Debug)]
struct CopyText {
    buf: Vec<u8>,
    at_row_start: bool,
}

impl Default for CopyText {
    fn default() -> CopyText {
        CopyText::with_capacity(0)
    }
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
            // Writing into a Vec cannot fail.
            Some(n) => {
                let _ = write!(self.buf, "{n}");
            }
            None => self.null(),
        }
    }

    fn float(&mut self, v: Option<f64>) {
        self.sep();
        match v.filter(|f| f.is_finite()) {
            // `{:?}` prints the shortest representation that round-trips exactly.
            Some(f) => {
                let _ = write!(self.buf, "{f:?}");
            }
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
        // Little endian (1), type Point with the SRID flag (0x20000001), SRID 4326, x, y.
        self.hex(&[0x01, 0x01, 0x00, 0x00, 0x20, 0xE6, 0x10, 0x00, 0x00]);
        self.hex(&lon.to_le_bytes());
        self.hex(&lat.to_le_bytes());
        Ok(())
    }

    /// Milliseconds since the epoch as a `timestamptz` literal, exactly what
    /// `to_timestamp(ms / 1000.0)` gives (millisecond values are exact in microseconds).
    fn timestamp(&mut self, ms: Option<i64>, what: &dyn Fn() -> String) -> Result<(), StoreError> {
        self.sep();
        let Some(ms) = ms else {
            self.null();
            return Ok(());
        };
        use chrono::{Datelike, Timelike};
        let t = chrono::DateTime::from_timestamp_millis(ms)
            .filter(|t| (1..=9999).contains(&t.year()))
            .ok_or_else(|| StoreError::Encode {
                what: what(),
                reason: format!("time {ms} ms since 1970 is out of range"),
            })?;
        let _ = write!(
            self.buf,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}+00",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.timestamp_subsec_millis()
        );
        Ok(())
    }

    /// The transaction's start time when `yes` (`now` is timestamptz input for exactly what
    /// `now()` returns), else NULL.
    fn now_if(&mut self, yes: bool) {
        self.sep();
        if yes {
            self.buf.extend_from_slice(b"now");
        } else {
            self.null();
        }
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

    #[test]
    fn point_bytes_equal_geozero_ewkb() {
        use geozero::{CoordDimensions, ToWkb};
        let (lon, lat) = (13.000_123_4, 55.600_987_6);
        let mut c = CopyText::with_capacity(0);
        c.point(Some((lon, lat)), &|| "x".into()).unwrap();
        let g = geo_types::Geometry::Point(geo_types::Point::new(lon, lat));
        let ewkb = g.to_ewkb(CoordDimensions::xy(), Some(4326)).unwrap();
        let hex: String = ewkb.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(String::from_utf8(c.buf).unwrap(), hex);
    }

    #[test]
    fn timestamps_are_iso_utc_milliseconds() {
        let mut c = CopyText::with_capacity(0);
        c.timestamp(Some(1_600_000_000_123), &|| "x".into()).unwrap();
        c.timestamp(Some(0), &|| "x".into()).unwrap();
        c.timestamp(Some(-1), &|| "x".into()).unwrap();
        c.timestamp(None, &|| "x".into()).unwrap();
        c.now_if(true);
        c.now_if(false);
        assert_eq!(
            String::from_utf8(c.buf).unwrap(),
            "2020-09-13 12:26:40.123+00\t1970-01-01 00:00:00.000+00\t1969-12-31 23:59:59.999+00\t\\N\tnow\t\\N"
        );
        let mut c = CopyText::with_capacity(0);
        let e = c.timestamp(Some(i64::MAX), &|| "image 7".into()).unwrap_err().to_string();
        assert!(e.contains("image 7") && e.contains("out of range"), "{e}");
    }

    #[test]
    fn plan_writes_only_what_differs() {
        let k = |id, tile_hash, has_details| RowKey { id, tile_hash, has_details };
        let live: HashMap<i64, Option<i64>> = [(1, Some(10)), (2, Some(20)), (3, None), (4, Some(40))].into();
        // 1 unchanged, 2 changed, 3 stored without fingerprint, 5 new, 6 twice, 7 with details.
        let keys = [
            k(1, 10, false),
            k(2, 21, false),
            k(3, 30, false),
            k(5, 50, false),
            k(6, 60, false),
            k(6, 60, false),
            k(7, 70, true),
        ];
        let p = plan(&keys, &live);
        assert_eq!(p, Plan { write: vec![1, 2, 3, 4, 5, 6], distinct: 6, unique: false });
        let p = plan(&keys[..1], &live);
        assert_eq!(p, Plan { write: vec![], distinct: 1, unique: true });
        let p = plan(&keys[3..4], &HashMap::new());
        assert_eq!(p, Plan { write: vec![0], distinct: 1, unique: true });
    }

    #[test]
    fn encoded_rows_select_subsets() {
        let mut r = EncodedRows::default();
        for id in 1..=3 {
            r.text.int(Some(id));
            r.end_row(RowKey { id, tile_hash: 0, has_details: false });
        }
        assert_eq!(&*r.select(&[0, 1, 2]), b"1\n2\n3\n");
        assert_eq!(&*r.select(&[0, 2]), b"1\n3\n");
        assert_eq!(&*r.select(&[1]), b"2\n");
    }

    fn c_point_err() -> bool {
        let mut c = CopyText::with_capacity(0);
        c.point(Some((f64::NAN, 1.0)), &|| "image 1".into()).is_err()
    }
}
