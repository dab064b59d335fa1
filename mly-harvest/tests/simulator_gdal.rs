//! The simulator's tiles read by an independent MVT decoder (GDAL's `ogrinfo`) have the same layer
//! names and the same type for every property as the real 2024 Mapillary tile.

mod common;
use common::*;

use std::collections::BTreeMap;

/// Layer name → (field → GDAL type) as `ogrinfo -so -al` reports them.
fn schema(path: &std::path::Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let out = std::process::Command::new("ogrinfo")
        .args(["-ro", "-so", "-al"])
        .arg(path)
        .output()
        .expect("ogrinfo runs (gdal-bin)");
    assert!(out.status.success(), "ogrinfo failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut layers: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("Layer name: ") {
            current = Some(name.trim().to_string());
            layers.entry(name.trim().to_string()).or_default();
        } else if let (Some(layer), Some((field, rest))) = (&current, line.split_once(": ")) {
            // Field lines look like `captured_at: Integer64 (0.0)`; GDAL's own id column is not a property.
            // (GDAL's metadata lines, e.g. `Extent: ...`, start with a capital letter.)
            let is_field = rest.ends_with(')')
                && !field.contains(' ')
                && field.starts_with(|c: char| c.is_ascii_lowercase())
                && field != "mvt_id";
            if is_field {
                let ty = rest.rsplit_once(" (").map_or(rest, |(t, _)| t).to_string();
                layers.get_mut(layer).map(|l| l.insert(field.to_string(), ty));
            }
        }
    }
    layers
}

fn fetch(sim: &Sim, tileset: &str, tile: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let (status, body) =
        sim.get(&format!("/maps/vtp/{tileset}/2/{tile}?access_token={}", SIM_TOKEN.replace('|', "%7C")));
    assert_eq!(status, 200, "{tileset} {tile}");
    assert!(!body.is_empty(), "{tileset} {tile} is empty");
    let path = dir.join(format!("{tileset}.mvt"));
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn gdal_reads_simulator_tiles_with_the_real_tiles_schema() {
    let sim = Sim::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let real = schema(&fixtures().join("vespucci-mly1_public-14_unknown_2024.mvt"));
    assert_eq!(real.keys().collect::<Vec<_>>(), ["image", "sequence"], "{real:?}");

    // Malmö's dense core tile: panoramas, organizations and every property occur in it.
    let ours = schema(&fetch(&sim, "mly1_public", "14/8783/5134", dir.path()));
    assert_eq!(ours, real, "mly1_public: layer names or property types differ from the real 2024 tile");
    // The computed tileset adds `foot` (a bool like is_pano) and `quality_score` (a double like
    // compass_angle) to both layers (§13.6).
    let mut computed = real.clone();
    for layer in ["image", "sequence"] {
        let l = computed.get_mut(layer).expect("layer");
        l.insert("foot".into(), real["image"]["is_pano"].clone());
        l.insert("quality_score".into(), real["image"]["compass_angle"].clone());
    }
    let ours = schema(&fetch(&sim, "mly1_computed_public", "14/8783/5134", dir.path()));
    assert_eq!(ours, computed, "mly1_computed_public: layer names or property types differ");

    // No real feature tile exists; the documented schema (id int, value string, first/last seen ms).
    let expected: BTreeMap<String, String> = [
        ("first_seen_at", "Integer64"),
        ("id", "Integer64"),
        ("last_seen_at", "Integer64"),
        ("value", "String"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (tileset, layer) in
        [("mly_map_feature_point", "point"), ("mly_map_feature_traffic_sign", "traffic_sign")]
    {
        let ours = schema(&fetch(&sim, tileset, "14/8783/5134", dir.path()));
        assert_eq!(ours.keys().collect::<Vec<_>>(), [layer], "{tileset}");
        assert_eq!(ours[layer], expected, "{tileset}");
    }
}
