//! Generating one z14 tile's world at an epoch from its seed alone.

use super::density::density;
use super::epochs::{alive, new_uploads};
use super::features::map_features;
use super::fixture_world::Fx;
use super::ids::{LOCAL_SEQ_BITS, SEQ_BASE};
use super::images::make_image;
use super::movers::{edge_sequence, neighbour};
use super::random::{P_PLAZA, P_SEQ, Rng, hash};
use super::records::{SimDetection, SimFeature, SimImage, SimSequence, TileWorld};
use super::sequences::{seq_attrs, sim_sequence};
use super::streets::{Frame, Grid, StreetPoint, drive, plaza_walk};
use mly_contract::hash::splitmix64 as mix;
use mly_contract::tiles::TileId;

/// Pedestrian sequences converging on the plaza of a dense tile.
pub(super) const PLAZA_SEQUENCES: u64 = 12;
pub(super) const PLAZA_IMAGES: usize = 250;

/// The plaza centre (frame metres) of a dense tile: the middle of one of its inner z17 cells.
pub(super) fn plaza_centre(seed: u64, tile: TileId, frame: &Frame) -> (f64, f64) {
    let h = hash(seed, &[P_PLAZA, u64::from(tile.x), u64::from(tile.y)]);
    let (cx, cy) = (2 + h % 4, 2 + mix(h) % 4);
    ((cx as f64 + 0.5) / 8.0 * frame.w, frame.h - (cy as f64 + 0.5) / 8.0 * frame.h)
}

/// An epoch-0 image with what features need to know about it.
pub(super) struct Placed {
    pub(super) image: SimImage,
    pub(super) street: StreetPoint,
    pub(super) alive: bool,
}

pub(super) fn generate(seed: u64, fx: Fx<'_>, tile: TileId, epoch: u32) -> TileWorld {
    let n = density(seed, tile);
    let frame = Frame::new(tile);
    let mut images: Vec<SimImage> = Vec::new();
    let mut sequences: Vec<SimSequence> = Vec::new();
    let mut features = Vec::new();
    let mut detections = Vec::new();
    // Epoch-0 drives (and the plaza walks of dense tiles).
    let mut placed_seqs: Vec<Vec<Placed>> = Vec::new();
    if n > 0 {
        let grid = Grid::new(seed, tile, &frame, n);
        let plaza = (n > 20_000).then(|| plaza_centre(seed, tile, &frame));
        let mut total = 0usize;
        let mut s = 0u64;
        while total < n as usize && s < 1 << LOCAL_SEQ_BITS {
            let on_plaza = plaza.is_some() && s < PLAZA_SEQUENCES;
            let attrs = seq_attrs(seed, tile, SEQ_BASE, s, on_plaza, 0);
            let mut rng = Rng(hash(seed, &[P_SEQ, u64::from(tile.x), u64::from(tile.y), s, 99]));
            let points = match plaza {
                Some(c) if on_plaza => plaza_walk(c, &mut rng, PLAZA_IMAGES),
                _ => drive(&grid, &frame, &mut rng, attrs.len.min(n as usize - total), attrs.step),
            };
            let mut placed = Vec::with_capacity(points.len());
            for (i, sp) in points.into_iter().enumerate() {
                let local = ((s as i64) << LOCAL_SEQ_BITS) | i as i64;
                if let Some(image) = make_image(seed, fx, tile, &frame, local, &attrs, i, sp, epoch) {
                    let alive = alive(seed, image.id, epoch);
                    placed.push(Placed { image, street: sp, alive });
                }
            }
            total += placed.len();
            let ids: Vec<i64> = placed.iter().filter(|p| p.alive).map(|p| p.image.id).collect();
            if !ids.is_empty() {
                sequences.push(sim_sequence(&attrs, ids));
            }
            placed_seqs.push(placed);
            s += 1;
        }
        map_features(seed, tile, &frame, epoch, &placed_seqs, &mut features, &mut detections);
        for p in placed_seqs.into_iter().flatten().filter(|p| p.alive) {
            images.push(p.image);
        }
        new_uploads(seed, fx, tile, &frame, &grid, n, epoch, &mut images, &mut sequences);
    }
    // Edge movers: ours that stayed, and the neighbours' that arrived.
    for edge in 0..4u8 {
        if let Some((attrs, imgs)) = edge_sequence(seed, fx, tile, edge, epoch) {
            let ids = imgs.iter().map(|e| e.image.id).collect();
            let stayed: Vec<SimImage> = imgs.into_iter().filter(|e| !e.moved).map(|e| e.image).collect();
            if !stayed.is_empty() {
                images.extend(stayed);
                sequences.push(sim_sequence(&attrs, ids));
            }
        }
        let Some(nb) = neighbour(tile, edge) else { continue };
        if let Some((attrs, imgs)) = edge_sequence(seed, fx, nb, (edge + 2) % 4, epoch) {
            let ids = imgs.iter().map(|e| e.image.id).collect();
            let arrived: Vec<SimImage> = imgs.into_iter().filter(|e| e.moved).map(|e| e.image).collect();
            if !arrived.is_empty() {
                images.extend(arrived);
                sequences.push(sim_sequence(&attrs, ids));
            }
        }
    }
    images.sort_unstable_by_key(|i| i.id);
    sequences.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    features.sort_unstable_by_key(|f: &SimFeature| f.id);
    detections.sort_unstable_by_key(|d: &SimDetection| (d.image_id, d.id));
    TileWorld { tile, images, sequences, features, detections }
}
