//! Fault injection: a TOML file of per-family probabilities, drawn deterministically.
//!
//! ```toml
//! seed = 7
//! permanent = ["14/8574/5736"]
//! [tiles]
//! error_5xx = 0.05
//! reset = 0.01
//! corrupt = 0.01
//! transient_404 = 0.2    # a tile with data answers 404 (§13.3), drawn per tile and request
//! [entity]
//! slow = 0.01
//! slow_secs = 40
//! query_timeout = 0.01   # the 400 code -2 / subcode 3404014 "Query Timeout" (§13.7); also [search]
//! [block]                # the per-IP tile block (§13.1): 302 to https://www.mapillary.com/login/
//! after_tiles = 1000     # tile requests served before the block
//! secs = 30              # how long it lasts; every tile request during it extends it
//! ```
//!
//! Every failure mode is off unless its key is given.

use std::collections::HashSet;
use std::path::Path;

use mly_contract::hash::{splitmix64 as splitmix, unit};
use serde::Deserialize;

use crate::limits::Family;
use mly_contract::tiles::TileId;

/// Errors while loading a faults file.
#[derive(Debug, thiserror::Error)]
pub enum FaultsError {
    /// The file could not be read.
    #[error("while reading faults file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The file is not valid TOML of the expected shape.
    #[error("while parsing faults file {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    /// A `permanent` entry is not `z/x/y`.
    #[error("faults file {path}: permanent tile {tile:?} is not z/x/y")]
    BadTile { path: String, tile: String },
    /// A probability is outside 0..=1 or the sum of a table exceeds 1.
    #[error("faults file {path}: probabilities of [{family}] must be within 0..=1 and sum to at most 1")]
    BadProbability { path: String, family: &'static str },
    /// `[block] secs` is negative or not a number.
    #[error("faults file {path}: [block] secs must be a number of seconds >= 0")]
    BadBlock { path: String },
}

/// Probabilities of one family's faults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FamilyFaults {
    /// 500 code 2 "Service temporarily unavailable".
    #[serde(default)]
    pub(crate) error_5xx: f64,
    /// The code-4 throttle answer although the quota is not used up.
    #[serde(default)]
    pub(crate) throttle: f64,
    /// Delay the (otherwise normal) answer by `slow_secs`.
    #[serde(default)]
    pub(crate) slow: f64,
    /// Seconds a slow answer waits.
    #[serde(default = "default_slow_secs")]
    pub(crate) slow_secs: f64,
    /// Announce a longer Content-Length than the body, then close.
    #[serde(default)]
    pub(crate) truncate: f64,
    /// Close the connection without any answer.
    #[serde(default)]
    pub(crate) reset: f64,
    /// Tiles only: random bytes that are no valid MVT.
    #[serde(default)]
    pub(crate) corrupt: f64,
    /// Search and entity only: HTTP 400 `{"error":{"message":"Timeout","code":-2,
    /// "error_subcode":3404014,"is_transient":false,...}}` (§13.7).
    #[serde(default)]
    pub(crate) query_timeout: f64,
    /// Tiles only: a tile that has data answers 404 (§13.3). Drawn from the tile and how often it
    /// was asked for, so the same tile answers the same way at its n-th request whatever the
    /// order of concurrent requests.
    #[serde(default)]
    pub(crate) transient_404: f64,
}

/// `[block]`: the per-IP tile block of §13.1.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlockFaults {
    /// Tile requests served before the block starts (counted afresh after each block lifts).
    pub(crate) after_tiles: u64,
    /// Seconds the block lasts after the last tile request made during it.
    pub(crate) secs: f64,
}

fn default_slow_secs() -> f64 {
    30.0
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsFile {
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    permanent: Vec<String>,
    #[serde(default)]
    tiles: FamilyFaults,
    #[serde(default)]
    search: FamilyFaults,
    #[serde(default)]
    entity: FamilyFaults,
    #[serde(default)]
    block: Option<BlockFaults>,
}

/// The fault chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fault {
    /// 500 code 2, transient.
    Error5xx,
    /// Code-4 throttle answer.
    Throttle,
    /// Answer normally after this many seconds.
    Slow(f64),
    /// Headers with a too large Content-Length, part of the body, then close.
    Truncate,
    /// Close the connection, no answer at all.
    Reset,
    /// Garbage bytes as a tile.
    Corrupt,
    /// The 400 "Query Timeout" of a search or entity call.
    QueryTimeout,
}

