//! Coverage tiles below z14, generalised from per-z14 summaries: the `sequence` layer at z6–13
//! and the `overview` layer at z0–5 (§5.2), for both coverage tilesets.
//!
//! A low-zoom tile is never drawn from a regenerated world: each z14 tile is summarised once
//! (its sequences' attributes, a thinned line and a first image, cached), and a low-zoom tile
//! draws the summaries of a bounded sample of its z14 tiles: every z14 tile from z10 on, every
//! `2^(10-z)`-th tile in each direction below that, plus the city-core tiles it contains. So
//! whatever a low-zoom tile shows exists in the z14 tile under it with the same attributes, at
//! the same place up to the coarser pixel grid; it shows less than z14 does, never something else.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use geozero::mvt::tile::GeomType;
use geozero::mvt::{Message, Tile};

use super::coverage::SequenceTags;
use super::layer::{LayerBuilder, ValueKey, line_parts, lines_geometry, point_geometry};
use super::pixels::{home_pixel, image_position};
use crate::world::{SimImage, World};
use mly_contract::tiles::{HARVEST_ZOOM, TileId};

/// Lowest zoom of the `sequence` layer; below it tiles carry the `overview` layer.
pub(super) const SEQUENCE_MIN_ZOOM: u8 = 6;
/// From this zoom on, a low-zoom tile draws every z14 tile under it (at most 4^4 = 256).
const FULL_SAMPLE_ZOOM: u8 = 10;
/// Points kept of a sequence's line in one z14 tile.
const LINE_POINTS: usize = 16;
/// Summaries kept in memory.
const SUMMARY_CACHE: usize = 4096;

/// What low zooms need of one sequence within one z14 tile.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SeqSummary {
    /// What the z14 `sequence` layer says of it.
    pub(super) tags: SequenceTags,
    /// The first image of the sequence in this z14 tile (the `overview` point): id, captured_at,
    /// original and computed position.
    pub(super) first: (i64, i64, (f64, f64), (f64, f64)),
    /// Thinned line through the tile's images in capture order: original and computed positions.
    pub(super) line: Vec<(f64, f64)>,
    pub(super) line_computed: Vec<(f64, f64)>,
}

/// One z14 tile's summary.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct TileSummary {
    pub(super) sequences: Vec<SeqSummary>,
}

/// Keeps at most [`LINE_POINTS`] evenly spaced points, always the first and the last.
fn thin<T: Copy>(points: &[T]) -> Vec<T> {
    if points.len() <= LINE_POINTS {
        return points.to_vec();
    }
    let last = points.len() - 1;
    (0..LINE_POINTS).map(|k| points[k * last / (LINE_POINTS - 1)]).collect()
}

/// Summarises the z14 tile `tile` of `world` at `epoch`.
pub(super) fn summarise(world: &World, tile: TileId, epoch: u32) -> TileSummary {
    let tw = world.tile(tile, epoch);
    let by_id: HashMap<i64, &SimImage> = tw.images.iter().map(|i| (i.id, i)).collect();
    let mut sequences = Vec::with_capacity(tw.sequences.len());
    for seq in &tw.sequences {
        let imgs: Vec<&SimImage> = seq.image_ids.iter().filter_map(|id| by_id.get(id).copied()).collect();
        let Some(first) = imgs.first() else { continue };
        let line: Vec<(f64, f64)> = imgs.iter().map(|i| image_position(i, false)).collect();
        let line_computed: Vec<(f64, f64)> = imgs.iter().map(|i| image_position(i, true)).collect();
        sequences.push(SeqSummary {
            tags: SequenceTags::of(seq, first),
            first: (
                first.id,
                first.captured_at_ms,
                image_position(first, false),
                image_position(first, true),
            ),
            line: thin(&line),
            line_computed: thin(&line_computed),
        });
    }
    TileSummary { sequences }
}

/// A bounded cache of z14 summaries keyed by (tile, epoch).
#[derive(Default)]
pub(crate) struct SummaryCache {
    map: HashMap<(TileId, u32), Arc<TileSummary>>,
    order: VecDeque<(TileId, u32)>,
}

impl SummaryCache {
    fn get(&self, k: &(TileId, u32)) -> Option<Arc<TileSummary>> {
        self.map.get(k).cloned()
    }

