//! Errors of the API client and the classification of failed responses.

use serde_json::Value;

/// Errors of the Mapillary API client. Messages carry context and never the access token.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The token was rejected (code 190 or HTTP 401): the run must stop.
    #[error("Mapillary rejected the access token: {message}")]
    Auth { message: String },
    /// A request the API refuses for good (other 4xx); retrying will not help.
    #[error("{context}: HTTP {status}: {message}")]
    Permanent { context: String, status: u16, message: String },
    /// A transient failure (5xx, timeout, reset, throttling) that outlasted the retries.
    #[error("{context}: gave up after {attempts} attempts: {message}")]
    Transient { context: String, attempts: u32, message: String },
    /// The response body exceeded the size cap (hostile or broken server).
    #[error("{context}: response body exceeds the size cap")]
    TooLarge { context: String },
    /// A 2xx response whose content could not be understood.
    #[error("{context}: cannot decode the response: {message}")]
    Decode { context: String, message: String },
    /// No slot of the family's rate budget could be had (the shared budget's database failed):
    /// the call was not sent.
    #[error("{context}: {source}")]
    Pacing {
        context: String,
        #[source]
        source: super::limiter::PaceError,
    },
    /// The HTTP client could not be built or a URL is invalid.
    #[error("HTTP client: {0}")]
    Client(String),
    /// The circuit breaker tripped: `failures` calls in a row of one API family could not connect
    /// or timed out, so the host is down or unreachable from here and the run must stop.
    #[error(
        "{service} at {host} failed to connect or timed out {failures} times in a row (last: {last}); \
         stopping the run: check the network, proxy or firewall and mapillary.{key} \
         (mapillary.breaker_after = {failures}); the next run resumes where this one stopped"
    )]
    Unreachable { service: &'static str, host: String, key: &'static str, failures: u32, last: String },
    /// The tile server answered a tile request with its per-IP block (a redirect, or HTML where a
    /// tile should be, §13.1): no tile request may follow until the block is over.
    #[error("the tile server blocked this IP at {}: {detail}", at.format("%Y-%m-%dT%H:%M:%SZ"))]
    Blocked { at: chrono::DateTime<chrono::Utc>, detail: String },
}

impl ApiError {
    /// Whether this is an authentication failure that must stop the run.
    pub fn is_auth(&self) -> bool {
        matches!(self, ApiError::Auth { .. })
    }

    /// Whether the circuit breaker tripped (a host that does not answer): the run must stop.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ApiError::Unreachable { .. })
    }

    /// Whether this is the tile server's per-IP block.
    pub fn is_blocked(&self) -> bool {
        matches!(self, ApiError::Blocked { .. })
    }
}

/// What a non-success response means for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Class {
    /// Token rejected: stop at once.
    Auth(String),
    /// Rate limited: back off and slow the family down.
    Throttled(String),
    /// Worth retrying.
    Transient(String),
    /// A search asked for too much (area or volume): split, never retry.
    TooMuch(String),
    /// `?ids=`: some id does not exist (code 100, subcode 33).
    Missing(String),
    /// The query took too long (400, code -2, subcode 3404014, §13.7): retried once, then the
    /// caller asks for less (a search splits its cell, a lookup its batch).
    Timeout(String),
    /// Refused for good.
    Permanent(String),
}

/// Parts of the Meta-Graph style error envelope that matter for classification.
#[derive(Debug, Default)]
struct Envelope {
    message: Option<String>,
    code: Option<i64>,
    subcode: Option<i64>,
    is_transient: bool,
}

