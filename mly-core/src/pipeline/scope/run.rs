//! A scope run from start to end: start or resume the pass, take the scope's lease, drive its
//! phases (listing page by page, map features cell by cell, the deletion check), give the lease
//! back and close the run with its summary.

use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::{Instrument, info, info_span, warn};

use super::commit::{Cells, Holder, PageWrite, commit_cell, commit_check, commit_page, move_phase};
use super::features::{edge_images, search_cell};
use super::listing::next_page;
use super::plan::{Keep, Source, feature_kinds};
use super::{Scope, ScopeFailure, ScopeOptions, ScopeProcess, ScopeSummary, api_error, vanished};
use crate::api::{ApiClient, ApiError};
use crate::jobs::scopes::{self, Advance, Pass, Phase, ScopeJob, ScopeStart};
use crate::jobs::{self, RunId};
use crate::model::ImageDetails;
use crate::model::ImageFilter;
use crate::pipeline::{Outcome, PipelineError, interrupt};
use crate::settings::SyncSettings;
use crate::store::{ScopeRows, Store, query_err, scope_images_among};
use mly_contract::FeatureKind;

/// How often a process waiting for a scope another live process holds checks on it.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Harvests `scope` (or resumes its unfinished pass) and returns the summary.
pub async fn sync_scope(
    settings: &SyncSettings,
    store: &Store,
    scope: &Scope,
    opts: ScopeOptions,
) -> Result<ScopeSummary, PipelineError> {
    let started = Instant::now();
    let name = scope.name();
    let span = info_span!("scope", scope = %name);
    async move {
        if settings.api.token.is_empty() {
            return Err(PipelineError::NoToken);
        }
        let (run_key, run_settings) = scope.run_key(&settings.harvest);
        let complete_before =
            opts.refresh_older_than.and_then(|d| chrono::Duration::from_std(d).ok()).map(|d| Utc::now() - d);
        let wkb = scope.region.as_ref().map(|r| r.to_wkb());
        let start = ScopeStart {
            name: &name,
            region_wkb: wkb.as_deref(),
            run_key: &run_key,
            settings: &run_settings,
            since_ms: scope.since_ms,
            complete_before,
        };
        let (run, resumed) = scopes::start_or_resume_scope(store, &start).await?;
        // Its searches take slots of the app's shared timelines, like a tile run's.
        let app = crate::jobs::budget::AppKey::from_token(settings.api.token.expose());
        let pacing = crate::api::Pacing::Shared { store: store.clone(), app };
        let api = ApiClient::new(settings.api.clone(), pacing).map_err(PipelineError::Api)?;
        let owner = jobs::owner_id();
        let h = Holder { run, owner: &owner, lease: settings.harvest.lease };
        let Some(job) = wait_for_lease(store, h).await? else {
            // Interrupted while another process held the scope: nothing of ours to close.
            return Ok(summary(run, name.clone(), resumed, None, &api, ScopeProcess::default(), started));
        };
        info!(run = %run, resumed, pass = ?job.pass, phase = %job.phase, "scope run started");
        let (renew_stop, mut renew_stopped) = tokio::sync::watch::channel(false);
        let renewer = {
            let store = store.clone();
            let owner = owner.clone();
            let lease = h.lease;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(lease / 3) => {}
                        _ = renew_stopped.wait_for(|s| *s) => return,
                    }
                    if let Err(e) = scopes::renew_scope(&store, run, &owner, lease).await {
                        warn!(error = %e, "scope lease renewal failed");
                    }
                }
            })
        };
        let mut d = Driver {
            store,
            api: &api,
            h,
            source: scope.source(),
            keep: Keep::of(scope),
            kinds: feature_kinds(&settings.harvest),
            scope_filter: scope.filter(),
            until_ms: scope.until_ms,
            job,
            process: ScopeProcess::default(),
            restarted: false,
        };
        let ended = d.drive().await;
        let _ = renew_stop.send(true);
        // The renewer only returns; a panic in it is already reported by the panic hook.
        let _ = renewer.await;
        scopes::release_scope(store, run, &owner).await?;
        if let Some(t) = &opts.trace {
            t.record(run.0, api.counters(), d.process.as_process_counters());
        }
        let done = matches!(ended, Ok(true));
        let stored = serde_json::json!({ "requests": api.counters(), "process": d.process });
        scopes::finish_scope(store, run, done, &stored).await?;
        ended?;
        let s = summary(run, name.clone(), resumed, Some(&d.job), &api, d.process, started);
        info!(run = %run, outcome = ?s.outcome, pages = s.this_process.pages, "scope run finished");
        Ok(s)
    }
    .instrument(span)
    .await
}

