//! The calls of the API: tiles, searches, multi-id lookups and their narrowing.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use reqwest::Url;
use reqwest::header::{self, HeaderMap, HeaderValue};
use serde_json::Value;

use super::transport::looks_like_markup;
use super::{ApiClient, JSON_CAP, LOOKUPS_IN_FLIGHT, Narrow, Reply, TILE_CAP, TIMEOUT_RETRIES, json, paged};
use crate::api::error::{ApiError, Class};
use crate::api::graph;
use crate::api::{
    ByIds, DETECTION_FIELDS, IMAGE_FIELDS, MAP_FEATURE_FIELDS, MAX_IDS_PER_CALL, SEARCH_LIMIT, Search,
    TileResponse,
};
use crate::model::{Detection, ImageDetails, ImageId, MapFeatureDetails, MapFeatureId};
use mly_contract::tiles::{Bbox, TileId};
use mly_contract::{Family, Tileset};

impl ApiClient {
    /// Fetches one vector tile; sends `If-None-Match` when an etag is given.
    pub async fn tile(
        &self,
        ts: Tileset,
        tile: TileId,
        etag: Option<&str>,
    ) -> Result<TileResponse, ApiError> {
        let context = format!("while fetching {} tile {}/{}/{}", ts.name(), tile.z, tile.x, tile.y);
        let mut url = self
            .url(&self.inner.tiles, &format!("maps/vtp/{}/2/{}/{}/{}", ts.name(), tile.z, tile.x, tile.y))?;
        url.query_pairs_mut().append_pair("access_token", self.inner.token.expose());
        let mut headers = HeaderMap::new();
        if let Some(e) = etag
            && let Ok(v) = HeaderValue::from_str(e)
        {
            headers.insert(header::IF_NONE_MATCH, v);
        }
        match self.execute(Family::Tiles, url, headers, &context, TILE_CAP, false).await? {
            Reply::Ok { status: 304, .. } => {
                self.inner.counters.not_modified.fetch_add(1, Ordering::Relaxed);
                Ok(TileResponse::NotModified)
            }
            Reply::Ok { status: 204, .. } => Ok(TileResponse::Empty),
            Reply::Ok { body, .. } if body.is_empty() => Ok(TileResponse::Empty),
            // A page where a tile should be: an MVT starts with a field tag, never with '<'.
            Reply::Ok { status, body, .. } if looks_like_markup(&body) => {
                Err(self.record_block(format!("HTTP {status} with an HTML page instead of a tile")))
            }
            Reply::Ok { headers, body, .. } => {
                let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
                Ok(TileResponse::Data { bytes: body, etag })
            }
            Reply::Refused { status: 403 | 404, .. } => Ok(TileResponse::Empty),
            Reply::Refused { status, class } => Err(self.refusal(&context, status, class)),
        }
    }

    /// One small Graph API search (`/images?bbox=…&limit=1&fields=id`, the call Mapillary's own
    /// clients use to check a token): Ok when the API answers it, `Auth` when it refuses the token.
    pub async fn check_token(&self, bbox: &Bbox) -> Result<(), ApiError> {
        let context = format!("while checking the token with a search in bbox {}", bbox.to_query());
        let mut url = self.url(&self.inner.graph, "images")?;
        url.query_pairs_mut()
            .append_pair("bbox", &bbox.to_query())
            .append_pair("fields", "id")
            .append_pair("limit", "1");
        match self.execute(Family::Search, url, HeaderMap::new(), &context, JSON_CAP, true).await? {
            Reply::Ok { .. } | Reply::Refused { class: Class::TooMuch(_), .. } => Ok(()),
            Reply::Refused { status, class } => Err(self.refusal(&context, status, class)),
        }
    }

    /// Whether a Graph search finds any image in `bbox` (`limit=1&fields=id`, a question the API
    /// answers even for its densest areas, §13.14). `None` when the service would not say (a
    /// query timeout or a refusal for volume): callers take that as "may hold images".
    pub async fn any_image(&self, bbox: &Bbox) -> Result<Option<bool>, ApiError> {
        let mut unknown = false;
        for part in bbox.split_antimeridian() {
            let context = format!("while probing for images in bbox {}", part.to_query());
            let mut url = self.url(&self.inner.graph, "images")?;
            url.query_pairs_mut()
                .append_pair("bbox", &part.to_query())
                .append_pair("fields", "id")
                .append_pair("limit", "1");
            match self.execute(Family::Search, url, HeaderMap::new(), &context, JSON_CAP, true).await? {
                Reply::Ok { body, .. } => {
                    let v = json(&body, &context)?;
                    if v["data"].as_array().is_some_and(|d| !d.is_empty()) {
                        return Ok(Some(true));
                    }
                }
                Reply::Refused { class: Class::TooMuch(_) | Class::Timeout(_), .. } => unknown = true,
                Reply::Refused { status, class } => return Err(self.refusal(&context, status, class)),
            }
        }
        Ok(if unknown { None } else { Some(false) })
    }

