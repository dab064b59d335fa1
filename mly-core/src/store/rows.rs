//! The rows a tile write takes and what it reports back.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::model::{Detection, ImageDetails, MapFeatureDetails, TileFeature, TileImage, TileSequence};
use mly_contract::Tileset;
use mly_contract::tiles::TileId;

/// What the database knows about one record, for diffing a tile against it.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub tile_hash: i64,
    pub enriched_at: Option<DateTime<Utc>>,
    pub deleted: bool,
}

/// What the database holds for one tile.
#[derive(Debug, Clone, Default)]
pub struct TileSnapshot {
    /// ETag of the last fetch, for a conditional request.
    pub etag: Option<String>,
    /// Live records last seen in this tile, by id.
    pub live: HashMap<i64, Known>,
}

/// One tile's result, written by [`Store::write_tile`].
#[derive(Debug, Clone)]
pub struct TileWrite {
    pub tileset: Tileset,
    pub tile: TileId,
    pub etag: Option<String>,
    /// true when the server said 304 / the tile is unchanged: only touch bookkeeping, no rows.
    pub unchanged: bool,
    /// Every image the coverage tile holds now (coverage tilesets).
    pub images: Vec<ImageRow>,
    /// Sequences from the tile (attributes); their geometry is rebuilt from images.
    pub sequences: Vec<TileSequence>,
    /// Every feature the feature tile holds now (feature tilesets).
    pub features: Vec<FeatureRow>,
    pub detections: Vec<DetectionRow>,
    /// Live records of this tile (of this tileset's kind) that the tile no longer lists, as the
    /// Graph API judged them. Nothing else is ever tombstoned.
    pub vanished: Vanished,
}

/// What became of a tile's vanished records, confirmed by id through the Graph API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vanished {
    /// Gone upstream (a lookup answered not found, code 100/33): tombstoned.
    pub deleted: Vec<i64>,
    /// Still there, and placed in this tile: kept, stamped `missing_from_tile_at`.
    pub missing: Vec<i64>,
    /// Still there, but now placed in another tile: kept, moved to that tile.
    pub moved: Vec<MovedAway>,
}

/// A record that left the tile, with the position the Graph API gives it now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MovedAway {
    pub id: i64,
    pub tile: TileId,
    pub lon: f64,
    pub lat: f64,
}

/// An image to write; `details: None` keeps the existing enriched columns.
#[derive(Debug, Clone)]
pub struct ImageRow {
    pub tile: TileImage,
    pub tile_hash: i64,
    pub details: Option<ImageDetails>,
}

/// A map feature to write; `details: None` keeps the existing enriched columns and image links.
#[derive(Debug, Clone)]
pub struct FeatureRow {
    pub tile: TileFeature,
    pub tile_hash: i64,
    pub details: Option<MapFeatureDetails>,
}

/// A detection to write, with its outline decoded to WKB in image pixel space (SRID 0).
#[derive(Debug, Clone)]
pub struct DetectionRow {
    pub det: Detection,
    pub pixel_geom_wkb: Option<Vec<u8>>,
}

/// What one [`Store::write_tile`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Ids not in the database before.
    pub new: u64,
    /// Live ids whose tile_hash changed or that came with fresh details.
    pub changed: u64,
    /// Live ids of this tile confirmed gone upstream (tombstoned).
    pub deleted: u64,
    /// Live ids of this tile missing from it but present upstream (kept).
    pub missing_from_tile: u64,
    /// Live ids of this tile that the Graph API places in another tile now (moved there).
    pub moved_away: u64,
    /// Ids that were tombstoned and are back.
    pub revived: u64,
    /// Records written.
    pub total: u64,
}
