//! The rolling refresh: tiles not known to have changed are still re-read once per period
//! (`--refresh-tiles-older-than`, 7 days by default), a slice each night, so that what no
//! low-zoom tile shows (a deletion inside an old sequence, a moved image) is found within it.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store::KnownTile;
use mly_contract::hash::fnv1a;
use mly_contract::tiles::TileId;

const DAY: Duration = Duration::from_secs(86_400);

/// When known tiles are due for a re-read.
#[derive(Debug, Clone, Copy)]
pub struct Rolling {
    /// Every tile is re-read at least once in this period; zero re-reads every tile.
    pub period: Duration,
    /// Now (the run's start).
    pub now: DateTime<Utc>,
}

impl Rolling {
    /// The period in whole nights (at least one).
    fn nights(&self) -> u64 {
        self.period.as_secs().div_ceil(DAY.as_secs()).max(1)
    }

    /// Whether `tile`, last read as `known` says, is re-read tonight: its phase of the period has
    /// come (each tile has a fixed night in the period, so the re-reads are spread evenly), or it
    /// is older than the period (missed nights catch up).
    pub fn due(&self, tile: TileId, known: &KnownTile) -> bool {
        if self.period.is_zero() {
            return true;
        }
        let Some(last) = known.last_fetched_at.or(known.probed_at) else { return true };
        let age = (self.now - last).to_std().unwrap_or_default();
        if age >= self.period {
            return true;
        }
        let nights = self.nights();
        let phase = fnv1a(tile.to_string().as_bytes()) % nights;
        let tonight = (self.now.timestamp().max(0) as u64 / DAY.as_secs()) % nights;
        // Read at most once a night: a tile read today is not due again until tomorrow.
        phase == tonight && age >= DAY / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(days_ago: i64, now: DateTime<Utc>) -> KnownTile {
        KnownTile {
            last_fetched_at: Some(now - chrono::Duration::days(days_ago)),
            probed_at: None,
            record_count: 5,
        }
    }

    #[test]
    fn every_tile_is_due_once_per_period_and_the_nights_share_the_work() {
        let start: DateTime<Utc> = "2026-12-01T02:00:00Z".parse().unwrap();
        let tiles: Vec<TileId> =
            (0..700).map(|i| TileId::new(14, 8000 + i % 70, 5000 + i / 70).unwrap()).collect();
        let period = Duration::from_secs(7 * 86_400);
        // Harvested on night 0; then each night re-reads what is due.
        let mut last: Vec<DateTime<Utc>> = vec![start; tiles.len()];
        let mut per_night = Vec::new();
        for night in 1..=14 {
            let now = start + chrono::Duration::days(night);
            let r = Rolling { period, now };
            let mut n = 0;
            for (t, l) in tiles.iter().zip(last.iter_mut()) {
                let k = KnownTile { last_fetched_at: Some(*l), probed_at: None, record_count: 1 };
                if r.due(*t, &k) {
                    *l = now;
                    n += 1;
                }
            }
            per_night.push(n);
            assert!(
                last.iter().all(|l| now - *l < chrono::Duration::days(7)),
                "night {night}: a tile older than the period"
            );
        }
        // After the first week the load is even: about a seventh of the tiles a night.
        for n in &per_night[7..] {
            assert!((60..=140).contains(n), "{per_night:?}");
        }
    }

    #[test]
    fn zero_period_reads_everything_and_unknown_tiles_are_due() {
        let now = Utc::now();
        let t = TileId::new(14, 1, 1).unwrap();
        assert!(Rolling { period: Duration::ZERO, now }.due(t, &known(0, now)));
        let never = KnownTile { last_fetched_at: None, probed_at: None, record_count: 0 };
        assert!(Rolling { period: Duration::from_secs(7 * 86_400), now }.due(t, &never));
        assert!(Rolling { period: Duration::from_secs(7 * 86_400), now }.due(t, &known(8, now)));
    }
}
