//! The job state that makes every run resumable: runs (`harvest_run`), tile jobs with leases
//! (`harvest_tile`), scope listings (`harvest_scope`, see [`scopes`]), and the tile server block
//! (`mly_harvest_global.tile_block`). Every statement on these tables lives in this module.

pub mod block;
pub mod budget;
mod runs;
pub mod scopes;
mod tiles;
pub mod workers;

use std::fmt;
use std::time::Duration;

use crate::store::StoreError;
use mly_contract::Tileset;
use mly_contract::tiles::TileId;

pub use runs::{
    PlanningLock, RunInfo, RunStatus, RunSummary, finish, is_planned, last_success, open_run, runs,
    save_plan, start_or_resume, try_lock_planning,
};
pub use tiles::{
    Claimed, Deferral, DoneCounts, Lease, TileCount, TileOutcomeRow, TileState, add_dependents, claim,
    defer_tile, fail_tile, hand_back, lock_for_write, mark_done, release, renew, run_tiles, tile_outcomes,
};

/// Errors of job-state handling.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("database error while {context}: {}", crate::store::describe(source))]
    Query {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("lease lost on tile {tileset} {tile} (run {run}): another worker holds it now")]
    LeaseLost { run: RunId, tileset: Tileset, tile: TileId },
    #[error("lost the lease of scope run {run}: another worker holds it now")]
    ScopeLeaseLost { run: RunId },
    #[error("run {0} does not exist")]
    NoSuchRun(RunId),
    #[error("job table holds an invalid {what}: {value:?}")]
    Corrupt { what: &'static str, value: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn q(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> JobsError {
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

/// One tile of a run's plan: to fetch, or skipped with a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedTile {
    pub tileset: Tileset,
    pub tile: TileId,
    /// `Some`: not fetched this run, and why.
    pub skip: Option<SkipReason>,
}

impl PlannedTile {
    /// A tile to fetch.
    pub fn fetch(tileset: Tileset, tile: TileId) -> PlannedTile {
        PlannedTile { tileset, tile, skip: None }
    }
}

/// Why planning decided not to fetch a tile this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A Graph search found no image in it.
    Empty,
    /// Its low-zoom sequence tile shows no change there and its rolling refresh is not due.
    Unchanged,
}

impl SkipReason {
    /// The value stored in `harvest_tile.skip_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Empty => "empty",
            SkipReason::Unchanged => "unchanged",
        }
    }
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
pub(crate) fn owner_is_dead(owner: &str, host: &str) -> bool {
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
pub(crate) fn scrub_settings(v: &serde_json::Value) -> serde_json::Value {
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

pub(crate) fn tile_key(t: TileId) -> (i16, i32, i32) {
    // TileId::new limits z to 30 and x/y below 2^30, so these casts never truncate valid tiles.
    (i16::from(t.z), t.x as i32, t.y as i32)
}

pub(crate) fn parse_tile(tileset: &str, z: i16, x: i32, y: i32) -> Result<(Tileset, TileId), JobsError> {
    let ts = Tileset::from_name(tileset)
        .ok_or_else(|| JobsError::Corrupt { what: "tileset", value: tileset.into() })?;
    let bad = || JobsError::Corrupt { what: "tile", value: format!("{z}/{x}/{y}") };
    let z = u8::try_from(z).map_err(|_| bad())?;
    let x = u32::try_from(x).map_err(|_| bad())?;
    let y = u32::try_from(y).map_err(|_| bad())?;
    Ok((ts, TileId::new(z, x, y).map_err(|_| bad())?))
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
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
