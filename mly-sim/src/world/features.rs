//! Map features near the streets and the detections that saw them.

use super::epochs::{DAY_MS, EPOCH0_MS, gone_epoch};
use super::generate::Placed;
use super::ids::{KIND_DETECTION, KIND_FEATURE, KIND_UNLINKED_DETECTION, make_id};
use super::random::{P_DET, P_FEAT, hash};
use super::records::{SimDetection, SimFeature};
use super::streets::Frame;
use mly_contract::FeatureKind;
use mly_contract::hash::{splitmix64 as mix, unit};
use mly_contract::tiles::TileId;

pub(super) const POINT_VALUES: [&str; 10] = [
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

pub(super) const SIGN_VALUES: [&str; 10] = [
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
pub(super) const LOOSE_VALUES: [&str; 4] = [
    "object--vehicle--car",
    "nature--vegetation",
    "construction--flat--sidewalk",
    "object--sign--advertisement",
];

/// An image box for a detection, in 0..4096 image-normalised pixels.
pub(super) fn detection_box(h: u64) -> Vec<(u32, u32)> {
    let w = 60 + (h % 500) as u32;
    let hh = 60 + (mix(h) % 500) as u32;
    let x0 = (mix(h ^ 1) % u64::from(4096 - w)) as u32;
    let y0 = 800 + (mix(h ^ 2) % u64::from(2400 - hh)) as u32;
    vec![(x0, y0), (x0 + w, y0), (x0 + w, y0 + hh), (x0, y0 + hh)]
}

/// Map features near the streets (about one per 20 images), each seen in 1–5 consecutive images
/// of one drive, each sighting a detection; plus some detections that belong to no feature.
pub(super) fn map_features(
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
                polygon_px: detection_box(dh),
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
                polygon_px: detection_box(mix(dh ^ 1)),
            });
        }
    }
}

/// When the detection was made: days after capture (or before epoch 0 for images without a time).
pub(super) fn created_at(captured_at_ms: i64, h: u64) -> i64 {
    let base = if captured_at_ms > 0 { captured_at_ms } else { EPOCH0_MS - 400 * DAY_MS };
    base + DAY_MS + (unit(mix(h ^ 7)) * 30.0 * DAY_MS as f64) as i64
}
