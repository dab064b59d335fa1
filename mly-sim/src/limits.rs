//! Rate limits of the simulated API: one quota per API family, and the statistics benchmarks read.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub(crate) use mly_contract::Family;

/// The slot of a family in per-family arrays.
fn index(f: Family) -> usize {
    match f {
        Family::Tiles => 0,
        Family::Search => 1,
        Family::Entity => 2,
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// Timestamps of events in the last 60 s, plus the largest count ever seen in such a window.
#[derive(Debug, Default)]
struct SlidingWindow {
    times: VecDeque<Instant>,
    max: usize,
}

impl SlidingWindow {
    fn expire(&mut self, now: Instant) {
        while let Some(&t) = self.times.front() {
            if now.duration_since(t) >= MINUTE {
                self.times.pop_front();
            } else {
                break;
            }
        }
    }

    fn len(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.times.len()
    }

    fn push(&mut self, now: Instant) {
        self.expire(now);
        self.times.push_back(now);
        self.max = self.max.max(self.times.len());
    }
}

/// Quota of one family: either a sliding minute or a UTC day.
#[derive(Debug)]
struct Quota {
    limit: u64,
    per_day: bool,
    /// Accepted requests in the sliding minute (per-minute quotas only).
    window: SlidingWindow,
    /// (UTC day number, accepted requests that day) for the daily quota.
    day: (i64, u64),
    /// Every request of the family (accepted or not), for `max_per_minute`.
    seen: SlidingWindow,
}

impl Quota {
    fn new(limit: u64, per_day: bool) -> Quota {
        Quota {
            limit,
            per_day,
            window: SlidingWindow::default(),
            day: (0, 0),
            seen: SlidingWindow::default(),
        }
    }

    fn used(&mut self, now: Instant, today: i64) -> u64 {
        if self.per_day {
            if self.day.0 == today { self.day.1 } else { 0 }
        } else {
            self.window.len(now) as u64
        }
    }
}

/// Outcome of [`Limits::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admission {
    /// False when the family's quota is exhausted and the request must be throttled.
    pub(crate) allowed: bool,
    /// Percent of the family's quota used (for `x-app-usage`), after this request.
    pub(crate) usage_percent: u64,
}

/// Per-family quotas, guarded by the server's mutex.
#[derive(Debug)]
pub(crate) struct Limits {
    quotas: [Quota; 3],
}

impl Limits {
    /// Quotas with the given limits (tiles per UTC day, search and entity per minute).
    pub(crate) fn new(tiles_per_day: u64, search_per_minute: u64, entity_per_minute: u64) -> Limits {
        Limits {
            quotas: [
                Quota::new(tiles_per_day, true),
                Quota::new(search_per_minute, false),
                Quota::new(entity_per_minute, false),
            ],
        }
    }

    /// Records a request of `family` and decides whether it fits in the quota.
    pub(crate) fn admit(&mut self, family: Family, now: Instant) -> Admission {
        let today = chrono::Utc::now().timestamp().div_euclid(86_400);
        let q = &mut self.quotas[index(family)];
        q.seen.push(now);
        let used = q.used(now, today);
        let allowed = used < q.limit;
        if allowed {
            if q.per_day {
                if q.day.0 != today {
                    q.day = (today, 0);
                }
                q.day.1 += 1;
            } else {
                q.window.push(now);
            }
        }
        let used = q.used(now, today);
        let usage_percent = (used.saturating_mul(100)).checked_div(q.limit).unwrap_or(100).min(100);
        Admission { allowed, usage_percent }
    }

    /// Percent of the family's quota in use right now, without recording a request.
    pub(crate) fn usage_percent(&mut self, family: Family, now: Instant) -> u64 {
        let today = chrono::Utc::now().timestamp().div_euclid(86_400);
        let q = &mut self.quotas[index(family)];
        let used = q.used(now, today);
        (used.saturating_mul(100)).checked_div(q.limit).unwrap_or(100).min(100)
    }

    /// Largest number of requests of `family` seen in any sliding 60 s window so far.
    pub(crate) fn max_per_minute(&self, family: Family) -> usize {
        self.quotas[index(family)].seen.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_quota_throttles_and_recovers() {
        let mut l = Limits::new(10, 3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.admit(Family::Search, t0).allowed);
        }
        let a = l.admit(Family::Search, t0);
        assert!(!a.allowed);
        assert_eq!(a.usage_percent, 100);
        assert_eq!(l.max_per_minute(Family::Search), 4);
        // After the window slides past the first requests the quota is free again.
        let later = t0 + Duration::from_secs(61);
        let a = l.admit(Family::Search, later);
        assert!(a.allowed);
        assert_eq!(a.usage_percent, 33);
        assert_eq!(l.max_per_minute(Family::Search), 4);
    }

    #[test]
    fn daily_quota_counts_every_accepted_tile() {
        let mut l = Limits::new(2, 3, 100);
        let t0 = Instant::now();
        assert!(l.admit(Family::Tiles, t0).allowed);
        assert!(l.admit(Family::Tiles, t0 + Duration::from_secs(120)).allowed);
        assert!(!l.admit(Family::Tiles, t0 + Duration::from_secs(240)).allowed);
        assert_eq!(l.usage_percent(Family::Entity, t0), 0);
    }
}
