//! What an epoch (a day after epoch 0) changes: deletions, recomputed SfM positions and new
//! uploads. Everything untouched stays byte-identical.

use super::fixture_world::Fx;
use super::ids::{LOCAL_NEW, MAX_NEW_EPOCH, NEW_BLOCK, SEQ_NEW};
use super::images::make_image;
use super::random::{P_DEL, P_NEW, P_RECOMPUTE, Rng, hash};
use super::records::{SimImage, SimSequence};
use super::sequences::{seq_attrs, sim_sequence};
use super::streets::{Frame, Grid, StreetPoint, drive};
use mly_contract::hash::{splitmix64 as mix, unit};
use mly_contract::tiles::TileId;

/// 2025-01-01T00:00:00Z: the world's "now" at epoch 0; epoch `e` is `e` days later.
pub(super) const EPOCH0_MS: i64 = 1_735_689_600_000;
pub(super) const DAY_MS: i64 = 86_400_000;
/// 2014-01-01, the earliest capture time.
pub(super) const FIRST_CAPTURE_MS: i64 = 1_388_534_400_000;

/// The SfM position at `epoch`: re-computed now and then (on a per-image period), otherwise stable.
pub(super) fn computed_position(
    seed: u64,
    id: i64,
    frame: &Frame,
    sp: StreetPoint,
    epoch: u32,
) -> (f64, f64) {
    let h = hash(seed, &[P_RECOMPUTE, id as u64]);
    let period = 40 + (h % 80) as u32;
    let phase = 1 + (mix(h) % u64::from(period)) as u32;
    let last = if epoch >= phase { phase + (epoch - phase) / period * period } else { 0 };
    let mut rng = Rng(hash(seed, &[P_RECOMPUTE, id as u64, u64::from(last)]));
    let (x, y) = frame.clamp(sp.x + 0.6 * rng.gauss(), sp.y + 0.6 * rng.gauss());
    frame.lonlat(x, y)
}

/// Epoch (≥ 1) at which an entity disappears: geometric with `rate` per epoch.
pub(super) fn gone_epoch(seed: u64, purpose: u64, id: i64, rate: f64) -> u32 {
    let u = unit(hash(seed, &[purpose, id as u64]));
    let e = ((1.0 - u).ln() / (1.0 - rate).ln()).ceil();
    if e.is_finite() { e.clamp(1.0, f64::from(u32::MAX)) as u32 } else { u32::MAX }
}

pub(super) fn alive(seed: u64, id: i64, epoch: u32) -> bool {
    epoch < gone_epoch(seed, P_DEL, id, 0.01)
}

/// Sequences uploaded after epoch 0, up to `epoch`: a few per epoch in busy tiles, some captured long ago.
#[allow(clippy::too_many_arguments)] // plain inputs of one generation step
pub(super) fn new_uploads(
    seed: u64,
    fx: Fx<'_>,
    tile: TileId,
    frame: &Frame,
    grid: &Grid,
    n: u32,
    epoch: u32,
    images: &mut Vec<SimImage>,
    sequences: &mut Vec<SimSequence>,
) {
    for ep in 1..=epoch.min(MAX_NEW_EPOCH) {
        let u = unit(hash(seed, &[P_NEW, u64::from(tile.x), u64::from(tile.y), u64::from(ep)]));
        let count = (u * (0.6 + f64::from(n) / 15_000.0) + 0.5).floor() as u64;
        for k in 0..count.min(4) {
            let index = u64::from(ep - 1) * 4 + k;
            let attrs = seq_attrs(seed, tile, SEQ_NEW, index, false, ep);
            let mut rng = Rng(hash(seed, &[P_NEW, u64::from(tile.x), u64::from(tile.y), index, 99]));
            let points = drive(grid, frame, &mut rng, attrs.len.min(256), attrs.step);
            let mut ids = Vec::new();
            for (i, sp) in points.into_iter().enumerate() {
                let local = LOCAL_NEW + i64::from(ep - 1) * NEW_BLOCK + k as i64 * 256 + i as i64;
                if let Some(image) = make_image(seed, fx, tile, frame, local, &attrs, i, sp, epoch) {
                    ids.push(image.id);
                    images.push(image);
                }
            }
            if !ids.is_empty() {
                sequences.push(sim_sequence(&attrs, ids));
            }
        }
    }
}
