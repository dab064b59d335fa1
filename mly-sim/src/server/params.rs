//! Parsing the Graph API's query parameters: times, limits, bboxes, id lists, `/images` filters,
//! paging cursors, `object_values` globs; and percent-encoding for the URLs the server hands out.

use base64::Engine;

use super::answer::ApiError;
use super::route::Params;
use crate::world::SimImage;
use mly_contract::api::{MAX_SEARCH_AREA_DEG2 as MAX_AREA, SEARCH_LIMIT as MAX_LIMIT};
use mly_contract::tiles::Bbox;

pub(super) fn parse_time(s: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::param(&format!("(#100) Invalid timestamp {s:?}"));
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(d.timestamp_millis());
    }
    if let Ok(d) = chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z") {
        return Ok(d.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()).ok_or_else(bad);
    }
    Err(bad())
}

pub(super) fn parse_limit(p: &Params) -> Result<usize, ApiError> {
    match p.get("limit") {
        None => Ok(MAX_LIMIT),
        Some(s) => s
            .parse::<usize>()
            .map(|l| l.clamp(1, MAX_LIMIT))
            .map_err(|_| ApiError::param("(#100) Param limit must be a positive integer")),
    }
}

pub(super) fn parse_bbox(s: &str) -> Result<Bbox, ApiError> {
    let v: Vec<f64> = s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    let bad = || ApiError::param(&format!("(#100) Param bbox must be west,south,east,north, got {s:?}"));
    if v.len() != 4 {
        return Err(bad());
    }
    let b = Bbox::new(v[0], v[1], v[2], v[3]).map_err(|_| bad())?;
    let area = b.area_deg2();
    if area > MAX_AREA {
        let mut shown = format!("{area:.3}");
        if shown == "0.010" {
            shown = format!("{area:.6}");
        }
        let msg = format!(
            "Bounding box area is too large. Maximum allowed area is 0.010 square degrees, but got {shown} square degrees."
        );
        return Err(ApiError::new(500, &msg, "MLYApiException", 1));
    }
    Ok(b)
}

/// The filters of `/images` besides `bbox`.
pub(super) struct ImageFilter {
    pub(super) image_ids: Option<Vec<i64>>,
    pub(super) sequences: Option<Vec<String>>,
    pub(super) creator: Option<String>,
    pub(super) organization: Option<i64>,
    pub(super) start: Option<i64>,
    pub(super) end: Option<i64>,
    pub(super) pano: Option<bool>,
}

impl ImageFilter {
    pub(super) fn parse(p: &Params, max_ids: usize) -> Result<ImageFilter, ApiError> {
        let image_ids = p
            .get("image_ids")
            .map(|s| id_list(s, max_ids))
            .transpose()?
            // An id that is not a number names no image.
            .map(|v| v.iter().filter_map(|id| id.parse().ok()).collect());
        // The documentation says `sequence_ids`, the official SDK sends `sequence_id`: both work.
        let sequences = p
            .get("sequence_ids")
            .or_else(|| p.get("sequence_id"))
            .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect());
        let organization = p
            .get("organization_id")
            .map(|v| {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| ApiError::param("(#100) Param organization_id must be a valid ID"))
            })
            .transpose()?;
        let pano = p
            .get("is_pano")
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(ApiError::param("(#100) Param is_pano must be a boolean")),
            })
            .transpose()?;
        Ok(ImageFilter {
            image_ids,
            sequences,
            creator: p.get("creator_username").map(str::to_string),
            organization,
            start: p.get("start_captured_at").map(parse_time).transpose()?,
            end: p.get("end_captured_at").map(parse_time).transpose()?,
            pano,
        })
    }

    /// Whether `img` passes every filter (both ends of the capture-time range are inclusive).
    pub(super) fn matches(&self, img: &SimImage) -> bool {
        self.image_ids.as_ref().is_none_or(|ids| ids.contains(&img.id))
            && self.sequences.as_ref().is_none_or(|s| s.contains(&img.sequence_id))
            && self.creator.as_ref().is_none_or(|c| *c == img.creator_username)
            && self.organization.is_none_or(|o| img.organization_id == Some(o))
            && self.start.is_none_or(|s| img.captured_at_ms >= s)
            && self.end.is_none_or(|e| img.captured_at_ms <= e)
            && self.pano.is_none_or(|v| img.is_pano == v)
    }
}

/// An opaque paging cursor naming an image's place in the newest-first order.
pub(super) fn encode_cursor(img: &SimImage) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{}", img.captured_at_ms, img.id))
}

pub(super) fn decode_cursor(c: &str) -> Option<(i64, i64)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c.trim()).ok()?;
    let (t, id) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
    Some((t.parse().ok()?, id.parse().ok()?))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(super) fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn id_list(s: &str, max: usize) -> Result<Vec<String>, ApiError> {
    let ids: Vec<String> = s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect();
    if ids.len() > max {
        return Err(ApiError::param(&format!(
            "(#100) Too many IDs. Maximum: {max}. Provided: {}.",
            ids.len()
        )));
    }
    Ok(ids)
}

/// `*` wildcards only, as `object_values` allows.
pub(super) fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, rest)) => {
            let Some(tail) = s.strip_prefix(head) else { return false };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_percent_encoding() {
        assert!(glob("regulatory--*", "regulatory--stop--g1"));
        assert!(glob("*--g1", "regulatory--stop--g1"));
        assert!(!glob("warning--*", "regulatory--stop--g1"));
        assert_eq!(pct("MLY|1|a b/c?d=e&f~_.-"), "MLY%7C1%7Ca%20b%2Fc%3Fd%3De%26f~_.-");
    }
}
