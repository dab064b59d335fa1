//! The API families, their documented caps, and the fields the harvester asks for.

use std::fmt;

/// The API families: each has its own rate limit on the service and its own pacing here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Vector tiles (`tiles.mapillary.com`).
    Tiles,
    /// Graph API searches (`/images?bbox=`, `/map_features?bbox=`, paged searches).
    Search,
    /// Graph API entity calls (`/{id}`, `?ids=`, edges such as `/{id}/detections`).
    Entity,
}

impl Family {
    /// Every family, in a stable order.
    pub const ALL: [Family; 3] = [Family::Tiles, Family::Search, Family::Entity];

    /// The name used in logs, metrics, the simulator's stats and the shared rate budget.
    pub fn name(self) -> &'static str {
        match self {
            Family::Tiles => "tiles",
            Family::Search => "search",
            Family::Entity => "entity",
        }
    }

    /// The per-minute limit Mapillary documents for the family (API notes §4.3); the tile
    /// server blocks an IP far below its documented figure (§13.1), see `DEFAULT_TILES_PER_DAY`.
    pub fn documented_per_minute(self) -> u32 {
        match self {
            Family::Tiles => 50_000,
            Family::Search => 10_000,
            Family::Entity => 60_000,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The documented cap on ids per multi-id (`?ids=`) call.
pub const MAX_IDS_PER_CALL: usize = 50;

/// The cap (and default) of results of one search answer (`limit`), and of a page.
pub const SEARCH_LIMIT: usize = 2000;

/// The largest bbox a search accepts, in square degrees ("Maximum allowed area is 0.010").
pub const MAX_SEARCH_AREA_DEG2: f64 = 0.010;

/// Image fields requested from the Graph API.
pub const IMAGE_FIELDS: &str = "id,captured_at,compass_angle,computed_compass_angle,is_pano,creator,organization,\
camera_type,make,model,width,height,altitude,computed_altitude,quality_score,sequence,geometry,computed_geometry";

/// Map-feature fields requested from the Graph API.
pub const MAP_FEATURE_FIELDS: &str =
    "id,object_value,object_type,aligned_direction,first_seen_at,last_seen_at,geometry,images";

/// Detection fields requested through an image's `detections` edge.
pub const DETECTION_FIELDS: &str = "detections.id,detections.value,detections.created_at,detections.geometry";

/// The sizes of an image's picture the Graph API hands out URLs for (`thumb_*_url`, API notes
/// §7). The URLs are signed and expire (`oe=`), so they are asked for just before a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThumbSize {
    /// `thumb_256_url`: 256 px wide.
    S256,
    /// `thumb_1024_url`: 1024 px wide.
    S1024,
    /// `thumb_2048_url`: 2048 px wide.
    S2048,
    /// `thumb_original_url`: the picture as uploaded.
    Original,
}

impl ThumbSize {
    /// Every size, smallest first.
    pub const ALL: [ThumbSize; 4] =
        [ThumbSize::S256, ThumbSize::S1024, ThumbSize::S2048, ThumbSize::Original];

    /// The Graph field holding this size's URL.
    pub fn field(self) -> &'static str {
        match self {
            ThumbSize::S256 => "thumb_256_url",
            ThumbSize::S1024 => "thumb_1024_url",
            ThumbSize::S2048 => "thumb_2048_url",
            ThumbSize::Original => "thumb_original_url",
        }
    }

    /// The short name users write (`256`, `1024`, `2048`, `original`).
    pub fn name(self) -> &'static str {
        match self {
            ThumbSize::S256 => "256",
            ThumbSize::S1024 => "1024",
            ThumbSize::S2048 => "2048",
            ThumbSize::Original => "original",
        }
    }

    /// The size of a short name, if it is one.
    pub fn from_name(name: &str) -> Option<ThumbSize> {
        ThumbSize::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The picture's width in pixels; `None` for the original (the image's own width).
    pub fn width(self) -> Option<u32> {
        match self {
            ThumbSize::S256 => Some(256),
            ThumbSize::S1024 => Some(1024),
            ThumbSize::S2048 => Some(2048),
            ThumbSize::Original => None,
        }
    }
}

impl fmt::Display for ThumbSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
