//! Domain records that flow through the pipeline: decoded from tiles, enriched from the Graph
//! API, written to PostGIS. Ids are 64-bit integers end to end (never f64).

use std::fmt;

use geo_types::MultiLineString;
use mly_contract::FeatureKind;

/// A Mapillary image id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(pub i64);

/// A Mapillary map-feature id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapFeatureId(pub i64);

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for MapFeatureId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An image as the coverage tile (`image` layer) describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TileImage {
    pub id: ImageId,
    pub lon: f64,
    pub lat: f64,
    /// ms since the epoch; 0 occurs in real tiles and is kept as-is.
    pub captured_at_ms: Option<i64>,
    pub compass_angle: Option<f64>,
    pub sequence_id: Option<String>,
    pub is_pano: Option<bool>,
    pub organization_id: Option<i64>,
    pub creator_id: Option<i64>,
}

/// A sequence as the coverage tile (`sequence` layer) describes it, clipped to the tile.
#[derive(Debug, Clone, PartialEq)]
pub struct TileSequence {
    pub id: String,
    pub image_id: Option<ImageId>,
    pub captured_at_ms: Option<i64>,
    pub is_pano: Option<bool>,
    pub organization_id: Option<i64>,
    pub creator_id: Option<i64>,
    /// lon/lat line parts.
    pub geom: MultiLineString<f64>,
}

/// A map feature as a `point` / `traffic_sign` tile layer describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TileFeature {
    pub id: MapFeatureId,
    pub kind: FeatureKind,
    pub lon: f64,
    pub lat: f64,
    pub value: Option<String>,
    pub first_seen_at_ms: Option<i64>,
    pub last_seen_at_ms: Option<i64>,
}

/// The useful content of one decoded z14 tile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodedTile {
    pub images: Vec<TileImage>,
    pub sequences: Vec<TileSequence>,
    pub features: Vec<TileFeature>,
    /// Ids of the images / features drawn exactly on the tile's east or south edge: the
    /// neighbour's first pixel, where the neighbour may list them as its own. (Records beyond the
    /// edge, the render-buffer copies of the neighbours' records, are not decoded at all.)
    pub far_edge: Vec<i64>,
}

/// Image fields from the Graph API (`/images`, `/?ids=`); absent fields stay `None`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageDetails {
    pub id: ImageId,
    pub captured_at_ms: Option<i64>,
    pub compass_angle: Option<f64>,
    pub computed_compass_angle: Option<f64>,
    pub is_pano: Option<bool>,
    pub creator_id: Option<i64>,
    pub creator_username: Option<String>,
    pub organization_id: Option<i64>,
    pub camera_type: Option<String>,
    pub make: Option<String>,
    pub model: Option<String>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub altitude: Option<f64>,
    pub computed_altitude: Option<f64>,
    pub quality_score: Option<f64>,
    pub sequence_id: Option<String>,
    /// Original GPS position (lon, lat).
    pub geometry: Option<(f64, f64)>,
    /// SfM-computed position (lon, lat); absent for unprocessed images.
    pub computed_geometry: Option<(f64, f64)>,
}

/// Map-feature fields from the Graph API.
#[derive(Debug, Clone, PartialEq)]
pub struct MapFeatureDetails {
    pub id: MapFeatureId,
    pub object_value: Option<String>,
    /// As the API spells it (`point`, `traffic_sign`, or the observed `trafficsign`).
    pub object_type: Option<String>,
    pub aligned_direction: Option<f64>,
    pub first_seen_at_ms: Option<i64>,
    pub last_seen_at_ms: Option<i64>,
    pub geometry: Option<(f64, f64)>,
    /// Images in which the feature is seen (the `images` edge).
    pub images: Vec<ImageId>,
}

/// A detection of an object in an image (from the `detections` edge).
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub id: i64,
    pub image_id: ImageId,
    pub map_feature_id: Option<MapFeatureId>,
    pub value: Option<String>,
    pub created_at_ms: Option<i64>,
    /// The raw base64 MVT as the API sent it.
    pub geometry_b64: Option<String>,
}

/// What an image search is narrowed to besides its area or page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFilter {
    /// `creator_username`.
    pub creator_username: Option<String>,
    /// `organization_id`.
    pub organization_id: Option<i64>,
    /// Earliest capture time, ms since the epoch (inclusive).
    pub start_ms: Option<i64>,
    /// Latest capture time, ms since the epoch (inclusive).
    pub end_ms: Option<i64>,
}

impl ImageFilter {
    /// The filter as it reads in a log line or error.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.creator_username {
            parts.push(format!("creator {c}"));
        }
        if let Some(o) = self.organization_id {
            parts.push(format!("organization {o}"));
        }
        if self.start_ms.is_some() || self.end_ms.is_some() {
            parts.push("in a capture window".into());
        }
        parts.join(", ")
    }
}
