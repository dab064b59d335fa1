//! Deletion needs proof: live records a tile no longer lists are checked by id (multi-id
//! lookups of 50). Those the Graph API does not find (code 100/33) are gone; found ones are kept,
//! in this tile or in the tile their position is in now.

use tracing::info;

use crate::api::{ApiClient, ApiError};
use crate::model::{ImageId, MapFeatureId};
use crate::store::{MovedAway, Vanished};
use mly_contract::Tileset;
use mly_contract::tiles::{HARVEST_ZOOM, TileId};

/// What became of `ids`, live records of `tile` in `tileset` that the tile no longer lists.
pub(crate) async fn confirm_vanished(
    api: &ApiClient,
    tileset: Tileset,
    tile: TileId,
    ids: &[i64],
) -> Result<Vanished, ApiError> {
    let mut out = Vanished::default();
    if ids.is_empty() {
        return Ok(out);
    }
    // (id, position the tile would show) of each record the API still has.
    let found: Vec<(i64, Option<(f64, f64)>)> = if tileset.is_coverage() {
        let by = api.confirm_images(&ids.iter().copied().map(ImageId).collect::<Vec<_>>()).await?;
        out.deleted = by.missing;
        let computed = tileset == Tileset::ComputedPublic;
        by.found
            .into_iter()
            .map(|d| (d.id.0, if computed { d.computed_geometry.or(d.geometry) } else { d.geometry }))
            .collect()
    } else {
        let ids: Vec<MapFeatureId> = ids.iter().copied().map(MapFeatureId).collect();
        let by = api.confirm_map_features(&ids).await?;
        out.deleted = by.missing;
        by.found.into_iter().map(|d| (d.id.0, d.geometry)).collect()
    };
    for (id, pos) in found {
        match pos.map(|(lon, lat)| (TileId::containing(HARVEST_ZOOM, lon, lat), lon, lat)) {
            Some((to, lon, lat)) if to != tile => out.moved.push(MovedAway { id, tile: to, lon, lat }),
            _ => out.missing.push(id),
        }
    }
    if !out.missing.is_empty() || !out.moved.is_empty() {
        info!(%tileset, %tile, gone = out.deleted.len(), kept = out.missing.len(), moved = out.moved.len(),
            "records missing from the tile checked by id; only confirmed ones are deleted");
    }
    Ok(out)
}
