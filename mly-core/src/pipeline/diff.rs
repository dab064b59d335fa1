//! The diff stage: a tile's records against what the database knows of them. Pure functions of
//! their inputs (no network, no database), so the rules are unit-tested here.
//!
//! A record belongs to the tile that contains its position. Copies beyond the edge (the render
//! buffer) never reach here (the decoder leaves them out); a record drawn exactly on the east or
//! south edge (`far_edge`) is also the neighbour's first pixel, so when it is already live in
//! another tile it stays there: it is not moved, rewritten or enriched from this tile, so it
//! cannot flip between the two tiles from run to run.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::enrich::Located;
use crate::model::{TileFeature, TileImage};
use crate::store::Known;
use mly_contract::hash::fnv1a;

/// A tile that held live records and reads empty (or 403/404) is read again this many times,
/// later in the run, before its records are checked by id (§13.3: a dense tile can 404 for a while).
pub const EMPTY_REREADS: i16 = 2;

/// A record a tile lists, as the diff sees it.
pub trait TileRecord {
    /// The record's id.
    fn id(&self) -> i64;
    /// A fingerprint of everything the tile says about the record (stored as `tile_hash`; its
    /// format must not change, or every stored record would look changed).
    fn fingerprint(&self) -> i64;
    /// The record's position in the tile.
    fn position(&self) -> (f64, f64);
}

impl TileRecord for TileImage {
    fn id(&self) -> i64 {
        self.id.0
    }
    fn fingerprint(&self) -> i64 {
        let s = format!(
            "{:.7}|{:.7}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            self.lon,
            self.lat,
            self.captured_at_ms,
            self.compass_angle,
            self.sequence_id,
            self.is_pano,
            self.organization_id,
            self.creator_id
        );
        fnv1a(s.as_bytes()) as i64
    }
    fn position(&self) -> (f64, f64) {
        (self.lon, self.lat)
    }
}

impl TileRecord for TileFeature {
    fn id(&self) -> i64 {
        self.id.0
    }
    fn fingerprint(&self) -> i64 {
        let s = format!(
            "{:.7}|{:.7}|{:?}|{:?}|{:?}",
            self.lon, self.lat, self.value, self.first_seen_at_ms, self.last_seen_at_ms
        );
        fnv1a(s.as_bytes()) as i64
    }
    fn position(&self) -> (f64, f64) {
        (self.lon, self.lat)
    }
}

/// What a tile's answer means for the live records it no longer lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vanishing {
    /// Every live record is listed.
    Nothing,
    /// The tile reads empty while it held live records: no proof of anything; read it again
    /// later in the run.
    ReadAgain,
    /// These live records are gone from the tile (sorted): check them by id.
    Check(Vec<i64>),
}

/// Live records of the tile (`live`) that the tile does not list, and what to do about them.
/// An empty, 403 or 404 answer is no proof that they are gone (§13.3): such a tile is read again
/// `EMPTY_REREADS` times before its records are checked by id.
pub fn vanishing(live: &HashMap<i64, Known>, listed: &HashSet<i64>, empty_reads: i16) -> Vanishing {
    let mut gone: Vec<i64> = live.keys().copied().filter(|id| !listed.contains(id)).collect();
    if gone.is_empty() {
        return Vanishing::Nothing;
    }
    if listed.is_empty() && empty_reads < EMPTY_REREADS {
        return Vanishing::ReadAgain;
    }
    gone.sort_unstable();
    Vanishing::Check(gone)
}

/// Which records need Graph enrichment.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Enrichment is on.
    pub enrich: bool,
    /// Records enriched before this are enriched again (`--refresh-older-than`).
    pub refresh_before: Option<DateTime<Utc>>,
}

/// A tile's records with their fingerprints, what the database knows of them, and the ids that
/// need Graph enrichment.
#[derive(Debug)]
pub struct Diff<T> {
    /// The records to write, with their fingerprints.
    pub rows: Vec<(T, i64)>,
    /// What the database knows of the tile's records (live here, or elsewhere).
    pub known: HashMap<i64, Known>,
    /// Ids to enrich.
    pub needed: HashSet<i64>,
}

impl<T: TileRecord> Diff<T> {
    /// The records' tile positions, for planning the enrichment calls.
    pub fn located(&self) -> Vec<Located> {
        self.rows
            .iter()
            .map(|(r, _)| {
                let (lon, lat) = r.position();
                Located { id: r.id(), lon, lat }
            })
            .collect()
    }
}

/// The ids of `records` the database must be asked about besides the tile's own live rows: with
/// enrichment every record not live here (it may have moved in or be revived), without it only
/// edge records (to keep them where they live).
pub fn others_to_look_up<T: TileRecord>(
    records: &[T],
    live: &HashMap<i64, Known>,
    far_edge: &HashSet<i64>,
    enrich: bool,
) -> Vec<i64> {
    records
        .iter()
        .map(T::id)
        .filter(|id| !live.contains_key(id) && (enrich || far_edge.contains(id)))
        .collect()
}

