//! The sync pipeline: plan → fetch → decode → enrich → store.
//!
//! A run's tiles live in `harvest_tile`; workers claim them with leases, and each tile is fetched
//! (rate limited, within the daily tile budget), decoded on the blocking pool, diffed against the
//! database, enriched only where new or changed, and written together with its done-state in one
//! transaction. At most `limits.concurrency` tiles are in flight, so memory stays flat.

pub mod block;
pub mod enrich;
pub mod interrupt;
pub mod plan;
mod progress;
pub mod trace;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{ApiClient, ApiCounters, ApiError, Pacing, TileResponse};
use crate::budget;
use crate::jobs::{self, Claimed, JobsError, PlannedTile, RunId};
use crate::model::{DecodedTile, ImageId, MapFeatureId, TileFeature, TileImage};
use crate::mvt;
use crate::region::Region;
use crate::settings::SyncSettings;
use crate::store::{
    DetectionRow, FeatureRow, ImageRow, Known, MovedAway, Stage, Store, StoreError, TileWrite, Vanished,
    WriteCounts,
};
use crate::workers;
use mly_contract::hash::fnv1a;
use mly_contract::tiles::{HARVEST_ZOOM, TileId};

use enrich::Located;

/// A tile is given up (state `failed`) after this many attempts.
const MAX_TILE_ATTEMPTS: i32 = 3;
/// How often a process with nothing to claim checks on tiles other processes hold.
const OTHERS_POLL: Duration = Duration::from_millis(500);
/// A corrupt tile body is fetched again this many times before the attempt fails.
const DECODE_RETRIES: u32 = 2;
/// A tile that held live records and reads empty (or 403/404) is read again this many times,
/// later in the run, before its records are checked by id (§13.3: a dense tile can 404 for a while).
const EMPTY_REREADS: i16 = 2;

/// Options of one `sync` invocation.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Re-enrich records enriched before this age.
    pub refresh_older_than: Option<Duration>,
    /// Stop after this many tiles.
    pub max_tiles: Option<u64>,
    /// The UTC day the tile budget counts against (default today).
    pub budget_day: Option<NaiveDate>,
    /// Receives the run's counters however the run ends (for the metrics file).
    pub trace: Option<Arc<trace::RunTrace>>,
    /// Ask the tile server even though a block is recorded for this machine.
    pub ignore_block: bool,
}

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(
        "Mapillary refused the access token ({0}); check MAPILLARY_ACCESS_TOKEN / mapillary.access_token"
    )]
    Auth(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Jobs(#[from] JobsError),
    #[error("{0}")]
    Api(ApiError),
    /// The circuit breaker tripped: an API host does not answer (the message names it).
    #[error("{0}")]
    Unreachable(String),
    /// The tile server blocked this IP (now, or in a run before and the block is not over).
    #[error("{}", .0.message())]
    Blocked(block::Block),
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every tile done.
    Done,
    /// Some tiles failed for good; a re-run retries them.
    Partial,
    /// The daily tile budget ran out; the next run carries on.
    QuotaExhausted,
    /// Stopped by a signal or `--max-tiles`; the next run carries on.
    Stopped,
}

/// Record counters of a run.
#[derive(Debug, Default)]
pub struct Counters {
    pub tiles_done: AtomicU64,
    pub tiles_failed: AtomicU64,
    pub tiles_unchanged: AtomicU64,
    pub images: AtomicU64,
    pub features: AtomicU64,
    pub new: AtomicU64,
    pub changed: AtomicU64,
    pub deleted: AtomicU64,
    pub enriched: AtomicU64,
    pub missing: AtomicU64,
    /// Live records gone from their tile but confirmed present upstream: kept.
    pub missing_from_tile: AtomicU64,
    /// Live records gone from their tile that the Graph API places in another tile: moved.
    pub moved_away: AtomicU64,
    /// Tiles read again later because they read empty while holding live records.
    pub rechecked: AtomicU64,
}

/// The end-of-run summary.
#[derive(Debug, serde::Serialize)]
pub struct SyncSummary {
    pub run_id: i64,
    pub resumed: bool,
    pub outcome: Outcome,
    pub tiles_total: i64,
    pub tiles_done: i64,
    pub tiles_failed: i64,
    pub tiles_pending: i64,
    pub this_process: serde_json::Value,
    pub requests: ApiCounters,
    pub seconds: f64,
}

impl SyncSummary {
    /// The human-readable summary.
    pub fn render(&self) -> String {
        let p = &self.this_process;
        format!(
            "run {} ({}) {:?}: tiles {}/{} done, {} failed, {} pending\n  this process: {} tiles ({} unchanged), {} images, {} features; {} new, {} changed, {} deleted (confirmed by {} Graph calls); {} missing_from_tile (kept), {} moved out, {} tiles re-read; {} enriched, {} missing upstream\n  requests: {} tiles ({} not modified), {} search, {} entity; {} retries, {} throttled; {:.1} s",
            self.run_id,
            if self.resumed { "resumed" } else { "new" },
            self.outcome,
            self.tiles_done,
            self.tiles_total,
            self.tiles_failed,
            self.tiles_pending,
            p["tiles_done"],
            p["tiles_unchanged"],
            p["images"],
            p["features"],
            p["new"],
            p["changed"],
            p["deleted"],
            self.requests.confirm,
            p["missing_from_tile"],
            p["moved_away"],
            p["rechecked"],
            p["enriched"],
            p["missing"],
            self.requests.tiles,
            self.requests.not_modified,
            self.requests.search,
            self.requests.entity,
            self.requests.retries,
            self.requests.throttled,
            self.seconds
        )
    }
}

impl progress::Source for Ctx {
    fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let r = self.api.counters();
        format!(
            "images {} features {} | new {} changed {} deleted {} | requests: tiles {} search {} entity {} | retries {} throttled {}",
            g(&self.counters.images),
            g(&self.counters.features),
            g(&self.counters.new),
            g(&self.counters.changed),
            g(&self.counters.deleted),
            r.tiles,
            r.search,
            r.entity,
            r.retries,
            r.throttled
        )
    }
}

