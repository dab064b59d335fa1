//! Offline simulator of the Mapillary API v4 (`mly-harvest simulate`).
