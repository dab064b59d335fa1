//! The simulator's HTTP server: one port serves both the Graph API and the tile paths.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::cdn::{self, Cdn};
use super::encode::{
    SummaryCache, empty_layer_tile, encode_low_zoom, encode_tile, encode_tile_buffered, home_pixel,
};
use super::faults::{Fault, Faults};
use super::graph::{self, Ctx, Fields, UnknownField};
use super::limits::{Family, Limits};
use super::world::{SimImage, World};
use super::{EmptyTile, SimError, SimulateArgs};
use mly_contract::Tileset;
use mly_contract::api::{MAX_SEARCH_AREA_DEG2 as MAX_AREA, SEARCH_LIMIT as MAX_LIMIT};
use mly_contract::hash::{fnv1a, splitmix64 as splitmix};
use mly_contract::secret::redact;
use mly_contract::tiles::{Bbox, EXTENT, HARVEST_ZOOM, TileId};
use mly_contract::token::well_formed;

/// Encoded tiles kept in memory.
const TILE_CACHE_ENTRIES: usize = 512;

/// Shared state of the running simulator.
pub struct AppState {
    world: Arc<World>,
    /// Whether z14 tiles carry the neighbours' records near their edges (§13.5).
    render_buffer: bool,
    /// Per-z14 summaries that tiles below z14 are drawn from.
    summaries: Mutex<SummaryCache>,
    epoch: u32,
    tokens: HashSet<String>,
    empty_tile: EmptyTile,
    dense_limit: usize,
    max_ids: usize,
    throttle_status: StatusCode,
    faults: Faults,
    counter: AtomicU64,
    stats: Mutex<Stats>,
    tiles: Mutex<TileCache>,
    access_log: Option<Mutex<std::fs::File>>,
    /// Base of the URLs the simulator hands out (`paging.next`, image URLs).
    public_url: String,
    cdn: Cdn,
    /// The last global creator search: (username, epoch) and its images, newest first, so paging
    /// through it does not regenerate the creator's tiles for every page.
    creator_cache: Mutex<Option<CreatorSearch>>,
    /// The per-IP tile block of the faults file (§13.1).
    block: Mutex<BlockState>,
    /// Requests per (tileset, tile) so far, for `[tiles] transient_404`.
    tile_asks: Mutex<HashMap<(String, TileId), u64>>,
}

/// Where the simulated per-IP tile block stands.
#[derive(Debug, Default)]
struct BlockState {
    /// Tile requests served since the last block lifted.
    served: u64,
    /// The block lasts until then (each tile request during it pushes this on).
    until: Option<Instant>,
}

/// A finished global creator search: (username, epoch) and the images found.
type CreatorSearch = ((String, u32), Arc<Vec<SimImage>>);

#[derive(Debug)]
struct Stats {
    limits: Limits,
    requests: [u64; 3],
    throttled: u64,
    statuses: BTreeMap<String, u64>,
    faults: BTreeMap<&'static str, u64>,
}

#[derive(Default)]
struct TileCache {
    map: HashMap<(Tileset, TileId, u32), Bytes>,
    order: VecDeque<(Tileset, TileId, u32)>,
}

impl TileCache {
    fn get(&self, k: &(Tileset, TileId, u32)) -> Option<Bytes> {
        self.map.get(k).cloned()
    }

    fn put(&mut self, k: (Tileset, TileId, u32), v: Bytes) {
        if self.map.insert(k, v).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > TILE_CACHE_ENTRIES {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

/// A Graph/tiles error: HTTP status plus the Meta-style `{"error":{...}}` envelope.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

fn fbtrace_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut s = String::from("A");
    for _ in 0..22 {
        s.push(char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]));
    }
    s
}

impl ApiError {
    fn new(status: u16, message: &str, ty: &str, code: i64) -> ApiError {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body =
            json!({"error": {"message": message, "type": ty, "code": code, "fbtrace_id": fbtrace_id()}});
        ApiError { status, body }
    }

    fn with(mut self, key: &str, v: Value) -> ApiError {
        if let Some(e) = self.body.get_mut("error").and_then(Value::as_object_mut) {
            e.insert(key.to_string(), v);
        }
        self
    }

    fn not_found(id: &str) -> ApiError {
        let msg = format!(
            "Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation"
        );
        ApiError::new(400, &msg, "MLYApiException", 100).with("error_subcode", json!(33))
    }

    fn param(msg: &str) -> ApiError {
        ApiError::new(400, msg, "OAuthException", 100)
    }

    fn transient() -> ApiError {
        ApiError::new(500, "Service temporarily unavailable", "MLYApiException", 2)
            .with("is_transient", json!(true))
    }

    /// The query timeout seen on the live service (§13.7): 400, code -2, subcode 3404014, and
    /// `is_transient: false` although a retry succeeded.
    fn query_timeout() -> ApiError {
        ApiError::new(400, "Timeout", "OAuthException", -2)
            .with("error_subcode", json!(3_404_014))
            .with("is_transient", json!(false))
            .with("error_user_title", json!("Query Timeout"))
            .with("error_user_msg", json!("The query took too long to run. Try a smaller query."))
    }

