//! The simulator's deterministic world: generated per z14 tile from (seed, tile, epoch), with no
//! precomputed global state. Every id encodes its home tile so lookups regenerate (or take from
//! the cache) just that tile.
//!
//! Data flows one way: this module knows nothing of MVT or JSON; `encode` and `graph` render its
//! records and `server` answers with them.

mod density;
mod epochs;
mod features;
mod fixture_world;
mod generate;
mod ids;
mod images;
mod movers;
mod random;
mod records;
mod sequences;
mod streets;
#[cfg(test)]
mod tests;
mod users;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use mly_contract::tiles::{HARVEST_ZOOM, TileId};

use density::{CITIES, density};
use fixture_world::{FIXTURE_TILE, Fx, fixture_world, is_fixture_image};
use generate::generate;
use ids::{KIND_FEATURE, KIND_IMAGE, LOCAL_EDGE, LOCAL_NEW, SEQ_EDGE, parse_sequence_id, split_id};
use movers::{edge_sequence, neighbour};
use sequences::sim_sequence;

pub(crate) use fixture_world::Fixture;
pub(crate) use records::{SimDetection, SimFeature, SimImage, SimSequence, SimUser, TileWorld};

/// The simulated world; cheap to share as `Arc<World>`.
pub(crate) struct World {
    seed: u64,
    cache: Mutex<Lru>,
    /// The real capture served at [`FIXTURE_TILE`] (only when `--fixtures` names it).
    fixture: Option<Fixture>,
    /// The fixture tile's world, built on first use; it is the same at every epoch.
    fixture_world: OnceLock<Option<Arc<TileWorld>>>,
    /// Creator ids by username, built on first use.
    usernames: OnceLock<HashMap<String, Vec<i64>>>,
}

/// How many generated tiles the cache keeps.
const CACHE_TILES: usize = 64;

/// A small LRU of generated tiles keyed by (tile, epoch).
struct Lru {
    tick: u64,
    map: HashMap<(TileId, u32), (u64, Arc<TileWorld>)>,
}

impl Lru {
    fn get(&mut self, key: (TileId, u32)) -> Option<Arc<TileWorld>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&key).map(|(t, tw)| {
            *t = tick;
            tw.clone()
        })
    }

    fn put(&mut self, key: (TileId, u32), tw: Arc<TileWorld>) {
        self.tick += 1;
        if self.map.len() >= CACHE_TILES
            && let Some(oldest) = self.map.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| *k)
        {
            self.map.remove(&oldest);
        }
        self.map.insert(key, (self.tick, tw));
    }
}

impl World {
    /// A synthetic world determined entirely by `seed`.
    #[cfg(test)]
    pub(crate) fn new(seed: u64) -> World {
        World::with_fixture(seed, None)
    }

    /// A world determined by `seed` that serves the real capture `fixture` at its tile.
    pub(crate) fn with_fixture(seed: u64, fixture: Option<Fixture>) -> World {
        World {
            seed,
            cache: Mutex::new(Lru { tick: 0, map: HashMap::new() }),
            fixture,
            fixture_world: OnceLock::new(),
            usernames: OnceLock::new(),
        }
    }

