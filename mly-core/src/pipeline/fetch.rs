//! The fetch and decode stages: one tile request (conditional on the stored ETag) and its MVT
//! decoded on the blocking pool; a body that does not decode is fetched again a few times (it is
//! usually a transfer fault) before the attempt fails.

use std::time::Instant;

use tracing::warn;

use super::outcome::{TileFailure, cancellable};
use crate::api::{ApiClient, TileResponse};
use crate::model::DecodedTile;
use crate::mvt;
use crate::store::{Stage, StageTimes};
use mly_contract::Tileset;
use mly_contract::tiles::TileId;

/// A corrupt tile body is fetched again this many times before the attempt fails.
const DECODE_RETRIES: u32 = 2;

/// What the tile server said about a tile.
pub(crate) enum Fetched {
    /// Unchanged since the ETag sent.
    NotModified,
    /// The tile's records (none for an empty, 403 or 404 answer) and its new ETag.
    Decoded { tile: DecodedTile, etag: Option<String> },
}

/// Fetches and decodes one tile. `etag`: ask for "not modified" against it.
pub(crate) async fn fetch_tile(
    api: &ApiClient,
    times: &StageTimes,
    tileset: Tileset,
    tile: TileId,
    etag: Option<&str>,
) -> Result<Fetched, TileFailure> {
    let mut attempt = 0;
    loop {
        let fetching = Instant::now();
        let response = cancellable(api.tile(tileset, tile, etag)).await;
        times.add(Stage::Fetch, fetching);
        let (decoded, new_etag) = match response? {
            TileResponse::NotModified => return Ok(Fetched::NotModified),
            TileResponse::Empty => (Ok(DecodedTile::default()), None),
            TileResponse::Data { bytes, etag } => {
                let decoding = Instant::now();
                let d = tokio::task::spawn_blocking(move || mvt::decode_tile(tileset, tile, &bytes))
                    .await
                    .map_err(|e| TileFailure::Decode(format!("decoder task failed: {e}")))?;
                times.add(Stage::Decode, decoding);
                (d.map_err(|e| e.to_string()), etag)
            }
        };
        match decoded {
            Ok(tile) => return Ok(Fetched::Decoded { tile, etag: new_etag }),
            Err(msg) if attempt < DECODE_RETRIES => {
                attempt += 1;
                warn!(error = %msg, attempt, "tile did not decode; fetching it again");
            }
            Err(msg) => return Err(TileFailure::Decode(msg)),
        }
    }
}
