//! Mapillary API v4 client: tiles and Graph API, rate limited, retried, token-safe.

mod client;
mod error;
pub mod graph;
mod limiter;

use std::time::Duration;

use mly_contract::Secret;

pub use client::ApiClient;
pub use client::paged::{ImageFilter, Page};
pub use error::ApiError;

pub use mly_contract::api::{
    DETECTION_FIELDS, IMAGE_FIELDS, MAP_FEATURE_FIELDS, MAX_IDS_PER_CALL, SEARCH_LIMIT,
};
pub use mly_contract::secret::redact;

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

#[cfg(test)]
mod tests {
    use super::*;

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
