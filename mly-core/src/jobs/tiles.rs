//! Tile jobs (`harvest_tile`): claims with leases, renewals, the ends of a tile (done, failed,
//! deferred, handed back) and the counts `status` and the report show. Every statement on the
//! table lives here; the tile's done mark takes the data write's transaction, so a tile's rows
//! and its done state commit together.

use std::fmt;
use std::time::Duration;

use sqlx::{PgConnection, Row};

use super::{JobsError, RunId, hostname, millis, owner_is_dead, parse_tile, q, tile_key};
use crate::store::Store;
use mly_contract::Tileset;
use mly_contract::tiles::TileId;

const LIVE_OWNERS: &str = "SELECT DISTINCT lease_owner FROM harvest_tile \
     WHERE run_id = $1 AND state = 'leased' AND lease_expires_at >= now() AND lease_owner <> $2";
/// Pending tiles whose re-read time has come, expired leases, and leases of dead processes of
/// this host ($5), in a stable order; SKIP LOCKED lets concurrent claimers take different tiles.
const CLAIM: &str = "WITH c AS (
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
    RETURNING h.tileset, h.z, h.x, h.y, h.attempts, h.empty_reads";
const RENEW: &str = "UPDATE harvest_tile SET lease_expires_at = now() + $3 * interval '1 millisecond' \
     WHERE run_id = $1 AND lease_owner = $2 AND state = 'leased'";
/// `$7`: retry (back to pending) or fail for this run.
const FAIL: &str = "UPDATE harvest_tile SET state = CASE WHEN $7 THEN 'pending' ELSE 'failed' END, \
     lease_owner = CASE WHEN $7 THEN NULL ELSE lease_owner END, lease_expires_at = NULL, \
     last_error = $8, updated_at = now() \
     WHERE run_id = $1 AND tileset = $2 AND z = $3 AND x = $4 AND y = $5 AND lease_owner = $6 \
     AND state = 'leased'";
/// Back to pending after `$8` ms, the claim not counted as an attempt; `$7`: it read empty.
const DEFER: &str = "UPDATE harvest_tile SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
     attempts = greatest(attempts - 1, 0), empty_reads = empty_reads + CASE WHEN $7 THEN 1 ELSE 0 END, \
     not_before = now() + $8 * interval '1 millisecond', last_error = $9, updated_at = now() \
     WHERE run_id = $1 AND tileset = $2 AND z = $3 AND x = $4 AND y = $5 AND lease_owner = $6 \
     AND state = 'leased'";
const HAND_BACK: &str = "UPDATE harvest_tile SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
     attempts = greatest(attempts - 1, 0), last_error = $7, updated_at = now() \
     WHERE run_id = $1 AND tileset = $2 AND z = $3 AND x = $4 AND y = $5 AND lease_owner = $6 \
     AND state = 'leased'";
const RELEASE: &str = "UPDATE harvest_tile SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
     attempts = greatest(attempts - 1, 0), updated_at = now() \
     WHERE run_id = $1 AND lease_owner = $2 AND state = 'leased'";
/// Locks the tile's job row for its write: fails fast if the lease is gone, and makes a
/// concurrent claimer skip it.
const LOCK_FOR_WRITE: &str = "SELECT 1 FROM harvest_tile \
     WHERE run_id = $1 AND tileset = $2 AND z = $3 AND x = $4 AND y = $5 AND lease_owner = $6 AND state = 'leased' \
     FOR UPDATE";
const MARK_DONE: &str = "UPDATE harvest_tile SET state = 'done', lease_expires_at = NULL, last_error = NULL, \
     images = $7, sequences = $8, features = $9, new = $10, changed = $11, deleted = $12, updated_at = now() \
     WHERE run_id = $1 AND tileset = $2 AND z = $3 AND x = $4 AND y = $5 AND lease_owner = $6 AND state = 'leased'";
const COUNT_BY_STATE: &str =
    "SELECT tileset, state, count(*) FROM harvest_tile WHERE run_id = $1 GROUP BY 1, 2 ORDER BY 1, 2";
