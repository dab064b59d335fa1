//! Deterministic draws: splitmix64 (`mly_contract::hash`) so the world never changes with a crate's
//! RNG stream. Every attribute is a hash of (seed, purpose, key) or a draw from a stream seeded so.

use mly_contract::hash::{splitmix64 as mix, unit};

/// A hash of a seed and a key path; every attribute is derived from one of these.
pub(super) fn hash(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(mix(seed ^ 0x6d6c_7968_6172_7673), |acc, p| mix(acc ^ mix(*p)))
}

/// A sequential stream for the inside of one record (a drive's turns), seeded by a stable key.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    pub(super) fn unit(&mut self) -> f64 {
        unit(self.next())
    }
    pub(super) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Roughly normal with standard deviation 1 (sum of four uniforms).
    pub(super) fn gauss(&mut self) -> f64 {
        (self.unit() + self.unit() + self.unit() + self.unit() - 2.0) * 3f64.sqrt()
    }
}

// Purposes, so that hashes of the same key for different attributes are independent.
pub(super) const P_DENSITY: u64 = 1;
pub(super) const P_TOWN: u64 = 2;
pub(super) const P_RURAL: u64 = 3;
pub(super) const P_GRID: u64 = 4;
pub(super) const P_SEQ: u64 = 5;
pub(super) const P_IMG: u64 = 6;
pub(super) const P_FEAT: u64 = 7;
pub(super) const P_DEL: u64 = 8;
pub(super) const P_RECOMPUTE: u64 = 9;
pub(super) const P_MOVE: u64 = 10;
pub(super) const P_NEW: u64 = 11;
pub(super) const P_DET: u64 = 13;
pub(super) const P_SEQ_ID: u64 = 14;
pub(super) const P_EDGE: u64 = 15;
pub(super) const P_PLAZA: u64 = 16;
pub(super) const P_USER: u64 = 17;
pub(super) const P_FIXTURE: u64 = 18;
