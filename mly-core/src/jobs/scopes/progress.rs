//! A pass's steps on the scope tables: the lock and advance of each page, the phase changes,
//! the records a complete pass has seen, the feature cells, and what the pass did not list.

use std::time::Duration;

use sqlx::PgConnection;

use super::{Phase, Position, f64_ms};
use crate::jobs::{JobsError, RunId, millis, q, tile_key};
use crate::model::ImageFilter;
use crate::store::{Store, live_scope_image};
use mly_contract::tiles::TileId;

/// Locks the scope row for a page's write: fails when another worker holds it now, or the
/// listing is no longer where this page started (so a page is never committed twice).
const LOCK_AT: &str = "SELECT 1 FROM harvest_scope WHERE run_id = $1 AND lease_owner = $2 AND phase = $3 \
     AND after_cursor IS NOT DISTINCT FROM $4 AND next_cell = $5 FOR UPDATE";
/// The listing moves on; the newest capture never passes the commit time (a camera clock in
/// the future must not make later passes skip today's uploads).
const ADVANCE: &str = "UPDATE harvest_scope SET after_cursor = $3, next_cell = $4, pages = pages + 1, \
     listed = listed + $5, kept = kept + $6, \
     newest_captured_at = greatest(newest_captured_at, least(to_timestamp($7 / 1000.0), now())), \
     phase = $8, lease_expires_at = now() + $9 * interval '1 millisecond', updated_at = now() \
     WHERE run_id = $1 AND lease_owner = $2";
/// The listing starts over (a cursor the API no longer accepts); what the pass saw stays seen.
const RESTART_LISTING: &str = "UPDATE harvest_scope SET after_cursor = NULL, next_cell = 0, updated_at = now() \
     WHERE run_id = $1 AND lease_owner = $2 AND phase = 'listing'";
const SET_PHASE: &str = "UPDATE harvest_scope SET phase = $4, updated_at = now() \
     WHERE run_id = $1 AND lease_owner = $2 AND phase = $3";
/// `$3` is a sorted id list; existing rows are skipped.
const MARK_SEEN: &str = "INSERT INTO harvest_scope_seen (run_id, kind, id) \
     SELECT $1, $2, unnest($3::bigint[]) ON CONFLICT DO NOTHING";
const ADD_CELLS: &str = "INSERT INTO harvest_scope_cell (run_id, z, x, y) \
     SELECT $1, z, x, y FROM unnest($2::smallint[], $3::integer[], $4::integer[]) AS c(z, x, y) \
     ORDER BY z, x, y ON CONFLICT DO NOTHING";
const OPEN_CELLS: &str =
    "SELECT z, x, y FROM harvest_scope_cell WHERE run_id = $1 AND NOT done ORDER BY z, x, y";
const CELL_DONE: &str =
    "UPDATE harvest_scope_cell SET done = true WHERE run_id = $1 AND z = $2 AND x = $3 AND y = $4";
/// Live images of the scope (creator $2 / organization $3, captured within $4..$5) that the
/// pass has not seen, with their positions.
const UNSEEN_IMAGES: &str = concat!(
    "SELECT i.id, ST_X(i.geom), ST_Y(i.geom) FROM images i WHERE ",
    live_scope_image!(),
    " AND NOT EXISTS (SELECT 1 FROM harvest_scope_seen s WHERE s.run_id = $1 AND s.kind = 'image' AND s.id = i.id)
ORDER BY i.id"
);
/// Live map features seen in a live image of the scope that the pass has not seen.
const UNSEEN_FEATURES: &str = concat!(
    "SELECT DISTINCT f.id, ST_X(f.geom), ST_Y(f.geom) FROM map_features f
JOIN map_feature_images l ON l.map_feature_id = f.id
JOIN images i ON i.id = l.image_id
WHERE f.deleted_at IS NULL AND ",
    live_scope_image!(),
    " AND NOT EXISTS (SELECT 1 FROM harvest_scope_seen s WHERE s.run_id = $1 AND s.kind = 'feature' AND s.id = f.id)
ORDER BY f.id"
);
/// One page's advance, written with its rows.
#[derive(Debug, Clone)]
pub struct Advance {
    pub next: Position,
    pub listed: i32,
    pub kept: i32,
    /// Newest capture time listed on the page, ms.
    pub newest_ms: Option<i64>,
    /// The phase after this page (`Listing` while pages remain).
    pub phase: Phase,
}

