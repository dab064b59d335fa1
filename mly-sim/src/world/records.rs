//! The records of the world, as the Graph API and the tiles report them.

use mly_contract::FeatureKind;
use mly_contract::tiles::TileId;

/// Everything whose ORIGINAL geometry lies in one z14 tile.
#[derive(Debug, Clone, PartialEq)]
pub struct TileWorld {
    /// The z14 tile.
    pub tile: TileId,
    /// Images, sorted by id.
    pub images: Vec<SimImage>,
    /// Sequences with at least one image in this tile.
    pub sequences: Vec<SimSequence>,
    /// Map features of both kinds.
    pub features: Vec<SimFeature>,
    /// Detections in this tile's images, sorted by (image_id, id).
    pub detections: Vec<SimDetection>,
}

/// One image with every field the Graph API can report.
#[derive(Debug, Clone, PartialEq)]
pub struct SimImage {
    pub id: i64,
    pub sequence_id: String,
    pub captured_at_ms: i64,
    pub compass_angle: f64,
    pub computed_compass_angle: f64,
    pub lon: f64,
    pub lat: f64,
    pub computed: Option<(f64, f64)>,
    pub altitude: f64,
    pub computed_altitude: f64,
    pub is_pano: bool,
    pub creator_id: i64,
    pub creator_username: String,
    pub organization_id: Option<i64>,
    pub camera_type: String,
    pub make: String,
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub quality_score: Option<f64>,
    pub atomic_scale: f64,
    pub camera_parameters: Vec<f64>,
    pub computed_rotation: [f64; 3],
    pub exif_orientation: u8,
    pub merge_cc: u64,
    /// Some images lack a mesh, as in the fixtures.
    pub has_mesh: bool,
    /// Captured on foot (the computed tileset's `foot`).
    pub foot: bool,
}

/// One sequence (a drive or walk).
#[derive(Debug, Clone, PartialEq)]
pub struct SimSequence {
    /// 22 chars of `[A-Za-z0-9_-]`.
    pub id: String,
    /// Capture order, whole sequence.
    pub image_ids: Vec<i64>,
    pub captured_at_ms: i64,
    pub is_pano: bool,
    pub creator_id: i64,
    pub organization_id: Option<i64>,
    /// Captured on foot.
    pub foot: bool,
}

/// One map feature (point or traffic sign).
#[derive(Debug, Clone, PartialEq)]
pub struct SimFeature {
    pub id: i64,
    pub kind: FeatureKind,
    pub value: String,
    pub lon: f64,
    pub lat: f64,
    pub first_seen_at_ms: i64,
    pub last_seen_at_ms: i64,
    pub aligned_direction: f64,
    pub image_ids: Vec<i64>,
}

/// One detection of an object in an image.
#[derive(Debug, Clone, PartialEq)]
pub struct SimDetection {
    pub id: i64,
    pub image_id: i64,
    pub map_feature_id: Option<i64>,
    pub value: String,
    pub created_at_ms: i64,
    /// The outline in image-normalised pixels (0..4096), a ring without repeat; the Graph API
    /// sends it as a base64 MVT (see `encode::detection_geometry_b64`).
    pub polygon_px: Vec<(u32, u32)>,
}

/// A creator account.
#[derive(Debug, Clone, PartialEq)]
pub struct SimUser {
    pub id: i64,
    pub username: String,
}
