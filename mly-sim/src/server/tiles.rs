//! The tile route: z14 tiles of every tileset (with the render buffer), low zooms of the coverage
//! tilesets, the ETag, the empty-tile answer and the `transient_404` fault; encoded tiles cached.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::AppState;
use super::answer::{ApiError, empty_response, protobuf};
use crate::EmptyTile;
use crate::encode::{empty_layer_tile, encode_low_zoom, encode_tile, encode_tile_buffered};
use mly_contract::Tileset;
use mly_contract::hash::fnv1a;
use mly_contract::tiles::{HARVEST_ZOOM, TileId};

/// Encoded tiles kept in memory.
pub(super) const TILE_CACHE_ENTRIES: usize = 512;

#[derive(Default)]
pub(super) struct TileCache {
    pub(super) map: HashMap<(Tileset, TileId, u32), Bytes>,
    pub(super) order: VecDeque<(Tileset, TileId, u32)>,
}

impl TileCache {
    pub(super) fn get(&self, k: &(Tileset, TileId, u32)) -> Option<Bytes> {
        self.map.get(k).cloned()
    }

    pub(super) fn put(&mut self, k: (Tileset, TileId, u32), v: Bytes) {
        if self.map.insert(k, v).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > TILE_CACHE_ENTRIES {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

/// The (up to) eight tiles around `t`, wrapping across the antimeridian.
pub(super) fn neighbours8(t: TileId) -> Vec<TileId> {
    let n = 1i64 << t.z;
    let mut out = Vec::with_capacity(8);
    for dy in -1i64..=1 {
        for dx in -1i64..=1 {
            let (x, y) = ((i64::from(t.x) + dx).rem_euclid(n), i64::from(t.y) + dy);
            if (dx, dy) == (0, 0) || !(0..n).contains(&y) {
                continue;
            }
            // x and y are within 0..2^z here, so they fit in u32.
            if let Ok(nb) = TileId::new(t.z, x as u32, y as u32) {
                out.push(nb);
            }
        }
    }
    out
}

impl AppState {
    /// How a tile without data answers (`--empty-tile`).
    pub(super) fn empty_tile_response(&self) -> Response {
        match self.empty_tile {
            EmptyTile::Empty200 => protobuf(StatusCode::OK, Bytes::new()),
            EmptyTile::NoContent => empty_response(StatusCode::NO_CONTENT),
            EmptyTile::NotFound => {
                ApiError::new(404, "Tile not found", "MLYApiException", 100).into_response()
            }
            EmptyTile::Forbidden => {
                ApiError::new(403, "Tile does not exist", "MLYApiException", 100).into_response()
            }
            EmptyTile::MvtEmpty => protobuf(StatusCode::OK, Bytes::from(empty_layer_tile())),
        }
    }

    pub(super) async fn tile(
        self: &Arc<Self>,
        ts: &str,
        z: &str,
        x: &str,
        y: &str,
        headers: &HeaderMap,
    ) -> Result<Response, ApiError> {
        let not_found = |what: &str| ApiError::new(404, what, "MLYApiException", 100);
        let tileset = Tileset::from_name(ts).ok_or_else(|| not_found("Unsupported tileset"))?;
        let (Ok(z), Ok(x), Ok(y)) = (z.parse::<u8>(), x.parse::<u32>(), y.parse::<u32>()) else {
            return Err(not_found("Invalid tile coordinates"));
        };
        let t = TileId::new(z, x, y).map_err(|_| not_found("Invalid tile coordinates"))?;
        if z > HARVEST_ZOOM {
            return Err(not_found("Tile zoom level out of range"));
        }
        // The map-feature tilesets exist at z14 only (§5.2).
        if z < HARVEST_ZOOM && !tileset.is_coverage() {
            return Ok(self.empty_tile_response());
        }
        let key = (tileset, t, self.epoch);
        let cached = self.tiles.lock().unwrap_or_else(|p| p.into_inner()).get(&key);
        let bytes = match cached {
            Some(b) => b,
            None => {
                let st = self.clone();
                let b = tokio::task::spawn_blocking(move || st.render_tile(tileset, t))
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, tile = %format_args!("{}/{}/{}", t.z, t.x, t.y), "tile generation failed");
                        ApiError::transient()
                    })?;
                self.tiles.lock().unwrap_or_else(|p| p.into_inner()).put(key, b.clone());
                b
            }
        };
        if bytes.is_empty() {
            return Ok(self.empty_tile_response());
        }
        let asked = {
            let mut asks = self.tile_asks.lock().unwrap_or_else(|p| p.into_inner());
            let n = asks.entry((ts.to_string(), t)).or_default();
            *n += 1;
            *n - 1
        };
        if self.faults.transient_404(ts, &t, asked) {
            self.count_fault("transient_404");
            return Err(not_found("Tile not found"));
        }
        let etag = format!("\"{:016x}{:x}\"", fnv1a(&bytes), bytes.len());
        let matches = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.trim() == etag || e.trim() == "*"));
        let mut r =
            if matches { empty_response(StatusCode::NOT_MODIFIED) } else { protobuf(StatusCode::OK, bytes) };
        if let Ok(v) = HeaderValue::from_str(&etag) {
            r.headers_mut().insert(header::ETAG, v);
        }
        Ok(r)
    }

    /// The bytes of a z14 tile (runs on the blocking pool: it may generate tiles of the world).
    pub(super) fn render_tile(&self, tileset: Tileset, t: TileId) -> Bytes {
        if t.z < HARVEST_ZOOM {
            let computed = tileset == Tileset::ComputedPublic;
            return Bytes::from(encode_low_zoom(&self.world, &self.summaries, t, self.epoch, computed));
        }
        if tileset == Tileset::Public
            && let Some(real) = self.world.verbatim_public_tile(t)
        {
            // A real capture is served as captured (it predates the render buffer).
            return Bytes::copy_from_slice(real);
        }
        let tw = self.world.tile(t, self.epoch);
        if !self.render_buffer {
            return Bytes::from(encode_tile(&tw, tileset));
        }
        let neighbours: Vec<_> = neighbours8(t).into_iter().map(|n| self.world.tile(n, self.epoch)).collect();
        Bytes::from(encode_tile_buffered(&tw, &neighbours, tileset))
    }
}
