//! Runs (`harvest_run`): start or resume, finish, and the listing `status` shows.

use std::fmt;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{JobsError, PlannedTile, RunId, q, scrub_settings, tile_key};
use crate::store::{ADVISORY_LOCK_KEY, Store};

/// Two processes starting the same region at once must end up in one run, not two: the run
/// key's advisory lock serialises them (the second finds the first's run and resumes it).
pub(super) const LOCK_RUN_KEY: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))";
/// Planning a run is one process's job: the others wait on this session lock (tried, so that
/// an interrupt is never stuck in a statement), then find the run planned.
const TRY_LOCK_PLANNING: &str = "SELECT pg_try_advisory_lock(hashtextextended('plan:' || $1::text, $2))";
const UNLOCK_PLANNING: &str = "SELECT pg_advisory_unlock(hashtextextended('plan:' || $1::text, $2))";
const IS_PLANNED: &str = "SELECT planned FROM harvest_run WHERE id = $1";
const MARK_PLANNED: &str = "UPDATE harvest_run SET planned = true, tiles_total = $2 WHERE id = $1";
pub(super) const RESUMABLE_RUN: &str = "SELECT id FROM harvest_run WHERE run_key = $1 AND status IN ('running', 'partial', 'stopped') \
     ORDER BY id DESC LIMIT 1";
/// On resume, failed tiles get their attempts back: the same command retries only those.
const RETRY_FAILED: &str = "UPDATE harvest_tile SET state = 'pending', attempts = 0, empty_reads = 0, not_before = NULL, \
     lease_owner = NULL, lease_expires_at = NULL, updated_at = now() WHERE run_id = $1 AND state = 'failed'";
pub(super) const REOPEN_RUN: &str =
    "UPDATE harvest_run SET status = 'running', finished_at = NULL WHERE id = $1";
pub(super) const INSERT_RUN: &str = "INSERT INTO harvest_run (region_name, region_geom, run_key, settings, status, tiles_total, planned) \
     VALUES ($1, ST_Multi(ST_CollectionExtract(ST_GeomFromWKB($2, 4326), 3)), $3, $4, 'running', 0, false) \
     RETURNING id";
/// A run planned when it is created (a creator or organization scope: its work is its listing).
pub(super) const INSERT_PLANNED_RUN: &str = "INSERT INTO harvest_run (region_name, region_geom, run_key, settings, status, tiles_total, planned) \
     VALUES ($1, ST_Multi(ST_CollectionExtract(ST_GeomFromWKB($2, 4326), 3)), $3, $4, 'running', 0, true) \
     RETURNING id";
/// A temp stage absorbs duplicate planned tiles, which would abort a direct COPY.
const CREATE_STAGE_PLAN: &str = "CREATE TEMP TABLE stage_plan (run_id bigint, tileset text, z smallint, x integer, \
     y integer, state text, skip_reason text) ON COMMIT DROP";
const COPY_STAGE_PLAN: &str = "COPY stage_plan FROM STDIN";
const INSERT_PLANNED: &str = "INSERT INTO harvest_tile (run_id, tileset, z, x, y, state, skip_reason) \
     SELECT DISTINCT ON (run_id, tileset, z, x, y) run_id, tileset, z, x, y, state, skip_reason FROM stage_plan \
     ORDER BY run_id, tileset, z, x, y, state ON CONFLICT DO NOTHING";
const COUNT_TILES: &str = "SELECT count(*), count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'failed'), \
     count(*) FILTER (WHERE state IN ('pending', 'leased')), count(*) FILTER (WHERE state = 'skipped'), \
     (SELECT planned FROM harvest_run WHERE id = $1) \
     FROM harvest_tile WHERE run_id = $1";
const FINISH_RUN: &str = "UPDATE harvest_run SET status = $2, finished_at = now(), tiles_done = $3, tiles_failed = $4, \
     counters = $5 WHERE id = $1";
