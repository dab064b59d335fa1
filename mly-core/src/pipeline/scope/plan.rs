//! What a scope harvest is: whose images (a creator, an organization, or both), within which
//! capture window and region; how they are listed (paged by cursor, or cell by cell over a
//! region); and which listed records are kept.

use std::collections::HashSet;

use crate::model::ImageFilter;
use crate::model::{ImageDetails, MapFeatureDetails};
use crate::region::Region;
use crate::settings::Harvest;
use crate::store::image_position;
use mly_contract::hash::fnv1a;
use mly_contract::tiles::{HARVEST_ZOOM, TileId};
use mly_contract::{FeatureKind, Tileset};

/// Why a scope cannot be harvested as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("a scope needs --creator or --organization")]
    NoOwner,
    #[error(
        "--organization without --creator needs a REGION: the Graph API lists an organization's images only within a bbox"
    )]
    OrganizationNeedsRegion,
    #[error("--since {since} is later than --until {until}")]
    Window { since: String, until: String },
    #[error("--creator {0:?} is not a Mapillary username (1 to 100 visible characters, no spaces)")]
    Username(String),
}

/// Whose images a scope harvest lists, and where and when.
#[derive(Debug, Clone)]
pub struct Scope {
    /// `creator_username`.
    pub creator: Option<String>,
    /// `organization_id`.
    pub organization: Option<i64>,
    /// Earliest capture time, ms since the epoch (inclusive).
    pub since_ms: Option<i64>,
    /// Latest capture time, ms since the epoch (inclusive).
    pub until_ms: Option<i64>,
    /// Only records in this region's tiles (and a point region's circle).
    pub region: Option<Region>,
}

/// How a scope's images are listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The paged `/images` search without a bbox (a creator, optionally with an organization).
    Paged,
    /// An organization alone: one filtered bbox search per z14 tile of the region (split when
    /// dense), in this order.
    Cells(Vec<TileId>),
}

fn ms_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_else(|| ms.to_string())
}

impl Scope {
    /// A scope, validated: someone to list, a region for an organization alone, and a window
    /// whose start is not after its end.
    pub fn new(
        creator: Option<String>,
        organization: Option<i64>,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        region: Option<Region>,
    ) -> Result<Scope, ScopeError> {
        if let Some(c) = &creator
            && (c.is_empty()
                || c.chars().count() > 100
                || !c.chars().all(|ch| ch.is_ascii_graphic() || ch.is_alphanumeric()))
        {
            return Err(ScopeError::Username(c.clone()));
        }
        match (&creator, organization, &region) {
            (None, None, _) => return Err(ScopeError::NoOwner),
            (None, Some(_), None) => return Err(ScopeError::OrganizationNeedsRegion),
            _ => {}
        }
        if let (Some(s), Some(u)) = (since_ms, until_ms)
            && s > u
        {
            return Err(ScopeError::Window { since: ms_text(s), until: ms_text(u) });
        }
        Ok(Scope { creator, organization, since_ms, until_ms, region })
    }

    /// The records of the scope, as the search filters and the database select them.
    pub fn filter(&self) -> ImageFilter {
        ImageFilter {
            creator_username: self.creator.clone(),
            organization_id: self.organization,
            start_ms: self.since_ms,
            end_ms: self.until_ms,
        }
    }

    /// The run's name: `creator:NAME`, `organization:ID`, the window and ` in REGION`.
    pub fn name(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.creator {
            parts.push(format!("creator:{c}"));
        }
        if let Some(o) = self.organization {
            parts.push(format!("organization:{o}"));
        }
        let mut name = parts.join("+");
        if self.since_ms.is_some() || self.until_ms.is_some() {
            let end = |v: Option<i64>| v.map(ms_text).unwrap_or_default();
            name.push_str(&format!(" [{}..{}]", end(self.since_ms), end(self.until_ms)));
        }
        if let Some(r) = &self.region {
            name.push_str(&format!(" in {}", r.name));
        }
        name
    }

    /// The settings that make a pass "the same scope": a resumable run has the same key, and an
    /// incremental pass continues the last finished pass of the same key.
    pub(crate) fn run_key(&self, harvest: &Harvest) -> (String, serde_json::Value) {
        let kinds: Vec<&str> = feature_kinds(harvest).iter().map(|k| k.as_str()).collect();
        let settings = serde_json::json!({
            "scope": {
                "creator": self.creator,
                "organization": self.organization,
                "since_ms": self.since_ms,
                "until_ms": self.until_ms,
            },
            "region": self.region.as_ref().map(|r| r.key.clone()),
            "features": kinds,
        });
        (format!("{:016x}", fnv1a(settings.to_string().as_bytes())), settings)
    }

    /// How the scope is listed.
    pub(crate) fn source(&self) -> Source {
        match (&self.creator, &self.region) {
            (None, Some(r)) => Source::Cells(r.tiles(HARVEST_ZOOM)),
            _ => Source::Paged,
        }
    }
}