impl Counters {
    fn snapshot(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "tiles_done": g(&self.tiles_done), "tiles_failed": g(&self.tiles_failed),
            "tiles_unchanged": g(&self.tiles_unchanged), "images": g(&self.images),
            "features": g(&self.features), "new": g(&self.new), "changed": g(&self.changed),
            "deleted": g(&self.deleted), "enriched": g(&self.enriched), "missing": g(&self.missing),
            "missing_from_tile": g(&self.missing_from_tile), "moved_away": g(&self.moved_away),
            "rechecked": g(&self.rechecked),
        })
    }
}

/// Shared state of the workers of one run.
struct Ctx {
    settings: SyncSettings,
    store: Store,
    api: ApiClient,
    run: RunId,
    owner: String,
    /// Whose tile budget and pace this run spends (the token's app).
    app: budget::AppKey,
    limits: budget::TileLimits,
    refresh_before: Option<chrono::DateTime<Utc>>,
    counters: Counters,
    /// Set when the run must stop claiming (signal, token refused, budget spent).
    stop: AtomicBool,
    /// Set when the API stopped the run (token refused, host unreachable): tiles still waiting
    /// for their pace slot do not start. (A spent budget lets granted tiles finish.)
    halted: AtomicBool,
    /// Rows written when the tables were last analyzed (see `analyze_when_grown`).
    analyzed_at: AtomicU64,
    /// Where a tile server block is recorded for this run's tile server and machine.
    block_key: block::BlockKey,
    /// `--ignore-block`: do not look for a recorded block before each tile request.
    ignore_block: bool,
}

/// What one tile's processing ended in.
enum TileEnd {
    Written,
    /// Retryable failure; goes back to pending (or failed after MAX_TILE_ATTEMPTS).
    Retry(String),
    /// Permanent failure for this tile.
    Fail(String),
    /// The token was refused: stop everything.
    Auth(String),
    /// The circuit breaker tripped (an API host does not answer): stop everything.
    Unreachable(String),
    /// Another worker owns the tile now (our lease expired); nothing to do.
    LeaseLost,
    /// SIGINT/SIGTERM arrived before anything was written; the tile is released for the next run.
    Stopped,
    /// The run stopped before the tile's slot came; it is handed back at the end of the run.
    NotStarted,
    /// The tile read empty while the database holds live records for it: read it again later.
    Recheck,
    /// The tile server blocked this IP: stop every tile request. `recorded` when the block came
    /// from the database (another process met it), else it is recorded when settled.
    Blocked {
        at: chrono::DateTime<Utc>,
        detail: String,
        recorded: Option<block::Block>,
    },
}

