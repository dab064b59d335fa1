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
use geozero::mvt::{Message, Tile, tile};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::encode::encode_tile;
use super::faults::{Fault, Faults, splitmix};
use super::graph::{self, Fields, UnknownField};
use super::limits::{Family, Limits};
use super::world::{SimImage, World};
use super::{EmptyTile, SimError, SimulateArgs};
use crate::model::Tileset;
use crate::tiles::{Bbox, EXTENT, HARVEST_ZOOM, TileId};

/// Largest `limit` the search endpoints honour (and their default).
const MAX_LIMIT: usize = 2000;
/// The bbox area cap of the search endpoints, in square degrees.
const MAX_AREA: f64 = 0.010;
/// Encoded tiles kept in memory.
const TILE_CACHE_ENTRIES: usize = 512;

/// Shared state of the running simulator.
pub struct AppState {
    world: Arc<World>,
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

/// Replaces the value of every `access_token=` in a query string by `REDACTED`.
pub fn redact_query(q: &str) -> String {
    q.split('&')
        .map(|part| if part.starts_with("access_token=") { "access_token=REDACTED" } else { part })
        .collect::<Vec<_>>()
        .join("&")
}

/// `MLY|<digits>|<32 lowercase hex>`, the shape of client tokens.
fn well_formed(tok: &str) -> bool {
    let mut it = tok.split('|');
    let (Some(a), Some(b), Some(c), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return false;
    };
    a == "MLY"
        && !b.is_empty()
        && b.bytes().all(|c| c.is_ascii_digit())
        && c.len() == 32
        && c.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// An MVT with one empty layer, as an earlier Mapillary tile API served for empty tiles.
fn empty_mvt() -> Vec<u8> {
    let layer = tile::Layer {
        version: 2,
        name: "mapillary-empty".into(),
        extent: Some(EXTENT),
        ..Default::default()
    };
    Tile { layers: vec![layer] }.encode_to_vec()
}

/// The position a point has after the tile encoder quantised it to its z14 tile's pixel grid: bbox
/// searches must agree exactly with what the tiles show.
fn tile_position(tile: TileId, lon: f64, lat: f64) -> (f64, f64) {
    let (px, py) = tile.lonlat_to_pixel(lon, lat, EXTENT);
    let e = f64::from(EXTENT);
    tile.pixel_to_lonlat(px.round().clamp(0.0, e), py.round().clamp(0.0, e), EXTENT)
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
    /// Builds the state from the command line (loads the faults file, opens the access log).
    pub fn new(args: &SimulateArgs) -> Result<AppState, SimError> {
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
        Ok(AppState {
            world: Arc::new(World::new(args.seed)),
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
    fn block_answer(&self, p: &Params) -> Option<Response> {
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
        let next: String = url_escape(&q.join("&"));
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::FOUND;
        if let Ok(v) = HeaderValue::from_str(&format!("https://www.mapillary.com/login/?next=%3F{next}")) {
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
            EmptyTile::MvtEmpty => protobuf(StatusCode::OK, Bytes::from(empty_mvt())),
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
        // Overview and sequence layers below z14 are not simulated; such tiles answer as empty.
        if z < HARVEST_ZOOM {
            return Ok(self.empty_tile_response());
        }
        let key = (tileset, t, self.epoch);
        let cached = self.tiles.lock().unwrap_or_else(|p| p.into_inner()).get(&key);
        let bytes = match cached {
            Some(b) => b,
            None => {
                let world = self.world.clone();
                let epoch = self.epoch;
                let b = tokio::task::spawn_blocking(move || Bytes::from(encode_tile(&world.tile(t, epoch), tileset)))
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

    fn entity(&self, id: &str, f: &Fields, now_s: i64) -> Result<Value, ApiError> {
        let Ok(n) = id.parse::<i64>() else { return Err(ApiError::not_found(id)) };
        if let Some(img) = self.world.image(n, self.epoch) {
            return Ok(graph::image_json(&self.world, self.epoch, &img, f, now_s)?);
        }
        if let Some(feat) = self.world.map_feature(n, self.epoch) {
            return Ok(graph::feature_json(&self.world, self.epoch, &feat, f, now_s)?);
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
                Ok(graph::detections_json(&self.world, self.epoch, &dets, &f)?)
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

    fn search_images(&self, p: &Params, f: &Fields, now_s: i64) -> Result<Value, ApiError> {
        let limit = parse_limit(p)?;
        let start = p.get("start_captured_at").map(parse_time).transpose()?;
        let end = p.get("end_captured_at").map(parse_time).transpose()?;
        let pano = p.get("is_pano").map(|v| v == "true");
        let org = p.get("organization_id").map(|v| v.parse::<i64>().unwrap_or(-1));
        let mut found: Vec<SimImage> = Vec::new();
        if let Some(ids) = p.get("image_ids") {
            for id in id_list(ids, self.max_ids)? {
                if let Some(img) = id.parse().ok().and_then(|n| self.world.image(n, self.epoch)) {
                    found.push(img);
                }
            }
        } else if let Some(seqs) = p.get("sequence_ids").or_else(|| p.get("sequence_id")) {
            for s in seqs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if let Some(seq) = self.world.sequence(s, self.epoch) {
                    found.extend(seq.image_ids.iter().filter_map(|i| self.world.image(*i, self.epoch)));
                }
            }
        } else if let Some(b) = p.get("bbox") {
            let b = parse_bbox(b)?;
            for t in tiles_of_bbox(&b) {
                let tw = self.world.tile(t, self.epoch);
                for img in &tw.images {
                    let (lon, lat) = tile_position(tw.tile, img.lon, img.lat);
                    if b.contains(lon, lat) {
                        found.push(img.clone());
                        if found.len() > self.dense_limit {
                            return Err(too_much_data());
                        }
                    }
                }
            }
        } else {
            return Err(ApiError::param("(#100) One of bbox, image_ids or sequence_ids is required"));
        }
        let data = found
            .iter()
            .filter(|i| start.is_none_or(|s| i.captured_at_ms >= s))
            .filter(|i| end.is_none_or(|e| i.captured_at_ms <= e))
            .filter(|i| pano.is_none_or(|v| i.is_pano == v))
            .filter(|i| org.is_none_or(|o| i.organization_id == Some(o)))
            .take(limit)
            .map(|i| graph::image_json(&self.world, self.epoch, i, f, now_s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json!({ "data": data }))
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
        for t in tiles_of_bbox(&b) {
            let tw = self.world.tile(t, self.epoch);
            for feat in &tw.features {
                let (lon, lat) = tile_position(tw.tile, feat.lon, feat.lat);
                if b.contains(lon, lat) && (values.is_empty() || values.iter().any(|v| glob(v, &feat.value)))
                {
                    found.push(feat.clone());
                    if found.len() > self.dense_limit {
                        return Err(too_much_data());
                    }
                }
            }
        }
        let data = found
            .iter()
            .take(limit)
            .map(|x| graph::feature_json(&self.world, self.epoch, x, f, now_s))
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
        if family == Family::Tiles
            && let Some(resp) = self.block_answer(&p)
        {
            self.count_fault("block");
            return (resp, Some("block"));
        }
        if let Err(e) = self.check_auth(&headers, &p) {
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

    fn log_request(
        &self,
        status: &str,
        family: Family,
        ms: u128,
        path: &str,
        query: &str,
        fault: Option<&str>,
    ) {
        let Some(log) = &self.access_log else { return };
        let q = if query.is_empty() { String::new() } else { format!("?{}", redact_query(query)) };
        let line = format!(
            "{} {status} {} {ms}ms {path}{q}{}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            family.name(),
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
    let family = route.family();
    let n = st.counter.fetch_add(1, Ordering::Relaxed);
    let conn = req.extensions().get::<ConnectInfo<ConnCtl>>().map(|c| c.0.clone());
    let headers = req.headers().clone();
    let (mut resp, fault) = st.process(route, n, params, headers, conn).await;
    let usage = st.stats().limits.usage_percent(family, Instant::now());
    let usage = format!("{{\"call_count\":{usage},\"total_cputime\":0,\"total_time\":0}}");
    if let Ok(v) = HeaderValue::from_str(&usage) {
        resp.headers_mut().insert("x-app-usage", v);
    }
    let status =
        if fault == Some("reset") { "reset".to_string() } else { resp.status().as_u16().to_string() };
    *st.stats().statuses.entry(status.clone()).or_default() += 1;
    let ms = started.elapsed().as_millis();
    tracing::debug!(status = %status, family = family.name(), ms = ms as u64, path = %path, "request");
    st.log_request(&status, family, ms, &path, &query, fault);
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
    fn redaction_and_token_shape() {
        assert_eq!(redact_query("a=1&access_token=MLY|1|x&b=2"), "a=1&access_token=REDACTED&b=2");
        assert!(well_formed("MLY|4000000000000001|0123456789abcdef0123456789abcdef"));
        assert!(!well_formed("MLY|bogus"));
        assert!(!well_formed("MLY|1|0123456789ABCDEF0123456789abcdef"));
    }

    #[test]
    fn glob_and_routes() {
        assert!(glob("regulatory--*", "regulatory--stop--g1"));
        assert!(glob("*--g1", "regulatory--stop--g1"));
        assert!(!glob("warning--*", "regulatory--stop--g1"));
        assert!(matches!(Route::classify("/123/detections"), Route::Detections(_)));
        assert!(matches!(Route::classify("/maps/vtp/mly1_public/2/14/1/2"), Route::Tile { .. }));
        assert!(matches!(Route::classify("/"), Route::Multi));
    }

    #[test]
    fn empty_mvt_decodes() {
        let t = Tile::decode(empty_mvt().as_slice()).unwrap();
        assert_eq!(t.layers[0].name, "mapillary-empty");
    }
}
