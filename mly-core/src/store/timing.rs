//! Where a load's time goes: time per pipeline stage, summed over the tiles of a process.

use std::sync::atomic::{AtomicU64, Ordering};

/// The stages a tile goes through, for measuring where a load's time goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the tile's ETag and live records before fetching it.
    Snapshot,
    /// Waiting for the tile server.
    Fetch,
    /// Decoding the MVT (blocking pool).
    Decode,
    /// Looking up records of the tile that live elsewhere in the database (diff).
    Lookup,
    /// Graph API enrichment.
    Enrich,
    /// Encoding the rows as COPY text.
    Encode,
    /// Inside the write transaction: lease check and reading the tile's live rows.
    Read,
    /// COPY, counting and upserting the rows that change.
    Upsert,
    /// Tombstoning records that vanished from the tile.
    Tombstone,
    /// Rebuilding the lines of sequences whose images changed.
    Sequences,
    /// Tile state, done mark and commit.
    Commit,
}

impl Stage {
    const ALL: [Stage; 11] = [
        Stage::Snapshot,
        Stage::Fetch,
        Stage::Decode,
        Stage::Lookup,
        Stage::Enrich,
        Stage::Encode,
        Stage::Read,
        Stage::Upsert,
        Stage::Tombstone,
        Stage::Sequences,
        Stage::Commit,
    ];

    fn name(self) -> &'static str {
        match self {
            Stage::Snapshot => "snapshot",
            Stage::Fetch => "fetch",
            Stage::Decode => "decode",
            Stage::Lookup => "lookup",
            Stage::Enrich => "enrich",
            Stage::Encode => "encode",
            Stage::Read => "read",
            Stage::Upsert => "upsert",
            Stage::Tombstone => "tombstone",
            Stage::Sequences => "sequences",
            Stage::Commit => "commit",
        }
    }
}

/// Time spent per [`Stage`], summed over every tile of this process (tiles run concurrently, so
/// the sum exceeds the wall time). Logged at the end of a run with `-v`.
#[derive(Debug, Default)]
pub struct StageTimes {
    nanos: [AtomicU64; Stage::ALL.len()],
}

impl StageTimes {
    /// Adds the time since `since` to `stage`.
    pub fn add(&self, stage: Stage, since: std::time::Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos[stage as usize].fetch_add(ns, Ordering::Relaxed);
    }

    /// Milliseconds per stage, in pipeline order.
    pub fn millis(&self) -> Vec<(&'static str, u64)> {
        Stage::ALL
            .iter()
            .map(|s| (s.name(), self.nanos[*s as usize].load(Ordering::Relaxed) / 1_000_000))
            .collect()
    }

    /// "fetch 1200 ms, decode 300 ms, ..." (stages that took no time are left out).
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .millis()
            .into_iter()
            .filter(|(_, ms)| *ms > 0)
            .map(|(n, ms)| format!("{n} {ms} ms"))
            .collect();
        parts.join(", ")
    }
}
