//! The statements of a tile write, in the order the write runs them.

/// The images columns a tile write gives, in the order of the COPY rows ([`Staged::encode`]); the
/// staging table has the same columns, so one encoding serves both the direct COPY and the staging.
pub(super) const COPY_IMAGES: &str = "COPY images (id, sequence_id, captured_at, compass_angle, is_pano, organization_id,
    creator_id, tile_hash, geom, enriched_at, computed_compass_angle, creator_username, camera_type, make, model,
    width, height, altitude, computed_altitude, quality_score, computed_geom, tile_z, tile_x, tile_y) FROM STDIN";
pub(super) const CREATE_STAGE_IMAGES: &str = "
CREATE TEMP TABLE stage_img (
    id bigint, sequence_id text, captured_at timestamptz, compass_angle double precision, is_pano boolean,
    organization_id bigint, creator_id bigint, tile_hash bigint, geom geometry(Point,4326), enriched_at timestamptz,
    computed_compass_angle double precision, creator_username text, camera_type text, make text, model text,
    width integer, height integer, altitude double precision, computed_altitude double precision,
    quality_score double precision, computed_geom geometry(Point,4326), tile_z smallint, tile_x integer,
    tile_y integer
) ON COMMIT DROP";
pub(super) const COPY_STAGE_IMAGES: &str = "COPY stage_img FROM STDIN";

/// The map_features columns of a tile write, in the order of the COPY rows.
pub(super) const COPY_FEATURES: &str =
    "COPY map_features (id, object_type, object_value, first_seen_at, last_seen_at,
    aligned_direction, geom, tile_hash, enriched_at, tile_z, tile_x, tile_y) FROM STDIN";
pub(super) const CREATE_STAGE_FEATURES: &str = "
CREATE TEMP TABLE stage_feat (
    id bigint, object_type text, object_value text, first_seen_at timestamptz, last_seen_at timestamptz,
    aligned_direction double precision, geom geometry(Point,4326), tile_hash bigint, enriched_at timestamptz,
    tile_z smallint, tile_x integer, tile_y integer
) ON COMMIT DROP";
pub(super) const CREATE_STAGE_LINKS: &str =
    "CREATE TEMP TABLE stage_link (feature_id bigint, image_id bigint) ON COMMIT DROP";
pub(super) const COPY_STAGE_FEATURES: &str = "COPY stage_feat FROM STDIN";

pub(super) const CREATE_STAGE_DETECTIONS: &str = "
CREATE TEMP TABLE stage_det (
    id bigint, image_id bigint, feature_id bigint, value text, created_ms bigint, wkb bytea, b64 text
) ON COMMIT DROP";

/// The tile's live images as the database holds them: what a re-read is compared with. A record
/// stamped missing from its tile has no fingerprint here, so that a read listing it again clears
/// the stamp.
pub(super) const LIVE_IMAGES: &str = "
SELECT id, CASE WHEN missing_from_tile_at IS NULL THEN tile_hash END FROM images
WHERE tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND deleted_at IS NULL";
pub(super) const LIVE_FEATURES: &str = "
SELECT id, CASE WHEN missing_from_tile_at IS NULL THEN tile_hash END FROM map_features
WHERE tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND object_type = $4 AND deleted_at IS NULL";

// Staged rows only: the ones that differ from the tile's live rows (new, changed, moved in,
// revived, or with fresh details).
pub(super) const COUNT_IMAGES: &str = "
SELECT count(*) FILTER (WHERE i.id IS NULL),
       count(*) FILTER (WHERE i.id IS NOT NULL AND i.deleted_at IS NULL
                        AND (i.tile_hash IS DISTINCT FROM s.tile_hash OR s.enriched_at IS NOT NULL
                             OR i.tile_z IS DISTINCT FROM $1 OR i.tile_x IS DISTINCT FROM $2
                             OR i.tile_y IS DISTINCT FROM $3)),
       count(*) FILTER (WHERE i.deleted_at IS NOT NULL),
       count(*)
FROM (SELECT DISTINCT ON (id) id, tile_hash, enriched_at FROM stage_img ORDER BY id, enriched_at IS NOT NULL DESC) s
LEFT JOIN images i ON i.id = s.id";

pub(super) const COUNT_FEATURES: &str = "
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
pub(super) const FORMER_SEQUENCES: &str = "
SELECT DISTINCT sequence_id FROM images WHERE id = ANY($1) AND sequence_id IS NOT NULL";

// $1: the tileset is computed (its tile positions are SfM positions, not the original GPS ones).
// enriched_at of the proposed row is non-NULL exactly when details were given ('now' in the COPY
// text), so ON CONFLICT uses it as the has-details flag. The WHERE keeps a row that would come out
// equal from being rewritten (a concurrent writer may have written it since the tile was read).
/// The images columns an upsert from `stage_img` writes, in the order of its INSERT and SELECT.
macro_rules! upserted_image_columns {
    () => {
        "id, sequence_id, captured_at, compass_angle, computed_compass_angle, is_pano,
    creator_id, creator_username, organization_id, camera_type, make, model, width, height, altitude,
    computed_altitude, quality_score, geom, computed_geom, tile_z, tile_x, tile_y, tile_hash, enriched_at"
    };
}
pub(super) use upserted_image_columns;

