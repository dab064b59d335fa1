//! Mapillary API v4 client: tiles and Graph API, rate limited, retried, token-safe.

mod client;
mod error;
pub mod graph;
mod limiter;

use std::time::Duration;

use crate::config::Secret;

pub use client::ApiClient;
pub use error::ApiError;

/// Image fields requested from the Graph API.
pub const IMAGE_FIELDS: &str = "id,captured_at,compass_angle,computed_compass_angle,is_pano,creator,organization,\
camera_type,make,model,width,height,altitude,computed_altitude,quality_score,sequence,geometry,computed_geometry";

/// Map-feature fields requested from the Graph API.
pub const MAP_FEATURE_FIELDS: &str =
    "id,object_value,object_type,aligned_direction,first_seen_at,last_seen_at,geometry,images";

/// Detection fields requested through an image's `detections` edge.
pub const DETECTION_FIELDS: &str = "detections.id,detections.value,detections.created_at,detections.geometry";

/// The documented cap on ids per `?ids=` call.
pub const MAX_IDS_PER_CALL: usize = 50;

/// The cap (and default) of results of a bbox search.
pub const SEARCH_LIMIT: usize = 2000;

/// How to reach the API and how hard to use it.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub graph_url: String,
    pub tiles_url: String,
    pub token: Secret,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries of a transient failure before giving up.
    pub max_retries: u32,
    pub search_per_minute: u32,
    pub entity_per_minute: u32,
    /// Calls of one family in a row that fail to connect or time out before the circuit breaker
    /// trips and every further call of that family fails at once (`mapillary.breaker_after`).
    pub breaker_after: u32,
}

/// The outcome of a tile request.
#[derive(Debug, Clone, PartialEq)]
pub enum TileResponse {
    /// The tile's MVT bytes and its ETag, if the server sent one.
    Data { bytes: bytes::Bytes, etag: Option<String> },
    /// Unchanged since the ETag we sent.
    NotModified,
    /// No data at this tile (200 empty, 204, 403, 404). Not proof that records the tile held
    /// before are gone: a dense tile can answer 404 for a while (§13.3).
    Empty,
}

/// The outcome of a bbox search.
#[derive(Debug, Clone, PartialEq)]
pub enum Search<T> {
    /// Every record in the box.
    Complete(Vec<T>),
    /// The box holds too much (result cap hit, or one of the permanent "too much" 500s): split it.
    TooMuch,
}

/// The outcome of a multi-id lookup.
#[derive(Debug, Clone, PartialEq)]
pub struct ByIds<T> {
    pub found: Vec<T>,
    /// Ids the API says do not exist (deleted, hidden, or never existed).
    pub missing: Vec<i64>,
}

/// Request counts since the client was built.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApiCounters {
    pub tiles: u64,
    pub search: u64,
    pub entity: u64,
    pub retries: u64,
    pub throttled: u64,
    pub not_modified: u64,
    pub bytes: u64,
    /// Multi-id calls made to confirm that records gone from their tile are gone upstream.
    pub confirm: u64,
}

/// Replaces the value of every `access_token` query parameter (plain or percent-encoded key)
/// with `REDACTED`, so the URL can be logged or stored.
pub fn redact(url: &str) -> String {
    // ASCII lowercasing keeps byte offsets, so positions found in `lower` index `url`.
    let lower = url.to_ascii_lowercase();
    let mut out = String::with_capacity(url.len());
    let mut pos = 0;
    while pos < url.len() {
        let next = ["access_token=", "access%5ftoken="]
            .iter()
            .filter_map(|k| lower[pos..].find(k).map(|i| (pos + i, k.len())))
            .min();
        let Some((at, klen)) = next else { break };
        let vstart = at + klen;
        let vend = url[vstart..].find(['&', '#', ' ', '"', '\'']).map_or(url.len(), |i| vstart + i);
        out.push_str(&url[pos..vstart]);
        out.push_str("REDACTED");
        pos = vend;
    }
    out.push_str(&url[pos.min(url.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_token_forms() {
        let cases = [
            (
                "http://h/maps/vtp/mly1_public/2/14/1/2?access_token=MLY%7C4000%7Cabcdef",
                "http://h/maps/vtp/mly1_public/2/14/1/2?access_token=REDACTED",
            ),
            ("http://h/x?a=1&access_token=MLY|1|abc&b=2", "http://h/x?a=1&access_token=REDACTED&b=2"),
            ("http://h/x?ACCESS_TOKEN=MLY|1|abc#frag", "http://h/x?ACCESS_TOKEN=REDACTED#frag"),
            ("http://h/x?access%5Ftoken=MLY%7C1", "http://h/x?access%5Ftoken=REDACTED"),
            (
                "GET http://h/x?access_token=a then http://h/y?access_token=b",
                "GET http://h/x?access_token=REDACTED then http://h/y?access_token=REDACTED",
            ),
            ("http://h/images?bbox=1,2,3,4", "http://h/images?bbox=1,2,3,4"),
            ("http://h/x?access_token=", "http://h/x?access_token=REDACTED"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn settings_debug_hides_token() {
        let s = ApiSettings {
            graph_url: "http://g".into(),
            tiles_url: "http://t".into(),
            token: Secret::new("MLY|1|topsecretvalue"),
            timeout: Duration::from_secs(1),
            max_retries: 1,
            search_per_minute: 1,
            entity_per_minute: 1,
            breaker_after: 1,
        };
        assert!(!format!("{s:?}").contains("topsecretvalue"));
    }
}
