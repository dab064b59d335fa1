//! The simulator serves the real Zürich fixture tile (14/8574/5735) verbatim, and its Graph API
//! answers agree with that tile: bbox searches, entity lookups, sequences, and a full sync.

mod common;
use common::*;

use std::collections::{BTreeSet, HashMap};

use mly_contract::Tileset;
use mly_contract::tiles::TileId;
use mly_core::model::DecodedTile;
use mly_core::mvt;

const TILE: TileId = TileId { z: 14, x: 8574, y: 5735 };
const SEQ: &str = "feL24LE73P_5h95xjtvLqQ";
const FIRST_OF_SEQ: i64 = 272_743_017_840_261;

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(fixtures().join("vespucci-mly1_public-14_8574_5735_2021.mvt")).expect("fixture tile")
}

fn fixture() -> DecodedTile {
    mvt::decode_tile(Tileset::Public, TILE, &fixture_bytes()).expect("fixture decodes")
}

fn auth() -> [(&'static str, String); 1] {
    [("Authorization", format!("OAuth {SIM_TOKEN}"))]
}

/// GET a Graph path with the token in the header; asserts 200 and parses the JSON.
fn graph(sim: &Sim, path: &str) -> serde_json::Value {
    let [(k, v)] = auth();
    let (status, body) = http_get(&format!("{}{}", sim.url, path), &[(k, v.as_str())]);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("JSON")
}

fn data_ids(v: &serde_json::Value) -> Vec<i64> {
    v["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|x| x["id"].as_str().expect("string id").parse().expect("numeric id"))
        .collect()
}

#[test]
fn served_public_tile_is_the_fixture_byte_for_byte() {
    let sim = Sim::start(&["--epoch", "7"]);
    // The tile server takes the token only in the query (§13.4).
    let q = format!("access_token={}", SIM_TOKEN.replace('|', "%7C"));
    let url = format!("{}/maps/vtp/mly1_public/2/14/8574/5735?{q}", sim.url);
    let (status, body) = http_get(&url, &[]);
    assert_eq!(status, 200);
    assert_eq!(body.len(), fixture_bytes().len());
    assert!(body == fixture_bytes(), "served tile differs from the fixture");
    // No feature tiles were captured there: both feature tilesets hold no feature of that tile
    // (only the render-buffer copies of the synthetic neighbours' features, which decode to none).
    for ts in [Tileset::FeaturePoint, Tileset::FeatureTrafficSign] {
        let (status, body) = http_get(&format!("{}/maps/vtp/{}/2/14/8574/5735?{q}", sim.url, ts.name()), &[]);
        assert_eq!(status, 200, "{ts}");
        let decoded = mvt::decode_tile(ts, TILE, &body).expect("decodes");
        assert!(decoded.features.is_empty(), "{ts}");
    }
    // The computed tileset is encoded from the same world: the same images.
    let (status, body) =
        http_get(&format!("{}/maps/vtp/mly1_computed_public/2/14/8574/5735?{q}", sim.url), &[]);
    assert_eq!(status, 200);
    let computed = mvt::decode_tile(Tileset::ComputedPublic, TILE, &body).expect("computed decodes");
    let want: BTreeSet<i64> = fixture().images.iter().map(|i| i.id.0).collect();
    assert_eq!(computed.images.iter().map(|i| i.id.0).collect::<BTreeSet<_>>(), want);
}

#[test]
fn bbox_search_and_lookups_agree_with_the_fixture() {
    let sim = Sim::start(&[]);
    let fx = fixture();
    // The busiest z16 cell of the tile, so the comparison covers many images.
    let mut per_cell: HashMap<TileId, BTreeSet<i64>> = HashMap::new();
    for cell in TILE.descendants_at(16) {
        let b = cell.bounds();
        let ids = fx.images.iter().filter(|i| b.contains(i.lon, i.lat)).map(|i| i.id.0).collect();
        per_cell.insert(cell, ids);
    }
    let (cell, want) = per_cell.iter().max_by_key(|(c, ids)| (ids.len(), c.x, c.y)).expect("cells");
    assert!(want.len() > 100 && want.len() < 2000, "{} images in {cell}", want.len());
    let b = cell.bounds();
    let v = graph(
        &sim,
        &format!("/images?bbox={},{},{},{}&fields=id&limit=2000", b.west, b.south, b.east, b.north),
    );
    let got: Vec<i64> = data_ids(&v);
    assert_eq!(got.len(), want.len(), "no duplicates, nothing missing");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), *want);
    // A cell the fixture leaves empty stays empty too (if the tile has one).
    if let Some((empty, _)) = per_cell.iter().find(|(_, ids)| ids.is_empty()) {
        let b = empty.bounds();
        let v = graph(&sim, &format!("/images?bbox={},{},{},{}&fields=id", b.west, b.south, b.east, b.north));
        assert_eq!(data_ids(&v), Vec::<i64>::new(), "{empty}");
    }

    // One image of the sequence, by id: the tile's captured_at, sequence and position.
    let seq_imgs: Vec<_> = fx.images.iter().filter(|i| i.sequence_id.as_deref() == Some(SEQ)).collect();
    assert_eq!(seq_imgs.len(), 62);
    for img in [seq_imgs[0], seq_imgs[31]] {
        let v = graph(&sim, &format!("/{}?fields=id,captured_at,sequence,geometry", img.id.0));
        assert_eq!(v["id"], img.id.0.to_string());
        assert_eq!(v["captured_at"].as_i64(), img.captured_at_ms);
        assert_eq!(v["sequence"], SEQ);
        let c = &v["geometry"]["coordinates"];
        assert!((c[0].as_f64().expect("lon") - img.lon).abs() < 1e-9, "{v}");
        assert!((c[1].as_f64().expect("lat") - img.lat).abs() < 1e-9, "{v}");
    }
    let first = fx.images.iter().find(|i| i.id.0 == FIRST_OF_SEQ).expect("first image in tile");
    let v = graph(&sim, &format!("/{FIRST_OF_SEQ}?fields=id,captured_at,sequence,geometry"));
    assert_eq!(v["captured_at"].as_i64(), first.captured_at_ms);
    assert_eq!(v["sequence"], SEQ);
    // Its detections: none (the fixture has no feature tiles), but the image exists.
    let v = graph(&sim, &format!("/{FIRST_OF_SEQ}/detections?fields=id,value"));
    assert_eq!(v["data"].as_array().map(Vec::len), Some(0));

    // The sequence: its 62 images of this tile, in capture order, starting with the tile's image_id.
    let v = graph(&sim, &format!("/image_ids?sequence_id={SEQ}"));
    let ids = data_ids(&v);
    let mut want: Vec<(i64, i64)> =
        seq_imgs.iter().map(|i| (i.captured_at_ms.expect("captured_at"), i.id.0)).collect();
    want.sort_unstable();
    assert_eq!(ids, want.iter().map(|(_, id)| *id).collect::<Vec<_>>());
    assert_eq!(ids[0], FIRST_OF_SEQ);
    let layer = fx.sequences.iter().find(|s| s.id == SEQ).expect("sequence feature");
    assert_eq!(layer.image_id.map(|i| i.0), Some(FIRST_OF_SEQ));
}

