//! The data write of a scope harvest (a page of a creator's images, a cell's map features, or
//! the deletion check of a complete pass), inside the caller's transaction that also moves the
//! scope's job state on. The records come from Graph answers, so every row is written with its
//! details; a row that would come out equal is not rewritten (an unchanged re-listing writes
//! nothing). The lines of the sequences whose images changed are rebuilt as for tiles.
//!
//! A record an area harvest already placed in a tile stays in that tile (a scope never moves
//! rows between tiles: the tile harvest owns that, see `pipeline::confirm`); a new one goes to the
//! z14 tile of its position. Its `tile_hash` stays NULL until a tile lists it.

use std::collections::HashSet;

use sqlx::{PgConnection, Row};

use super::copy::CopyText;
use super::plan::TileSequences;
use super::sql::{
    COPY_STAGE_FEATURES, COPY_STAGE_IMAGES, CREATE_STAGE_FEATURES, CREATE_STAGE_IMAGES, CREATE_STAGE_LINKS,
    INSERT_LINKS,
};
use super::sql::{image_fields_kept_when_absent, upserted_image_columns};
use super::{copy, rebuild_sequences};
use crate::model::ImageFilter;
use crate::model::{ImageDetails, MapFeatureDetails};
use crate::store::{StoreError, query_err, tile_key};
use mly_contract::FeatureKind;
use mly_contract::tiles::{HARVEST_ZOOM, TileId};

/// "A live image `i` of the scope": by creator ($2), organization ($3), capture window ($4..$5,
/// ms since the epoch; each NULL when the scope does not narrow by it). The one definition of the
/// scope's records in SQL: the feature filter here and the deletion check (`jobs::scopes`) use it.
macro_rules! live_scope_image {
    () => {
        "i.deleted_at IS NULL
  AND ($2::text IS NULL OR i.creator_username = $2)
  AND ($3::bigint IS NULL OR i.organization_id = $3)
  AND ($4::float8 IS NULL OR i.captured_at >= to_timestamp($4 / 1000.0))
  AND ($5::float8 IS NULL OR i.captured_at <= to_timestamp($5 / 1000.0))"
    };
}
pub(crate) use live_scope_image;

/// Which of the images $1 are live images of the scope.
const SCOPE_IMAGES_AMONG: &str =
    concat!("SELECT i.id FROM images i WHERE i.id = ANY($1) AND ", live_scope_image!());

