//! Harvest runs and tile job states: planning, claiming with leases, quota.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::store::{Store, StoreError};
use mly_contract::Tileset;
use mly_contract::tiles::TileId;

/// Errors of job-state handling.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("database error while {context}: {}", crate::store::describe(source))]
    Query { context: String, source: sqlx::Error },
    #[error("lease lost on tile {tileset} {tile} (run {run}): another worker holds it now")]
    LeaseLost { run: RunId, tileset: Tileset, tile: TileId },
    #[error("run {0} does not exist")]
    NoSuchRun(RunId),
    #[error("job table holds an invalid {what}: {value:?}")]
    Corrupt { what: &'static str, value: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn q(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> JobsError {
    let context = context.into();
    move |source| JobsError::Query { context, source }
}

/// A harvest run id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(pub i64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One tile of a run's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedTile {
    pub tileset: Tileset,
    pub tile: TileId,
}

/// A tile leased to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub tileset: Tileset,
    pub tile: TileId,
    /// Claims of this tile in this run, including this one.
    pub attempts: i32,
    /// Times the tile read empty (or 403/404) in this run while the database held live records
    /// for it (see [`defer_tile`]).
    pub empty_reads: i16,
}

/// The outcome of [`finish`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    #[serde(serialize_with = "ser_run")]
    pub run: RunId,
    pub status: String,
    pub total: i64,
    pub done: i64,
    pub failed: i64,
    pub pending: i64,
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
    pub status: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339; None while the run has never finished.
    pub finished_at: Option<String>,
    pub tiles_total: i64,
    pub tiles_done: i64,
    pub tiles_failed: i64,
    pub tiles_pending: i64,
    pub tiles_leased: i64,
    pub settings: serde_json::Value,
    pub counters: serde_json::Value,
}

/// A lease owner id for this process: `host:pid:random`, which [`claim`] can check for liveness.
pub fn owner_id() -> String {
    format!("{}:{}:{:08x}", hostname(), std::process::id(), fastrand::u32(..))
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().replace(':', "_"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether `owner` names a process on this host that no longer exists.
fn owner_is_dead(owner: &str, host: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(_random), Some(pid), Some(h)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if h != host {
        return false;
    }
    match pid.parse::<u32>() {
        Ok(pid) if pid != std::process::id() => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    }
}

/// Drops any key that looks like a secret: settings are stored and shown, the token must never be.
fn scrub_settings(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    let k = k.to_ascii_lowercase();
                    !(k.contains("token") || k.contains("password") || k.contains("secret"))
                })
                .map(|(k, v)| (k.clone(), scrub_settings(v)))
                .collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(scrub_settings).collect()),
        other => other.clone(),
    }
}

pub use mly_contract::secret::redact;

fn tile_key(t: TileId) -> (i16, i32, i32) {
    // TileId::new limits z to 30 and x/y below 2^30, so these casts never truncate valid tiles.
    (i16::from(t.z), t.x as i32, t.y as i32)
}

