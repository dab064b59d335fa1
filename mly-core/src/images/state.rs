//! The `image_files` table (migration 0011): one row per complete file under an output
//! directory, keyed by the directory's absolute path and the image id.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::pool::PoolConnection;

use super::{ImagesError, ThumbSize};
use crate::store::{Store, query_err};

/// What the table records of one file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FileRow {
    pub image_id: i64,
    pub size: ThumbSize,
    /// Relative to the output directory.
    pub path: String,
    pub bytes: i64,
    /// Lower-case hex.
    pub sha256: String,
    pub fetched_at: DateTime<Utc>,
}

const LOAD: &str = "SELECT image_id, size, path, bytes, sha256, fetched_at FROM image_files WHERE root = $1";

const UPSERT: &str = "
INSERT INTO image_files (root, image_id, size, path, bytes, sha256, fetched_at)
SELECT $1, u.* FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::timestamptz[])
    AS u(image_id, size, path, bytes, sha256, fetched_at)
ON CONFLICT (root, image_id) DO UPDATE SET size = EXCLUDED.size, path = EXCLUDED.path,
    bytes = EXCLUDED.bytes, sha256 = EXCLUDED.sha256, fetched_at = EXCLUDED.fetched_at";

const FORGET: &str = "DELETE FROM image_files WHERE root = $1 AND image_id = ANY($2)";

/// Session lock per output directory: one process downloads into a directory at a time. The key
/// space is this feature's own (the two-key form, first key fixed), apart from the migration lock.
const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(1835101037, hashtext($1))";
const UNLOCK: &str = "SELECT pg_advisory_unlock(1835101037, hashtext($1))";

/// Every row of `root`, by image id.
pub(crate) async fn load(store: &Store, root: &str) -> Result<HashMap<i64, FileRow>, ImagesError> {
    let rows = sqlx::query(LOAD)
        .bind(root)
        .fetch_all(store.pool())
        .await
        .map_err(query_err("reading image_files"))?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let ctx = || query_err("reading image_files");
        let size: String = r.try_get(1).map_err(ctx())?;
        // The table's CHECK constraint admits only the four names; a row of a size this build
        // does not know is treated as absent (its file is fetched again).
        let Some(size) = ThumbSize::from_name(&size) else { continue };
        let row = FileRow {
            image_id: r.try_get(0).map_err(ctx())?,
            size,
            path: r.try_get(2).map_err(ctx())?,
            bytes: r.try_get(3).map_err(ctx())?,
            sha256: r.try_get(4).map_err(ctx())?,
            fetched_at: r.try_get(5).map_err(ctx())?,
        };
        out.insert(row.image_id, row);
    }
    Ok(out)
}

/// Records complete files (one statement for the batch).
pub(crate) async fn upsert(store: &Store, root: &str, rows: &[FileRow]) -> Result<(), ImagesError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.image_id).collect();
    let sizes: Vec<&str> = rows.iter().map(|r| r.size.name()).collect();
    let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    let bytes: Vec<i64> = rows.iter().map(|r| r.bytes).collect();
    let hashes: Vec<&str> = rows.iter().map(|r| r.sha256.as_str()).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.fetched_at).collect();
    sqlx::query(UPSERT)
        .bind(root)
        .bind(&ids)
        .bind(&sizes)
        .bind(&paths)
        .bind(&bytes)
        .bind(&hashes)
        .bind(&times)
        .execute(store.pool())
        .await
        .map_err(query_err(format!("recording {} downloaded files in image_files", rows.len())))?;
    Ok(())
}

/// Drops the rows of files that are no longer there.
pub(crate) async fn forget(store: &Store, root: &str, ids: &[i64]) -> Result<(), ImagesError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(FORGET)
        .bind(root)
        .bind(ids)
        .execute(store.pool())
        .await
        .map_err(query_err("removing rows of missing files from image_files"))?;
    Ok(())
}

/// The lock on one output directory, held on its own connection for the whole run (a killed
/// process loses its connection, and with it the lock).
pub(crate) struct RootLock {
    conn: PoolConnection<sqlx::Postgres>,
    root: String,
    released: bool,
}

/// Takes the directory's lock, or says who holds it.
pub(crate) async fn lock(store: &Store, root: &str) -> Result<RootLock, ImagesError> {
    let mut conn = store.pool().acquire().await.map_err(query_err("acquiring a connection"))?;
    let got: bool = sqlx::query_scalar(TRY_LOCK)
        .bind(root)
        .fetch_one(&mut *conn)
        .await
        .map_err(query_err("locking the output directory"))?;
    if !got {
        return Err(ImagesError::Busy { root: root.to_string() });
    }
    Ok(RootLock { conn, root: root.to_string(), released: false })
}

impl RootLock {
    /// Releases the lock (a pooled connection would otherwise keep it).
    pub(crate) async fn release(mut self) -> Result<(), ImagesError> {
        let r = sqlx::query(UNLOCK).bind(&self.root).execute(&mut *self.conn).await;
        if r.is_err() {
            // A connection that cannot unlock must not go back to the pool holding the lock.
            self.conn.close_on_drop();
        }
        r.map_err(query_err("unlocking the output directory"))?;
        self.released = true;
        Ok(())
    }
}

impl Drop for RootLock {
    /// Not released (an error ended the run): close the connection, which ends the lock with it.
    fn drop(&mut self) {
        if !self.released {
            self.conn.close_on_drop();
        }
    }
}
