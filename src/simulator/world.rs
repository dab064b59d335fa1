//! The simulator's deterministic world: generated per z14 tile from (seed, tile, epoch), with no
//! precomputed global state. Every id encodes its home tile so lookups regenerate (or take from
//! the cache) just that tile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::FeatureKind;
use crate::tiles::{HARVEST_ZOOM, TileId};

/// The simulated world; cheap to share as `Arc<World>`.
pub struct World {
    seed: u64,
    cache: Mutex<Lru>,
}

/// Everything whose ORIGINAL geometry lies in one z14 tile.
#[derive(Debug, Clone, PartialEq)]
pub struct TileWorld {
    /// The z14 tile.
    pub tile: TileId,
    /// Images, sorted by id.
    pub images: Vec<SimImage>,
    /// Sequences with at least one image in this tile.
    pub sequences: Vec<SimSequence>,
    /// Map features of both kinds.
    pub features: Vec<SimFeature>,
    /// Detections in this tile's images, sorted by (image_id, id).
    pub detections: Vec<SimDetection>,
}

/// One image with every field the Graph API can report.
#[derive(Debug, Clone, PartialEq)]
pub struct SimImage {
    pub id: i64,
    pub sequence_id: String,
    pub captured_at_ms: i64,
    pub compass_angle: f64,
    pub computed_compass_angle: f64,
    pub lon: f64,
    pub lat: f64,
    pub computed: Option<(f64, f64)>,
    pub altitude: f64,
    pub computed_altitude: f64,
    pub is_pano: bool,
    pub creator_id: i64,
    pub creator_username: String,
    pub organization_id: Option<i64>,
    pub camera_type: String,
    pub make: String,
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub quality_score: Option<f64>,
    pub atomic_scale: f64,
    pub camera_parameters: Vec<f64>,
    pub computed_rotation: [f64; 3],
    pub exif_orientation: u8,
    pub merge_cc: u64,
    /// Some images lack a mesh, as in the fixtures.
    pub has_mesh: bool,
}

/// One sequence (a drive or walk).
#[derive(Debug, Clone, PartialEq)]
pub struct SimSequence {
    /// 22 chars of `[A-Za-z0-9_-]`.
    pub id: String,
    /// Capture order, whole sequence.
    pub image_ids: Vec<i64>,
    pub captured_at_ms: i64,
    pub is_pano: bool,
    pub creator_id: i64,
    pub organization_id: Option<i64>,
}

/// One map feature (point or traffic sign).
#[derive(Debug, Clone, PartialEq)]
pub struct SimFeature {
    pub id: i64,
    pub kind: FeatureKind,
    pub value: String,
    pub lon: f64,
    pub lat: f64,
    pub first_seen_at_ms: i64,
    pub last_seen_at_ms: i64,
    pub aligned_direction: f64,
    pub image_ids: Vec<i64>,
}

/// One detection of an object in an image.
#[derive(Debug, Clone, PartialEq)]
pub struct SimDetection {
    pub id: i64,
    pub image_id: i64,
    pub map_feature_id: Option<i64>,
    pub value: String,
    pub created_at_ms: i64,
    /// base64 MVT, layer `mpy-or`, extent 4096.
    pub geometry_b64: String,
}

/// A creator account.
#[derive(Debug, Clone, PartialEq)]
pub struct SimUser {
    pub id: i64,
    pub username: String,
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

/// The real tile bytes served for `mly1_public` at this tile, if it is the fixture tile.
pub fn fixture_tile_bytes(_tile: TileId) -> Option<Vec<u8>> {
    None
}

impl World {
    /// A world determined entirely by `seed`.
    pub fn new(seed: u64) -> World {
        World { seed, cache: Mutex::new(Lru { tick: 0, map: HashMap::new() }) }
    }

