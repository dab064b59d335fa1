//! The HTTP client: one retry loop shared by tiles and Graph calls, with classification,
//! pacing, size caps and token scrubbing.

// Paged and filtered image searches (scope harvests) use this module's retry loop.
pub(super) mod paged;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::error::{ApiError, Class, classify};
use super::graph;
use super::limiter::{Pacer, Source};
use super::{
    ApiCounters, ApiSettings, ByIds, DETECTION_FIELDS, IMAGE_FIELDS, MAP_FEATURE_FIELDS, MAX_IDS_PER_CALL,
    Pacing, SEARCH_LIMIT, Search, TileResponse, redact,
};
use crate::model::{Detection, ImageDetails, ImageId, MapFeatureDetails, MapFeatureId};
use mly_contract::Tileset;
use mly_contract::tiles::{Bbox, TileId};

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

/// What a family talks to, and the config key of its URL, for the breaker's message.
fn service(f: Family) -> (&'static str, &'static str) {
    match f {
        Family::Tiles => ("the tile server", "tiles_url"),
        Family::Search => ("the Graph API (searches)", "graph_url"),
        Family::Entity => ("the Graph API (lookups)", "graph_url"),
    }
}

/// One family's circuit breaker: counts calls in a row that failed to connect or timed out.
/// Any answer from the server (whatever its status) resets the count; reaching the limit trips
/// it for the rest of the process, and every waiting retry of the family wakes up and fails.
struct Breaker {
    after: u32,
    in_a_row: AtomicU32,
    /// `Some(error)` once tripped; receivers wait on it instead of sleeping out their backoff.
    tripped: tokio::sync::watch::Sender<Option<Arc<str>>>,
}

impl Breaker {
    fn new(after: u32) -> Breaker {
        Breaker {
            after: after.max(1),
            in_a_row: AtomicU32::new(0),
            tripped: tokio::sync::watch::Sender::new(None),
        }
    }

    /// The breaker's error message once it has tripped.
    fn tripped(&self) -> Option<Arc<str>> {
        self.tripped.borrow().clone()
    }

    /// An answer came back: the host is reachable.
    fn answered(&self) {
        self.in_a_row.store(0, Ordering::Relaxed);
    }

    /// A call failed to connect or timed out; trips the breaker on the `after`-th in a row.
    fn failed(&self, message: &str) {
        let n = self.in_a_row.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n >= self.after {
            self.tripped.send_if_modified(|t| {
                if t.is_some() {
                    return false;
                }
                *t = Some(Arc::from(message));
                true
            });
        }
    }

    /// Resolves when the breaker trips (at once if it has).
    async fn wait_tripped(&self) {
        let mut rx = self.tripped.subscribe();
        // Err only when the sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(Option::is_some).await;
    }
}

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
enum Narrow {
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

    /// Fetches one vector tile; sends `If-None-Match` when an etag is given.
    pub async fn tile(
        &self,
        ts: Tileset,
        tile: TileId,
        etag: Option<&str>,
    ) -> Result<TileResponse, ApiError> {
        let context = format!("while fetching {} tile {}/{}/{}", ts.name(), tile.z, tile.x, tile.y);
        let mut url = self
            .url(&self.inner.tiles, &format!("maps/vtp/{}/2/{}/{}/{}", ts.name(), tile.z, tile.x, tile.y))?;
        url.query_pairs_mut().append_pair("access_token", self.inner.token.expose());
        let mut headers = HeaderMap::new();
        if let Some(e) = etag
            && let Ok(v) = HeaderValue::from_str(e)
        {
            headers.insert(header::IF_NONE_MATCH, v);
        }
        match self.execute(Family::Tiles, url, headers, &context, TILE_CAP, false).await? {
            Reply::Ok { status: 304, .. } => {
                self.inner.counters.not_modified.fetch_add(1, Ordering::Relaxed);
                Ok(TileResponse::NotModified)
            }
            Reply::Ok { status: 204, .. } => Ok(TileResponse::Empty),
            Reply::Ok { body, .. } if body.is_empty() => Ok(TileResponse::Empty),
            // A page where a tile should be: an MVT starts with a field tag, never with '<'.
            Reply::Ok { status, body, .. } if looks_like_markup(&body) => {
                Err(self.record_block(format!("HTTP {status} with an HTML page instead of a tile")))
            }
            Reply::Ok { headers, body, .. } => {
                let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
                Ok(TileResponse::Data { bytes: body, etag })
            }
            Reply::Refused { status: 403 | 404, .. } => Ok(TileResponse::Empty),
            Reply::Refused { status, class } => Err(self.refusal(&context, status, class)),
        }
    }