/// Harvests `region` (or resumes its unfinished run) and returns the summary.
pub async fn sync(
    settings: &SyncSettings,
    store: &Store,
    region: &Region,
    opts: SyncOptions,
) -> Result<SyncSummary, PipelineError> {
    let started = Instant::now();
    let run_span = info_span!("run", region = %region.name);
    async move {
        if settings.api.token.is_empty() {
            return Err(PipelineError::Auth("no access token is configured".into()));
        }
        let tiles = region.tiles(HARVEST_ZOOM);
        let planned: Vec<PlannedTile> = tiles
            .iter()
            .flat_map(|t| settings.harvest.tilesets.iter().map(|ts| PlannedTile { tileset: *ts, tile: *t }))
            .collect();
        let run_settings = serde_json::json!({
            "region": region.key,
            "tilesets": settings.harvest.tilesets.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "enrich": settings.harvest.enrich,
            "detections": settings.harvest.detections,
        });
        let run_key = format!("{:016x}", fnv1a(run_settings.to_string().as_bytes()));
        // A recorded block stops the run before it asks the tile server anything (or changes
        // any job state): every request during a block extends it.
        let block_key = block::BlockKey::new(&settings.api.tiles_url);
        if !opts.ignore_block
            && let Some(b) = block::active(store, &block_key).await?
        {
            return Err(PipelineError::Blocked(b));
        }
        let (run, resumed) =
            jobs::start_or_resume(store, &region.name, &region.to_wkb(), &run_key, &run_settings, &planned).await?;
        info!(run = %run, resumed, tiles = planned.len(), "run started");

        // Graph calls take slots of the app's timelines, shared by every process on the token.
        let app = budget::AppKey::from_token(settings.api.token.expose());
        let pacing = Pacing::Shared { store: store.clone(), app: app.clone() };
        let api = ApiClient::new(settings.api.clone(), pacing).map_err(PipelineError::Api)?;
        let refresh_before = opts
            .refresh_older_than
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| Utc::now() - d);
        let ctx = Arc::new(Ctx {
            settings: settings.clone(),
            store: store.clone(),
            api,
            run,
            owner: jobs::owner_id(),
            app,
            limits: budget::TileLimits {
                per_day: settings.limits.tiles_per_day,
                per_minute: settings.limits.tiles_per_minute,
            },
            refresh_before,
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            halted: AtomicBool::new(false),
            analyzed_at: AtomicU64::new(0),
            block_key,
            ignore_block: opts.ignore_block,
        });
        let _trace = trace::Guard::new(opts.trace.as_ref(), &ctx);
        // Listed by `status` while the run is in progress (heartbeat with the lease renewal).
        workers::register(store, run, &ctx.owner, settings.harvest.lease).await?;
        let outcome = drive(&ctx, &opts, planned.len() as u64).await;
        debug!(stages = %store.times().summary(), "time per stage, summed over tiles");
        jobs::release(store, run, &ctx.owner).await?;
        // After an interrupt, stop promptly: linking is idempotent and the next sync does it.
        if settings.harvest.detections && !interrupt::is_set() {
            let linked = store.link_detections().await?;
            info!(linked, "detections linked to map features");
        }
        let counters = serde_json::json!({ "requests": ctx.api.counters(), "process": ctx.counters.snapshot() });
        let summary = jobs::finish(store, run, &counters).await?;
        // A clean end: no longer listed by `status`.
        workers::deregister(store, &ctx.owner).await?;
        // The run's bookkeeping is written above even when the claim loop failed.
        let outcome = match outcome? {
            DriveEnd::Quota => Outcome::QuotaExhausted,
            DriveEnd::Stopped => Outcome::Stopped,
            // `--max-tiles` that happened to take the last tiles finished the run: report it as
            // such, or "loop while stopped" would never end.
            DriveEnd::MaxTiles if summary.pending > 0 => Outcome::Stopped,
            DriveEnd::Finished | DriveEnd::MaxTiles if summary.failed > 0 => Outcome::Partial,
            DriveEnd::Finished if summary.pending > 0 => Outcome::Stopped,
            DriveEnd::Finished | DriveEnd::MaxTiles => Outcome::Done,
        };
        let s = SyncSummary {
            run_id: run.0,
            resumed,
            outcome,
            tiles_total: summary.total,
            tiles_done: summary.done,
            tiles_failed: summary.failed,
            tiles_pending: summary.pending,
            this_process: ctx.counters.snapshot(),
            requests: ctx.api.counters(),
            seconds: started.elapsed().as_secs_f64(),
        };
        info!(run = %run, outcome = ?s.outcome, tiles_done = s.tiles_done, tiles_failed = s.tiles_failed, "run finished");
        Ok(s)
    }
    .instrument(run_span)
    .await
}

/// Why the claim loop ended.
enum DriveEnd {
    Finished,
    Quota,
    /// SIGINT/SIGTERM.
    Stopped,
    /// `--max-tiles` tiles were started; the run may or may not have tiles left.
    MaxTiles,
}

