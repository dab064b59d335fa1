//! Graph API JSON rendering: field selection and the exact shapes of the real service.
//!
//! Ids are strings, `captured_at` is ms, `first_seen_at`/`last_seen_at`/`created_at` are ISO strings
//! with a `+0000` offset, absent values are omitted (never `null`).

use serde_json::{Map, Value, json};

use crate::cdn::{Cdn, Thumb};
use crate::encode::detection_geometry_b64;
use crate::world::{SimDetection, SimFeature, SimImage, SimUser, World};
use mly_contract::hash::splitmix64 as splitmix;

/// What rendering a Graph answer needs besides the record: the world (for edges), the epoch, the
/// current time (URL expiry) and where image URLs point.
pub(crate) struct Ctx<'a> {
    /// The world.
    pub(crate) world: &'a World,
    /// Its epoch.
    pub(crate) epoch: u32,
    /// Seconds since the Unix epoch.
    pub(crate) now_s: i64,
    /// Image URL base and signing.
    pub(crate) cdn: &'a Cdn,
}

/// A requested field the node type does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("(#100) Tried accessing nonexisting field ({field}) on node type ({node})")]
pub(crate) struct UnknownField {
    /// The offending field name as requested.
    pub(crate) field: String,
    /// Graph node type (`Image`, `MapFeature`, `User`, `Detection`).
    pub(crate) node: &'static str,
}

/// Parsed `fields=` parameter: top-level names in order, plus sub-fields of edges (`detections.value`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Fields {
    top: Vec<String>,
    sub: Vec<(String, Vec<String>)>,
}

impl Fields {
    /// Parses `a,b,detections.value,detections.geometry`; `None` or empty means only `id`.
    pub(crate) fn parse(s: Option<&str>) -> Fields {
        let mut f = Fields::default();
        for raw in s.unwrap_or("").split(',') {
            let name = raw.trim();
            if name.is_empty() {
                continue;
            }
            let (head, rest) = match name.split_once('.') {
                Some((h, r)) => (h, Some(r)),
                None => (name, None),
            };
            if !f.top.iter().any(|t| t == head) {
                f.top.push(head.to_string());
            }
            if let Some(r) = rest {
                match f.sub.iter_mut().find(|(h, _)| h == head) {
                    Some((_, v)) => v.push(r.to_string()),
                    None => f.sub.push((head.to_string(), vec![r.to_string()])),
                }
            }
        }
        if f.top.is_empty() {
            f.top.push("id".into());
        }
        f
    }

    /// Fields naming only `id`, for edges requested without sub-fields.
    pub(crate) fn only_id() -> Fields {
        Fields { top: vec!["id".into()], sub: vec![] }
    }

    fn sub_of(&self, edge: &str) -> Option<Fields> {
        self.sub.iter().find(|(h, _)| h == edge).map(|(_, v)| Fields::parse(Some(&v.join(","))))
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.top.iter().map(String::as_str)
    }
}

/// Formats ms since the epoch the way the Graph API does: `2017-08-23T21:32:26+0000`.
pub(crate) fn iso(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|d| d.format("%Y-%m-%dT%H:%M:%S%z").to_string())
}

fn point(lon: f64, lat: f64) -> Value {
    json!({"type": "Point", "coordinates": [lon, lat]})
}

/// Derived deterministic ids (mesh, sfm cluster) look like other Mapillary ids: 15 digits.
fn derived_id(id: i64, salt: u64) -> String {
    (100_000_000_000_000 + splitmix(id as u64 ^ salt) % 900_000_000_000_000).to_string()
}

/// A signed-looking Meta CDN URL with an `oe=` hex expiry, for `mesh` and `sfm_cluster` (which the
/// simulator does not serve; thumbnails are served, see [`Cdn`]).
fn cdn_url(id: i64, salt: u64, stp: Option<&str>, now_s: i64) -> String {
    let h1 = splitmix(id as u64 ^ salt);
    let h2 = splitmix(h1);
    let h3 = splitmix(h2);
    // URLs expire about three days after they are handed out, as real signed URLs do.
    let oe = (now_s + 3 * 86_400) as u64;
    let stp = stp.map(|s| format!("stp={s}&")).unwrap_or_default();
    format!(
        "https://scontent-fra5-1.xx.fbcdn.net/m1/v/t6/An{h1:016x}{h2:016x}?{stp}_nc_gid={h3:x}&ccb=10-5&oh=00_Af{h2:016x}{h3:016x}&oe={oe:08X}&_nc_sid=201bca"
    )
}

