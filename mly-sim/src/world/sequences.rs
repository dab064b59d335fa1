//! What the images of one sequence share, and the sequence record made of them.

use super::epochs::{DAY_MS, EPOCH0_MS, FIRST_CAPTURE_MS};
use super::ids::{KIND_ORG, sequence_id};
use super::images::camera_of;
use super::random::{P_SEQ, P_USER, hash};
use super::records::SimSequence;
use super::users::{ORGS, USERS, user_id};
use mly_contract::hash::{splitmix64 as mix, unit};
use mly_contract::tiles::TileId;

/// What all images of one sequence share.
#[derive(Default)]
pub(super) struct SeqAttrs {
    /// The 22-character sequence id.
    pub(super) id: String,
    /// Capture time of its first image.
    pub(super) captured_at_ms: i64,
    pub(super) is_pano: bool,
    pub(super) creator_id: i64,
    pub(super) organization_id: Option<i64>,
    /// Index into `images::CAMERAS`.
    pub(super) camera: usize,
    /// Metres per second, for capture times along the drive.
    pub(super) speed: f64,
    /// Metres between consecutive images.
    pub(super) step: f64,
    /// Images the drive aims for.
    pub(super) len: usize,
    /// A walk (the plaza sequences), not a drive.
    pub(super) foot: bool,
}

/// The attributes of sequence `index` of `kind` in `tile`, made at epoch `created_epoch`.
pub(super) fn seq_attrs(
    seed: u64,
    tile: TileId,
    kind: u64,
    index: u64,
    pedestrian: bool,
    created_epoch: u32,
) -> SeqAttrs {
    let h = hash(seed, &[P_SEQ, u64::from(tile.x), u64::from(tile.y), kind, index]);
    let is_pano = pedestrian || unit(mix(h ^ 1)) < 0.2;
    let camera = camera_of(h, is_pano);
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

pub(super) fn sim_sequence(seq: &SeqAttrs, image_ids: Vec<i64>) -> SimSequence {
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
