//! Fault injection: a TOML file of per-family probabilities, drawn deterministically.
//!
//! ```toml
//! seed = 7
//! permanent = ["14/8574/5736"]
//! [tiles]
//! error_5xx = 0.05
//! reset = 0.01
//! corrupt = 0.01
//! [entity]
//! slow = 0.01
//! slow_secs = 40
//! ```

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use super::limits::Family;
use crate::tiles::TileId;

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
}

/// Probabilities of one family's faults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyFaults {
    /// 500 code 2 "Service temporarily unavailable".
    #[serde(default)]
    pub error_5xx: f64,
    /// The code-4 throttle answer although the quota is not used up.
    #[serde(default)]
    pub throttle: f64,
    /// Delay the (otherwise normal) answer by `slow_secs`.
    #[serde(default)]
    pub slow: f64,
    /// Seconds a slow answer waits.
    #[serde(default = "default_slow_secs")]
    pub slow_secs: f64,
    /// Announce a longer Content-Length than the body, then close.
    #[serde(default)]
    pub truncate: f64,
    /// Close the connection without any answer.
    #[serde(default)]
    pub reset: f64,
    /// Tiles only: random bytes that are no valid MVT.
    #[serde(default)]
    pub corrupt: f64,
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
}

/// The fault chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
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
}

impl Fault {
    /// Name used in stats and the access log.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Error5xx => "error_5xx",
            Fault::Throttle => "throttle",
            Fault::Slow(_) => "slow",
            Fault::Truncate => "truncate",
            Fault::Reset => "reset",
            Fault::Corrupt => "corrupt",
        }
    }
}

/// Loaded fault plan.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    seed: u64,
    permanent: HashSet<TileId>,
    per_family: [FamilyFaults; 3],
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// Loads and validates a faults file.
    pub fn load(path: &Path) -> Result<Faults, FaultsError> {
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| FaultsError::Read { path: p.clone(), source })?;
        Faults::parse(&text, &p)
    }

    /// Parses faults TOML; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Faults, FaultsError> {
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
            let ps = [ff.error_5xx, ff.throttle, ff.slow, ff.truncate, ff.reset, ff.corrupt];
            let ok = ps.iter().all(|p| (0.0..=1.0).contains(p)) && ps.iter().sum::<f64>() <= 1.0 + 1e-9;
            if !ok || ff.slow_secs < 0.0 || !ff.slow_secs.is_finite() {
                return Err(FaultsError::BadProbability { path: origin.to_string(), family: fam.name() });
            }
        }
        Ok(Faults { seed: f.seed, permanent, per_family })
    }

    /// True if this tile always fails.
    pub fn is_permanent(&self, tile: &TileId) -> bool {
        self.permanent.contains(tile)
    }

    /// The fault (if any) for request number `counter` of `family`; the same inputs give the same answer.
    pub fn draw(&self, family: Family, counter: u64) -> Option<Fault> {
        let ff = match family {
            Family::Tiles => &self.per_family[0],
            Family::Search => &self.per_family[1],
            Family::Entity => &self.per_family[2],
        };
        let u = unit(splitmix(self.seed ^ splitmix(counter.wrapping_add(family as u64 * 0x9E37))));
        let corrupt = if family == Family::Tiles { ff.corrupt } else { 0.0 };
        let table = [
            (ff.error_5xx, Fault::Error5xx),
            (ff.throttle, Fault::Throttle),
            (ff.slow, Fault::Slow(ff.slow_secs)),
            (ff.truncate, Fault::Truncate),
            (ff.reset, Fault::Reset),
            (corrupt, Fault::Corrupt),
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

/// SplitMix64 finaliser: a cheap, well-mixed deterministic hash.
pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
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
    }
}
