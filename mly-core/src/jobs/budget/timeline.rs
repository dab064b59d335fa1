//! One timeline per app and API family (`mly_harvest_global.rate_timeline`, migration 0010):
//! how the processes of an app, on any number of hosts, share a per-minute limit.
//!
//! A process reserves a span of consecutive slots with one statement; the server's clock decides
//! where the span starts (at the end of the last span reserved by anyone, or now if that is past),
//! so spans never overlap and clocks of different hosts never matter. A process that dies only
//! leaves the rest of its last span unused; one that joins reserves right after the spans already
//! granted. The per-process side (how many slots to reserve, spacing calls over them) is the API
//! client's pacer.
//!
//! # Why no minute exceeds the limit
//! Slots are `spacing` apart on the timeline and a call starts no earlier than its slot and at
//! most [`GRACE`] after it (a later caller takes a fresh slot). Calls reach the API with some
//! further, varying delay (network, host, a host's offset from the server's clock as seen through
//! its round trip to the database); while that variation stays within `SLACK - GRACE`, the calls
//! arriving in any 60 s window had their slots in a window of at most 60 s + [`SLACK`], which
//! holds at most `ceil((60 s + SLACK) / spacing)` slots. [`spacing`] makes that the limit.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::AppKey;
use crate::store::{StoreError, query_err};
use mly_contract::Family;

/// Room in every minute for calls that start late (within [`GRACE`]) and arrive with varying
/// delays: the timeline runs at `limit * 60 / (60 + SLACK)` per minute (98.4% of the limit).
pub const SLACK: Duration = Duration::from_secs(1);

/// How late after its slot a call may still start; a caller later than this takes a fresh slot.
pub const GRACE: Duration = Duration::from_millis(250);

/// Reserves `$3` microseconds of the app's timeline for the family (creating the timeline the
/// first time); returns the server time of the first reserved slot and the seconds until then.
/// The row lock of the upsert serialises every reserver; `clock_timestamp()` is read after it.
const RESERVE: &str = "INSERT INTO mly_harvest_global.rate_timeline AS t (app_key, family, next_slot) \
     VALUES ($1, $2, clock_timestamp() + $3::float8 * interval '1 microsecond') \
     ON CONFLICT (app_key, family) DO UPDATE \
     SET next_slot = greatest(t.next_slot, clock_timestamp()) + $3::float8 * interval '1 microsecond' \
     RETURNING t.next_slot - $3::float8 * interval '1 microsecond', \
         greatest(extract(epoch FROM t.next_slot - clock_timestamp())::float8 - $3::float8 / 1e6, 0)";

/// Moves the start of the next unreserved slot to at least `$3` microseconds from now (a
/// throttle pauses the family for every process of the app).
const HOLD_OFF: &str = "INSERT INTO mly_harvest_global.rate_timeline AS t (app_key, family, next_slot) \
     VALUES ($1, $2, clock_timestamp() + $3::float8 * interval '1 microsecond') \
     ON CONFLICT (app_key, family) DO UPDATE \
     SET next_slot = greatest(t.next_slot, clock_timestamp() + $3::float8 * interval '1 microsecond')";

/// Time between two slots of a per-minute limit on the shared timeline: `(60 s + SLACK) / limit`,
/// so that no 60 s window holds more than `limit` calls (see the module documentation).
pub fn spacing(per_minute: u32) -> Duration {
    // Rounded up to whole nanoseconds: rounding down would fit one slot too many in a window.
    let ns = (Duration::from_secs(60) + SLACK).as_nanos().div_ceil(u128::from(per_minute.max(1)));
    // At most 61 s in nanoseconds, far below u64::MAX.
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// A span of the timeline granted to one reserver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reserved {
    /// Server time of the span's first slot.
    pub start: DateTime<Utc>,
    /// How long after the server read its clock the first slot starts (0: at once).
    pub first_in: Duration,
    /// The span's length, as reserved (rounded up to whole microseconds).
    pub span: Duration,
}

impl Reserved {
    /// Server time at which the span ends (the next reserver's earliest start).
    pub fn end(&self) -> DateTime<Utc> {
        // A span is at most minutes long; an out-of-range one cannot come back from the server.
        self.start + chrono::Duration::from_std(self.span).unwrap_or(chrono::Duration::zero())
    }
}

/// Whole microseconds, rounded up: a span is never shorter than asked (timestamps have µs
/// resolution, and rounding down would let spans drift closer than their slots' spacing).
fn micros_up(d: Duration) -> f64 {
    d.as_nanos().div_ceil(1000) as f64
}

/// Reserves `span` of the family's timeline of the app: the span starts where the last one
/// granted to anyone ends, or now if that is past. `ex` is a pool or an open transaction.
pub async fn reserve<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    app: &AppKey,
    family: Family,
    span: Duration,
) -> Result<Reserved, StoreError> {
    let micros = micros_up(span);
    let (start, first_in): (DateTime<Utc>, f64) = sqlx::query_as(RESERVE)
        .bind(app.as_str())
        .bind(family.name())
        .bind(micros)
        .fetch_one(ex)
        .await
        .map_err(query_err(format!("reserving {} slots of {app}", family.name())))?;
    // The server returns a non-negative number of seconds; anything else is treated as "now".
    let first_in = Duration::try_from_secs_f64(first_in).unwrap_or(Duration::ZERO);
    Ok(Reserved { start, first_in, span: Duration::from_micros(micros as u64) })
}

/// Holds every process of the app off the family for `pause` from now (slots already reserved
/// stay theirs; the pacer of the process that was throttled skips its own).
pub async fn hold_off<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    app: &AppKey,
    family: Family,
    pause: Duration,
) -> Result<(), StoreError> {
    sqlx::query(HOLD_OFF)
        .bind(app.as_str())
        .bind(family.name())
        .bind(micros_up(pause))
        .execute(ex)
        .await
        .map_err(query_err(format!("pausing the {} timeline of {app}", family.name())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_minute_holds_more_than_the_limit() {
        for pm in [1u32, 2, 10, 20, 120, 240, 600, 10_000, 60_000] {
            let sp = spacing(pm);
            // Slots whose calls can arrive in one 60 s window lie within 60 s + SLACK.
            let window = Duration::from_secs(60) + SLACK;
            let most = window.as_nanos().div_ceil(sp.as_nanos());
            assert!(most <= u128::from(pm), "{pm}/min: {most} slots in a window");
            // And the timeline still gives at least 98% of the limit.
            let per_minute = Duration::from_secs(60).as_secs_f64() / sp.as_secs_f64();
            assert!(per_minute >= 0.98 * f64::from(pm), "{pm}/min: only {per_minute:.1}");
        }
        assert!(GRACE < SLACK);
    }

    #[test]
    fn spans_round_up_to_whole_microseconds() {
        assert_eq!(micros_up(Duration::from_nanos(1)), 1.0);
        assert_eq!(micros_up(Duration::from_nanos(1000)), 1.0);
        assert_eq!(micros_up(Duration::from_nanos(1001)), 2.0);
        assert_eq!(micros_up(spacing(60_000) * 7), 7117.0);
    }
}
