//! What a harvest is asked to do and how hard it may use the API, in the core's own terms. The
//! binary validates its configuration and maps it onto these; nothing here reads a file.

use std::time::Duration;

use mly_contract::Tileset;

pub use crate::api::ApiSettings;

/// What to harvest (`[harvest]`).
#[derive(Debug, Clone)]
pub struct Harvest {
    /// The tilesets fetched for every z14 tile.
    pub tilesets: Vec<Tileset>,
    /// Enrich new and changed records through the Graph API.
    pub enrich: bool,
    /// Also fetch the detections of new images.
    pub detections: bool,
    /// How long a worker holds a tile before another may take it.
    pub lease: Duration,
    /// A tile that held live records and reads empty is read again this much later in the run.
    pub recheck: Duration,
    /// After the tile server blocked this IP, no tile request for this long.
    pub block_pause: Duration,
}

/// The API quotas to stay under, and parallelism (`[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Tile requests per UTC day, shared by every process and schema on the token's app.
    pub tiles_per_day: u32,
    /// Tile requests per minute, paced evenly across every process on the token's app.
    pub tiles_per_minute: u32,
    /// Graph searches per minute.
    pub search_per_minute: u32,
    /// Graph entity calls per minute.
    pub entity_per_minute: u32,
    /// Tiles processed at once.
    pub concurrency: u32,
}

/// Everything `sync` needs besides the region and the store.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub api: ApiSettings,
    pub harvest: Harvest,
    pub limits: Limits,
}
