//! The simulator's HTTP server: one port serves both the Graph API and the tile paths.
//!
//! A request passes, in order: the per-IP tile block (`block`), the token (`auth`), the family's
//! rate limit, the faults file (`faulted`), then its handler (`tiles`, `graph_api`, `search`;
//! image bytes in `image_bytes`). Every answer is counted (`stats`) and logged (`access_log`).

mod access_log;
mod answer;
mod auth;
mod block;
mod conn;
mod faulted;
mod graph_api;
mod image_bytes;
mod params;
mod route;
mod search;
mod stats;
mod tiles;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

use crate::cdn::{self, Cdn};
use crate::encode::SummaryCache;
use crate::faults::{Fault, Faults};
use crate::graph::Ctx;
use crate::latency::{Channel, Latency};
use crate::limits::Limits;
use crate::world::{SimImage, World};
use crate::{EmptyTile, SimError, SimulateArgs};
use answer::{ApiError, json_response, truncated};
use block::BlockState;
use faulted::Faulted;
use mly_contract::tiles::TileId;
use route::{Params, Route};
use stats::Stats;
use tiles::TileCache;

pub(crate) use conn::{ConnCtl, KillableListener};

/// Shared state of the running simulator.
pub(crate) struct AppState {
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
    /// How long answers take (`--latency`).
    latency: Latency,
}

/// A finished global creator search: (username, epoch) and the images found.
type CreatorSearch = ((String, u32), Arc<Vec<SimImage>>);

impl AppState {
    /// Builds the state from the command line (loads the faults file, opens the access log);
    /// `local` is the address the simulator listens on (the default base of the URLs it hands out).
    pub(crate) fn new(args: &SimulateArgs, local: SocketAddr) -> Result<AppState, SimError> {
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
        let fixture = args.fixtures.as_deref().map(crate::world::Fixture::load).transpose()?;
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
            stats: Mutex::new(Stats::new(Limits::new(
                args.tiles_per_day,
                args.search_per_minute,
                args.entity_per_minute,
            ))),
            tiles: Mutex::new(TileCache::default()),
            access_log,
            block: Mutex::new(BlockState::default()),
            tile_asks: Mutex::new(HashMap::new()),
            latency: Latency::new(args.latency, args.seed),
        })
    }

    /// What rendering Graph JSON needs.
    fn ctx(&self, now_s: i64) -> Ctx<'_> {
        Ctx { world: &self.world, epoch: self.epoch, now_s, cdn: &self.cdn }
    }

    /// The answer to an API request (not the CDN's, not the stats) and the fault that shaped it.
    async fn process(
        self: &Arc<Self>,
        route: Route,
        n: u64,
        p: Params,
        headers: HeaderMap,
        conn: Option<ConnCtl>,
    ) -> (Response, Option<&'static str>) {
        let family = route.family();
        self.stats().count_request(family);
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
        if let Some(answer) = self.permanent_failure(&route) {
            return answer;
        }
        let fault = self.faults.draw(family, n);
        let mut truncate = false;
        if let Some(fault) = fault {
            self.count_fault(fault.name());
            match self.faulted(fault, n, conn.as_ref()) {
                Faulted::Answer(resp) => return (resp, Some(fault.name())),
                Faulted::Slow(delay) => tokio::time::sleep(delay).await,
                Faulted::Truncate => truncate = true,
            }
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
        // Image bytes come from the CDN: no token, no API quota, no API faults (§4.3, §7). Its
        // query holds the URL's expiry, so the path alone names the request.
        let delay = st.latency.draw(Channel::Cdn, path.as_bytes());
        let resp = st.image_bytes(opaque, &params);
        answer_after(started, delay).await;
        let status = resp.status().as_u16().to_string();
        st.log_request(&status, "cdn", started.elapsed().as_millis(), &path, &query, None);
        return resp;
    }
    let family = route.family();
    let delay = st.latency.draw(Channel::Api(family), &request_identity(&path, &params));
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
    answer_after(started, delay).await;
    let status =
        if fault == Some("reset") { "reset".to_string() } else { resp.status().as_u16().to_string() };
    st.stats().count_status(&status);
    let ms = started.elapsed().as_millis();
    let latency_ms = delay.map_or(0, |d| d.as_millis() as u64);
    tracing::debug!(status = %status, family = family.name(), ms = ms as u64, latency_ms, path = %path, "request");
    st.log_request(&status, family.name(), ms, &path, &query, fault);
    resp
}

/// Holds the answer until `delay` after the request arrived (the latency model; its draw already
/// includes the time the simulator itself took). A timer, not a thread: waits overlap freely.
async fn answer_after(started: Instant, delay: Option<Duration>) {
    if let Some(d) = delay {
        tokio::time::sleep_until((started + d).into()).await;
    }
}

/// What names an API request for the latency draws: its path and query without the token.
fn request_identity(path: &str, p: &Params) -> Vec<u8> {
    let mut id = path.as_bytes().to_vec();
    for (k, v) in p.0.iter().filter(|(k, _)| k != "access_token") {
        id.push(0);
        id.extend_from_slice(k.as_bytes());
        id.push(b'=');
        id.extend_from_slice(v.as_bytes());
    }
    id
}

/// Builds the router over shared state.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}