/// Which records `mark_seen` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeenKind {
    Image,
    Feature,
}

impl SeenKind {
    fn as_str(self) -> &'static str {
        match self {
            SeenKind::Image => "image",
            SeenKind::Feature => "feature",
        }
    }
}

/// Locks the scope row in a page's (or cell's, or check's) transaction, checking that `owner`
/// holds it in `phase` at `at`; `ScopeLeaseLost` otherwise (nothing may then be committed).
pub async fn lock_scope_at(
    conn: &mut PgConnection,
    run: RunId,
    owner: &str,
    phase: Phase,
    at: &Position,
) -> Result<(), JobsError> {
    let held = sqlx::query(LOCK_AT)
        .bind(run.0)
        .bind(owner)
        .bind(phase.as_str())
        .bind(at.after.as_deref())
        .bind(at.cell)
        .fetch_optional(&mut *conn)
        .await
        .map_err(q(format!("checking the lease of scope run {run}")))?;
    match held {
        Some(_) => Ok(()),
        None => Err(JobsError::ScopeLeaseLost { run }),
    }
}

/// Moves the listing on past a page, in the page's transaction.
pub async fn advance(
    conn: &mut PgConnection,
    run: RunId,
    owner: &str,
    a: &Advance,
    lease: Duration,
) -> Result<(), JobsError> {
    let r = sqlx::query(ADVANCE)
        .bind(run.0)
        .bind(owner)
        .bind(a.next.after.as_deref())
        .bind(a.next.cell)
        .bind(a.listed)
        .bind(a.kept)
        .bind(f64_ms(a.newest_ms))
        .bind(a.phase.as_str())
        .bind(millis(lease) as f64)
        .execute(&mut *conn)
        .await
        .map_err(q(format!("advancing scope run {run}")))?;
    if r.rows_affected() == 0 {
        return Err(JobsError::ScopeLeaseLost { run });
    }
    Ok(())
}

/// Starts the listing over from its first page (its cursor was refused).
pub async fn restart_listing(store: &Store, run: RunId, owner: &str) -> Result<(), JobsError> {
    let r = sqlx::query(RESTART_LISTING)
        .bind(run.0)
        .bind(owner)
        .execute(store.pool())
        .await
        .map_err(q(format!("restarting the listing of scope run {run}")))?;
    if r.rows_affected() == 0 {
        return Err(JobsError::ScopeLeaseLost { run });
    }
    Ok(())
}

/// Moves the pass from phase `from` to `to`, in the caller's transaction.
pub async fn set_phase(
    conn: &mut PgConnection,
    run: RunId,
    owner: &str,
    from: Phase,
    to: Phase,
) -> Result<(), JobsError> {
    let r = sqlx::query(SET_PHASE)
        .bind(run.0)
        .bind(owner)
        .bind(from.as_str())
        .bind(to.as_str())
        .execute(&mut *conn)
        .await
        .map_err(q(format!("moving scope run {run} to {to}")))?;
    if r.rows_affected() == 0 {
        return Err(JobsError::ScopeLeaseLost { run });
    }
    Ok(())
}

/// Records that the pass listed these records (a complete pass's proof of what it saw).
pub async fn mark_seen(
    conn: &mut PgConnection,
    run: RunId,
    kind: SeenKind,
    ids: &[i64],
) -> Result<(), JobsError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    sqlx::query(MARK_SEEN)
        .bind(run.0)
        .bind(kind.as_str())
        .bind(&ids)
        .execute(&mut *conn)
        .await
        .map_err(q(format!("recording what scope run {run} saw")))?;
    Ok(())
}

