//! The CDN route: the JPEG behind a signed thumbnail URL, or the CDN's 403.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use super::AppState;
use super::route::Params;
use crate::cdn;
use crate::encode::flat_jpeg;

impl AppState {
    /// Serves an image URL: a flat JPEG of the signed size, or the CDN's 403 for an expired or
    /// forged URL.
    pub(super) fn image_bytes(&self, opaque: &str, p: &Params) -> Response {
        let now_s = chrono::Utc::now().timestamp();
        let refused = |why: cdn::CdnRefusal| {
            let mut r = Response::new(Body::from(why.to_string()));
            *r.status_mut() = StatusCode::FORBIDDEN;
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        };
        let req = match self.cdn.verify(opaque, &p.0, now_s) {
            Ok(r) => r,
            Err(why) => return refused(why),
        };
        let (Ok(w), Ok(h)) = (u16::try_from(req.width), u16::try_from(req.height)) else {
            return refused(cdn::CdnRefusal::BadHash);
        };
        let mut r = Response::new(Body::from(flat_jpeg(w, h, cdn::grey_level(req.id))));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
        r
    }
}
