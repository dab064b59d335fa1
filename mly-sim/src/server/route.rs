//! What a request path asks for, and its query parameters.

use crate::limits::Family;

/// What a request path asks for.
#[derive(Debug, Clone)]
pub(super) enum Route {
    Stats,
    Tile { tileset: String, z: String, x: String, y: String },
    Multi,
    Entity(String),
    Detections(String),
    Images,
    MapFeatures,
    ImageIds,
    Unknown(String),
}

impl Route {
    pub(super) fn classify(path: &str) -> Route {
        // The real service (and the official SDK, which builds every URL so) accepts one trailing
        // slash on every Graph and tile path: `/{id}/`, `/images/`, `…/{z}/{x}/{y}/` (§13.11).
        let path = match path.strip_suffix('/') {
            Some(p) if !p.is_empty() => p,
            _ => path,
        };
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segs.as_slice() {
            ["__sim", "stats"] => Route::Stats,
            ["maps", "vtp", ts, "2", z, x, y] => {
                Route::Tile { tileset: ts.to_string(), z: z.to_string(), x: x.to_string(), y: y.to_string() }
            }
            [""] => Route::Multi,
            ["images"] => Route::Images,
            ["map_features"] => Route::MapFeatures,
            ["image_ids"] => Route::ImageIds,
            [id] => Route::Entity(id.to_string()),
            [id, "detections"] => Route::Detections(id.to_string()),
            _ => Route::Unknown(path.to_string()),
        }
    }

    pub(super) fn family(&self) -> Family {
        match self {
            Route::Tile { .. } => Family::Tiles,
            Route::Images | Route::MapFeatures | Route::ImageIds => Family::Search,
            _ => Family::Entity,
        }
    }
}

/// Query parameters, first occurrence wins.
pub(super) struct Params(pub(super) Vec<(String, String)>);

impl Params {
    pub(super) fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(Route::classify("/123/detections"), Route::Detections(_)));
        assert!(matches!(Route::classify("/123/detections/"), Route::Detections(_)));
        assert!(matches!(Route::classify("/maps/vtp/mly1_public/2/14/1/2"), Route::Tile { .. }));
        assert!(matches!(Route::classify("/"), Route::Multi));
        assert!(matches!(Route::classify("/__sim/stats"), Route::Stats));
        assert_eq!(Route::classify("/images/").family(), Family::Search);
    }
}