fn summary(
    run: RunId,
    name: String,
    resumed: bool,
    job: Option<&ScopeJob>,
    api: &ApiClient,
    process: ScopeProcess,
    started: Instant,
) -> ScopeSummary {
    ScopeSummary {
        run_id: run.0,
        name,
        resumed,
        outcome: if job.is_some_and(|j| j.phase == Phase::Done) { Outcome::Done } else { Outcome::Stopped },
        pass: job.map_or(Pass::Complete, |j| j.pass),
        pages_total: job.map_or(0, |j| i64::from(j.pages)),
        this_process: process,
        requests: api.counters(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Takes the scope's lease, waiting while another live process holds it; `None` when
/// interrupted first.
async fn wait_for_lease(store: &Store, h: Holder<'_>) -> Result<Option<ScopeJob>, PipelineError> {
    let mut said = false;
    loop {
        if let Some(job) = scopes::claim_scope(store, h.run, h.owner, h.lease).await? {
            return Ok(Some(job));
        }
        if !said {
            info!(run = %h.run, "another process is harvesting this scope; waiting for it");
            said = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(WAIT_POLL) => {}
            _ = interrupt::wait() => return Ok(None),
        }
    }
}

/// The phases of one pass, driven by the worker holding it.
struct Driver<'a> {
    store: &'a Store,
    api: &'a ApiClient,
    h: Holder<'a>,
    source: Source,
    keep: Keep,
    /// Map-feature kinds the config harvests (none: no feature phase).
    kinds: Vec<FeatureKind>,
    /// The scope's records (its whole window), as the database selects them.
    scope_filter: ImageFilter,
    until_ms: Option<i64>,
    /// The job as committed so far.
    job: ScopeJob,
    process: ScopeProcess,
    /// The listing already started over once in this process (a refused cursor).
    restarted: bool,
}

impl Driver<'_> {
    /// Runs the pass's phases; `Ok(true)` when it is done, `Ok(false)` when interrupted.
    async fn drive(&mut self) -> Result<bool, PipelineError> {
        loop {
            if interrupt::is_set() {
                return Ok(false);
            }
            let step = match self.job.phase {
                Phase::Listing => self.page().await,
                Phase::Features => self.features().await,
                Phase::Checking => self.check().await,
                Phase::Done => return Ok(true),
            };
            match step {
                Ok(()) => {}
                Err(ScopeFailure::Stopped) => return Ok(false),
                Err(ScopeFailure::Api(e)) => return Err(api_error(e)),
                Err(ScopeFailure::TooDense(cell)) => {
                    return Err(PipelineError::Api(ApiError::Permanent {
                        context: format!("while searching cell {cell}"),
                        status: 500,
                        message: "it still holds more than one search answer at the deepest split (z18)"
                            .into(),
                    }));
                }
                Err(ScopeFailure::Pipeline(e)) => return Err(e),
            }
        }
    }

    fn complete(&self) -> bool {
        self.job.pass == Pass::Complete
    }

    /// The listing's next page, filtered and committed with the listing's advance.
    async fn page(&mut self) -> Result<(), ScopeFailure> {
        let filter =
            ImageFilter { start_ms: self.job.start_ms, end_ms: self.until_ms, ..self.scope_filter.clone() };
        let listed = match next_page(self.api, &self.source, &filter, &self.job.position).await {
            // A resumed cursor the API refuses (it may expire): the listing starts over once,
            // keeping what the pass saw; upserts make the repeated pages cost no writes.
            Err(ScopeFailure::Api(ApiError::Permanent { status: 400, message, .. }))
                if self.job.position.after.is_some() && !self.restarted =>
            {
                warn!(run = %self.h.run, error = %message, "the API refused the stored cursor; listing from the first page again");
                scopes::restart_listing(self.store, self.h.run, self.h.owner)
                    .await
                    .map_err(PipelineError::from)?;
                self.job.position = scopes::Position::default();
                self.restarted = true;
                return Ok(());
            }
            other => other?,
        };
        let mut kept: Vec<ImageDetails> =
            listed.items.iter().filter(|d| self.keep.image(d)).cloned().collect();
        kept.sort_unstable_by_key(|d| d.id);
        kept.dedup_by_key(|d| d.id);
        let w = PageWrite {
            seen: if self.complete() { kept.iter().map(|d| d.id.0).collect() } else { Vec::new() },
            cells: match (self.kinds.is_empty(), self.complete()) {
                (true, _) => Cells::None,
                (false, true) => Cells::All,
                (false, false) => Cells::Written,
            },
            rows: ScopeRows { images: kept, ..ScopeRows::default() },
        };
        let advance = Advance {
            next: listed.next.clone(),
            listed: i32::try_from(listed.items.len()).unwrap_or(i32::MAX),
            kept: i32::try_from(w.rows.images.len()).unwrap_or(i32::MAX),
            newest_ms: listed.items.iter().filter_map(|d| d.captured_at_ms).max(),
            phase: if listed.last { Phase::Features } else { Phase::Listing },
        };
        let counts = commit_page(self.store, self.h, &self.job.position, &w, &advance).await?;
        self.job.position = advance.next;
        self.job.phase = advance.phase;
        self.job.pages += 1;
        self.process.pages += 1;
        self.process.listed += listed.items.len() as u64;
        self.process.kept += w.rows.images.len() as u64;
        self.process.add(&counts);
        Ok(())
    }

    /// The map features of every cell around the pass's images, one cell per transaction.
    async fn features(&mut self) -> Result<(), ScopeFailure> {
        let cells = scopes::open_cells(self.store, self.h.run).await.map_err(PipelineError::from)?;
        for cell in cells {
            if interrupt::is_set() {
                return Err(ScopeFailure::Stopped);
            }
            let found = search_cell(self.api, cell).await?;
            let mut conn = self
                .store
                .pool()
                .acquire()
                .await
                .map_err(query_err("reading the scope's images"))
                .map_err(PipelineError::from)?;
            let ours = scope_images_among(&mut conn, &edge_images(&found), &self.scope_filter)
                .await
                .map_err(PipelineError::from)?;
            drop(conn);
            let kept = super::features::keep(found, &self.keep, &self.kinds, &ours);
            let seen: Vec<i64> =
                if self.complete() { kept.iter().map(|f| f.details.id.0).collect() } else { Vec::new() };
            let n = kept.len() as u64;
            let rows = ScopeRows { features: kept, ..ScopeRows::default() };
            let counts = commit_cell(self.store, self.h, &self.job.position, cell, &rows, &seen).await?;
            self.process.feature_cells += 1;
            self.process.features += n;
            self.process.add(&counts);
        }
        let next = if self.complete() { Phase::Checking } else { Phase::Done };
        move_phase(self.store, self.h, Phase::Features, next).await?;
        self.job.phase = next;
        Ok(())
    }

    /// A complete pass's deletion check, committed with the pass's end.
    async fn check(&mut self) -> Result<(), ScopeFailure> {
        let c =
            vanished::check(self.store, self.api, self.h.run, &self.scope_filter, &self.keep, &self.kinds)
                .await?;
        let counts = commit_check(self.store, self.h, &self.job.position, &c.rows).await?;
        self.job.phase = Phase::Done;
        self.process.checked += c.checked;
        self.process.still_there += c.still_there;
        self.process.add(&counts);
        Ok(())
    }
}
