//! Scope runs (`harvest_scope`, with `harvest_scope_seen` and `harvest_scope_cell`): a creator's
//! or an organization's images listed page by page. A scope run is a `harvest_run` row without
//! tiles; its one `harvest_scope` row says where the listing stands, leased to one worker at a
//! time (a listing is one chain of cursors: it cannot be shared). Every statement on these tables
//! lives here (a pass's steps in [`progress`]); a page's rows and its cursor advance commit in the
//! caller's transaction.

mod progress;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::runs::{INSERT_PLANNED_RUN, LOCK_RUN_KEY, REOPEN_RUN, RESUMABLE_RUN};
use super::{JobsError, RunId, hostname, millis, owner_is_dead, q, scrub_settings};
use crate::store::ADVISORY_LOCK_KEY;
use crate::store::Store;

pub use progress::{
    Advance, SeenKind, Unseen, add_cells, advance, cell_done, lock_scope_at, mark_seen, open_cells,
    restart_listing, set_phase, unseen_features, unseen_images,
};

/// The newest finished pass of a scope, and when its newest complete pass finished.
const LAST_PASSES: &str = "
SELECT (extract(epoch FROM s.newest_captured_at) * 1000)::float8,
       (SELECT max(r2.finished_at) FROM harvest_run r2 JOIN harvest_scope s2 ON s2.run_id = r2.id
        WHERE r2.run_key = $1 AND r2.status = 'done' AND s2.pass = 'complete')
FROM harvest_run r JOIN harvest_scope s ON s.run_id = r.id
WHERE r.run_key = $1 AND r.status = 'done'
ORDER BY r.id DESC LIMIT 1";
const INSERT_SCOPE: &str = "INSERT INTO harvest_scope (run_id, pass, start_at, newest_captured_at) \
     VALUES ($1, $2, to_timestamp($3 / 1000.0), to_timestamp($3 / 1000.0))";
const LEASE_OWNER: &str = "SELECT lease_owner FROM harvest_scope \
     WHERE run_id = $1 AND lease_owner IS NOT NULL AND lease_expires_at >= now()";
/// Takes the scope when nobody holds it, its lease ran out, or its holder on this host died ($4).
const CLAIM: &str = "UPDATE harvest_scope SET lease_owner = $2, \
     lease_expires_at = now() + $3 * interval '1 millisecond', updated_at = now() \
     WHERE run_id = $1 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at < now() \
         OR lease_owner = ANY($4)) \
     RETURNING pass, (extract(epoch FROM start_at) * 1000)::float8, phase, after_cursor, next_cell, pages, listed, kept";
const RENEW: &str = "UPDATE harvest_scope SET lease_expires_at = now() + $3 * interval '1 millisecond' \
     WHERE run_id = $1 AND lease_owner = $2";
const RELEASE: &str = "UPDATE harvest_scope SET lease_owner = NULL, lease_expires_at = NULL, updated_at = now() \
     WHERE run_id = $1 AND lease_owner = $2";
/// Whether the schema has the scope tables (`status` reads schemas older than them too).
const HAS_SCOPES: &str = "SELECT to_regclass('harvest_scope') IS NOT NULL";
const STATUSES: &str = "SELECT run_id, pass, phase, pages, listed, kept, \
     to_char(newest_captured_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
     FROM harvest_scope WHERE run_id = ANY($1)";
const FINISH: &str = "UPDATE harvest_run SET status = $2, finished_at = now(), counters = $3 WHERE id = $1";
const FORGET_SEEN: &str = "DELETE FROM harvest_scope_seen WHERE run_id = $1";
const FORGET_CELLS: &str = "DELETE FROM harvest_scope_cell WHERE run_id = $1";

/// What a pass lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pass {
    /// The whole scope; at its end, records of the scope it did not list are checked by id.
    Complete,
    /// Only captures from the previous pass's newest one on (see the README, "Your own data").
    Incremental,
}

impl Pass {
    fn as_str(self) -> &'static str {
        match self {
            Pass::Complete => "complete",
            Pass::Incremental => "incremental",
        }
    }

    fn parse(s: &str) -> Result<Pass, JobsError> {
        match s {
            "complete" => Ok(Pass::Complete),
            "incremental" => Ok(Pass::Incremental),
            other => Err(JobsError::Corrupt { what: "scope pass", value: other.into() }),
        }
    }
}

/// Where a pass stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Pages (or cells) of the listing are being committed.
    Listing,
    /// Map features around the listed images are searched, cell by cell.
    Features,
    /// A complete pass checks by id what it did not list.
    Checking,
    /// Nothing left.
    Done,
}

