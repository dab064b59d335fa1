//! Regions: a config name, a bbox, or a GeoJSON (Multi)Polygon file.
