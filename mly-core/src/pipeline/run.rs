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
use super::{Outcome, PipelineError, SyncOptions, SyncSummary, interrupt, trace};
use crate::api::ApiClient;
use crate::budget;
use crate::jobs::{self, PlannedTile, RunId, block};
use crate::region::Region;
use crate::settings::{Harvest, SyncSettings};
use crate::store::Store;
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
    /// Whose tile budget and pace this run spends (the token's app).
    pub(crate) app: budget::AppKey,
    pub(crate) tile_limits: budget::TileLimits,
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
        let planned: Vec<PlannedTile> = region
            .tiles(HARVEST_ZOOM)
            .iter()
            .flat_map(|t| harvest.tilesets.iter().map(|ts| PlannedTile { tileset: *ts, tile: *t }))
            .collect();
        let (run_key, run_settings) = run_key(region, harvest);
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

        let api = ApiClient::new(settings.api.clone()).map_err(PipelineError::Api)?;
        let refresh_before =
            opts.refresh_older_than.and_then(|d| chrono::Duration::from_std(d).ok()).map(|d| Utc::now() - d);
        let ctx = Arc::new(RunCtx {
            store: store.clone(),
            api,
            run,
            owner: jobs::owner_id(),
            harvest: harvest.clone(),
            concurrency: settings.limits.concurrency as usize,
            app: budget::AppKey::from_token(settings.api.token.expose()),
            tile_limits: budget::TileLimits {
                per_day: settings.limits.tiles_per_day,
                per_minute: settings.limits.tiles_per_minute,
            },
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
        let outcome = drive(&ctx, &opts, planned.len() as u64).await;
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
            seconds: started.elapsed().as_secs_f64(),
        };
        info!(run = %run, outcome = ?s.outcome, tiles_done = s.tiles_done, tiles_failed = s.tiles_failed, "run finished");
        Ok(s)
    }
    .instrument(run_span)
    .await
}