    /// One small Graph API search (`/images?bbox=…&limit=1&fields=id`, the call Mapillary's own
    /// clients use to check a token): Ok when the API answers it, `Auth` when it refuses the token.
    pub async fn check_token(&self, bbox: &Bbox) -> Result<(), ApiError> {
        let context = format!("while checking the token with a search in bbox {}", bbox.to_query());
        let mut url = self.url(&self.inner.graph, "images")?;
        url.query_pairs_mut()
            .append_pair("bbox", &bbox.to_query())
            .append_pair("fields", "id")
            .append_pair("limit", "1");
        match self.execute(Family::Search, url, HeaderMap::new(), &context, JSON_CAP, true).await? {
            Reply::Ok { .. } | Reply::Refused { class: Class::TooMuch(_), .. } => Ok(()),
            Reply::Refused { status, class } => Err(self.refusal(&context, status, class)),
        }
    }

    /// Whether a Graph search finds any image in `bbox` (`limit=1&fields=id`, a question the API
    /// answers even for its densest areas, §13.14). `None` when the service would not say (a
    /// query timeout or a refusal for volume): callers take that as "may hold images".
    pub async fn any_image(&self, bbox: &Bbox) -> Result<Option<bool>, ApiError> {
        let mut unknown = false;
        for part in bbox.split_antimeridian() {
            let context = format!("while probing for images in bbox {}", part.to_query());
            let mut url = self.url(&self.inner.graph, "images")?;
            url.query_pairs_mut()
                .append_pair("bbox", &part.to_query())
                .append_pair("fields", "id")
                .append_pair("limit", "1");
            match self.execute(Family::Search, url, HeaderMap::new(), &context, JSON_CAP, true).await? {
                Reply::Ok { body, .. } => {
                    let v = json(&body, &context)?;
                    if v["data"].as_array().is_some_and(|d| !d.is_empty()) {
                        return Ok(Some(true));
                    }
                }
                Reply::Refused { class: Class::TooMuch(_) | Class::Timeout(_), .. } => unknown = true,
                Reply::Refused { status, class } => return Err(self.refusal(&context, status, class)),
            }
        }
        Ok(if unknown { None } else { Some(false) })
    }

    /// All images in a bbox, or `TooMuch` when the box must be split.
    pub async fn search_images(&self, bbox: &Bbox) -> Result<Search<ImageDetails>, ApiError> {
        self.search("images", "images", IMAGE_FIELDS, bbox, graph::parse_image, None).await
    }

    /// All map features in a bbox, or `TooMuch` when the box must be split.
    pub async fn search_map_features(&self, bbox: &Bbox) -> Result<Search<MapFeatureDetails>, ApiError> {
        self.search("map_features", "map features", MAP_FEATURE_FIELDS, bbox, graph::parse_map_feature, None)
            .await
    }

    /// Images by id (any number; chunked by 50). Missing ids are found by bisection.
    pub async fn images_by_id(&self, ids: &[ImageId]) -> Result<ByIds<ImageDetails>, ApiError> {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        self.by_ids("images", &ids, IMAGE_FIELDS, |_, v| graph::parse_image(v)).await
    }

    /// Map features by id (any number; chunked by 50).
    pub async fn map_features_by_id(
        &self,
        ids: &[MapFeatureId],
    ) -> Result<ByIds<MapFeatureDetails>, ApiError> {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        self.by_ids("map features", &ids, MAP_FEATURE_FIELDS, |_, v| graph::parse_map_feature(v)).await
    }

    /// Detections of images via `/?ids=..&fields=detections.id,detections.value,detections.created_at,detections.geometry`.
    /// `found` holds one (possibly empty) list per existing image; each detection names its image.
    pub async fn detections_by_image(&self, ids: &[ImageId]) -> Result<ByIds<Vec<Detection>>, ApiError> {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        self.by_ids("detections of images", &ids, DETECTION_FIELDS, |id, v| {
            graph::parse_image_detections(v, ImageId(id))
        })
        .await
    }

