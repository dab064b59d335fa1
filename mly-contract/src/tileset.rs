//! The four Mapillary vector tilesets and the kinds of map feature they carry.

use std::fmt;

/// The four Mapillary vector tilesets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tileset {
    /// `mly1_public`: coverage with original (EXIF) geometries.
    Public,
    /// `mly1_computed_public`: coverage with SfM-computed geometries.
    ComputedPublic,
    /// `mly_map_feature_point`: non-sign map features (layer `point`).
    FeaturePoint,
    /// `mly_map_feature_traffic_sign`: traffic signs (layer `traffic_sign`).
    FeatureTrafficSign,
}

impl Tileset {
    /// Every tileset, in a stable order.
    pub const ALL: [Tileset; 4] =
        [Tileset::Public, Tileset::ComputedPublic, Tileset::FeaturePoint, Tileset::FeatureTrafficSign];

    /// The name used in tile URLs.
    pub fn name(self) -> &'static str {
        match self {
            Tileset::Public => "mly1_public",
            Tileset::ComputedPublic => "mly1_computed_public",
            Tileset::FeaturePoint => "mly_map_feature_point",
            Tileset::FeatureTrafficSign => "mly_map_feature_traffic_sign",
        }
    }

    /// Parses a tileset name as used in URLs and the config.
    pub fn from_name(s: &str) -> Option<Tileset> {
        Tileset::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Whether this tileset carries image coverage (as opposed to map features).
    pub fn is_coverage(self) -> bool {
        matches!(self, Tileset::Public | Tileset::ComputedPublic)
    }
}

impl fmt::Display for Tileset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Map-feature kind, from the tileset it came from (Graph calls it `object_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeatureKind {
    Point,
    TrafficSign,
}

impl FeatureKind {
    /// The value stored in `map_features.object_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureKind::Point => "point",
            FeatureKind::TrafficSign => "traffic_sign",
        }
    }
}