impl Fault {
    /// Name used in stats and the access log.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::Error5xx => "error_5xx",
            Fault::Throttle => "throttle",
            Fault::Slow(_) => "slow",
            Fault::Truncate => "truncate",
            Fault::Reset => "reset",
            Fault::Corrupt => "corrupt",
            Fault::QueryTimeout => "query_timeout",
        }
    }
}

/// Loaded fault plan.
#[derive(Debug, Clone, Default)]
pub(crate) struct Faults {
    seed: u64,
    permanent: HashSet<TileId>,
    per_family: [FamilyFaults; 3],
    block: Option<BlockFaults>,
}

impl Faults {
    /// No faults at all.
    pub(crate) fn none() -> Faults {
        Faults::default()
    }

    /// Loads and validates a faults file.
    pub(crate) fn load(path: &Path) -> Result<Faults, FaultsError> {
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| FaultsError::Read { path: p.clone(), source })?;
        Faults::parse(&text, &p)
    }

    /// Parses faults TOML; `origin` names the source in errors.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<Faults, FaultsError> {
        let f: FaultsFile =
            toml::from_str(text).map_err(|source| FaultsError::Parse { path: origin.to_string(), source })?;
        let mut permanent = HashSet::new();
        for t in &f.permanent {
            let tile = parse_tile(t)
                .ok_or_else(|| FaultsError::BadTile { path: origin.to_string(), tile: t.clone() })?;
            permanent.insert(tile);
        }
        let per_family = [f.tiles, f.search, f.entity];
        for (fam, ff) in Family::ALL.iter().zip(&per_family) {
            let ps =
                [ff.error_5xx, ff.throttle, ff.slow, ff.truncate, ff.reset, ff.corrupt, ff.query_timeout];
            let ok = ps.iter().all(|p| (0.0..=1.0).contains(p))
                && ps.iter().sum::<f64>() <= 1.0 + 1e-9
                && (0.0..=1.0).contains(&ff.transient_404);
            if !ok || ff.slow_secs < 0.0 || !ff.slow_secs.is_finite() {
                return Err(FaultsError::BadProbability { path: origin.to_string(), family: fam.name() });
            }
        }
        if let Some(b) = &f.block
            && !(b.secs.is_finite() && b.secs >= 0.0)
        {
            return Err(FaultsError::BadBlock { path: origin.to_string() });
        }
        Ok(Faults { seed: f.seed, permanent, per_family, block: f.block })
    }

    /// The per-IP block settings, when the file switches it on.
    pub(crate) fn block(&self) -> Option<BlockFaults> {
        self.block
    }

    /// Whether the `n`-th request (0-based) of `tileset` tile `tile` answers a transient 404.
    pub(crate) fn transient_404(&self, tileset: &str, tile: &TileId, n: u64) -> bool {
        let p = self.per_family[0].transient_404;
        if p <= 0.0 {
            return false;
        }
        let key = tileset.bytes().fold(u64::from(tile.z), |h, b| splitmix(h ^ u64::from(b)));
        let key = splitmix(key ^ (u64::from(tile.x) << 32 | u64::from(tile.y)));
        unit(splitmix(self.seed ^ splitmix(key ^ n.wrapping_mul(0xA24B_AED4_963E_E407)))) < p
    }

    /// True if this tile always fails.
    pub(crate) fn is_permanent(&self, tile: &TileId) -> bool {
        self.permanent.contains(tile)
    }

    /// The fault (if any) for request number `counter` of `family`; the same inputs give the same answer.
    pub(crate) fn draw(&self, family: Family, counter: u64) -> Option<Fault> {
        let ff = match family {
            Family::Tiles => &self.per_family[0],
            Family::Search => &self.per_family[1],
            Family::Entity => &self.per_family[2],
        };
        let u = unit(splitmix(self.seed ^ splitmix(counter.wrapping_add(family as u64 * 0x9E37))));
        let corrupt = if family == Family::Tiles { ff.corrupt } else { 0.0 };
        let timeout = if family == Family::Tiles { 0.0 } else { ff.query_timeout };
        let table = [
            (ff.error_5xx, Fault::Error5xx),
            (ff.throttle, Fault::Throttle),
            (ff.slow, Fault::Slow(ff.slow_secs)),
            (ff.truncate, Fault::Truncate),
            (ff.reset, Fault::Reset),
            (corrupt, Fault::Corrupt),
            (timeout, Fault::QueryTimeout),
        ];
        let mut acc = 0.0;
        for (p, fault) in table {
            acc += p;
            if u < acc {
                return Some(fault);
            }
        }
        None
    }
}