    fn url(&self, base: &str, path: &str) -> Result<Url, ApiError> {
        Url::parse(&format!("{base}/{path}"))
            .map_err(|e| ApiError::Client(format!("cannot build a URL from {base:?} and {path:?}: {e}")))
    }

    async fn search<T>(
        &self,
        endpoint: &str,
        what: &str,
        fields: &str,
        bbox: &Bbox,
        parse: fn(&Value) -> Result<T, String>,
        filter: Option<&crate::model::ImageFilter>,
    ) -> Result<Search<T>, ApiError> {
        let mut all = Vec::new();
        // The API takes west < east only; a box across the antimeridian is two searches.
        for part in bbox.split_antimeridian() {
            let context = format!("while searching {what} in bbox {}", part.to_query());
            let mut url = self.url(&self.inner.graph, endpoint)?;
            url.query_pairs_mut().append_pair("bbox", &part.to_query());
            if let Some(f) = filter {
                paged::append_filter(f, &mut url);
            }
            url.query_pairs_mut()
                .append_pair("fields", fields)
                .append_pair("limit", &SEARCH_LIMIT.to_string());
            match self.execute(Family::Search, url, HeaderMap::new(), &context, JSON_CAP, true).await? {
                Reply::Ok { body, .. } => {
                    let v = json(&body, &context)?;
                    let items = graph::parse_collection(&v, parse).map_err(|m| ApiError::Decode {
                        context: context.clone(),
                        message: self.scrub(&m),
                    })?;
                    if items.len() >= SEARCH_LIMIT {
                        return Ok(Search::TooMuch);
                    }
                    all.extend(items);
                }
                // A query timeout outlasted its retry: a smaller box is what the service asks for.
                Reply::Refused { class: Class::TooMuch(_) | Class::Timeout(_), .. } => {
                    return Ok(Search::TooMuch);
                }
                Reply::Refused { status, class } => return Err(self.refusal(&context, status, class)),
            }
        }
        Ok(Search::Complete(all))
    }

    /// A multi-id lookup of any number of ids (chunked by 50), unknown ids found by bisection.
    pub(super) async fn by_ids<T>(
        &self,
        what: &str,
        ids: &[i64],
        fields: &str,
        parse: impl Fn(i64, &Value) -> Result<T, String>,
    ) -> Result<ByIds<T>, ApiError> {
        self.lookup(what, ids, fields, parse, Narrow::Bisect).await
    }

    /// Images by id to confirm which are gone: each call is counted in `confirm`, and a batch
    /// refused for an unknown id is asked id by id (most of them are expected to be gone).
    pub async fn confirm_images(&self, ids: &[ImageId]) -> Result<ByIds<ImageDetails>, ApiError> {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        self.lookup("images", &ids, IMAGE_FIELDS, |_, v| graph::parse_image(v), Narrow::OneByOne).await
    }

    /// Map features by id to confirm which are gone (see [`ApiClient::confirm_images`]).
    pub async fn confirm_map_features(
        &self,
        ids: &[MapFeatureId],
    ) -> Result<ByIds<MapFeatureDetails>, ApiError> {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        self.lookup(
            "map features",
            &ids,
            MAP_FEATURE_FIELDS,
            |_, v| graph::parse_map_feature(v),
            Narrow::OneByOne,
        )
        .await
    }

    async fn lookup<T>(
        &self,
        what: &str,
        ids: &[i64],
        fields: &str,
        parse: impl Fn(i64, &Value) -> Result<T, String>,
        narrow: Narrow,
    ) -> Result<ByIds<T>, ApiError> {
        let mut seen = HashSet::new();
        let unique: Vec<i64> = ids.iter().copied().filter(|i| seen.insert(*i)).collect();
        // The batches of 50 overlap: the entity pacer keeps their rate, and their latencies add
        // up no more.
        // Built eagerly (they start only when polled): a closure in the stream would defeat the
        // compiler's proof that the whole future is Send.
        let batches: Vec<_> = unique
            .chunks(MAX_IDS_PER_CALL)
            .map(|chunk| self.lookup_batch(what, chunk, fields, &parse, narrow))
            .collect();
        let mut batches = futures::stream::iter(batches).buffer_unordered(LOOKUPS_IN_FLIGHT);
        let mut out = ByIds { found: Vec::new(), missing: Vec::new() };
        while let Some(r) = batches.next().await {
            let by = r?;
            out.found.extend(by.found);
            out.missing.extend(by.missing);
        }
        Ok(out)
    }

