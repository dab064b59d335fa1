//! The listing stage: the next page of a scope, from where the listing stands. A paged scope
//! asks for the page after the stored cursor; an organization alone searches the next z14 cell
//! of its region with its filter (a cell with more than a search answers is split, down to z18).

use super::plan::Source;
use super::quadtree::search_split;
use super::{ScopeFailure, cancellable};
use crate::api::ApiClient;
use crate::jobs::scopes::Position;
use crate::model::ImageDetails;
use crate::model::ImageFilter;
use mly_contract::tiles::TileId;

/// One page of the listing.
pub(crate) struct Listed {
    /// What the page lists (before the scope's own filter).
    pub(crate) items: Vec<ImageDetails>,
    /// Where the listing stands after it.
    pub(crate) next: Position,
    /// It was the last page.
    pub(crate) last: bool,
}

/// The page at `at`. `filter` is the pass's (its window may start later than the scope's).
pub(crate) async fn next_page(
    api: &ApiClient,
    source: &Source,
    filter: &ImageFilter,
    at: &Position,
) -> Result<Listed, ScopeFailure> {
    match source {
        Source::Paged => {
            let page = cancellable(api.images_page(filter, at.after.as_deref())).await?;
            let last = page.next.is_none();
            Ok(Listed { items: page.items, next: Position { after: page.next, cell: at.cell }, last })
        }
        Source::Cells(cells) => {
            let i = usize::try_from(at.cell).unwrap_or(usize::MAX);
            let next = Position { after: None, cell: at.cell.saturating_add(1) };
            let Some(cell) = cells.get(i) else {
                return Ok(Listed { items: Vec::new(), next: at.clone(), last: true });
            };
            let items = search_cell(api, *cell, filter).await?;
            Ok(Listed { items, next, last: i + 1 >= cells.len() })
        }
    }
}

/// Every image of `cell` that passes `filter`, splitting the cell while a search holds too much.
async fn search_cell(
    api: &ApiClient,
    cell: TileId,
    filter: &ImageFilter,
) -> Result<Vec<ImageDetails>, ScopeFailure> {
    let mut found =
        search_split(cell, |c| async move { api.search_images_filtered(&c.bounds(), filter).await }).await?;
    // The tile pixel grid puts every image in exactly one cell; sorted for a stable write.
    found.sort_unstable_by_key(|d| d.id);
    found.dedup_by_key(|d| d.id);
    Ok(found)
}
