//! Which images a run downloads: live images (`images_live`) chosen by a `--where` clause, a
//! region, a sequence or a map feature, always read in a READ ONLY transaction with a statement
//! timeout. The `--where` clause is the one piece of SQL a user passes in; every other value is
//! bound.

use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::ImagesError;
use crate::model::ImageId;
use crate::region::Region;
use crate::store::{Store, describe, query_err};

/// Which live images to download.
#[derive(Debug, Clone)]
pub enum Selection {
    /// A boolean SQL expression over the columns of `images_live` (`--where`).
    Where(String),
    /// Images whose position lies in a region (`--region`); the region's shape as WKB.
    Region { name: String, wkb: Vec<u8> },
    /// The images of one sequence (`--sequence`).
    Sequence(String),
    /// The images a map feature was seen in (`--map-feature`, table `map_feature_images`).
    MapFeature(i64),
}

impl Selection {
    /// The images of a resolved region.
    pub fn region(r: &Region) -> Selection {
        Selection::Region { name: r.name.clone(), wkb: r.to_wkb() }
    }
}

/// One selected image: what its file's place is made of.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Wanted {
    pub id: ImageId,
    pub sequence_id: Option<String>,
    pub captured_at: Option<DateTime<Utc>>,
}

/// Longest a selection query may run; a `--where` that takes longer is refused as bad input.
const STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '60s'";
const READ_ONLY: &str = "SET TRANSACTION READ ONLY";

/// The selection query of `--where`: the clause goes between the parentheses on lines of its
/// own, so that a `--` comment in it cannot swallow the closing parenthesis.
const WHERE_HEAD: &str = "SELECT id, sequence_id, captured_at FROM images_live WHERE (\n";
const WHERE_TAIL: &str = "\n) ORDER BY id";

const BY_REGION: &str = "SELECT id, sequence_id, captured_at FROM images_live \
     WHERE ST_Intersects(geom, ST_GeomFromWKB($1, 4326)) ORDER BY id";
const BY_SEQUENCE: &str =
    "SELECT id, sequence_id, captured_at FROM images_live WHERE sequence_id = $1 ORDER BY id";
const BY_MAP_FEATURE: &str = "SELECT i.id, i.sequence_id, i.captured_at FROM images_live i \
     JOIN map_feature_images m ON m.image_id = i.id WHERE m.map_feature_id = $1 ORDER BY i.id";

/// Longest part of a `--where` clause an error message repeats.
const CLAUSE_SHOWN: usize = 200;

/// Reads the selected images, in id order.
pub(crate) async fn select(store: &Store, sel: &Selection) -> Result<Vec<Wanted>, ImagesError> {
    let started = Instant::now();
    let mut tx = store.pool().begin().await.map_err(query_err("starting the selection"))?;
    // Both before the first query of the transaction: a write anywhere in the selection (a
    // function that writes, a data-modifying statement) is refused by the server itself.
    for s in [READ_ONLY, STATEMENT_TIMEOUT] {
        sqlx::query(s).execute(&mut *tx).await.map_err(query_err("starting the selection"))?;
    }
    let where_sql;
    // Prepared (extended protocol), so a clause holding `;` and a second statement is refused.
    let q = match sel {
        Selection::Where(clause) => {
            // The one string-built statement: the user's own clause, run read-only with a
            // timeout as a single prepared statement; every other value is bound.
            where_sql = format!("{WHERE_HEAD}{clause}{WHERE_TAIL}");
            sqlx::query(sqlx::AssertSqlSafe(where_sql.as_str()))
        }
        Selection::Region { wkb, .. } => sqlx::query(BY_REGION).bind(wkb.as_slice()),
        Selection::Sequence(id) => sqlx::query(BY_SEQUENCE).bind(id),
        Selection::MapFeature(id) => sqlx::query(BY_MAP_FEATURE).bind(id),
    };
    let rows = match (q.fetch_all(&mut *tx).await, sel) {
        (Ok(rows), _) => rows,
        // The server refused the user's clause: bad input, named in one line.
        (Err(e @ sqlx::Error::Database(_)), Selection::Where(clause)) => {
            return Err(ImagesError::Where { clause: shorten(clause), message: describe(&e) });
        }
        (Err(e), _) => return Err(query_err(format!("selecting {}", what(sel)))(e).into()),
    };
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = r.try_get(0).map_err(query_err("reading the selection"))?;
        out.push(Wanted {
            id: ImageId(id),
            sequence_id: r.try_get(1).map_err(query_err("reading the selection"))?,
            captured_at: r.try_get(2).map_err(query_err("reading the selection"))?,
        });
    }
    // Read only: nothing to keep, and rolling back is what a read-only transaction does anyway.
    tx.rollback().await.map_err(query_err("ending the selection"))?;
    tracing::info!(
        selection = %what(sel),
        images = out.len(),
        ms = started.elapsed().as_millis() as u64,
        "selected images"
    );
    Ok(out)
}

/// The selection in words, for logs and messages.
fn what(sel: &Selection) -> String {
    match sel {
        Selection::Where(c) => format!("images where {:?}", shorten(c)),
        Selection::Region { name, .. } => format!("images in region {name:?}"),
        Selection::Sequence(s) => format!("images of sequence {s:?}"),
        Selection::MapFeature(f) => format!("images of map feature {f}"),
    }
}

fn shorten(clause: &str) -> String {
    match clause.char_indices().nth(CLAUSE_SHOWN) {
        Some((i, _)) => format!("{}…", &clause[..i]),
        None => clause.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_clauses_are_shortened_on_a_char_boundary() {
        assert_eq!(shorten("id > 5"), "id > 5");
        let long = "é".repeat(300);
        let s = shorten(&long);
        assert_eq!(s.chars().count(), CLAUSE_SHOWN + 1);
        assert!(s.ends_with('…'));
    }
}