/// Every tile of a run with its outcome. A 304 leaves the tile's counts at 0 but keeps
/// `tile_state.record_count`, which tells "unchanged" from "empty".
const TILE_OUTCOMES: &str = "
SELECT t.tileset, t.z, t.x, t.y,
       CASE
         WHEN t.state = 'done' AND t.new + t.changed + t.deleted = 0
              AND t.images + t.features = 0 AND coalesce(s.record_count, 0) = 0 THEN 'empty'
         WHEN t.state = 'done' AND t.new + t.changed + t.deleted = 0 THEN 'unchanged'
         ELSE t.state
       END AS state
FROM harvest_tile t
LEFT JOIN tile_state s ON s.tileset = t.tileset AND s.z = t.z AND s.x = t.x AND s.y = t.y
WHERE t.run_id = $1";

/// A tile job's state in `harvest_tile.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TileState {
    /// Waiting to be claimed (possibly not before a re-read time).
    Pending,
    /// Claimed by a worker whose lease has not expired.
    Leased,
    /// Fetched and written.
    Done,
    /// Given up for this run; the same command retries it.
    Failed,
}

impl TileState {
    /// The value stored in `harvest_tile.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            TileState::Pending => "pending",
            TileState::Leased => "leased",
            TileState::Done => "done",
            TileState::Failed => "failed",
        }
    }

    /// Parses a stored state.
    pub fn parse(s: &str) -> Result<TileState, JobsError> {
        match s {
            "pending" => Ok(TileState::Pending),
            "leased" => Ok(TileState::Leased),
            "done" => Ok(TileState::Done),
            "failed" => Ok(TileState::Failed),
            other => Err(JobsError::Corrupt { what: "tile state", value: other.to_string() }),
        }
    }

    /// Whether a tile in this state still has work to do in the run.
    pub fn is_open(self) -> bool {
        matches!(self, TileState::Pending | TileState::Leased)
    }
}

impl fmt::Display for TileState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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

/// Which lease a statement acts under: the run, the tile and the worker holding it.
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub run: RunId,
    pub tileset: Tileset,
    pub tile: TileId,
    pub owner: &'a str,
}

/// What a written tile held, recorded on its done mark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DoneCounts {
    pub images: i32,
    pub sequences: i32,
    pub features: i32,
    pub new: i32,
    pub changed: i32,
    pub deleted: i32,
}

/// Tiles of a run in one tileset and state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TileCount {
    pub tileset: String,
    pub state: TileState,
    pub count: i64,
}

/// One tile of a run and how it ended, as the report colours it and the metrics count it:
/// `done` is told apart into "unchanged" and "empty" by the tile's counts.
#[derive(Debug, Clone, PartialEq)]
pub struct TileOutcomeRow {
    pub tileset: String,
    pub tile: TileId,
    /// `pending`, `leased`, `done`, `failed`, `unchanged` or `empty`.
    pub outcome: String,
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
    let owners: Vec<String> = sqlx::query_scalar(LIVE_OWNERS)
        .bind(run.0)
        .bind(owner)
        .fetch_all(store.pool())
        .await
        .map_err(q(format!("listing lease owners of run {run}")))?;
    let dead: Vec<String> = owners.into_iter().filter(|o| owner_is_dead(o, &host)).collect();
    if !dead.is_empty() {
        tracing::info!(run = run.0, dead_owners = ?dead, "reclaiming tiles of dead workers");
    }
    let rows = sqlx::query(CLAIM)
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
    let r = sqlx::query(RENEW)
        .bind(run.0)
        .bind(owner)
        .bind(millis(lease) as f64)
        .execute(store.pool())
        .await
        .map_err(q(format!("renewing leases of run {run}")))?;
    Ok(r.rows_affected())
}

