//! Parsing of Graph API JSON into the domain records. Tolerant of unknown and absent keys;
//! ids are parsed as 64-bit integers without passing through f64.

use chrono::DateTime;
use serde_json::{Map, Value};

use crate::model::{Detection, ImageDetails, ImageId, MapFeatureDetails, MapFeatureId};

/// Parses an id given as a JSON string (the API's form) or an integer number.
pub fn parse_id(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.trim().parse::<i64>().ok(),
        // Without serde_json's arbitrary_precision, integers keep their exact value as i64/u64;
        // floats (e.g. `4.5e18`) would have lost digits already, so they are refused.
        Value::Number(n) => n.as_i64().or_else(|| n.as_u64().and_then(|u| i64::try_from(u).ok())),
        _ => None,
    }
}

/// Parses an ISO-8601 timestamp as the Graph API writes it (`2017-08-23T21:32:26+0000`; also
/// `Z`, `+00:00` and fractional seconds) into ms since the epoch.
pub fn parse_iso_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z").ok().map(|t| t.timestamp_millis())
}

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object().ok_or_else(|| format!("{what} is not a JSON object"))
}

fn f64_of(o: &Map<String, Value>, k: &str) -> Option<f64> {
    o.get(k).and_then(Value::as_f64)
}

/// Lowest and highest altitude, in metres, that a camera on the ground can report.
const ALTITUDE_RANGE: std::ops::RangeInclusive<f64> = -1_000.0..=10_000.0;

/// An altitude in metres, or `None` when it cannot be one. The live service sometimes sends a
/// negative EXIF altitude wrapped to an unsigned 32-bit integer (`4294967281` for −15 m, §13.10 of
/// the API notes): whole numbers in 2^31..2^32 are unwrapped. Whatever then lies outside
/// [`ALTITUDE_RANGE`] is dropped (stored as NULL) rather than stored as a wrong height.
fn altitude_of(o: &Map<String, Value>, k: &str) -> Option<f64> {
    const TWO_31: f64 = 2_147_483_648.0;
    const TWO_32: f64 = 4_294_967_296.0;
    let v = f64_of(o, k)?;
    let v = if (TWO_31..TWO_32).contains(&v) && v.fract() == 0.0 { v - TWO_32 } else { v };
    ALTITUDE_RANGE.contains(&v).then_some(v)
}

fn str_of(o: &Map<String, Value>, k: &str) -> Option<String> {
    o.get(k).and_then(Value::as_str).map(str::to_string)
}

fn i32_of(o: &Map<String, Value>, k: &str) -> Option<i32> {
    o.get(k).and_then(Value::as_i64).and_then(|n| i32::try_from(n).ok())
}

/// Integer ms timestamps; ISO strings are accepted too in case the API switches form.
fn ms_of(o: &Map<String, Value>, k: &str) -> Option<i64> {
    match o.get(k)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => parse_iso_ms(s).or_else(|| s.parse().ok()),
        _ => None,
    }
}