fn parse_tile(tileset: &str, z: i16, x: i32, y: i32) -> Result<(Tileset, TileId), JobsError> {
    let ts = Tileset::from_name(tileset)
        .ok_or_else(|| JobsError::Corrupt { what: "tileset", value: tileset.into() })?;
    let bad = || JobsError::Corrupt { what: "tile", value: format!("{z}/{x}/{y}") };
    let z = u8::try_from(z).map_err(|_| bad())?;
    let x = u32::try_from(x).map_err(|_| bad())?;
    let y = u32::try_from(y).map_err(|_| bad())?;
    Ok((ts, TileId::new(z, x, y).map_err(|_| bad())?))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Resumes the newest unfinished run with this key (failed tiles go back to pending), or starts
/// a new run with all its tiles pending.
pub async fn start_or_resume(
    store: &Store,
    region_name: &str,
    region_wkb: &[u8],
    run_key: &str,
    settings: &serde_json::Value,
    tiles: &[PlannedTile],
) -> Result<(RunId, bool), JobsError> {
    let mut tx = store.pool().begin().await.map_err(q("starting a run"))?;
    // Two processes starting the same region at once must end up in one run, not two.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7243901122))")
        .bind(run_key)
        .execute(&mut *tx)
        .await
        .map_err(q("locking the run key"))?;
    let existing: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM harvest_run WHERE run_key = $1 AND status IN ('running', 'partial', 'stopped') \
         ORDER BY id DESC LIMIT 1",
    )
    .bind(run_key)
    .fetch_optional(&mut *tx)
    .await
    .map_err(q("looking for a run to resume"))?;
    if let Some(id) = existing {
        let retried = sqlx::query(
            "UPDATE harvest_tile SET state = 'pending', attempts = 0, empty_reads = 0, not_before = NULL, \
             lease_owner = NULL, lease_expires_at = NULL, updated_at = now() WHERE run_id = $1 AND state = 'failed'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(q(format!("resetting failed tiles of run {id}")))?
        .rows_affected();
        sqlx::query("UPDATE harvest_run SET status = 'running', finished_at = NULL WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(q(format!("reopening run {id}")))?;
        tx.commit().await.map_err(q(format!("resuming run {id}")))?;
        tracing::debug!(run = id, retried_failed = retried, "resuming run");
        return Ok((RunId(id), true));
    }

    let id: i64 = sqlx::query_scalar(
        "INSERT INTO harvest_run (region_name, region_geom, run_key, settings, status, tiles_total) \
         VALUES ($1, ST_Multi(ST_CollectionExtract(ST_GeomFromWKB($2, 4326), 3)), $3, $4, 'running', $5) \
         RETURNING id",
    )
    .bind(region_name)
    .bind(region_wkb)
    .bind(run_key)
    .bind(scrub_settings(settings))
    .bind(i32::try_from(tiles.len()).unwrap_or(i32::MAX))
    .fetch_one(&mut *tx)
    .await
    .map_err(q(format!("creating the run for region {region_name}")))?;

    let mut buf = Vec::with_capacity(tiles.len() * 40);
    for t in tiles {
        let (z, x, y) = tile_key(t.tile);
        buf.extend_from_slice(format!("{id}\t{}\t{z}\t{x}\t{y}\n", t.tileset.name()).as_bytes());
    }
    if !buf.is_empty() {
        // A temp stage absorbs duplicate planned tiles, which would abort a direct COPY.
        sqlx::raw_sql(
            "CREATE TEMP TABLE stage_plan (run_id bigint, tileset text, z smallint, x integer, y integer) \
             ON COMMIT DROP",
        )
        .execute(&mut *tx)
        .await
        .map_err(q("staging planned tiles"))?;
        let mut c = tx.copy_in_raw("COPY stage_plan FROM STDIN").await.map_err(q("copying planned tiles"))?;
        if let Err(e) = c.send(buf).await {
            let _ = c.abort("planning failed").await;
            return Err(q("copying planned tiles")(e));
        }
        c.finish().await.map_err(q("copying planned tiles"))?;
        let n = sqlx::query(
            "INSERT INTO harvest_tile (run_id, tileset, z, x, y) SELECT DISTINCT run_id, tileset, z, x, y \
             FROM stage_plan ON CONFLICT DO NOTHING",
        )
        .execute(&mut *tx)
        .await
        .map_err(q("inserting planned tiles"))?
        .rows_affected();
        sqlx::query("UPDATE harvest_run SET tiles_total = $2 WHERE id = $1")
            .bind(id)
            .bind(i32::try_from(n).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await
            .map_err(q("counting planned tiles"))?;
    }
    tx.commit().await.map_err(q(format!("committing the new run for region {region_name}")))?;
    tracing::debug!(run = id, tiles = tiles.len(), region = region_name, "started run");
    Ok((RunId(id), false))
}

/// Leases up to `n` tiles: pending ones, ones whose lease expired, and ones held by a process of
/// this host that has died (so a resume right after a kill need not wait for the lease).
pub async fn claim(
    store: &Store,
    run: RunId,
    owner: &str,
    n: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, JobsError> {
    let host = hostname();
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT lease_owner FROM harvest_tile \
         WHERE run_id = $1 AND state = 'leased' AND lease_expires_at >= now() AND lease_owner <> $2",
    )
    .bind(run.0)
    .bind(owner)
    .fetch_all(store.pool())
    .await
    .map_err(q(format!("listing lease owners of run {run}")))?;
    let dead: Vec<String> = owners.into_iter().filter(|o| owner_is_dead(o, &host)).collect();
    if !dead.is_empty() {
        tracing::info!(run = run.0, dead_owners = ?dead, "reclaiming tiles of dead workers");
    }
    let rows = sqlx::query(
        "WITH c AS (
            SELECT run_id, tileset, z, x, y FROM harvest_tile
            WHERE run_id = $1 AND ((state = 'pending' AND (not_before IS NULL OR not_before <= now()))
                OR (state = 'leased' AND (lease_expires_at < now() OR lease_owner = ANY($5))))
            ORDER BY tileset, z, x, y
            LIMIT $3
            FOR UPDATE SKIP LOCKED
        )
        UPDATE harvest_tile h SET state = 'leased', lease_owner = $2,
            lease_expires_at = now() + $4 * interval '1 millisecond', attempts = h.attempts + 1,
            updated_at = now()
        FROM c
        WHERE h.run_id = c.run_id AND h.tileset = c.tileset AND h.z = c.z AND h.x = c.x AND h.y = c.y
        RETURNING h.tileset, h.z, h.x, h.y, h.attempts, h.empty_reads",
    )
    .bind(run.0)
    .bind(owner)
    .bind(n)
    .bind(millis(lease) as f64)
    .bind(&dead)
    .fetch_all(store.pool())
    .await
    .map_err(q(format!("claiming tiles of run {run}")))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let ctx = || format!("reading claimed tiles of run {run}");
        let tileset: String = r.try_get(0).map_err(q(ctx()))?;
        let (ts, tile) = parse_tile(
            &tileset,
            r.try_get(1).map_err(q(ctx()))?,
            r.try_get(2).map_err(q(ctx()))?,
            r.try_get(3).map_err(q(ctx()))?,
        )?;
        out.push(Claimed {
            tileset: ts,
            tile,
            attempts: r.try_get(4).map_err(q(ctx()))?,
            empty_reads: r.try_get(5).map_err(q(ctx()))?,
        });
    }
    Ok(out)
}

/// Extends every lease `owner` holds in the run; returns how many tiles it still holds.
pub async fn renew(store: &Store, run: RunId, owner: &str, lease: Duration) -> Result<u64, JobsError> {
    let r = sqlx::query(
        "UPDATE harvest_tile SET lease_expires_at = now() + $3 * interval '1 millisecond' \
         WHERE run_id = $1 AND lease_owner = $2 AND state = 'leased'",
    )
    .bind(run.0)
    .bind(owner)
    .bind(millis(lease) as f64)
    .execute(store.pool())
    .await
    .map_err(q(format!("renewing leases of run {run}")))?;
    Ok(r.rows_affected())
}

/// Records a tile failure: `retry` puts it back to pending, otherwise it is failed for this run.
pub async fn fail_tile(
    store: &Store,
    run: RunId,
    c: &Claimed,
    owner: &str,
    error: &str,
    retry: bool,
) -> Result<(), JobsError> {
    let (z, x, y) = tile_key(c.tile);
    let r = sqlx::query(
        "UPDATE harvest_tile SET state = CASE WHEN $7 THEN 'pending' ELSE 'failed' END, \
         lease_owner = CASE WHEN $7 THEN NULL ELSE lease_owner END, lease_expires_at = NULL, \
         last_error = $8, updated_at = now() \
         WHERE run_id = $1 AND tileset = $2 AND z = $3 AND x = $4 AND y = $5 AND lease_owner = $6 \
         AND state = 'leased'",
    )
    .bind(run.0)
    .bind(c.tileset.name())
    .bind(z)
    .bind(x)
    .bind(y)
    .bind(owner)
    .bind(retry)
    .bind(redact(error))
    .execute(store.pool())
    .await
    .map_err(q(format!("recording the failure of {} tile {}", c.tileset, c.tile)))?;
    if r.rows_affected() == 0 {
        return Err(JobsError::LeaseLost { run, tileset: c.tileset, tile: c.tile });
    }
    Ok(())
}

/// Why a tile goes back to pending without its claim counting as a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// It read empty (or 403/404) while the database holds live records for it: read it again
    /// after `delay`, later in the run.
    EmptyRead { delay: Duration },
    /// The tile server blocked this IP: the tile waits for a run after the block.
    Blocked,
}