    /// All images in a bbox, or `TooMuch` when the box must be split.
    pub async fn search_images(&self, bbox: &Bbox) -> Result<Search<ImageDetails>, ApiError> {
        self.search("images", "images", IMAGE_FIELDS, bbox, graph::parse_image, None).await
    }

    /// All map features in a bbox, or `TooMuch` when the box must be split.
    pub async fn search_map_features(&self, bbox: &Bbox) -> Result<Search<MapFeatureDetails>, ApiError> {
        self.search("map_features", "map features", MAP_FEATURE_FIELDS, bbox, graph::parse_map_feature, None)
            .await
    }

    /// Images by id (any number; chunked by 50). Missing ids are found by bisection.
    pub async fn images_by_id(&self, ids: &[ImageId]) -> Result<ByIds<ImageDetails>, ApiError> {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        self.by_ids("images", &ids, IMAGE_FIELDS, |_, v| graph::parse_image(v)).await
    }

    /// Map features by id (any number; chunked by 50).
    pub async fn map_features_by_id(
        &self,
        ids: &[MapFeatureId],
    ) -> Result<ByIds<MapFeatureDetails>, ApiError> {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        self.by_ids("map features", &ids, MAP_FEATURE_FIELDS, |_, v| graph::parse_map_feature(v)).await
    }

    /// Detections of images via `/?ids=..&fields=detections.id,detections.value,detections.created_at,detections.geometry`.
    /// `found` holds one (possibly empty) list per existing image; each detection names its image.
    pub async fn detections_by_image(&self, ids: &[ImageId]) -> Result<ByIds<Vec<Detection>>, ApiError> {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        self.by_ids("detections of images", &ids, DETECTION_FIELDS, |id, v| {
            graph::parse_image_detections(v, ImageId(id))
        })
        .await
    }

    pub(crate) fn url(&self, base: &str, path: &str) -> Result<Url, ApiError> {
        Url::parse(&format!("{base}/{path}"))
            .map_err(|e| ApiError::Client(format!("cannot build a URL from {base:?} and {path:?}: {e}")))
    }

    pub(crate) async fn search<T>(
        &self,
        endpoint: &str,
        what: &str,
        fields: &str,
        bbox: &Bbox,
        parse: fn(&Value) -> Result<T, String>,
        filter: Option<&crate::model::ImageFilter>,
    ) -> Result<Search<T>, ApiError> {
        let mut all = Vec::new();
        // The API takes west < east only; a box across the antimeridian is two searches.
        for part in bbox.split_antimeridian() {
            let context = format!("while searching {what} in bbox {}", part.to_query());
            let mut url = self.url(&self.inner.graph, endpoint)?;
            url.query_pairs_mut().append_pair("bbox", &part.to_query());
            if let Some(f) = filter {
                paged::append_filter(f, &mut url);
            }
            url.query_pairs_mut()
                .append_pair("fields", fields)
                .append_pair("limit", &SEARCH_LIMIT.to_string());
            match self.execute(Family::Search, url, HeaderMap::new(), &context, JSON_CAP, true).await? {
                Reply::Ok { body, .. } => {
                    let v = json(&body, &context)?;
                    let items = graph::parse_collection(&v, parse).map_err(|m| ApiError::Decode {
                        context: context.clone(),
                        message: self.scrub(&m),
                    })?;
                    if items.len() >= SEARCH_LIMIT {
                        return Ok(Search::TooMuch);
                    }
                    all.extend(items);
                }
                // A query timeout outlasted its retry: a smaller box is what the service asks for.
                Reply::Refused { class: Class::TooMuch(_) | Class::Timeout(_), .. } => {
                    return Ok(Search::TooMuch);
                }
                Reply::Refused { status, class } => return Err(self.refusal(&context, status, class)),
            }
        }
        Ok(Search::Complete(all))
    }

    /// A multi-id lookup of any number of ids (chunked by 50), unknown ids found by bisection.
    pub(crate) async fn by_ids<T>(
        &self,
        what: &str,
        ids: &[i64],
        fields: &str,
        parse: impl Fn(i64, &Value) -> Result<T, String>,
    ) -> Result<ByIds<T>, ApiError> {
        self.lookup(what, ids, fields, parse, Narrow::Bisect).await
    }