/// ISO string timestamps; ms numbers are accepted too (tiles use them).
fn iso_of(o: &Map<String, Value>, k: &str) -> Option<i64> {
    match o.get(k)? {
        Value::String(s) => parse_iso_ms(s),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// `{"type":"Point","coordinates":[lon,lat]}` → (lon, lat).
fn point_of(o: &Map<String, Value>, k: &str) -> Option<(f64, f64)> {
    let c = o.get(k)?.get("coordinates")?.as_array()?;
    match (c.first().and_then(Value::as_f64), c.get(1).and_then(Value::as_f64)) {
        (Some(lon), Some(lat)) if lon.is_finite() && lat.is_finite() => Some((lon, lat)),
        _ => None,
    }
}

/// The id of a nested `{id: ...}` object (creator, organization, image, map_feature).
fn nested_id(o: &Map<String, Value>, k: &str) -> Option<i64> {
    match o.get(k)? {
        v @ (Value::String(_) | Value::Number(_)) => parse_id(v),
        v => v.get("id").and_then(parse_id),
    }
}

fn id_of(o: &Map<String, Value>, what: &str) -> Result<i64, String> {
    let v = o.get("id").ok_or_else(|| format!("{what} has no id"))?;
    parse_id(v).ok_or_else(|| format!("{what} has an unusable id {v}"))
}

/// Parses one image object (as in `/images` `data` or a value of a `?ids=` response).
pub fn parse_image(v: &Value) -> Result<ImageDetails, String> {
    let o = obj(v, "image")?;
    Ok(ImageDetails {
        id: ImageId(id_of(o, "image")?),
        captured_at_ms: ms_of(o, "captured_at"),
        compass_angle: f64_of(o, "compass_angle"),
        computed_compass_angle: f64_of(o, "computed_compass_angle"),
        is_pano: o.get("is_pano").and_then(Value::as_bool),
        creator_id: nested_id(o, "creator"),
        creator_username: o
            .get("creator")
            .and_then(|c| c.get("username"))
            .and_then(Value::as_str)
            .map(str::to_string),
        organization_id: nested_id(o, "organization"),
        camera_type: str_of(o, "camera_type"),
        make: str_of(o, "make"),
        model: str_of(o, "model"),
        width: i32_of(o, "width"),
        height: i32_of(o, "height"),
        altitude: altitude_of(o, "altitude"),
        computed_altitude: altitude_of(o, "computed_altitude"),
        quality_score: f64_of(o, "quality_score"),
        sequence_id: match o.get("sequence") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(s)) => s.get("id").and_then(Value::as_str).map(str::to_string),
            _ => None,
        },
        geometry: point_of(o, "geometry"),
        computed_geometry: point_of(o, "computed_geometry"),
    })
}

/// Parses one map-feature object.
pub fn parse_map_feature(v: &Value) -> Result<MapFeatureDetails, String> {
    let o = obj(v, "map feature")?;
    let images =
        edge(o, "images").iter().filter_map(|i| i.get("id").and_then(parse_id).map(ImageId)).collect();
    Ok(MapFeatureDetails {
        id: MapFeatureId(id_of(o, "map feature")?),
        object_value: str_of(o, "object_value"),
        object_type: str_of(o, "object_type"),
        aligned_direction: f64_of(o, "aligned_direction"),
        first_seen_at_ms: iso_of(o, "first_seen_at"),
        last_seen_at_ms: iso_of(o, "last_seen_at"),
        geometry: point_of(o, "geometry"),
        images,
    })
}

/// The `data` array of an edge (`{"images":{"data":[...]}}`); absent → empty.
fn edge<'a>(o: &'a Map<String, Value>, k: &str) -> &'a [Value] {
    o.get(k).and_then(|e| e.get("data")).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// Parses one detection; `image_id` is used when the detection does not name its image.
pub fn parse_detection(v: &Value, image_id: ImageId) -> Result<Detection, String> {
    let o = obj(v, "detection")?;
    Ok(Detection {
        id: id_of(o, "detection")?,
        image_id: nested_id(o, "image").map(ImageId).unwrap_or(image_id),
        map_feature_id: nested_id(o, "map_feature").map(MapFeatureId),
        value: str_of(o, "value"),
        created_at_ms: iso_of(o, "created_at"),
        geometry_b64: str_of(o, "geometry"),
    })
}

/// Parses the detections of one image from an entity holding a `detections` edge.
pub fn parse_image_detections(v: &Value, image_id: ImageId) -> Result<Vec<Detection>, String> {
    let o = obj(v, "image")?;
    edge(o, "detections").iter().map(|d| parse_detection(d, image_id)).collect()
}

