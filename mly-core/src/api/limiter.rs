//! Per-family pacing: every Graph call starts on a slot of the family's timeline, which is the
//! app's, shared by all of its processes through the database (`budget::timeline`), or this
//! process's own. Slots are reserved a few at a time and handed to callers in order; a cooldown
//! pause that grows while the API keeps throttling comes on top.
//!
//! Batching keeps the database out of the way: one reservation serves up to about a second of
//! calls ([`BATCH_SPAN`]), sized by what the process used of its last batch (doubling while it
//! used all, shrinking to what it used otherwise), so an idle process reserves one slot, not a
//! second's worth. A process reserves its next batch only when the current one is about to run
//! out ([`LOOKAHEAD`]), so it never holds more than about one batch ahead: a process that dies
//! leaves at most that unused, and one that joins gets its first slots right after the batches
//! already granted.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::jobs::budget::timeline::{self, GRACE};
use crate::jobs::budget::{AppKey, timeline::spacing};
use crate::store::{Store, StoreError};
use mly_contract::Family;

/// First cooldown after a throttle; doubles on each consecutive throttle.
const COOLDOWN_BASE: Duration = Duration::from_millis(500);
/// Longest cooldown the client imposes on itself (a Retry-After may ask for more).
const COOLDOWN_CAP: Duration = Duration::from_secs(60);
/// Longest Retry-After honoured, so a hostile header cannot stall a run for days.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(300);
/// A batch holds at most about this much of the family's rate.
const BATCH_SPAN: Duration = Duration::from_secs(1);
/// Most slots reserved at once (a second of 60,000/min is 984).
const MAX_BATCH: u32 = 1000;
/// The next batch is reserved this long before the current one runs out (a round trip to the
/// database, with room to spare), not earlier.
const LOOKAHEAD: Duration = Duration::from_millis(250);

/// Why a call could not get a slot.
#[derive(Debug, thiserror::Error)]
pub enum PaceError {
    #[error("cannot reserve {family} calls in the app's shared rate budget: {source}")]
    Store {
        family: &'static str,
        #[source]
        source: StoreError,
    },
    #[error("the reservation of {family} calls stopped: {message}")]
    Task { family: &'static str, message: String },
}

/// Where the slots come from.
#[derive(Clone)]
pub(crate) enum Source {
    /// This process's own timeline: the next free slot.
    Local(Arc<Mutex<Option<Instant>>>),
    /// The app's timeline in the database, shared by all of its processes.
    Shared { store: Store, app: AppKey },
}

impl Source {
    /// A timeline of this process alone.
    pub(crate) fn local() -> Source {
        Source::Local(Arc::new(Mutex::new(None)))
    }

    /// Reserves `span` of the family's timeline; returns when (on this host's clock) it starts.
    async fn reserve(&self, family: Family, span: Duration) -> Result<Instant, PaceError> {
        match self {
            Source::Local(next) => {
                let now = Instant::now();
                // A poisoned lock means a panic mid-assignment of an Option: its value is whole.
                let mut g = next.lock().unwrap_or_else(|p| p.into_inner());
                let start = g.map_or(now, |t| t.max(now));
                *g = Some(start + span);
                Ok(start)
            }
            Source::Shared { store, app } => {
                let (store, app) = (store.clone(), app.clone());
                // A task of its own: a caller cancelled while it waits (an interrupt) must not
                // drop the statement mid-flight (see `pipeline::interrupt`). The span is
                // converted to this host's clock as soon as the answer is in.
                let task = tokio::spawn(async move {
                    let r = timeline::reserve(store.pool(), &app, family, span).await;
                    r.map(|r| Instant::now() + r.first_in)
                });
                match task.await {
                    Ok(r) => r.map_err(|source| PaceError::Store { family: family.name(), source }),
                    Err(e) => Err(PaceError::Task { family: family.name(), message: e.to_string() }),
                }
            }
        }
    }

    /// No slot of the family starts before `pause` from now, for every user of the timeline.
    fn hold_off(&self, family: Family, pause: Duration) {
        match self {
            Source::Local(next) => {
                let until = Instant::now() + pause;
                let mut g = next.lock().unwrap_or_else(|p| p.into_inner());
                *g = Some(g.map_or(until, |t| t.max(until)));
            }
            Source::Shared { store, app } => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
                let (store, app) = (store.clone(), app.clone());
                // Best effort, and never awaited by the call: this process pauses anyway.
                rt.spawn(async move {
                    if let Err(e) = timeline::hold_off(store.pool(), &app, family, pause).await {
                        tracing::warn!(family = family.name(), error = %e, "could not pause the other processes");
                    }
                });
            }
        }
    }
}

