//! The records of the world, as the Graph API and the tiles report them.

use mly_contract::FeatureKind;
use mly_contract::tiles::TileId;

/// Everything whose ORIGINAL geometry lies in one z14 tile.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TileWorld {
    /// The z14 tile.
    pub(crate) tile: TileId,
    /// Images, sorted by id.
    pub(crate) images: Vec<SimImage>,
    /// Sequences with at least one image in this tile.
    pub(crate) sequences: Vec<SimSequence>,
    /// Map features of both kinds.
    pub(crate) features: Vec<SimFeature>,
    /// Detections in this tile's images, sorted by (image_id, id).
    pub(crate) detections: Vec<SimDetection>,
}

/// One image with every field the Graph API can report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SimImage {
    pub(crate) id: i64,
    pub(crate) sequence_id: String,
    pub(crate) captured_at_ms: i64,
    pub(crate) compass_angle: f64,
    pub(crate) computed_compass_angle: f64,
    pub(crate) lon: f64,
    pub(crate) lat: f64,
    pub(crate) computed: Option<(f64, f64)>,
    pub(crate) altitude: f64,
    pub(crate) computed_altitude: f64,
    pub(crate) is_pano: bool,
    pub(crate) creator_id: i64,
    pub(crate) creator_username: String,
    pub(crate) organization_id: Option<i64>,
    pub(crate) camera_type: String,
    pub(crate) make: String,
    pub(crate) model: String,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) quality_score: Option<f64>,
    pub(crate) atomic_scale: f64,
    pub(crate) camera_parameters: Vec<f64>,
    pub(crate) computed_rotation: [f64; 3],
    pub(crate) exif_orientation: u8,
    pub(crate) merge_cc: u64,
    /// Some images lack a mesh, as in the fixtures.
    pub(crate) has_mesh: bool,
    /// Captured on foot (the computed tileset's `foot`).
    pub(crate) foot: bool,
}

/// One sequence (a drive or walk).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SimSequence {
    /// 22 chars of `[A-Za-z0-9_-]`.
    pub(crate) id: String,
    /// Capture order, whole sequence.
    pub(crate) image_ids: Vec<i64>,
    pub(crate) captured_at_ms: i64,
    pub(crate) is_pano: bool,
    pub(crate) creator_id: i64,
    pub(crate) organization_id: Option<i64>,
    /// Captured on foot.
    pub(crate) foot: bool,
}

/// One map feature (point or traffic sign).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SimFeature {
    pub(crate) id: i64,
    pub(crate) kind: FeatureKind,
    pub(crate) value: String,
    pub(crate) lon: f64,
    pub(crate) lat: f64,
    pub(crate) first_seen_at_ms: i64,
    pub(crate) last_seen_at_ms: i64,
    pub(crate) aligned_direction: f64,
    pub(crate) image_ids: Vec<i64>,
}

/// One detection of an object in an image.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SimDetection {
    pub(crate) id: i64,
    pub(crate) image_id: i64,
    pub(crate) map_feature_id: Option<i64>,
    pub(crate) value: String,
    pub(crate) created_at_ms: i64,
    /// The outline in image-normalised pixels (0..4096), a ring without repeat; the Graph API
    /// sends it as a base64 MVT (see `encode::detection_geometry_b64`).
    pub(crate) polygon_px: Vec<(u32, u32)>,
}

/// A creator account.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SimUser {
    pub(crate) id: i64,
    pub(crate) username: String,
}
