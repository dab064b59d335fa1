//! The latency model (`--latency SPEC`): how long the simulated service takes to answer.
//!
//! The live Graph API answers in about a second per request (API notes §4.3), so a harvester
//! that does not overlap its requests is slow there however fast it is here. Off by default (tests
//! stay fast). With a median `m` set for a family, every answer of that family (including 304s,
//! errors, throttles and fault answers) is held until `m × f` after the request arrived, where
//!
//! - with probability 3 %, the heavy tail: `f` uniform in [3, 5];
//! - otherwise `f = exp(0.35 × Z)` (log-normal: median 1, p5 ≈ 0.56, p95 ≈ 1.78) for a standard
//!   normal `Z`, clamped to [0.4, 3].
//!
//! So no answer comes sooner than `0.4 m` or later than `5 m`, and the mean is about `1.15 m`. The
//! wait is a timer (`tokio::time::sleep_until`), so any number of requests wait at once.
//!
//! The draws are deterministic for a seed and independent of the order of concurrent requests:
//! each is a hash (`mly_contract::hash`) of the seed, the request (path and query without the
//! token; the CDN's path alone, as its query holds the expiry) and how often that request was made
//! before (counted in a fixed table of slots, so two different requests that share a slot are the
//! only ones whose order matters).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::limits::Family;
use mly_contract::hash::{fnv1a, splitmix64 as mix, unit};

/// Share of requests in the heavy tail.
const TAIL_SHARE: f64 = 0.03;
/// The tail's range, in medians.
const TAIL: (f64, f64) = (3.0, 5.0);
/// Spread (σ of the log) of the body of the distribution.
const SIGMA: f64 = 0.35;
/// The body's range, in medians.
const BODY: (f64, f64) = (0.4, 3.0);
/// The largest median `--latency` accepts.
const MAX_MEDIAN: Duration = Duration::from_secs(60);
/// Slots of the per-request attempt counters.
const SLOTS: usize = 1 << 16;

/// What a latency applies to: the three API families and the CDN (the image URLs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// An API family.
    Api(Family),
    /// The image bytes behind `thumb_*_url`.
    Cdn,
}

impl Channel {
    /// Every channel, in the order of the stats.
    const ALL: [Channel; 4] = [
        Channel::Api(Family::Tiles),
        Channel::Api(Family::Search),
        Channel::Api(Family::Entity),
        Channel::Cdn,
    ];

    fn index(self) -> usize {
        match self {
            Channel::Api(f) => f as usize,
            Channel::Cdn => 3,
        }
    }

    /// The name in `--latency` and in the stats.
    fn name(self) -> &'static str {
        match self {
            Channel::Api(f) => f.name(),
            Channel::Cdn => "cdn",
        }
    }
}

/// Why a `--latency` value is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LatencyError {
    /// Not a duration.
    #[error("{0:?} is not a duration (e.g. 1s, 1.2s, 800ms, 0)")]
    Duration(String),
    /// A median over [`MAX_MEDIAN`].
    #[error("{0:?} is over the largest median, 60s")]
    TooLong(String),
    /// Not one of the families.
    #[error("unknown family {0:?} (tiles, search, entity, cdn)")]
    Family(String),
    /// A family named twice.
    #[error("family {0:?} named twice")]
    Twice(String),
}

/// `--latency`: the median answer time of each channel (`None`: answers at once).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencySpec {
    medians: [Option<Duration>; 4],
}

impl LatencySpec {
    /// Parses `off`, `realistic` (= `1s`), a duration for every family (`1s`, `800ms`), and/or
    /// `family=duration` items (`tiles=1.2s,search=1s,entity=0.6s,cdn=0.3s`), comma-separated; a
    /// named family overrides the duration given for all, one not named answers at once.
    pub(crate) fn parse(s: &str) -> Result<LatencySpec, LatencyError> {
        let mut all = None;
        let mut named: [Option<Option<Duration>>; 4] = [None; 4];
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('=') {
                None => all = Some(median(item)?),
                Some((family, d)) => {
                    let family = family.trim();
                    let c = Channel::ALL
                        .into_iter()
                        .find(|c| c.name() == family)
                        .ok_or_else(|| LatencyError::Family(family.to_string()))?;
                    if named[c.index()].replace(median(d.trim())?).is_some() {
                        return Err(LatencyError::Twice(family.to_string()));
                    }
                }
            }
        }
        let medians = std::array::from_fn(|i| named[i].unwrap_or(all.flatten()));
        Ok(LatencySpec { medians })
    }

    /// Whether any channel waits.
    pub(crate) fn is_on(&self) -> bool {
        self.medians.iter().any(Option::is_some)
    }
}