/// The fields a tile gives too: an upsert whose row lacks one keeps the stored value (a tile's
/// or an answer's gap never erases what another read gave).
macro_rules! image_fields_kept_when_absent {
    () => {
        "sequence_id = COALESCE(EXCLUDED.sequence_id, i.sequence_id),
    captured_at = COALESCE(EXCLUDED.captured_at, i.captured_at),
    compass_angle = COALESCE(EXCLUDED.compass_angle, i.compass_angle),
    is_pano = COALESCE(EXCLUDED.is_pano, i.is_pano),
    creator_id = COALESCE(EXCLUDED.creator_id, i.creator_id),
    organization_id = COALESCE(EXCLUDED.organization_id, i.organization_id)"
    };
}
pub(super) use image_fields_kept_when_absent;

pub(super) const UPSERT_IMAGES: &str = concat!(
    "
INSERT INTO images AS i (",
    upserted_image_columns!(),
    ")
SELECT DISTINCT ON (id) ",
    upserted_image_columns!(),
    "
FROM stage_img ORDER BY id, enriched_at IS NOT NULL DESC
ON CONFLICT (id) DO UPDATE SET
    ",
    image_fields_kept_when_absent!(),
    ",
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
   OR (i.tile_z, i.tile_x, i.tile_y) IS DISTINCT FROM (EXCLUDED.tile_z, EXCLUDED.tile_x, EXCLUDED.tile_y)"
);

// Vanished records ($4 for images, $5 for features; never ids the tile lists, see `Gone`), only
// while they are still this tile's and live: a concurrent writer may have moved one to its own
// tile since the snapshot.

/// Only ids the Graph API confirmed gone. Returns their sequences.
pub(super) const TOMBSTONE_IMAGES: &str = "
UPDATE images SET deleted_at = now()
WHERE id = ANY($4) AND tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND deleted_at IS NULL
RETURNING sequence_id";

/// Confirmed-present records missing from their tile are kept; the stamp says since when (set
/// once: a record missing night after night is not rewritten). Returns how many are kept.
pub(super) const MARK_MISSING_IMAGES: &str = "
WITH kept AS (
    SELECT id, missing_from_tile_at FROM images
    WHERE id = ANY($4) AND tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND deleted_at IS NULL
), stamped AS (
    UPDATE images i SET missing_from_tile_at = now()
    FROM kept WHERE i.id = kept.id AND kept.missing_from_tile_at IS NULL
)
SELECT count(*) FROM kept";
pub(super) const MARK_MISSING_FEATURES: &str = "
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
pub(super) const MOVE_AWAY_IMAGES: &str = "
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
pub(super) const MOVE_AWAY_FEATURES: &str = "
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
pub(super) const SEQUENCES_TO_UPDATE: &str = "
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
pub(super) const INSERT_NEW_SEQUENCES: &str = rebuild_sequences!(
    "SELECT DISTINCT t.id FROM unnest($1::text[]) AS t(id)
     WHERE NOT EXISTS (SELECT 1 FROM sequences q WHERE q.id = t.id)",
    "ON CONFLICT (id) DO NOTHING RETURNING s.id"
);

/// Phase 2 takes the row locks of the other touched sequences first (in id order), so that a
/// writer that changed their images before us has committed: READ COMMITTED gives the next
/// statement a snapshot with its images, and the line we write includes them. Without the lock,
/// two tiles sharing a sequence could each write a line from its own images only.
pub(super) const LOCK_SEQUENCES: &str = "SELECT id FROM sequences WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// Phase 2: rebuilds the locked sequences; a row that comes out equal is not rewritten.
pub(super) const REBUILD_SEQUENCES: &str = rebuild_sequences!(
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

pub(super) const UPSERT_FEATURES: &str = "
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
pub(super) const TOMBSTONE_FEATURES: &str = "
UPDATE map_features SET deleted_at = now()
WHERE id = ANY($5) AND tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND object_type = $4 AND deleted_at IS NULL";

pub(super) const REPLACE_LINKS: &str = "
DELETE FROM map_feature_images WHERE map_feature_id IN (SELECT id FROM stage_feat WHERE enriched_at IS NOT NULL)";
pub(super) const INSERT_LINKS: &str = "
INSERT INTO map_feature_images (map_feature_id, image_id)
SELECT DISTINCT feature_id, image_id FROM stage_link ORDER BY 1, 2 ON CONFLICT DO NOTHING";

pub(super) const UPSERT_DETECTIONS: &str = "
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

pub(super) const UPSERT_TILE_STATE: &str = "
INSERT INTO tile_state AS t (tileset, z, x, y, etag, last_fetched_at, last_changed_at, record_count)
VALUES ($1, $2, $3, $4, $5, now(), CASE WHEN $6 THEN now() END, $7)
ON CONFLICT (tileset, z, x, y) DO UPDATE SET
    etag = CASE WHEN $8 THEN COALESCE(EXCLUDED.etag, t.etag) ELSE EXCLUDED.etag END,
    last_fetched_at = now(),
    last_changed_at = COALESCE(EXCLUDED.last_changed_at, t.last_changed_at),
    record_count = CASE WHEN $8 THEN t.record_count ELSE EXCLUDED.record_count END";
