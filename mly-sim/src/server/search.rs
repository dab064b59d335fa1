//! The Graph API searches: `/images` (by bbox, or paged by ids, sequences or creator) and
//! `/map_features` by bbox.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::AppState;
use super::answer::{ApiError, too_much_data};
use super::params::{ImageFilter, decode_cursor, encode_cursor, glob, parse_bbox, parse_limit, pct};
use super::route::Params;
use crate::encode::home_pixel;
use crate::graph::{self, Fields};
use crate::world::{SimFeature, SimImage, TileWorld};
use mly_contract::tiles::{Bbox, EXTENT, HARVEST_ZOOM, TileId};

/// The position a point has after the tile encoder quantised it to its z14 tile's pixel grid: bbox
/// searches must agree exactly with what the tiles show.
fn tile_position(tile: TileId, lon: f64, lat: f64) -> (f64, f64) {
    let (px, py) = home_pixel(tile, lon, lat);
    tile.pixel_to_lonlat(px as f64, py as f64, EXTENT)
}

/// The z14 tiles a bbox touches.
fn tiles_of_bbox(b: &Bbox) -> Vec<TileId> {
    let n = 1u32 << HARVEST_ZOOM;
    let mut out = Vec::new();
    for part in b.split_antimeridian() {
        let tl = TileId::containing(HARVEST_ZOOM, part.west, part.north);
        let br = TileId::containing(HARVEST_ZOOM, part.east, part.south);
        for x in tl.x.min(n - 1)..=br.x.min(n - 1) {
            for y in tl.y.min(n - 1)..=br.y.min(n - 1) {
                if let Ok(t) = TileId::new(HARVEST_ZOOM, x, y) {
                    out.push(t);
                }
            }
        }
    }
    out
}

/// A record a bbox search finds: where it lies and which records of a tile are of its kind.
pub(super) trait Searchable: Clone {
    /// The records of this kind whose home is `tw`.
    fn of_tile(tw: &TileWorld) -> &[Self];
    /// Its (original) position.
    fn lonlat(&self) -> (f64, f64);
}

impl Searchable for SimImage {
    fn of_tile(tw: &TileWorld) -> &[SimImage] {
        &tw.images
    }
    fn lonlat(&self) -> (f64, f64) {
        (self.lon, self.lat)
    }
}

impl Searchable for SimFeature {
    fn of_tile(tw: &TileWorld) -> &[SimFeature] {
        &tw.features
    }
    fn lonlat(&self) -> (f64, f64) {
        (self.lon, self.lat)
    }
}

