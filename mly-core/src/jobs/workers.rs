//! The processes working on a schema's runs (`harvest_worker`, migration 0010), for
//! `mly-harvest status`: a process registers when it starts on a run, renews its heartbeat with
//! its tile leases and removes itself at a clean end. One whose heartbeat is older than its lease
//! (`live_until` passed) is not live: it died, or lost the database.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::jobs::RunId;
use crate::store::{Store, StoreError, query_err};

/// Rows of workers that are gone (also removes them when this owner registers again).
const FORGET_GONE: &str = "DELETE FROM harvest_worker WHERE live_until < now() OR owner = $1";
const REGISTER: &str = "INSERT INTO harvest_worker (owner, run_id, host, pid, live_until) \
     VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond')";
const HEARTBEAT: &str = "UPDATE harvest_worker SET heartbeat_at = now(), \
     live_until = now() + $2 * interval '1 millisecond' WHERE owner = $1";
const DEREGISTER: &str = "DELETE FROM harvest_worker WHERE owner = $1";
/// Whether the schema has the table yet (`status` never migrates).
const HAS_TABLE: &str = "SELECT to_regclass(format('%I.harvest_worker', current_schema())) IS NOT NULL";
const LIVE: &str = "SELECT run_id, host, pid, owner, started_at, heartbeat_at, \
     extract(epoch FROM now() - heartbeat_at)::float8 \
     FROM harvest_worker WHERE live_until >= now() ORDER BY run_id DESC, host, pid";

/// A row of [`LIVE`]: run, host, pid, owner, started, heartbeat, seconds since the heartbeat.
type LiveRow = (i64, String, i32, String, DateTime<Utc>, DateTime<Utc>, f64);

/// A live worker as `status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Worker {
    pub run_id: i64,
    pub host: String,
    pub pid: i32,
    /// Its lease owner id (`host:pid:random`, as in `harvest_tile.lease_owner`).
    pub owner: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub heartbeat_at: String,
    /// Seconds since the last heartbeat, by the database's clock.
    pub heartbeat_age_secs: f64,
}

fn millis(d: Duration) -> f64 {
    d.as_millis() as f64
}

/// Registers this process (`owner`, from `jobs::owner_id`) as working on `run`, live for `lease`.
pub async fn register(store: &Store, run: RunId, owner: &str, lease: Duration) -> Result<(), StoreError> {
    let ctx = || format!("registering worker {owner} on run {run}");
    let mut tx = store.pool().begin().await.map_err(query_err(ctx()))?;
    sqlx::query(FORGET_GONE).bind(owner).execute(&mut *tx).await.map_err(query_err(ctx()))?;
    // A pid always fits i32 on Linux (pid_max is at most 2^22).
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    sqlx::query(REGISTER)
        .bind(owner)
        .bind(run.0)
        .bind(crate::jobs::hostname())
        .bind(pid)
        .bind(millis(lease))
        .execute(&mut *tx)
        .await
        .map_err(query_err(ctx()))?;
    tx.commit().await.map_err(query_err(ctx()))
}

/// Renews the heartbeat: live for another `lease`.
pub async fn heartbeat(store: &Store, owner: &str, lease: Duration) -> Result<(), StoreError> {
    sqlx::query(HEARTBEAT)
        .bind(owner)
        .bind(millis(lease))
        .execute(store.pool())
        .await
        .map_err(query_err(format!("renewing the heartbeat of worker {owner}")))?;
    Ok(())
}

/// Removes this process from the live workers (clean end of its run).
pub async fn deregister(store: &Store, owner: &str) -> Result<(), StoreError> {
    sqlx::query(DEREGISTER)
        .bind(owner)
        .execute(store.pool())
        .await
        .map_err(query_err(format!("removing worker {owner}")))?;
    Ok(())
}

/// The live workers of every run of the schema, newest run first; none before migration 0010.
/// Reads only, so a read-only role can run it.
pub async fn live(store: &Store) -> Result<Vec<Worker>, StoreError> {
    let ctx = "listing the live workers";
    let has: bool = sqlx::query_scalar(HAS_TABLE).fetch_one(store.pool()).await.map_err(query_err(ctx))?;
    if !has {
        return Ok(Vec::new());
    }
    let rows: Vec<LiveRow> = sqlx::query_as(LIVE).fetch_all(store.pool()).await.map_err(query_err(ctx))?;
    let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(rows
        .into_iter()
        .map(|(run_id, host, pid, owner, started, beat, age)| Worker {
            run_id,
            host,
            pid,
            owner,
            started_at: rfc(started),
            heartbeat_at: rfc(beat),
            heartbeat_age_secs: age.max(0.0),
        })
        .collect())
}