/// Puts a leased tile back to pending without counting the claim as a failed attempt.
pub async fn defer_tile(
    store: &Store,
    run: RunId,
    c: &Claimed,
    owner: &str,
    why: Deferral,
    note: &str,
) -> Result<(), JobsError> {
    let (z, x, y) = tile_key(c.tile);
    let (empty_read, delay) = match why {
        Deferral::EmptyRead { delay } => (true, millis(delay)),
        Deferral::Blocked => (false, 0),
    };
    let r = sqlx::query(
        "UPDATE harvest_tile SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
         attempts = greatest(attempts - 1, 0), empty_reads = empty_reads + CASE WHEN $7 THEN 1 ELSE 0 END, \
         not_before = now() + $8 * interval '1 millisecond', last_error = $9, updated_at = now() \
         WHERE run_id = $1 AND tileset = $2 AND z = $3 AND x = $4 AND y = $5 AND lease_owner = $6 \
         AND state = 'leased'",
    )
    .bind(run.0)
    .bind(c.tileset.name())
    .bind(z)
    .bind(x)
    .bind(y)
    .bind(owner)
    .bind(empty_read)
    .bind(delay as f64)
    .bind(redact(note))
    .execute(store.pool())
    .await
    .map_err(q(format!("deferring {} tile {}", c.tileset, c.tile)))?;
    if r.rows_affected() == 0 {
        return Err(JobsError::LeaseLost { run, tileset: c.tileset, tile: c.tile });
    }
    Ok(())
}