impl Phase {
    /// The value stored in `harvest_scope.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Listing => "listing",
            Phase::Features => "features",
            Phase::Checking => "checking",
            Phase::Done => "done",
        }
    }

    fn parse(s: &str) -> Result<Phase, JobsError> {
        match s {
            "listing" => Ok(Phase::Listing),
            "features" => Ok(Phase::Features),
            "checking" => Ok(Phase::Checking),
            "done" => Ok(Phase::Done),
            other => Err(JobsError::Corrupt { what: "scope phase", value: other.into() }),
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the listing stands: the next page's cursor, or the next cell of a region.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    /// The cursor of the next page (`None`: the first page).
    pub after: Option<String>,
    /// The index of the next cell (organization harvests by region).
    pub cell: i32,
}

/// A scope run as its worker holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeJob {
    pub run: RunId,
    pub pass: Pass,
    /// Earliest capture the pass asks for, ms since the epoch.
    pub start_ms: Option<i64>,
    pub phase: Phase,
    pub position: Position,
    pub pages: i32,
    pub listed: i32,
    pub kept: i32,
}

/// What starting a scope run needs.
#[derive(Debug, Clone)]
pub struct ScopeStart<'a> {
    /// The run's name (`creator:NAME`, with the region).
    pub name: &'a str,
    /// The region's shape as WKB, when the scope is narrowed to one.
    pub region_wkb: Option<&'a [u8]>,
    /// Recognises the same scope (and settings) across runs.
    pub run_key: &'a str,
    pub settings: &'a serde_json::Value,
    /// `--since`, ms since the epoch.
    pub since_ms: Option<i64>,
    /// A complete pass is due when the last one finished before this (`--refresh-older-than`).
    pub complete_before: Option<DateTime<Utc>>,
}

fn f64_ms(ms: Option<i64>) -> Option<f64> {
    ms.map(|m| m as f64)
}

/// A scope run as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScopeStatus {
    pub pass: Pass,
    pub phase: Phase,
    /// Pages (or cells) committed.
    pub pages: i32,
    /// Images the pages listed.
    pub listed: i32,
    /// Of them, stored (in the region and window).
    pub kept: i32,
    /// Newest capture listed (UTC), where the next incremental pass starts.
    pub newest_captured_at: Option<String>,
}

/// The scope state of those of `runs` that are scope runs.
pub async fn scope_statuses(
    store: &Store,
    runs: &[RunId],
) -> Result<std::collections::HashMap<RunId, ScopeStatus>, JobsError> {
    let has: bool =
        sqlx::query_scalar(HAS_SCOPES).fetch_one(store.pool()).await.map_err(q("looking for scope runs"))?;
    if !has || runs.is_empty() {
        return Ok(Default::default());
    }
    let ids: Vec<i64> = runs.iter().map(|r| r.0).collect();
    /// (run, pass, phase, pages, listed, kept, newest capture).
    type Row = (i64, String, String, i32, i32, i32, Option<String>);
    let rows: Vec<Row> =
        sqlx::query_as(STATUSES).bind(&ids).fetch_all(store.pool()).await.map_err(q("reading scope runs"))?;
    rows.into_iter()
        .map(|(run, pass, phase, pages, listed, kept, newest)| {
            let s = ScopeStatus {
                pass: Pass::parse(&pass)?,
                phase: Phase::parse(&phase)?,
                pages,
                listed,
                kept,
                newest_captured_at: newest,
            };
            Ok((RunId(run), s))
        })
        .collect()
}

