//! The Graph API routes other than searches: entities by id, `?ids=`, detections, `/image_ids`.

use serde_json::{Map, Value, json};

use super::AppState;
use super::answer::ApiError;
use super::params::id_list;
use super::route::{Params, Route};
use crate::graph::{self, Fields};

impl AppState {
    /// An image, map feature or user by id.
    pub(super) fn entity(&self, id: &str, f: &Fields, now_s: i64) -> Result<Value, ApiError> {
        let Ok(n) = id.parse::<i64>() else { return Err(ApiError::not_found(id)) };
        if let Some(img) = self.world.image(n, self.epoch) {
            return Ok(graph::image_json(&self.ctx(now_s), &img, f)?);
        }
        if let Some(feat) = self.world.map_feature(n, self.epoch) {
            return Ok(graph::feature_json(&self.ctx(now_s), &feat, f)?);
        }
        if let Some(user) = self.world.user(n) {
            return Ok(graph::user_json(&user, f)?);
        }
        Err(ApiError::not_found(id))
    }

    /// Handles every Graph route (runs on the blocking pool: it may generate tiles of the world).
    pub(super) fn graph(&self, route: &Route, p: &Params) -> Result<Value, ApiError> {
        let now_s = chrono::Utc::now().timestamp();
        let f = Fields::parse(p.get("fields"));
        match route {
            Route::Entity(id) => self.entity(id, &f, now_s),
            Route::Multi => {
                let Some(ids) = p.get("ids") else {
                    return Err(ApiError::param("(#100) Missing parameter: ids"));
                };
                let ids = id_list(ids, self.max_ids)?;
                let mut m = Map::new();
                for id in ids {
                    let v = self.entity(&id, &f, now_s)?;
                    m.insert(id, v);
                }
                Ok(Value::Object(m))
            }
            Route::Detections(id) => {
                let Ok(n) = id.parse::<i64>() else { return Err(ApiError::not_found(id)) };
                let dets = self
                    .world
                    .detections_of_image(n, self.epoch)
                    .or_else(|| self.world.detections_of_feature(n, self.epoch))
                    .ok_or_else(|| ApiError::not_found(id))?;
                Ok(graph::detections_json(&self.ctx(now_s), &dets, &f)?)
            }
            Route::ImageIds => {
                let Some(seq) = p.get("sequence_id") else {
                    return Err(ApiError::param("(#100) Missing parameter: sequence_id"));
                };
                let ids = self.world.sequence(seq, self.epoch).map(|s| s.image_ids).unwrap_or_default();
                let data: Vec<Value> = ids.iter().map(|i| json!({"id": i.to_string()})).collect();
                Ok(json!({ "data": data }))
            }
            Route::Images => self.search_images(p, &f, now_s),
            Route::MapFeatures => self.search_features(p, &f, now_s),
            Route::Unknown(path) => Err(ApiError::not_found(path.trim_start_matches('/'))),
            Route::Stats | Route::Tile { .. } => Err(ApiError::param("(#100) Unsupported request")),
        }
    }
}