    fn put(&mut self, k: (TileId, u32), v: Arc<TileSummary>) {
        if self.map.insert(k, v).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > SUMMARY_CACHE {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

/// The z14 tiles a low-zoom tile draws (see the module comment), in a stable order.
pub(super) fn sample(world: &World, tile: TileId) -> Vec<TileId> {
    let d = HARVEST_ZOOM - tile.z;
    let step_log = FULL_SAMPLE_ZOOM.saturating_sub(tile.z).min(d);
    let (step, span) = (1u32 << step_log, 1u32 << d);
    let offset = step / 2;
    let mut out = Vec::new();
    let mut y = offset;
    while y < span {
        let mut x = offset;
        while x < span {
            out.push(TileId { z: HARVEST_ZOOM, x: (tile.x << d) + x, y: (tile.y << d) + y });
            x += step;
        }
        y += step;
    }
    for core in world.city_cores_within(tile) {
        if !out.contains(&core) {
            out.push(core);
        }
    }
    out.retain(|t| world.may_have_data(*t));
    out
}

/// The bytes of a coverage tile below z14 (empty when nothing is drawn).
pub(crate) fn encode_low_zoom(
    world: &World,
    cache: &Mutex<SummaryCache>,
    tile: TileId,
    epoch: u32,
    computed: bool,
) -> Vec<u8> {
    let mut summaries = Vec::new();
    for t in sample(world, tile) {
        let key = (t, epoch);
        // A poisoned lock only means a panic elsewhere mid-insert into a plain cache: keep using it.
        let cached = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key);
        let s = match cached {
            Some(s) => s,
            None => {
                let s = Arc::new(summarise(world, t, epoch));
                cache.lock().unwrap_or_else(|p| p.into_inner()).put(key, s.clone());
                s
            }
        };
        summaries.push(s);
    }
    let px = |(lon, lat): (f64, f64)| home_pixel(tile, lon, lat);
    let layer = if tile.z >= SEQUENCE_MIN_ZOOM {
        // One feature per sequence: its parts from every sampled z14 tile it crosses.
        let mut order: Vec<&SeqSummary> = Vec::new();
        let mut parts: HashMap<&str, Vec<Vec<(i64, i64)>>> = HashMap::new();
        for s in summaries.iter().flat_map(|s| s.sequences.iter()) {
            let line = if computed { &s.line_computed } else { &s.line };
            let pts: Vec<(i64, i64)> = line.iter().map(|p| px(*p)).collect();
            let entry = parts.entry(s.tags.id.as_str()).or_insert_with(|| {
                order.push(s);
                Vec::new()
            });
            entry.extend(line_parts(&pts));
        }
        let mut b = LayerBuilder::new("sequence");
        for (i, s) in order.into_iter().enumerate() {
            let geometry = lines_geometry(&parts[s.tags.id.as_str()]);
            b.push(i as u64, GeomType::Linestring, geometry, s.tags.props(computed));
        }
        b.layer
    } else {
        let mut b = LayerBuilder::new("overview");
        for (i, s) in summaries.iter().flat_map(|s| s.sequences.iter()).enumerate() {
            let (id, captured_at_ms, pos, pos_computed) = s.first;
            let props = vec![
                ("captured_at", ValueKey::Int(captured_at_ms)),
                ("id", ValueKey::Int(id)),
                ("is_pano", ValueKey::Bool(s.tags.is_pano)),
                ("sequence_id", ValueKey::Str(s.tags.id.clone())),
            ];
            let p = px(if computed { pos_computed } else { pos });
            b.push(i as u64, GeomType::Point, point_geometry(p), props);
        }
        b.layer
    };
    if layer.features.is_empty() {
        return Vec::new();
    }
    Tile { layers: vec![layer] }.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_ends_and_bounds_the_count() {
        let pts: Vec<u32> = (0..100).collect();
        let t = thin(&pts);
        assert_eq!(t.len(), LINE_POINTS);
        assert_eq!((t[0], t[LINE_POINTS - 1]), (0, 99));
        assert_eq!(thin(&pts[..5]), pts[..5].to_vec());
    }

    #[test]
    fn samples_are_bounded_and_inside_the_tile() {
        let w = World::new(1);
        for z in [0u8, 3, 5, 6, 9, 10, 13] {
            let t = TileId::containing(z, 13.0, 55.6);
            let s = sample(&w, t);
            assert!(s.len() <= 256 + 16, "z{z}: {}", s.len());
            assert!(s.iter().all(|c| c.is_within(&t) && c.z == HARVEST_ZOOM), "z{z}");
            // The Malmö core is always drawn.
            assert!(s.contains(&TileId::containing(HARVEST_ZOOM, 13.0, 55.6)), "z{z}");
        }
        // From z10 on, every z14 tile with data is drawn.
        let t = TileId::containing(12, 13.06, 55.6);
        let all: Vec<TileId> =
            t.descendants_at(HARVEST_ZOOM).into_iter().filter(|c| w.may_have_data(*c)).collect();
        let mut got = sample(&w, t);
        got.sort();
        let mut want = all;
        want.sort();
        assert_eq!(got, want);
    }
}
