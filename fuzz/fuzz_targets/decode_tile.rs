//! Arbitrary bytes as a tile of every tileset: decoding must return Ok or Err, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mly_contract::Tileset;
use mly_contract::tiles::TileId;

fuzz_target!(|data: &[u8]| {
    if let Ok(tile) = TileId::new(14, 8785, 5134) {
        for ts in [Tileset::Public, Tileset::FeaturePoint, Tileset::FeatureTrafficSign] {
            let _ = mly_core::mvt::decode_tile(ts, tile, data);
        }
    }
});
