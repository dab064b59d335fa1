//! Where a region has coverage, found without spending a tile request: a `limit=1` Graph
//! search per unknown z14 tile (searches are plentiful: 10,000 a minute, tile requests are
//! not: a few thousand a day per IP). A tile it finds empty is not fetched; one it cannot judge
//! (a query timeout, a refusal for volume, an error after retries) is fetched.

use futures::StreamExt;

use crate::api::{ApiClient, ApiError};
use mly_contract::tiles::{Bbox, EXTENT, TileId};

/// Probes in flight at once (the search pacer keeps the rate).
const PROBES_IN_FLIGHT: usize = 32;

/// What the probes found.
#[derive(Debug, Default)]
pub(crate) struct Probed {
    /// Tiles with at least one image, or that the API could not judge.
    pub(crate) with_images: Vec<TileId>,
    /// Tiles the API says hold no image.
    pub(crate) empty: Vec<TileId>,
}

/// The tile's box grown by a pixel on every side: an image the tile draws on its edge (its
/// position quantised to the tile's pixel grid) is found by the search too.
fn probe_box(t: TileId) -> Option<Bbox> {
    let b = t.bounds();
    let dx = (b.east - b.west) / f64::from(EXTENT);
    let dy = (b.north - b.south) / f64::from(EXTENT);
    Bbox::new(
        (b.west - dx).max(-180.0),
        (b.south - dy).max(-mly_contract::tiles::MAX_LAT),
        (b.east + dx).min(180.0),
        (b.north + dy).min(mly_contract::tiles::MAX_LAT),
    )
    .ok()
}

/// Probes `tiles`. Errors that stop a run (token refused, host unreachable, throttled beyond
/// retries) stop the plan; any other failure makes the tile one to fetch.
pub(crate) async fn probe(api: &ApiClient, tiles: &[TileId]) -> Result<Probed, ApiError> {
    let mut results = futures::stream::iter(tiles.iter().copied().map(|t| async move {
        // After an interrupt no new probe starts: the tile is one to fetch (the safe side), and
        // the run stops before it fetches anything.
        if crate::pipeline::interrupt::is_set() {
            return (t, Ok(None));
        }
        let Some(b) = probe_box(t) else { return (t, Ok(None)) };
        (t, api.any_image(&b).await)
    }))
    .buffer_unordered(PROBES_IN_FLIGHT);
    let mut out = Probed::default();
    while let Some((t, r)) = results.next().await {
        match r {
            Ok(Some(false)) => out.empty.push(t),
            Ok(_) => out.with_images.push(t),
            Err(e) if e.is_auth() || e.is_unreachable() || matches!(e, ApiError::Blocked { .. }) => {
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(tile = %t, error = %e, "coverage probe failed; the tile will be fetched");
                out.with_images.push(t);
            }
        }
    }
    out.with_images.sort_unstable();
    out.empty.sort_unstable();
    Ok(out)
}