/// The claim loop: keeps up to `concurrency` tiles in flight until none is left or the run stops.
async fn drive(ctx: &Arc<Ctx>, opts: &SyncOptions, total: u64) -> Result<DriveEnd, PipelineError> {
    let concurrency = ctx.settings.limits.concurrency as usize;
    let lease = ctx.settings.harvest.lease;
    let day = opts.budget_day.unwrap_or_else(|| Utc::now().date_naive());
    let progress = progress::Progress::start(total, Arc::clone(ctx) as Arc<dyn progress::Source>);
    // The renewer is told to stop and then awaited, never aborted: an aborted task could drop a
    // statement mid-flight and leave a broken connection in the pool (see `interrupt`).
    let (renew_stop, mut renew_stopped) = tokio::sync::watch::channel(false);
    let renewer = {
        let ctx = Arc::clone(ctx);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(lease / 3) => {}
                    _ = renew_stopped.wait_for(|s| *s) => return,
                }
                if let Err(e) = jobs::renew(&ctx.store, ctx.run, &ctx.owner, lease).await {
                    warn!(error = %e, "lease renewal failed");
                }
                // The worker's heartbeat for `status`, renewed with its leases.
                if let Err(e) = workers::heartbeat(&ctx.store, &ctx.owner, lease).await {
                    warn!(error = %e, "heartbeat failed");
                }
            }
        })
    };
    let mut interrupted = false;
    let mut in_flight: JoinSet<(Claimed, TileEnd)> = JoinSet::new();
    let mut started_tiles = 0u64;
    let mut end = DriveEnd::Finished;
    let mut fatal: Option<PipelineError> = None;
    loop {
        if !interrupted && interrupt::is_set() {
            interrupted = true;
            ctx.stop.store(true, Ordering::Relaxed);
            end = DriveEnd::Stopped;
        }
        let stopping = ctx.stop.load(Ordering::Relaxed) || fatal.is_some();
        let room = concurrency.saturating_sub(in_flight.len());
        let allowed = opts.max_tiles.map_or(u64::MAX, |m| m.saturating_sub(started_tiles));
        // A block met by another process of the run: claim nothing more (and spend no budget).
        let blocked = if !stopping && room > 0 && allowed > 0 && !ctx.ignore_block {
            block::active(&ctx.store, &ctx.block_key).await?
        } else {
            None
        };
        if let Some(b) = blocked {
            warn!("the tile server blocked this IP (recorded by another process); stopping");
            ctx.stop.store(true, Ordering::Relaxed);
            if fatal.is_none() {
                fatal = Some(PipelineError::Blocked(b));
            }
        } else if !stopping && room > 0 && allowed > 0 {
            let want = (room as u64).min(allowed) as i64;
            let claimed = jobs::claim(&ctx.store, ctx.run, &ctx.owner, want, lease).await?;
            let grant = if claimed.is_empty() {
                budget::Grant::none()
            } else {
                // At most `concurrency` (a u32) tiles are claimed at once.
                let n = u32::try_from(claimed.len()).unwrap_or(u32::MAX);
                budget::take(&ctx.store, &ctx.app, day, ctx.limits, n).await?
            };
            let granted_at = tokio::time::Instant::now();
            for (i, c) in claimed.into_iter().enumerate() {
                // i < claimed.len() <= concurrency, a u32.
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                if i >= grant.tiles {
                    // Over budget: hand the tile back untouched for the next day's run. It was
                    // never tried, so the claim does not count as an attempt.
                    jobs::hand_back(&ctx.store, ctx.run, &c, &ctx.owner, "daily tile budget spent").await?;
                    ctx.stop.store(true, Ordering::Relaxed);
                    end = DriveEnd::Quota;
                    continue;
                }
                started_tiles += 1;
                let ctx2 = Arc::clone(ctx);
                // The app's pace (limits.tiles_per_minute, across processes) gave this tile a slot.
                let start = granted_at + grant.start_of(i);
                in_flight.spawn(async move {
                    tokio::time::sleep_until(start).await;
                    // The API stopped the run (token refused, host unreachable) while this tile
                    // waited for its slot: it spends no request (`jobs::release` hands it back).
                    if ctx2.halted.load(Ordering::Relaxed) {
                        return (c, TileEnd::NotStarted);
                    }
                    let span = info_span!("tile", tileset = %c.tileset, tile = %c.tile);
                    let r = process_tile(&ctx2, &c).instrument(span).await;
                    (c, r)
                });
            }
            if opts.max_tiles.is_some_and(|m| started_tiles >= m) && matches!(end, DriveEnd::Finished) {
                end = DriveEnd::MaxTiles;
            }
        }
        // Nothing in flight: finished, unless tiles are leased by another live process. Those are
        // theirs to finish, but this process waits for them (a crashed owner's lease expires and
        // is claimed here), so that two processes on one region both end with the finished run.
        let waiting = in_flight.is_empty();
        if waiting {
            if stopping || allowed == 0 {
                break;
            }
            // Pending tiles nobody could claim are waiting for their re-read time.
            let others = jobs::run_tiles(&ctx.store, ctx.run)
                .await?
                .iter()
                .any(|(_, state, n)| (state == "leased" || state == "pending") && *n > 0);
            if !others {
                break;
            }
        }
        tokio::select! {
            joined = in_flight.join_next(), if !waiting => {
                let Some(joined) = joined else { continue };
                let (c, r) = joined.map_err(|e| PipelineError::Internal(format!("a tile task failed: {e}")))?;
                settle(ctx, &c, r, &mut fatal).await?;
                progress.tick();
            }
            _ = tokio::time::sleep(OTHERS_POLL), if waiting => {}
            // In-flight tiles see the interrupt too: their API calls end at once, their
            // database statements finish, and the loop drains them before it stops.
            _ = interrupt::wait(), if !interrupted => {}
        }
    }
    let _ = renew_stop.send(true);
    // The renewer only returns; a panic in it is already reported by the panic hook.
    let _ = renewer.await;
    progress.finish();
    match fatal {
        Some(e) => Err(e),
        None => Ok(end),
    }
}