/// Parses the `data` array of a collection response with `parse`.
pub fn parse_collection<T>(v: &Value, parse: impl Fn(&Value) -> Result<T, String>) -> Result<Vec<T>, String> {
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| "collection response has no data array".to_string())?;
    data.iter().map(parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> Value {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/real").join(name);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn josm_image() {
        let i = parse_image(&fixture("josm-image-135511895288847.json")).unwrap();
        assert_eq!(i.id, ImageId(135_511_895_288_847));
        assert_eq!(i.captured_at_ms, Some(1_563_721_072_184));
        assert_eq!(i.compass_angle, Some(336.74));
        assert_eq!(i.computed_compass_angle, Some(1.2865829255371));
        assert_eq!(i.camera_type.as_deref(), Some("perspective"));
        assert_eq!((i.width, i.height), (Some(4160), Some(3120)));
        assert_eq!(i.altitude, Some(1364.617));
        assert_eq!(i.computed_altitude, Some(1399.5043095825));
        assert_eq!(i.quality_score, Some(0.7561310782241));
        assert_eq!(i.sequence_id.as_deref(), Some("7nfcwfvjdtphz7yj6zat6a"));
        assert_eq!(i.geometry, Some((-108.57081597222, 39.068354972222)));
        assert_eq!(i.computed_geometry, Some((-108.57081597085, 39.068354912098)));
        // Absent keys stay None.
        assert_eq!((i.is_pano, i.creator_id, i.organization_id, i.make.clone()), (None, None, None, None));
    }

    #[test]
    fn all_josm_images_parse() {
        for id in [
            "148137757289079",
            "308609047601518",
            "311681117131457",
            "311799370533334",
            "4235112816526838",
            "464249047982277",
        ] {
            let i = parse_image(&fixture(&format!("josm-image-{id}.json"))).unwrap();
            assert_eq!(i.id.0.to_string(), id);
            assert!(i.geometry.is_some() && i.captured_at_ms.is_some());
        }
        let h = parse_image(&fixture("josm-image-338231874314914-handwritten.json")).unwrap();
        assert_eq!(h.id, ImageId(338_231_874_314_914));
    }

    #[test]
    fn vespucci_and_escaped_slashes() {
        let v = parse_image(&fixture("vespucci-image-178993950747668.json")).unwrap();
        assert_eq!(v.id, ImageId(178_993_950_747_668));
        assert_eq!(v.computed_geometry, Some((8.407748800863, 47.412813485744)));
        assert_eq!(v.geometry, None);
        assert_eq!(v.captured_at_ms, None);
        let e = parse_image(&fixture("unresolved-image-1156350815484235-escaped-slashes.json")).unwrap();
        assert_eq!(e.id, ImageId(1_156_350_815_484_235));
        assert_eq!(e.captured_at_ms, Some(1_718_004_551_000));
        assert_eq!(e.computed_geometry, Some((2.3013506935803, 48.848225624039)));
    }

    #[test]
    fn creator_and_organization() {
        let v: Value = serde_json::json!({"id":"1","creator":{"username":"vorpalblade","id":"104214208486349"},
            "organization":{"id":"9"},"is_pano":true,"make":"GoPro","model":"Max","unknown":[1,2]});
        let i = parse_image(&v).unwrap();
        assert_eq!(i.creator_id, Some(104_214_208_486_349));
        assert_eq!(i.creator_username.as_deref(), Some("vorpalblade"));
        assert_eq!(i.organization_id, Some(9));
        assert_eq!(i.is_pano, Some(true));
        assert_eq!(i.model.as_deref(), Some("Max"));
    }

    #[test]
    fn josm_map_feature() {
        let f = parse_map_feature(&fixture("josm-map_feature-496980935069177.json")).unwrap();
        assert_eq!(f.id, MapFeatureId(496_980_935_069_177));
        assert_eq!(f.object_type.as_deref(), Some("trafficsign"));
        assert_eq!(f.object_value.as_deref(), Some("complementary--both-directions--g2"));
        // 2017-08-23T21:32:26+0000
        assert_eq!(f.first_seen_at_ms, Some(1_503_523_946_000));
        assert_eq!(f.last_seen_at_ms, Some(1_503_523_946_000));
        assert_eq!(f.geometry, Some((-83.417193328459, 41.341166490122)));
        assert_eq!(
            f.images,
            vec![ImageId(133_075_088_816_573), ImageId(512_146_709_982_392), ImageId(828_719_391_332_432)]
        );
        assert_eq!(f.aligned_direction, None);
    }

    #[test]
    fn detections_fixtures() {
        let v = fixture("josm-image-4235112816526838-detections.json");
        let d = parse_collection(&v, |d| parse_detection(d, ImageId(0))).unwrap();
        assert_eq!(d.len(), 8);
        assert_eq!(d[0].id, 4_239_760_849_395_368);
        assert_eq!(d[0].image_id, ImageId(4_235_112_816_526_838));
        assert_eq!(d[0].value.as_deref(), Some("information--general-directions--g1"));
        // 2021-05-19T16:53:15+0000
        assert_eq!(d[0].created_at_ms, Some(1_621_443_195_000));
        assert!(d[0].geometry_b64.as_deref().unwrap().starts_with("GjcK"));
        for name in [
            "josm-image-135511895288847-detections.json",
            "josm-image-148137757289079-detections.json",
            "josm-image-308609047601518-detections.json",
            "josm-image-311681117131457-detections.json",
            "josm-image-311799370533334-detections.json",
            "josm-image-464249047982277-detections.json",
            "josm-map_feature-496980935069177-detections.json",
        ] {
            let d = parse_collection(&fixture(name), |d| parse_detection(d, ImageId(0))).unwrap();
            assert!(!d.is_empty(), "{name}");
            assert!(d.iter().all(|x| x.created_at_ms.is_some() && x.image_id.0 > 0), "{name}");
        }
    }

    #[test]
    fn detections_edge_in_keyed_entity() {
        let det = fixture("josm-image-311681117131457-detections.json");
        let v = serde_json::json!({"id": "311681117131457", "detections": det});
        let d = parse_image_detections(&v, ImageId(311_681_117_131_457)).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].id, 313_159_516_983_617);
        let none = parse_image_detections(&serde_json::json!({"id":"5"}), ImageId(5)).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn iso_forms() {
        let want = Some(1_503_523_946_000);
        assert_eq!(parse_iso_ms("2017-08-23T21:32:26+0000"), want);
        assert_eq!(parse_iso_ms("2017-08-23T21:32:26+00:00"), want);
        assert_eq!(parse_iso_ms("2017-08-23T21:32:26Z"), want);
        assert_eq!(parse_iso_ms("2017-08-23T23:32:26+0200"), want);
        assert_eq!(parse_iso_ms("2017-08-23T21:32:26.250Z"), Some(1_503_523_946_250));
        assert_eq!(parse_iso_ms("2017-08-23T21:32:26.250+0000"), Some(1_503_523_946_250));
        assert_eq!(parse_iso_ms("yesterday"), None);
        assert_eq!(parse_iso_ms("2017-08-23"), None);
    }

    #[test]
    fn huge_ids() {
        let v: Value = serde_json::from_str(
            r#"["9223372036854775807", 9223372036854775807, "4546427159383000001",
            4546427159383000001, "9223372036854775808", 4.546427159383e+18, "12x", null, " 42 "]"#,
        )
        .unwrap();
        let got: Vec<Option<i64>> = v.as_array().unwrap().iter().map(parse_id).collect();
        assert_eq!(
            got,
            vec![
                Some(i64::MAX),
                Some(i64::MAX),
                Some(4_546_427_159_383_000_001),
                Some(4_546_427_159_383_000_001),
                None,
                None,
                None,
                None,
                Some(42)
            ]
        );
    }

    #[test]
    fn wrapped_altitudes_and_float_merge_cc() {
        let alt = |v: Value| parse_image(&serde_json::json!({"id": "1", "altitude": v})).unwrap().altitude;
        assert_eq!(alt(serde_json::json!(4_294_967_281u64)), Some(-15.0));
        assert_eq!(alt(serde_json::json!(4_294_967_295u64)), Some(-1.0));
        assert_eq!(alt(serde_json::json!(1364.617)), Some(1364.617));
        assert_eq!(alt(serde_json::json!(-12.5)), Some(-12.5));
        // Wrapped far below sea level, or simply absurd: no altitude rather than a wrong one.
        assert_eq!(alt(serde_json::json!(2_147_483_648u64)), None);
        assert_eq!(alt(serde_json::json!(4_294_967_296u64)), None);
        assert_eq!(alt(serde_json::json!(25_000.0)), None);
        assert_eq!(alt(serde_json::json!("high")), None);
        // `merge_cc` arrives as a float (every JOSM capture); it is not stored, and must not
        // make the image unparseable.
        let v: Value =
            serde_json::from_str(r#"{"id":"2","merge_cc":4.546427159383e+18,"altitude":4294967281}"#)
                .unwrap();
        let i = parse_image(&v).unwrap();
        assert_eq!((i.id, i.altitude), (ImageId(2), Some(-15.0)));
    }

    #[test]
    fn missing_id_is_an_error() {
        assert!(parse_image(&serde_json::json!({"captured_at": 1})).is_err());
        assert!(parse_map_feature(&serde_json::json!([])).is_err());
    }
}
