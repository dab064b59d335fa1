//! What planning reads of the region's tiles: when each was last fetched (or found empty by a
//! Graph probe), which sequences the database holds in each, and the probes it records.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::{Store, StoreError, query_err, tile_key};
use mly_contract::Tileset;
use mly_contract::tiles::TileId;

/// The tile states of z14 tiles given as (x, y) arrays.
const TILE_STATES: &str = "SELECT s.x, s.y, s.last_fetched_at, s.probed_at, s.record_count FROM tile_state s \
     JOIN unnest($3::int[], $4::int[]) AS t(x, y) ON s.x = t.x AND s.y = t.y \
     WHERE s.tileset = $1 AND s.z = $2";
/// A probe found the tile empty: remembered, unless the tile has been fetched (then its fetch
/// state stays what it is).
const RECORD_PROBES: &str = "INSERT INTO tile_state AS s (tileset, z, x, y, probed_at, record_count) \
     SELECT $1, $2, x, y, now(), 0 FROM unnest($3::int[], $4::int[]) AS t(x, y) \
     ON CONFLICT (tileset, z, x, y) DO UPDATE SET probed_at = now() WHERE s.last_fetched_at IS NULL";
/// Live images' (sequence, z14 tile) pairs in a block of z14 tiles.
const SEQUENCE_TILES: &str = "SELECT DISTINCT sequence_id, tile_x, tile_y FROM images \
     WHERE tile_z = $1 AND tile_x BETWEEN $2 AND $3 AND tile_y BETWEEN $4 AND $5 \
     AND deleted_at IS NULL AND sequence_id IS NOT NULL";

/// The z14 tiles (of those given as (x, y) arrays) with live images whose detections were never
/// fetched.
const LACKING_DETECTIONS: &str = "SELECT DISTINCT i.tile_x, i.tile_y FROM images i \
     JOIN unnest($2::int[], $3::int[]) AS t(x, y) ON i.tile_x = t.x AND i.tile_y = t.y \
     WHERE i.tile_z = $1 AND i.deleted_at IS NULL AND i.detections_at IS NULL";

/// A row of [`TILE_STATES`]: x, y, last fetched, probed, record count.
type TileStateRow = (i32, i32, Option<DateTime<Utc>>, Option<DateTime<Utc>>, i32);

/// What the database knows of one tile of a tileset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnownTile {
    /// When it was last fetched (None: only probed).
    pub last_fetched_at: Option<DateTime<Utc>>,
    /// When a Graph probe last found it empty.
    pub probed_at: Option<DateTime<Utc>>,
    /// Records it held at its last change.
    pub record_count: i32,
}

impl Store {
    /// The states of `tiles` (all at one zoom) of `tileset` that the database has.
    pub async fn known_tiles(
        &self,
        tileset: Tileset,
        tiles: &[TileId],
    ) -> Result<HashMap<TileId, KnownTile>, StoreError> {
        let mut out = HashMap::new();
        let Some(z) = tiles.first().map(|t| t.z) else { return Ok(out) };
        let (xs, ys): (Vec<i32>, Vec<i32>) = tiles.iter().map(|t| (tile_key(*t).1, tile_key(*t).2)).unzip();
        let rows: Vec<TileStateRow> = sqlx::query_as(TILE_STATES)
            .bind(tileset.name())
            .bind(i16::from(z))
            .bind(&xs)
            .bind(&ys)
            .fetch_all(self.pool())
            .await
            .map_err(query_err(format!("reading the states of {} {tileset} tiles", tiles.len())))?;
        for (x, y, last_fetched_at, probed_at, record_count) in rows {
            // Coordinates come from the same tiles passed in, so they are valid.
            if let (Ok(x), Ok(y)) = (u32::try_from(x), u32::try_from(y))
                && let Ok(t) = TileId::new(z, x, y)
            {
                out.insert(t, KnownTile { last_fetched_at, probed_at, record_count });
            }
        }
        Ok(out)
    }

    /// Those of `tiles` (one zoom) holding live images whose detections were never fetched
    /// (detections switched on after they were harvested).
    pub async fn tiles_lacking_detections(&self, tiles: &[TileId]) -> Result<HashSet<TileId>, StoreError> {
        let mut out = HashSet::new();
        let Some(z) = tiles.first().map(|t| t.z) else { return Ok(out) };
        let (xs, ys): (Vec<i32>, Vec<i32>) = tiles.iter().map(|t| (tile_key(*t).1, tile_key(*t).2)).unzip();
        let rows: Vec<(i32, i32)> = sqlx::query_as(LACKING_DETECTIONS)
            .bind(i16::from(z))
            .bind(&xs)
            .bind(&ys)
            .fetch_all(self.pool())
            .await
            .map_err(query_err("looking for tiles whose images lack detections"))?;
        for (x, y) in rows {
            if let (Ok(x), Ok(y)) = (u32::try_from(x), u32::try_from(y))
                && let Ok(t) = TileId::new(z, x, y)
            {
                out.insert(t);
            }
        }
        Ok(out)
    }

    /// Remembers that Graph probes found `empty` tiles of `tileset` without any image.
    pub async fn record_probes(&self, tileset: Tileset, empty: &[TileId]) -> Result<(), StoreError> {
        let Some(z) = empty.first().map(|t| t.z) else { return Ok(()) };
        let (xs, ys): (Vec<i32>, Vec<i32>) = empty.iter().map(|t| (tile_key(*t).1, tile_key(*t).2)).unzip();
        sqlx::query(RECORD_PROBES)
            .bind(tileset.name())
            .bind(i16::from(z))
            .bind(&xs)
            .bind(&ys)
            .execute(self.pool())
            .await
            .map_err(query_err("recording empty tiles"))?;
        Ok(())
    }

    /// The z14 tiles (at `z`) in which the database holds live images of each sequence, within
    /// the block of tiles under `parent` (a lower-zoom tile).
    pub async fn sequence_tiles(
        &self,
        parent: TileId,
        z: u8,
    ) -> Result<HashMap<String, HashSet<TileId>>, StoreError> {
        let mut out: HashMap<String, HashSet<TileId>> = HashMap::new();
        if z < parent.z {
            return Ok(out);
        }
        // The block under `parent`: 2^(z - parent.z) tiles on each side (x, y < 2^30 for any
        // valid tile, so the shifts and i32 casts cannot overflow).
        let side = 1u32 << (z - parent.z);
        let (x0, y0) = (parent.x * side, parent.y * side);
        let (x1, y1) = (x0 + side - 1, y0 + side - 1);
        let rows: Vec<(String, i32, i32)> = sqlx::query_as(SEQUENCE_TILES)
            .bind(i16::from(z))
            .bind(x0 as i32)
            .bind(x1 as i32)
            .bind(y0 as i32)
            .bind(y1 as i32)
            .fetch_all(self.pool())
            .await
            .map_err(query_err(format!("reading the sequences under tile {parent}")))?;
        for (seq, x, y) in rows {
            if let (Ok(x), Ok(y)) = (u32::try_from(x), u32::try_from(y))
                && let Ok(t) = TileId::new(z, x, y)
            {
                out.entry(seq).or_default().insert(t);
            }
        }
        Ok(out)
    }
}