    /// One batch of at most 50 ids; a batch refused for an unknown id is split in halves (or
    /// asked id by id) until the culprits stand alone.
    async fn lookup_batch<T>(
        &self,
        what: &str,
        chunk: &[i64],
        fields: &str,
        parse: &impl Fn(i64, &Value) -> Result<T, String>,
        narrow: Narrow,
    ) -> Result<ByIds<T>, ApiError> {
        let mut out = ByIds { found: Vec::new(), missing: Vec::new() };
        // Depth-first bisection: a batch refused for an unknown id is split in halves
        // until the culprits stand alone.
        let mut stack: Vec<&[i64]> = vec![chunk];
        while let Some(batch) = stack.pop() {
            let list = batch.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            let context = format!("while looking up {} {what} ({}…)", batch.len(), batch[0]);
            let mut url = self.url(&self.inner.graph, "")?;
            url.query_pairs_mut().append_pair("ids", &list).append_pair("fields", fields);
            if narrow == Narrow::OneByOne {
                self.inner.counters.confirm.fetch_add(1, Ordering::Relaxed);
            }
            match self.execute(Family::Entity, url, HeaderMap::new(), &context, JSON_CAP, true).await? {
                Reply::Ok { body, .. } => {
                    let v = json(&body, &context)?;
                    let map = v.as_object().ok_or_else(|| ApiError::Decode {
                        context: context.clone(),
                        message: "the ?ids= response is not an object keyed by id".into(),
                    })?;
                    for id in batch {
                        match map.get(&id.to_string()) {
                            Some(item) => out.found.push(parse(*id, item).map_err(|m| ApiError::Decode {
                                context: context.clone(),
                                message: self.scrub(&m),
                            })?),
                            None => out.missing.push(*id),
                        }
                    }
                }
                Reply::Refused { class: Class::Missing(_), .. } if batch.len() == 1 => {
                    out.missing.push(batch[0]);
                }
                Reply::Refused { class: Class::Missing(_), .. } if narrow == Narrow::OneByOne => {
                    stack.extend(batch.chunks(1).rev());
                }
                // Unknown ids are found by halving; a timed-out batch asks for less the same way.
                Reply::Refused { class: Class::Missing(_) | Class::Timeout(_), .. } if batch.len() > 1 => {
                    let (a, b) = batch.split_at(batch.len() / 2);
                    stack.push(b);
                    stack.push(a);
                }
                Reply::Refused { class: Class::Timeout(m), .. } => {
                    return Err(ApiError::Transient {
                        context: context.clone(),
                        attempts: TIMEOUT_RETRIES + 1,
                        message: self.scrub(&format!("query timeout: {m}")),
                    });
                }
                Reply::Refused { status, class } => return Err(self.refusal(&context, status, class)),
            }
        }
        Ok(out)
    }