/// Adds cells whose map features the pass must search.
pub async fn add_cells(conn: &mut PgConnection, run: RunId, cells: &[TileId]) -> Result<(), JobsError> {
    if cells.is_empty() {
        return Ok(());
    }
    let keys: Vec<(i16, i32, i32)> = cells.iter().map(|t| tile_key(*t)).collect();
    let zs: Vec<i16> = keys.iter().map(|k| k.0).collect();
    let xs: Vec<i32> = keys.iter().map(|k| k.1).collect();
    let ys: Vec<i32> = keys.iter().map(|k| k.2).collect();
    sqlx::query(ADD_CELLS)
        .bind(run.0)
        .bind(&zs)
        .bind(&xs)
        .bind(&ys)
        .execute(&mut *conn)
        .await
        .map_err(q(format!("adding feature cells to scope run {run}")))?;
    Ok(())
}

/// The cells whose map features are not written yet, in a stable order.
pub async fn open_cells(store: &Store, run: RunId) -> Result<Vec<TileId>, JobsError> {
    let rows: Vec<(i16, i32, i32)> = sqlx::query_as(OPEN_CELLS)
        .bind(run.0)
        .fetch_all(store.pool())
        .await
        .map_err(q(format!("reading the feature cells of scope run {run}")))?;
    rows.into_iter()
        .map(|(z, x, y)| {
            let bad = || JobsError::Corrupt { what: "scope cell", value: format!("{z}/{x}/{y}") };
            let z = u8::try_from(z).map_err(|_| bad())?;
            let x = u32::try_from(x).map_err(|_| bad())?;
            let y = u32::try_from(y).map_err(|_| bad())?;
            TileId::new(z, x, y).map_err(|_| bad())
        })
        .collect()
}

/// Marks a cell's map features written, in the cell's transaction.
pub async fn cell_done(conn: &mut PgConnection, run: RunId, cell: TileId) -> Result<(), JobsError> {
    let (z, x, y) = tile_key(cell);
    sqlx::query(CELL_DONE)
        .bind(run.0)
        .bind(z)
        .bind(x)
        .bind(y)
        .execute(&mut *conn)
        .await
        .map_err(q(format!("marking feature cell {cell} of scope run {run} done")))?;
    Ok(())
}

/// A record the pass did not list, with its stored position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unseen {
    pub id: i64,
    pub lon: f64,
    pub lat: f64,
}

async fn unseen(
    store: &Store,
    run: RunId,
    sql: &'static str,
    f: &ImageFilter,
    what: &str,
) -> Result<Vec<Unseen>, JobsError> {
    let rows: Vec<(i64, f64, f64)> = sqlx::query_as(sql)
        .bind(run.0)
        .bind(f.creator_username.as_deref())
        .bind(f.organization_id)
        .bind(f64_ms(f.start_ms))
        .bind(f64_ms(f.end_ms))
        .fetch_all(store.pool())
        .await
        .map_err(q(format!("listing the {what} scope run {run} did not list")))?;
    Ok(rows.into_iter().map(|(id, lon, lat)| Unseen { id, lon, lat }).collect())
}

/// Live images of the scope `f` (by creator, organization, capture window) the pass did not list.
pub async fn unseen_images(store: &Store, run: RunId, f: &ImageFilter) -> Result<Vec<Unseen>, JobsError> {
    unseen(store, run, UNSEEN_IMAGES, f, "images").await
}

/// Live map features seen in live images of the scope `f` that the pass did not list.
pub async fn unseen_features(store: &Store, run: RunId, f: &ImageFilter) -> Result<Vec<Unseen>, JobsError> {
    unseen(store, run, UNSEEN_FEATURES, f, "map features").await
}
