//! Image searches narrowed by who took the images: the paged `/images` search without a bbox
//! (by `creator_username`, optionally `organization_id`; newest first, `paging.next` with an
//! `after` cursor, API notes §13.8) and the one-answer bbox search with the same filters.

use reqwest::Url;
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::{ApiClient, JSON_CAP, Reply, json};
use crate::api::error::{ApiError, Class};
use crate::api::{IMAGE_FIELDS, SEARCH_LIMIT, Search, graph};
use crate::model::{ImageDetails, ImageFilter};
use mly_contract::Family;
use mly_contract::tiles::Bbox;

/// A page that the service finds too much to answer is asked again with half the `limit`, down
/// to this.
const MIN_PAGE_LIMIT: usize = 125;

/// One page of a paged search.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The page's records, newest first.
    pub items: Vec<T>,
    /// The cursor of the next page; `None` on the last page.
    pub next: Option<String>,
}

/// `2024-05-01T12:00:00Z`: the form the Graph API documents for its time filters.
fn iso_seconds(secs: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(secs, 0).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Appends an image filter's parameters to a search URL. The window is widened to whole
/// seconds (start rounded down, end up), so the answer holds at least the window: callers filter
/// it exactly.
pub(super) fn append_filter(f: &ImageFilter, url: &mut Url) {
    let mut q = url.query_pairs_mut();
    if let Some(c) = &f.creator_username {
        q.append_pair("creator_username", c);
    }
    if let Some(o) = f.organization_id {
        q.append_pair("organization_id", &o.to_string());
    }
    if let Some(s) = f.start_ms.and_then(|ms| iso_seconds(ms.div_euclid(1000))) {
        q.append_pair("start_captured_at", &s);
    }
    if let Some(e) = f.end_ms.and_then(|ms| iso_seconds((ms + 999).div_euclid(1000))) {
        q.append_pair("end_captured_at", &e);
    }
}

/// The cursor of the next page: the `after` of `paging.next` (which names no token, §13.8), or
/// `paging.cursors.after` when `next` names none. No `next`: the last page.
fn next_cursor(v: &Value) -> Result<Option<String>, String> {
    let paging = v.get("paging");
    let Some(next) = paging.and_then(|p| p.get("next")).and_then(Value::as_str) else {
        return Ok(None);
    };
    let from_next = Url::parse(next)
        .ok()
        .and_then(|u| u.query_pairs().find(|(k, _)| k == "after").map(|(_, v)| v.into_owned()));
    let from_cursors = paging
        .and_then(|p| p.get("cursors"))
        .and_then(|c| c.get("after"))
        .and_then(Value::as_str)
        .map(str::to_string);
    from_next
        .or(from_cursors)
        .filter(|c| !c.is_empty())
        .map(Some)
        .ok_or_else(|| "paging.next names no after cursor".to_string())
}

impl ApiClient {
    /// One page of `/images` narrowed by `filter` (no bbox), starting after `after` (the first
    /// page when `None`). The next page is asked from the configured Graph URL with the cursor,
    /// never by following `paging.next` (the token goes to no other host).
    pub async fn images_page(
        &self,
        filter: &ImageFilter,
        after: Option<&str>,
    ) -> Result<Page<ImageDetails>, ApiError> {
        let mut limit = SEARCH_LIMIT;
        loop {
            let context = format!("while listing the images of {} (page of {limit})", filter.describe());
            let mut url = self.url(&self.inner.graph, "images")?;
            append_filter(filter, &mut url);
            url.query_pairs_mut()
                .append_pair("fields", IMAGE_FIELDS)
                .append_pair("limit", &limit.to_string());
            if let Some(a) = after {
                url.query_pairs_mut().append_pair("after", a);
            }
            match self.execute(Family::Search, url, HeaderMap::new(), &context, JSON_CAP, true).await? {
                Reply::Ok { body, .. } => {
                    let v = json(&body, &context)?;
                    let decode =
                        |m: String| ApiError::Decode { context: context.clone(), message: self.scrub(&m) };
                    let items = graph::parse_collection(&v, graph::parse_image).map_err(decode)?;
                    let next = next_cursor(&v).map_err(decode)?;
                    // The cursor is stored in the job table: one that held a secret would put it
                    // in the database (§13.8 says it holds none; this keeps it so).
                    if let Some(c) = &next
                        && self.scrub(c) != *c
                    {
                        return Err(decode(
                            "the next page's cursor holds a token; refusing to store it".into(),
                        ));
                    }
                    return Ok(Page { items, next });
                }
                // A page the service will not fill is asked for in smaller pages (the cursor
                // does not depend on the page size).
                Reply::Refused { class: Class::TooMuch(_) | Class::Timeout(_), .. }
                    if limit > MIN_PAGE_LIMIT =>
                {
                    limit /= 2;
                    tracing::warn!(limit, "the service found the page too much; asking for smaller pages");
                }
                Reply::Refused { status, class } => return Err(self.refusal(&context, status, class)),
            }
        }
    }

    /// All images in `bbox` that pass `filter`, or `TooMuch` when the box must be split.
    pub async fn search_images_filtered(
        &self,
        bbox: &Bbox,
        filter: &ImageFilter,
    ) -> Result<Search<ImageDetails>, ApiError> {
        let what = format!("the images of {}", filter.describe());
        self.search("images", &what, IMAGE_FIELDS, bbox, graph::parse_image, Some(filter)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_come_from_next_and_the_window_is_widened_to_seconds() {
        let v = serde_json::json!({"data": [], "paging": {"cursors": {"before": "b", "after": "c2"},
            "next": "http://sim/images?creator_username=x&limit=2000&after=c1%3D"}});
        assert_eq!(next_cursor(&v), Ok(Some("c1=".to_string())));
        let v = serde_json::json!({"data": [], "paging": {"cursors": {"after": "c2"}, "next": "http://sim/images?x=1"}});
        assert_eq!(next_cursor(&v), Ok(Some("c2".to_string())));
        let v = serde_json::json!({"data": [], "paging": {"cursors": {"after": "c2"}}});
        assert_eq!(next_cursor(&v), Ok(None), "no next: the last page");
        assert!(next_cursor(&serde_json::json!({"paging": {"next": "http://x/images"}})).is_err());

        let f = ImageFilter {
            creator_username: Some("blue_fox1".into()),
            organization_id: Some(7),
            start_ms: Some(1_700_000_000_500),
            end_ms: Some(1_700_000_100_001),
        };
        let mut url = Url::parse("http://g/images").unwrap();
        append_filter(&f, &mut url);
        assert_eq!(
            url.query(),
            Some(
                "creator_username=blue_fox1&organization_id=7&start_captured_at=2023-11-14T22%3A13%3A20Z&end_captured_at=2023-11-14T22%3A15%3A01Z"
            )
        );
    }
}
