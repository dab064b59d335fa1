//! Ids that encode their home tile, so a lookup regenerates (or takes from the cache) just that
//! tile: numeric ids are kind (3 bits) | x (14) | y (14) | local (22), below 2^53 and positive;
//! sequence ids are 22 characters of `[A-Za-z0-9_-]` carrying (tile, kind, index) and a keyed hash.

use super::random::{P_SEQ_ID, hash};
use mly_contract::hash::splitmix64 as mix;
use mly_contract::tiles::{HARVEST_ZOOM, TileId};

pub(super) const KIND_IMAGE: i64 = 0;
pub(super) const KIND_FEATURE: i64 = 1;
pub(super) const KIND_DETECTION: i64 = 2;
pub(super) const KIND_UNLINKED_DETECTION: i64 = 3;
pub(super) const KIND_USER: i64 = 4;
pub(super) const KIND_ORG: i64 = 5;

/// Locals of epoch-0 images: `seq << 10 | index`.
pub(super) const LOCAL_SEQ_BITS: u32 = 10;
/// First local of the per-edge mover images.
pub(super) const LOCAL_EDGE: i64 = 1 << 20;
/// First local of images uploaded after epoch 0.
pub(super) const LOCAL_NEW: i64 = 1 << 21;
/// Images per new-upload block (one epoch of one tile).
pub(super) const NEW_BLOCK: i64 = 1024;
/// Epochs after which no new uploads are generated (the local id space is full).
pub(super) const MAX_NEW_EPOCH: u32 = ((1 << 22) - LOCAL_NEW) as u32 / NEW_BLOCK as u32;
/// Images of one edge sequence.
pub(super) const EDGE_IMAGES: i64 = 24;

pub(super) fn make_id(kind: i64, tile: TileId, local: i64) -> i64 {
    (kind << 50) | (i64::from(tile.x) << 36) | (i64::from(tile.y) << 22) | local
}

/// (kind, home tile, local) of an id.
pub(super) fn split_id(id: i64) -> Option<(i64, TileId, i64)> {
    if !(0..1i64 << 53).contains(&id) {
        return None;
    }
    let tile = TileId::new(HARVEST_ZOOM, ((id >> 36) & 0x3fff) as u32, ((id >> 22) & 0x3fff) as u32).ok()?;
    Some((id >> 50, tile, id & 0x3f_ffff))
}

pub(super) const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Sequence kinds encoded in sequence ids.
pub(super) const SEQ_BASE: u64 = 0;
pub(super) const SEQ_EDGE: u64 = 1;
pub(super) const SEQ_NEW: u64 = 2;

/// A 22-char sequence id: 9 chars of payload (tile, kind, index) then 13 chars of keyed hash,
/// which both makes ids look like Mapillary's and rejects ids the world did not make.
pub(super) fn sequence_id(seed: u64, tile: TileId, kind: u64, index: u64) -> String {
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
pub(super) fn parse_sequence_id(seed: u64, id: &str) -> Option<(TileId, u64, u64)> {
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