/// Large integers (`merge_cc`) as the real service writes them: a JSON float of 14 significant
/// digits (`4.546427159383e+18` in every JOSM capture), so the low digits are lost.
fn big_int_as_float(n: u64) -> Value {
    let rounded: f64 = format!("{:.13e}", n as f64).parse().unwrap_or(n as f64);
    json!(rounded)
}

/// About one image in 200 reports its (negative) EXIF altitude wrapped to an unsigned 32-bit
/// integer, as the live service does (§13.10: 4294967281 for −15 m).
pub(crate) fn wrapped_altitude(id: i64) -> Option<u32> {
    let h = splitmix(id as u64 ^ 0x616c_7469_7475_6465);
    h.is_multiple_of(200).then(|| (-(1 + (h >> 32) as i64 % 40)) as i32 as u32)
}

/// Renders one image with the requested fields.
pub(crate) fn image_json(ctx: &Ctx<'_>, img: &SimImage, f: &Fields) -> Result<Value, UnknownField> {
    let (world, epoch, now_s) = (ctx.world, ctx.epoch, ctx.now_s);
    object(f, |name| {
        Ok(match name {
            "id" => Some(Value::String(img.id.to_string())),
            "altitude" => Some(match wrapped_altitude(img.id) {
                Some(w) => json!(w),
                None => json!(img.altitude),
            }),
            "atomic_scale" => Some(json!(img.atomic_scale)),
            "camera_parameters" => (!img.camera_parameters.is_empty()).then(|| json!(img.camera_parameters)),
            "camera_type" => Some(json!(img.camera_type)),
            "captured_at" => Some(json!(img.captured_at_ms)),
            "compass_angle" => Some(json!(img.compass_angle)),
            "computed_altitude" => Some(json!(img.computed_altitude)),
            "computed_compass_angle" => Some(json!(img.computed_compass_angle)),
            "computed_geometry" => img.computed.map(|(lon, lat)| point(lon, lat)),
            "computed_rotation" => Some(json!(img.computed_rotation)),
            "creator" => Some(json!({"username": img.creator_username, "id": img.creator_id.to_string()})),
            "exif_orientation" => Some(json!(img.exif_orientation)),
            "geometry" => Some(point(img.lon, img.lat)),
            "height" => Some(json!(img.height)),
            "width" => Some(json!(img.width)),
            "is_pano" => Some(json!(img.is_pano)),
            "make" => (!img.make.is_empty()).then(|| json!(img.make)),
            "model" => (!img.model.is_empty()).then(|| json!(img.model)),
            "merge_cc" => Some(big_int_as_float(img.merge_cc)),
            "mesh" => img
                .has_mesh
                .then(|| json!({"id": derived_id(img.id, 1), "url": cdn_url(img.id, 11, None, now_s)})),
            "sfm_cluster" => {
                Some(json!({"id": derived_id(img.id, 2), "url": cdn_url(img.id, 12, None, now_s)}))
            }
            "organization" => img.organization_id.map(|o| json!({"id": o.to_string()})),
            "quality_score" => img.quality_score.map(|q| json!(q)),
            "sequence" => Some(json!(img.sequence_id)),
            thumb @ ("thumb_256_url" | "thumb_1024_url" | "thumb_2048_url" | "thumb_original_url") => {
                Thumb::from_field(thumb).map(|t| json!(ctx.cdn.url(img, t, now_s)))
            }
            "detections" => {
                let sub = f.sub_of("detections").unwrap_or_else(Fields::only_id);
                let dets = world.detections_of_image(img.id, epoch).unwrap_or_default();
                Some(detections_json(ctx, &dets, &sub)?)
            }
            other => return Err(UnknownField { field: other.to_string(), node: "Image" }),
        })
    })
}

/// Renders one map feature with the requested fields.
pub(crate) fn feature_json(ctx: &Ctx<'_>, feat: &SimFeature, f: &Fields) -> Result<Value, UnknownField> {
    let (world, epoch) = (ctx.world, ctx.epoch);
    object(f, |name| {
        Ok(match name {
            "id" => Some(Value::String(feat.id.to_string())),
            "aligned_direction" => Some(json!(feat.aligned_direction)),
            "first_seen_at" => iso(feat.first_seen_at_ms).map(Value::String),
            "last_seen_at" => iso(feat.last_seen_at_ms).map(Value::String),
            "object_value" => Some(json!(feat.value)),
            // The live service answers `trafficsign` (no underscore), unlike its docs.
            "object_type" => Some(json!(match feat.kind {
                mly_contract::FeatureKind::Point => "point",
                mly_contract::FeatureKind::TrafficSign => "trafficsign",
            })),
            "geometry" => Some(point(feat.lon, feat.lat)),
            "images" => {
                let sub = f.sub_of("images");
                let mut data = Vec::new();
                for id in &feat.image_ids {
                    let Some(img) = world.image(*id, epoch) else { continue };
                    data.push(match &sub {
                        Some(sub) => image_json(ctx, &img, sub)?,
                        None => json!({"geometry": point(img.lon, img.lat), "id": img.id.to_string()}),
                    });
                }
                Some(json!({ "data": data }))
            }
            "detections" => {
                let sub = f.sub_of("detections").unwrap_or_else(Fields::only_id);
                let dets = world.detections_of_feature(feat.id, epoch).unwrap_or_default();
                Some(detections_json(ctx, &dets, &sub)?)
            }
            other => return Err(UnknownField { field: other.to_string(), node: "MapFeature" }),
        })
    })
}

