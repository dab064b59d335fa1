//! Per-family pacing: a `governor` limiter sized so that any sliding 60-s window stays under the
//! configured per-minute rate, plus a cooldown pause that grows while the API keeps throttling.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// First cooldown after a throttle; doubles on each consecutive throttle.
const COOLDOWN_BASE: Duration = Duration::from_millis(500);
/// Longest cooldown the client imposes on itself (a Retry-After may ask for more).
const COOLDOWN_CAP: Duration = Duration::from_secs(60);
/// Longest Retry-After honoured, so a hostile header cannot stall a run for days.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(300);

/// The burst and steady rate (per minute) used for a configured per-minute limit.
///
/// GCRA admits at most `burst + window * rate` in any window, so the steady rate is
/// 98% of the limit minus the burst: a full 60-s window then holds at most 98% of the limit.
pub(crate) fn plan(per_minute: u32) -> (u32, f64) {
    let limit = f64::from(per_minute.max(1));
    let burst = (per_minute / 60).clamp(1, 1000);
    let steady = (limit * 0.98 - f64::from(burst)).max(limit * 0.5);
    (burst, steady)
}

/// One API family's pacing.
pub(crate) struct Pacer {
    limiter: Option<DefaultDirectRateLimiter>,
    paused_until: Mutex<Option<Instant>>,
    consecutive_throttles: AtomicU32,
}

impl Pacer {
    /// A pacer with a per-minute limit, or none (tiles: the daily budget lives elsewhere).
    pub(crate) fn new(per_minute: Option<u32>) -> Pacer {
        let limiter = per_minute.and_then(|pm| {
            let (burst, steady) = plan(pm);
            let period = Duration::from_secs_f64(60.0 / steady);
            let burst = NonZeroU32::new(burst)?;
            Some(RateLimiter::direct(Quota::with_period(period)?.allow_burst(burst)))
        });
        Pacer { limiter, paused_until: Mutex::new(None), consecutive_throttles: AtomicU32::new(0) }
    }

    /// Waits out any cooldown, then for a permit.
    pub(crate) async fn ready(&self) {
        loop {
            let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => break,
            }
        }
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
    }

    /// Records a throttle: pauses the family for a cooldown that grows on repeats, or for the
    /// server's Retry-After if that is longer. Returns the pause.
    pub(crate) fn throttled(&self, retry_after: Option<Duration>) -> Duration {
        let n = self.consecutive_throttles.fetch_add(1, Ordering::Relaxed).min(16);
        let grown = COOLDOWN_BASE.saturating_mul(1u32 << n).min(COOLDOWN_CAP);
        let pause = retry_after.map_or(grown, |r| r.min(RETRY_AFTER_CAP).max(grown));
        let until = Instant::now() + pause;
        let mut g = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none_or(|t| t < until) {
            *g = Some(until);
        }
        pause
    }

    /// Records a success: the next throttle starts from the base cooldown again.
    pub(crate) fn succeeded(&self) {
        self.consecutive_throttles.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_minute_stays_under_the_limit() {
        for pm in [1, 10, 60, 120, 600, 10_000, 60_000] {
            let (burst, steady) = plan(pm);
            assert!(f64::from(burst) + steady <= f64::from(pm) + 1e-9 || pm < 2, "{pm}: {burst} + {steady}");
            assert!(steady >= f64::from(pm) * 0.5, "{pm}");
            assert!(f64::from(burst) <= (f64::from(pm) / 60.0).max(1.0), "{pm}: burst over 1 s worth");
        }
    }

    #[tokio::test]
    async fn cooldown_grows_and_resets() {
        let p = Pacer::new(None);
        let a = p.throttled(None);
        let b = p.throttled(None);
        assert!(b > a);
        assert_eq!(p.throttled(Some(Duration::from_secs(7))), Duration::from_secs(7));
        p.succeeded();
        assert_eq!(p.throttled(None), COOLDOWN_BASE);
    }
}