/// The slots of the last reservation.
struct Batch {
    /// Start of the next slot not yet handed out (the batch's end once all are).
    next_at: Instant,
    /// Slots not yet handed out.
    left: u32,
    /// Slots reserved.
    size: u32,
    /// Slots that passed unused.
    stale: u32,
}

impl Batch {
    /// How many slots the next reservation asks for.
    fn next_size(&self, waiting: u32, max: u32) -> u32 {
        let by_use = if self.stale == 0 { self.size.saturating_mul(2) } else { self.size - self.stale };
        by_use.max(waiting).clamp(1, max)
    }
}

/// Leaves the count of waiting callers when dropped (also when the caller is cancelled).
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn enter(n: &'a AtomicU32) -> Waiting<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One API family's pacing.
pub(crate) struct Pacer {
    family: Family,
    /// Time between two slots; None when the family is not paced here (tiles: the pipeline
    /// spaces them within the daily tile budget).
    spacing: Option<Duration>,
    max_batch: u32,
    source: Source,
    batch: tokio::sync::Mutex<Batch>,
    /// Callers waiting for a slot (the demand a reservation serves).
    waiting: AtomicU32,
    paused_until: Mutex<Option<Instant>>,
    consecutive_throttles: AtomicU32,
    reservations: AtomicU64,
    skipped: AtomicU64,
}

impl Pacer {
    /// A pacer for a per-minute limit on `source`'s timeline, or none (tiles).
    pub(crate) fn new(family: Family, per_minute: Option<u32>, source: Source) -> Pacer {
        let spacing = per_minute.map(spacing);
        let max_batch = spacing.map_or(1, |sp| {
            let n = BATCH_SPAN.as_nanos().div_ceil(sp.as_nanos().max(1));
            u32::try_from(n).unwrap_or(MAX_BATCH).clamp(1, MAX_BATCH)
        });
        Pacer {
            family,
            spacing,
            max_batch,
            source,
            batch: tokio::sync::Mutex::new(Batch { next_at: Instant::now(), left: 0, size: 0, stale: 0 }),
            waiting: AtomicU32::new(0),
            paused_until: Mutex::new(None),
            consecutive_throttles: AtomicU32::new(0),
            reservations: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// Reservations made so far (database round trips, when shared).
    pub(crate) fn reservations(&self) -> u64 {
        self.reservations.load(Ordering::Relaxed)
    }

    /// Reserved slots that passed unused.
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    fn paused_until(&self) -> Option<Instant> {
        *self.paused_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn wait_out_pause(&self) {
        while let Some(t) = self.paused_until().filter(|t| *t > Instant::now()) {
            tokio::time::sleep_until(t).await;
        }
    }

    /// Waits out any cooldown, then for a slot; returns the slot's start (now when unpaced).
    pub(crate) async fn ready(&self) -> Result<Instant, PaceError> {
        let Some(spacing) = self.spacing else {
            self.wait_out_pause().await;
            return Ok(Instant::now());
        };
        loop {
            self.wait_out_pause().await;
            let at = self.take_slot(spacing).await?;
            tokio::time::sleep_until(at).await;
            let now = Instant::now();
            if now <= at + GRACE && self.paused_until().is_none_or(|p| p <= now) {
                return Ok(at);
            }
            // Woke too late for the slot (see `timeline`), or a throttle paused the family meanwhile.
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The next usable slot, reserving a batch when none is left.
    async fn take_slot(&self, spacing: Duration) -> Result<Instant, PaceError> {
        let _waiting = Waiting::enter(&self.waiting);
        let mut b = self.batch.lock().await;
        loop {
            let now = Instant::now();
            while b.left > 0 {
                let at = b.next_at;
                b.next_at += spacing;
                b.left -= 1;
                if at + GRACE >= now {
                    return Ok(at);
                }
                b.stale += 1;
                self.skipped.fetch_add(1, Ordering::Relaxed);
            }
            // Hold at most one batch ahead; callers queue behind this one meanwhile.
            if let Some(from) = b.next_at.checked_sub(LOOKAHEAD)
                && from > now
            {
                tokio::time::sleep_until(from).await;
                continue;
            }
            let n = b.next_size(self.waiting.load(Ordering::Relaxed), self.max_batch);
            let first = self.source.reserve(self.family, spacing * n).await?;
            self.reservations.fetch_add(1, Ordering::Relaxed);
            *b = Batch { next_at: first, left: n, size: n, stale: 0 };
        }
    }

    /// Records a throttle: pauses the family (for every process of the timeline) for a cooldown
    /// that grows on repeats, or for the server's Retry-After if that is longer. Returns the pause.
    pub(crate) fn throttled(&self, retry_after: Option<Duration>) -> Duration {
        let n = self.consecutive_throttles.fetch_add(1, Ordering::Relaxed).min(16);
        let grown = COOLDOWN_BASE.saturating_mul(1u32 << n).min(COOLDOWN_CAP);
        let pause = retry_after.map_or(grown, |r| r.min(RETRY_AFTER_CAP).max(grown));
        let until = Instant::now() + pause;
        {
            let mut g = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            if g.is_none_or(|t| t < until) {
                *g = Some(until);
            }
        }
        if self.spacing.is_some() {
            self.source.hold_off(self.family, pause);
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

    #[tokio::test]
    async fn cooldown_grows_and_resets() {
        let p = Pacer::new(Family::Tiles, None, Source::local());
        let a = p.throttled(None);
        let b = p.throttled(None);
        assert!(b > a);
        assert_eq!(p.throttled(Some(Duration::from_secs(7))), Duration::from_secs(7));
        p.succeeded();
        assert_eq!(p.throttled(None), COOLDOWN_BASE);
    }

    #[test]
    fn batches_grow_while_used_and_shrink_to_use() {
        let b = |size, stale| Batch { next_at: Instant::now(), left: 0, size, stale };
        assert_eq!(b(0, 0).next_size(1, 8), 1);
        assert_eq!(b(1, 0).next_size(1, 8), 2);
        assert_eq!(b(4, 0).next_size(1, 8), 8);
        assert_eq!(b(8, 0).next_size(1, 8), 8);
        assert_eq!(b(8, 7).next_size(1, 8), 1);
        assert_eq!(b(8, 5).next_size(6, 8), 6, "at least one slot per waiting caller");
        assert_eq!(b(2, 0).next_size(50, 8), 8);
    }

    /// Three "processes" on one timeline, eight callers each: slots never coincide, calls
    /// start on their slot (within GRACE), and together they get most of the rate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_of_several_pacers_share_one_timeline() {
        let per_minute = 6_000;
        let source = Source::local();
        let pacers: Vec<Arc<Pacer>> =
            (0..3).map(|_| Arc::new(Pacer::new(Family::Search, Some(per_minute), source.clone()))).collect();
        let started = Instant::now();
        let run_for = Duration::from_millis(1500);
        let mut tasks = tokio::task::JoinSet::new();
        for p in &pacers {
            for _ in 0..8 {
                let p = Arc::clone(p);
                tasks.spawn(async move {
                    let mut got = Vec::new();
                    while started.elapsed() < run_for {
                        let at = p.ready().await.unwrap();
                        let late = Instant::now().saturating_duration_since(at);
                        assert!(late <= GRACE, "started {late:?} after its slot");
                        got.push(at);
                    }
                    got
                });
            }
        }
        let mut slots: Vec<Instant> = tasks.join_all().await.into_iter().flatten().collect();
        slots.sort();
        let sp = spacing(per_minute);
        for w in slots.windows(2) {
            assert!(w[1] - w[0] >= sp, "two slots {:?} apart", w[1] - w[0]);
        }
        let expected = run_for.as_secs_f64() / sp.as_secs_f64();
        assert!(slots.len() as f64 >= 0.85 * expected, "{} calls, {expected:.0} possible", slots.len());
        let reservations: u64 = pacers.iter().map(|p| p.reservations()).sum();
        assert!((reservations as f64) < 0.5 * slots.len() as f64, "{reservations} for {} calls", slots.len());
    }

    #[tokio::test]
    async fn a_throttle_holds_off_every_user_of_the_timeline() {
        let source = Source::local();
        let a = Pacer::new(Family::Entity, Some(60_000), source.clone());
        let b = Pacer::new(Family::Entity, Some(60_000), source);
        a.ready().await.unwrap();
        let throttled_at = Instant::now();
        let pause = a.throttled(None);
        // b was never throttled itself, yet its first slot comes after a's pause.
        let at = b.ready().await.unwrap();
        assert!(at >= throttled_at + pause, "{:?} after the throttle", at - throttled_at);
    }
}
