//! The commit stage of a scope: ONE transaction per page (its rows, the records it saw, the
//! feature cells around it and the listing's advance), per feature cell (its features and its
//! done mark) and for the deletion check (its tombstones and the pass's end). Each locks the
//! scope row first and checks that this worker holds it where the step started, so a step is
//! committed once or not at all: killed at any point, a rerun redoes exactly the uncommitted step.
//! A deadlock or serialization failure with a concurrent writer retries the whole transaction.

use std::time::Duration;

use sqlx::PgConnection;

use super::features::cells_around;
use crate::jobs::RunId;
use crate::jobs::scopes::{self, Advance, Phase, Position, SeenKind};
use crate::pipeline::CommitError;
use crate::store::{
    ScopeCounts, ScopeRows, Store, StoreError, image_position, query_err, write, write_scope_rows,
};
use mly_contract::tiles::TileId;

/// Retries of a transaction after a deadlock/serialization failure with a concurrent writer.
const MAX_ATTEMPTS: u32 = 3;

/// The worker holding a scope run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Holder<'a> {
    pub(crate) run: RunId,
    pub(crate) owner: &'a str,
    pub(crate) lease: Duration,
}

/// One page's write.
#[derive(Debug, Default)]
pub(crate) struct PageWrite {
    pub(crate) rows: ScopeRows,
    /// Ids the page listed (a complete pass records them for its deletion check).
    pub(crate) seen: Vec<i64>,
    /// Which images' surroundings the map-feature phase searches.
    pub(crate) cells: Cells,
}

/// Around which of a page's images map features are searched.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cells {
    /// None (the config harvests no map features).
    #[default]
    None,
    /// Every image of the page (a complete pass: features of old images are found and checked too).
    All,
    /// The images the page's write changed (an incremental pass: an unchanged re-listing costs
    /// no search).
    Written,
}

/// What a step writes besides its rows.
enum Step<'a> {
    Page { seen: &'a [i64], cells: Cells, advance: &'a Advance },
    Cell { cell: TileId, seen: &'a [i64] },
    Check,
}

impl Step<'_> {
    fn phase(&self) -> Phase {
        match self {
            Step::Page { .. } => Phase::Listing,
            Step::Cell { .. } => Phase::Features,
            Step::Check => Phase::Checking,
        }
    }
}

/// Commits a page at `at` and moves the listing on by `advance`.
pub(crate) async fn commit_page(
    store: &Store,
    h: Holder<'_>,
    at: &Position,
    w: &PageWrite,
    advance: &Advance,
) -> Result<ScopeCounts, CommitError> {
    with_retries(store, h, at, &w.rows, Step::Page { seen: &w.seen, cells: w.cells, advance }).await
}

/// Commits the map features of one cell (`seen`: their ids, recorded by a complete pass).
pub(crate) async fn commit_cell(
    store: &Store,
    h: Holder<'_>,
    at: &Position,
    cell: TileId,
    rows: &ScopeRows,
    seen: &[i64],
) -> Result<ScopeCounts, CommitError> {
    with_retries(store, h, at, rows, Step::Cell { cell, seen }).await
}

/// Commits the deletion check's rows and ends the pass.
pub(crate) async fn commit_check(
    store: &Store,
    h: Holder<'_>,
    at: &Position,
    rows: &ScopeRows,
) -> Result<ScopeCounts, CommitError> {
    with_retries(store, h, at, rows, Step::Check).await
}

/// Moves the pass from one phase to the next (nothing else to write).
pub(crate) async fn move_phase(
    store: &Store,
    h: Holder<'_>,
    from: Phase,
    to: Phase,
) -> Result<(), CommitError> {
    let mut tx = store.pool().begin().await.map_err(query_err("starting a phase change"))?;
    scopes::set_phase(&mut tx, h.run, h.owner, from, to).await?;
    tx.commit().await.map_err(query_err("committing a phase change"))?;
    Ok(())
}

async fn with_retries(
    store: &Store,
    h: Holder<'_>,
    at: &Position,
    rows: &ScopeRows,
    step: Step<'_>,
) -> Result<ScopeCounts, CommitError> {
    let mut attempt = 1;
    loop {
        let mut tx = store.pool().begin().await.map_err(query_err("starting a scope write"))?;
        match once(&mut tx, h, at, rows, &step).await {
            Ok(c) => {
                tx.commit().await.map_err(query_err("committing a scope write"))?;
                return Ok(c);
            }
            Err(CommitError::Store(StoreError::Query { context, source }))
                if attempt < MAX_ATTEMPTS && write::is_retryable(&source) =>
            {
                tracing::warn!(run = %h.run, attempt, %context, error = %source,
                    "scope write conflicted with a concurrent writer, retrying");
                attempt += 1;
            }
            // Dropping `tx` rolls back everything written above.
            Err(e) => return Err(e),
        }
    }
}

async fn once(
    conn: &mut PgConnection,
    h: Holder<'_>,
    at: &Position,
    rows: &ScopeRows,
    step: &Step<'_>,
) -> Result<ScopeCounts, CommitError> {
    // The scope row first: fail fast if the lease is gone or the listing moved on.
    scopes::lock_scope_at(conn, h.run, h.owner, step.phase(), at).await?;
    let written = write_scope_rows(conn, rows).await?;
    match step {
        Step::Page { seen, cells, advance } => {
            scopes::mark_seen(conn, h.run, SeenKind::Image, seen).await?;
            let around: Vec<TileId> = match cells {
                Cells::None => Vec::new(),
                Cells::All => cells_around(rows.images.iter().filter_map(image_position)),
                Cells::Written => cells_around(
                    rows.images
                        .iter()
                        .filter(|d| written.images.binary_search(&d.id.0).is_ok())
                        .filter_map(image_position),
                ),
            };
            scopes::add_cells(conn, h.run, &around).await?;
            scopes::advance(conn, h.run, h.owner, advance, h.lease).await?;
        }
        Step::Cell { cell, seen } => {
            scopes::mark_seen(conn, h.run, SeenKind::Feature, seen).await?;
            scopes::cell_done(conn, h.run, *cell).await?;
        }
        Step::Check => scopes::set_phase(conn, h.run, h.owner, Phase::Checking, Phase::Done).await?,
    }
    Ok(written.counts)
}
