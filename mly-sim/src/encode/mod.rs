//! MVT encoding of the simulated world: coverage tiles (`mly1_public`, `mly1_computed_public`),
//! map-feature tiles, and the base64 MVT blobs of detection geometries; plus the flat JPEGs
//! behind the image URLs (`jpeg`).
//!
//! The byte layout follows the real 2024 `mly1_public` tile (layer order, key order, value kinds,
//! positional feature ids), so the harvester's decoder is exercised against the real format.
//!
//! It reads the world and nothing else: `graph` renders the same records as JSON and `server`
//! serves both.

mod coverage;
mod detection;
mod features;
mod jpeg;
mod layer;
mod low_zoom;
mod pixels;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use geozero::mvt::{Message, Tile};

use crate::world::TileWorld;
use coverage::coverage_layers;
use features::feature_layers;
use mly_contract::{FeatureKind, Tileset};

pub(crate) use detection::detection_geometry_b64;
pub(crate) use jpeg::flat_jpeg;
pub(crate) use layer::empty_layer_tile;
pub(crate) use low_zoom::{SummaryCache, encode_low_zoom};
pub(crate) use pixels::home_pixel;

/// The MVT bytes of tileset `ts` for z14 tile content (empty Vec if the tile has nothing for that
/// tileset), without render-buffer copies.
pub(crate) fn encode_tile(tw: &TileWorld, ts: Tileset) -> Vec<u8> {
    encode_tile_buffered(tw, &[], ts)
}

/// Like [`encode_tile`], plus the render buffer: the records of `neighbours` (the surrounding
/// z14 tiles' worlds) that lie within [`RENDER_BUFFER_PX`] of this tile's edge, drawn after the
/// tile's own records at coordinates quantised to this tile and always outside [0, extent), so
/// each record is inside exactly one tile (its home).
pub(crate) fn encode_tile_buffered(tw: &TileWorld, neighbours: &[Arc<TileWorld>], ts: Tileset) -> Vec<u8> {
    let layers = match ts {
        Tileset::Public => coverage_layers(tw, neighbours, false),
        Tileset::ComputedPublic => coverage_layers(tw, neighbours, true),
        Tileset::FeaturePoint => feature_layers(tw, neighbours, FeatureKind::Point),
        Tileset::FeatureTrafficSign => feature_layers(tw, neighbours, FeatureKind::TrafficSign),
    };
    if layers.is_empty() {
        return Vec::new();
    }
    Tile { layers }.encode_to_vec()
}
