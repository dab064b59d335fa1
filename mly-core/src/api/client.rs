//! The HTTP client: one retry loop shared by tiles and Graph calls, with classification,
//! pacing, size caps and token scrubbing.

mod breaker;
mod endpoints;
// Paged and filtered image searches (scope harvests) use this module's retry loop.
pub(super) mod paged;
mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue};

use super::error::{ApiError, Class};
use super::limiter::{Pacer, Source};
use super::{ApiCounters, ApiSettings, Pacing};
use breaker::{Breaker, service};
use transport::json;
pub(crate) use transport::{backoff, error_chain};

/// Body cap for tiles: dense real tiles reach ~10 MB; anything far above is hostile.
const TILE_CAP: usize = 64 << 20;
/// Body cap for Graph JSON.
const JSON_CAP: usize = 32 << 20;
/// Searches in flight at once (see `Inner::search_in_flight`).
const SEARCHES_IN_FLIGHT: usize = 32;
/// Entity calls in flight at once (their answers are small: 50 records).
const ENTITY_IN_FLIGHT: usize = 96;
/// Multi-id batches of one lookup in flight at once.
const LOOKUPS_IN_FLIGHT: usize = 32;
/// Retries of a query timeout before the caller asks for less (§13.7: a retry may succeed).
const TIMEOUT_RETRIES: u32 = 1;
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(20);

use mly_contract::Family;

/// A response the retry loop hands back: success, or a refusal the caller interprets.
enum Reply {
    Ok { status: u16, headers: HeaderMap, body: Bytes },
    Refused { status: u16, class: Class },
}

#[derive(Default)]
struct Counters {
    tiles: AtomicU64,
    search: AtomicU64,
    entity: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
    not_modified: AtomicU64,
    bytes: AtomicU64,
    confirm: AtomicU64,
}

/// How a multi-id lookup narrows down a batch the API refused for an unknown id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Narrow {
    /// Halves until the culprits stand alone: cheap when few ids are gone (enrichment).
    Bisect,
    /// One id per call: cheapest when most ids are expected gone (confirming deletions).
    OneByOne,
}

/// The block answer that stopped tile requests, kept so every later refusal names its time.
#[derive(Debug, Clone)]
struct BlockSeen {
    at: chrono::DateTime<chrono::Utc>,
    detail: String,
}

struct Inner {
    http: reqwest::Client,
    graph: String,
    tiles: String,
    token: mly_contract::Secret,
    /// `OAuth TOKEN`, marked sensitive so that reqwest/hyper never print it.
    auth_header: HeaderValue,
    max_retries: u32,
    tiles_pacer: Pacer,
    search_pacer: Pacer,
    entity_pacer: Pacer,
    tiles_breaker: Breaker,
    search_breaker: Breaker,
    entity_breaker: Breaker,
    /// Graph requests of a family in flight at once, answer read included: enough to keep the
    /// pacer's rate at a second of latency (Little's law), few enough that the answers in memory
    /// stay bounded (a full search answer is a couple of MB).
    search_in_flight: tokio::sync::Semaphore,
    entity_in_flight: tokio::sync::Semaphore,
    counters: Counters,
    /// Tile requests pass this gate (`tiles_in_flight` at a time) until their answer's status and headers are
    /// in, so that after a block answer not one more tile request leaves this process.
    tile_gate: tokio::sync::Semaphore,
    /// Set by the first block answer; every later tile request is refused without being sent.
    blocked: std::sync::Mutex<Option<BlockSeen>>,
}

/// The Mapillary API client; cheap to clone and shared by all workers.
#[derive(Clone)]
pub struct ApiClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("graph", &self.inner.graph)
            .field("tiles", &self.inner.tiles)
            .finish()
    }
}