/// One median: `off`/`0` (none), `realistic` (1 s), or a number with `s` or `ms`.
fn median(s: &str) -> Result<Option<Duration>, LatencyError> {
    let bad = || LatencyError::Duration(s.to_string());
    let secs = match s {
        "off" | "0" => return Ok(None),
        "realistic" => 1.0,
        _ => match s.strip_suffix("ms") {
            Some(ms) => ms.trim().parse::<f64>().map_err(|_| bad())? / 1000.0,
            None => s.strip_suffix('s').ok_or_else(bad)?.trim().parse::<f64>().map_err(|_| bad())?,
        },
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    let d = Duration::from_secs_f64(secs);
    if d > MAX_MEDIAN {
        return Err(LatencyError::TooLong(s.to_string()));
    }
    Ok((!d.is_zero()).then_some(d))
}

/// The factor of the median one request waits, from two independent hash values.
fn factor(h: u64) -> f64 {
    let (u_tail, u1, u2) = (unit(mix(h ^ 1)), unit(mix(h ^ 2)), unit(mix(h ^ 3)));
    if u_tail < TAIL_SHARE {
        return TAIL.0 + (TAIL.1 - TAIL.0) * u1;
    }
    // Box–Muller; 1 - u keeps the logarithm's argument in (0, 1].
    let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (SIGMA * z).exp().clamp(BODY.0, BODY.1)
}

/// Latency applied so far on one channel.
#[derive(Debug, Clone, Copy, Default)]
struct Applied {
    count: u64,
    total: Duration,
    max: Duration,
}

/// The running latency model.
pub(crate) struct Latency {
    spec: LatencySpec,
    key: u64,
    /// How often each request (by slot) was answered before.
    attempts: Box<[AtomicU32]>,
    applied: Mutex<[Applied; 4]>,
}

impl Latency {
    /// The model of `spec`, its draws keyed by the world's `seed`.
    pub(crate) fn new(spec: LatencySpec, seed: u64) -> Latency {
        let slots = if spec.is_on() { SLOTS } else { 0 };
        Latency {
            spec,
            key: mix(seed ^ 0x6c61_7465_6e63_7921),
            attempts: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            applied: Mutex::new([Applied::default(); 4]),
        }
    }

    /// How long the request `identity` (see the module comment) on `channel` takes to answer,
    /// counted in the stats; `None` when the channel answers at once.
    pub(crate) fn draw(&self, channel: Channel, identity: &[u8]) -> Option<Duration> {
        let m = self.spec.medians[channel.index()]?;
        let id = fnv1a(identity) ^ ((channel.index() as u64) << 56);
        let attempt = self.attempts[(mix(id) as usize) % SLOTS].fetch_add(1, Ordering::Relaxed);
        let d = m.mul_f64(factor(mix(self.key ^ mix(id ^ mix(u64::from(attempt))))));
        // A poisoned lock only means a panic elsewhere mid-update of counters: keep counting.
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let a = &mut applied[channel.index()];
        a.count += 1;
        a.total += d;
        a.max = a.max.max(d);
        Some(d)
    }

    /// Per channel with a latency: its median and the latency applied (count, mean, max), in ms.
    pub(crate) fn stats_json(&self) -> Value {
        let applied = *self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Map::new();
        for c in Channel::ALL {
            let Some(m) = self.spec.medians[c.index()] else { continue };
            let a = applied[c.index()];
            let mean = if a.count == 0 { 0.0 } else { a.total.as_secs_f64() * 1000.0 / a.count as f64 };
            out.insert(
                c.name().into(),
                json!({
                    "median_ms": m.as_secs_f64() * 1000.0,
                    "count": a.count,
                    "mean_ms": (mean * 10.0).round() / 10.0,
                    "max_ms": (a.max.as_secs_f64() * 10_000.0).round() / 10.0,
                }),
            );
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    #[test]
    fn specs_parse_and_bad_ones_are_refused() {
        let all = |d| LatencySpec { medians: [d; 4] };
        assert_eq!(LatencySpec::parse("off"), Ok(LatencySpec::default()));
        assert_eq!(LatencySpec::parse("0"), Ok(LatencySpec::default()));
        assert_eq!(LatencySpec::parse("realistic"), Ok(all(ms(1000))));
        assert_eq!(LatencySpec::parse("1s"), Ok(all(ms(1000))));
        assert_eq!(LatencySpec::parse("800ms"), Ok(all(ms(800))));
        assert_eq!(
            LatencySpec::parse("tiles=1.2s, search=1s,entity=0.6s,cdn=0.3s"),
            Ok(LatencySpec { medians: [ms(1200), ms(1000), ms(600), ms(300)] })
        );
        assert_eq!(LatencySpec::parse("cdn=300ms"), Ok(LatencySpec { medians: [None, None, None, ms(300)] }));
        assert_eq!(
            LatencySpec::parse("realistic,cdn=0.3s,tiles=off"),
            Ok(LatencySpec { medians: [None, ms(1000), ms(1000), ms(300)] })
        );
        assert!(!LatencySpec::parse("off").unwrap().is_on());
        for bad in ["1", "fast", "-1s", "1h", "NaNs", "61s", "tile=1s", "cdn=1s,cdn=2s", "search=x"] {
            assert!(LatencySpec::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(LatencySpec::parse("bogus=1s"), Err(LatencyError::Family("bogus".into())));
    }

    #[test]
    fn the_distribution_has_its_median_spread_and_tail() {
        let mut f: Vec<f64> = (0..200_000u64).map(|i| factor(mix(i))).collect();
        f.sort_by(f64::total_cmp);
        let q = |p: f64| f[((f.len() - 1) as f64 * p) as usize];
        let mean = f.iter().sum::<f64>() / f.len() as f64;
        assert!((0.97..1.03).contains(&q(0.5)), "median {}", q(0.5));
        assert!((0.5..0.65).contains(&q(0.05)) && (1.6..2.0).contains(&q(0.94)), "{} {}", q(0.05), q(0.94));
        assert!((1.1..1.2).contains(&mean), "mean {mean}");
        let tail = f.iter().filter(|x| **x >= TAIL.0).count() as f64 / f.len() as f64;
        assert!((0.025..0.035).contains(&tail), "tail {tail}");
        assert!(f[0] >= BODY.0 && f[f.len() - 1] <= TAIL.1);
    }

    #[test]
    fn draws_depend_on_the_request_and_its_attempt_not_on_the_order() {
        let spec = LatencySpec::parse("1s,cdn=0.3s").unwrap();
        let (a, b) = (Latency::new(spec, 7), Latency::new(spec, 7));
        let reqs: Vec<String> = (0..50).map(|i| format!("/{i}?fields=id")).collect();
        let fwd: Vec<_> = reqs.iter().map(|r| a.draw(Channel::Api(Family::Entity), r.as_bytes())).collect();
        let mut back: Vec<_> =
            reqs.iter().rev().map(|r| b.draw(Channel::Api(Family::Entity), r.as_bytes())).collect();
        back.reverse();
        assert_eq!(fwd, back);
        // A repeat of a request is a new attempt, drawn afresh.
        let again: Vec<_> = reqs.iter().map(|r| a.draw(Channel::Api(Family::Entity), r.as_bytes())).collect();
        assert_ne!(fwd, again);
        assert_ne!(Latency::new(spec, 8).draw(Channel::Api(Family::Entity), reqs[0].as_bytes()), fwd[0]);
        assert!(a.draw(Channel::Cdn, b"/m1/v/t6/x").is_some_and(|d| d <= Duration::from_millis(1500)));
        let s = a.stats_json();
        assert_eq!(s["entity"]["count"], 100);
        assert_eq!(s["cdn"]["median_ms"], 300.0);
        let off = Latency::new(LatencySpec::default(), 7);
        assert_eq!(off.draw(Channel::Cdn, b"/"), None);
        assert_eq!(off.stats_json(), json!({}));
    }
}