    fn throttle(status: StatusCode) -> ApiError {
        let mut e = ApiError::new(429, "Application request limit reached", "MLYApiException", 4)
            .with("is_transient", json!(true));
        e.status = status;
        e
    }

    fn into_response(self) -> Response {
        json_response(self.status, &self.body)
    }
}

impl From<UnknownField> for ApiError {
    fn from(e: UnknownField) -> ApiError {
        ApiError::param(&e.to_string())
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
    r
}

fn empty_response(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// What a request path asks for.
#[derive(Debug, Clone)]
enum Route {
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
    fn classify(path: &str) -> Route {
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

    fn family(&self) -> Family {
        match self {
            Route::Tile { .. } => Family::Tiles,
            Route::Images | Route::MapFeatures | Route::ImageIds => Family::Search,
            _ => Family::Entity,
        }
    }
}

/// Query parameters, first occurrence wins.
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }
}

/// The position a point has after the tile encoder quantised it to its z14 tile's pixel grid: bbox
/// searches must agree exactly with what the tiles show.
fn tile_position(tile: TileId, lon: f64, lat: f64) -> (f64, f64) {
    let (px, py) = home_pixel(tile, lon, lat);
    tile.pixel_to_lonlat(px as f64, py as f64, EXTENT)
}

/// The (up to) eight tiles around `t`, wrapping across the antimeridian.
fn neighbours8(t: TileId) -> Vec<TileId> {
    let n = 1i64 << t.z;
    let mut out = Vec::with_capacity(8);
    for dy in -1i64..=1 {
        for dx in -1i64..=1 {
            let (x, y) = ((i64::from(t.x) + dx).rem_euclid(n), i64::from(t.y) + dy);
            if (dx, dy) == (0, 0) || !(0..n).contains(&y) {
                continue;
            }
            // x and y are within 0..2^z here, so they fit in u32.
            if let Ok(nb) = TileId::new(t.z, x as u32, y as u32) {
                out.push(nb);
            }
        }
    }
    out
}

/// The z14 tiles a bbox touches.
fn tiles_of_bbox(b: &Bbox) -> Vec<TileId> {
    let n = 1u32 << HARVEST_ZOOM;
    let mut out = Vec::new();
    for part in b.split_antimeridian() {
        let tl = TileId::containing(HARVEST_ZOOM, part.west, part.north);
        let br = TileId::containing(HARVEST_ZOOM, part.east, part.south);
        for x in tl.x.min(n - 1)..=br.x.min(n - 1) {
            for y in tl.y.min(n - 1)..=br.y.min(n - 1) {
                if let Ok(t) = TileId::new(HARVEST_ZOOM, x, y) {
                    out.push(t);
                }
            }
        }
    }
    out
}

fn parse_time(s: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::param(&format!("(#100) Invalid timestamp {s:?}"));
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(d.timestamp_millis());
    }
    if let Ok(d) = chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z") {
        return Ok(d.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()).ok_or_else(bad);
    }
    Err(bad())
}

fn parse_limit(p: &Params) -> Result<usize, ApiError> {
    match p.get("limit") {
        None => Ok(MAX_LIMIT),
        Some(s) => s
            .parse::<usize>()
            .map(|l| l.clamp(1, MAX_LIMIT))
            .map_err(|_| ApiError::param("(#100) Param limit must be a positive integer")),
    }
}

fn parse_bbox(s: &str) -> Result<Bbox, ApiError> {
    let v: Vec<f64> = s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    let bad = || ApiError::param(&format!("(#100) Param bbox must be west,south,east,north, got {s:?}"));
    if v.len() != 4 {
        return Err(bad());
    }
    let b = Bbox::new(v[0], v[1], v[2], v[3]).map_err(|_| bad())?;
    let area = b.area_deg2();
    if area > MAX_AREA {
        let mut shown = format!("{area:.3}");
        if shown == "0.010" {
            shown = format!("{area:.6}");
        }
        let msg = format!(
            "Bounding box area is too large. Maximum allowed area is 0.010 square degrees, but got {shown} square degrees."
        );
        return Err(ApiError::new(500, &msg, "MLYApiException", 1));
    }
    Ok(b)
}

/// The filters of `/images` besides `bbox`.
struct ImageFilter {
    image_ids: Option<Vec<i64>>,
    sequences: Option<Vec<String>>,
    creator: Option<String>,
    organization: Option<i64>,
    start: Option<i64>,
    end: Option<i64>,
    pano: Option<bool>,
}

