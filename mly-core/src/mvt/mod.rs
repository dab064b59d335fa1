//! Decoding of Mapillary vector tiles and detection geometries.
//!
//! Protobuf parsing is geozero's prost-generated `Tile`; geometry commands and properties are
//! interpreted here so that hostile or odd input (old string-typed tiles, huge counts, truncated
//! streams) yields an error or a skipped feature, never a panic or an unbounded allocation.

mod detection;
mod geometry;
mod layer;
#[cfg(test)]
mod tests;

use std::io::Read;

use geozero::mvt::{Message, Tile};

use crate::model::DecodedTile;
use mly_contract::Tileset;
use mly_contract::tiles::TileId;

pub use detection::{decode_detection, to_pixels};

/// Upper bound for a gzip-decompressed tile; real dense z14 tiles are ~10 MB compressed.
pub const MAX_DECOMPRESSED: u64 = 256 * 1024 * 1024;

/// Layer name of the base64 MVT inside a detection's `geometry`.
pub(crate) const DETECTION_LAYER: &str = "mpy-or";

/// Errors of tile decoding.
#[derive(Debug, thiserror::Error)]
pub enum MvtError {
    /// A coverage or map-feature tile could not be decoded.
    #[error("while decoding {tileset} tile {tile}: {issue}")]
    Tile { tileset: Tileset, tile: TileId, issue: Issue },
    /// A detection `geometry` string could not be decoded.
    #[error("while decoding a detection geometry: {0}")]
    Detection(Issue),
}

/// What exactly was wrong with the bytes (wrapped in [`MvtError`] with the tile's name).
#[derive(Debug, thiserror::Error)]
pub enum Issue {
    /// The gzip stream is corrupt.
    #[error("gzip decompression failed: {0}")]
    Gzip(std::io::Error),
    /// Decompression would exceed [`MAX_DECOMPRESSED`].
    #[error("gzip content exceeds the {limit} byte limit")]
    TooLarge { limit: u64 },
    /// The bytes are not a valid vector-tile protobuf.
    #[error("not a vector tile protobuf: {0}")]
    Protobuf(String),
    /// A layer declares extent 0, so no coordinate can be scaled.
    #[error("layer {layer:?} has extent 0")]
    ZeroExtent { layer: String },
    /// A feature's geometry command stream is malformed.
    #[error("layer {layer:?} feature #{feature}: malformed geometry: {reason}")]
    Geometry { layer: String, feature: usize, reason: &'static str },
    /// The detection string is not base64.
    #[error("invalid base64: {0}")]
    Base64(base64::DecodeError),
    /// The detection tile has no `mpy-or` layer.
    #[error("no layer named {DETECTION_LAYER:?}")]
    NoDetectionLayer,
    /// The detection tile holds no polygon with area.
    #[error("no polygon with a non-zero area")]
    NoPolygon,
}

/// Per-layer counts of one decode, for tests, benchmarks and diagnostics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Layer name as in the tile.
    pub name: String,
    /// Features in the layer.
    pub features: usize,
    /// Features turned into records.
    pub decoded: usize,
    /// Features skipped (no usable id, wrong geometry type, empty geometry); 0 for ignored layers.
    pub skipped: usize,
    /// Whether the layer was ignored (`overview`, unknown names, layers of the other tileset kind).
    pub ignored: bool,
    /// Points outside the tile (render-buffer copies of a neighbour's records), left out.
    pub buffered: usize,
}

/// Decodes one Mapillary vector tile of `tileset` at `tile` into records with lon/lat positions.
pub fn decode_tile(tileset: Tileset, tile: TileId, bytes: &[u8]) -> Result<DecodedTile, MvtError> {
    decode_tile_with_stats(tileset, tile, bytes).map(|(decoded, _)| decoded)
}

/// Like [`decode_tile`], also returning per-layer feature counts.
pub fn decode_tile_with_stats(
    tileset: Tileset,
    tile: TileId,
    bytes: &[u8],
) -> Result<(DecodedTile, Vec<LayerStats>), MvtError> {
    let err = |issue| MvtError::Tile { tileset, tile, issue };
    let parsed = parse_tile(bytes).map_err(err)?;
    let mut out = DecodedTile::default();
    let mut stats = Vec::with_capacity(parsed.layers.len());
    for layer in &parsed.layers {
        let st = layer::decode_layer(tileset, tile, layer, &mut out).map_err(err)?;
        if st.skipped > 0 {
            tracing::warn!(
                tileset = tileset.name(),
                tile = %tile,
                layer = %st.name,
                skipped = st.skipped,
                features = st.features,
                "skipped tile features without a usable id or geometry"
            );
        }
        stats.push(st);
    }
    Ok((out, stats))
}

/// Gunzips if needed and parses the protobuf; empty input is an empty tile.
pub(crate) fn parse_tile(bytes: &[u8]) -> Result<Tile, Issue> {
    if bytes.is_empty() {
        return Ok(Tile::default());
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut buf = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .take(MAX_DECOMPRESSED + 1)
            .read_to_end(&mut buf)
            .map_err(Issue::Gzip)?;
        if buf.len() as u64 > MAX_DECOMPRESSED {
            return Err(Issue::TooLarge { limit: MAX_DECOMPRESSED });
        }
        return Tile::decode(buf.as_slice()).map_err(|e| Issue::Protobuf(e.to_string()));
    }
    Tile::decode(bytes).map_err(|e| Issue::Protobuf(e.to_string()))
}