/// Scope rows, upserted from `stage_img`. Fields the tile upsert keeps when a Graph answer lacks
/// them are kept here too, so a creator harvest and an area harvest store the same rows.
const UPSERT_IMAGES: &str = concat!(
    "
WITH old AS (
    SELECT i.id, i.deleted_at IS NOT NULL AS dead, i.sequence_id FROM images i
    WHERE i.id IN (SELECT id FROM stage_img)
), up AS (
    INSERT INTO images AS i (",
    upserted_image_columns!(),
    ")
    SELECT DISTINCT ON (id) ",
    upserted_image_columns!(),
    "
    FROM stage_img ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
        ",
    image_fields_kept_when_absent!(),
    ",
        computed_compass_angle = EXCLUDED.computed_compass_angle, creator_username = EXCLUDED.creator_username,
        camera_type = EXCLUDED.camera_type, make = EXCLUDED.make, model = EXCLUDED.model,
        width = EXCLUDED.width, height = EXCLUDED.height, altitude = EXCLUDED.altitude,
        computed_altitude = EXCLUDED.computed_altitude, quality_score = EXCLUDED.quality_score,
        geom = EXCLUDED.geom, computed_geom = EXCLUDED.computed_geom,
        tile_z = COALESCE(i.tile_z, EXCLUDED.tile_z), tile_x = COALESCE(i.tile_x, EXCLUDED.tile_x),
        tile_y = COALESCE(i.tile_y, EXCLUDED.tile_y),
        last_harvested_at = now(), enriched_at = EXCLUDED.enriched_at, deleted_at = NULL
    WHERE i.deleted_at IS NOT NULL
       OR (i.sequence_id, i.captured_at, i.compass_angle, i.is_pano, i.creator_id, i.organization_id)
          IS DISTINCT FROM (COALESCE(EXCLUDED.sequence_id, i.sequence_id), COALESCE(EXCLUDED.captured_at, i.captured_at),
                            COALESCE(EXCLUDED.compass_angle, i.compass_angle), COALESCE(EXCLUDED.is_pano, i.is_pano),
                            COALESCE(EXCLUDED.creator_id, i.creator_id),
                            COALESCE(EXCLUDED.organization_id, i.organization_id))
       OR (i.computed_compass_angle, i.creator_username, i.camera_type, i.make, i.model, i.width, i.height,
           i.altitude, i.computed_altitude, i.quality_score, i.enriched_at IS NULL)
          IS DISTINCT FROM (EXCLUDED.computed_compass_angle, EXCLUDED.creator_username, EXCLUDED.camera_type,
                            EXCLUDED.make, EXCLUDED.model, EXCLUDED.width, EXCLUDED.height, EXCLUDED.altitude,
                            EXCLUDED.computed_altitude, EXCLUDED.quality_score, false)
       OR ST_AsEWKB(i.geom) IS DISTINCT FROM ST_AsEWKB(EXCLUDED.geom)
       OR ST_AsEWKB(i.computed_geom) IS DISTINCT FROM ST_AsEWKB(EXCLUDED.computed_geom)
    RETURNING i.id, i.sequence_id
)
SELECT count(*) FILTER (WHERE o.id IS NULL),
       count(*) FILTER (WHERE NOT o.dead),
       count(*) FILTER (WHERE o.dead),
       COALESCE(array_agg(DISTINCT up.sequence_id) FILTER (WHERE up.sequence_id IS NOT NULL), '{}')
         || COALESCE(array_agg(DISTINCT o.sequence_id) FILTER (WHERE o.sequence_id IS NOT NULL), '{}'),
       COALESCE(array_agg(up.id ORDER BY up.id), '{}')
FROM up LEFT JOIN old o ON o.id = up.id"
);

/// Map features from Graph answers, upserted from `stage_feat` (the first-seen/last-seen times
/// and value kept when an answer lacks them, as the tile upsert does).
const UPSERT_FEATURES: &str = "
WITH old AS (
    SELECT f.id, f.deleted_at IS NOT NULL AS dead FROM map_features f WHERE f.id IN (SELECT id FROM stage_feat)
), up AS (
    INSERT INTO map_features AS f (id, object_value, object_type, first_seen_at, last_seen_at, aligned_direction,
        geom, tile_z, tile_x, tile_y, tile_hash, enriched_at)
    SELECT DISTINCT ON (id) id, object_value, object_type, first_seen_at, last_seen_at, aligned_direction,
        geom, tile_z, tile_x, tile_y, tile_hash, enriched_at
    FROM stage_feat ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
        object_value = COALESCE(EXCLUDED.object_value, f.object_value),
        first_seen_at = COALESCE(EXCLUDED.first_seen_at, f.first_seen_at),
        last_seen_at = COALESCE(EXCLUDED.last_seen_at, f.last_seen_at),
        aligned_direction = EXCLUDED.aligned_direction, geom = EXCLUDED.geom,
        last_harvested_at = now(), enriched_at = EXCLUDED.enriched_at, deleted_at = NULL
    WHERE f.deleted_at IS NOT NULL OR f.enriched_at IS NULL
       OR (f.object_value, f.first_seen_at, f.last_seen_at, f.aligned_direction)
          IS DISTINCT FROM (COALESCE(EXCLUDED.object_value, f.object_value),
                            COALESCE(EXCLUDED.first_seen_at, f.first_seen_at),
                            COALESCE(EXCLUDED.last_seen_at, f.last_seen_at), EXCLUDED.aligned_direction)
       OR ST_AsEWKB(f.geom) IS DISTINCT FROM ST_AsEWKB(EXCLUDED.geom)
    RETURNING f.id
)
SELECT count(*) FILTER (WHERE o.id IS NULL), count(*) FILTER (WHERE NOT o.dead), count(*) FILTER (WHERE o.dead)
FROM up LEFT JOIN old o ON o.id = up.id";

/// The staged features' links become exactly their `images` edges: stale links go, new ones
/// are added by `INSERT_LINKS` (links that stay are not rewritten).
const DROP_STALE_LINKS: &str = "
DELETE FROM map_feature_images m WHERE m.map_feature_id IN (SELECT id FROM stage_feat)
  AND NOT EXISTS (SELECT 1 FROM stage_link s WHERE s.feature_id = m.map_feature_id AND s.image_id = m.image_id)";

/// Only ids the Graph API confirmed gone. Returns their sequences.
const TOMBSTONE_IMAGES: &str =
    "UPDATE images SET deleted_at = now() WHERE id = ANY($1) AND deleted_at IS NULL RETURNING sequence_id";
const TOMBSTONE_FEATURES: &str =
    "UPDATE map_features SET deleted_at = now() WHERE id = ANY($1) AND deleted_at IS NULL";

/// A map feature of a scope, with the kind its `object_type` names.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeFeature {
    pub kind: FeatureKind,
    pub details: MapFeatureDetails,
}

