//! Graph API JSON rendering: field selection and the exact shapes of the real service.
//!
//! Ids are strings, `captured_at` is ms, `first_seen_at`/`last_seen_at`/`created_at` are ISO strings
//! with a `+0000` offset, absent values are omitted (never `null`).

use serde_json::{Map, Value, json};

use super::faults::splitmix;
use super::world::{SimDetection, SimFeature, SimImage, SimUser, World};

/// A requested field the node type does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("(#100) Tried accessing nonexisting field ({field}) on node type ({node})")]
pub struct UnknownField {
    /// The offending field name as requested.
    pub field: String,
    /// Graph node type (`Image`, `MapFeature`, `User`, `Detection`).
    pub node: &'static str,
}

/// Parsed `fields=` parameter: top-level names in order, plus sub-fields of edges (`detections.value`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields {
    top: Vec<String>,
    sub: Vec<(String, Vec<String>)>,
}

impl Fields {
    /// Parses `a,b,detections.value,detections.geometry`; `None` or empty means only `id`.
    pub fn parse(s: Option<&str>) -> Fields {
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
    pub fn only_id() -> Fields {
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
pub fn iso(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|d| d.format("%Y-%m-%dT%H:%M:%S%z").to_string())
}

fn point(lon: f64, lat: f64) -> Value {
    json!({"type": "Point", "coordinates": [lon, lat]})
}

/// Derived deterministic ids (mesh, sfm cluster) look like other Mapillary ids: 15 digits.
fn derived_id(id: i64, salt: u64) -> String {
    (100_000_000_000_000 + splitmix(id as u64 ^ salt) % 900_000_000_000_000).to_string()
}

/// A signed-looking Meta CDN URL with an `oe=` hex expiry, like the real `thumb_*_url`s.
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

/// Renders one image with the requested fields.
pub fn image_json(
    world: &World,
    epoch: u32,
    img: &SimImage,
    f: &Fields,
    now_s: i64,
) -> Result<Value, UnknownField> {
    object(f, |name| {
        Ok(match name {
            "id" => Some(Value::String(img.id.to_string())),
            "altitude" => Some(json!(img.altitude)),
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
            "merge_cc" => Some(json!(img.merge_cc)),
            "mesh" => img
                .has_mesh
                .then(|| json!({"id": derived_id(img.id, 1), "url": cdn_url(img.id, 11, None, now_s)})),
            "sfm_cluster" => {
                Some(json!({"id": derived_id(img.id, 2), "url": cdn_url(img.id, 12, None, now_s)}))
            }
            "organization" => img.organization_id.map(|o| json!({"id": o.to_string()})),
            "quality_score" => img.quality_score.map(|q| json!(q)),
            "sequence" => Some(json!(img.sequence_id)),
            "thumb_256_url" => Some(json!(cdn_url(img.id, 3, Some("s256x192"), now_s))),
            "thumb_1024_url" => Some(json!(cdn_url(img.id, 4, Some("s1024x768"), now_s))),
            "thumb_2048_url" => Some(json!(cdn_url(img.id, 5, Some("s2048x1536"), now_s))),
            "thumb_original_url" => Some(json!(cdn_url(img.id, 6, None, now_s))),
            "detections" => {
                let sub = f.sub_of("detections").unwrap_or_else(Fields::only_id);
                let dets = world.detections_of_image(img.id, epoch).unwrap_or_default();
                Some(detections_json(world, epoch, &dets, &sub)?)
            }
            other => return Err(UnknownField { field: other.to_string(), node: "Image" }),
        })
    })
}

/// Renders one map feature with the requested fields.
pub fn feature_json(
    world: &World,
    epoch: u32,
    feat: &SimFeature,
    f: &Fields,
    now_s: i64,
) -> Result<Value, UnknownField> {
    object(f, |name| {
        Ok(match name {
            "id" => Some(Value::String(feat.id.to_string())),
            "aligned_direction" => Some(json!(feat.aligned_direction)),
            "first_seen_at" => iso(feat.first_seen_at_ms).map(Value::String),
            "last_seen_at" => iso(feat.last_seen_at_ms).map(Value::String),
            "object_value" => Some(json!(feat.value)),
            // The live service answers `trafficsign` (no underscore), unlike its docs.
            "object_type" => Some(json!(match feat.kind {
                crate::model::FeatureKind::Point => "point",
                crate::model::FeatureKind::TrafficSign => "trafficsign",
            })),
            "geometry" => Some(point(feat.lon, feat.lat)),
            "images" => {
                let sub = f.sub_of("images");
                let mut data = Vec::new();
                for id in &feat.image_ids {
                    let Some(img) = world.image(*id, epoch) else { continue };
                    data.push(match &sub {
                        Some(sub) => image_json(world, epoch, &img, sub, now_s)?,
                        None => json!({"geometry": point(img.lon, img.lat), "id": img.id.to_string()}),
                    });
                }
                Some(json!({ "data": data }))
            }
            "detections" => {
                let sub = f.sub_of("detections").unwrap_or_else(Fields::only_id);
                let dets = world.detections_of_feature(feat.id, epoch).unwrap_or_default();
                Some(detections_json(world, epoch, &dets, &sub)?)
            }
            other => return Err(UnknownField { field: other.to_string(), node: "MapFeature" }),
        })
    })
}

/// Renders one user.
pub fn user_json(user: &SimUser, f: &Fields) -> Result<Value, UnknownField> {
    object(f, |name| match name {
        "id" => Ok(Some(json!(user.id.to_string()))),
        "username" => Ok(Some(json!(user.username))),
        other => Err(UnknownField { field: other.to_string(), node: "User" }),
    })
}

/// An object of the requested fields, in request order: `field` renders one (`None` when the
/// record has no value, which the API omits rather than sending null) or rejects an unknown name.
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
    Ok(Value::Object(m))
}

/// Renders one detection.
pub fn detection_json(
    world: &World,
    epoch: u32,
    d: &SimDetection,
    f: &Fields,
) -> Result<Value, UnknownField> {
    object(f, |name| {
        Ok(match name {
            "id" => Some(json!(d.id.to_string())),
            "created_at" => iso(d.created_at_ms).map(Value::String),
            "geometry" => Some(json!(d.geometry_b64)),
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
pub fn detections_json(
    world: &World,
    epoch: u32,
    dets: &[SimDetection],
    f: &Fields,
) -> Result<Value, UnknownField> {
    let data = dets.iter().map(|d| detection_json(world, epoch, d, f)).collect::<Result<Vec<_>, _>>()?;
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
    fn iso_has_offset_without_colon() {
        assert_eq!(iso(1_503_523_946_000).as_deref(), Some("2017-08-23T21:32:26+0000"));
    }
}
