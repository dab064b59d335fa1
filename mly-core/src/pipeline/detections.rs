//! Detections of new images (50 images a call), their MVT-encoded shapes decoded to pixel
//! polygons with the image's size (SRID 0: image space, not the map).

use std::collections::HashMap;

use tracing::warn;

use crate::api::{ApiClient, ApiError};
use crate::model::{ImageDetails, ImageId};
use crate::mvt;
use crate::store::DetectionRow;

/// The detections of `ids`; `details` gives each image's width and height.
pub(crate) async fn fetch_detections(
    api: &ApiClient,
    ids: &[i64],
    details: &HashMap<i64, ImageDetails>,
) -> Result<Vec<DetectionRow>, ApiError> {
    let ids: Vec<ImageId> = ids.iter().copied().map(ImageId).collect();
    let by = api.detections_by_image(&ids).await?;
    let mut out = Vec::new();
    for det in by.found.into_iter().flatten() {
        let size = details.get(&det.image_id.0).and_then(|d| Some((d.width?, d.height?)));
        let pixel_geom_wkb = match (&det.geometry_b64, size) {
            (Some(b64), Some((w, h))) if w > 0 && h > 0 => match mvt::decode_detection(b64) {
                Ok(shape) => {
                    let px = mvt::to_pixels(&shape, w as u32, h as u32);
                    let mut buf = Vec::new();
                    wkb::writer::write_multi_polygon(&mut buf, &px, &Default::default()).ok().map(|_| buf)
                }
                Err(e) => {
                    warn!(detection = det.id, error = %e, "detection geometry did not decode; stored raw only");
                    None
                }
            },
            _ => None,
        };
        out.push(DetectionRow { det, pixel_geom_wkb });
    }
    Ok(out)
}