impl ImageFilter {
    fn parse(p: &Params, max_ids: usize) -> Result<ImageFilter, ApiError> {
        let image_ids = p
            .get("image_ids")
            .map(|s| id_list(s, max_ids))
            .transpose()?
            // An id that is not a number names no image.
            .map(|v| v.iter().filter_map(|id| id.parse().ok()).collect());
        // The documentation says `sequence_ids`, the official SDK sends `sequence_id`: both work.
        let sequences = p
            .get("sequence_ids")
            .or_else(|| p.get("sequence_id"))
            .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect());
        let organization = p
            .get("organization_id")
            .map(|v| {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| ApiError::param("(#100) Param organization_id must be a valid ID"))
            })
            .transpose()?;
        let pano = p
            .get("is_pano")
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(ApiError::param("(#100) Param is_pano must be a boolean")),
            })
            .transpose()?;
        Ok(ImageFilter {
            image_ids,
            sequences,
            creator: p.get("creator_username").map(str::to_string),
            organization,
            start: p.get("start_captured_at").map(parse_time).transpose()?,
            end: p.get("end_captured_at").map(parse_time).transpose()?,
            pano,
        })
    }

    /// Whether `img` passes every filter (both ends of the capture-time range are inclusive).
    fn matches(&self, img: &SimImage) -> bool {
        self.image_ids.as_ref().is_none_or(|ids| ids.contains(&img.id))
            && self.sequences.as_ref().is_none_or(|s| s.contains(&img.sequence_id))
            && self.creator.as_ref().is_none_or(|c| *c == img.creator_username)
            && self.organization.is_none_or(|o| img.organization_id == Some(o))
            && self.start.is_none_or(|s| img.captured_at_ms >= s)
            && self.end.is_none_or(|e| img.captured_at_ms <= e)
            && self.pano.is_none_or(|v| img.is_pano == v)
    }
}

/// An opaque paging cursor naming an image's place in the newest-first order.
fn encode_cursor(img: &SimImage) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{}", img.captured_at_ms, img.id))
}

fn decode_cursor(c: &str) -> Option<(i64, i64)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c.trim()).ok()?;
    let (t, id) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
    Some((t.parse().ok()?, id.parse().ok()?))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn too_much_data() -> ApiError {
    ApiError::new(500, "Please reduce the amount of data you're asking for", "MLYApiException", 1)
}

fn id_list(s: &str, max: usize) -> Result<Vec<String>, ApiError> {
    let ids: Vec<String> = s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect();
    if ids.len() > max {
        return Err(ApiError::param(&format!(
            "(#100) Too many IDs. Maximum: {max}. Provided: {}.",
            ids.len()
        )));
    }
    Ok(ids)
}

