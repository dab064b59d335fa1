//! What one process did in a run: live counters while it works, a typed snapshot for the
//! summary, the run's row in `harvest_run.counters` and the metrics file.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::WriteCounts;

/// Record and tile counters of this process in a run.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    tiles_done: AtomicU64,
    tiles_failed: AtomicU64,
    tiles_unchanged: AtomicU64,
    images: AtomicU64,
    features: AtomicU64,
    new: AtomicU64,
    changed: AtomicU64,
    deleted: AtomicU64,
    enriched: AtomicU64,
    missing: AtomicU64,
    missing_from_tile: AtomicU64,
    moved_away: AtomicU64,
    rechecked: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessCounters {
    /// Tiles written (including unchanged ones).
    pub tiles_done: u64,
    /// Tiles given up for this run.
    pub tiles_failed: u64,
    /// Tiles the server answered "not modified".
    pub tiles_unchanged: u64,
    /// Images the written coverage tiles listed.
    pub images: u64,
    /// Features the written feature tiles listed.
    pub features: u64,
    /// Records new to the database (or revived).
    pub new: u64,
    /// Live records whose tile properties changed or that were enriched again.
    pub changed: u64,
    /// Records the Graph API confirmed gone (tombstoned).
    pub deleted: u64,
    /// Records enriched through the Graph API.
    pub enriched: u64,
    /// Records a tile lists that the Graph API does not know (yet).
    pub missing: u64,
    /// Live records gone from their tile but confirmed present upstream: kept.
    pub missing_from_tile: u64,
    /// Live records gone from their tile that the Graph API places in another tile: moved.
    pub moved_away: u64,
    /// Tiles read again later because they read empty while holding live records.
    pub rechecked: u64,
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    /// A tile was written; `counts` is what its transaction committed.
    pub(crate) fn written(&self, images: usize, features: usize, counts: &WriteCounts) {
        add(&self.images, images as u64);
        add(&self.features, features as u64);
        add(&self.new, counts.new);
        add(&self.changed, counts.changed);
        add(&self.deleted, counts.deleted);
        add(&self.missing_from_tile, counts.missing_from_tile);
        add(&self.moved_away, counts.moved_away);
        add(&self.tiles_done, 1);
    }

    /// The server answered "not modified" and the tile's state was recorded.
    pub(crate) fn unchanged(&self) {
        add(&self.tiles_unchanged, 1);
        add(&self.tiles_done, 1);
    }

    /// A tile was given up for this run.
    pub(crate) fn failed(&self) {
        add(&self.tiles_failed, 1);
    }

    /// A tile read empty while holding live records and goes back for a later read.
    pub(crate) fn rechecked(&self) {
        add(&self.rechecked, 1);
    }

    /// An enrichment found `found` records and not `missing` others.
    pub(crate) fn enriched(&self, found: usize, missing: usize) {
        add(&self.enriched, found as u64);
        add(&self.missing, missing as u64);
    }

    /// Records this process has made new so far (drives the statistics refresh).
    pub(crate) fn new_records(&self) -> u64 {
        self.new.load(Ordering::Relaxed)
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> ProcessCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProcessCounters {
            tiles_done: g(&self.tiles_done),
            tiles_failed: g(&self.tiles_failed),
            tiles_unchanged: g(&self.tiles_unchanged),
            images: g(&self.images),
            features: g(&self.features),
            new: g(&self.new),
            changed: g(&self.changed),
            deleted: g(&self.deleted),
            enriched: g(&self.enriched),
            missing: g(&self.missing),
            missing_from_tile: g(&self.missing_from_tile),
            moved_away: g(&self.moved_away),
            rechecked: g(&self.rechecked),
        }
    }
}
