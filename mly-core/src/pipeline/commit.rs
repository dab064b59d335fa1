//! The store stage: ONE transaction per tile that locks the tile's job row, writes its rows and
//! marks it done, so that a tile's rows and its done state commit together (or not at all).
//! A deadlock or serialization failure with a concurrent writer retries the whole transaction.

use std::time::Instant;

use crate::jobs::{self, DoneCounts, JobsError, Lease};
use crate::store::{Stage, Store, StoreError, TileWrite, WriteCounts, query_err, write};

/// Retries of a tile transaction after a deadlock/serialization failure with a concurrent writer.
const MAX_ATTEMPTS: u32 = 3;

/// Why a tile could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Jobs(#[from] JobsError),
}

/// Writes `w` under `lease` and marks the tile done, in one transaction.
pub async fn commit_tile(
    store: &Store,
    lease: &Lease<'_>,
    w: &TileWrite,
) -> Result<WriteCounts, CommitError> {
    let times = store.times();
    // Encoding is pure CPU work: once, outside the retried transaction.
    let encoding = Instant::now();
    let staged = write::Staged::encode(w)?;
    times.add(Stage::Encode, encoding);
    let mut attempt = 1;
    loop {
        let started = Instant::now();
        match commit_once(store, lease, w, &staged).await {
            Ok(c) => {
                tracing::debug!(
                    tileset = %w.tileset, tile = %w.tile, new = c.new, changed = c.changed, deleted = c.deleted,
                    revived = c.revived, total = c.total, ms = started.elapsed().as_millis() as u64,
                    "tile written"
                );
                return Ok(c);
            }
            Err(CommitError::Store(StoreError::Query { context, source }))
                if attempt < MAX_ATTEMPTS && write::is_retryable(&source) =>
            {
                tracing::warn!(tileset = %w.tileset, tile = %w.tile, attempt, %context, error = %source,
                    "tile write conflicted with a concurrent writer, retrying");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn commit_once(
    store: &Store,
    lease: &Lease<'_>,
    w: &TileWrite,
    staged: &write::Staged,
) -> Result<WriteCounts, CommitError> {
    let ctx = |what: &str| format!("{what} for {} tile {}", w.tileset, w.tile);
    let reading = Instant::now();
    let mut tx = store.pool().begin().await.map_err(query_err(ctx("starting the write")))?;
    // The job row first: fail fast if the lease is gone, and make a concurrent claimer skip it.
    jobs::lock_for_write(&mut tx, lease).await?;
    store.times().add(Stage::Read, reading);
    let counts = write::write_rows(&mut tx, store.times(), w, staged).await?;
    let committing = Instant::now();
    let n = |v: u64| i32::try_from(v).unwrap_or(i32::MAX);
    let done = DoneCounts {
        images: n(w.images.len() as u64),
        sequences: n(w.sequences.len() as u64),
        features: n(w.features.len() as u64),
        new: n(counts.new + counts.revived),
        changed: n(counts.changed),
        deleted: n(counts.deleted),
    };
    // Dropping `tx` on a lost lease rolls back every row written above.
    jobs::mark_done(&mut tx, lease, &done).await?;
    tx.commit().await.map_err(query_err(ctx("committing")))?;
    store.times().add(Stage::Commit, committing);
    Ok(counts)
}
