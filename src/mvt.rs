//! Decoding of Mapillary vector tiles and detection geometries.
