//! What the server answers with: the Meta-style error envelope of the Graph and tile APIs and the
//! response bodies (JSON, protobuf, empty, truncated by a fault).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::graph::UnknownField;

/// A Graph/tiles error: HTTP status plus the Meta-style `{"error":{...}}` envelope.
#[derive(Debug, Clone)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) body: Value,
}

pub(super) fn fbtrace_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut s = String::from("A");
    for _ in 0..22 {
        s.push(char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]));
    }
    s
}

impl ApiError {
    pub(super) fn new(status: u16, message: &str, ty: &str, code: i64) -> ApiError {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body =
            json!({"error": {"message": message, "type": ty, "code": code, "fbtrace_id": fbtrace_id()}});
        ApiError { status, body }
    }

    pub(super) fn with(mut self, key: &str, v: Value) -> ApiError {
        if let Some(e) = self.body.get_mut("error").and_then(Value::as_object_mut) {
            e.insert(key.to_string(), v);
        }
        self
    }

    pub(super) fn not_found(id: &str) -> ApiError {
        let msg = format!(
            "Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation"
        );
        ApiError::new(400, &msg, "MLYApiException", 100).with("error_subcode", json!(33))
    }

    pub(super) fn param(msg: &str) -> ApiError {
        ApiError::new(400, msg, "OAuthException", 100)
    }

    pub(super) fn transient() -> ApiError {
        ApiError::new(500, "Service temporarily unavailable", "MLYApiException", 2)
            .with("is_transient", json!(true))
    }

    /// The query timeout seen on the live service (§13.7): 400, code -2, subcode 3404014, and
    /// `is_transient: false` although a retry succeeded.
    pub(super) fn query_timeout() -> ApiError {
        ApiError::new(400, "Timeout", "OAuthException", -2)
            .with("error_subcode", json!(3_404_014))
            .with("is_transient", json!(false))
            .with("error_user_title", json!("Query Timeout"))
            .with("error_user_msg", json!("The query took too long to run. Try a smaller query."))
    }

    pub(super) fn throttle(status: StatusCode) -> ApiError {
        let mut e = ApiError::new(429, "Application request limit reached", "MLYApiException", 4)
            .with("is_transient", json!(true));
        e.status = status;
        e
    }

    pub(super) fn into_response(self) -> Response {
        json_response(self.status, &self.body)
    }
}

impl From<UnknownField> for ApiError {
    fn from(e: UnknownField) -> ApiError {
        ApiError::param(&e.to_string())
    }
}

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
    r
}

pub(super) fn empty_response(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

pub(super) fn too_much_data() -> ApiError {
    ApiError::new(500, "Please reduce the amount of data you're asking for", "MLYApiException", 1)
}

pub(super) fn protobuf(status: StatusCode, bytes: Bytes) -> Response {
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
    r
}

/// Announces more bytes than it sends, then aborts the connection mid-body.
pub(super) async fn truncated(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let announced = bytes.len() + bytes.len().max(16);
    let half = bytes.slice(..bytes.len() / 2);
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(half) }).chain(
        futures::stream::once(async {
            // Give hyper time to flush the partial body before the error aborts the connection.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(std::io::Error::other("truncated by fault injection"))
        }),
    );
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(announced));
    Response::from_parts(parts, Body::from_stream(stream))
}
