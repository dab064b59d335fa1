//! Tests of the world: determinism, density, lookups, epochs, movers and the fixture tile.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::*;
use mly_contract::FeatureKind;

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
fn same_seed_same_world_other_seed_differs() {
    let t = suburb();
    let (a, b, c) = (World::new(7), World::new(7), World::new(8));
    for epoch in [0, 3] {
        let (x, y) = (a.tile(t, epoch), b.tile(t, epoch));
        assert!(!x.images.is_empty() && !x.features.is_empty() && !x.detections.is_empty());
        assert_eq!(*x, *y, "epoch {epoch}");
        assert_ne!(x.images, c.tile(t, epoch).images, "epoch {epoch}");
    }
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
    let real = std::fs::read(Path::new(SHARED_FIXTURES).join(crate::fixture::FIXTURE_FILE)).expect("fixture");
    let w = World::with_fixture(9, Some(test_fixture()));
    let fx = w.fixture.as_ref().expect("fixture");
    assert_eq!(w.verbatim_public_tile(FIXTURE_TILE), Some(real.as_slice()));
    assert_eq!(w.verbatim_public_tile(neighbour(FIXTURE_TILE, 1).expect("east")), None);
    for epoch in [0, 1, 17] {
        let tw = w.tile(FIXTURE_TILE, epoch);
        assert!(tw.features.is_empty() && tw.detections.is_empty());
    }
    assert_eq!(*w.tile(FIXTURE_TILE, 0), *w.tile(FIXTURE_TILE, 30));
    let tw = w.tile(FIXTURE_TILE, 0);
    assert_eq!(tw.images.len(), 3012);
    // The real tile's images name 66 sequences; its `sequence` layer draws only the 51 with more
    // than 3 images here (shorter ones are left out), so the world's sequences follow the images.
    let img_seqs: HashSet<&str> = fx.tile.images.iter().filter_map(|i| i.sequence_id.as_deref()).collect();
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