/// Percent-encodes everything but unreserved characters (for a URL inside a query value).
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `*` wildcards only, as `object_values` allows.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, rest)) => {
            let Some(tail) = s.strip_prefix(head) else { return false };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

impl AppState {
    /// Builds the state from the command line (loads the faults file, opens the access log);
    /// `local` is the address the simulator listens on (the default base of the URLs it hands out).
    pub fn new(args: &SimulateArgs, local: SocketAddr) -> Result<AppState, SimError> {
        let faults = match &args.faults {
            Some(p) => Faults::load(p)?,
            None => Faults::none(),
        };
        let access_log = match &args.access_log {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| SimError::AccessLog { path: p.display().to_string(), source })?,
            )),
            None => None,
        };
        let throttle_status = StatusCode::from_u16(args.throttle_status).map_err(|_| {
            SimError::BadArg(format!("--throttle-status {} is no HTTP status", args.throttle_status))
        })?;
        let public_url = match &args.public_url {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                u.trim_end_matches('/').to_string()
            }
            Some(u) => {
                return Err(SimError::BadArg(format!("--public-url {u:?} is not an http(s) URL")));
            }
            None => format!("http://{local}"),
        };
        // Told explicitly where the captures are, a missing or unreadable tile is an error, not a
        // silent switch to the synthetic world.
        let fixture = args.fixtures.as_deref().map(super::world::Fixture::load).transpose()?;
        Ok(AppState {
            cdn: Cdn::new(&public_url, args.seed, args.url_ttl),
            public_url,
            creator_cache: Mutex::new(None),
            world: Arc::new(World::with_fixture(args.seed, fixture)),
            render_buffer: !args.no_render_buffer,
            summaries: Mutex::new(SummaryCache::default()),
            epoch: args.epoch,
            tokens: args.token.iter().cloned().collect(),
            empty_tile: args.empty_tile,
            dense_limit: args.dense_limit,
            max_ids: args.max_ids,
            throttle_status,
            faults,
            counter: AtomicU64::new(0),
            stats: Mutex::new(Stats {
                limits: Limits::new(args.tiles_per_day, args.search_per_minute, args.entity_per_minute),
                requests: [0; 3],
                throttled: 0,
                statuses: BTreeMap::new(),
                faults: BTreeMap::new(),
            }),
            tiles: Mutex::new(TileCache::default()),
            access_log,
            block: Mutex::new(BlockState::default()),
            tile_asks: Mutex::new(HashMap::new()),
        })
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        // A poisoned lock only means a panic elsewhere mid-update of counters: keep serving.
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_fault(&self, name: &'static str) {
        *self.stats().faults.entry(name).or_default() += 1;
    }

    /// The `/__sim/stats` document.
    pub fn stats_json(&self) -> Value {
        let s = self.stats();
        let mut per = Map::new();
        let mut maxes = Map::new();
        for f in Family::ALL {
            per.insert(f.name().into(), json!(s.requests[f as usize]));
            maxes.insert(f.name().into(), json!(s.limits.max_per_minute(f)));
        }
        json!({
            "requests": per,
            "throttled": s.throttled,
            "statuses": s.statuses,
            "faults": s.faults,
            "max_per_minute": maxes,
        })
    }

    /// The tile server takes the token only as `?access_token=`; one sent only in an
    /// `Authorization` header (or none at all) is refused with 403, as the live service does (§13.4).
    fn check_tile_auth(&self, headers: &HeaderMap, p: &Params) -> Result<(), ApiError> {
        if p.get("access_token").is_some() {
            return self.check_auth(&HeaderMap::new(), p);
        }
        let msg = if headers.contains_key(header::AUTHORIZATION) {
            "Tile requests take the access token only as the access_token query parameter"
        } else {
            "An access token is required to request this resource"
        };
        Err(ApiError::new(403, msg, "OAuthException", 190))
    }

    fn check_auth(&self, headers: &HeaderMap, p: &Params) -> Result<(), ApiError> {
        if let Some(h) = headers.get(header::AUTHORIZATION) {
            let s = h.to_str().unwrap_or("");
            // Only the `OAuth` keyword is honoured; `Bearer` counts as no token at all.
            if s.len() > 6 && s[..6].eq_ignore_ascii_case("oauth ") {
                let tok = s[6..].trim();
                if self.tokens.contains(tok) {
                    return Ok(());
                }
                if !well_formed(tok) {
                    return Err(ApiError::new(401, "Failed to decode", "OAuthException", 190));
                }
                return Err(ApiError::new(401, "Error validating application", "OAuthException", 190));
            }
        }
        if let Some(tok) = p.get("access_token") {
            if self.tokens.contains(tok) {
                return Ok(());
            }
            if !well_formed(tok) {
                return Err(ApiError::new(400, "Error verifying the token", "OAuthException", 190));
            }
            return Err(ApiError::new(400, "Error validating application", "OAuthException", 190));
        }
        Err(ApiError::new(500, "Invalid OAuth 2.0 Access Token", "MLYApiException", 190)
            .with("error_data", json!({})))
    }

    /// The block answer when the faults file's per-IP block is on and this tile request falls in
    /// it: 302 to the login page, whose `next` echoes the request (token redacted).
    fn block_answer(&self, path: &str, p: &Params) -> Option<Response> {
        let cfg = self.faults.block()?;
        let now = Instant::now();
        let mut b = self.block.lock().unwrap_or_else(|p| p.into_inner());
        let blocked = match b.until {
            Some(until) if now < until => true,
            Some(_) => {
                // Lifted: a fresh allowance of tile requests.
                b.until = None;
                b.served = 0;
                false
            }
            None => false,
        };
        if !blocked && b.served < cfg.after_tiles {
            b.served += 1;
            return None;
        }
        // Asking during a block extends it.
        b.until = Some(now + Duration::from_secs_f64(cfg.secs));
        drop(b);
        let q: Vec<String> =
            p.0.iter()
                .map(|(k, v)| if k == "access_token" { format!("{k}=REDACTED") } else { format!("{k}={v}") })
                .collect();
        let next: String = url_escape(&format!("{path}?{}", q.join("&")));
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::FOUND;
        if let Ok(v) = HeaderValue::from_str(&format!("https://www.mapillary.com/login/?next={next}")) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        Some(r)
    }

    fn empty_tile_response(&self) -> Response {
        match self.empty_tile {
            EmptyTile::Empty200 => protobuf(StatusCode::OK, Bytes::new()),
            EmptyTile::NoContent => empty_response(StatusCode::NO_CONTENT),
            EmptyTile::NotFound => {
                ApiError::new(404, "Tile not found", "MLYApiException", 100).into_response()
            }
            EmptyTile::Forbidden => {
                ApiError::new(403, "Tile does not exist", "MLYApiException", 100).into_response()
            }
            EmptyTile::MvtEmpty => protobuf(StatusCode::OK, Bytes::from(empty_layer_tile())),
        }
    }

    async fn tile(
        self: &Arc<Self>,
        ts: &str,
        z: &str,
        x: &str,
        y: &str,
        headers: &HeaderMap,
    ) -> Result<Response, ApiError> {
        let not_found = |what: &str| ApiError::new(404, what, "MLYApiException", 100);
        let tileset = Tileset::from_name(ts).ok_or_else(|| not_found("Unsupported tileset"))?;
        let (Ok(z), Ok(x), Ok(y)) = (z.parse::<u8>(), x.parse::<u32>(), y.parse::<u32>()) else {
            return Err(not_found("Invalid tile coordinates"));
        };
        let t = TileId::new(z, x, y).map_err(|_| not_found("Invalid tile coordinates"))?;
        if z > HARVEST_ZOOM {
            return Err(not_found("Tile zoom level out of range"));
        }
        // The map-feature tilesets exist at z14 only (§5.2).
        if z < HARVEST_ZOOM && !tileset.is_coverage() {
            return Ok(self.empty_tile_response());
        }
        let key = (tileset, t, self.epoch);
        let cached = self.tiles.lock().unwrap_or_else(|p| p.into_inner()).get(&key);
        let bytes = match cached {
            Some(b) => b,
            None => {
                let st = self.clone();
                let b = tokio::task::spawn_blocking(move || st.render_tile(tileset, t))
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, tile = %format_args!("{}/{}/{}", t.z, t.x, t.y), "tile generation failed");
                        ApiError::transient()
                    })?;
                self.tiles.lock().unwrap_or_else(|p| p.into_inner()).put(key, b.clone());
                b
            }
        };
        if bytes.is_empty() {
            return Ok(self.empty_tile_response());
        }
        let asked = {
            let mut asks = self.tile_asks.lock().unwrap_or_else(|p| p.into_inner());
            let n = asks.entry((ts.to_string(), t)).or_default();
            *n += 1;
            *n - 1
        };
        if self.faults.transient_404(ts, &t, asked) {
            self.count_fault("transient_404");
            return Err(not_found("Tile not found"));
        }
        let etag = format!("\"{:016x}{:x}\"", fnv1a(&bytes), bytes.len());
        let matches = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.trim() == etag || e.trim() == "*"));
        let mut r =
            if matches { empty_response(StatusCode::NOT_MODIFIED) } else { protobuf(StatusCode::OK, bytes) };
        if let Ok(v) = HeaderValue::from_str(&etag) {
            r.headers_mut().insert(header::ETAG, v);
        }
        Ok(r)
    }

    /// The bytes of a z14 tile (runs on the blocking pool: it may generate tiles of the world).
    fn render_tile(&self, tileset: Tileset, t: TileId) -> Bytes {
        if t.z < HARVEST_ZOOM {
            let computed = tileset == Tileset::ComputedPublic;
            return Bytes::from(encode_low_zoom(&self.world, &self.summaries, t, self.epoch, computed));
        }
        if tileset == Tileset::Public
            && let Some(real) = self.world.verbatim_public_tile(t)
        {
            // A real capture is served as captured (it predates the render buffer).
            return Bytes::copy_from_slice(real);
        }
        let tw = self.world.tile(t, self.epoch);
        if !self.render_buffer {
            return Bytes::from(encode_tile(&tw, tileset));
        }
        let neighbours: Vec<_> = neighbours8(t).into_iter().map(|n| self.world.tile(n, self.epoch)).collect();
        Bytes::from(encode_tile_buffered(&tw, &neighbours, tileset))
    }

    fn ctx(&self, now_s: i64) -> Ctx<'_> {
        Ctx { world: &self.world, epoch: self.epoch, now_s, cdn: &self.cdn }
    }

    fn entity(&self, id: &str, f: &Fields, now_s: i64) -> Result<Value, ApiError> {
        let Ok(n) = id.parse::<i64>() else { return Err(ApiError::not_found(id)) };
        if let Some(img) = self.world.image(n, self.epoch) {
            return Ok(graph::image_json(&self.ctx(now_s), &img, f)?);
        }
        if let Some(feat) = self.world.map_feature(n, self.epoch) {
            return Ok(graph::feature_json(&self.ctx(now_s), &feat, f)?);
        }
        if let Some(user) = self.world.user(n) {
            return Ok(graph::user_json(&user, f)?);
        }
        Err(ApiError::not_found(id))
    }

    /// Handles every Graph route (runs on the blocking pool: it may generate tiles of the world).
    fn graph(&self, route: &Route, p: &Params) -> Result<Value, ApiError> {
        let now_s = chrono::Utc::now().timestamp();
        let f = Fields::parse(p.get("fields"));
        match route {
            Route::Entity(id) => self.entity(id, &f, now_s),
            Route::Multi => {
                let Some(ids) = p.get("ids") else {
                    return Err(ApiError::param("(#100) Missing parameter: ids"));
                };
                let ids = id_list(ids, self.max_ids)?;
                let mut m = Map::new();
                for id in ids {
                    let v = self.entity(&id, &f, now_s)?;
                    m.insert(id, v);
                }
                Ok(Value::Object(m))
            }
            Route::Detections(id) => {
                let Ok(n) = id.parse::<i64>() else { return Err(ApiError::not_found(id)) };
                let dets = self
                    .world
                    .detections_of_image(n, self.epoch)
                    .or_else(|| self.world.detections_of_feature(n, self.epoch))
                    .ok_or_else(|| ApiError::not_found(id))?;
                Ok(graph::detections_json(&self.ctx(now_s), &dets, &f)?)
            }
            Route::ImageIds => {
                let Some(seq) = p.get("sequence_id") else {
                    return Err(ApiError::param("(#100) Missing parameter: sequence_id"));
                };
                let ids = self.world.sequence(seq, self.epoch).map(|s| s.image_ids).unwrap_or_default();
                let data: Vec<Value> = ids.iter().map(|i| json!({"id": i.to_string()})).collect();
                Ok(json!({ "data": data }))
            }
            Route::Images => self.search_images(p, &f, now_s),
            Route::MapFeatures => self.search_features(p, &f, now_s),
            Route::Unknown(path) => Err(ApiError::not_found(path.trim_start_matches('/'))),
            Route::Stats | Route::Tile { .. } => Err(ApiError::param("(#100) Unsupported request")),
        }
    }

    /// `/images`: a bbox search (one page, capped at `limit`, refused when the service would have
    /// to read more than `--dense-limit` matches to fill it), or a search by `image_ids`,
    /// `sequence_id(s)` or `creator_username` without a bbox (newest first, paged with
    /// `paging.cursors.after` / `paging.next`). Every other parameter narrows either.
    fn search_images(&self, p: &Params, f: &Fields, now_s: i64) -> Result<Value, ApiError> {
        let limit = parse_limit(p)?;
        let filter = ImageFilter::parse(p, self.max_ids)?;
        let ctx = self.ctx(now_s);
        let render = |imgs: &[SimImage]| {
            imgs.iter().map(|i| graph::image_json(&ctx, i, f)).collect::<Result<Vec<_>, _>>()
        };
        if let Some(b) = p.get("bbox") {
            let b = parse_bbox(b)?;
            let mut found: Vec<SimImage> = Vec::new();
            let mut read = 0usize;
            'tiles: for t in tiles_of_bbox(&b) {
                let tw = self.world.tile(t, self.epoch);
                for img in &tw.images {
                    let (lon, lat) = tile_position(tw.tile, img.lon, img.lat);
                    if !b.contains(lon, lat) {
                        continue;
                    }
                    // The volume refusal is about what the service must read to fill the answer
                    // (§13.14: `limit=1` on the densest bbox answers): an answer that fills up
                    // early reads little, a filter that rejects most of a dense area reads it all.
                    read += 1;
                    if read > self.dense_limit {
                        return Err(too_much_data());
                    }
                    if filter.matches(img) {
                        found.push(img.clone());
                        if found.len() == limit {
                            break 'tiles;
                        }
                    }
                }
            }
            return Ok(json!({ "data": render(&found)? }));
        }
        let all: Arc<Vec<SimImage>> = if let Some(ids) = &filter.image_ids {
            Arc::new(ids.iter().filter_map(|id| self.world.image(*id, self.epoch)).collect())
        } else if let Some(seqs) = &filter.sequences {
            let mut v = Vec::new();
            for s in seqs {
                if let Some(seq) = self.world.sequence(s, self.epoch) {
                    v.extend(seq.image_ids.iter().filter_map(|i| self.world.image(*i, self.epoch)));
                }
            }
            Arc::new(v)
        } else if let Some(name) = &filter.creator {
            self.creator_images(name)
        } else {
            return Err(ApiError::param(
                "(#100) One of bbox, image_ids, sequence_ids or creator_username is required",
            ));
        };
        let mut hits: Vec<&SimImage> = all.iter().filter(|i| filter.matches(i)).collect();
        hits.sort_unstable_by_key(|i| std::cmp::Reverse((i.captured_at_ms, i.id)));
        hits.dedup_by_key(|i| i.id);
        let start = match p.get("after") {
            None => 0,
            Some(c) => {
                let key = decode_cursor(c).ok_or_else(|| ApiError::param("(#100) Invalid cursor"))?;
                // Newest first: the next page starts at the first image older than the cursor.
                hits.partition_point(|i| (i.captured_at_ms, i.id) >= key)
            }
        };
        let page: Vec<SimImage> = hits.iter().skip(start).take(limit).map(|i| (*i).clone()).collect();
        let mut out = Map::new();
        out.insert("data".into(), Value::Array(render(&page)?));
        if let (Some(first), Some(last)) = (page.first(), page.last()) {
            let after = encode_cursor(last);
            let mut paging = json!({"cursors": {"before": encode_cursor(first), "after": after}});
            if start + page.len() < hits.len() {
                paging["next"] = json!(self.next_url("/images", p, &after));
            }
            out.insert("paging".into(), paging);
        }
        Ok(Value::Object(out))
    }

    /// Every image of the creators called `name`, cached for the paging that follows.
    fn creator_images(&self, name: &str) -> Arc<Vec<SimImage>> {
        let key = (name.to_string(), self.epoch);
        let mut cache = self.creator_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, v)) = cache.as_ref()
            && *k == key
        {
            return v.clone();
        }
        let mut v = Vec::new();
        for user in self.world.users_named(name) {
            for t in self.world.creator_tiles(user) {
                let tw = self.world.tile(t, self.epoch);
                v.extend(tw.images.iter().filter(|i| i.creator_id == user).cloned());
            }
        }
        let v = Arc::new(v);
        *cache = Some((key, v.clone()));
        v
    }

    /// The URL of the next page: this request without the token, with `after` set (§13.8).
    fn next_url(&self, path: &str, p: &Params, after: &str) -> String {
        let mut q: Vec<String> =
            p.0.iter()
                .filter(|(k, _)| k != "access_token" && k != "after")
                .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
                .collect();
        q.push(format!("after={}", pct(after)));
        format!("{}{path}?{}", self.public_url, q.join("&"))
    }

    fn search_features(&self, p: &Params, f: &Fields, now_s: i64) -> Result<Value, ApiError> {
        let limit = parse_limit(p)?;
        let Some(b) = p.get("bbox") else {
            return Err(ApiError::param("(#100) Missing parameter: bbox"));
        };
        let b = parse_bbox(b)?;
        let values: Vec<&str> =
            p.get("object_values").map(|v| v.split(',').map(str::trim).collect()).unwrap_or_default();
        let mut found = Vec::new();
        let mut read = 0usize;
        // As for images: refused when filling the answer means reading more than --dense-limit.
        'tiles: for t in tiles_of_bbox(&b) {
            let tw = self.world.tile(t, self.epoch);
            for feat in &tw.features {
                let (lon, lat) = tile_position(tw.tile, feat.lon, feat.lat);
                if !b.contains(lon, lat) {
                    continue;
                }
                read += 1;
                if read > self.dense_limit {
                    return Err(too_much_data());
                }
                if values.is_empty() || values.iter().any(|v| glob(v, &feat.value)) {
                    found.push(feat.clone());
                    if found.len() == limit {
                        break 'tiles;
                    }
                }
            }
        }
        let data = found
            .iter()
            .map(|x| graph::feature_json(&self.ctx(now_s), x, f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json!({ "data": data }))
    }

    async fn process(
        self: &Arc<Self>,
        route: Route,
        n: u64,
        p: Params,
        headers: HeaderMap,
        conn: Option<ConnCtl>,
    ) -> (Response, Option<&'static str>) {
        let family = route.family();
        self.stats().requests[family as usize] += 1;
        // The block is per IP: it comes before the token is even looked at.
        if let Route::Tile { tileset, z, x, y } = &route
            && let Some(resp) = self.block_answer(&format!("/maps/vtp/{tileset}/2/{z}/{x}/{y}"), &p)
        {
            self.count_fault("block");
            return (resp, Some("block"));
        }
        let auth = match route {
            Route::Tile { .. } => self.check_tile_auth(&headers, &p),
            _ => self.check_auth(&headers, &p),
        };
        if let Err(e) = auth {
            return (e.into_response(), None);
        }
        let admission = self.stats().limits.admit(family, Instant::now());
        if !admission.allowed {
            self.stats().throttled += 1;
            return (ApiError::throttle(self.throttle_status).into_response(), None);
        }
        if let Route::Tile { z, x, y, .. } = &route
            && let (Ok(z), Ok(x), Ok(y)) = (z.parse(), x.parse(), y.parse())
            && TileId::new(z, x, y).is_ok_and(|t| self.faults.is_permanent(&t))
        {
            self.count_fault("permanent");
            return (ApiError::transient().into_response(), Some("permanent"));
        }
        let fault = self.faults.draw(family, n);
        if let Some(fault) = fault {
            self.count_fault(fault.name());
        }
        let mut truncate = false;
        match fault {
            None => {}
            Some(Fault::Error5xx) => return (ApiError::transient().into_response(), Some("error_5xx")),
            Some(Fault::Throttle) => {
                self.stats().throttled += 1;
                return (ApiError::throttle(self.throttle_status).into_response(), Some("throttle"));
            }
            Some(Fault::Reset) => {
                if let Some(c) = &conn {
                    c.0.store(true, Ordering::SeqCst);
                }
                return (empty_response(StatusCode::INTERNAL_SERVER_ERROR), Some("reset"));
            }
            Some(Fault::Corrupt) => {
                // A layer tag with a length far beyond the body: no protobuf decoder accepts it.
                let mut b = vec![0x1a, 0xff, 0xff, 0xff, 0xff, 0x0f];
                let mut h = splitmix(n);
                for _ in 0..64 {
                    h = splitmix(h);
                    b.push(h as u8);
                }
                return (protobuf(StatusCode::OK, Bytes::from(b)), Some("corrupt"));
            }
            Some(Fault::QueryTimeout) => {
                return (ApiError::query_timeout().into_response(), Some("query_timeout"));
            }
            Some(Fault::Slow(secs)) => tokio::time::sleep(Duration::from_secs_f64(secs)).await,
            Some(Fault::Truncate) => truncate = true,
        }
        let resp = match route {
            Route::Tile { tileset, z, x, y } => {
                self.tile(&tileset, &z, &x, &y, &headers).await.unwrap_or_else(ApiError::into_response)
            }
            route => {
                let st = self.clone();
                match tokio::task::spawn_blocking(move || st.graph(&route, &p)).await {
                    Ok(Ok(v)) => json_response(StatusCode::OK, &v),
                    Ok(Err(e)) => e.into_response(),
                    Err(e) => {
                        tracing::error!(error = %e, "graph handler failed");
                        ApiError::transient().into_response()
                    }
                }
            }
        };
        if truncate {
            return (truncated(resp).await, Some("truncate"));
        }
        (resp, fault.map(Fault::name))
    }

    /// Serves an image URL: a flat JPEG of the signed size, or the CDN's 403 for an expired or
    /// forged URL.
    fn image_bytes(&self, opaque: &str, p: &Params) -> Response {
        let now_s = chrono::Utc::now().timestamp();
        let refused = |why: cdn::CdnRefusal| {
            let mut r = Response::new(Body::from(why.to_string()));
            *r.status_mut() = StatusCode::FORBIDDEN;
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        };
        let req = match self.cdn.verify(opaque, &p.0, now_s) {
            Ok(r) => r,
            Err(why) => return refused(why),
        };
        let (Ok(w), Ok(h)) = (u16::try_from(req.width), u16::try_from(req.height)) else {
            return refused(cdn::CdnRefusal::BadHash);
        };
        let mut r = Response::new(Body::from(cdn::flat_jpeg(w, h, cdn::grey_level(req.id))));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
        r
    }

    fn log_request(
        &self,
        status: &str,
        family: &str,
        ms: u128,
        path: &str,
        query: &str,
        fault: Option<&str>,
    ) {
        let Some(log) = &self.access_log else { return };
        let q = if query.is_empty() { String::new() } else { format!("?{}", redact(query)) };
        let line = format!(
            "{} {status} {} {ms}ms {path}{q}{}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            family,
            fault.map(|f| format!(" fault={f}")).unwrap_or_default()
        );
        let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "cannot write the access log");
        }
    }
}

