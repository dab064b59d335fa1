//! A tile's data write, inside the transaction that also marks its job done (see
//! `pipeline::commit`): read what the tile holds in the database, write only the rows that
//! change (straight COPY into the table when the tile is new there, else COPY into a temp staging
//! table and a set-based upsert), tombstones by id, the lines of the sequences whose images
//! changed, and the tile's state row.
//!
//! A re-read of an unchanged tile writes no data row at all: records whose tile fingerprint and tile
//! are what the database holds are not sent, and every upsert is guarded so that a row that would
//! come out equal is not rewritten (no dead tuple, no WAL); only the tile's state row records the
//! fetch.

mod copy;
mod plan;
pub mod scope;
mod sql;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use sqlx::{PgConnection, Row};

use super::{Stage, StageTimes, StoreError, TileWrite, WriteCounts, feature_kind, query_err, tile_key};
use copy::EncodedRows;
use mly_contract::Tileset;
use plan::{Gone, TileSequences, plan};
use sql::*;

pub use copy::Staged;

/// PostgreSQL's unique_violation: a direct COPY met a record that exists after all.
const UNIQUE_VIOLATION: &str = "23505";

/// Deadlocks and serialization failures between concurrent tile writers are safe to retry.
pub fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01") | Some("40001")))
}

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Query { source: sqlx::Error::Database(db), .. }
        if db.code().as_deref() == Some(UNIQUE_VIOLATION))
}