impl AppState {
    /// The first `limit` records inside `b` (at their tile-quantised positions, tile by tile) that
    /// `wanted` accepts; refused when filling the answer means reading more than `--dense-limit`
    /// records inside the bbox. The refusal is about what the service must read (§13.14: `limit=1`
    /// on the densest bbox answers): an answer that fills up early reads little, a filter that
    /// rejects most of a dense area reads it all.
    fn scan_bbox<T: Searchable>(
        &self,
        b: &Bbox,
        limit: usize,
        wanted: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, ApiError> {
        let mut found = Vec::new();
        let mut read = 0usize;
        for t in tiles_of_bbox(b) {
            let tw = self.world.tile(t, self.epoch);
            for rec in T::of_tile(&tw) {
                let (lon, lat) = rec.lonlat();
                let (lon, lat) = tile_position(tw.tile, lon, lat);
                if !b.contains(lon, lat) {
                    continue;
                }
                read += 1;
                if read > self.dense_limit {
                    return Err(too_much_data());
                }
                if wanted(rec) {
                    found.push(rec.clone());
                    if found.len() == limit {
                        return Ok(found);
                    }
                }
            }
        }
        Ok(found)
    }

    /// `/images`: a bbox search (one page, capped at `limit`, refused when the service would have
    /// to read more than `--dense-limit` matches to fill it), or a search by `image_ids`,
    /// `sequence_id(s)` or `creator_username` without a bbox (newest first, paged with
    /// `paging.cursors.after` / `paging.next`). Every other parameter narrows either.
    pub(super) fn search_images(&self, p: &Params, f: &Fields, now_s: i64) -> Result<Value, ApiError> {
        let limit = parse_limit(p)?;
        let filter = ImageFilter::parse(p, self.max_ids)?;
        let ctx = self.ctx(now_s);
        let render = |imgs: &[SimImage]| {
            imgs.iter().map(|i| graph::image_json(&ctx, i, f)).collect::<Result<Vec<_>, _>>()
        };
        if let Some(b) = p.get("bbox") {
            let found = self.scan_bbox(&parse_bbox(b)?, limit, |img| filter.matches(img))?;
            return Ok(json!({ "data": render(&found)? }));
        }
        let all: Arc<Vec<SimImage>> = if let Some(ids) = &filter.image_ids {
            Arc::new(ids.iter().filter_map(|id| self.world.image(*id, self.epoch)).collect())
        } else if let Some(seqs) = &filter.sequences {
            let mut v = Vec::new();
            for s in seqs {
                if let Some(seq) = self.world.sequence(s, self.epoch) {
                    v.extend(seq.image_ids.iter().filter_map(|i| self.world.image(*i, self.epoch)));
                }
            }
            Arc::new(v)
        } else if let Some(name) = &filter.creator {
            self.creator_images(name)
        } else {
            return Err(ApiError::param(
                "(#100) One of bbox, image_ids, sequence_ids or creator_username is required",
            ));
        };
        let mut hits: Vec<&SimImage> = all.iter().filter(|i| filter.matches(i)).collect();
        hits.sort_unstable_by_key(|i| std::cmp::Reverse((i.captured_at_ms, i.id)));
        hits.dedup_by_key(|i| i.id);
        let start = match p.get("after") {
            None => 0,
            Some(c) => {
                let key = decode_cursor(c).ok_or_else(|| ApiError::param("(#100) Invalid cursor"))?;
                // Newest first: the next page starts at the first image older than the cursor.
                hits.partition_point(|i| (i.captured_at_ms, i.id) >= key)
            }
        };
        let page: Vec<SimImage> = hits.iter().skip(start).take(limit).map(|i| (*i).clone()).collect();
        let mut out = Map::new();
        out.insert("data".into(), Value::Array(render(&page)?));
        if let (Some(first), Some(last)) = (page.first(), page.last()) {
            let after = encode_cursor(last);
            let mut paging = json!({"cursors": {"before": encode_cursor(first), "after": after}});
            if start + page.len() < hits.len() {
                paging["next"] = json!(self.next_url("/images", p, &after));
            }
            out.insert("paging".into(), paging);
        }
        Ok(Value::Object(out))
    }

    /// Every image of the creators called `name`, cached for the paging that follows.
    fn creator_images(&self, name: &str) -> Arc<Vec<SimImage>> {
        let key = (name.to_string(), self.epoch);
        let mut cache = self.creator_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, v)) = cache.as_ref()
            && *k == key
        {
            return v.clone();
        }
        let mut v = Vec::new();
        for user in self.world.users_named(name) {
            for t in self.world.creator_tiles(user) {
                let tw = self.world.tile(t, self.epoch);
                v.extend(tw.images.iter().filter(|i| i.creator_id == user).cloned());
            }
        }
        let v = Arc::new(v);
        *cache = Some((key, v.clone()));
        v
    }

    /// The URL of the next page: this request without the token, with `after` set (§13.8).
    fn next_url(&self, path: &str, p: &Params, after: &str) -> String {
        let mut q: Vec<String> =
            p.0.iter()
                .filter(|(k, _)| k != "access_token" && k != "after")
                .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
                .collect();
        q.push(format!("after={}", pct(after)));
        format!("{}{path}?{}", self.public_url, q.join("&"))
    }

    /// `/map_features`: a bbox search, narrowed by `object_values` (`*` wildcards).
    pub(super) fn search_features(&self, p: &Params, f: &Fields, now_s: i64) -> Result<Value, ApiError> {
        let limit = parse_limit(p)?;
        let Some(b) = p.get("bbox") else {
            return Err(ApiError::param("(#100) Missing parameter: bbox"));
        };
        let b = parse_bbox(b)?;
        let values: Vec<&str> =
            p.get("object_values").map(|v| v.split(',').map(str::trim).collect()).unwrap_or_default();
        let found = self.scan_bbox(&b, limit, |f: &SimFeature| {
            values.is_empty() || values.iter().any(|v| glob(v, &f.value))
        })?;
        let data = found
            .iter()
            .map(|x| graph::feature_json(&self.ctx(now_s), x, f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json!({ "data": data }))
    }
}
