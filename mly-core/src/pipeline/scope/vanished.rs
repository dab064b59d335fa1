//! The deletion check of a complete pass: the scope's live records in the database (its images
//! by creator / organization / window, and the map features seen in them) that the pass did not
//! list are looked up by id (multi-id lookups of 50, the confirm path of tiles). Only those the
//! Graph API answers "not found" are tombstoned; the others are still there (a search can miss a
//! record a lookup finds) and are written with what the lookup says.

use super::plan::{Keep, kind_of};
use super::{ScopeFailure, cancellable};
use crate::api::ApiClient;
use crate::jobs::RunId;
use crate::jobs::scopes::{self, Unseen};
use crate::model::ImageFilter;
use crate::model::{ImageId, MapFeatureId};
use crate::store::{ScopeFeature, ScopeRows, Store, image_position};
use mly_contract::FeatureKind;

/// What the check found.
pub(crate) struct Checked {
    /// The rows to write: tombstones for what is gone, fresh details for what is still there.
    pub(crate) rows: ScopeRows,
    /// Records looked up.
    pub(crate) checked: u64,
    /// Of them, still there upstream.
    pub(crate) still_there: u64,
}

/// Looks up the scope's stored records the pass did not list.
pub(crate) async fn check(
    store: &Store,
    api: &ApiClient,
    run: RunId,
    filter: &ImageFilter,
    keep: &Keep,
    kinds: &[FeatureKind],
) -> Result<Checked, ScopeFailure> {
    let in_region = |u: &Unseen| keep.position(u.lon, u.lat);
    let images: Vec<i64> = scopes::unseen_images(store, run, filter)
        .await
        .map_err(|e| ScopeFailure::Pipeline(e.into()))?
        .into_iter()
        .filter(in_region)
        .map(|u| u.id)
        .collect();
    let features: Vec<i64> = if kinds.is_empty() {
        Vec::new()
    } else {
        scopes::unseen_features(store, run, filter)
            .await
            .map_err(|e| ScopeFailure::Pipeline(e.into()))?
            .into_iter()
            .filter(in_region)
            .map(|u| u.id)
            .collect()
    };
    let mut out = Checked { rows: ScopeRows::default(), checked: 0, still_there: 0 };
    if !images.is_empty() {
        let ids: Vec<ImageId> = images.iter().copied().map(ImageId).collect();
        let by = cancellable(api.confirm_images(&ids)).await?;
        out.checked += images.len() as u64;
        out.still_there += by.found.len() as u64;
        out.rows.gone_images = by.missing;
        out.rows.images = by.found.into_iter().filter(|d| image_position(d).is_some()).collect();
    }
    if !features.is_empty() {
        let ids: Vec<MapFeatureId> = features.iter().copied().map(MapFeatureId).collect();
        let by = cancellable(api.confirm_map_features(&ids)).await?;
        out.checked += features.len() as u64;
        out.still_there += by.found.len() as u64;
        out.rows.gone_features = by.missing;
        out.rows.features = by
            .found
            .into_iter()
            .filter(|d| d.geometry.is_some())
            .filter_map(|d| kind_of(d.object_type.as_deref()).map(|kind| ScopeFeature { kind, details: d }))
            .collect();
    }
    if out.checked > 0 {
        tracing::info!(run = %run, checked = out.checked, gone = out.rows.gone_images.len() + out.rows.gone_features.len(),
            still_there = out.still_there, "records of the scope the pass did not list checked by id; only confirmed ones are deleted");
    }
    Ok(out)
}