/// Writes a tile's rows inside the caller's transaction (which holds the tile's job lock and
/// marks it done after this): only the rows that change, tombstones by id, the lines of the
/// sequences whose images changed, detections and the tile's state row.
pub async fn write_rows(
    conn: &mut PgConnection,
    times: &StageTimes,
    w: &TileWrite,
    s: &Staged,
) -> Result<WriteCounts, StoreError> {
    let tile = w.tile;
    let ctx = |what: &str| format!("{what} for {} tile {tile}", w.tileset);
    let (z, x, y) = tile_key(tile);
    let reading = Instant::now();
    let mut counts = WriteCounts::default();
    if !w.unchanged {
        let kind = feature_kind(w.tileset);
        // What the tile holds in the database now. Under our lease only this tile's writer gives
        // rows these coordinates, so this is exact for the rest of the transaction (rows can only
        // leave, moved by a neighbour's writer; the statements below re-check the tile).
        let live = read_live(conn, kind, (z, x, y), &ctx("reading the tile's live rows")).await?;
        times.add(Stage::Read, reading);
        let (rows, plan) = match kind {
            None => (&s.images, plan(&s.images.keys, &live)),
            Some(_) => (&s.features, plan(&s.features.keys, &live)),
        };
        counts.total = plan.distinct;
        let mut touched: HashSet<String> = HashSet::new();

        let upserting = Instant::now();
        if !plan.write.is_empty() {
            let ids: Vec<i64> = plan.write.iter().map(|&i| rows.keys[i].id).collect();
            // A tile that has no live row and lists each record once is (almost always) new to the
            // database: COPY straight into the table. A record stored under another tile or
            // tombstoned makes the COPY fail on the primary key; the savepoint then gives the
            // staging path its turn, in the same transaction.
            let mut direct = live.is_empty() && plan.unique;
            if direct {
                match copy_direct(conn, kind, rows, &plan.write, &ctx).await {
                    Ok(()) => counts.new += ids.len() as u64,
                    Err(e) if is_unique_violation(&e) => direct = false,
                    Err(e) => return Err(e),
                }
                if direct && !rows.links.is_empty() {
                    // New features with details: their image links (no old ones to replace).
                    sqlx::raw_sql(CREATE_STAGE_LINKS)
                        .execute(&mut *conn)
                        .await
                        .map_err(query_err(ctx("creating the links staging table")))?;
                    copy(conn, "COPY stage_link FROM STDIN", &rows.links, &ctx("staging feature images"))
                        .await?;
                    sqlx::query(INSERT_LINKS)
                        .execute(&mut *conn)
                        .await
                        .map_err(query_err(ctx("linking feature images")))?;
                }
            }
            if !direct {
                add(
                    &mut counts,
                    stage_and_upsert(conn, w, kind, rows, &plan.write, &ids, &mut touched, &ctx).await?,
                );
            }
            if kind.is_none() {
                touched.extend(plan.write.iter().filter_map(|&i| s.image_sequences[i].clone()));
            }
        }
        times.add(Stage::Upsert, upserting);

        let tombstoning = Instant::now();
        let gone = Gone::of(w, &rows.keys);
        let computed = w.tileset == Tileset::ComputedPublic;
        match kind {
            None => {
                if !gone.deleted.is_empty() {
                    let seqs: Vec<Option<String>> = sqlx::query_scalar(TOMBSTONE_IMAGES)
                        .bind(z)
                        .bind(x)
                        .bind(y)
                        .bind(&gone.deleted)
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(query_err(ctx("tombstoning images confirmed gone")))?;
                    counts.deleted += seqs.len() as u64;
                    touched.extend(seqs.into_iter().flatten());
                }
                if !gone.missing.is_empty() {
                    let kept: i64 = sqlx::query_scalar(MARK_MISSING_IMAGES)
                        .bind(z)
                        .bind(x)
                        .bind(y)
                        .bind(&gone.missing)
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(query_err(ctx("keeping images missing from their tile")))?;
                    counts.missing_from_tile += kept.max(0) as u64;
                }
                if !gone.moved.ids.is_empty() {
                    let m = &gone.moved;
                    let seqs: Vec<Option<String>> = sqlx::query_scalar(MOVE_AWAY_IMAGES)
                        .bind(z)
                        .bind(x)
                        .bind(y)
                        .bind(&m.ids)
                        .bind(&m.xs)
                        .bind(&m.ys)
                        .bind(&m.lons)
                        .bind(&m.lats)
                        .bind(computed)
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(query_err(ctx("moving images to their new tile")))?;
                    counts.moved_away += seqs.len() as u64;
                    touched.extend(seqs.into_iter().flatten());
                }
            }
            Some(kind) => {
                if !gone.deleted.is_empty() {
                    let r = sqlx::query(TOMBSTONE_FEATURES)
                        .bind(z)
                        .bind(x)
                        .bind(y)
                        .bind(kind)
                        .bind(&gone.deleted)
                        .execute(&mut *conn)
                        .await
                        .map_err(query_err(ctx("tombstoning map features confirmed gone")))?;
                    counts.deleted += r.rows_affected();
                }
                if !gone.missing.is_empty() {
                    let kept: i64 = sqlx::query_scalar(MARK_MISSING_FEATURES)
                        .bind(z)
                        .bind(x)
                        .bind(y)
                        .bind(kind)
                        .bind(&gone.missing)
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(query_err(ctx("keeping map features missing from their tile")))?;
                    counts.missing_from_tile += kept.max(0) as u64;
                }
                if !gone.moved.ids.is_empty() {
                    let m = &gone.moved;
                    let r = sqlx::query(MOVE_AWAY_FEATURES)
                        .bind(z)
                        .bind(x)
                        .bind(y)
                        .bind(kind)
                        .bind(&m.ids)
                        .bind(&m.xs)
                        .bind(&m.ys)
                        .bind(&m.lons)
                        .bind(&m.lats)
                        .execute(&mut *conn)
                        .await
                        .map_err(query_err(ctx("moving map features to their new tile")))?;
                    counts.moved_away += r.rows_affected();
                }
            }
        }
        times.add(Stage::Tombstone, tombstoning);

        if kind.is_none() || !w.sequences.is_empty() {
            let rebuilding = Instant::now();
            let tile_seqs = TileSequences::of(w);
            if !tile_seqs.ids.is_empty() {
                let update: Vec<String> = sqlx::query_scalar(SEQUENCES_TO_UPDATE)
                    .bind(&tile_seqs.ids)
                    .bind(&tile_seqs.is_pano)
                    .bind(&tile_seqs.creator)
                    .bind(&tile_seqs.org)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(query_err(ctx("comparing the tile's sequences")))?;
                touched.extend(update);
            }
            if !touched.is_empty() {
                rebuild_sequences(conn, touched, &tile_seqs, &ctx).await?;
            }
            times.add(Stage::Sequences, rebuilding);
        }

        if !w.detections.is_empty() {
            let upserting = Instant::now();
            sqlx::raw_sql(CREATE_STAGE_DETECTIONS)
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("creating the detections staging table")))?;
            copy(conn, "COPY stage_det FROM STDIN", &s.detections, &ctx("staging detections")).await?;
            sqlx::query(UPSERT_DETECTIONS)
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("upserting detections")))?;
            times.add(Stage::Upsert, upserting);
        }
    } else {
        times.add(Stage::Read, reading);
    }

    let committing = Instant::now();
    let changed = counts.new + counts.changed + counts.deleted + counts.revived > 0;
    let record_count = if w.tileset.is_coverage() { s.image_count } else { s.feature_count };
    sqlx::query(UPSERT_TILE_STATE)
        .bind(w.tileset.name())
        .bind(z)
        .bind(x)
        .bind(y)
        .bind(w.etag.as_deref())
        .bind(changed)
        .bind(record_count)
        .bind(w.unchanged)
        .execute(&mut *conn)
        .await
        .map_err(query_err(ctx("updating the tile state")))?;

    times.add(Stage::Commit, committing);
    Ok(counts)
}

