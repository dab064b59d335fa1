//! What the diff reads before a tile is written: the tile's ETag and live records, records of
//! the tile that live elsewhere, and images still lacking detections; plus the statistics
//! refresh and the detection links that follow a load.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Known, Store, StoreError, TileSnapshot, feature_kind, query_err, tile_key};
use mly_contract::Tileset;
use mly_contract::tiles::TileId;

const TILE_ETAG: &str = "SELECT etag FROM tile_state WHERE tileset = $1 AND z = $2 AND x = $3 AND y = $4";

impl Store {
    /// The ETag of the tile's last fetch, for a conditional request (what [`Store::tile_snapshot`]
    /// reads, without the live records a run without enrichment has no use for).
    pub async fn tile_etag(&self, tileset: Tileset, tile: TileId) -> Result<Option<String>, StoreError> {
        let (z, x, y) = tile_key(tile);
        let etag: Option<Option<String>> = sqlx::query_scalar(TILE_ETAG)
            .bind(tileset.name())
            .bind(z)
            .bind(x)
            .bind(y)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err(format!("reading the ETag of {tileset} tile {tile}")))?;
        Ok(etag.flatten())
    }

    /// What the database holds for one tile: live ids with their tile_hash and enriched_at, for diffing.
    pub async fn tile_snapshot(&self, tileset: Tileset, tile: TileId) -> Result<TileSnapshot, StoreError> {
        let ctx = || format!("reading the snapshot of {tileset} tile {tile}");
        let (z, x, y) = tile_key(tile);
        let etag: Option<String> = sqlx::query_scalar(TILE_ETAG)
            .bind(tileset.name())
            .bind(z)
            .bind(x)
            .bind(y)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err(ctx()))?
            .flatten();
        let rows = match feature_kind(tileset) {
            None => {
                sqlx::query(
                    "SELECT id, tile_hash, enriched_at FROM images \
                     WHERE tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND deleted_at IS NULL",
                )
                .bind(z)
                .bind(x)
                .bind(y)
                .fetch_all(&self.pool)
                .await
            }
            Some(kind) => {
                sqlx::query(
                    "SELECT id, tile_hash, enriched_at FROM map_features \
                     WHERE tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND object_type = $4 AND deleted_at IS NULL",
                )
                .bind(z)
                .bind(x)
                .bind(y)
                .bind(kind)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(query_err(ctx()))?;
        let mut live = HashMap::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.try_get(0).map_err(query_err(ctx()))?;
            let tile_hash: Option<i64> = r.try_get(1).map_err(query_err(ctx()))?;
            let enriched_at: Option<DateTime<Utc>> = r.try_get(2).map_err(query_err(ctx()))?;
            live.insert(id, Known { tile_hash: tile_hash.unwrap_or(0), enriched_at, deleted: false });
        }
        Ok(TileSnapshot { etag, live })
    }

    /// Live images last seen in `tile` whose detections were never fetched (detections switched
    /// on after they were harvested).
    pub async fn images_lacking_detections(&self, tile: TileId) -> Result<HashSet<i64>, StoreError> {
        let (z, x, y) = tile_key(tile);
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM images WHERE tile_z = $1 AND tile_x = $2 AND tile_y = $3 \
             AND deleted_at IS NULL AND detections_at IS NULL",
        )
        .bind(z)
        .bind(x)
        .bind(y)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err(format!("looking for images of tile {tile} without detections")))?;
        Ok(ids.into_iter().collect())
    }

    /// Records that these images' detections were fetched (after their tile was written). Not in
    /// the tile's transaction on purpose: losing this mark only fetches them again, and the
    /// detection upsert is idempotent.
    pub async fn mark_detections_fetched(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("UPDATE images SET detections_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(query_err("recording fetched detections"))?;
        Ok(())
    }

    /// tile_hash/enriched_at/deleted_at for image ids wherever they are (records that moved in from another tile).
    pub async fn known_images(&self, ids: &[i64]) -> Result<HashMap<i64, Known>, StoreError> {
        self.known(
            "SELECT id, tile_hash, enriched_at, deleted_at IS NOT NULL FROM images WHERE id = ANY($1)",
            ids,
            "looking up known images",
        )
        .await
    }

    /// tile_hash/enriched_at/deleted_at for feature ids wherever they are.
    pub async fn known_features(&self, ids: &[i64]) -> Result<HashMap<i64, Known>, StoreError> {
        self.known(
            "SELECT id, tile_hash, enriched_at, deleted_at IS NOT NULL FROM map_features WHERE id = ANY($1)",
            ids,
            "looking up known map features",
        )
        .await
    }

    async fn known(
        &self,
        sql: &'static str,
        ids: &[i64],
        ctx: &str,
    ) -> Result<HashMap<i64, Known>, StoreError> {
        let mut out = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(out);
        }
        let rows = sqlx::query(sql).bind(ids).fetch_all(&self.pool).await.map_err(query_err(ctx))?;
        for r in rows {
            let id: i64 = r.try_get(0).map_err(query_err(ctx))?;
            let tile_hash: Option<i64> = r.try_get(1).map_err(query_err(ctx))?;
            let enriched_at: Option<DateTime<Utc>> = r.try_get(2).map_err(query_err(ctx))?;
            let deleted: bool = r.try_get(3).map_err(query_err(ctx))?;
            out.insert(id, Known { tile_hash: tile_hash.unwrap_or(0), enriched_at, deleted });
        }
        Ok(out)
    }

    /// Refreshes the planner statistics of the data tables. A bulk load outgrows them long before
    /// autovacuum notices, and plans made for a near-empty `images` (e.g. reading every live row to
    /// rebuild a few sequences) then cost seconds per tile.
    pub async fn analyze(&self) -> Result<(), StoreError> {
        sqlx::raw_sql("ANALYZE images; ANALYZE map_features; ANALYZE sequences")
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query { context: "analyzing the data tables".into(), source })?;
        Ok(())
    }

    /// Links detections to the map feature seen in the same image with the same value (the API
    /// documents no feature field on detections; the feature's `images` edge gives the pairing).
    /// Set-based, idempotent, and run once per sync after all tiles are written.
    pub async fn link_detections(&self) -> Result<u64, StoreError> {
        const LINK: &str = "
UPDATE detections d SET map_feature_id = m.feature
FROM (SELECT d2.id, min(f.id) AS feature
      FROM detections d2
      JOIN map_feature_images l ON l.image_id = d2.image_id
      JOIN map_features f ON f.id = l.map_feature_id AND f.object_value = d2.value
      WHERE d2.map_feature_id IS NULL
      GROUP BY d2.id) m
WHERE d.id = m.id";
        let r = sqlx::query(LINK).execute(&self.pool).await.map_err(|source| StoreError::Query {
            context: "linking detections to map features".into(),
            source,
        })?;
        Ok(r.rows_affected())
    }
}