/// Resumes the unfinished run of this scope, or starts a pass: complete when none finished
/// before (or `complete_before` says the last complete one is too old), else incremental from
/// the previous pass's newest capture. Returns the run and whether it was resumed.
pub async fn start_or_resume_scope(store: &Store, s: &ScopeStart<'_>) -> Result<(RunId, bool), JobsError> {
    let mut tx = store.pool().begin().await.map_err(q("starting a scope run"))?;
    sqlx::query(LOCK_RUN_KEY)
        .bind(s.run_key)
        .bind(ADVISORY_LOCK_KEY)
        .execute(&mut *tx)
        .await
        .map_err(q("locking the run key"))?;
    let existing: Option<i64> = sqlx::query_scalar(RESUMABLE_RUN)
        .bind(s.run_key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(q("looking for a scope run to resume"))?;
    if let Some(id) = existing {
        sqlx::query(REOPEN_RUN).bind(id).execute(&mut *tx).await.map_err(q(format!("reopening run {id}")))?;
        tx.commit().await.map_err(q(format!("resuming run {id}")))?;
        return Ok((RunId(id), true));
    }
    let last: Option<(Option<f64>, Option<DateTime<Utc>>)> = sqlx::query_as(LAST_PASSES)
        .bind(s.run_key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(q("reading the scope's last pass"))?;
    let (pass, start_ms) = match last {
        Some((newest, last_complete))
            if s.complete_before.is_none_or(|cut| last_complete.is_some_and(|t| t >= cut)) =>
        {
            let newest = newest.map(|ms| ms.round() as i64);
            (Pass::Incremental, newest.max(s.since_ms))
        }
        _ => (Pass::Complete, s.since_ms),
    };
    let id: i64 = sqlx::query_scalar(INSERT_PLANNED_RUN)
        .bind(s.name)
        .bind(s.region_wkb)
        .bind(s.run_key)
        .bind(scrub_settings(s.settings))
        .fetch_one(&mut *tx)
        .await
        .map_err(q(format!("creating the run for {}", s.name)))?;
    sqlx::query(INSERT_SCOPE)
        .bind(id)
        .bind(pass.as_str())
        .bind(f64_ms(start_ms))
        .execute(&mut *tx)
        .await
        .map_err(q(format!("creating the scope of run {id}")))?;
    tx.commit().await.map_err(q(format!("committing the new run for {}", s.name)))?;
    tracing::debug!(run = id, pass = pass.as_str(), start_ms, "started scope run");
    Ok((RunId(id), false))
}

/// Leases the scope to `owner`: `None` while another live worker holds it.
pub async fn claim_scope(
    store: &Store,
    run: RunId,
    owner: &str,
    lease: Duration,
) -> Result<Option<ScopeJob>, JobsError> {
    let holder: Option<Option<String>> = sqlx::query_scalar(LEASE_OWNER)
        .bind(run.0)
        .fetch_optional(store.pool())
        .await
        .map_err(q(format!("reading the lease of scope run {run}")))?;
    let host = hostname();
    let dead: Vec<String> = holder.flatten().into_iter().filter(|o| owner_is_dead(o, &host)).collect();
    let row = sqlx::query(CLAIM)
        .bind(run.0)
        .bind(owner)
        .bind(millis(lease) as f64)
        .bind(&dead)
        .fetch_optional(store.pool())
        .await
        .map_err(q(format!("claiming scope run {run}")))?;
    let Some(r) = row else { return Ok(None) };
    let ctx = || format!("reading scope run {run}");
    let pass: String = r.try_get(0).map_err(q(ctx()))?;
    let start: Option<f64> = r.try_get(1).map_err(q(ctx()))?;
    let phase: String = r.try_get(2).map_err(q(ctx()))?;
    Ok(Some(ScopeJob {
        run,
        pass: Pass::parse(&pass)?,
        start_ms: start.map(|ms| ms.round() as i64),
        phase: Phase::parse(&phase)?,
        position: Position { after: r.try_get(3).map_err(q(ctx()))?, cell: r.try_get(4).map_err(q(ctx()))? },
        pages: r.try_get(5).map_err(q(ctx()))?,
        listed: r.try_get(6).map_err(q(ctx()))?,
        kept: r.try_get(7).map_err(q(ctx()))?,
    }))
}

/// Extends `owner`'s lease of the scope.
pub async fn renew_scope(store: &Store, run: RunId, owner: &str, lease: Duration) -> Result<(), JobsError> {
    sqlx::query(RENEW)
        .bind(run.0)
        .bind(owner)
        .bind(millis(lease) as f64)
        .execute(store.pool())
        .await
        .map_err(q(format!("renewing the lease of scope run {run}")))?;
    Ok(())
}

/// Gives the scope back (clean stop).
pub async fn release_scope(store: &Store, run: RunId, owner: &str) -> Result<(), JobsError> {
    sqlx::query(RELEASE)
        .bind(run.0)
        .bind(owner)
        .execute(store.pool())
        .await
        .map_err(q(format!("releasing scope run {run}")))?;
    Ok(())
}

/// Closes the scope run (`done` once its pass is, else `stopped`) with this process's counters;
/// a finished pass forgets what it saw and searched.
pub async fn finish_scope(
    store: &Store,
    run: RunId,
    done: bool,
    counters: &serde_json::Value,
) -> Result<(), JobsError> {
    let mut tx = store.pool().begin().await.map_err(q(format!("finishing scope run {run}")))?;
    let status = if done { super::RunStatus::Done } else { super::RunStatus::Stopped };
    let r = sqlx::query(FINISH)
        .bind(run.0)
        .bind(status.as_str())
        .bind(scrub_settings(counters))
        .execute(&mut *tx)
        .await
        .map_err(q(format!("finishing scope run {run}")))?;
    if r.rows_affected() == 0 {
        return Err(JobsError::NoSuchRun(run));
    }
    if done {
        for sql in [FORGET_SEEN, FORGET_CELLS] {
            sqlx::query(sql)
                .bind(run.0)
                .execute(&mut *tx)
                .await
                .map_err(q(format!("cleaning up scope run {run}")))?;
        }
    }
    tx.commit().await.map_err(q(format!("finishing scope run {run}")))?;
    Ok(())
}