fn protobuf(status: StatusCode, bytes: Bytes) -> Response {
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
    r
}

/// Announces more bytes than it sends, then aborts the connection mid-body.
async fn truncated(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let announced = bytes.len() + bytes.len().max(16);
    let half = bytes.slice(..bytes.len() / 2);
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(half) }).chain(
        futures::stream::once(async {
            // Give hyper time to flush the partial body before the error aborts the connection.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(std::io::Error::other("truncated by fault injection"))
        }),
    );
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(announced));
    Response::from_parts(parts, Body::from_stream(stream))
}

async fn handle(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let route = Route::classify(&path);
    if let Route::Stats = route {
        return json_response(StatusCode::OK, &st.stats_json());
    }
    let params =
        Params(Query::<Vec<(String, String)>>::try_from_uri(req.uri()).map(|q| q.0).unwrap_or_default());
    if let Some(opaque) = path.strip_prefix(cdn::PATH_PREFIX) {
        // Image bytes come from the CDN: no token, no API quota, no API faults (§4.3, §7).
        let resp = st.image_bytes(opaque, &params);
        let status = resp.status().as_u16().to_string();
        st.log_request(&status, "cdn", started.elapsed().as_millis(), &path, &query, None);
        return resp;
    }
    let family = route.family();
    let n = st.counter.fetch_add(1, Ordering::Relaxed);
    let conn = req.extensions().get::<ConnectInfo<ConnCtl>>().map(|c| c.0.clone());
    let headers = req.headers().clone();
    // Only the app's own calls (a token the simulator issued) report the app's usage.
    let app_call = st.check_auth(&headers, &params).is_ok();
    let (mut resp, fault) = st.process(route, n, params, headers, conn).await;
    if app_call {
        let usage = st.stats().limits.usage_percent(family, Instant::now());
        let usage = format!("{{\"call_count\":{usage},\"total_cputime\":0,\"total_time\":0}}");
        if let Ok(v) = HeaderValue::from_str(&usage) {
            resp.headers_mut().insert("x-app-usage", v);
        }
    }
    let status =
        if fault == Some("reset") { "reset".to_string() } else { resp.status().as_u16().to_string() };
    *st.stats().statuses.entry(status.clone()).or_default() += 1;
    let ms = started.elapsed().as_millis();
    tracing::debug!(status = %status, family = family.name(), ms = ms as u64, path = %path, "request");
    st.log_request(&status, family.name(), ms, &path, &query, fault);
    resp
}

