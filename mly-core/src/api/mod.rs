//! Mapillary API v4 client: tiles and Graph API, rate limited, retried, token-safe.

mod client;
mod error;
pub mod graph;
mod limiter;
mod thumbs;

use std::time::Duration;

use mly_contract::Secret;

pub use client::ApiClient;
pub use client::paged::Page;
pub(crate) use client::{backoff, error_chain};
pub use error::ApiError;
pub use limiter::PaceError;
pub use thumbs::ThumbUrl;

pub use mly_contract::api::{
    DETECTION_FIELDS, IMAGE_FIELDS, MAP_FEATURE_FIELDS, MAX_IDS_PER_CALL, SEARCH_LIMIT, ThumbSize,
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
    /// Tile requests of this process in flight at once until their answers' status is in: a
    /// block answer stops every later request, so at most this many meet the block. From the
    /// tile pace and the latency (Little's law, see `tiles_in_flight`).
    pub tiles_in_flight: u32,
    /// Calls of one family in a row that fail to connect or time out before the circuit breaker
    /// trips and every further call of that family fails at once (`mapillary.breaker_after`).
    pub breaker_after: u32,
}

/// Whose calls the per-minute limits (`search_per_minute`, `entity_per_minute`) count.
#[derive(Debug, Clone)]
pub enum Pacing {
    /// This process's only: for a one-off check (`doctor`) or a client on its own.
    ThisProcess,
    /// Every process of the app, on any host: slots of the app's timelines in the database
    /// (`budget::timeline`), which must be migrated.
    Shared { store: crate::store::Store, app: crate::jobs::budget::AppKey },
}

/// Tile requests in flight at once for a pace of `tiles_per_minute` answered in about a second
/// (Little's law, with twice the room): one at the default pace of 20 a minute, so that nothing
/// follows a block answer; up to 64 when the pace allows many.
pub fn tiles_in_flight(tiles_per_minute: u32) -> u32 {
    let per_second = f64::from(tiles_per_minute) / 60.0;
    ((per_second * 2.0).ceil() as u32).clamp(1, 64)
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
    /// Batches of Graph API slots reserved (database round trips when the pacing is shared).
    pub rate_reservations: u64,
    /// Reserved Graph API slots that passed unused (a caller came too late, or a pause).
    pub rate_slots_skipped: u64,
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
            tiles_in_flight: 1,
            breaker_after: 1,
        };
        assert!(!format!("{s:?}").contains("topsecretvalue"));
    }
}