/// Rebuilds the lines of the touched sequences: new ones inserted, existing ones locked and
/// recomputed (see LOCK_SEQUENCES for why).
async fn rebuild_sequences(
    conn: &mut PgConnection,
    touched: HashSet<String>,
    tile_seqs: &TileSequences,
    ctx: &(dyn Fn(&str) -> String + Sync),
) -> Result<(), StoreError> {
    // Sorted: concurrent writers of shared sequences take them in the same order.
    let mut ids: Vec<String> = touched.into_iter().collect();
    ids.sort_unstable();
    let inserted: Vec<String> = sqlx::query_scalar(INSERT_NEW_SEQUENCES)
        .bind(&ids)
        .bind(&tile_seqs.ids)
        .bind(&tile_seqs.is_pano)
        .bind(&tile_seqs.creator)
        .bind(&tile_seqs.org)
        .fetch_all(&mut *conn)
        .await
        .map_err(query_err(ctx("inserting new sequences")))?;
    if inserted.len() == ids.len() {
        return Ok(());
    }
    let inserted: HashSet<String> = inserted.into_iter().collect();
    ids.retain(|id| !inserted.contains(id));
    sqlx::query(LOCK_SEQUENCES)
        .bind(&ids)
        .execute(&mut *conn)
        .await
        .map_err(query_err(ctx("locking sequences")))?;
    sqlx::query(REBUILD_SEQUENCES)
        .bind(&ids)
        .bind(&tile_seqs.ids)
        .bind(&tile_seqs.is_pano)
        .bind(&tile_seqs.creator)
        .bind(&tile_seqs.org)
        .execute(&mut *conn)
        .await
        .map_err(query_err(ctx("rebuilding sequences")))?;
    Ok(())
}

/// Live ids of the tile (images, or the features of one kind) with their stored fingerprints.
async fn read_live(
    conn: &mut PgConnection,
    kind: Option<&'static str>,
    (z, x, y): (i16, i32, i32),
    ctx: &str,
) -> Result<HashMap<i64, Option<i64>>, StoreError> {
    let rows: Vec<(i64, Option<i64>)> = match kind {
        None => sqlx::query_as(LIVE_IMAGES).bind(z).bind(x).bind(y).fetch_all(&mut *conn).await,
        Some(kind) => {
            sqlx::query_as(LIVE_FEATURES).bind(z).bind(x).bind(y).bind(kind).fetch_all(&mut *conn).await
        }
    }
    .map_err(query_err(ctx))?;
    Ok(rows.into_iter().collect())
}

/// COPY of the planned rows straight into the table, inside a savepoint so that a primary-key
/// conflict can be rolled back alone.
async fn copy_direct(
    conn: &mut PgConnection,
    kind: Option<&'static str>,
    rows: &EncodedRows,
    write: &[usize],
    ctx: &(dyn Fn(&str) -> String + Sync),
) -> Result<(), StoreError> {
    sqlx::raw_sql("SAVEPOINT direct_copy")
        .execute(&mut *conn)
        .await
        .map_err(query_err(ctx("opening a savepoint")))?;
    let stmt = if kind.is_none() { COPY_IMAGES } else { COPY_FEATURES };
    match copy(conn, stmt, &rows.select(write), &ctx("copying new rows")).await {
        Ok(()) => {
            sqlx::raw_sql("RELEASE SAVEPOINT direct_copy")
                .execute(&mut *conn)
                .await
                .map_err(query_err(ctx("releasing a savepoint")))?;
            Ok(())
        }
        Err(e) => {
            if is_unique_violation(&e) {
                tracing::debug!(error = %e, "a direct COPY met a stored record; staging instead");
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT direct_copy")
                    .execute(&mut *conn)
                    .await
                    .map_err(query_err(ctx("rolling back to a savepoint")))?;
            }
            Err(e)
        }
    }
}