/// Diffs a tile's records against the database: the tile's own live rows (`live`) and what the
/// database knows of its other records (`others`, see [`others_to_look_up`]). A record needs
/// enrichment when it is new, changed in the tile, revived, never enriched, or stale.
pub fn diff<T: TileRecord>(
    live: HashMap<i64, Known>,
    others: HashMap<i64, Known>,
    mut records: Vec<T>,
    far_edge: &HashSet<i64>,
    policy: Policy,
) -> Diff<T> {
    let elsewhere: HashSet<i64> =
        others.iter().filter(|(id, k)| !k.deleted && far_edge.contains(id)).map(|(id, _)| *id).collect();
    if !elsewhere.is_empty() {
        tracing::debug!(
            records = elsewhere.len(),
            "edge records already live in the neighbouring tile stay there"
        );
        records.retain(|r| !elsewhere.contains(&r.id()));
    }
    let mut known = live;
    known.extend(others);
    let rows: Vec<(T, i64)> = records
        .into_iter()
        .map(|r| {
            let h = r.fingerprint();
            (r, h)
        })
        .collect();
    let needed = if policy.enrich {
        rows.iter()
            .filter(|(r, hash)| match known.get(&r.id()) {
                None => true,
                Some(k) => {
                    k.tile_hash != *hash
                        || k.deleted
                        || k.enriched_at.is_none()
                        || policy.refresh_before.is_some_and(|cut| k.enriched_at.is_some_and(|e| e < cut))
                }
            })
            .map(|(r, _)| r.id())
            .collect()
    } else {
        HashSet::new()
    };
    Diff { rows, known, needed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ImageId;

    fn image(id: i64, lon: f64) -> TileImage {
        TileImage {
            id: ImageId(id),
            lon,
            lat: 55.6,
            captured_at_ms: Some(1_600_000_000_000),
            compass_angle: Some(90.0),
            sequence_id: Some("s1".into()),
            is_pano: Some(false),
            organization_id: None,
            creator_id: Some(7),
        }
    }

    fn known(hash: i64, enriched: bool, deleted: bool) -> Known {
        Known { tile_hash: hash, enriched_at: enriched.then(Utc::now), deleted }
    }

    const ENRICH: Policy = Policy { enrich: true, refresh_before: None };

    #[test]
    fn the_fingerprint_format_never_changes() {
        // Stored in every row's tile_hash: a new format would make every record look changed.
        assert_eq!(image(1, 13.0).fingerprint(), image(1, 13.0).fingerprint());
        assert_ne!(image(1, 13.0).fingerprint(), image(1, 13.000_001).fingerprint());
        let stored =
            r#"13.0000000|55.6000000|Some(1600000000000)|Some(90.0)|Some("s1")|Some(false)|None|Some(7)"#;
        assert_eq!(image(1, 13.0).fingerprint(), fnv1a(stored.as_bytes()) as i64);
    }

    #[test]
    fn only_new_changed_revived_unenriched_or_stale_records_are_enriched() {
        let same = image(1, 13.0);
        let changed = image(2, 13.0);
        let revived = image(3, 13.0);
        let unenriched = image(4, 13.0);
        let new = image(5, 13.0);
        let live: HashMap<i64, Known> = [
            (1, known(same.fingerprint(), true, false)),
            (2, known(0, true, false)),
            (4, known(unenriched.fingerprint(), false, false)),
        ]
        .into();
        let others: HashMap<i64, Known> = [(3, known(revived.fingerprint(), true, true))].into();
        let d = diff(live, others, vec![same, changed, revived, unenriched, new], &HashSet::new(), ENRICH);
        assert_eq!(d.needed, HashSet::from([2, 3, 4, 5]));
        assert_eq!(d.rows.len(), 5);
        let off = Policy { enrich: false, refresh_before: None };
        let d = diff(HashMap::new(), HashMap::new(), vec![image(9, 13.0)], &HashSet::new(), off);
        assert!(d.needed.is_empty(), "no enrichment without enrich");
        // --refresh-older-than: an old enrichment is stale.
        let old =
            Known { tile_hash: image(1, 13.0).fingerprint(), enriched_at: Some(Utc::now()), deleted: false };
        let refresh =
            Policy { enrich: true, refresh_before: Some(Utc::now() + chrono::Duration::seconds(5)) };
        let d = diff([(1, old)].into(), HashMap::new(), vec![image(1, 13.0)], &HashSet::new(), refresh);
        assert_eq!(d.needed, HashSet::from([1]));
    }

    #[test]
    fn an_edge_record_live_in_the_neighbour_stays_there() {
        let edge = image(1, 13.0);
        let others: HashMap<i64, Known> = [(1, known(edge.fingerprint(), true, false))].into();
        let far_edge = HashSet::from([1]);
        let d = diff(HashMap::new(), others, vec![edge, image(2, 13.0)], &far_edge, ENRICH);
        assert_eq!(d.rows.iter().map(|(r, _)| r.id()).collect::<Vec<_>>(), vec![2]);
        // Without enrichment only edge records are looked up.
        let recs = vec![image(1, 13.0), image(2, 13.0)];
        assert_eq!(others_to_look_up(&recs, &HashMap::new(), &far_edge, false), vec![1]);
        assert_eq!(others_to_look_up(&recs, &HashMap::new(), &far_edge, true), vec![1, 2]);
    }

    #[test]
    fn an_empty_answer_is_read_again_before_anything_is_checked() {
        let live: HashMap<i64, Known> = [(1, known(0, true, false)), (2, known(0, true, false))].into();
        assert_eq!(vanishing(&live, &HashSet::new(), 0), Vanishing::ReadAgain);
        assert_eq!(vanishing(&live, &HashSet::new(), EMPTY_REREADS - 1), Vanishing::ReadAgain);
        assert_eq!(vanishing(&live, &HashSet::new(), EMPTY_REREADS), Vanishing::Check(vec![1, 2]));
        // A shorter (non-empty) answer is checked by id at once.
        assert_eq!(vanishing(&live, &HashSet::from([2]), 0), Vanishing::Check(vec![1]));
        assert_eq!(vanishing(&live, &HashSet::from([1, 2]), 0), Vanishing::Nothing);
        assert_eq!(vanishing(&HashMap::new(), &HashSet::new(), 0), Vanishing::Nothing);
    }
}