/// What one scope write does; every image and feature must have a position.
#[derive(Debug, Clone, Default)]
pub struct ScopeRows {
    /// Images as the Graph API describes them.
    pub images: Vec<ImageDetails>,
    /// Map features as the Graph API describes them (their links become their `images` edge).
    pub features: Vec<ScopeFeature>,
    /// Images the Graph API confirmed gone: tombstoned.
    pub gone_images: Vec<i64>,
    /// Map features the Graph API confirmed gone: tombstoned.
    pub gone_features: Vec<i64>,
}

/// What a scope write changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScopeCounts {
    pub images_new: u64,
    pub images_changed: u64,
    pub images_revived: u64,
    pub images_deleted: u64,
    pub features_new: u64,
    pub features_changed: u64,
    pub features_revived: u64,
    pub features_deleted: u64,
}

/// What a scope write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeWritten {
    pub counts: ScopeCounts,
    /// The images written (new, changed or revived), sorted.
    pub images: Vec<i64>,
}

/// The position a scope image is stored at: the original GPS position, else the computed one.
pub fn image_position(d: &ImageDetails) -> Option<(f64, f64)> {
    d.geometry.or(d.computed_geometry)
}

fn tile_of(lon: f64, lat: f64) -> (i16, i32, i32) {
    tile_key(TileId::containing(HARVEST_ZOOM, lon, lat))
}

fn encode_images(images: &[ImageDetails]) -> Result<Vec<u8>, StoreError> {
    let mut c = CopyText::with_capacity(images.len() * 200);
    for d in images {
        let what = || format!("image {}", d.id);
        let Some(pos) = image_position(d) else { continue };
        let (z, x, y) = tile_of(pos.0, pos.1);
        // The columns of `COPY_IMAGES` / `stage_img`, in order.
        c.int(Some(d.id.0));
        c.text(d.sequence_id.as_deref());
        c.timestamp(d.captured_at_ms, &what)?;
        c.float(d.compass_angle);
        c.bool(d.is_pano);
        c.int(d.organization_id);
        c.int(d.creator_id);
        c.int(None);
        c.point(Some(pos), &what)?;
        c.now_if(true);
        c.float(d.computed_compass_angle);
        c.text(d.creator_username.as_deref());
        c.text(d.camera_type.as_deref());
        c.text(d.make.as_deref());
        c.text(d.model.as_deref());
        c.int(d.width.map(i64::from));
        c.int(d.height.map(i64::from));
        c.float(d.altitude);
        c.float(d.computed_altitude);
        c.float(d.quality_score);
        c.point(d.computed_geometry, &what)?;
        c.int(Some(i64::from(z)));
        c.int(Some(i64::from(x)));
        c.int(Some(i64::from(y)));
        c.end_row();
    }
    Ok(c.buf)
}

fn encode_features(features: &[ScopeFeature]) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let mut c = CopyText::with_capacity(features.len() * 160);
    let mut links = CopyText::with_capacity(features.len() * 40);
    for f in features {
        let d = &f.details;
        let what = || format!("map feature {}", d.id);
        let Some(pos) = d.geometry else { continue };
        let (z, x, y) = tile_of(pos.0, pos.1);
        // The columns of `COPY_FEATURES` / `stage_feat`, in order.
        c.int(Some(d.id.0));
        c.text(Some(f.kind.as_str()));
        c.text(d.object_value.as_deref());
        c.timestamp(d.first_seen_at_ms, &what)?;
        c.timestamp(d.last_seen_at_ms, &what)?;
        c.float(d.aligned_direction);
        c.point(Some(pos), &what)?;
        c.int(None);
        c.now_if(true);
        c.int(Some(i64::from(z)));
        c.int(Some(i64::from(x)));
        c.int(Some(i64::from(y)));
        c.end_row();
        for img in &d.images {
            links.int(Some(d.id.0));
            links.int(Some(img.0));
            links.end_row();
        }
    }
    Ok((c.buf, links.buf))
}

fn counts_of(r: &sqlx::postgres::PgRow, ctx: &str) -> Result<(u64, u64, u64), StoreError> {
    let get = |i: usize| -> Result<u64, StoreError> {
        let v: i64 = r.try_get(i).map_err(query_err(ctx))?;
        Ok(v.max(0) as u64)
    };
    Ok((get(0)?, get(1)?, get(2)?))
}