    /// Maps a refusal the caller has no special meaning for to an error.
    fn refusal(&self, context: &str, status: u16, class: Class) -> ApiError {
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
    fn scrub(&self, s: &str) -> String {
        mly_contract::secret::scrub_with(s, [self.inner.token.expose()])
    }

    fn pacer(&self, f: Family) -> &Pacer {
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
    fn unreachable(&self, family: Family, url: &Url, last: &str) -> ApiError {
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

    fn count(&self, f: Family) {
        let c = &self.inner.counters;
        match f {
            Family::Tiles => &c.tiles,
            Family::Search => &c.search,
            Family::Entity => &c.entity,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// The retry loop: pace, send, read capped body, classify; retry transient failures with
    /// jittered exponential backoff and throttles after a family-wide cooldown.
    async fn execute(
        &self,
        family: Family,
        url: Url,
        extra: HeaderMap,
        context: &str,
        cap: usize,
        json_body: bool,
    ) -> Result<Reply, ApiError> {
        let safe_url = redact(url.as_str());
        let max_retries = self.inner.max_retries;
        // Throttles get their own, larger budget: they mean "slower", not "broken".
        let max_throttles = max_retries.saturating_mul(2).saturating_add(2);
        let (mut attempts, mut throttles, mut retries, mut timeouts) = (0u32, 0u32, 0u32, 0u32);
        let breaker = self.breaker(family);
        loop {
            if let Some(last) = breaker.tripped() {
                return Err(self.unreachable(family, &url, &last));
            }
            attempts += 1;
            // A place in flight first, then a pace slot: a slot must not pass while the call
            // waits for its place. (The semaphores are never closed: acquiring never fails.)
            let _in_flight = match family {
                Family::Search => self.inner.search_in_flight.acquire().await.ok(),
                Family::Entity => self.inner.entity_in_flight.acquire().await.ok(),
                Family::Tiles => None,
            };
            let pacer = self.pacer(family);
            pacer
                .ready()
                .await
                .map_err(|source| ApiError::Pacing { context: context.to_string(), source })?;
            // The semaphore is never closed, so acquiring fails never; a failure would only mean
            // "no gate", never a second request in its place.
            let mut gate =
                if family == Family::Tiles { self.inner.tile_gate.acquire().await.ok() } else { None };
            if family == Family::Tiles
                && let Some(e) = self.blocked_error()
            {
                return Err(e);
            }
            self.count(family);
            let started = Instant::now();
            let mut req = self.inner.http.get(url.clone()).headers(extra.clone());
            if family != Family::Tiles {
                req = req.header(header::AUTHORIZATION, self.inner.auth_header.clone());
            }
            let outcome = match req.send().await {
                Err(e) => {
                    let no_answer = e.is_connect() || e.is_timeout();
                    let message = self.scrub(&error_chain(&e.without_url()));
                    if no_answer {
                        breaker.failed(&message);
                    } else {
                        breaker.answered();
                    }
                    Err(message)
                }
                Ok(resp) => {
                    breaker.answered();
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    if family == Family::Tiles
                        && let Some(detail) = block_answer(status, &headers)
                    {
                        tracing::debug!(family = family.name(), url = %safe_url, status = status.as_u16(), "block answer");
                        return Err(self.record_block(detail));
                    }
                    // Status and headers are in: the next tile request may go.
                    drop(gate.take());
                    match read_capped(resp, cap).await {
                        Ok(body) => Ok((status, headers, body)),
                        Err(ReadError::TooLarge) => {
                            tracing::warn!(family = family.name(), url = %safe_url, cap, "response over the size cap");
                            return Err(ApiError::TooLarge { context: context.to_string() });
                        }
                        Err(ReadError::Http(e)) => {
                            let timed_out = e.is_timeout();
                            let message = self.scrub(&error_chain(&e.without_url()));
                            // A body that stops arriving until the timeout counts like no answer.
                            if timed_out {
                                breaker.failed(&message);
                            }
                            Err(message)
                        }
                    }
                }
            };
            drop(gate);
            let ms = started.elapsed().as_millis() as u64;
            let retry_after;
            let message = match outcome {
                Err(message) => {
                    tracing::debug!(family = family.name(), url = %safe_url, status = 0u16, ms, error = %message, "request failed");
                    retry_after = None;
                    message
                }
                Ok((status, headers, body)) => {
                    self.inner.counters.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    tracing::debug!(family = family.name(), url = %safe_url, status = status.as_u16(), ms, bytes = body.len(), "request");
                    if status.is_success() || status == StatusCode::NOT_MODIFIED {
                        if json_body
                            && status != StatusCode::NO_CONTENT
                            && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err()
                        {
                            retry_after = None;
                            "invalid JSON in a 2xx response (truncated?)".to_string()
                        } else {
                            pacer.succeeded();
                            return Ok(Reply::Ok { status: status.as_u16(), headers, body });
                        }
                    } else {
                        match classify(status.as_u16(), &body) {
                            Class::Auth(m) => {
                                return Err(ApiError::Auth {
                                    message: self.scrub(&format!("{context}: {m}")),
                                });
                            }
                            Class::Throttled(m) => {
                                self.inner.counters.throttled.fetch_add(1, Ordering::Relaxed);
                                throttles += 1;
                                let pause = pacer.throttled(retry_after_of(&headers));
                                let message =
                                    format!("HTTP {}: throttled: {}", status.as_u16(), self.scrub(&m));
                                if throttles > max_throttles {
                                    return Err(ApiError::Transient {
                                        context: context.to_string(),
                                        attempts,
                                        message,
                                    });
                                }
                                tracing::warn!(family = family.name(), url = %safe_url, status = status.as_u16(), pause_ms = pause.as_millis() as u64, throttles, "throttled; slowing down");
                                self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Class::Transient(m) => {
                                retry_after = retry_after_of(&headers);
                                format!("HTTP {}: {}", status.as_u16(), self.scrub(&m))
                            }
                            Class::Timeout(_) if timeouts < TIMEOUT_RETRIES => {
                                timeouts += 1;
                                self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(family = family.name(), url = %safe_url, "query timeout; retrying once");
                                tokio::time::sleep(backoff(1)).await;
                                continue;
                            }
                            class => return Ok(Reply::Refused { status: status.as_u16(), class }),
                        }
                    }
                }
            };
            if let Some(last) = breaker.tripped() {
                return Err(self.unreachable(family, &url, &last));
            }
            if retries >= max_retries {
                return Err(ApiError::Transient { context: context.to_string(), attempts, message });
            }
            retries += 1;
            self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
            let delay = retry_after.map_or_else(|| backoff(retries), |r| r.min(BACKOFF_CAP));
            tracing::warn!(family = family.name(), url = %safe_url, attempt = attempts, delay_ms = delay.as_millis() as u64, error = %message, "transient failure; retrying");
            // A breaker tripped by another call ends this wait at once (checked at the loop's top).
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = breaker.wait_tripped() => {}
            }
        }
    }
}

/// What a tile answer's status and headers say about a per-IP block, if they say one: any
/// redirect (never followed), or an HTML page. Names the redirect's host only: the Location
/// echoes the request URL, token included.
fn block_answer(status: StatusCode, headers: &HeaderMap) -> Option<String> {
    if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
        let host = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| Url::parse(l).ok())
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| "an unknown place".into());
        return Some(format!("HTTP {} redirect to {host}", status.as_u16()));
    }
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/html"));
    (status.is_success() && html)
        .then(|| format!("HTTP {} with an HTML page instead of a tile", status.as_u16()))
}

/// Whether a body is markup (HTML/XML) rather than a protobuf tile.
fn looks_like_markup(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<')
}

/// Full-jitter-ish exponential backoff: between half and all of `base * 2^(n-1)`, capped.
pub(crate) fn backoff(n: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(BACKOFF_CAP);
    exp.mul_f64(0.5 + fastrand::f64() * 0.5)
}

fn retry_after_of(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

fn json(body: &[u8], context: &str) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::Decode { context: context.to_string(), message: e.to_string() })
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

/// Reads the body, refusing to hold more than `cap` bytes.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Bytes, ReadError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Http)? {
        if buf.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A reqwest error with its causes, which name the actual failure (reset, timeout, …).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_answers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LOCATION,
            HeaderValue::from_static(
                "https://www.mapillary.com/login/?next=%2Fmaps%3Faccess_token%3DMLY%7C1",
            ),
        );
        let d = block_answer(StatusCode::FOUND, &h).unwrap();
        assert_eq!(d, "HTTP 302 redirect to www.mapillary.com");
        assert!(block_answer(StatusCode::NOT_MODIFIED, &HeaderMap::new()).is_none());
        let mut html = HeaderMap::new();
        html.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        assert!(block_answer(StatusCode::OK, &html).is_some());
        assert!(block_answer(StatusCode::NOT_FOUND, &html).is_none());
        assert!(looks_like_markup(b"  <!DOCTYPE html><html>"));
        assert!(!looks_like_markup(&[0x1a, 0x3c]));
        assert!(!looks_like_markup(b""));
    }

    #[test]
    fn backoff_grows_and_caps() {
        for n in 1..30 {
            let d = backoff(n);
            assert!(d <= BACKOFF_CAP, "{n}: {d:?}");
            assert!(d >= BACKOFF_BASE / 2, "{n}: {d:?}");
        }
        assert!(backoff(6) >= Duration::from_secs(4));
    }
}