    /// The content of z14 tile `tile` at `epoch` (cached).
    pub fn tile(&self, tile: TileId, epoch: u32) -> Arc<TileWorld> {
        let tile = tile.ancestor_at(HARVEST_ZOOM);
        let key = (tile, epoch);
        // A poisoned lock only means another thread panicked mid-update of a plain cache: keep using it.
        if let Some(tw) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            return tw;
        }
        let tw = Arc::new(self.generate(tile, epoch));
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).put(key, tw.clone());
        tw
    }

    /// The target image count of a tile, computed without generating it.
    pub fn expected_images(&self, tile: TileId) -> u32 {
        let _ = tile;
        5
    }

    /// The image with this id at `epoch`, or `None` if it never existed or was deleted.
    pub fn image(&self, id: i64, epoch: u32) -> Option<SimImage> {
        let tile = home_tile(id)?;
        let tw = self.tile(tile, epoch);
        tw.images.binary_search_by_key(&id, |i| i.id).ok().map(|i| tw.images[i].clone())
    }

    /// The map feature with this id at `epoch`.
    pub fn map_feature(&self, id: i64, epoch: u32) -> Option<SimFeature> {
        let tile = home_tile(id)?;
        self.tile(tile, epoch).features.iter().find(|f| f.id == id).cloned()
    }

    /// The sequence with this id at `epoch` (all of its images, in capture order).
    pub fn sequence(&self, id: &str, epoch: u32) -> Option<SimSequence> {
        let tile = seq_home_tile(id)?;
        self.tile(tile, epoch).sequences.iter().find(|s| s.id == id).cloned()
    }

    /// The user with this id, if it is one of the world's creators.
    pub fn user(&self, id: i64) -> Option<SimUser> {
        (1..=1000).contains(&id).then(|| SimUser { id, username: format!("user{id}") })
    }

    /// The detections in an image, or `None` if the image does not exist.
    pub fn detections_of_image(&self, id: i64, epoch: u32) -> Option<Vec<SimDetection>> {
        let img = self.image(id, epoch)?;
        let tw = self.tile(home_tile(img.id)?, epoch);
        Some(tw.detections.iter().filter(|d| d.image_id == id).cloned().collect())
    }

    /// The detections of a map feature, or `None` if the feature does not exist.
    pub fn detections_of_feature(&self, id: i64, epoch: u32) -> Option<Vec<SimDetection>> {
        let f = self.map_feature(id, epoch)?;
        let tw = self.tile(home_tile(f.id)?, epoch);
        Some(tw.detections.iter().filter(|d| d.map_feature_id == Some(id)).cloned().collect())
    }

    fn generate(&self, tile: TileId, _epoch: u32) -> TileWorld {
        let _ = self.seed;
        let b = tile.bounds();
        let seq_id = format!("{:0>22}", format!("s{}x{}", tile.x, tile.y));
        let images: Vec<SimImage> = (0..5i64)
            .map(|k| SimImage {
                id: (i64::from(tile.x) << 36) | (i64::from(tile.y) << 22) | k,
                sequence_id: seq_id.clone(),
                captured_at_ms: 1_600_000_000_000 + k * 1000,
                compass_angle: 90.0,
                computed_compass_angle: 90.0,
                lon: b.west + (b.east - b.west) * (0.2 + 0.1 * k as f64),
                lat: (b.south + b.north) / 2.0,
                computed: None,
                altitude: 10.0,
                computed_altitude: 10.0,
                is_pano: false,
                creator_id: 1,
                creator_username: "user1".into(),
                organization_id: None,
                camera_type: "perspective".into(),
                make: "Sim".into(),
                model: "Cam".into(),
                width: 4000,
                height: 3000,
                quality_score: None,
                atomic_scale: 1.0,
                camera_parameters: vec![0.85, 0.0, 0.0],
                computed_rotation: [0.0; 3],
                exif_orientation: 1,
                merge_cc: 1,
                has_mesh: true,
            })
            .collect();
        let sequences = vec![SimSequence {
            id: seq_id,
            image_ids: images.iter().map(|i| i.id).collect(),
            captured_at_ms: 1_600_000_000_000,
            is_pano: false,
            creator_id: 1,
            organization_id: None,
        }];
        TileWorld { tile, images, sequences, features: Vec::new(), detections: Vec::new() }
    }
}

/// The home z14 tile encoded in an entity id.
fn home_tile(id: i64) -> Option<TileId> {
    if id < 0 {
        return None;
    }
    let x = ((id >> 36) & 0x3fff) as u32;
    let y = ((id >> 22) & 0x3fff) as u32;
    TileId::new(HARVEST_ZOOM, x, y).ok()
}

/// The home z14 tile encoded in a sequence id.
fn seq_home_tile(id: &str) -> Option<TileId> {
    let rest = id.trim_start_matches('0').strip_prefix('s')?;
    let (x, y) = rest.split_once('x')?;
    TileId::new(HARVEST_ZOOM, x.parse().ok()?, y.parse().ok()?).ok()
}
