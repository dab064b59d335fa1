//! The Mapillary API v4 contract that the harvester (`mly-core`) and the simulator (`mly-sim`)
//! share: how tiles are addressed, the four tilesets, the API families and their documented
//! caps, the field lists, the shape of a token and how it is redacted. One home for each of
//! these facts; neither side redefines them.

pub mod api;
pub mod hash;
pub mod secret;
pub mod tiles;
pub mod tileset;
pub mod token;

pub use api::Family;
pub use secret::Secret;
pub use tiles::{Bbox, TileError, TileId};
pub use tileset::{FeatureKind, Tileset};
