//! A sync run from start to end: plan the region into tile jobs (or resume the unfinished run
//! with the same settings), build the run's context, drive the claim loop, hand back leases, and
//! close the run with its summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};
use tracing::{Instrument, debug, info, info_span, warn};

use super::claim::{DriveEnd, drive};
use super::counters::Counters;
use super::{Outcome, PipelineError, Planning, SyncOptions, SyncSummary, interrupt, plan, trace};
use crate::api::{ApiClient, ApiError, Pacing};
use crate::jobs::budget;
use crate::jobs::workers;
use crate::jobs::{self, RunId, block};
use crate::region::Region;
use crate::settings::{Harvest, SyncSettings};
use crate::store::Store;
use mly_contract::Tileset;
use mly_contract::hash::fnv1a;
use mly_contract::tiles::HARVEST_ZOOM;

/// Rows written before the first statistics refresh.
const ANALYZE_FIRST_AT: u64 = 20_000;

/// What the workers of one run share. Each stage is handed the parts it needs, not this.
pub(crate) struct RunCtx {
    pub(crate) store: Store,
    pub(crate) api: ApiClient,
    pub(crate) run: RunId,
    /// This process's lease owner id.
    pub(crate) owner: String,
    pub(crate) harvest: Harvest,
    /// Tiles in flight at once.
    pub(crate) concurrency: usize,
    /// The heavy stages' memory budget (see `fetch::MEMORY_BUDGET_KIB`).
    pub(crate) memory: Arc<tokio::sync::Semaphore>,
    /// Whose tile budget and pace this run spends (the token's app).
    pub(crate) app: budget::AppKey,
    pub(crate) tile_limits: budget::TileLimits,
    /// Which tilesets are planned per tile and which follow a tile's coverage.
    pub(crate) roles: plan::TilesetRoles,
    pub(crate) refresh_before: Option<DateTime<Utc>>,
    pub(crate) counters: Counters,
    /// Set when the run must stop claiming (signal, token refused, budget spent).
    pub(crate) stop: AtomicBool,
    /// Set when the API stopped the run (token refused, host unreachable): tiles still waiting
    /// for their pace slot do not start. (A spent budget lets granted tiles finish.)
    pub(crate) halted: AtomicBool,
    /// Where a tile server block is recorded for this run's tile server and machine.
    pub(crate) block_key: block::BlockKey,
    /// `--ignore-block`: do not look for a recorded block before each tile request.
    pub(crate) ignore_block: bool,
    /// A point region's circle: records outside it are not stored (see `within`).
    pub(crate) circle: Option<crate::region::Circle>,
    /// Rows written when the tables were last analyzed (see `analyze_when_grown`).
    analyzed_at: AtomicU64,
}

impl RunCtx {
    /// The tilesets that become jobs of a tile when its `tileset` is written: the dependents,
    /// when it is the primary coverage tileset and the tile holds images.
    pub(crate) fn dependents_of(&self, tileset: Tileset, has_images: bool) -> &[Tileset] {
        if has_images && self.roles.primary.first() == Some(&tileset) && tileset.is_coverage() {
            &self.roles.dependents
        } else {
            &[]
        }
    }

    /// Refreshes planner statistics each time the rows this process wrote have doubled since the
    /// last refresh: a handful of cheap ANALYZEs per bulk load keep every per-tile plan right.
    pub(crate) async fn analyze_when_grown(&self) {
        let written = self.counters.new_records();
        let last = self.analyzed_at.load(Ordering::Relaxed);
        if written < ANALYZE_FIRST_AT || written < 2 * last {
            return;
        }
        // One worker wins the refresh; the others carry on.
        if self.analyzed_at.compare_exchange(last, written, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            match self.store.analyze().await {
                Ok(()) => debug!(rows = written, "planner statistics refreshed"),
                Err(e) => warn!(error = %e, "could not refresh planner statistics"),
            }
        }
    }
}

/// The settings that make a run "the same run" to resume: a new region or tileset list starts
/// a new run, anything else (limits, URLs) does not.
fn run_key(region: &Region, harvest: &Harvest) -> (String, serde_json::Value) {
    let settings = serde_json::json!({
        "region": region.key,
        "tilesets": harvest.tilesets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "enrich": harvest.enrich,
        "detections": harvest.detections,
    });
    (format!("{:016x}", fnv1a(settings.to_string().as_bytes())), settings)
}

/// The error an API failure during planning stops the run with (a block is recorded first, as
/// one met while fetching a tile).
async fn stop_for(e: ApiError, store: &Store, key: &block::BlockKey, harvest: &Harvest) -> PipelineError {
    if e.is_auth() {
        return PipelineError::Auth(e);
    }
    if e.is_unreachable() {
        return PipelineError::Unreachable(e);
    }
    match e {
        ApiError::Blocked { at, detail } => {
            match block::record(store, key, at, harvest.block_pause, &detail, 0).await {
                Ok(b) => PipelineError::Blocked(b),
                Err(e) => PipelineError::Store(e),
            }
        }
        other => PipelineError::Api(other),
    }
}

