//! Mapillary API v4 client: tiles and Graph API, rate limited, retried, token-safe.
