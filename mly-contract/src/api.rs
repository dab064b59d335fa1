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