    /// Images by id to confirm which are gone: each call is counted in `confirm`, and a batch
    /// refused for an unknown id is asked id by id (most of them are expected to be gone).
    pub async fn confirm_images(&self, ids: &[ImageId]) -> Result<ByIds<ImageDetails>, ApiError> {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        self.lookup("images", &ids, IMAGE_FIELDS, |_, v| graph::parse_image(v), Narrow::OneByOne).await
    }

    /// Map features by id to confirm which are gone (see [`ApiClient::confirm_images`]).
    pub async fn confirm_map_features(
        &self,
        ids: &[MapFeatureId],
    ) -> Result<ByIds<MapFeatureDetails>, ApiError> {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        self.lookup(
            "map features",
            &ids,
            MAP_FEATURE_FIELDS,
            |_, v| graph::parse_map_feature(v),
            Narrow::OneByOne,
        )
        .await
    }

    pub(crate) async fn lookup<T>(
        &self,
        what: &str,
        ids: &[i64],
        fields: &str,
        parse: impl Fn(i64, &Value) -> Result<T, String>,
        narrow: Narrow,
    ) -> Result<ByIds<T>, ApiError> {
        let mut seen = HashSet::new();
        let unique: Vec<i64> = ids.iter().copied().filter(|i| seen.insert(*i)).collect();
        // The batches of 50 overlap: the entity pacer keeps their rate, and their latencies add
        // up no more.
        // Built eagerly (they start only when polled): a closure in the stream would defeat the
        // compiler's proof that the whole future is Send.
        let batches: Vec<_> = unique
            .chunks(MAX_IDS_PER_CALL)
            .map(|chunk| self.lookup_batch(what, chunk, fields, &parse, narrow))
            .collect();
        let mut batches = futures::stream::iter(batches).buffer_unordered(LOOKUPS_IN_FLIGHT);
        let mut out = ByIds { found: Vec::new(), missing: Vec::new() };
        while let Some(r) = batches.next().await {
            let by = r?;
            out.found.extend(by.found);
            out.missing.extend(by.missing);
        }
        Ok(out)
    }

    /// One batch of at most 50 ids; a batch refused for an unknown id is split in halves (or
    /// asked id by id) until the culprits stand alone.
    pub(crate) async fn lookup_batch<T>(
        &self,
        what: &str,
        chunk: &[i64],
        fields: &str,
        parse: &impl Fn(i64, &Value) -> Result<T, String>,
        narrow: Narrow,
    ) -> Result<ByIds<T>, ApiError> {
        let mut out = ByIds { found: Vec::new(), missing: Vec::new() };
        // Depth-first bisection: a batch refused for an unknown id is split in halves
        // until the culprits stand alone.
        let mut stack: Vec<&[i64]> = vec![chunk];
        while let Some(batch) = stack.pop() {
            let list = batch.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            let context = format!("while looking up {} {what} ({}…)", batch.len(), batch[0]);
            let mut url = self.url(&self.inner.graph, "")?;
            url.query_pairs_mut().append_pair("ids", &list).append_pair("fields", fields);
            if narrow == Narrow::OneByOne {
                self.inner.counters.confirm.fetch_add(1, Ordering::Relaxed);
            }
            match self.execute(Family::Entity, url, HeaderMap::new(), &context, JSON_CAP, true).await? {
                Reply::Ok { body, .. } => {
                    let v = json(&body, &context)?;
                    let map = v.as_object().ok_or_else(|| ApiError::Decode {
                        context: context.clone(),
                        message: "the ?ids= response is not an object keyed by id".into(),
                    })?;
                    for id in batch {
                        match map.get(&id.to_string()) {
                            Some(item) => out.found.push(parse(*id, item).map_err(|m| ApiError::Decode {
                                context: context.clone(),
                                message: self.scrub(&m),
                            })?),
                            None => out.missing.push(*id),
                        }
                    }
                }
                Reply::Refused { class: Class::Missing(_), .. } if batch.len() == 1 => {
                    out.missing.push(batch[0]);
                }
                Reply::Refused { class: Class::Missing(_), .. } if narrow == Narrow::OneByOne => {
                    stack.extend(batch.chunks(1).rev());
                }
                // Unknown ids are found by halving; a timed-out batch asks for less the same way.
                Reply::Refused { class: Class::Missing(_) | Class::Timeout(_), .. } if batch.len() > 1 => {
                    let (a, b) = batch.split_at(batch.len() / 2);
                    stack.push(b);
                    stack.push(a);
                }
                Reply::Refused { class: Class::Timeout(m), .. } => {
                    return Err(ApiError::Transient {
                        context: context.clone(),
                        attempts: TIMEOUT_RETRIES + 1,
                        message: self.scrub(&format!("query timeout: {m}")),
                    });
                }
                Reply::Refused { status, class } => return Err(self.refusal(&context, status, class)),
            }
        }
        Ok(out)
    }
}