/// Records a tile's end in the job table.
async fn settle(
    ctx: &Ctx,
    c: &Claimed,
    r: TileEnd,
    fatal: &mut Option<PipelineError>,
) -> Result<(), PipelineError> {
    match r {
        // A stopped tile stays leased to this process until `jobs::release` hands it back.
        TileEnd::Written | TileEnd::LeaseLost | TileEnd::NotStarted | TileEnd::Stopped => {}
        TileEnd::Retry(msg) => {
            let retry = c.attempts < MAX_TILE_ATTEMPTS;
            warn!(tileset = %c.tileset, tile = %c.tile, attempts = c.attempts, retry, error = %msg, "tile failed");
            if !retry {
                ctx.counters.tiles_failed.fetch_add(1, Ordering::Relaxed);
            }
            jobs::fail_tile(&ctx.store, ctx.run, c, &ctx.owner, &msg, retry).await?;
        }
        TileEnd::Fail(msg) => {
            warn!(tileset = %c.tileset, tile = %c.tile, error = %msg, "tile failed permanently");
            ctx.counters.tiles_failed.fetch_add(1, Ordering::Relaxed);
            jobs::fail_tile(&ctx.store, ctx.run, c, &ctx.owner, &msg, false).await?;
        }
        TileEnd::Recheck => {
            ctx.counters.rechecked.fetch_add(1, Ordering::Relaxed);
            let delay = ctx.settings.harvest.recheck;
            info!(tileset = %c.tileset, tile = %c.tile, empty_reads = c.empty_reads + 1, delay_s = delay.as_secs(),
                "tile read empty although it held live records; reading it again later");
            jobs::defer_tile(
                &ctx.store,
                ctx.run,
                c,
                &ctx.owner,
                jobs::Deferral::EmptyRead { delay },
                "read empty (or 403/404) while holding live records; read again later",
            )
            .await?;
        }
        TileEnd::Blocked { at, detail, recorded } => {
            ctx.stop.store(true, Ordering::Relaxed);
            jobs::defer_tile(
                &ctx.store,
                ctx.run,
                c,
                &ctx.owner,
                jobs::Deferral::Blocked,
                "the tile server blocked this IP",
            )
            .await?;
            let b = match recorded {
                Some(b) => b,
                None => {
                    let pause = ctx.settings.harvest.block_pause;
                    block::record(&ctx.store, &ctx.block_key, at, pause, &detail, ctx.run.0).await?
                }
            };
            if !matches!(fatal, Some(PipelineError::Auth(_) | PipelineError::Blocked(_))) {
                *fatal = Some(PipelineError::Blocked(b));
            }
        }
        TileEnd::Auth(msg) => {
            ctx.stop.store(true, Ordering::Relaxed);
            ctx.halted.store(true, Ordering::Relaxed);
            jobs::fail_tile(&ctx.store, ctx.run, c, &ctx.owner, "token refused", true).await?;
            if fatal.is_none() {
                *fatal = Some(PipelineError::Auth(msg));
            }
        }
        TileEnd::Unreachable(msg) => {
            // Not the tile's fault: its lease stays until `jobs::release` at the end of the run
            // hands it back without counting the attempt, so a down host never fails tiles.
            ctx.stop.store(true, Ordering::Relaxed);
            ctx.halted.store(true, Ordering::Relaxed);
            if fatal.is_none() {
                warn!(tileset = %c.tileset, tile = %c.tile, "API host unreachable; stopping the run");
                *fatal = Some(PipelineError::Unreachable(msg));
            }
        }
    }
    Ok(())
}

fn classify(e: ApiError) -> TileEnd {
    if e.is_auth() {
        return TileEnd::Auth(e.to_string());
    }
    if e.is_unreachable() {
        return TileEnd::Unreachable(e.to_string());
    }
    match e {
        ApiError::Blocked { at, detail } => TileEnd::Blocked { at, detail, recorded: None },
        ApiError::Permanent { .. } | ApiError::TooLarge { .. } => TileEnd::Fail(e.to_string()),
        other => TileEnd::Retry(other.to_string()),
    }
}

/// Fetch → decode → diff → enrich → store for one claimed tile.
async fn process_tile(ctx: &Ctx, c: &Claimed) -> TileEnd {
    match process_tile_inner(ctx, c).await {
        Ok(end) => end,
        Err(TileFailure::Api(e)) => classify(e),
        Err(TileFailure::Store(StoreError::LeaseLost { .. })) => TileEnd::LeaseLost,
        Err(TileFailure::Store(e)) => TileEnd::Retry(e.to_string()),
        Err(TileFailure::Decode(msg)) => TileEnd::Retry(msg),
        Err(TileFailure::Stopped) => TileEnd::Stopped,
    }
}

enum TileFailure {
    Api(ApiError),
    /// Interrupted while waiting for the API.
    Stopped,
    Store(StoreError),
    Decode(String),
}

impl From<ApiError> for TileFailure {
    fn from(e: ApiError) -> Self {
        TileFailure::Api(e)
    }
}
impl From<StoreError> for TileFailure {
    fn from(e: StoreError) -> Self {
        TileFailure::Store(e)
    }
}

/// Runs an API call unless SIGINT/SIGTERM arrives first. Only API futures are cancelled this
/// way, never a database statement (see `interrupt`).
async fn cancellable<T>(call: impl Future<Output = Result<T, ApiError>>) -> Result<T, TileFailure> {
    tokio::select! {
        biased;
        _ = interrupt::wait() => Err(TileFailure::Stopped),
        r = call => r.map_err(TileFailure::Api),
    }
}