/// The staging path: COPY the planned rows into a temp table, count what they change, upsert.
/// Adds the sequences the written images belonged to before to `touched`.
#[allow(clippy::too_many_arguments)]
async fn stage_and_upsert(
    conn: &mut PgConnection,
    w: &TileWrite,
    kind: Option<&'static str>,
    rows: &EncodedRows,
    write: &[usize],
    ids: &[i64],
    touched: &mut HashSet<String>,
    ctx: &(dyn Fn(&str) -> String + Sync),
) -> Result<(u64, u64, u64, u64), StoreError> {
    let (z, x, y) = tile_key(w.tile);
    let data = rows.select(write);
    if kind.is_none() {
        sqlx::raw_sql(CREATE_STAGE_IMAGES)
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("creating the staging table")))?;
        copy(conn, COPY_STAGE_IMAGES, &data, &ctx("staging images")).await?;
        let counts = fetch_counts(conn, COUNT_IMAGES, (z, x, y), &ctx("counting image changes")).await?;
        let former: Vec<String> = sqlx::query_scalar(FORMER_SEQUENCES)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(query_err(ctx("collecting touched sequences")))?;
        touched.extend(former);
        sqlx::query(UPSERT_IMAGES)
            .bind(w.tileset == Tileset::ComputedPublic)
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("upserting images")))?;
        Ok(counts)
    } else {
        sqlx::raw_sql(CREATE_STAGE_FEATURES)
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("creating the staging table")))?;
        sqlx::raw_sql(CREATE_STAGE_LINKS)
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("creating the links staging table")))?;
        copy(conn, COPY_STAGE_FEATURES, &data, &ctx("staging map features")).await?;
        copy(conn, "COPY stage_link FROM STDIN", &rows.links, &ctx("staging feature images")).await?;
        let counts = fetch_counts(conn, COUNT_FEATURES, (z, x, y), &ctx("counting feature changes")).await?;
        sqlx::query(UPSERT_FEATURES)
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("upserting map features")))?;
        sqlx::query(REPLACE_LINKS)
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("replacing feature images")))?;
        sqlx::query(INSERT_LINKS)
            .execute(&mut *conn)
            .await
            .map_err(query_err(ctx("linking feature images")))?;
        Ok(counts)
    }
}

fn add(c: &mut WriteCounts, (new, changed, revived, _staged): (u64, u64, u64, u64)) {
    c.new += new;
    c.changed += changed;
    c.revived += revived;
}

pub(super) fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// (new, changed, revived, total) of the staged rows; a record that moved in from another tile is changed.
async fn fetch_counts(
    conn: &mut PgConnection,
    sql: &'static str,
    (z, x, y): (i16, i32, i32),
    ctx: &str,
) -> Result<(u64, u64, u64, u64), StoreError> {
    let r = sqlx::query(sql).bind(z).bind(x).bind(y).fetch_one(&mut *conn).await.map_err(query_err(ctx))?;
    let get = |i: usize| -> Result<u64, StoreError> {
        let v: i64 = r.try_get(i).map_err(query_err(ctx))?;
        Ok(v.max(0) as u64)
    };
    Ok((get(0)?, get(1)?, get(2)?, get(3)?))
}

async fn copy(conn: &mut PgConnection, stmt: &str, data: &[u8], ctx: &str) -> Result<(), StoreError> {
    if data.is_empty() {
        return Ok(());
    }
    let mut c = conn.copy_in_raw(stmt).await.map_err(query_err(ctx))?;
    if let Err(e) = c.send(data).await {
        // Abort so the connection leaves COPY mode cleanly; the original error is what matters.
        let _ = c.abort("staging failed").await;
        return Err(query_err(ctx)(e));
    }
    c.finish().await.map_err(query_err(ctx))?;
    Ok(())
}
