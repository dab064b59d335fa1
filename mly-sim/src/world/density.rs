//! How many images a z14 tile holds: dense city cores decaying to suburbs, towns and country
//! roads around 16 real cities, and empty land elsewhere.

use super::random::{P_DENSITY, P_RURAL, P_TOWN, hash};
use mly_contract::hash::{splitmix64 as mix, unit};
use mly_contract::tiles::TileId;

/// Real city centres (lon, lat): each has a dense core decaying to suburbs.
pub(super) const CITIES: [(f64, f64); 16] = [
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
pub(super) fn dist_km(lon1: f64, lat1: f64, lon2: f64, lat2: f64) -> f64 {
    let mut dlon = (lon1 - lon2).abs();
    if dlon > 180.0 {
        dlon = 360.0 - dlon;
    }
    let x = dlon * ((lat1 + lat2) / 2.0).to_radians().cos();
    (x * x + (lat1 - lat2).powi(2)).sqrt() * 111.2
}

/// The target image count of a z14 tile.
pub(super) fn density(seed: u64, tile: TileId) -> u32 {
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
