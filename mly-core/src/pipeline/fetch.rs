//! The fetch and decode stages: one tile request (conditional on the stored ETag) and its MVT
//! decoded on the blocking pool; a body that does not decode is fetched again a few times (it is
//! usually a transfer fault) before the attempt fails.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// What the tiles in their heavy stages (decode, diff, enrich, commit) may hold at once, in KiB
/// of tile body: about 60,000 decoded images (some 65 bytes of MVT each), so memory stays flat
/// however many tiles wait on the network. A tile larger than all of it goes alone.
pub(crate) const MEMORY_BUDGET_KIB: u32 = 4 * 1024;

/// What the tile server said about a tile.
pub(crate) enum Fetched {
    /// Unchanged since the ETag sent.
    NotModified,
    /// The tile's records (none for an empty, 403 or 404 answer) and its new ETag; `memory` is
    /// its share of [`MEMORY_BUDGET_KIB`], held until the tile is committed.
    Decoded { tile: DecodedTile, etag: Option<String>, memory: Option<OwnedSemaphorePermit> },
}

/// Fetches and decodes one tile. `etag`: ask for "not modified" against it.
pub(crate) async fn fetch_tile(
    api: &ApiClient,
    memory: &Arc<Semaphore>,
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
        let mut permit = None;
        let (decoded, new_etag) = match response? {
            TileResponse::NotModified => return Ok(Fetched::NotModified),
            TileResponse::Empty => (Ok(DecodedTile::default()), None),
            TileResponse::Data { bytes, etag } => {
                let kib = u32::try_from(bytes.len() / 1024).unwrap_or(u32::MAX).clamp(1, MEMORY_BUDGET_KIB);
                // The semaphore is never closed; a failure would only mean no wait.
                permit = Arc::clone(memory).acquire_many_owned(kib).await.ok();
                let decoding = Instant::now();
                let d = tokio::task::spawn_blocking(move || mvt::decode_tile(tileset, tile, &bytes))
                    .await
                    .map_err(|e| TileFailure::Decode(format!("decoder task failed: {e}")))?;
                times.add(Stage::Decode, decoding);
                (d.map_err(|e| e.to_string()), etag)
            }
        };
        match decoded {
            Ok(tile) => return Ok(Fetched::Decoded { tile, etag: new_etag, memory: permit }),
            Err(msg) if attempt < DECODE_RETRIES => {
                attempt += 1;
                warn!(error = %msg, attempt, "tile did not decode; fetching it again");
            }
            Err(msg) => return Err(TileFailure::Decode(msg)),
        }
    }
}