#[test]
fn sync_stores_exactly_the_fixture() {
    let sim = Sim::start(&[]);
    let db = fresh_db("sync_fixture");
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("MLY_MAPILLARY__GRAPH_URL", sim.url.as_str()),
        ("MLY_MAPILLARY__TILES_URL", sim.url.as_str()),
        ("MAPILLARY_ACCESS_TOKEN", SIM_TOKEN),
        ("MLY_HARVEST__LEASE_SECS", "30"),
        ("MLY_MAPILLARY__TIMEOUT_SECS", "20"),
    ];
    let out = run(&["sync", "8.394,47.399,8.415,47.413"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sync failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains(SIM_TOKEN) && !String::from_utf8_lossy(&out.stderr).contains(SIM_TOKEN));

    let fx = fixture();
    let want_images: BTreeSet<i64> = fx.images.iter().map(|i| i.id.0).collect();
    assert_eq!(want_images.len(), 3012);
    let got: BTreeSet<i64> =
        psql(&db, "SELECT id FROM mapillary.images_live").lines().map(|l| l.parse().expect("id")).collect();
    assert_eq!(got, want_images);
    // The tile's images name 66 sequences; its sequence layer draws the 51 with more than 3 images.
    let want_seqs: BTreeSet<String> = fx.images.iter().filter_map(|i| i.sequence_id.clone()).collect();
    assert_eq!(want_seqs.len(), 66);
    let got_seqs: BTreeSet<String> =
        psql(&db, "SELECT id FROM mapillary.sequences").lines().map(str::to_string).collect();
    assert_eq!(got_seqs, want_seqs);
    let drawn: BTreeSet<String> = fx.sequences.iter().map(|s| s.id.clone()).collect();
    assert_eq!(drawn.len(), 51);
    let with_line: BTreeSet<String> = psql(&db, "SELECT id FROM mapillary.sequences WHERE geom IS NOT NULL")
        .lines()
        .map(str::to_string)
        .collect();
    assert!(drawn.is_subset(&with_line), "every drawn sequence has a line");
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.images WHERE enriched_at IS NULL"), "0");
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.map_features"), "0");
    // The stored tile attributes are the fixture's.
    let seq_count =
        psql(&db, &format!("SELECT count(*) FROM mapillary.images_live WHERE sequence_id = '{SEQ}'"));
    assert_eq!(seq_count, "62");
    let first = fx.images.iter().find(|i| i.id.0 == FIRST_OF_SEQ).expect("first image");
    let ms = psql(
        &db,
        &format!(
            "SELECT (extract(epoch from captured_at) * 1000)::bigint FROM mapillary.images WHERE id = {FIRST_OF_SEQ}"
        ),
    );
    assert_eq!(ms.parse::<i64>().ok(), first.captured_at_ms);
}

/// The simulator reads the real capture with its own reader (it never uses the harvester's
/// decoder); both readings agree on every image and sequence of the tile.
#[test]
fn the_simulators_own_reading_of_the_capture_agrees_with_the_harvesters_decoder() {
    let own = mly_sim::fixture::load(&fixtures()).expect("the simulator reads the capture");
    let decoded = fixture();
    assert_eq!(decoded.images.len(), own.images.len());
    assert_eq!(own.images.len(), 3012);
    for (d, o) in decoded.images.iter().zip(&own.images) {
        assert_eq!((d.id.0, d.lon, d.lat, d.captured_at_ms), (o.id, o.lon, o.lat, o.captured_at_ms));
        assert_eq!(
            (d.compass_angle, &d.sequence_id, d.is_pano),
            (o.compass_angle, &o.sequence_id, o.is_pano)
        );
        assert_eq!(d.organization_id, o.organization_id);
    }
    assert_eq!(
        decoded.sequences.iter().map(|s| (&s.id, s.captured_at_ms, s.is_pano)).collect::<Vec<_>>(),
        own.sequences.iter().map(|s| (&s.id, s.captured_at_ms, s.is_pano)).collect::<Vec<_>>()
    );
}