/// The map-feature kinds the configured tilesets harvest: a scope keeps those.
pub(crate) fn feature_kinds(harvest: &Harvest) -> Vec<FeatureKind> {
    let mut kinds = Vec::new();
    for ts in &harvest.tilesets {
        let kind = match ts {
            Tileset::FeaturePoint => FeatureKind::Point,
            Tileset::FeatureTrafficSign => FeatureKind::TrafficSign,
            Tileset::Public | Tileset::ComputedPublic => continue,
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

/// A Graph `object_type` as a kind (the live service says `trafficsign`, its docs `traffic_sign`).
pub(crate) fn kind_of(object_type: Option<&str>) -> Option<FeatureKind> {
    match object_type?.to_ascii_lowercase().replace(['_', '-'], "").as_str() {
        "point" => Some(FeatureKind::Point),
        "trafficsign" => Some(FeatureKind::TrafficSign),
        _ => None,
    }
}

/// Which listed records a scope stores: captured within the window, and inside the region (its
/// z14 tiles, as an area harvest of it stores them, and a point region's circle).
pub(crate) struct Keep {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    tiles: Option<HashSet<TileId>>,
    region: Option<Region>,
}

impl Keep {
    pub(crate) fn of(scope: &Scope) -> Keep {
        Keep {
            since_ms: scope.since_ms,
            until_ms: scope.until_ms,
            tiles: scope.region.as_ref().map(|r| r.tiles(HARVEST_ZOOM).into_iter().collect()),
            region: scope.region.clone(),
        }
    }

    /// Whether a record at (`lon`, `lat`) is in the region.
    pub(crate) fn position(&self, lon: f64, lat: f64) -> bool {
        let in_tiles =
            self.tiles.as_ref().is_none_or(|t| t.contains(&TileId::containing(HARVEST_ZOOM, lon, lat)));
        in_tiles && self.region.as_ref().is_none_or(|r| r.keeps(lon, lat))
    }

    /// Whether a listed image is stored: it has a position in the region and a capture time in
    /// the window (the search's window is widened to whole seconds: this is the exact one).
    pub(crate) fn image(&self, d: &ImageDetails) -> bool {
        let in_window = match (self.since_ms, self.until_ms) {
            (None, None) => true,
            (s, u) => d.captured_at_ms.is_some_and(|t| s.is_none_or(|s| t >= s) && u.is_none_or(|u| t <= u)),
        };
        in_window && image_position(d).is_some_and(|(lon, lat)| self.position(lon, lat))
    }

    /// Whether a map feature is stored: a kind the config harvests, at a position in the region.
    pub(crate) fn feature(&self, d: &MapFeatureDetails, kinds: &[FeatureKind]) -> Option<FeatureKind> {
        let kind = kind_of(d.object_type.as_deref()).filter(|k| kinds.contains(k))?;
        d.geometry.filter(|(lon, lat)| self.position(*lon, *lat)).map(|_| kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_validated() {
        let r = Region::from_bbox_text("b", "13.0,55.6,13.01,55.61").unwrap();
        assert_eq!(Scope::new(None, None, None, None, None).unwrap_err(), ScopeError::NoOwner);
        assert_eq!(
            Scope::new(None, Some(5), None, None, None).unwrap_err(),
            ScopeError::OrganizationNeedsRegion
        );
        assert!(Scope::new(Some("a b".into()), None, None, None, None).is_err());
        assert!(Scope::new(Some(String::new()), None, None, None, None).is_err());
        assert!(matches!(
            Scope::new(Some("x".into()), None, Some(2), Some(1), None),
            Err(ScopeError::Window { .. })
        ));
        let s = Scope::new(None, Some(5), None, None, Some(r)).unwrap();
        assert!(matches!(s.source(), Source::Cells(t) if !t.is_empty()));
        assert_eq!(s.name(), "organization:5 in b");
        let s = Scope::new(Some("blue_fox1".into()), Some(5), Some(0), None, None).unwrap();
        assert_eq!(s.source(), Source::Paged);
        assert_eq!(s.name(), "creator:blue_fox1+organization:5 [1970-01-01T00:00:00+00:00..]");
    }

    #[test]
    fn keep_is_exact_on_window_region_and_circle() {
        let r = Region::from_point_text("p", "13.0,55.6@200m").unwrap();
        let s = Scope::new(Some("x".into()), None, Some(1000), Some(2000), Some(r)).unwrap();
        let k = Keep::of(&s);
        let img = |t: Option<i64>, lat: f64| ImageDetails {
            captured_at_ms: t,
            geometry: Some((13.0, lat)),
            ..ImageDetails::default()
        };
        assert!(k.image(&img(Some(1000), 55.6)));
        assert!(k.image(&img(Some(2000), 55.6017)));
        assert!(!k.image(&img(Some(2001), 55.6)), "after the window");
        assert!(!k.image(&img(None, 55.6)), "no capture time in a window");
        assert!(!k.image(&img(Some(1500), 55.6019)), "outside the circle");
        assert_eq!(kind_of(Some("trafficsign")), Some(FeatureKind::TrafficSign));
        assert_eq!(kind_of(Some("traffic_sign")), Some(FeatureKind::TrafficSign));
        assert_eq!(kind_of(Some("point")), Some(FeatureKind::Point));
        assert_eq!(kind_of(Some("sign")), None);
    }
}