/// How often a process waits for another one that plans the run.
const PLANNING_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Plans `run` unless it is planned: one process plans (under the run key's planning lock), the
/// others wait until it has, so a run is planned once however many processes start it. Returns
/// the plan when this process made it.
async fn plan_once(
    inputs: &plan::PlanInputs<'_>,
    run: RunId,
    run_key: &str,
    region: &Region,
) -> Result<Option<plan::Plan>, plan::PlanError> {
    loop {
        if jobs::is_planned(inputs.store, run).await? {
            return Ok(None);
        }
        if let Some(lock) = jobs::try_lock_planning(inputs.store, run_key).await? {
            if jobs::is_planned(inputs.store, run).await? {
                lock.release().await?;
                return Ok(None);
            }
            let made = plan::plan(inputs, &region.tiles(HARVEST_ZOOM)).await;
            if let Ok(p) = &made {
                jobs::save_plan(inputs.store, run, &p.tiles).await?;
            }
            lock.release().await?;
            return made.map(Some);
        }
        if interrupt::is_set() {
            return Ok(None);
        }
        tokio::time::sleep(PLANNING_POLL).await;
    }
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
            return Err(PipelineError::NoToken);
        }
        let harvest = &settings.harvest;
        let (run_key, run_settings) = run_key(region, harvest);
        // A recorded block stops the run before it asks the tile server anything (or changes
        // any job state): every request during a block extends it.
        let block_key = block::BlockKey::new(&settings.api.tiles_url);
        if !opts.ignore_block
            && let Some(b) = block::active(store, &block_key).await?
        {
            return Err(PipelineError::Blocked(b));
        }
        // Graph calls take slots of the app's timelines, shared by every process on the token.
        let app = budget::AppKey::from_token(settings.api.token.expose());
        let pacing = Pacing::Shared { store: store.clone(), app: app.clone() };
        let api = ApiClient::new(settings.api.clone(), pacing).map_err(PipelineError::Api)?;
        let tile_limits =
            budget::TileLimits { per_day: settings.limits.tiles_per_day, per_minute: settings.limits.tiles_per_minute };
        let day = opts.budget_day.unwrap_or_else(|| Utc::now().date_naive());
        let (run, resumed) = jobs::open_run(store, &region.name, &region.to_wkb(), &run_key, &run_settings).await?;
        info!(run = %run, resumed, "run started");
        let owner = jobs::owner_id();
        // Listed by `status` while the run is in progress (heartbeat with the lease renewal).
        workers::register(store, run, &owner, settings.harvest.lease).await?;
        let period = opts.refresh_tiles_older_than.unwrap_or(plan::DEFAULT_REFRESH_PERIOD);
        let inputs = plan::PlanInputs {
            store,
            api: &api,
            harvest,
            rolling: plan::rolling(period, Utc::now()),
            app: &app,
            day,
            limits: tile_limits,
        };
        let made = match plan_once(&inputs, run, &run_key, region).await {
            Ok(m) => m,
            Err(e) => {
                // The run stays resumable (unplanned, stopped); its requests are reported.
                if let Some(t) = &opts.trace {
                    t.requests_only(api.counters());
                }
                let stored = serde_json::json!({ "requests": api.counters() });
                jobs::finish(store, run, &stored).await?;
                workers::deregister(store, &owner).await?;
                return Err(match e {
                    plan::PlanError::Store(e) => e.into(),
                    plan::PlanError::Jobs(e) => e.into(),
                    plan::PlanError::Api(e) => stop_for(e, store, &block_key, harvest).await,
                });
            }
        };
        // Planned here or by another process: the progress bar counts the run's tiles.
        let planned_count: i64 = jobs::run_tiles(store, run).await?.iter().map(|t| t.count).sum();
        let made = made.unwrap_or_default();

        let refresh_before =
            opts.refresh_older_than.and_then(|d| chrono::Duration::from_std(d).ok()).map(|d| Utc::now() - d);
        let ctx = Arc::new(RunCtx {
            store: store.clone(),
            api,
            run,
            owner,
            harvest: harvest.clone(),
            concurrency: settings.limits.concurrency as usize,
            memory: Arc::new(tokio::sync::Semaphore::new(super::fetch::MEMORY_BUDGET_KIB as usize)),
            app,
            tile_limits,
            roles: plan::TilesetRoles::of(&harvest.tilesets),
            refresh_before,
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            halted: AtomicBool::new(false),
            block_key,
            ignore_block: opts.ignore_block,
            circle: region.circle,
            analyzed_at: AtomicU64::new(0),
        });
        let _trace = trace::Guard::new(opts.trace.as_ref(), &ctx);
        let outcome = drive(&ctx, &opts, u64::try_from(planned_count).unwrap_or(0)).await;
        debug!(stages = %store.times().summary(), "time per stage, summed over tiles");
        jobs::release(store, run, &ctx.owner).await?;
        // After an interrupt, stop promptly: linking is idempotent and the next sync does it.
        if harvest.detections && !interrupt::is_set() {
            let linked = store.link_detections().await?;
            info!(linked, "detections linked to map features");
        }
        let process = ctx.counters.snapshot();
        let requests = ctx.api.counters();
        let stored = serde_json::json!({ "requests": requests, "process": process });
        let summary = jobs::finish(store, run, &stored).await?;
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
            this_process: process,
            requests,
            planning: Planning { probes: made.probes, low_zoom_requests: made.change_requests },
            tiles_skipped: summary.skipped,
            seconds: started.elapsed().as_secs_f64(),
        };
        info!(run = %run, outcome = ?s.outcome, tiles_done = s.tiles_done, tiles_failed = s.tiles_failed, "run finished");
        Ok(s)
    }
    .instrument(run_span)
    .await
}