/// Builds the router over shared state.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// Per-connection switch: once set, every write fails, so hyper drops the connection unanswered.
#[derive(Clone, Debug)]
pub struct ConnCtl(Arc<AtomicBool>);

/// A TCP stream whose writes can be made to fail (for the `reset` fault).
pub struct KillableStream {
    inner: TcpStream,
    kill: Arc<AtomicBool>,
}

fn killed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by fault injection")
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        if me.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut me.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A TCP listener handing out [`KillableStream`]s.
pub struct KillableListener(pub TcpListener);

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((s, addr)) => {
                    // Small JSON answers must not wait for Nagle.
                    let _ = s.set_nodelay(true);
                    return (KillableStream { inner: s, kill: Arc::new(AtomicBool::new(false)) }, addr);
                }
                Err(e) => {
                    // Accept errors (e.g. too many open files) are transient: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnCtl {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        ConnCtl(stream.io().kill.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_and_routes() {
        assert!(glob("regulatory--*", "regulatory--stop--g1"));
        assert!(glob("*--g1", "regulatory--stop--g1"));
        assert!(!glob("warning--*", "regulatory--stop--g1"));
        assert!(matches!(Route::classify("/123/detections"), Route::Detections(_)));
        assert!(matches!(Route::classify("/maps/vtp/mly1_public/2/14/1/2"), Route::Tile { .. }));
        assert!(matches!(Route::classify("/"), Route::Multi));
    }
}