/// Binds the lease's six key parameters ($1..$6) to a statement on one tile.
fn bind_lease<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    l: &Lease<'q>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let (z, x, y) = tile_key(l.tile);
    query.bind(l.run.0).bind(l.tileset.name()).bind(z).bind(x).bind(y).bind(l.owner)
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
    let l = Lease { run, tileset: c.tileset, tile: c.tile, owner };
    let r = bind_lease(sqlx::query(FAIL), &l)
        .bind(retry)
        .bind(super::redact(error))
        .execute(store.pool())
        .await
        .map_err(q(format!("recording the failure of {} tile {}", c.tileset, c.tile)))?;
    lease_held(r.rows_affected(), &l)
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
    let (empty_read, delay) = match why {
        Deferral::EmptyRead { delay } => (true, millis(delay)),
        Deferral::Blocked => (false, 0),
    };
    let l = Lease { run, tileset: c.tileset, tile: c.tile, owner };
    let r = bind_lease(sqlx::query(DEFER), &l)
        .bind(empty_read)
        .bind(delay as f64)
        .bind(super::redact(note))
        .execute(store.pool())
        .await
        .map_err(q(format!("deferring {} tile {}", c.tileset, c.tile)))?;
    lease_held(r.rows_affected(), &l)
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
    let l = Lease { run, tileset: c.tileset, tile: c.tile, owner };
    let r = bind_lease(sqlx::query(HAND_BACK), &l)
        .bind(why)
        .execute(store.pool())
        .await
        .map_err(q(format!("handing back {} tile {}", c.tileset, c.tile)))?;
    lease_held(r.rows_affected(), &l)
}

/// Gives back every lease `owner` holds (clean stop); the claims do not count as attempts.
pub async fn release(store: &Store, run: RunId, owner: &str) -> Result<(), JobsError> {
    sqlx::query(RELEASE)
        .bind(run.0)
        .bind(owner)
        .execute(store.pool())
        .await
        .map_err(q(format!("releasing leases of run {run}")))?;
    Ok(())
}

/// Locks the tile's job row inside the tile's write transaction; `LeaseLost` when another
/// worker holds it now (nothing of this worker's may then be committed for the tile).
pub async fn lock_for_write(conn: &mut PgConnection, l: &Lease<'_>) -> Result<(), JobsError> {
    let held = bind_lease(sqlx::query(LOCK_FOR_WRITE), l)
        .fetch_optional(&mut *conn)
        .await
        .map_err(q(format!("checking the lease of {} tile {}", l.tileset, l.tile)))?;
    lease_held(u64::from(held.is_some()), l)
}

/// Marks the tile done inside its write transaction, with what it held.
pub async fn mark_done(conn: &mut PgConnection, l: &Lease<'_>, n: &DoneCounts) -> Result<(), JobsError> {
    let r = bind_lease(sqlx::query(MARK_DONE), l)
        .bind(n.images)
        .bind(n.sequences)
        .bind(n.features)
        .bind(n.new)
        .bind(n.changed)
        .bind(n.deleted)
        .execute(&mut *conn)
        .await
        .map_err(q(format!("marking {} tile {} done", l.tileset, l.tile)))?;
    lease_held(r.rows_affected(), l)
}

fn lease_held(rows: u64, l: &Lease<'_>) -> Result<(), JobsError> {
    if rows == 0 {
        return Err(JobsError::LeaseLost { run: l.run, tileset: l.tileset, tile: l.tile });
    }
    Ok(())
}

/// Tile counts of one run per (tileset, state).
pub async fn run_tiles(store: &Store, run: RunId) -> Result<Vec<TileCount>, JobsError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(COUNT_BY_STATE)
        .bind(run.0)
        .fetch_all(store.pool())
        .await
        .map_err(q(format!("counting tiles of run {run}")))?;
    rows.into_iter()
        .map(|(tileset, state, count)| Ok(TileCount { tileset, state: TileState::parse(&state)?, count }))
        .collect()
}

/// Every tile of `run` with its outcome.
pub async fn tile_outcomes(store: &Store, run: RunId) -> Result<Vec<TileOutcomeRow>, JobsError> {
    let rows: Vec<(String, i16, i32, i32, String)> = sqlx::query_as(TILE_OUTCOMES)
        .bind(run.0)
        .fetch_all(store.pool())
        .await
        .map_err(q(format!("reading the tiles of run {run}")))?;
    rows.into_iter()
        .map(|(tileset, z, x, y, outcome)| {
            let (_, tile) = parse_tile(&tileset, z, x, y)?;
            Ok(TileOutcomeRow { tileset, tile, outcome })
        })
        .collect()
}
