//! The claim loop: keeps up to `limits.concurrency` tiles in flight, each granted a slot of the
//! app's shared tile budget and pace, until none is left or the run stops; and `settle`, which
//! records how each tile ended in the job table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use super::outcome::TileEnd;
use super::progress::{self, Progress};
use super::run::RunCtx;
use super::tile::process_tile;
use super::{PipelineError, SyncOptions, interrupt};
use crate::jobs::budget;
use crate::jobs::workers;
use crate::jobs::{self, Claimed, Deferral, block};

/// A tile is given up (state `failed`) after this many attempts.
const MAX_TILE_ATTEMPTS: i32 = 3;
/// How often a process with nothing to claim checks on tiles other processes hold.
const OTHERS_POLL: Duration = Duration::from_millis(500);

/// Why the claim loop ended.
pub(crate) enum DriveEnd {
    Finished,
    Quota,
    /// SIGINT/SIGTERM.
    Stopped,
    /// `--max-tiles` tiles were started; the run may or may not have tiles left.
    MaxTiles,
}

impl progress::Source for RunCtx {
    fn line(&self) -> String {
        let c = self.counters.snapshot();
        let r = self.api.counters();
        format!(
            "images {} features {} | new {} changed {} deleted {} | requests: tiles {} search {} entity {} | retries {} throttled {}",
            c.images,
            c.features,
            c.new,
            c.changed,
            c.deleted,
            r.tiles,
            r.search,
            r.entity,
            r.retries,
            r.throttled
        )
    }
}

/// The claim loop: keeps up to `concurrency` tiles in flight until none is left or the run stops.
pub(crate) async fn drive(
    ctx: &Arc<RunCtx>,
    opts: &SyncOptions,
    total: u64,
) -> Result<DriveEnd, PipelineError> {
    let concurrency = ctx.concurrency;
    let lease = ctx.harvest.lease;
    let day = opts.budget_day.unwrap_or_else(|| Utc::now().date_naive());
    let progress = Progress::start(total, Arc::clone(ctx) as Arc<dyn progress::Source>);
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
                budget::take(&ctx.store, &ctx.app, day, ctx.tile_limits, n).await?
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
            let others =
                jobs::run_tiles(&ctx.store, ctx.run).await?.iter().any(|t| t.state.is_open() && t.count > 0);
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
    ctx: &RunCtx,
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
                ctx.counters.failed();
            }
            jobs::fail_tile(&ctx.store, ctx.run, c, &ctx.owner, &msg, retry).await?;
        }
        TileEnd::Fail(msg) => {
            warn!(tileset = %c.tileset, tile = %c.tile, error = %msg, "tile failed permanently");
            ctx.counters.failed();
            jobs::fail_tile(&ctx.store, ctx.run, c, &ctx.owner, &msg, false).await?;
        }
        TileEnd::Recheck => {
            ctx.counters.rechecked();
            let delay = ctx.harvest.recheck;
            info!(tileset = %c.tileset, tile = %c.tile, empty_reads = c.empty_reads + 1, delay_s = delay.as_secs(),
                "tile read empty although it held live records; reading it again later");
            jobs::defer_tile(
                &ctx.store,
                ctx.run,
                c,
                &ctx.owner,
                Deferral::EmptyRead { delay },
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
                Deferral::Blocked,
                "the tile server blocked this IP",
            )
            .await?;
            let b = match recorded {
                Some(b) => b,
                None => {
                    block::record(&ctx.store, &ctx.block_key, at, ctx.harvest.block_pause, &detail, ctx.run.0)
                        .await?
                }
            };
            if !matches!(fatal, Some(PipelineError::Auth(_) | PipelineError::Blocked(_))) {
                *fatal = Some(PipelineError::Blocked(b));
            }
        }
        TileEnd::Auth(e) => {
            ctx.stop.store(true, Ordering::Relaxed);
            ctx.halted.store(true, Ordering::Relaxed);
            jobs::fail_tile(&ctx.store, ctx.run, c, &ctx.owner, "token refused", true).await?;
            if fatal.is_none() {
                *fatal = Some(PipelineError::Auth(e));
            }
        }
        TileEnd::Unreachable(e) => {
            // Not the tile's fault: its lease stays until `jobs::release` at the end of the run
            // hands it back without counting the attempt, so a down host never fails tiles.
            ctx.stop.store(true, Ordering::Relaxed);
            ctx.halted.store(true, Ordering::Relaxed);
            if fatal.is_none() {
                warn!(tileset = %c.tileset, tile = %c.tile, "API host unreachable; stopping the run");
                *fatal = Some(PipelineError::Unreachable(e));
            }
        }
    }
    Ok(())
}
