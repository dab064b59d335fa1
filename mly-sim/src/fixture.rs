//! The simulator's own reading of the one real capture it serves (`--fixtures DIR`): the 2021
//! Vespucci `mly1_public` tile of Zürich, 14/8574/5735.
//!
//! Deliberately independent of the harvester's decoder (the `mvt` module): a simulator that read its
//! fixtures through the code under test would hide that code's mistakes. Only the protobuf schema
//! (geozero's prost `Tile`) is shared; properties and geometry commands are interpreted here, and
//! only as far as this one well-formed real tile needs.

use std::path::{Path, PathBuf};

use geozero::mvt::{Message, Tile, tile};

use mly_contract::tiles::{EXTENT, TileId};

/// The z14 tile the real fixture was captured at.
pub(crate) const FIXTURE_TILE: TileId = TileId { z: 14, x: 8574, y: 5735 };
/// File name of the fixture tile inside the `--fixtures` directory.
pub(crate) const FIXTURE_FILE: &str = "vespucci-mly1_public-14_8574_5735_2021.mvt";

/// Errors while loading the fixture tile named by `--fixtures`.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The file could not be read.
    #[error("while reading fixture tile {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not a vector tile.
    #[error("while decoding fixture tile {path}: {source}")]
    Protobuf { path: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
    /// The tile decodes but lacks what the simulator needs from it.
    #[error("fixture tile {path}: {what}")]
    Content { path: PathBuf, what: String },
}

/// An image point of the fixture's `image` layer.
#[derive(Debug, Clone, PartialEq)]
pub struct FixtureImage {
    pub id: i64,
    pub lon: f64,
    pub lat: f64,
    pub captured_at_ms: Option<i64>,
    pub compass_angle: Option<f64>,
    pub sequence_id: Option<String>,
    pub is_pano: Option<bool>,
    pub organization_id: Option<i64>,
}

/// A line of the fixture's `sequence` layer (attributes only; lines are redrawn from images).
#[derive(Debug, Clone, PartialEq)]
pub struct FixtureSequence {
    pub id: String,
    pub captured_at_ms: Option<i64>,
    pub is_pano: Option<bool>,
    pub organization_id: Option<i64>,
}

/// The fixture tile: its bytes (served verbatim) and its records.
#[derive(Debug, Clone, PartialEq)]
pub struct FixtureTile {
    pub(crate) bytes: Vec<u8>,
    pub images: Vec<FixtureImage>,
    pub sequences: Vec<FixtureSequence>,
}

/// Loads `DIR/vespucci-mly1_public-14_8574_5735_2021.mvt`.
pub fn load(dir: &Path) -> Result<FixtureTile, FixtureError> {
    let path = dir.join(FIXTURE_FILE);
    let bytes = std::fs::read(&path).map_err(|source| FixtureError::Read { path: path.clone(), source })?;
    let tile = Tile::decode(bytes.as_slice())
        .map_err(|e| FixtureError::Protobuf { path: path.clone(), source: Box::new(e) })?;
    let content = |what: String| FixtureError::Content { path: path.clone(), what };
    let mut images = Vec::new();
    let mut sequences = Vec::new();
    for layer in &tile.layers {
        let extent = layer.extent.unwrap_or(EXTENT);
        if extent == 0 {
            return Err(content(format!("layer {:?} has extent 0", layer.name)));
        }
        for f in &layer.features {
            let props = Props { layer, tags: &f.tags };
            match layer.name.as_str() {
                "image" => {
                    let Some(id) = props.int("id") else { continue };
                    let Some((px, py)) = first_point(&f.geometry) else { continue };
                    let (lon, lat) = FIXTURE_TILE.pixel_to_lonlat(px as f64, py as f64, extent);
                    images.push(FixtureImage {
                        id,
                        lon,
                        lat,
                        captured_at_ms: props.int("captured_at"),
                        compass_angle: props.float("compass_angle"),
                        sequence_id: props.string("sequence_id"),
                        is_pano: props.bool("is_pano"),
                        organization_id: props.int("organization_id"),
                    });
                }
                "sequence" => {
                    let Some(id) = props.string("id") else { continue };
                    sequences.push(FixtureSequence {
                        id,
                        captured_at_ms: props.int("captured_at"),
                        is_pano: props.bool("is_pano"),
                        organization_id: props.int("organization_id"),
                    });
                }
                _ => {}
            }
        }
    }
    if images.is_empty() {
        return Err(content("no image in layer \"image\"".into()));
    }
    Ok(FixtureTile { bytes, images, sequences })
}

/// A feature's properties, looked up by key name.
struct Props<'a> {
    layer: &'a tile::Layer,
    tags: &'a [u32],
}

impl Props<'_> {
    fn value(&self, key: &str) -> Option<&tile::Value> {
        let k = self.layer.keys.iter().position(|k| k == key)? as u32;
        let pair = self.tags.chunks_exact(2).find(|p| p[0] == k)?;
        self.layer.values.get(pair[1] as usize)
    }

    fn int(&self, key: &str) -> Option<i64> {
        let v = self.value(key)?;
        v.int_value.or(v.sint_value).or_else(|| v.uint_value.and_then(|u| i64::try_from(u).ok()))
    }

    fn float(&self, key: &str) -> Option<f64> {
        let v = self.value(key)?;
        v.double_value.or(v.float_value.map(f64::from)).or_else(|| self.int(key).map(|i| i as f64))
    }

    fn bool(&self, key: &str) -> Option<bool> {
        self.value(key)?.bool_value
    }

    fn string(&self, key: &str) -> Option<String> {
        self.value(key)?.string_value.clone().filter(|s| !s.is_empty())
    }
}

/// The first MoveTo point of a geometry command stream (`None` if it does not start with one).
fn first_point(geom: &[u32]) -> Option<(i64, i64)> {
    let (&cmd, rest) = geom.split_first()?;
    if cmd & 7 != 1 || cmd >> 3 == 0 || rest.len() < 2 {
        return None;
    }
    let zz = |v: u32| i64::from((v >> 1) as i32 ^ -((v & 1) as i32));
    Some((zz(rest[0]), zz(rest[1])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_point_reads_move_to() {
        // MoveTo(1) to (25, 17): zigzag 50, 34.
        assert_eq!(first_point(&[9, 50, 34]), Some((25, 17)));
        assert_eq!(first_point(&[9, 1, 2]), Some((-1, 1)));
        assert_eq!(first_point(&[10, 50, 34]), None, "LineTo first");
        assert_eq!(first_point(&[9, 50]), None, "truncated");
    }

    #[test]
    fn a_missing_directory_is_a_read_error() {
        let e = load(Path::new("/nonexistent-fixtures-dir")).unwrap_err();
        assert!(matches!(e, FixtureError::Read { .. }), "{e}");
        assert!(e.to_string().contains(FIXTURE_FILE), "{e}");
    }
}