async fn process_tile_inner(ctx: &Ctx, c: &Claimed) -> Result<TileEnd, TileFailure> {
    let times = ctx.store.times();
    let started = Instant::now();
    let snapshot = ctx.store.tile_snapshot(c.tileset, c.tile).await?;
    times.add(Stage::Snapshot, started);
    // Another process of this run (or any run on this machine) may have met a block since this
    // tile was claimed: then not one more tile request.
    if !ctx.ignore_block
        && let Some(b) = block::active(&ctx.store, &ctx.block_key).await?
    {
        return Ok(TileEnd::Blocked { at: b.at, detail: b.detail.clone(), recorded: Some(b) });
    }
    // Images harvested before detections were switched on still need theirs.
    let want_detections =
        ctx.settings.harvest.enrich && ctx.settings.harvest.detections && c.tileset.is_coverage();
    let lacking =
        if want_detections { ctx.store.images_lacking_detections(c.tile).await? } else { HashSet::new() };
    // A refresh, or images still lacking detections, need the tile's current content, so it
    // does not ask for "not modified".
    let etag =
        if ctx.refresh_before.is_some() || !lacking.is_empty() { None } else { snapshot.etag.as_deref() };
    let mut attempt = 0;
    let (decoded, new_etag) = loop {
        let fetching = Instant::now();
        let response = cancellable(ctx.api.tile(c.tileset, c.tile, etag)).await;
        times.add(Stage::Fetch, fetching);
        let (decoded, new_etag) = match response? {
            TileResponse::NotModified => {
                ctx.counters.tiles_unchanged.fetch_add(1, Ordering::Relaxed);
                let w = empty_write(ctx, c, snapshot.etag.clone(), true);
                ctx.store.write_tile(&w).await?;
                ctx.counters.tiles_done.fetch_add(1, Ordering::Relaxed);
                return Ok(TileEnd::Written);
            }
            TileResponse::Empty => (Ok(DecodedTile::default()), None),
            TileResponse::Data { bytes, etag } => {
                let (ts, tile) = (c.tileset, c.tile);
                let decoding = Instant::now();
                let d = tokio::task::spawn_blocking(move || mvt::decode_tile(ts, tile, &bytes))
                    .await
                    .map_err(|e| TileFailure::Decode(format!("decoder task failed: {e}")))?;
                times.add(Stage::Decode, decoding);
                (d.map_err(|e| e.to_string()), etag)
            }
        };
        match decoded {
            Ok(d) => break (d, new_etag),
            // A corrupt body is usually a transfer fault: fetch again before giving up.
            Err(msg) if attempt < DECODE_RETRIES => {
                attempt += 1;
                warn!(error = %msg, attempt, "tile did not decode; fetching it again");
            }
            Err(msg) => return Err(TileFailure::Decode(msg)),
        }
    };
    let mut w = empty_write(ctx, c, new_etag, false);
    let enrich = ctx.settings.harvest.enrich;
    let far_edge: HashSet<i64> = decoded.far_edge.iter().copied().collect();
    // Live records the tile no longer lists. An empty, 403 or 404 answer is no proof that they
    // are gone (§13.3): such a tile is read again later in the run, then its records are checked
    // by id, and only those the Graph API confirms gone are tombstoned.
    let listed: HashSet<i64> = if c.tileset.is_coverage() {
        decoded.images.iter().map(|r| r.id.0).collect()
    } else {
        decoded.features.iter().map(|r| r.id.0).collect()
    };
    let mut vanished: Vec<i64> = snapshot.live.keys().copied().filter(|id| !listed.contains(id)).collect();
    vanished.sort_unstable();
    if !vanished.is_empty() && listed.is_empty() && c.empty_reads < EMPTY_REREADS {
        return Ok(TileEnd::Recheck);
    }
    let confirming = Instant::now();
    w.vanished = cancellable(confirm_vanished(ctx, c, &vanished)).await?;
    times.add(Stage::Enrich, confirming);
    let mut detections_fetched: Vec<i64> = Vec::new();
    if c.tileset.is_coverage() {
        let looking = Instant::now();
        let mut d = diff(ctx, snapshot.live, decoded.images, &far_edge, true).await?;
        times.add(Stage::Lookup, looking);
        // Detections need the image's size, so images lacking them are enriched again too.
        let lacking_here: Vec<i64> =
            d.rows.iter().map(|(r, _)| r.id()).filter(|id| lacking.contains(id)).collect();
        d.needed.extend(lacking_here);
        let mut details = HashMap::new();
        if enrich && !d.needed.is_empty() {
            let enriching = Instant::now();
            let e = cancellable(enrich::images(&ctx.api, c.tile, &d.located(), &d.needed)).await?;
            times.add(Stage::Enrich, enriching);
            tally(ctx, &e);
            details = e.details;
            let ids: Vec<i64> = d
                .needed
                .iter()
                .copied()
                .filter(|id| !d.known.contains_key(id) || lacking.contains(id))
                .collect();
            if want_detections && !ids.is_empty() {
                w.detections = cancellable(detections(ctx, &ids, &details)).await?;
                detections_fetched = ids;
            }
        }
        w.images = d
            .rows
            .into_iter()
            .map(|(tile, tile_hash)| ImageRow { details: details.remove(&tile.id.0), tile, tile_hash })
            .collect();
        w.sequences = decoded.sequences;
    } else {
        let looking = Instant::now();
        let d = diff(ctx, snapshot.live, decoded.features, &far_edge, false).await?;
        times.add(Stage::Lookup, looking);
        let mut details = HashMap::new();
        if enrich && !d.needed.is_empty() {
            let enriching = Instant::now();
            let e = cancellable(enrich::features(&ctx.api, c.tile, &d.located(), &d.needed)).await?;
            times.add(Stage::Enrich, enriching);
            tally(ctx, &e);
            details = e.details;
        }
        w.features = d
            .rows
            .into_iter()
            .map(|(tile, tile_hash)| FeatureRow { details: details.remove(&tile.id.0), tile, tile_hash })
            .collect();
    }
    let counts: WriteCounts = ctx.store.write_tile(&w).await?;
    ctx.store.mark_detections_fetched(&detections_fetched).await?;
    // Record counts say what was committed, not what an interrupted task had in hand.
    ctx.counters.images.fetch_add(w.images.len() as u64, Ordering::Relaxed);
    ctx.counters.features.fetch_add(w.features.len() as u64, Ordering::Relaxed);
    ctx.counters.new.fetch_add(counts.new, Ordering::Relaxed);
    ctx.counters.changed.fetch_add(counts.changed, Ordering::Relaxed);
    ctx.counters.deleted.fetch_add(counts.deleted, Ordering::Relaxed);
    ctx.counters.missing_from_tile.fetch_add(counts.missing_from_tile, Ordering::Relaxed);
    ctx.counters.moved_away.fetch_add(counts.moved_away, Ordering::Relaxed);
    ctx.counters.tiles_done.fetch_add(1, Ordering::Relaxed);
    analyze_when_grown(ctx).await;
    Ok(TileEnd::Written)
}