fn envelope(body: &[u8]) -> Option<Envelope> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    // Some proxies put a plain string under "error".
    if let Some(s) = e.as_str() {
        return Some(Envelope { message: Some(s.to_string()), ..Envelope::default() });
    }
    let int = |k: &str| e.get(k).and_then(|c| c.as_i64().or_else(|| c.as_str()?.parse().ok()));
    Some(Envelope {
        message: e.get("message").and_then(Value::as_str).map(str::to_string),
        code: int("code"),
        subcode: int("error_subcode"),
        is_transient: e.get("is_transient").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// The error_subcode of the Graph API's "Query Timeout" answer.
const QUERY_TIMEOUT_SUBCODE: i64 = 3_404_014;

const TOO_LARGE_AREA: &str = "bounding box area is too large";
const TOO_MUCH_DATA: &str = "reduce the amount of data";

/// Classifies a non-2xx response: the body's `error.code` first, the HTTP status second.
pub(crate) fn classify(status: u16, body: &[u8]) -> Class {
    let env = envelope(body);
    let text = String::from_utf8_lossy(&body[..body.len().min(2048)]).to_string();
    let message = env.as_ref().and_then(|e| e.message.clone()).unwrap_or_else(|| {
        if text.trim().is_empty() { "(empty body)".to_string() } else { text.trim().to_string() }
    });
    let lower = message.to_ascii_lowercase();
    if let Some(e) = &env {
        match e.code {
            Some(190) => return Class::Auth(message),
            Some(4) => return Class::Throttled(message),
            Some(100) if e.subcode == Some(33) => return Class::Missing(message),
            // `is_transient` is false on this answer, yet a retry succeeded (§13.7).
            Some(-2) => return Class::Timeout(message),
            _ if e.subcode == Some(QUERY_TIMEOUT_SUBCODE) => return Class::Timeout(message),
            _ => {}
        }
    }
    if lower.contains(TOO_LARGE_AREA) || lower.contains(TOO_MUCH_DATA) {
        return Class::TooMuch(message);
    }
    if let Some(e) = &env
        && (e.code == Some(2) || e.is_transient)
    {
        return Class::Transient(message);
    }
    match status {
        401 => Class::Auth(message),
        429 => Class::Throttled(message),
        408 | 500..=599 => Class::Transient(message),
        _ => Class::Permanent(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> Vec<u8> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/real").join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// `psw-*` / `critterpass-*` fixtures wrap `{status, body}`.
    fn wrapped(name: &str) -> (u16, Vec<u8>) {
        let v: Value = serde_json::from_slice(&fixture(name)).unwrap();
        let status = v["status"].as_u64().unwrap() as u16;
        (status, serde_json::to_vec(&v["body"]).unwrap())
    }

    fn kind(c: &Class) -> &'static str {
        match c {
            Class::Auth(_) => "auth",
            Class::Throttled(_) => "throttled",
            Class::Transient(_) => "transient",
            Class::TooMuch(_) => "toomuch",
            Class::Missing(_) => "missing",
            Class::Timeout(_) => "timeout",
            Class::Permanent(_) => "permanent",
        }
    }

    #[test]
    fn wrapped_fixtures_classify() {
        let table = [
            ("critterpass-error-400-not-found-wrapped.json", "missing"),
            ("psw-error-400-not-found-id-1.json", "missing"),
            ("psw-error-400-not-found-id-999999999999999.json", "missing"),
            ("psw-error-400-unissued-token-query-param.json", "auth"),
            ("psw-error-401-malformed-token.json", "auth"),
            ("psw-error-401-unissued-token-header.json", "auth"),
            ("psw-error-500-no-auth-header.json", "auth"),
        ];
        for (name, want) in table {
            let (status, body) = wrapped(name);
            assert_eq!(kind(&classify(status, &body)), want, "{name}");
        }
    }

    #[test]
    fn bare_fixtures_classify() {
        let table = [
            // JOSM served the rate-limit body with 403; the code decides, not the status.
            ("josm-error-application_request_limit_reached.json", 403, "throttled"),
            ("josm-error-application_request_limit_reached.json", 400, "throttled"),
            ("josm-error-application_request_limit_reached.json", 429, "throttled"),
            ("josm-error-invalid_oauth_token.json", 500, "auth"),
            ("josm-error-400-not-found-id-redacted.json", 400, "missing"),
        ];
        for (name, status, want) in table {
            assert_eq!(kind(&classify(status, &fixture(name))), want, "{name} {status}");
        }
    }

    #[test]
    fn synthetic_bodies_classify() {
        let area = br#"{"error":{"message":"Bounding box area is too large. Maximum allowed area is 0.010 square degrees, but got 0.075 square degrees.","type":"MLYApiException"}}"#;
        let volume = br#"{"error":{"message":"Please reduce the amount of data you're asking for, then retry your request","type":"MLYApiException","code":1}}"#;
        let code2 =
            br#"{"error":{"message":"Service temporarily unavailable","type":"MLYApiException","code":2}}"#;
        let flagged = br#"{"error":{"message":"hiccup","code":1,"is_transient":true}}"#;
        let timeout = br#"{"error":{"message":"Timeout","type":"OAuthException","code":-2,"error_subcode":3404014,"is_transient":false,"error_user_title":"Query Timeout","error_user_msg":"The query took too long to run.","fbtrace_id":"A1"}}"#;
        let table: [(u16, &[u8], &str); 13] = [
            (400, timeout, "timeout"),
            (500, area, "toomuch"),
            (500, volume, "toomuch"),
            (500, code2, "transient"),
            (400, flagged, "transient"),
            (500, b"", "transient"),
            (502, b"<html>bad gateway</html>", "transient"),
            (503, b"", "transient"),
            (504, b"", "transient"),
            (429, b"", "throttled"),
            (401, b"", "auth"),
            (400, br#"{"error":{"message":"bad field","code":100}}"#, "permanent"),
            (403, b"forbidden", "permanent"),
        ];
        for (status, body, want) in table {
            assert_eq!(kind(&classify(status, body)), want, "{status} {}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn auth_error_is_auth() {
        assert!(ApiError::Auth { message: "x".into() }.is_auth());
        assert!(!ApiError::Client("x".into()).is_auth());
    }
}