/// Gives one claimed tile back untried (e.g. the daily budget is spent): pending again, and the
/// claim does not count as an attempt, so budget-limited nights never use up a tile's attempts.
pub async fn hand_back(
    store: &Store,
    run: RunId,
    c: &Claimed,
    owner: &str,
    why: &str,
) -> Result<(), JobsError> {
    let (z, x, y) = tile_key(c.tile);
    let r = sqlx::query(
        "UPDATE harvest_tile SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
         attempts = greatest(attempts - 1, 0), last_error = $7, updated_at = now() \
         WHERE run_id = $1 AND tileset = $2 AND z = $3 AND x = $4 AND y = $5 AND lease_owner = $6 \
         AND state = 'leased'",
    )
    .bind(run.0)
    .bind(c.tileset.name())
    .bind(z)
    .bind(x)
    .bind(y)
    .bind(owner)
    .bind(why)
    .execute(store.pool())
    .await
    .map_err(q(format!("handing back {} tile {}", c.tileset, c.tile)))?;
    if r.rows_affected() == 0 {
        return Err(JobsError::LeaseLost { run, tileset: c.tileset, tile: c.tile });
    }
    Ok(())
}

/// Gives back every lease `owner` holds (clean stop); the claims do not count as attempts.
pub async fn release(store: &Store, run: RunId, owner: &str) -> Result<(), JobsError> {
    sqlx::query(
        "UPDATE harvest_tile SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
         attempts = greatest(attempts - 1, 0), updated_at = now() \
         WHERE run_id = $1 AND lease_owner = $2 AND state = 'leased'",
    )
    .bind(run.0)
    .bind(owner)
    .execute(store.pool())
    .await
    .map_err(q(format!("releasing leases of run {run}")))?;
    Ok(())
}

/// Closes the run: `done` if every tile is done, `stopped` if some are still pending or leased
/// (e.g. quota), else `partial` if some failed.
pub async fn finish(
    store: &Store,
    run: RunId,
    counters: &serde_json::Value,
) -> Result<RunSummary, JobsError> {
    let r = sqlx::query(
        "SELECT count(*), count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'failed'), \
         count(*) FILTER (WHERE state IN ('pending', 'leased')) FROM harvest_tile WHERE run_id = $1",
    )
    .bind(run.0)
    .fetch_one(store.pool())
    .await
    .map_err(q(format!("counting tiles of run {run}")))?;
    let ctx = || format!("counting tiles of run {run}");
    let total: i64 = r.try_get(0).map_err(q(ctx()))?;
    let done: i64 = r.try_get(1).map_err(q(ctx()))?;
    let failed: i64 = r.try_get(2).map_err(q(ctx()))?;
    let pending: i64 = r.try_get(3).map_err(q(ctx()))?;
    let status = if pending > 0 {
        "stopped"
    } else if failed > 0 {
        "partial"
    } else {
        "done"
    };
    let updated = sqlx::query(
        "UPDATE harvest_run SET status = $2, finished_at = now(), tiles_done = $3, tiles_failed = $4, \
         counters = $5 WHERE id = $1",
    )
    .bind(run.0)
    .bind(status)
    .bind(i32::try_from(done).unwrap_or(i32::MAX))
    .bind(i32::try_from(failed).unwrap_or(i32::MAX))
    .bind(scrub_settings(counters))
    .execute(store.pool())
    .await
    .map_err(q(format!("finishing run {run}")))?;
    if updated.rows_affected() == 0 {
        return Err(JobsError::NoSuchRun(run));
    }
    tracing::debug!(run = run.0, status, total, done, failed, pending, "run finished");
    Ok(RunSummary { run, status: status.to_string(), total, done, failed, pending })
}

