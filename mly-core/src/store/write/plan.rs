//! What a tile write does with its rows: which to send (only those that differ from the tile's
//! live rows), which vanished records to tombstone, keep or move, and the tile's sequences.

use std::collections::{HashMap, HashSet};

use super::copy::RowKey;
use crate::store::{MovedAway, TileWrite, tile_key};

/// What a tile write must do with its rows, given what the tile holds in the database.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    /// Indexes of the rows to write: new, changed, moved in, revived, or with details. A record
    /// listed twice is always written (the upsert keeps one row per id).
    pub(super) write: Vec<usize>,
    /// Distinct ids the tile lists.
    pub(super) distinct: u64,
    /// No id is listed twice.
    pub(super) unique: bool,
}

/// Compares a tile's rows with its live rows in the database (what became of live rows the tile
/// no longer lists is the pipeline's finding, by id: `TileWrite::vanished`).
pub(super) fn plan(keys: &[RowKey], live: &HashMap<i64, Option<i64>>) -> Plan {
    let mut seen: HashMap<i64, u32> = HashMap::with_capacity(keys.len());
    for k in keys {
        *seen.entry(k.id).or_default() += 1;
    }
    let write = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| k.has_details || seen[&k.id] > 1 || live.get(&k.id) != Some(&Some(k.tile_hash)))
        .map(|(i, _)| i)
        .collect();
    Plan { write, distinct: seen.len() as u64, unique: seen.len() == keys.len() }
}

/// What the write does with the tile's vanished records (as the pipeline confirmed them by id),
/// leaving out any id the tile lists after all: a listed record is never tombstoned or moved.
pub(super) struct Gone {
    pub(super) deleted: Vec<i64>,
    pub(super) missing: Vec<i64>,
    pub(super) moved: MovedColumns,
}

impl Gone {
    pub(super) fn of(w: &TileWrite, listed: &[RowKey]) -> Gone {
        let v = &w.vanished;
        if v.deleted.is_empty() && v.missing.is_empty() && v.moved.is_empty() {
            return Gone { deleted: Vec::new(), missing: Vec::new(), moved: MovedColumns::of(&[]) };
        }
        let listed: HashSet<i64> = listed.iter().map(|k| k.id).collect();
        let keep = |ids: &[i64]| -> Vec<i64> {
            let mut out: Vec<i64> = ids.iter().copied().filter(|id| !listed.contains(id)).collect();
            // Sorted: row locks taken in id order.
            out.sort_unstable();
            out
        };
        let moved: Vec<MovedAway> = v.moved.iter().copied().filter(|m| !listed.contains(&m.id)).collect();
        Gone { deleted: keep(&v.deleted), missing: keep(&v.missing), moved: MovedColumns::of(&moved) }
    }
}

/// The moved records as column arrays for `unnest`.
pub(super) struct MovedColumns {
    pub(super) ids: Vec<i64>,
    pub(super) xs: Vec<i32>,
    pub(super) ys: Vec<i32>,
    pub(super) lons: Vec<f64>,
    pub(super) lats: Vec<f64>,
}

impl MovedColumns {
    pub(super) fn of(moved: &[MovedAway]) -> MovedColumns {
        let mut m = MovedColumns {
            ids: Vec::with_capacity(moved.len()),
            xs: Vec::with_capacity(moved.len()),
            ys: Vec::with_capacity(moved.len()),
            lons: Vec::with_capacity(moved.len()),
            lats: Vec::with_capacity(moved.len()),
        };
        for r in moved {
            let (_, x, y) = tile_key(r.tile);
            m.ids.push(r.id);
            m.xs.push(x);
            m.ys.push(y);
            m.lons.push(r.lon);
            m.lats.push(r.lat);
        }
        m
    }
}

/// The tile's sequences as array binds (one entry per id, the first listed wins).
pub(super) struct TileSequences {
    pub(super) ids: Vec<String>,
    pub(super) is_pano: Vec<Option<bool>>,
    pub(super) creator: Vec<Option<i64>>,
    pub(super) org: Vec<Option<i64>>,
}

impl TileSequences {
    pub(super) fn of(w: &TileWrite) -> TileSequences {
        let mut t =
            TileSequences { ids: Vec::new(), is_pano: Vec::new(), creator: Vec::new(), org: Vec::new() };
        let mut seen = HashSet::new();
        for s in &w.sequences {
            if seen.insert(s.id.as_str()) {
                t.ids.push(s.id.clone());
                t.is_pano.push(s.is_pano);
                t.creator.push(s.creator_id);
                t.org.push(s.organization_id);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_writes_only_what_differs() {
        let k = |id, tile_hash, has_details| RowKey { id, tile_hash, has_details };
        let live: HashMap<i64, Option<i64>> = [(1, Some(10)), (2, Some(20)), (3, None), (4, Some(40))].into();
        // 1 unchanged, 2 changed, 3 stored without fingerprint, 5 new, 6 twice, 7 with details.
        let keys = [
            k(1, 10, false),
            k(2, 21, false),
            k(3, 30, false),
            k(5, 50, false),
            k(6, 60, false),
            k(6, 60, false),
            k(7, 70, true),
        ];
        let p = plan(&keys, &live);
        assert_eq!(p, Plan { write: vec![1, 2, 3, 4, 5, 6], distinct: 6, unique: false });
        let p = plan(&keys[..1], &live);
        assert_eq!(p, Plan { write: vec![], distinct: 1, unique: true });
        let p = plan(&keys[3..4], &HashMap::new());
        assert_eq!(p, Plan { write: vec![0], distinct: 1, unique: true });
    }
}