/// Asks the Graph API about records that vanished from the tile: those it does not find (code
/// 100/33) are gone; found ones are kept, in this tile or in the tile their position is in now.
async fn confirm_vanished(ctx: &Ctx, c: &Claimed, ids: &[i64]) -> Result<Vanished, ApiError> {
    let mut out = Vanished::default();
    if ids.is_empty() {
        return Ok(out);
    }
    // (id, position the tile would show) of each record the API still has.
    let found: Vec<(i64, Option<(f64, f64)>)> = if c.tileset.is_coverage() {
        let by = ctx.api.confirm_images(&ids.iter().copied().map(ImageId).collect::<Vec<_>>()).await?;
        out.deleted = by.missing;
        let computed = c.tileset == mly_contract::Tileset::ComputedPublic;
        by.found
            .into_iter()
            .map(|d| (d.id.0, if computed { d.computed_geometry.or(d.geometry) } else { d.geometry }))
            .collect()
    } else {
        let ids: Vec<MapFeatureId> = ids.iter().copied().map(MapFeatureId).collect();
        let by = ctx.api.confirm_map_features(&ids).await?;
        out.deleted = by.missing;
        by.found.into_iter().map(|d| (d.id.0, d.geometry)).collect()
    };
    for (id, pos) in found {
        match pos.map(|(lon, lat)| (TileId::containing(HARVEST_ZOOM, lon, lat), lon, lat)) {
            Some((tile, lon, lat)) if tile != c.tile => out.moved.push(MovedAway { id, tile, lon, lat }),
            _ => out.missing.push(id),
        }
    }
    if !out.missing.is_empty() || !out.moved.is_empty() {
        info!(tileset = %c.tileset, tile = %c.tile, gone = out.deleted.len(), kept = out.missing.len(),
            moved = out.moved.len(), "records missing from the tile checked by id; only confirmed ones are deleted");
    }
    Ok(out)
}

/// Rows written before the first statistics refresh.
const ANALYZE_FIRST_AT: u64 = 20_000;

/// Refreshes planner statistics each time the rows this process wrote have doubled since the
/// last refresh: a handful of cheap ANALYZEs per bulk load keep every per-tile plan right.
async fn analyze_when_grown(ctx: &Ctx) {
    let written = ctx.counters.new.load(Ordering::Relaxed);
    let last = ctx.analyzed_at.load(Ordering::Relaxed);
    if written < ANALYZE_FIRST_AT || written < 2 * last {
        return;
    }
    // One worker wins the refresh; the others carry on.
    if ctx.analyzed_at.compare_exchange(last, written, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        match ctx.store.analyze().await {
            Ok(()) => debug!(rows = written, "planner statistics refreshed"),
            Err(e) => warn!(error = %e, "could not refresh planner statistics"),
        }
    }
}

fn empty_write(ctx: &Ctx, c: &Claimed, etag: Option<String>, unchanged: bool) -> TileWrite {
    TileWrite {
        run_id: ctx.run.0,
        tileset: c.tileset,
        tile: c.tile,
        lease_owner: ctx.owner.clone(),
        etag,
        unchanged,
        images: Vec::new(),
        sequences: Vec::new(),
        features: Vec::new(),
        detections: Vec::new(),
        vanished: Vanished::default(),
    }
}

/// A record a tile lists, as the diff against the database sees it.
trait TileRecord {
    fn id(&self) -> i64;
    /// A fingerprint of everything the tile says about the record (stored as `tile_hash`; its
    /// format must not change, or every stored record would look changed).
    fn fingerprint(&self) -> i64;
    fn position(&self) -> (f64, f64);
}

impl TileRecord for TileImage {
    fn id(&self) -> i64 {
        self.id.0
    }
    fn fingerprint(&self) -> i64 {
        let s = format!(
            "{:.7}|{:.7}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            self.lon,
            self.lat,
            self.captured_at_ms,
            self.compass_angle,
            self.sequence_id,
            self.is_pano,
            self.organization_id,
            self.creator_id
        );
        fnv1a(s.as_bytes()) as i64
    }
    fn position(&self) -> (f64, f64) {
        (self.lon, self.lat)
    }
}