fn parse_tile(s: &str) -> Option<TileId> {
    let mut it = s.split('/');
    let z = it.next()?.trim().parse().ok()?;
    let x = it.next()?.trim().parse().ok()?;
    let y = it.next()?.trim().parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    TileId::new(z, x, y).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_deterministic_and_follow_probabilities() {
        let f = Faults::parse(
            "seed = 3\npermanent = [\"14/8574/5736\"]\n[tiles]\nerror_5xx = 0.5\n[entity]\nreset = 1.0\n",
            "test",
        )
        .unwrap();
        let a: Vec<_> = (0..1000).map(|i| f.draw(Family::Tiles, i)).collect();
        let b: Vec<_> = (0..1000).map(|i| f.draw(Family::Tiles, i)).collect();
        assert_eq!(a, b);
        let errors = a.iter().filter(|x| **x == Some(Fault::Error5xx)).count();
        assert!((400..600).contains(&errors), "{errors}");
        assert!((0..100).all(|i| f.draw(Family::Search, i).is_none()));
        assert!((0..100).all(|i| f.draw(Family::Entity, i) == Some(Fault::Reset)));
        assert!(f.is_permanent(&TileId::new(14, 8574, 5736).unwrap()));
        assert!(!f.is_permanent(&TileId::new(14, 8574, 5735).unwrap()));
    }

    #[test]
    fn bad_files_are_rejected() {
        assert!(Faults::parse("[tiles]\nerror_5xx = 1.5\n", "t").is_err());
        assert!(Faults::parse("[tiles]\nbogus = 0.1\n", "t").is_err());
        assert!(Faults::parse("permanent = [\"14/1\"]\n", "t").is_err());
        assert!(Faults::parse("[tiles]\ntransient_404 = 2\n", "t").is_err());
        assert!(Faults::parse("[block]\nafter_tiles = 3\nsecs = -1\n", "t").is_err());
        assert!(Faults::parse("[block]\nafter_tiles = 3\n", "t").is_err(), "secs is required");
        assert!(Faults::parse("[block]\nafter = 3\nsecs = 1\n", "t").is_err());
    }

    #[test]
    fn failure_modes_of_the_live_service() {
        let f = Faults::parse(
            "[block]\nafter_tiles = 5\nsecs = 2.5\n[tiles]\ntransient_404 = 0.5\n[search]\nquery_timeout = 1.0\n",
            "t",
        )
        .unwrap();
        assert_eq!(f.block(), Some(BlockFaults { after_tiles: 5, secs: 2.5 }));
        assert!((0..50).all(|i| f.draw(Family::Search, i) == Some(Fault::QueryTimeout)));
        assert!((0..50).all(|i| f.draw(Family::Entity, i).is_none()));
        let t = TileId::new(14, 8785, 5134).unwrap();
        let draws: Vec<bool> = (0..200).map(|n| f.transient_404("mly1_public", &t, n)).collect();
        assert_eq!(draws, (0..200).map(|n| f.transient_404("mly1_public", &t, n)).collect::<Vec<_>>());
        let hits = draws.iter().filter(|b| **b).count();
        assert!((60..140).contains(&hits), "{hits}");
        // Off by default.
        let none = Faults::none();
        assert!(none.block().is_none() && !none.transient_404("mly1_public", &t, 0));
    }
}
