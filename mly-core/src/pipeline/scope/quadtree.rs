//! A search of one cell that splits the cell while an answer would hold too much (the result
//! cap, or the service's "reduce the amount of data"), down to z18, as the enrichment quadtree
//! does. The records come back in no particular order: callers sort them.

use std::future::Future;

use futures::StreamExt;

use super::{ScopeFailure, cancellable};
use crate::api::{ApiError, Search};
use mly_contract::tiles::{MAX_ENRICH_ZOOM, TileId};

/// Searches of one cell's quadtree in flight at once.
const SEARCH_PARALLELISM: usize = 4;

/// Every record `search` finds in `cell` and, where it holds too much, in its quarters.
pub(crate) async fn search_split<T, F, Fut>(cell: TileId, search: F) -> Result<Vec<T>, ScopeFailure>
where
    F: Fn(TileId) -> Fut,
    Fut: Future<Output = Result<Search<T>, ApiError>>,
{
    let mut found = Vec::new();
    let mut cells = vec![cell];
    while !cells.is_empty() {
        let results: Vec<(TileId, Result<Search<T>, ScopeFailure>)> = futures::stream::iter(cells.drain(..))
            .map(|c| {
                let f = search(c);
                async move { (c, cancellable(f).await) }
            })
            .buffer_unordered(SEARCH_PARALLELISM)
            .collect()
            .await;
        let mut next = Vec::new();
        for (c, r) in results {
            match r? {
                Search::Complete(items) => found.extend(items),
                Search::TooMuch if c.z < MAX_ENRICH_ZOOM => next.extend(c.children()),
                Search::TooMuch => return Err(ScopeFailure::TooDense(c)),
            }
        }
        next.sort_unstable();
        cells = next;
    }
    Ok(found)
}
