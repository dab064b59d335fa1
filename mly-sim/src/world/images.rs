//! One image record: its position, capture time, camera and SfM fields.

use super::epochs::computed_position;
use super::fixture_world::{Fx, is_fixture_image};
use super::ids::{KIND_IMAGE, make_id};
use super::random::{P_GRID, P_IMG, Rng, hash};
use super::records::SimImage;
use super::sequences::SeqAttrs;
use super::streets::{Frame, StreetPoint};
use super::users::username;
use mly_contract::hash::{splitmix64 as mix, unit};
use mly_contract::tiles::TileId;

/// Camera models: (camera_type, make, model, width, height); panoramas have width = 2 * height.
pub(super) const CAMERAS: [(&str, &str, &str, u32, u32); 6] = [
    ("perspective", "Apple", "iPhone 12", 4032, 3024),
    ("perspective", "samsung", "SM-G991B", 4000, 3000),
    ("perspective", "GoPro", "HERO9 Black", 4000, 3000),
    ("fisheye", "GoPro", "HERO8 Black", 4000, 3000),
    ("equirectangular", "GoPro", "GoPro Max", 5760, 2880),
    ("spherical", "Insta360", "ONE X2", 6080, 3040),
];

/// The reconstruction and camera fields the Graph API gives for an image and no tile shows.
pub(super) struct Reconstruction {
    pub(super) quality_score: Option<f64>,
    pub(super) atomic_scale: f64,
    pub(super) camera_parameters: Vec<f64>,
    pub(super) computed_rotation: [f64; 3],
    pub(super) exif_orientation: u8,
    pub(super) has_mesh: bool,
}

impl Reconstruction {
    /// Draws them from the image's own random stream (the order of draws is part of the world).
    pub(super) fn draw(rng: &mut Rng, is_pano: bool) -> Reconstruction {
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

/// One image of a sequence at street point `sp`; `None` if GPS noise put it outside the tile.
#[allow(clippy::too_many_arguments)] // every argument is one independent input of the record
pub(super) fn make_image(
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
    let ground = 20.0 + 400.0 * unit(hash(seed, &[P_GRID, u64::from(tile.x >> 4), u64::from(tile.y >> 4)]));
    let altitude = ((ground + 5.0 * rng.gauss()) * 1000.0).round() / 1000.0;
    let compass_angle = ((sp.bearing + 4.0 * rng.gauss()).rem_euclid(360.0) * 100.0).round() / 100.0;
    let shot = Shot { id, captured_at_ms, lonlat: (lon, lat), computed, compass_angle, altitude };
    Some(complete(seed, tile, &mut rng, seq, shot, sp.bearing))
}

/// Where and when an image was taken: what is known of it before the rest of its record is drawn.
pub(super) struct Shot {
    pub(super) id: i64,
    pub(super) captured_at_ms: i64,
    pub(super) lonlat: (f64, f64),
    pub(super) computed: Option<(f64, f64)>,
    pub(super) compass_angle: f64,
    pub(super) altitude: f64,
}

/// The camera model (an index into [`CAMERAS`]) of a sequence keyed by `h`: panoramas use the two
/// spherical cameras.
pub(super) fn camera_of(h: u64, is_pano: bool) -> usize {
    if is_pano { 4 + (mix(h ^ 2) % 2) as usize } else { (mix(h ^ 2) % 4) as usize }
}

/// The whole record of `shot` in sequence `seq`: the computed compass angle (around `heading`),
/// the computed altitude and the SfM fields are drawn from `rng` after what placed the shot, in
/// the order the Graph fields have always been drawn (the world must not change).
pub(super) fn complete(
    seed: u64,
    tile: TileId,
    rng: &mut Rng,
    seq: &SeqAttrs,
    shot: Shot,
    heading: f64,
) -> SimImage {
    let computed_compass_angle = (heading + 0.5 * rng.gauss()).rem_euclid(360.0);
    let computed_altitude = shot.altitude + 2.0 * rng.gauss();
    let sfm = Reconstruction::draw(rng, seq.is_pano);
    let cam = CAMERAS[seq.camera];
    SimImage {
        id: shot.id,
        sequence_id: seq.id.clone(),
        captured_at_ms: shot.captured_at_ms,
        compass_angle: shot.compass_angle,
        computed_compass_angle,
        lon: shot.lonlat.0,
        lat: shot.lonlat.1,
        computed: shot.computed,
        altitude: shot.altitude,
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
    }
}