impl TileRecord for TileFeature {
    fn id(&self) -> i64 {
        self.id.0
    }
    fn fingerprint(&self) -> i64 {
        let s = format!(
            "{:.7}|{:.7}|{:?}|{:?}|{:?}",
            self.lon, self.lat, self.value, self.first_seen_at_ms, self.last_seen_at_ms
        );
        fnv1a(s.as_bytes()) as i64
    }
    fn position(&self) -> (f64, f64) {
        (self.lon, self.lat)
    }
}

/// A tile's records with their fingerprints, what the database knows of them, and the ids that
/// need Graph enrichment.
struct Diff<T> {
    rows: Vec<(T, i64)>,
    known: HashMap<i64, Known>,
    needed: HashSet<i64>,
}

impl<T: TileRecord> Diff<T> {
    /// The records' tile positions, for planning the enrichment calls.
    fn located(&self) -> Vec<Located> {
        self.rows
            .iter()
            .map(|(r, _)| {
                let (lon, lat) = r.position();
                Located { id: r.id(), lon, lat }
            })
            .collect()
    }
}

/// Diffs a tile's records against the database: the tile's own live rows, plus rows elsewhere
/// (records that moved in from another tile, or deleted ones coming back). A record needs
/// enrichment when it is new, changed in the tile, revived, never enriched, or stale.
///
/// A record belongs to the tile that contains its position. Copies beyond the edge (the render
/// buffer) never reach here (the decoder leaves them out); a record drawn exactly on the east or
/// south edge (`far_edge`) is also the neighbour's first pixel, so when it is already live in
/// another tile it stays there: it is not moved, rewritten or enriched from this tile, so it
/// cannot flip between the two tiles from run to run.
async fn diff<T: TileRecord>(
    ctx: &Ctx,
    live: HashMap<i64, Known>,
    mut records: Vec<T>,
    far_edge: &HashSet<i64>,
    images: bool,
) -> Result<Diff<T>, StoreError> {
    let mut known = live;
    // What the database knows of records outside the tile decides what to enrich, and whether an
    // edge record stays where it lives; without enrichment only edge records are looked up (the
    // write itself compares the tile with the stored rows).
    let enrich = ctx.settings.harvest.enrich;
    let others: Vec<i64> = records
        .iter()
        .map(T::id)
        .filter(|id| !known.contains_key(id) && (enrich || far_edge.contains(id)))
        .collect();
    if !others.is_empty() {
        let more = if images {
            ctx.store.known_images(&others).await?
        } else {
            ctx.store.known_features(&others).await?
        };
        if !far_edge.is_empty() {
            let elsewhere: HashSet<i64> = more
                .iter()
                .filter(|(id, k)| !k.deleted && far_edge.contains(id))
                .map(|(id, _)| *id)
                .collect();
            if !elsewhere.is_empty() {
                debug!(
                    records = elsewhere.len(),
                    "edge records already live in the neighbouring tile stay there"
                );
                records.retain(|r| !elsewhere.contains(&r.id()));
            }
        }
        known.extend(more);
    }
    let rows: Vec<(T, i64)> = records
        .into_iter()
        .map(|r| {
            let h = r.fingerprint();
            (r, h)
        })
        .collect();
    let needed = rows
        .iter()
        .filter(|_| enrich)
        .filter(|(r, hash)| match known.get(&r.id()) {
            None => true,
            Some(k) => {
                k.tile_hash != *hash
                    || k.deleted
                    || k.enriched_at.is_none()
                    || ctx.refresh_before.is_some_and(|cut| k.enriched_at.is_some_and(|e| e < cut))
            }
        })
        .map(|(r, _)| r.id())
        .collect();
    Ok(Diff { rows, known, needed })
}

/// Counts what an enrichment found.
fn tally<T>(ctx: &Ctx, e: &enrich::Enriched<T>) {
    ctx.counters.enriched.fetch_add(e.details.len() as u64, Ordering::Relaxed);
    ctx.counters.missing.fetch_add(e.missing.len() as u64, Ordering::Relaxed);
}

/// Detections of new images, decoded to pixel space with the image's size.
async fn detections(
    ctx: &Ctx,
    ids: &[i64],
    details: &HashMap<i64, crate::model::ImageDetails>,
) -> Result<Vec<DetectionRow>, ApiError> {
    let ids: Vec<ImageId> = ids.iter().copied().map(ImageId).collect();
    let by = ctx.api.detections_by_image(&ids).await?;
    let mut out = Vec::new();
    for det in by.found.into_iter().flatten() {
        let size = details.get(&det.image_id.0).and_then(|d| Some((d.width?, d.height?)));
        let pixel_geom_wkb = match (&det.geometry_b64, size) {
            (Some(b64), Some((w, h))) if w > 0 && h > 0 => match mvt::decode_detection(b64) {
                Ok(shape) => {
                    let px = mvt::to_pixels(&shape, w as u32, h as u32);
                    let mut buf = Vec::new();
                    wkb::writer::write_multi_polygon(&mut buf, &px, &Default::default()).ok().map(|_| buf)
                }
                Err(e) => {
                    warn!(detection = det.id, error = %e, "detection geometry did not decode; stored raw only");
                    None
                }
            },
            _ => None,
        };
        out.push(DetectionRow { det, pixel_geom_wkb });
    }
    Ok(out)
}
