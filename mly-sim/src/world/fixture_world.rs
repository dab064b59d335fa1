//! The real Zürich fixture tile.
//!
//! Where a captured real tile's z/x/y is known (14/8574/5735, Vespucci's 2021 `mly1_public`), the
//! simulator serves those exact bytes and builds the tile's world from them, so the Graph API and
//! the tile agree. The real tile is a single snapshot: the world there is the same at every epoch
//! (no deletions, moves, uploads or recomputed positions), and it has no map features or detections
//! (no feature tiles were captured), so the feature tilesets answer empty there.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::images::{Shot, camera_of, complete};
use super::random::{P_FIXTURE, Rng, hash};
use super::records::{SimImage, SimSequence, TileWorld};
use super::sequences::SeqAttrs;
use super::streets::Frame;
use super::users::{USERS, user_id};
use mly_contract::hash::{fnv1a, splitmix64 as mix};

pub(super) use crate::fixture::FIXTURE_TILE;
use crate::fixture::{FixtureError, FixtureTile};

/// The loaded fixture (`--fixtures DIR`): its records and the id index that routes lookups to it.
#[derive(Debug)]
pub(crate) struct Fixture {
    pub(super) tile: FixtureTile,
    pub(super) image_ids: HashSet<i64>,
    pub(super) sequence_ids: HashSet<String>,
}

impl Fixture {
    /// Reads the real Zürich tile from `dir` with the simulator's own reader.
    pub(crate) fn load(dir: &Path) -> Result<Fixture, FixtureError> {
        let tile = crate::fixture::load(dir)?;
        let image_ids = tile.images.iter().map(|i| i.id).collect();
        let sequence_ids = tile
            .images
            .iter()
            .filter_map(|i| i.sequence_id.clone())
            .chain(tile.sequences.iter().map(|s| s.id.clone()))
            .collect();
        tracing::debug!(dir = %dir.display(), images = tile.images.len(), "loaded fixture tile");
        Ok(Fixture { tile, image_ids, sequence_ids })
    }
}

/// The fixture of a world, if it has one (`None`: every tile is synthetic).
pub(super) type Fx<'a> = Option<&'a Fixture>;

/// Whether `id` is an image of the real fixture tile (such ids never denote synthetic records).
pub(super) fn is_fixture_image(fx: Fx<'_>, id: i64) -> bool {
    fx.is_some_and(|f| f.image_ids.contains(&id))
}

/// The world of the fixture tile: the real images at their decoded positions with their real
/// tile attributes; Graph-only fields synthesised from `seed` and the ids.
pub(super) fn fixture_world(seed: u64, fx: &Fixture) -> TileWorld {
    let tile = FIXTURE_TILE;
    let frame = Frame::new(tile);
    let seq_layer: HashMap<&str, &crate::fixture::FixtureSequence> =
        fx.tile.sequences.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut images: Vec<SimImage> = Vec::with_capacity(fx.tile.images.len());
    let mut seen = HashSet::new();
    for ti in &fx.tile.images {
        // A repeated id would make lookups ambiguous; the first occurrence is the record.
        if !seen.insert(ti.id) {
            continue;
        }
        let seq_id = ti.sequence_id.clone().unwrap_or_default();
        let sh = hash(seed, &[P_FIXTURE, fnv1a(seq_id.as_bytes())]);
        let is_pano = ti.is_pano.unwrap_or(false);
        // The 2021 tile does not say whether a sequence was walked; its drives are taken as drives.
        let seq = SeqAttrs {
            id: seq_id,
            is_pano,
            creator_id: user_id((mix(sh ^ 3) % USERS as u64) as i64),
            organization_id: ti.organization_id,
            camera: camera_of(sh, is_pano),
            ..SeqAttrs::default()
        };
        let mut rng = Rng(hash(seed, &[P_FIXTURE, ti.id as u64]));
        // SfM nudges the GPS position by well under a metre; stay inside the tile.
        let (x, y) =
            ((ti.lon - frame.west) / frame.dlon * frame.w, (ti.lat - frame.south) / frame.dlat * frame.h);
        let (cx, cy) = frame.clamp(x + 0.6 * rng.gauss(), y + 0.6 * rng.gauss());
        let computed = Some(frame.lonlat(cx, cy));
        // Zürich-Höngg lies around 430 m above sea level.
        let altitude = ((430.0 + 5.0 * rng.gauss()) * 1000.0).round() / 1000.0;
        let compass_angle = ti.compass_angle.unwrap_or(0.0);
        let captured_at_ms = ti.captured_at_ms.unwrap_or(0);
        let shot =
            Shot { id: ti.id, captured_at_ms, lonlat: (ti.lon, ti.lat), computed, compass_angle, altitude };
        images.push(complete(seed, tile, &mut rng, &seq, shot, compass_angle));
    }
    // Sequences: the tile's images of each, in capture order (ties by id).
    let mut by_seq: HashMap<&str, Vec<&SimImage>> = HashMap::new();
    for img in images.iter().filter(|i| !i.sequence_id.is_empty()) {
        by_seq.entry(img.sequence_id.as_str()).or_default().push(img);
    }
    let mut sequences: Vec<SimSequence> = by_seq
        .into_iter()
        .map(|(id, mut imgs)| {
            imgs.sort_unstable_by_key(|i| (i.captured_at_ms, i.id));
            let layer = seq_layer.get(id);
            let first = imgs[0]; // by construction every group has at least one image
            SimSequence {
                id: id.to_string(),
                image_ids: imgs.iter().map(|i| i.id).collect(),
                captured_at_ms: layer.and_then(|s| s.captured_at_ms).unwrap_or(first.captured_at_ms),
                is_pano: layer.and_then(|s| s.is_pano).unwrap_or(first.is_pano),
                creator_id: first.creator_id,
                organization_id: layer.and_then(|s| s.organization_id).or(first.organization_id),
                foot: false,
            }
        })
        .collect();
    images.sort_unstable_by_key(|i| i.id);
    sequences.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    TileWorld { tile, images, sequences, features: Vec::new(), detections: Vec::new() }
}