/// Renders one user.
pub(crate) fn user_json(user: &SimUser, f: &Fields) -> Result<Value, UnknownField> {
    object(f, |name| match name {
        "id" => Ok(Some(json!(user.id.to_string()))),
        "username" => Ok(Some(json!(user.username))),
        other => Err(UnknownField { field: other.to_string(), node: "User" }),
    })
}

/// An object of the requested fields (serde_json sorts keys): `field` renders one (`None` when the
/// record has no value, which the API omits rather than sending null) or rejects an unknown name.
/// `id` comes back whatever `fields` lists (§13.12: Vespucci asks `thumb_2048_url,computed_geometry`
/// and gets `id` too).
fn object(
    f: &Fields,
    mut field: impl FnMut(&str) -> Result<Option<Value>, UnknownField>,
) -> Result<Value, UnknownField> {
    let mut m = Map::new();
    for name in f.names() {
        if let Some(v) = field(name)? {
            m.insert(name.to_string(), v);
        }
    }
    if !m.contains_key("id")
        && let Some(v) = field("id")?
    {
        m.insert("id".to_string(), v);
    }
    Ok(Value::Object(m))
}

/// Renders one detection.
pub(crate) fn detection_json(ctx: &Ctx<'_>, d: &SimDetection, f: &Fields) -> Result<Value, UnknownField> {
    let (world, epoch) = (ctx.world, ctx.epoch);
    object(f, |name| {
        Ok(match name {
            "id" => Some(json!(d.id.to_string())),
            "created_at" => iso(d.created_at_ms).map(Value::String),
            "geometry" => Some(json!(detection_geometry_b64(&d.polygon_px))),
            "value" => Some(json!(d.value)),
            "image" => world
                .image(d.image_id, epoch)
                .map(|img| json!({"geometry": point(img.lon, img.lat), "id": img.id.to_string()})),
            // Not in the captured payloads; offered so a client can link detections to features.
            "map_feature" => d.map_feature_id.map(|id| json!({"id": id.to_string()})),
            other => return Err(UnknownField { field: other.to_string(), node: "Detection" }),
        })
    })
}

/// `{"data":[...]}` of detections.
pub(crate) fn detections_json(
    ctx: &Ctx<'_>,
    dets: &[SimDetection],
    f: &Fields,
) -> Result<Value, UnknownField> {
    let data = dets.iter().map(|d| detection_json(ctx, d, f)).collect::<Result<Vec<_>, _>>()?;
    Ok(json!({ "data": data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_edges_and_defaults() {
        let f = Fields::parse(Some("id,detections.value,detections.geometry,images"));
        assert_eq!(f.top, vec!["id", "detections", "images"]);
        assert_eq!(f.sub_of("detections"), Some(Fields::parse(Some("value,geometry"))));
        assert_eq!(f.sub_of("images"), None);
        assert_eq!(Fields::parse(None), Fields::only_id());
    }

    #[test]
    fn merge_cc_is_a_14_digit_float_and_some_altitudes_wrap() {
        assert_eq!(
            big_int_as_float(4_546_427_159_383_000_001).to_string(),
            "4.546427159383e+18",
            "like the captures"
        );
        assert!(big_int_as_float(7).is_f64());
        let wrapped: Vec<u32> = (0..20_000).filter_map(wrapped_altitude).collect();
        assert!((60..140).contains(&wrapped.len()), "{}", wrapped.len());
        assert!(wrapped.iter().all(|w| (4_294_967_256..=4_294_967_295).contains(w)));
    }

    #[test]
    fn iso_has_offset_without_colon() {
        assert_eq!(iso(1_503_523_946_000).as_deref(), Some("2017-08-23T21:32:26+0000"));
    }
}