impl ApiClient {
    /// Builds the client (installs the ring TLS provider once); `pacing` says whose calls the
    /// per-minute limits count.
    pub fn new(s: ApiSettings, pacing: Pacing) -> Result<ApiClient, ApiError> {
        // Fails only when a provider is already installed, which is what we want anyway.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let graph = s.graph_url.trim_end_matches('/').to_string();
        let tiles = s.tiles_url.trim_end_matches('/').to_string();
        for (what, u) in [("graph_url", &graph), ("tiles_url", &tiles)] {
            Url::parse(u).map_err(|e| ApiError::Client(format!("{what} {u:?} is not a valid URL: {e}")))?;
        }
        let mut auth_header =
            HeaderValue::from_str(&format!("OAuth {}", s.token.expose())).map_err(|_| {
                ApiError::Client("the access token contains characters not allowed in a header".into())
            })?;
        auth_header.set_sensitive(true);
        let http = reqwest::Client::builder()
            .gzip(true)
            .timeout(s.timeout)
            .connect_timeout(s.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("mly-harvest/", env!("CARGO_PKG_VERSION")))
            // The tile server's per-IP block is a redirect to a login page; following it (or
            // retrying) extends the block (§13.1). The Graph API does not redirect either.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ApiError::Client(error_chain(&e.without_url())))?;
        let source = match pacing {
            Pacing::ThisProcess => Source::local(),
            Pacing::Shared { store, app } => Source::Shared { store, app },
        };
        Ok(ApiClient {
            inner: Arc::new(Inner {
                http,
                graph,
                tiles,
                token: s.token,
                auth_header,
                max_retries: s.max_retries,
                tiles_pacer: Pacer::new(Family::Tiles, None, source.clone()),
                search_pacer: Pacer::new(Family::Search, Some(s.search_per_minute), source.clone()),
                entity_pacer: Pacer::new(Family::Entity, Some(s.entity_per_minute), source),
                tiles_breaker: Breaker::new(s.breaker_after),
                search_breaker: Breaker::new(s.breaker_after),
                entity_breaker: Breaker::new(s.breaker_after),
                counters: Counters::default(),
                tile_gate: tokio::sync::Semaphore::new(s.tiles_in_flight.max(1) as usize),
                search_in_flight: tokio::sync::Semaphore::new(SEARCHES_IN_FLIGHT),
                entity_in_flight: tokio::sync::Semaphore::new(ENTITY_IN_FLIGHT),
                blocked: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Request counts so far.
    pub fn counters(&self) -> ApiCounters {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ApiCounters {
            tiles: g(&c.tiles),
            search: g(&c.search),
            entity: g(&c.entity),
            retries: g(&c.retries),
            throttled: g(&c.throttled),
            not_modified: g(&c.not_modified),
            bytes: g(&c.bytes),
            confirm: g(&c.confirm),
            rate_reservations: self.inner.search_pacer.reservations()
                + self.inner.entity_pacer.reservations(),
            rate_slots_skipped: self.inner.search_pacer.skipped() + self.inner.entity_pacer.skipped(),
        }
    }

    /// The block answer this client met, if any: (when it arrived, what it was).
    pub fn block_seen(&self) -> Option<(chrono::DateTime<chrono::Utc>, String)> {
        self.block_state().as_ref().map(|b| (b.at, b.detail.clone()))
    }

    fn block_state(&self) -> std::sync::MutexGuard<'_, Option<BlockSeen>> {
        // A poisoned lock means a panic mid-assignment of an Option: its value is still whole.
        self.inner.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blocked_error(&self) -> Option<ApiError> {
        self.block_state().as_ref().map(|b| ApiError::Blocked { at: b.at, detail: b.detail.clone() })
    }

    /// Records a block answer (the first one wins) and returns the error for it.
    fn record_block(&self, detail: String) -> ApiError {
        let mut b = self.block_state();
        let seen = b.get_or_insert_with(|| BlockSeen { at: chrono::Utc::now(), detail });
        tracing::error!(detail = %seen.detail, "the tile server blocked this IP; no more tile requests");
        ApiError::Blocked { at: seen.at, detail: seen.detail.clone() }
    }

    /// Maps a refusal the caller has no special meaning for to an error.
    pub(super) fn refusal(&self, context: &str, status: u16, class: Class) -> ApiError {
        let message = match class {
            Class::Auth(m) => return ApiError::Auth { message: self.scrub(&format!("{context}: {m}")) },
            Class::Throttled(m)
            | Class::Transient(m)
            | Class::TooMuch(m)
            | Class::Missing(m)
            | Class::Timeout(m)
            | Class::Permanent(m) => m,
        };
        ApiError::Permanent { context: context.to_string(), status, message: self.scrub(&message) }
    }

    /// Removes the token (plain or percent-encoded) from text that came from outside.
    /// `s` with every token-shaped value and this client's token (in any form) redacted.
    pub(super) fn scrub(&self, s: &str) -> String {
        mly_contract::secret::scrub_with(s, [self.inner.token.expose()])
    }

    pub(super) fn pacer(&self, f: Family) -> &Pacer {
        match f {
            Family::Tiles => &self.inner.tiles_pacer,
            Family::Search => &self.inner.search_pacer,
            Family::Entity => &self.inner.entity_pacer,
        }
    }

    fn breaker(&self, f: Family) -> &Breaker {
        match f {
            Family::Tiles => &self.inner.tiles_breaker,
            Family::Search => &self.inner.search_breaker,
            Family::Entity => &self.inner.entity_breaker,
        }
    }

    /// The error of a tripped breaker: names the host (never the path or query, which may hold
    /// the token) and the last failure.
    pub(super) fn unreachable(&self, family: Family, url: &Url, last: &str) -> ApiError {
        let (service, key) = service(family);
        let host = match (url.host_str(), url.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => "(no host)".to_string(),
        };
        ApiError::Unreachable {
            service,
            host,
            key,
            failures: self.breaker(family).after,
            last: self.scrub(last),
        }
    }

    pub(super) fn count(&self, f: Family) {
        let c = &self.inner.counters;
        match f {
            Family::Tiles => &c.tiles,
            Family::Search => &c.search,
            Family::Entity => &c.entity,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}