const LIST_RUNS: &str = "SELECT r.id, r.region_name, r.run_key, r.status, r.started_at, r.finished_at, r.settings, r.counters, \
        count(t.*) AS total, \
        count(t.*) FILTER (WHERE t.state = 'done') AS done, \
        count(t.*) FILTER (WHERE t.state = 'failed') AS failed, \
        count(t.*) FILTER (WHERE t.state = 'pending') AS pending, \
        count(t.*) FILTER (WHERE t.state = 'leased') AS leased, \
        count(t.*) FILTER (WHERE t.state = 'skipped') AS skipped \
     FROM (SELECT * FROM harvest_run ORDER BY id DESC LIMIT $1) r \
     LEFT JOIN harvest_tile t ON t.run_id = r.id \
     GROUP BY r.id, r.region_name, r.run_key, r.status, r.started_at, r.finished_at, r.settings, r.counters \
     ORDER BY r.id DESC";
const LAST_SUCCESS: &str =
    "SELECT extract(epoch FROM max(finished_at))::float8 FROM harvest_run WHERE status = 'done'";

/// A run's state in `harvest_run.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// A process is (or was, until it died) working on it.
    Running,
    /// Every tile done.
    Done,
    /// Every tile ended, some failed for good; the same command retries them.
    Partial,
    /// Tiles are left (interrupt, budget, `--max-tiles`, block); the same command resumes it.
    Stopped,
}

