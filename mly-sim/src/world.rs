//! The simulator's deterministic world: generated per z14 tile from (seed, tile, epoch), with no
//! precomputed global state. Every id encodes its home tile so lookups regenerate (or take from
//! the cache) just that tile.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use crate::encode::detection_geometry_b64;
use mly_contract::FeatureKind;
use mly_contract::hash::{splitmix64 as mix, unit};
use mly_contract::tiles::{HARVEST_ZOOM, TileId};

/// The simulated world; cheap to share as `Arc<World>`.
pub struct World {
    seed: u64,
    cache: Mutex<Lru>,
    /// The real capture served at [`FIXTURE_TILE`] (only when `--fixtures` names it).
    fixture: Option<Fixture>,
    /// The fixture tile's world, built on first use; it is the same at every epoch.
    fixture_world: OnceLock<Option<Arc<TileWorld>>>,
    /// Creator ids by username, built on first use.
    usernames: OnceLock<HashMap<String, Vec<i64>>>,
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
    /// Captured on foot (the computed tileset's `foot`).
    pub foot: bool,
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
    /// Captured on foot.
    pub foot: bool,
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

// ---------------------------------------------------------------------------------------------
// The real Zürich fixture tile.
//
// Where a captured real tile's z/x/y is known (14/8574/5735, Vespucci's 2021 `mly1_public`), the
// simulator serves those exact bytes and builds the tile's world from them, so the Graph API and
// the tile agree. The real tile is a single snapshot: the world there is the same at every epoch
// (no deletions, moves, uploads or recomputed positions), and it has no map features or detections
// (no feature tiles were captured), so the feature tilesets answer empty there.

pub use crate::fixture::FIXTURE_TILE;
use crate::fixture::{FixtureError, FixtureTile};

/// The loaded fixture (`--fixtures DIR`): its records and the id index that routes lookups to it.
#[derive(Debug)]
pub struct Fixture {
    tile: FixtureTile,
    image_ids: HashSet<i64>,
    sequence_ids: HashSet<String>,
}

impl Fixture {
    /// Reads the real Zürich tile from `dir` with the simulator's own reader.
    pub fn load(dir: &Path) -> Result<Fixture, FixtureError> {
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
type Fx<'a> = Option<&'a Fixture>;

/// Whether `id` is an image of the real fixture tile (such ids never denote synthetic records).
fn is_fixture_image(fx: Fx<'_>, id: i64) -> bool {
    fx.is_some_and(|f| f.image_ids.contains(&id))
}

/// A stable 64-bit hash of a string (FNV-1a), for keying attributes of fixture sequences.
fn str_key(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The world of the fixture tile: the real images at their decoded positions with their real
/// tile attributes; Graph-only fields synthesised from `seed` and the ids.
fn fixture_world(seed: u64, fx: &Fixture) -> TileWorld {
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
        let sh = hash(seed, &[P_FIXTURE, str_key(&seq_id)]);
        let is_pano = ti.is_pano.unwrap_or(false);
        let camera = if is_pano { 4 + (mix(sh ^ 2) % 2) as usize } else { (mix(sh ^ 2) % 4) as usize };
        let creator_id = user_id((mix(sh ^ 3) % USERS as u64) as i64);
        let id = ti.id;
        let mut rng = Rng(hash(seed, &[P_FIXTURE, id as u64]));
        let compass_angle = ti.compass_angle.unwrap_or(0.0);
        // SfM nudges the GPS position by well under a metre; stay inside the tile.
        let (x, y) =
            ((ti.lon - frame.west) / frame.dlon * frame.w, (ti.lat - frame.south) / frame.dlat * frame.h);
        let (cx, cy) = frame.clamp(x + 0.6 * rng.gauss(), y + 0.6 * rng.gauss());
        let computed = Some(frame.lonlat(cx, cy));
        let cam = CAMERAS[camera];
        // Zürich-Höngg lies around 430 m above sea level.
        let altitude = ((430.0 + 5.0 * rng.gauss()) * 1000.0).round() / 1000.0;
        // Draws in the order the Graph fields have always been drawn: the world must not change.
        let computed_compass_angle = (compass_angle + 0.5 * rng.gauss()).rem_euclid(360.0);
        let computed_altitude = altitude + 2.0 * rng.gauss();
        let sfm = Reconstruction::draw(&mut rng, is_pano);
        images.push(SimImage {
            id,
            sequence_id: seq_id,
            captured_at_ms: ti.captured_at_ms.unwrap_or(0),
            compass_angle,
            computed_compass_angle,
            lon: ti.lon,
            lat: ti.lat,
            computed,
            altitude,
            computed_altitude,
            is_pano,
            creator_id,
            creator_username: username(seed, creator_id),
            organization_id: ti.organization_id,
            camera_type: cam.0.to_string(),
            make: cam.1.to_string(),
            model: cam.2.to_string(),
            width: cam.3,
            height: cam.4,
            quality_score: sfm.quality_score,
            atomic_scale: sfm.atomic_scale,
            camera_parameters: sfm.camera_parameters,
            computed_rotation: sfm.computed_rotation,
            exif_orientation: sfm.exif_orientation,
            merge_cc: hash(seed, &[P_IMG, u64::from(tile.x), u64::from(tile.y)]) >> 1,
            has_mesh: sfm.has_mesh,
            // The 2021 tile does not say; its drives are taken as drives.
            foot: false,
        });
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

impl World {
    /// A synthetic world determined entirely by `seed`.
    pub fn new(seed: u64) -> World {
        World::with_fixture(seed, None)
    }

    /// A world determined by `seed` that serves the real capture `fixture` at its tile.
    pub fn with_fixture(seed: u64, fixture: Option<Fixture>) -> World {
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
    pub fn verbatim_public_tile(&self, tile: TileId) -> Option<&[u8]> {
        if tile != FIXTURE_TILE {
            return None;
        }
        self.fixture.as_ref().map(|f| f.tile.bytes.as_slice())
    }

    /// The content of z14 tile `tile` at `epoch` (cached); a deeper tile is taken as its z14 ancestor.
    pub fn tile(&self, tile: TileId, epoch: u32) -> Arc<TileWorld> {
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
    pub fn expected_images(&self, tile: TileId) -> u32 {
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
    pub fn may_have_data(&self, tile: TileId) -> bool {
        let tile = tile.ancestor_at(HARVEST_ZOOM);
        if (tile == FIXTURE_TILE && self.fixture.is_some()) || density(self.seed, tile) > 0 {
            return true;
        }
        // Movers arrive from busy neighbours (see `edge_sequence`).
        (0..4u8).any(|e| neighbour(tile, e).is_some_and(|nb| density(self.seed, nb) >= 100))
    }

    /// The z14 tiles holding a city centre (the densest tiles of the world) that lie within `tile`.
    pub fn city_cores_within(&self, tile: TileId) -> Vec<TileId> {
        CITIES
            .iter()
            .map(|&(lon, lat)| TileId::containing(HARVEST_ZOOM, lon, lat))
            .filter(|t| t.is_within(&tile))
            .collect()
    }

    /// The image with this id at `epoch`, or `None` if it never existed or was deleted.
    pub fn image(&self, id: i64, epoch: u32) -> Option<SimImage> {
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
    pub fn map_feature(&self, id: i64, epoch: u32) -> Option<SimFeature> {
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
    pub fn sequence(&self, id: &str, epoch: u32) -> Option<SimSequence> {
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

    /// The user with this id, if it is one of the world's creators.
    pub fn user(&self, id: i64) -> Option<SimUser> {
        if is_fixture_image(self.fx(), id) {
            return None;
        }
        let (kind, _, local) = split_id(id)?;
        let plain = id == user_id(local - 1);
        (kind == KIND_USER && plain && (1..=USERS).contains(&local))
            .then(|| SimUser { id, username: username(self.seed, id) })
    }

    /// The ids of the world's creators called `name` (generated names can repeat).
    pub fn users_named(&self, name: &str) -> Vec<i64> {
        let names = self.usernames.get_or_init(|| {
            let mut m: HashMap<String, Vec<i64>> = HashMap::new();
            for k in 0..USERS {
                let id = user_id(k);
                m.entry(username(self.seed, id)).or_default().push(id);
            }
            m
        });
        names.get(name).cloned().unwrap_or_default()
    }

    /// Every z14 tile that can hold images of creator `user` at any epoch, sorted (a superset).
    ///
    /// Creators are local (see `seq_attrs`): a z8 region's sequences come from a band of 40
    /// creators. The tiles are those with data in the regions whose band holds `user`, with a rim of
    /// one tile (drives that moved across a region border), plus the real fixture tile, whose
    /// creators are drawn from all users. Global searches by creator scan just these.
    pub fn creator_tiles(&self, user: i64) -> Vec<TileId> {
        let Some((KIND_USER, _, local)) = split_id(user) else { return Vec::new() };
        let k = (local - 1) as u64;
        let n = 1i64 << HARVEST_ZOOM;
        let mut regions = HashSet::new();
        for &(lon, lat) in &CITIES {
            // Towns and country roads exist up to 200 km from a city (see `density`).
            let dlat = 205.0 / 111.2;
            let dlon = dlat / lat.to_radians().cos().max(0.05);
            let x_of = |lon: f64| ((lon + 180.0) / 360.0 * n as f64).floor() as i64;
            let (x0, x1) = (x_of(lon - dlon), x_of(lon + dlon));
            let south = TileId::containing(HARVEST_ZOOM, lon, (lat - dlat).max(-85.0));
            let north = TileId::containing(HARVEST_ZOOM, lon, (lat + dlat).min(85.0));
            for x in x0..=x1 {
                for y in i64::from(north.y)..=i64::from(south.y) {
                    regions.insert((x.rem_euclid(n) >> 6, y >> 6));
                }
            }
        }
        let mut tiles = HashSet::new();
        for (rx, ry) in regions {
            let band = hash(self.seed, &[P_USER, ((rx as u64) << 16) | ry as u64]) % USERS as u64;
            if (k + USERS as u64 - band) % USERS as u64 >= 40 {
                continue;
            }
            for x in (rx << 6) - 1..=(rx << 6) + 64 {
                for y in ((ry << 6) - 1).max(0)..=((ry << 6) + 64).min(n - 1) {
                    let Ok(t) = TileId::new(HARVEST_ZOOM, x.rem_euclid(n) as u32, y as u32) else { continue };
                    // A tile without data of its own can still receive a neighbour's drive.
                    let busy_neighbour =
                        (0..4u8).filter_map(|e| neighbour(t, e)).any(|nb| density(self.seed, nb) >= 100);
                    if density(self.seed, t) > 0 || busy_neighbour {
                        tiles.insert(t);
                    }
                }
            }
        }
        tiles.insert(FIXTURE_TILE);
        let mut tiles: Vec<TileId> = tiles.into_iter().collect();
        tiles.sort_unstable_by_key(|t| (t.x, t.y));
        tiles
    }

    /// The detections in an image, or `None` if the image does not exist.
    pub fn detections_of_image(&self, id: i64, epoch: u32) -> Option<Vec<SimDetection>> {
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
    pub fn detections_of_feature(&self, id: i64, epoch: u32) -> Option<Vec<SimDetection>> {
        let f = self.map_feature(id, epoch)?;
        let tw = self.tile(split_id(f.id)?.1, epoch);
        Some(tw.detections.iter().filter(|d| d.map_feature_id == Some(id)).cloned().collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Hashing: splitmix64 (mly_contract::hash) so the world never changes with a crate's RNG stream.

/// A hash of a seed and a key path; every attribute is derived from one of these.
fn hash(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(mix(seed ^ 0x6d6c_7968_6172_7673), |acc, p| mix(acc ^ mix(*p)))
}

/// The reconstruction and camera fields the Graph API gives for an image and no tile shows.
struct Reconstruction {
    quality_score: Option<f64>,
    atomic_scale: f64,
    camera_parameters: Vec<f64>,
    computed_rotation: [f64; 3],
    exif_orientation: u8,
    has_mesh: bool,
}

impl Reconstruction {
    /// Draws them from the image's own random stream (the order of draws is part of the world).
    fn draw(rng: &mut Rng, is_pano: bool) -> Reconstruction {
        let quality_score = (rng.unit() < 0.9).then(|| rng.range(0.3, 1.0));
        let atomic_scale = rng.range(0.9, 1.1);
        // Spherical images have no perspective camera model.
        let camera_parameters = if is_pano {
            Vec::new()
        } else {
            vec![rng.range(0.5, 1.0), rng.range(-0.1, 0.1) * 1e-3, rng.range(-0.1, 0.1) * 1e-3]
        };
        let computed_rotation = [rng.range(-1.6, 1.6), rng.range(-0.05, 0.05), rng.range(-0.05, 0.05)];
        let exif_orientation = [1, 1, 1, 1, 1, 1, 3, 6][(rng.next() % 8) as usize];
        let has_mesh = rng.unit() < 0.85;
        Reconstruction {
            quality_score,
            atomic_scale,
            camera_parameters,
            computed_rotation,
            exif_orientation,
            has_mesh,
        }
    }
}

/// A sequential stream for the inside of one record (a drive's turns), seeded by a stable key.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    fn unit(&mut self) -> f64 {
        unit(self.next())
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Roughly normal with standard deviation 1 (sum of four uniforms).
    fn gauss(&mut self) -> f64 {
        (self.unit() + self.unit() + self.unit() + self.unit() - 2.0) * 3f64.sqrt()
    }
}

// Purposes, so that hashes of the same key for different attributes are independent.
const P_DENSITY: u64 = 1;
const P_TOWN: u64 = 2;
const P_RURAL: u64 = 3;
const P_GRID: u64 = 4;
const P_SEQ: u64 = 5;
const P_IMG: u64 = 6;
const P_FEAT: u64 = 7;
const P_DEL: u64 = 8;
const P_RECOMPUTE: u64 = 9;
const P_MOVE: u64 = 10;
const P_NEW: u64 = 11;
const P_DET: u64 = 13;
const P_SEQ_ID: u64 = 14;
const P_EDGE: u64 = 15;
const P_PLAZA: u64 = 16;
const P_USER: u64 = 17;
const P_FIXTURE: u64 = 18;

// ---------------------------------------------------------------------------------------------
// Ids: kind (3 bits) | x (14) | y (14) | local (22) — below 2^53, positive, and decodable.

const KIND_IMAGE: i64 = 0;
const KIND_FEATURE: i64 = 1;
const KIND_DETECTION: i64 = 2;
const KIND_UNLINKED_DETECTION: i64 = 3;
const KIND_USER: i64 = 4;
const KIND_ORG: i64 = 5;

/// Locals of epoch-0 images: `seq << 10 | index`.
const LOCAL_SEQ_BITS: u32 = 10;
/// First local of the per-edge mover images.
const LOCAL_EDGE: i64 = 1 << 20;
/// First local of images uploaded after epoch 0.
const LOCAL_NEW: i64 = 1 << 21;
/// Images per new-upload block (one epoch of one tile).
const NEW_BLOCK: i64 = 1024;
/// Epochs after which no new uploads are generated (the local id space is full).
const MAX_NEW_EPOCH: u32 = ((1 << 22) - LOCAL_NEW) as u32 / NEW_BLOCK as u32;
/// Images of one edge sequence.
const EDGE_IMAGES: i64 = 24;

fn make_id(kind: i64, tile: TileId, local: i64) -> i64 {
    (kind << 50) | (i64::from(tile.x) << 36) | (i64::from(tile.y) << 22) | local
}

/// (kind, home tile, local) of an id.
fn split_id(id: i64) -> Option<(i64, TileId, i64)> {
    if !(0..1i64 << 53).contains(&id) {
        return None;
    }
    let tile = TileId::new(HARVEST_ZOOM, ((id >> 36) & 0x3fff) as u32, ((id >> 22) & 0x3fff) as u32).ok()?;
    Some((id >> 50, tile, id & 0x3f_ffff))
}

const USERS: i64 = 4000;
const ORGS: i64 = 300;

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Sequence kinds encoded in sequence ids.
const SEQ_BASE: u64 = 0;
const SEQ_EDGE: u64 = 1;
const SEQ_NEW: u64 = 2;

/// A 22-char sequence id: 9 chars of payload (tile, kind, index) then 13 chars of keyed hash,
/// which both makes ids look like Mapillary's and rejects ids the world did not make.
fn sequence_id(seed: u64, tile: TileId, kind: u64, index: u64) -> String {
    let payload = (u64::from(tile.x) << 40) | (u64::from(tile.y) << 26) | (kind << 24) | (index & 0xff_ffff);
    let mut s = String::with_capacity(22);
    for i in 0..9 {
        s.push(B64URL[((payload >> (6 * (8 - i))) & 63) as usize] as char);
    }
    let mut h = hash(seed, &[P_SEQ_ID, payload]);
    for i in 0..13 {
        if i == 10 {
            h = mix(h);
        }
        s.push(B64URL[(h & 63) as usize] as char);
        h >>= 6;
    }
    s
}

/// (tile, kind, index) of a sequence id made by [`sequence_id`] with this seed.
fn parse_sequence_id(seed: u64, id: &str) -> Option<(TileId, u64, u64)> {
    if id.len() != 22 {
        return None;
    }
    let mut payload = 0u64;
    for c in id.bytes().take(9) {
        let v = B64URL.iter().position(|b| *b == c)? as u64;
        payload = (payload << 6) | v;
    }
    let tile =
        TileId::new(HARVEST_ZOOM, (payload >> 40) as u32 & 0x3fff, (payload >> 26) as u32 & 0x3fff).ok()?;
    let (kind, index) = ((payload >> 24) & 3, payload & 0xff_ffff);
    (sequence_id(seed, tile, kind, index) == id).then_some((tile, kind, index))
}

// ---------------------------------------------------------------------------------------------
// Density.

/// Real city centres (lon, lat): each has a dense core decaying to suburbs.
const CITIES: [(f64, f64); 16] = [
    (13.0, 55.6),      // Malmö
    (8.54, 47.37),     // Zürich
    (13.40, 52.52),    // Berlin
    (2.3522, 48.8566), // Paris
    (-74.006, 40.7128),
    (139.767, 35.681), // Tokyo
    (178.44, -18.14),  // Suva, near the antimeridian
    (-0.1276, 51.5072),
    (-46.633, -23.55),
    (151.209, -33.868),
    (36.817, -1.286),
    (72.877, 19.076),
    (-99.133, 19.433),
    (18.07, 59.33),
    (4.90, 52.37),
    (-122.42, 37.77),
];

/// Distance in km between two points (equirectangular; fine at city scale), across the antimeridian.
fn dist_km(lon1: f64, lat1: f64, lon2: f64, lat2: f64) -> f64 {
    let mut dlon = (lon1 - lon2).abs();
    if dlon > 180.0 {
        dlon = 360.0 - dlon;
    }
    let x = dlon * ((lat1 + lat2) / 2.0).to_radians().cos();
    (x * x + (lat1 - lat2).powi(2)).sqrt() * 111.2
}

/// The target image count of a z14 tile.
fn density(seed: u64, tile: TileId) -> u32 {
    let b = tile.bounds();
    let (clon, clat) = ((b.west + b.east) / 2.0, (b.south + b.north) / 2.0);
    let key = (u64::from(tile.x) << 32) | u64::from(tile.y);
    let jitter = 0.85 + 0.3 * unit(hash(seed, &[P_DENSITY, key]));
    let mut best = 0.0f64;
    let mut near_city = false;
    for &(lon, lat) in &CITIES {
        if b.contains(lon, lat) {
            // The core tile: more than 30,000 images, like the densest real tiles.
            return 32_000 + (hash(seed, &[P_DENSITY, key, 1]) % 4000) as u32;
        }
        let d = dist_km(clon, clat, lon, lat);
        if d < 200.0 {
            near_city = true;
        }
        best = best.max(26_000.0 * (-d / 2.2).exp() * jitter);
    }
    if near_city {
        // Small towns, hash-placed in z9 cells (~70 km) around the cities.
        let cell = tile.ancestor_at(9);
        let ck = (u64::from(cell.x) << 32) | u64::from(cell.y);
        let h = hash(seed, &[P_TOWN, ck]);
        if unit(h) < 0.6 {
            let cb = cell.bounds();
            let tlon = cb.west + (cb.east - cb.west) * unit(mix(h ^ 1));
            let tlat = cb.south + (cb.north - cb.south) * unit(mix(h ^ 2));
            let peak = 1500.0 + 4000.0 * unit(mix(h ^ 3));
            best = best.max(peak * (-dist_km(clon, clat, tlon, tlat) / 1.3).exp() * jitter);
        }
        // Country roads: a few tiles with one or two drives.
        let r = hash(seed, &[P_RURAL, key]);
        if best < 100.0 && unit(r) < 0.05 {
            best = 60.0 + 300.0 * unit(mix(r));
        }
    }
    if best < 40.0 { 0 } else { best as u32 }
}

// ---------------------------------------------------------------------------------------------
// Local metric frame of a tile: metres east (x) and north (y) of its south-west corner.

#[derive(Clone, Copy)]
struct Frame {
    west: f64,
    south: f64,
    dlon: f64,
    dlat: f64,
    w: f64,
    h: f64,
}

impl Frame {
    fn new(tile: TileId) -> Frame {
        let b = tile.bounds();
        let clat = ((b.south + b.north) / 2.0).to_radians();
        let (dlon, dlat) = (b.east - b.west, b.north - b.south);
        Frame {
            west: b.west,
            south: b.south,
            dlon,
            dlat,
            w: dlon * 111_320.0 * clat.cos(),
            h: dlat * 110_540.0,
        }
    }
    fn lonlat(&self, x: f64, y: f64) -> (f64, f64) {
        (self.west + x / self.w * self.dlon, self.south + y / self.h * self.dlat)
    }
    /// Inside with a sliver of margin so rounding to lon/lat never lands on a neighbour.
    fn inside(&self, x: f64, y: f64) -> bool {
        x > 0.05 && y > 0.05 && x < self.w - 0.05 && y < self.h - 0.05
    }
    fn clamp(&self, x: f64, y: f64) -> (f64, f64) {
        (x.clamp(0.1, self.w - 0.1), y.clamp(0.1, self.h - 0.1))
    }
}

/// A street point an image was taken at, with the travel bearing (degrees clockwise from north).
#[derive(Clone, Copy)]
struct StreetPoint {
    x: f64,
    y: f64,
    bearing: f64,
}

/// The street grid of a tile: rotated blocks, finer in dense tiles.
struct Grid {
    spacing: f64,
    e1: (f64, f64),
    e2: (f64, f64),
    origin: (f64, f64),
    reach: i32,
}

impl Grid {
    fn new(seed: u64, tile: TileId, frame: &Frame, n: u32) -> Grid {
        let h = hash(seed, &[P_GRID, u64::from(tile.x), u64::from(tile.y)]);
        let spacing = if n > 10_000 {
            80.0
        } else if n > 2_000 {
            130.0
        } else {
            220.0
        } * (0.85 + 0.3 * unit(h));
        let theta = unit(mix(h ^ 1)) * std::f64::consts::FRAC_PI_2;
        let origin = (frame.w / 2.0 + spacing * unit(mix(h ^ 2)), frame.h / 2.0 + spacing * unit(mix(h ^ 3)));
        let reach = (frame.w.max(frame.h) * 0.75 / spacing).ceil() as i32 + 1;
        Grid { spacing, e1: (theta.cos(), theta.sin()), e2: (-theta.sin(), theta.cos()), origin, reach }
    }
    fn node(&self, i: i32, j: i32) -> (f64, f64) {
        let (u, v) = (f64::from(i) * self.spacing, f64::from(j) * self.spacing);
        (self.origin.0 + u * self.e1.0 + v * self.e2.0, self.origin.1 + u * self.e1.1 + v * self.e2.1)
    }
}

/// A drive along the grid: street points inside the frame, `count` of them at most.
fn drive(grid: &Grid, frame: &Frame, rng: &mut Rng, count: usize, step: f64) -> Vec<StreetPoint> {
    const DIRS: [(i32, i32); 4] = [(1, 0), (0, 1), (-1, 0), (0, -1)];
    let r = grid.reach - 1;
    // Start at a node near a random point of the tile.
    let (sx, sy) = (rng.range(0.0, frame.w), rng.range(0.0, frame.h));
    let (dx, dy) = (sx - grid.origin.0, sy - grid.origin.1);
    let mut cur = (
        ((dx * grid.e1.0 + dy * grid.e1.1) / grid.spacing).round() as i32,
        ((dx * grid.e2.0 + dy * grid.e2.1) / grid.spacing).round() as i32,
    );
    let mut dir = (rng.next() % 4) as usize;
    let mut out = Vec::with_capacity(count);
    let mut carry = rng.range(0.0, step);
    let max_segments = count * 4 / ((grid.spacing / step) as usize).max(1) + 40;
    for _ in 0..max_segments {
        if out.len() >= count {
            break;
        }
        let u = rng.unit();
        if u < 0.15 {
            dir = (dir + 1) % 4;
        } else if u < 0.3 {
            dir = (dir + 3) % 4;
        }
        let mut next = (cur.0 + DIRS[dir].0, cur.1 + DIRS[dir].1);
        if next.0.abs() > r || next.1.abs() > r {
            dir = (dir + 2) % 4;
            next = (cur.0 + DIRS[dir].0, cur.1 + DIRS[dir].1);
        }
        let (a, b) = (grid.node(cur.0, cur.1), grid.node(next.0, next.1));
        let bearing = (b.0 - a.0).atan2(b.1 - a.1).to_degrees().rem_euclid(360.0);
        let mut t = carry;
        while t < grid.spacing && out.len() < count {
            let f = t / grid.spacing;
            let (x, y) = (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f);
            if frame.inside(x, y) {
                out.push(StreetPoint { x, y, bearing });
            }
            t += step;
        }
        carry = t - grid.spacing;
        cur = next;
    }
    out
}

/// A walk around a plaza: circles of varying radius around `centre`.
fn plaza_walk(centre: (f64, f64), rng: &mut Rng, count: usize) -> Vec<StreetPoint> {
    let radius = rng.range(8.0, 55.0);
    let mut angle = rng.range(0.0, std::f64::consts::TAU);
    let clockwise = rng.unit() < 0.5;
    let step = rng.range(1.5, 3.0) / radius;
    (0..count)
        .map(|_| {
            let r = radius * (1.0 + 0.1 * (angle * 3.0).sin());
            let (x, y) = (centre.0 + r * angle.sin(), centre.1 + r * angle.cos());
            let tangent = angle.to_degrees() + if clockwise { 90.0 } else { -90.0 };
            angle += if clockwise { step } else { -step };
            StreetPoint { x, y, bearing: tangent.rem_euclid(360.0) }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Records.

/// 2025-01-01T00:00:00Z: the world's "now" at epoch 0; epoch `e` is `e` days later.
const EPOCH0_MS: i64 = 1_735_689_600_000;
const DAY_MS: i64 = 86_400_000;
/// 2014-01-01, the earliest capture time.
const FIRST_CAPTURE_MS: i64 = 1_388_534_400_000;

/// Camera models: (camera_type, make, model, width, height); panoramas have width = 2 * height.
const CAMERAS: [(&str, &str, &str, u32, u32); 6] = [
    ("perspective", "Apple", "iPhone 12", 4032, 3024),
    ("perspective", "samsung", "SM-G991B", 4000, 3000),
    ("perspective", "GoPro", "HERO9 Black", 4000, 3000),
    ("fisheye", "GoPro", "HERO8 Black", 4000, 3000),
    ("equirectangular", "GoPro", "GoPro Max", 5760, 2880),
    ("spherical", "Insta360", "ONE X2", 6080, 3040),
];

const POINT_VALUES: [&str; 10] = [
    "object--street-light",
    "object--fire-hydrant",
    "object--bench",
    "object--junction-box",
    "object--manhole",
    "object--bike-rack",
    "object--trash-can",
    "object--support--utility-pole",
    "object--traffic-light--general-upright",
    "object--cctv-camera",
];

const SIGN_VALUES: [&str; 10] = [
    "regulatory--stop--g1",
    "regulatory--yield--g1",
    "warning--pedestrians-crossing--g4",
    "information--parking--g1",
    "complementary--both-directions--g2",
    "regulatory--no-entry--g1",
    "regulatory--maximum-speed-limit-30--g1",
    "information--pedestrians-crossing--g1",
    "regulatory--no-parking--g2",
    "warning--children--g2",
];

/// Segmentation classes of detections that belong to no map feature.
const LOOSE_VALUES: [&str; 4] = [
    "object--vehicle--car",
    "nature--vegetation",
    "construction--flat--sidewalk",
    "object--sign--advertisement",
];

/// What all images of one sequence share.
struct SeqAttrs {
    id: String,
    captured_at_ms: i64,
    is_pano: bool,
    creator_id: i64,
    organization_id: Option<i64>,
    camera: usize,
    /// Metres per second, for capture times along the drive.
    speed: f64,
    step: f64,
    len: usize,
    /// A walk (the plaza sequences), not a drive.
    foot: bool,
}

fn user_id(k: i64) -> i64 {
    (KIND_USER << 50) | (k + 1)
}

fn seq_attrs(
    seed: u64,
    tile: TileId,
    kind: u64,
    index: u64,
    pedestrian: bool,
    created_epoch: u32,
) -> SeqAttrs {
    let h = hash(seed, &[P_SEQ, u64::from(tile.x), u64::from(tile.y), kind, index]);
    let is_pano = pedestrian || unit(mix(h ^ 1)) < 0.2;
    let camera = if is_pano { 4 + (mix(h ^ 2) % 2) as usize } else { (mix(h ^ 2) % 4) as usize };
    // Creators are local: a tile's uploads come from a few hundred of the users.
    let region = u64::from(tile.x >> 6) << 16 | u64::from(tile.y >> 6);
    let creator = (hash(seed, &[P_USER, region]) + mix(h ^ 3) % 40) % USERS as u64;
    let organization_id =
        (unit(mix(h ^ 4)) < 0.25).then(|| (KIND_ORG << 50) | ((mix(h ^ 5) % ORGS as u64) as i64 + 1));
    let captured_at_ms = if created_epoch == 0 || unit(mix(h ^ 6)) < 0.2 {
        FIRST_CAPTURE_MS + (unit(mix(h ^ 7)) * (EPOCH0_MS - 30 * DAY_MS - FIRST_CAPTURE_MS) as f64) as i64
    } else {
        EPOCH0_MS + i64::from(created_epoch) * DAY_MS - (unit(mix(h ^ 7)) * 7.0 * DAY_MS as f64) as i64
    };
    let (speed, step) =
        if pedestrian { (1.4, 2.0) } else { (6.0 + 8.0 * unit(mix(h ^ 8)), 2.0 + 8.0 * unit(mix(h ^ 9))) };
    SeqAttrs {
        id: sequence_id(seed, tile, kind, index),
        captured_at_ms,
        is_pano,
        creator_id: user_id(creator as i64),
        organization_id,
        camera,
        speed,
        step,
        len: 40 + (mix(h ^ 10) % 360) as usize,
        foot: pedestrian,
    }
}

fn username(seed: u64, id: i64) -> String {
    const A: [&str; 8] = ["blue", "quick", "urban", "quiet", "north", "green", "swift", "lucky"];
    const N: [&str; 8] = ["mapper", "walker", "rider", "fox", "owl", "driver", "lens", "cyclist"];
    let h = hash(seed, &[P_USER, id as u64]);
    format!("{}_{}{}", A[(h % 8) as usize], N[(mix(h) % 8) as usize], mix(h ^ 1) % 1000)
}

/// One image of a sequence at street point `sp`; `None` if GPS noise put it outside the tile.
#[allow(clippy::too_many_arguments)] // every argument is one independent input of the record
fn make_image(
    seed: u64,
    fx: Fx<'_>,
    tile: TileId,
    frame: &Frame,
    local: i64,
    seq: &SeqAttrs,
    i: usize,
    sp: StreetPoint,
    epoch: u32,
) -> Option<SimImage> {
    let id = make_id(KIND_IMAGE, tile, local);
    // Ids are unique across the world: a synthetic image never takes a real fixture image's id.
    if is_fixture_image(fx, id) {
        return None;
    }
    let mut rng = Rng(hash(seed, &[P_IMG, id as u64]));
    let (x, y) = (sp.x + 3.0 * rng.gauss(), sp.y + 3.0 * rng.gauss());
    if !frame.inside(x, y) {
        return None;
    }
    let (lon, lat) = frame.lonlat(x, y);
    let processed = rng.unit() > 0.02;
    let computed = processed.then(|| computed_position(seed, id, frame, sp, epoch));
    let zero_time = rng.unit() < 1.0 / 2500.0;
    let captured_at_ms =
        if zero_time { 0 } else { seq.captured_at_ms + (i as f64 * seq.step / seq.speed * 1000.0) as i64 };
    let cam = CAMERAS[seq.camera];
    let ground = 20.0 + 400.0 * unit(hash(seed, &[P_GRID, u64::from(tile.x >> 4), u64::from(tile.y >> 4)]));
    let altitude = ((ground + 5.0 * rng.gauss()) * 1000.0).round() / 1000.0;
    // Draws in the order the Graph fields have always been drawn: the world must not change.
    let compass_angle = ((sp.bearing + 4.0 * rng.gauss()).rem_euclid(360.0) * 100.0).round() / 100.0;
    let computed_compass_angle = (sp.bearing + 0.5 * rng.gauss()).rem_euclid(360.0);
    let computed_altitude = altitude + 2.0 * rng.gauss();
    let sfm = Reconstruction::draw(&mut rng, seq.is_pano);
    Some(SimImage {
        id,
        sequence_id: seq.id.clone(),
        captured_at_ms,
        compass_angle,
        computed_compass_angle,
        lon,
        lat,
        computed,
        altitude,
        computed_altitude,
        is_pano: seq.is_pano,
        creator_id: seq.creator_id,
        creator_username: username(seed, seq.creator_id),
        organization_id: seq.organization_id,
        camera_type: cam.0.to_string(),
        make: cam.1.to_string(),
        model: cam.2.to_string(),
        width: cam.3,
        height: cam.4,
        quality_score: sfm.quality_score,
        atomic_scale: sfm.atomic_scale,
        camera_parameters: sfm.camera_parameters,
        computed_rotation: sfm.computed_rotation,
        exif_orientation: sfm.exif_orientation,
        merge_cc: hash(seed, &[P_IMG, u64::from(tile.x), u64::from(tile.y)]) >> 1,
        has_mesh: sfm.has_mesh,
        foot: seq.foot,
    })
}

/// The SfM position at `epoch`: re-computed now and then (on a per-image period), otherwise stable.
fn computed_position(seed: u64, id: i64, frame: &Frame, sp: StreetPoint, epoch: u32) -> (f64, f64) {
    let h = hash(seed, &[P_RECOMPUTE, id as u64]);
    let period = 40 + (h % 80) as u32;
    let phase = 1 + (mix(h) % u64::from(period)) as u32;
    let last = if epoch >= phase { phase + (epoch - phase) / period * period } else { 0 };
    let mut rng = Rng(hash(seed, &[P_RECOMPUTE, id as u64, u64::from(last)]));
    let (x, y) = frame.clamp(sp.x + 0.6 * rng.gauss(), sp.y + 0.6 * rng.gauss());
    frame.lonlat(x, y)
}

/// Epoch (≥ 1) at which an entity disappears: geometric with `rate` per epoch.
fn gone_epoch(seed: u64, purpose: u64, id: i64, rate: f64) -> u32 {
    let u = unit(hash(seed, &[purpose, id as u64]));
    let e = ((1.0 - u).ln() / (1.0 - rate).ln()).ceil();
    if e.is_finite() { e.clamp(1.0, f64::from(u32::MAX)) as u32 } else { u32::MAX }
}

fn alive(seed: u64, id: i64, epoch: u32) -> bool {
    epoch < gone_epoch(seed, P_DEL, id, 0.01)
}

/// The edge of a tile: 0 north, 1 east, 2 south, 3 west.
fn neighbour(tile: TileId, edge: u8) -> Option<TileId> {
    let n = 1u32 << tile.z;
    match edge {
        0 => (tile.y > 0).then(|| TileId { y: tile.y - 1, ..tile }),
        1 => Some(TileId { x: (tile.x + 1) % n, ..tile }),
        2 => (tile.y + 1 < n).then(|| TileId { y: tile.y + 1, ..tile }),
        _ => Some(TileId { x: (tile.x + n - 1) % n, ..tile }),
    }
}

/// One image of an edge sequence, wherever it is at `epoch`: (image, moved into the neighbour).
struct EdgeImage {
    image: SimImage,
    moved: bool,
}

/// The mover stream of one tile edge: a short drive along the edge, inside `tile`, whose images
/// drift one by one into the neighbour (~3 % per epoch). Defined from the tile alone, so the
/// neighbour computes its arrivals without generating this tile.
fn edge_sequence(
    seed: u64,
    fx: Fx<'_>,
    tile: TileId,
    edge: u8,
    epoch: u32,
) -> Option<(SeqAttrs, Vec<EdgeImage>)> {
    let nb = neighbour(tile, edge)?;
    // The fixture tile is a static real snapshot: no synthetic drives cross into or out of it.
    if (tile == FIXTURE_TILE || nb == FIXTURE_TILE) && fx.is_some() {
        return None;
    }
    if density(seed, tile) < 100 {
        return None;
    }
    let frame = Frame::new(tile);
    let nframe = Frame::new(nb);
    let seq = seq_attrs(seed, tile, SEQ_EDGE, u64::from(edge), false, 0);
    let h = hash(seed, &[P_EDGE, u64::from(tile.x), u64::from(tile.y), u64::from(edge)]);
    let inset = 8.0 + 15.0 * unit(h);
    let along_len = if edge.is_multiple_of(2) { frame.w } else { frame.h };
    let start = along_len * (0.1 + 0.6 * unit(mix(h)));
    let step = 5.0;
    let mut out = Vec::new();
    for k in 0..EDGE_IMAGES {
        let a = start + step * k as f64;
        // Street point inside `tile` (x east, y north), its bearing along the edge.
        let (x, y, bearing) = match edge {
            0 => (a, frame.h - inset, 90.0),
            1 => (frame.w - inset, a, 0.0),
            2 => (a, inset, 90.0),
            _ => (inset, a, 0.0),
        };
        let local = LOCAL_EDGE + i64::from(edge) * 64 + k;
        let sp = StreetPoint { x, y, bearing };
        let Some(mut image) = make_image(seed, fx, tile, &frame, local, &seq, k as usize, sp, epoch) else {
            continue;
        };
        if !alive(seed, image.id, epoch) {
            continue;
        }
        let moved = epoch >= gone_epoch(seed, P_MOVE, image.id, 0.03);
        if moved {
            // Mirror the point across the edge into the neighbour, 3–15 m past it.
            let past = 3.0 + 12.0 * unit(hash(seed, &[P_MOVE, image.id as u64, 1]));
            let (lon, lat) = frame.lonlat(x, y);
            let (px, py) = match edge {
                0 => (nframe.w * (lon - nframe.west) / nframe.dlon, past),
                1 => (past, nframe.h * (lat - nframe.south) / nframe.dlat),
                2 => (nframe.w * (lon - nframe.west) / nframe.dlon, nframe.h - past),
                _ => (nframe.w - past, nframe.h * (lat - nframe.south) / nframe.dlat),
            };
            let (px, py) = nframe.clamp(px, py);
            (image.lon, image.lat) = nframe.lonlat(px, py);
            if image.computed.is_some() {
                let (cx, cy) = nframe.clamp(px + 0.5, py - 0.5);
                image.computed = Some(nframe.lonlat(cx, cy));
            }
        }
        out.push(EdgeImage { image, moved });
    }
    Some((seq, out))
}

fn sim_sequence(seq: &SeqAttrs, image_ids: Vec<i64>) -> SimSequence {
    SimSequence {
        id: seq.id.clone(),
        image_ids,
        captured_at_ms: seq.captured_at_ms,
        is_pano: seq.is_pano,
        creator_id: seq.creator_id,
        organization_id: seq.organization_id,
        foot: seq.foot,
    }
}

/// An image box for a detection, in 0..4096 image-normalised pixels.
fn detection_box(h: u64) -> Vec<(u32, u32)> {
    let w = 60 + (h % 500) as u32;
    let hh = 60 + (mix(h) % 500) as u32;
    let x0 = (mix(h ^ 1) % u64::from(4096 - w)) as u32;
    let y0 = 800 + (mix(h ^ 2) % u64::from(2400 - hh)) as u32;
    vec![(x0, y0), (x0 + w, y0), (x0 + w, y0 + hh), (x0, y0 + hh)]
}

// ---------------------------------------------------------------------------------------------
// Tile generation.

/// Pedestrian sequences converging on the plaza of a dense tile.
const PLAZA_SEQUENCES: u64 = 12;
const PLAZA_IMAGES: usize = 250;

/// The plaza centre (frame metres) of a dense tile: the middle of one of its inner z17 cells.
fn plaza_centre(seed: u64, tile: TileId, frame: &Frame) -> (f64, f64) {
    let h = hash(seed, &[P_PLAZA, u64::from(tile.x), u64::from(tile.y)]);
    let (cx, cy) = (2 + h % 4, 2 + mix(h) % 4);
    ((cx as f64 + 0.5) / 8.0 * frame.w, frame.h - (cy as f64 + 0.5) / 8.0 * frame.h)
}

/// An epoch-0 image with what features need to know about it.
struct Placed {
    image: SimImage,
    street: StreetPoint,
    alive: bool,
}

fn generate(seed: u64, fx: Fx<'_>, tile: TileId, epoch: u32) -> TileWorld {
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

/// Sequences uploaded after epoch 0, up to `epoch`: a few per epoch in busy tiles, some captured long ago.
#[allow(clippy::too_many_arguments)] // plain inputs of one generation step
fn new_uploads(
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

/// Map features near the streets (about one per 20 images), each seen in 1–5 consecutive images
/// of one drive, each sighting a detection; plus some detections that belong to no feature.
fn map_features(
    seed: u64,
    tile: TileId,
    frame: &Frame,
    epoch: u32,
    seqs: &[Vec<Placed>],
    features: &mut Vec<SimFeature>,
    detections: &mut Vec<SimDetection>,
) {
    let flat: Vec<(usize, usize)> =
        seqs.iter().enumerate().flat_map(|(s, v)| (0..v.len()).map(move |i| (s, i))).collect();
    if flat.is_empty() {
        return;
    }
    let count = flat.len() / 20;
    for f in 0..count {
        let id = make_id(KIND_FEATURE, tile, f as i64);
        let h = hash(seed, &[P_FEAT, id as u64]);
        let (s, i) = flat[(h % flat.len() as u64) as usize];
        let seq = &seqs[s];
        let seen = 1 + (mix(h ^ 1) % 5) as usize;
        let sightings: Vec<&Placed> = seq[i..(i + seen).min(seq.len())].iter().collect();
        let sp = seq[i].street;
        let is_sign = unit(mix(h ^ 2)) < 0.4;
        let (kind, value) = if is_sign {
            (FeatureKind::TrafficSign, SIGN_VALUES[(mix(h ^ 3) % 10) as usize])
        } else {
            (FeatureKind::Point, POINT_VALUES[(mix(h ^ 3) % 10) as usize])
        };
        // Ahead of the first sighting and off to one side of the street.
        let b = sp.bearing.to_radians();
        let ahead = 5.0 + 10.0 * unit(mix(h ^ 4));
        let side = if mix(h ^ 5).is_multiple_of(2) { 1.0 } else { -1.0 } * (4.0 + 5.0 * unit(mix(h ^ 6)));
        let (x, y) =
            frame.clamp(sp.x + ahead * b.sin() + side * b.cos(), sp.y + ahead * b.cos() - side * b.sin());
        if epoch >= gone_epoch(seed, P_FEAT, id, 0.005) {
            continue;
        }
        let times: Vec<i64> = sightings.iter().map(|p| p.image.captured_at_ms).filter(|t| *t > 0).collect();
        let first = times.iter().copied().min().unwrap_or(0);
        let mut last = times.iter().copied().max().unwrap_or(0);
        let period = 60 + (mix(h ^ 7) % 140) as u32;
        let phase = 1 + (mix(h ^ 8) % u64::from(period)) as u32;
        if epoch >= phase {
            let seen_again = phase + (epoch - phase) / period * period;
            last = last.max(EPOCH0_MS + i64::from(seen_again) * DAY_MS - 3 * 3_600_000);
        }
        let mut image_ids = Vec::new();
        for (k, p) in sightings.iter().enumerate().filter(|(_, p)| p.alive) {
            image_ids.push(p.image.id);
            let did = make_id(KIND_DETECTION, tile, ((f as i64) << 3) | k as i64);
            let dh = hash(seed, &[P_DET, did as u64]);
            detections.push(SimDetection {
                id: did,
                image_id: p.image.id,
                map_feature_id: Some(id),
                value: value.to_string(),
                created_at_ms: created_at(p.image.captured_at_ms, dh),
                geometry_b64: detection_geometry_b64(&detection_box(dh)),
            });
        }
        let (lon, lat) = frame.lonlat(x, y);
        features.push(SimFeature {
            id,
            kind,
            value: value.to_string(),
            lon,
            lat,
            first_seen_at_ms: first,
            last_seen_at_ms: last,
            aligned_direction: (sp.bearing + 180.0 + 20.0 * (unit(mix(h ^ 9)) - 0.5)).rem_euclid(360.0),
            image_ids,
        });
    }
    for p in seqs.iter().flatten().filter(|p| p.alive) {
        let local = p.image.id & 0x3f_ffff;
        let did = make_id(KIND_UNLINKED_DETECTION, tile, local);
        let dh = hash(seed, &[P_DET, did as u64]);
        if unit(dh) < 0.05 {
            detections.push(SimDetection {
                id: did,
                image_id: p.image.id,
                map_feature_id: None,
                value: LOOSE_VALUES[(mix(dh) % 4) as usize].to_string(),
                created_at_ms: created_at(p.image.captured_at_ms, dh),
                geometry_b64: detection_geometry_b64(&detection_box(mix(dh ^ 1))),
            });
        }
    }
}

/// When the detection was made: days after capture (or before epoch 0 for images without a time).
fn created_at(captured_at_ms: i64, h: u64) -> i64 {
    let base = if captured_at_ms > 0 { captured_at_ms } else { EPOCH0_MS - 400 * DAY_MS };
    base + DAY_MS + (unit(mix(h ^ 7)) * 30.0 * DAY_MS as f64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::encode_tile;
    use mly_contract::Tileset;

    fn malmo_core() -> TileId {
        TileId::containing(14, 13.0, 55.6)
    }

    const SHARED_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/real");

    /// The real capture, read from the shared fixtures (tests only; at run time `--fixtures` names it).
    fn test_fixture() -> Fixture {
        Fixture::load(Path::new(SHARED_FIXTURES)).expect("the shared fixture tile loads")
    }

    /// A suburban tile: busy enough to have every kind of record, quick to generate.
    fn suburb() -> TileId {
        TileId::containing(14, 13.0 + 0.06, 55.6)
    }

    #[test]
    fn same_seed_same_bytes_other_seed_differs() {
        let t = suburb();
        let (a, b, c) = (World::new(7), World::new(7), World::new(8));
        for ts in Tileset::ALL {
            let (x, y) = (encode_tile(&a.tile(t, 0), ts), encode_tile(&b.tile(t, 0), ts));
            assert!(!x.is_empty(), "{ts} empty");
            assert_eq!(x, y, "{ts}");
            assert_ne!(x, encode_tile(&c.tile(t, 0), ts), "{ts}");
        }
        assert_eq!(*a.tile(t, 3), *b.tile(t, 3));
    }

    #[test]
    fn density_classes() {
        let w = World::new(1);
        let ocean = TileId::containing(14, -30.0, 0.0);
        assert_eq!(w.expected_images(ocean), 0);
        assert!(w.tile(ocean, 0).images.is_empty());
        assert!(w.tile(ocean, 5).images.is_empty());
        for (lon, lat) in [(13.0, 55.6), (8.54, 47.37), (178.44, -18.14)] {
            assert!(w.expected_images(TileId::containing(14, lon, lat)) > 30_000, "{lon},{lat}");
        }
        let n = w.tile(malmo_core(), 0).images.len();
        assert!(n > 30_000, "core has {n}");
        // Most of the land far from any city is empty.
        let empty =
            (0..50).filter(|i| w.expected_images(TileId::containing(14, 40.0 + *i as f64 * 0.3, 60.0)) == 0);
        assert!(empty.count() >= 45);
        let sub = w.expected_images(suburb());
        assert!((500..30_000).contains(&sub), "{sub}");
    }

    #[test]
    fn hot_spot_over_2000_in_one_z17_cell() {
        let w = World::new(1);
        let t = malmo_core();
        let tw = w.tile(t, 0);
        let mut cells: HashMap<TileId, usize> = HashMap::new();
        for i in &tw.images {
            let c = TileId::containing(17, i.lon, i.lat);
            assert_eq!(c.ancestor_at(14), t, "image {} outside its tile", i.id);
            *cells.entry(c).or_default() += 1;
        }
        let max = cells.values().max().copied().unwrap_or(0);
        assert!(max > 2000, "max z17 cell {max}");
    }

    #[test]
    fn lookups_agree_with_the_tile() {
        let w = World::new(3);
        let t = suburb();
        let tw = w.tile(t, 0);
        assert!(tw.images.windows(2).all(|p| p[0].id < p[1].id));
        let b = t.bounds();
        for img in tw.images.iter().step_by(97) {
            assert!(img.id > 0 && img.id < 1 << 53);
            assert_eq!(split_id(img.id).map(|s| s.1), Some(t));
            assert_eq!(w.image(img.id, 0).as_ref(), Some(img));
            assert!(b.contains(img.lon, img.lat));
            let seq = w.sequence(&img.sequence_id, 0).expect("sequence");
            assert!(seq.image_ids.contains(&img.id));
            assert_eq!(seq.id.len(), 22);
            assert!(seq.id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'));
            let user = w.user(img.creator_id).expect("creator");
            assert_eq!(user.username, img.creator_username);
            if img.is_pano {
                assert_eq!(img.width, 2 * img.height);
            }
        }
        assert!(tw.images.iter().any(|i| i.is_pano) && tw.images.iter().any(|i| !i.is_pano));
        assert!(tw.images.iter().any(|i| i.organization_id.is_some()));
        assert!(tw.images.iter().any(|i| !i.has_mesh));
        assert!(!tw.features.is_empty());
        let ratio = tw.images.len() / tw.features.len();
        assert!((10..=30).contains(&ratio), "{ratio} images per feature");
        for f in tw.features.iter().step_by(13) {
            assert_eq!(w.map_feature(f.id, 0).as_ref(), Some(f));
            assert!(w.image(f.id, 0).is_none() && w.user(f.id).is_none());
            let dets = w.detections_of_feature(f.id, 0).expect("feature detections");
            assert_eq!(dets.len(), f.image_ids.len());
            assert!((1..=5).contains(&dets.len()));
            for d in &dets {
                assert_eq!(d.value, f.value);
                assert!(w.detections_of_image(d.image_id, 0).expect("image").contains(d));
            }
            assert!(f.first_seen_at_ms <= f.last_seen_at_ms);
        }
        assert!(tw.features.iter().any(|f| f.kind == FeatureKind::Point));
        assert!(tw.features.iter().any(|f| f.kind == FeatureKind::TrafficSign));
        assert!(w.image(12345, 0).is_none());
        // A real-looking id the world did not make (the fixture's ids are checked separately).
        assert!(w.sequence("7nfcwfvjdtphz7yj6zat6a", 0).is_none());
        assert!(w.user(12345).is_none());
    }

    #[test]
    fn epochs_change_only_what_they_describe() {
        let w = World::new(5);
        let t = suburb();
        let (e0, e1) = (w.tile(t, 0), w.tile(t, 1));
        let old: HashMap<i64, &SimImage> = e0.images.iter().map(|i| (i.id, i)).collect();
        let new: HashMap<i64, &SimImage> = e1.images.iter().map(|i| (i.id, i)).collect();
        let deleted: Vec<i64> = old.keys().filter(|id| !new.contains_key(id)).copied().collect();
        let added = new.keys().filter(|id| !old.contains_key(id)).count();
        let same = old.iter().filter(|(id, i)| new.get(id) == Some(i)).count();
        let changed = old.iter().filter(|(id, i)| new.get(id).is_some_and(|n| n != *i)).count();
        assert!(!deleted.is_empty(), "no deletions");
        assert!(deleted.len() < old.len() / 20, "{} deleted", deleted.len());
        for id in &deleted {
            if (LOCAL_EDGE..LOCAL_NEW).contains(&(id & 0x3f_ffff)) {
                continue; // a mover: it left for the neighbour
            }
            assert!(w.image(*id, 1).is_none());
            assert!(w.image(*id, 0).is_some());
        }
        assert!(same > old.len() * 9 / 10, "{same} of {}", old.len());
        assert!(changed > 0, "no recomputed positions");
        // Only the computed position may change for a surviving image.
        for (id, i) in &old {
            if let Some(n) = new.get(id) {
                let mut n = (*n).clone();
                n.computed = i.computed;
                assert_eq!(&n, *i);
            }
        }
        // New uploads within a few epochs, some captured recently.
        let later = w.tile(t, 6);
        let uploads: Vec<&SimImage> = later.images.iter().filter(|i| i.id & 0x3f_ffff >= LOCAL_NEW).collect();
        assert!(!uploads.is_empty() || added > 0, "no new uploads");
        assert!(uploads.iter().all(|i| w.image(i.id, 6).as_ref() == Some(*i)));
        assert!(uploads.iter().all(|i| w.image(i.id, 0).is_none()));
    }

    #[test]
    fn movers_leave_one_tile_and_enter_the_next() {
        let w = World::new(2);
        let a = TileId::containing(14, 13.0, 55.6);
        let epoch = 40;
        let mut found = 0;
        for edge in 0..4u8 {
            let b = neighbour(a, edge).expect("neighbour");
            let (ta, tb) = (w.tile(a, epoch), w.tile(b, epoch));
            let (_, imgs) = edge_sequence(1 + 1, None, a, edge, epoch).expect("edge sequence");
            for e in imgs.iter().filter(|e| e.moved) {
                found += 1;
                let id = e.image.id;
                assert!(ta.images.binary_search_by_key(&id, |i| i.id).is_err(), "{id} still in A");
                let i = tb.images.binary_search_by_key(&id, |i| i.id).expect("mover in B");
                assert!(b.bounds().contains(tb.images[i].lon, tb.images[i].lat));
                assert_eq!(w.image(id, epoch).as_ref(), Some(&tb.images[i]));
                assert!(tb.sequences.iter().any(|s| s.id == e.image.sequence_id));
                // At epoch 0 the same id was in A.
                assert!(w.tile(a, 0).images.binary_search_by_key(&id, |i| i.id).is_ok());
            }
        }
        assert!(found > 0, "no movers by epoch {epoch}");
    }

    #[test]
    fn edges_wrap_across_the_antimeridian() {
        let t = TileId { z: 14, x: (1 << 14) - 1, y: 9000 };
        assert_eq!(neighbour(t, 1), Some(TileId { z: 14, x: 0, y: 9000 }));
        assert_eq!(neighbour(TileId { z: 14, x: 0, y: 9000 }, 3), Some(t));
        assert_eq!(neighbour(TileId { z: 14, x: 5, y: 0 }, 0), None);
    }

    #[test]
    fn fixture_tile_is_real_static_and_consistent() {
        let real =
            std::fs::read(Path::new(SHARED_FIXTURES).join(crate::fixture::FIXTURE_FILE)).expect("fixture");
        let w = World::with_fixture(9, Some(test_fixture()));
        let fx = w.fixture.as_ref().expect("fixture");
        assert_eq!(w.verbatim_public_tile(FIXTURE_TILE), Some(real.as_slice()));
        assert_eq!(w.verbatim_public_tile(neighbour(FIXTURE_TILE, 1).expect("east")), None);
        for epoch in [0, 1, 17] {
            let tw = w.tile(FIXTURE_TILE, epoch);
            assert!(encode_tile(&tw, Tileset::FeaturePoint).is_empty());
            assert!(encode_tile(&tw, Tileset::FeatureTrafficSign).is_empty());
        }
        assert_eq!(*w.tile(FIXTURE_TILE, 0), *w.tile(FIXTURE_TILE, 30));
        let tw = w.tile(FIXTURE_TILE, 0);
        assert_eq!(tw.images.len(), 3012);
        // The real tile's images name 66 sequences; its `sequence` layer draws only the 51 with more
        // than 3 images here (shorter ones are left out), so the world's sequences follow the images.
        let img_seqs: HashSet<&str> =
            fx.tile.images.iter().filter_map(|i| i.sequence_id.as_deref()).collect();
        assert_eq!(img_seqs.len(), 66);
        assert_eq!(fx.tile.sequences.len(), 51);
        assert_eq!(tw.sequences.iter().map(|s| s.id.as_str()).collect::<HashSet<_>>(), img_seqs);
        assert_eq!(w.expected_images(FIXTURE_TILE), 3012);
        // Every decoded tile image is a world image at the decoded position with the tile's attributes.
        for ti in &fx.tile.images {
            let img = w.image(ti.id, 5).expect("fixture image by id");
            assert_eq!((img.lon, img.lat), (ti.lon, ti.lat));
            assert_eq!(Some(img.captured_at_ms), ti.captured_at_ms);
            assert_eq!(Some(img.compass_angle), ti.compass_angle);
            assert_eq!(Some(img.is_pano), ti.is_pano);
            assert_eq!(ti.sequence_id.as_deref(), Some(img.sequence_id.as_str()));
            let (cl, ca) = img.computed.expect("computed");
            assert!((cl - img.lon).abs() < 5e-5 && (ca - img.lat).abs() < 5e-5);
            assert!(FIXTURE_TILE.bounds().contains(cl, ca));
            assert_eq!(w.user(img.creator_id).map(|u| u.username), Some(img.creator_username.clone()));
            assert_eq!(w.detections_of_image(img.id, 0), Some(Vec::new()));
            assert!(w.map_feature(img.id, 0).is_none() && w.user(img.id).is_none());
        }
        let seq = w.sequence("feL24LE73P_5h95xjtvLqQ", 3).expect("fixture sequence");
        assert_eq!(seq.image_ids.len(), 62);
        assert_eq!(seq.image_ids[0], 272_743_017_840_261);
        let times: Vec<(i64, i64)> =
            seq.image_ids.iter().map(|id| (w.image(*id, 0).expect("image").captured_at_ms, *id)).collect();
        assert!(times.windows(2).all(|p| p[0] < p[1]), "capture order");
        for s in &tw.sequences {
            assert_eq!(w.sequence(&s.id, 0).as_ref(), Some(s));
            let creators: HashSet<i64> =
                s.image_ids.iter().map(|i| w.image(*i, 0).expect("image").creator_id).collect();
            assert_eq!(creators.len(), 1, "one creator per sequence");
        }
        // (That the harvester's decoder reads the same records from the served tiles is checked
        // from outside, in mly-harvest/tests/simulator_fixture.rs: this crate never decodes
        // with the code under test.)
    }

    #[test]
    fn fixture_ids_never_resolve_to_synthetic_records() {
        let w = World::with_fixture(1, Some(test_fixture()));
        let fx = w.fixture.as_ref().expect("fixture");
        let mut far_tiles: HashSet<TileId> = HashSet::new();
        for id in &fx.image_ids {
            // What the synthetic scheme would make of the id: it must not be one of its records.
            if let Some((kind, tile, _)) = split_id(*id) {
                assert_ne!(tile, FIXTURE_TILE);
                if kind == KIND_IMAGE {
                    far_tiles.insert(tile);
                }
            }
        }
        for t in far_tiles.iter().take(20) {
            let tw = w.tile(*t, 0);
            assert!(tw.images.iter().all(|i| !fx.image_ids.contains(&i.id)), "tile {t}");
        }
        // Neighbours keep no drive that crosses into the static fixture tile.
        for edge in 0..4u8 {
            let nb = neighbour(FIXTURE_TILE, edge).expect("neighbour");
            assert!(edge_sequence(1, w.fx(), nb, (edge + 2) % 4, 40).is_none());
            let tw = w.tile(nb, 40);
            assert!(tw.images.iter().all(|i| !FIXTURE_TILE.bounds().contains(i.lon, i.lat) || {
                let (px, py) = FIXTURE_TILE.lonlat_to_pixel(i.lon, i.lat, mly_contract::tiles::EXTENT);
                px <= 0.0 || py <= 0.0 || px >= 4096.0 || py >= 4096.0
            }));
        }
    }

    #[test]
    #[ignore = "timing; run with --release --ignored --nocapture"]
    fn dense_tile_generation_speed() {
        let w = World::new(1);
        let t0 = std::time::Instant::now();
        let tw = w.tile(malmo_core(), 0);
        let gen_t = t0.elapsed();
        let t1 = std::time::Instant::now();
        let bytes = encode_tile(&tw, Tileset::Public);
        println!(
            "{} images, {} sequences, {} features: generate {:?}, encode {:?}, {} bytes",
            tw.images.len(),
            tw.sequences.len(),
            tw.features.len(),
            gen_t,
            t1.elapsed(),
            bytes.len()
        );
    }
}
