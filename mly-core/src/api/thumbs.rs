//! Fresh picture URLs of images (`thumb_*_url`). They are signed and expire (API notes §7), so
//! they are never stored: they are asked for just before a download, 50 ids per call.

use serde_json::Value;

use super::{ApiClient, ApiError, ByIds, ThumbSize};
use crate::model::ImageId;

/// One image's picture URL, as a multi-id lookup answered it.
#[derive(Clone, PartialEq, Eq)]
pub struct ThumbUrl {
    /// The image.
    pub id: ImageId,
    /// The signed URL; `None` when the API knows the image but gave no URL of that size.
    pub url: Option<String>,
}

impl std::fmt::Debug for ThumbUrl {
    /// Leaves the signature (the query) out: a signed URL grants access until it expires.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.url.as_deref().map(|u| u.split_once('?').map_or(u, |(path, _)| path));
        f.debug_struct("ThumbUrl").field("id", &self.id).field("url", &url).finish()
    }
}

impl ApiClient {
    /// The `size` picture URL of each image: multi-id lookups of 50 in the entity family (paced,
    /// retried, behind its circuit breaker like every Graph call). Ids the API does not know come
    /// back in `missing`.
    pub async fn thumb_urls(&self, ids: &[ImageId], size: ThumbSize) -> Result<ByIds<ThumbUrl>, ApiError> {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        self.by_ids("picture URLs of images", &ids, size.field(), |id, v| parse(id, v, size)).await
    }
}

/// One image object of a `?ids=…&fields=thumb_…_url` answer.
fn parse(id: i64, v: &Value, size: ThumbSize) -> Result<ThumbUrl, String> {
    let o = v.as_object().ok_or_else(|| format!("image {id} is not a JSON object"))?;
    let url = match o.get(size.field()) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.starts_with("https://") || s.starts_with("http://") => Some(s.clone()),
        Some(_) => return Err(format!("image {id}: {} is not an http(s) URL", size.field())),
    };
    Ok(ThumbUrl { id: ImageId(id), url })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_url_or_its_absence_and_refuses_anything_else() {
        let v = json!({"id": "7", "thumb_1024_url": "https://cdn.example/m1/v/t6/An7?oe=65000000&oh=00_ab"});
        let t = parse(7, &v, ThumbSize::S1024).unwrap();
        assert_eq!(t.url.as_deref(), Some("https://cdn.example/m1/v/t6/An7?oe=65000000&oh=00_ab"));
        // The signature stays out of Debug output.
        assert!(!format!("{t:?}").contains("oh=00_ab"), "{t:?}");
        assert_eq!(parse(7, &json!({"id": "7"}), ThumbSize::Original).unwrap().url, None);
        assert!(parse(7, &json!({"thumb_256_url": 5}), ThumbSize::S256).is_err());
        assert!(parse(7, &json!({"thumb_256_url": "file:///etc/passwd"}), ThumbSize::S256).is_err());
        assert!(parse(7, &json!([]), ThumbSize::S256).is_err());
    }
}