impl RunStatus {
    /// The value stored in `harvest_run.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Partial => "partial",
            RunStatus::Stopped => "stopped",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Result<RunStatus, JobsError> {
        match s {
            "running" => Ok(RunStatus::Running),
            "done" => Ok(RunStatus::Done),
            "partial" => Ok(RunStatus::Partial),
            "stopped" => Ok(RunStatus::Stopped),
            other => Err(JobsError::Corrupt { what: "run status", value: other.to_string() }),
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of [`finish`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    #[serde(serialize_with = "ser_run")]
    pub run: RunId,
    pub status: RunStatus,
    pub total: i64,
    pub done: i64,
    pub failed: i64,
    pub pending: i64,
    /// Tiles planning did not fetch (empty or unchanged).
    pub skipped: i64,
}

fn ser_run<S: serde::Serializer>(r: &RunId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(r.0)
}

/// A run as `mly-harvest status` shows it; tile counts are live from `harvest_tile`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunInfo {
    pub id: i64,
    pub region_name: String,
    pub run_key: String,
    pub status: RunStatus,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339; None while the run has never finished.
    pub finished_at: Option<String>,
    pub tiles_total: i64,
    pub tiles_done: i64,
    pub tiles_failed: i64,
    pub tiles_pending: i64,
    pub tiles_leased: i64,
    /// Tiles planning did not fetch (empty or unchanged).
    pub tiles_skipped: i64,
    pub settings: serde_json::Value,
    pub counters: serde_json::Value,
}

/// Resumes the newest unfinished run with this key (failed tiles go back to pending), or starts
/// a new, not yet planned one. Returns the run and whether it was resumed.
pub async fn open_run(
    store: &Store,
    region_name: &str,
    region_wkb: &[u8],
    run_key: &str,
    settings: &serde_json::Value,
) -> Result<(RunId, bool), JobsError> {
    let mut tx = store.pool().begin().await.map_err(q("starting a run"))?;
    sqlx::query(LOCK_RUN_KEY)
        .bind(run_key)
        .bind(ADVISORY_LOCK_KEY)
        .execute(&mut *tx)
        .await
        .map_err(q("locking the run key"))?;
    let existing: Option<i64> = sqlx::query_scalar(RESUMABLE_RUN)
        .bind(run_key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(q("looking for a run to resume"))?;
    if let Some(id) = existing {
        let retried = sqlx::query(RETRY_FAILED)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(q(format!("resetting failed tiles of run {id}")))?
            .rows_affected();
        sqlx::query(REOPEN_RUN).bind(id).execute(&mut *tx).await.map_err(q(format!("reopening run {id}")))?;
        tx.commit().await.map_err(q(format!("resuming run {id}")))?;
        tracing::debug!(run = id, retried_failed = retried, "resuming run");
        return Ok((RunId(id), true));
    }
    let id: i64 = sqlx::query_scalar(INSERT_RUN)
        .bind(region_name)
        .bind(region_wkb)
        .bind(run_key)
        .bind(scrub_settings(settings))
        .fetch_one(&mut *tx)
        .await
        .map_err(q(format!("creating the run for region {region_name}")))?;
    tx.commit().await.map_err(q(format!("committing the new run for region {region_name}")))?;
    tracing::debug!(run = id, region = region_name, "started run");
    Ok((RunId(id), false))
}

/// The planning lock of a run, held on a connection of its own until [`PlanningLock::release`].
pub struct PlanningLock {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    run_key: String,
}

/// Takes the planning lock of `run_key` when it is free (None: another process is planning).
pub async fn try_lock_planning(store: &Store, run_key: &str) -> Result<Option<PlanningLock>, JobsError> {
    let mut conn = store.pool().acquire().await.map_err(q("acquiring a connection to plan"))?;
    let got: bool = sqlx::query_scalar(TRY_LOCK_PLANNING)
        .bind(run_key)
        .bind(ADVISORY_LOCK_KEY)
        .fetch_one(&mut *conn)
        .await
        .map_err(q("locking the run's planning"))?;
    Ok(got.then(|| PlanningLock { conn, run_key: run_key.to_string() }))
}

impl PlanningLock {
    /// Releases the lock (dropping the connection would also end it, with the session).
    pub async fn release(mut self) -> Result<(), JobsError> {
        sqlx::query(UNLOCK_PLANNING)
            .bind(&self.run_key)
            .bind(ADVISORY_LOCK_KEY)
            .execute(&mut *self.conn)
            .await
            .map_err(q("unlocking the run's planning"))?;
        Ok(())
    }
}

/// Whether the run's tiles are planned.
pub async fn is_planned(store: &Store, run: RunId) -> Result<bool, JobsError> {
    sqlx::query_scalar(IS_PLANNED)
        .bind(run.0)
        .fetch_optional(store.pool())
        .await
        .map_err(q(format!("reading run {run}")))?
        .ok_or(JobsError::NoSuchRun(run))
}

/// Writes the run's plan (every tile, fetched or skipped) and marks it planned, in one
/// transaction.
pub async fn save_plan(store: &Store, run: RunId, tiles: &[PlannedTile]) -> Result<(), JobsError> {
    let id = run.0;
    let mut tx = store.pool().begin().await.map_err(q(format!("planning run {run}")))?;
    let mut buf = Vec::with_capacity(tiles.len() * 48);
    for t in tiles {
        let (z, x, y) = tile_key(t.tile);
        let (state, reason) = match t.skip {
            None => ("pending", "\\N"),
            Some(r) => ("skipped", r.as_str()),
        };
        buf.extend_from_slice(
            format!("{id}\t{}\t{z}\t{x}\t{y}\t{state}\t{reason}\n", t.tileset.name()).as_bytes(),
        );
    }
    let mut n = 0;
    if !buf.is_empty() {
        sqlx::raw_sql(CREATE_STAGE_PLAN).execute(&mut *tx).await.map_err(q("staging planned tiles"))?;
        let mut c = tx.copy_in_raw(COPY_STAGE_PLAN).await.map_err(q("copying planned tiles"))?;
        if let Err(e) = c.send(buf).await {
            let _ = c.abort("planning failed").await;
            return Err(q("copying planned tiles")(e));
        }
        c.finish().await.map_err(q("copying planned tiles"))?;
        n = sqlx::query(INSERT_PLANNED)
            .execute(&mut *tx)
            .await
            .map_err(q("inserting planned tiles"))?
            .rows_affected();
    }
    sqlx::query(MARK_PLANNED)
        .bind(id)
        .bind(i32::try_from(n).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await
        .map_err(q("marking the run planned"))?;
    tx.commit().await.map_err(q(format!("committing the plan of run {run}")))?;
    tracing::debug!(run = id, tiles = tiles.len(), "planned run");
    Ok(())
}

/// Resumes the newest unfinished run with this key, or starts and plans a new one with `tiles`
/// (for callers that know the plan up front).
pub async fn start_or_resume(
    store: &Store,
    region_name: &str,
    region_wkb: &[u8],
    run_key: &str,
    settings: &serde_json::Value,
    tiles: &[PlannedTile],
) -> Result<(RunId, bool), JobsError> {
    let (run, resumed) = open_run(store, region_name, region_wkb, run_key, settings).await?;
    if !is_planned(store, run).await? {
        save_plan(store, run, tiles).await?;
    }
    Ok((run, resumed))
}

/// Closes the run: `done` if every tile is done, `stopped` if some are still pending or leased
/// (e.g. quota), else `partial` if some failed. `counters` are the process's figures, stored
/// with the run (scrubbed of anything secret-looking).
pub async fn finish(
    store: &Store,
    run: RunId,
    counters: &serde_json::Value,
) -> Result<RunSummary, JobsError> {
    let r = sqlx::query(COUNT_TILES)
        .bind(run.0)
        .fetch_one(store.pool())
        .await
        .map_err(q(format!("counting tiles of run {run}")))?;
    let ctx = || format!("counting tiles of run {run}");
    let total: i64 = r.try_get(0).map_err(q(ctx()))?;
    let done: i64 = r.try_get(1).map_err(q(ctx()))?;
    let failed: i64 = r.try_get(2).map_err(q(ctx()))?;
    let pending: i64 = r.try_get(3).map_err(q(ctx()))?;
    let skipped: i64 = r.try_get(4).map_err(q(ctx()))?;
    let planned: Option<bool> = r.try_get(5).map_err(q(ctx()))?;
    // A run stopped while it was planned has no tiles yet, and is not done.
    let status = if pending > 0 || planned == Some(false) {
        RunStatus::Stopped
    } else if failed > 0 {
        RunStatus::Partial
    } else {
        RunStatus::Done
    };
    let updated = sqlx::query(FINISH_RUN)
        .bind(run.0)
        .bind(status.as_str())
        .bind(i32::try_from(done).unwrap_or(i32::MAX))
        .bind(i32::try_from(failed).unwrap_or(i32::MAX))
        .bind(scrub_settings(counters))
        .execute(store.pool())
        .await
        .map_err(q(format!("finishing run {run}")))?;
    if updated.rows_affected() == 0 {
        return Err(JobsError::NoSuchRun(run));
    }
    tracing::debug!(run = run.0, %status, total, done, failed, pending, "run finished");
    Ok(RunSummary { run, status, total, done, failed, pending, skipped })
}

/// The newest runs, with live tile counts.
pub async fn runs(store: &Store, limit: i64) -> Result<Vec<RunInfo>, JobsError> {
    let rows = sqlx::query(LIST_RUNS).bind(limit).fetch_all(store.pool()).await.map_err(q("listing runs"))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let ctx = || "reading runs".to_string();
        let started: DateTime<Utc> = r.try_get(4).map_err(q(ctx()))?;
        let finished: Option<DateTime<Utc>> = r.try_get(5).map_err(q(ctx()))?;
        let status: String = r.try_get(3).map_err(q(ctx()))?;
        out.push(RunInfo {
            id: r.try_get(0).map_err(q(ctx()))?,
            region_name: r.try_get(1).map_err(q(ctx()))?,
            run_key: r.try_get(2).map_err(q(ctx()))?,
            status: RunStatus::parse(&status)?,
            started_at: started.to_rfc3339(),
            finished_at: finished.map(|f| f.to_rfc3339()),
            settings: r.try_get(6).map_err(q(ctx()))?,
            counters: r.try_get(7).map_err(q(ctx()))?,
            tiles_total: r.try_get(8).map_err(q(ctx()))?,
            tiles_done: r.try_get(9).map_err(q(ctx()))?,
            tiles_failed: r.try_get(10).map_err(q(ctx()))?,
            tiles_pending: r.try_get(11).map_err(q(ctx()))?,
            tiles_leased: r.try_get(12).map_err(q(ctx()))?,
            tiles_skipped: r.try_get(13).map_err(q(ctx()))?,
        });
    }
    Ok(out)
}

/// When a run of this schema last ended with every tile done (seconds since the epoch).
pub async fn last_success(store: &Store) -> Result<Option<f64>, JobsError> {
    sqlx::query_scalar(LAST_SUCCESS)
        .fetch_one(store.pool())
        .await
        .map_err(q("reading the last successful run"))
}