/// Writes `rows` in the caller's transaction: images and features upserted (only rows that
/// differ), links set to the features' edges, confirmed-gone records tombstoned, and the lines of
/// the sequences whose images changed rebuilt. One call per transaction (it stages in temp tables
/// dropped at commit).
pub async fn write_scope_rows(conn: &mut PgConnection, rows: &ScopeRows) -> Result<ScopeWritten, StoreError> {
    let mut counts = ScopeCounts::default();
    let mut written = Vec::new();
    let mut touched: HashSet<String> = HashSet::new();
    let ctx = |what: &str| format!("{what} for a scope harvest");
    if !rows.images.is_empty() {
        let data = encode_images(&rows.images)?;
        sqlx::raw_sql(CREATE_STAGE_IMAGES)
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("creating the staging table")))?;
        copy(conn, COPY_STAGE_IMAGES, &data, &ctx("staging images")).await?;
        let r = sqlx::query(UPSERT_IMAGES)
            .fetch_one(&mut *conn)
            .await
            .map_err(query_err(ctx("upserting images")))?;
        (counts.images_new, counts.images_changed, counts.images_revived) =
            counts_of(&r, "counting image changes")?;
        let seqs: Vec<String> = r.try_get(3).map_err(query_err(ctx("reading touched sequences")))?;
        touched.extend(seqs);
        written = r.try_get(4).map_err(query_err(ctx("reading written images")))?;
    }
    if !rows.features.is_empty() {
        let (data, links) = encode_features(&rows.features)?;
        for stmt in [CREATE_STAGE_FEATURES, CREATE_STAGE_LINKS] {
            sqlx::raw_sql(stmt)
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("creating a staging table")))?;
        }
        copy(conn, COPY_STAGE_FEATURES, &data, &ctx("staging map features")).await?;
        copy(conn, "COPY stage_link FROM STDIN", &links, &ctx("staging feature images")).await?;
        let r = sqlx::query(UPSERT_FEATURES)
            .fetch_one(&mut *conn)
            .await
            .map_err(query_err(ctx("upserting map features")))?;
        (counts.features_new, counts.features_changed, counts.features_revived) =
            counts_of(&r, "counting feature changes")?;
        for stmt in [DROP_STALE_LINKS, INSERT_LINKS] {
            sqlx::query(stmt).execute(&mut *conn).await.map_err(query_err(ctx("linking feature images")))?;
        }
    }
    if !rows.gone_images.is_empty() {
        let seqs: Vec<Option<String>> = sqlx::query_scalar(TOMBSTONE_IMAGES)
            .bind(sorted(&rows.gone_images))
            .fetch_all(&mut *conn)
            .await
            .map_err(query_err(ctx("tombstoning images confirmed gone")))?;
        counts.images_deleted = seqs.len() as u64;
        touched.extend(seqs.into_iter().flatten());
    }
    if !rows.gone_features.is_empty() {
        let r = sqlx::query(TOMBSTONE_FEATURES)
            .bind(sorted(&rows.gone_features))
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("tombstoning map features confirmed gone")))?;
        counts.features_deleted = r.rows_affected();
    }
    if !touched.is_empty() {
        // The lines come from the stored images alone (no tile's sequence attributes).
        let none =
            TileSequences { ids: Vec::new(), is_pano: Vec::new(), creator: Vec::new(), org: Vec::new() };
        rebuild_sequences(conn, touched, &none, &ctx).await?;
    }
    Ok(ScopeWritten { counts, images: written })
}

/// Which of `ids` are live images of the scope `f` (the features seen in them are the scope's).
pub async fn scope_images_among(
    conn: &mut PgConnection,
    ids: &[i64],
    f: &ImageFilter,
) -> Result<HashSet<i64>, StoreError> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let found: Vec<i64> = sqlx::query_scalar(SCOPE_IMAGES_AMONG)
        .bind(ids)
        .bind(f.creator_username.as_deref())
        .bind(f.organization_id)
        .bind(f.start_ms.map(|m| m as f64))
        .bind(f.end_ms.map(|m| m as f64))
        .fetch_all(&mut *conn)
        .await
        .map_err(query_err("finding the scope's images among the features' images"))?;
    Ok(found.into_iter().collect())
}

/// Sorted ids: row locks taken in id order.
fn sorted(ids: &[i64]) -> Vec<i64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}