    fn fx(&self) -> Fx<'_> {
        self.fixture.as_ref()
    }

    /// The world of the real fixture tile, if the fixture is loaded.
    fn fixture_tile(&self) -> Option<Arc<TileWorld>> {
        self.fixture_world
            .get_or_init(|| self.fixture.as_ref().map(|fx| Arc::new(fixture_world(self.seed, fx))))
            .clone()
    }

    /// The real tile bytes served verbatim for `mly1_public` at this tile, if it is the fixture tile.
    pub(crate) fn verbatim_public_tile(&self, tile: TileId) -> Option<&[u8]> {
        if tile != FIXTURE_TILE {
            return None;
        }
        self.fixture.as_ref().map(|f| f.tile.bytes.as_slice())
    }

    /// The content of z14 tile `tile` at `epoch` (cached); a deeper tile is taken as its z14 ancestor.
    pub(crate) fn tile(&self, tile: TileId, epoch: u32) -> Arc<TileWorld> {
        let tile = tile.ancestor_at(HARVEST_ZOOM);
        if tile == FIXTURE_TILE
            && let Some(tw) = self.fixture_tile()
        {
            return tw;
        }
        let key = (tile, epoch);
        // A poisoned lock only means another thread panicked mid-update of a plain cache: keep using it.
        if let Some(tw) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            return tw;
        }
        let tw = Arc::new(generate(self.seed, self.fx(), tile, epoch));
        tracing::debug!(tile = %tile, epoch, images = tw.images.len(), "generated tile");
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).put(key, tw.clone());
        tw
    }

    /// The target image count of a tile, computed without generating it.
    #[cfg(test)]
    pub(crate) fn expected_images(&self, tile: TileId) -> u32 {
        let tile = tile.ancestor_at(HARVEST_ZOOM);
        if tile == FIXTURE_TILE
            && let Some(fx) = self.fx()
        {
            return fx.image_ids.len() as u32;
        }
        density(self.seed, tile)
    }

    /// Whether the z14 tile can hold records, decided without generating it (tiles that only
    /// receive a neighbour's movers answer `false`).
    pub(crate) fn may_have_data(&self, tile: TileId) -> bool {
        let tile = tile.ancestor_at(HARVEST_ZOOM);
        if (tile == FIXTURE_TILE && self.fixture.is_some()) || density(self.seed, tile) > 0 {
            return true;
        }
        // Movers arrive from busy neighbours (see `edge_sequence`).
        (0..4u8).any(|e| neighbour(tile, e).is_some_and(|nb| density(self.seed, nb) >= 100))
    }

    /// The z14 tiles holding a city centre (the densest tiles of the world) that lie within `tile`.
    pub(crate) fn city_cores_within(&self, tile: TileId) -> Vec<TileId> {
        CITIES
            .iter()
            .map(|&(lon, lat)| TileId::containing(HARVEST_ZOOM, lon, lat))
            .filter(|t| t.is_within(&tile))
            .collect()
    }

    /// The image with this id at `epoch`, or `None` if it never existed or was deleted.
    pub(crate) fn image(&self, id: i64, epoch: u32) -> Option<SimImage> {
        // Fixture ids also decode as synthetic ids (kind 0, some far-away tile): the index wins.
        if is_fixture_image(self.fx(), id) {
            let tw = self.fixture_tile()?;
            return tw.images.binary_search_by_key(&id, |i| i.id).ok().map(|i| tw.images[i].clone());
        }
        let (kind, tile, local) = split_id(id)?;
        if kind != KIND_IMAGE {
            return None;
        }
        if (LOCAL_EDGE..LOCAL_NEW).contains(&local) {
            // Movers are regenerated from their edge stream alone: they may sit in the neighbour.
            let edge = ((local - LOCAL_EDGE) / 64) as u8;
            let (_, imgs) = edge_sequence(self.seed, self.fx(), tile, edge, epoch)?;
            return imgs.into_iter().find(|e| e.image.id == id).map(|e| e.image);
        }
        let tw = self.tile(tile, epoch);
        tw.images.binary_search_by_key(&id, |i| i.id).ok().map(|i| tw.images[i].clone())
    }

    /// The map feature with this id at `epoch`.
    pub(crate) fn map_feature(&self, id: i64, epoch: u32) -> Option<SimFeature> {
        // An id names one entity only: a fixture image is never also a synthetic feature.
        if is_fixture_image(self.fx(), id) {
            return None;
        }
        let (kind, tile, _) = split_id(id)?;
        if kind != KIND_FEATURE {
            return None;
        }
        let tw = self.tile(tile, epoch);
        tw.features.binary_search_by_key(&id, |f| f.id).ok().map(|i| tw.features[i].clone())
    }

    /// The sequence with this id at `epoch` (all of its surviving images, in capture order).
    pub(crate) fn sequence(&self, id: &str, epoch: u32) -> Option<SimSequence> {
        if self.fx().is_some_and(|f| f.sequence_ids.contains(id)) {
            let tw = self.fixture_tile()?;
            return tw
                .sequences
                .binary_search_by(|s| s.id.as_str().cmp(id))
                .ok()
                .map(|i| tw.sequences[i].clone());
        }
        let (tile, kind, index) = parse_sequence_id(self.seed, id)?;
        if kind == SEQ_EDGE {
            let (attrs, imgs) = edge_sequence(self.seed, self.fx(), tile, u8::try_from(index).ok()?, epoch)?;
            let ids: Vec<i64> = imgs.iter().map(|e| e.image.id).collect();
            return (!ids.is_empty()).then(|| sim_sequence(&attrs, ids));
        }
        let tw = self.tile(tile, epoch);
        tw.sequences.binary_search_by(|s| s.id.as_str().cmp(id)).ok().map(|i| tw.sequences[i].clone())
    }

    /// The detections in an image, or `None` if the image does not exist.
    pub(crate) fn detections_of_image(&self, id: i64, epoch: u32) -> Option<Vec<SimDetection>> {
        self.image(id, epoch)?;
        let tw = if is_fixture_image(self.fx(), id) {
            self.fixture_tile()?
        } else {
            self.tile(split_id(id)?.1, epoch)
        };
        let start = tw.detections.partition_point(|d| d.image_id < id);
        Some(tw.detections[start..].iter().take_while(|d| d.image_id == id).cloned().collect())
    }

    /// The detections of a map feature, or `None` if the feature does not exist.
    pub(crate) fn detections_of_feature(&self, id: i64, epoch: u32) -> Option<Vec<SimDetection>> {
        let f = self.map_feature(id, epoch)?;
        let tw = self.tile(split_id(f.id)?.1, epoch);
        Some(tw.detections.iter().filter(|d| d.map_feature_id == Some(id)).cloned().collect())
    }
}