/// The newest runs, with live tile counts.
pub async fn runs(store: &Store, limit: i64) -> Result<Vec<RunInfo>, JobsError> {
    let rows = sqlx::query(
        "SELECT r.id, r.region_name, r.run_key, r.status, r.started_at, r.finished_at, r.settings, r.counters, \
            count(t.*) AS total, \
            count(t.*) FILTER (WHERE t.state = 'done') AS done, \
            count(t.*) FILTER (WHERE t.state = 'failed') AS failed, \
            count(t.*) FILTER (WHERE t.state = 'pending') AS pending, \
            count(t.*) FILTER (WHERE t.state = 'leased') AS leased \
         FROM (SELECT * FROM harvest_run ORDER BY id DESC LIMIT $1) r \
         LEFT JOIN harvest_tile t ON t.run_id = r.id \
         GROUP BY r.id, r.region_name, r.run_key, r.status, r.started_at, r.finished_at, r.settings, r.counters \
         ORDER BY r.id DESC",
    )
    .bind(limit)
    .fetch_all(store.pool())
    .await
    .map_err(q("listing runs"))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let ctx = || "reading runs".to_string();
        let started: DateTime<Utc> = r.try_get(4).map_err(q(ctx()))?;
        let finished: Option<DateTime<Utc>> = r.try_get(5).map_err(q(ctx()))?;
        out.push(RunInfo {
            id: r.try_get(0).map_err(q(ctx()))?,
            region_name: r.try_get(1).map_err(q(ctx()))?,
            run_key: r.try_get(2).map_err(q(ctx()))?,
            status: r.try_get(3).map_err(q(ctx()))?,
            started_at: started.to_rfc3339(),
            finished_at: finished.map(|f| f.to_rfc3339()),
            settings: r.try_get(6).map_err(q(ctx()))?,
            counters: r.try_get(7).map_err(q(ctx()))?,
            tiles_total: r.try_get(8).map_err(q(ctx()))?,
            tiles_done: r.try_get(9).map_err(q(ctx()))?,
            tiles_failed: r.try_get(10).map_err(q(ctx()))?,
            tiles_pending: r.try_get(11).map_err(q(ctx()))?,
            tiles_leased: r.try_get(12).map_err(q(ctx()))?,
        });
    }
    Ok(out)
}

/// Tile counts of one run per (tileset, state).
pub async fn run_tiles(store: &Store, run: RunId) -> Result<Vec<(String, String, i64)>, JobsError> {
    let rows = sqlx::query(
        "SELECT tileset, state, count(*) FROM harvest_tile WHERE run_id = $1 GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(run.0)
    .fetch_all(store.pool())
    .await
    .map_err(q(format!("counting tiles of run {run}")))?;
    rows.into_iter()
        .map(|r| {
            let ctx = || format!("reading tiles of run {run}");
            Ok((
                r.try_get(0).map_err(q(ctx()))?,
                r.try_get(1).map_err(q(ctx()))?,
                r.try_get(2).map_err(q(ctx()))?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_owner_detection() {
        let host = hostname();
        assert!(!owner_is_dead(&owner_id(), &host), "our own process is alive");
        assert!(!owner_is_dead(&format!("{host}:1:abc"), &host), "pid 1 exists");
        assert!(owner_is_dead(&format!("{host}:4194304999:abc"), &host), "no such pid");
        assert!(!owner_is_dead("otherhost:4194304999:abc", &host), "other hosts are never judged");
        assert!(!owner_is_dead("garbage", &host));
    }

    #[test]
    fn redaction() {
        let s = redact(
            "GET http://x/tiles/1/2/3?access_token=MLY|1|abc&y=2 failed; Authorization: OAuth MLY|1|abc",
        );
        assert!(!s.contains("abc"), "{s}");
        assert!(s.contains("access_token=REDACTED&y=2"), "{s}");
    }

    #[test]
    fn settings_never_keep_tokens() {
        let v =
            serde_json::json!({"access_token": "MLY|x", "limits": {"tiles_per_day": 5, "db_password": "p"}});
        let s = scrub_settings(&v);
        assert_eq!(s, serde_json::json!({"limits": {"tiles_per_day": 5}}));
    }
}
