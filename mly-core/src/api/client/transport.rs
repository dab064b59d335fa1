//! One retry loop for every request: place in flight, pace slot, send, read the capped body,
//! classify; jittered exponential backoff, throttle cooldowns, the tile gate and block answers.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::header::{self, HeaderMap};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::{ApiClient, BACKOFF_BASE, BACKOFF_CAP, Reply, TIMEOUT_RETRIES};
use crate::api::error::{ApiError, Class, classify};
use crate::api::redact;
use mly_contract::Family;

impl ApiClient {
    /// The retry loop: pace, send, read capped body, classify; retry transient failures with
    /// jittered exponential backoff and throttles after a family-wide cooldown.
    pub(super) async fn execute(
        &self,
        family: Family,
        url: Url,
        extra: HeaderMap,
        context: &str,
        cap: usize,
        json_body: bool,
    ) -> Result<Reply, ApiError> {
        let safe_url = redact(url.as_str());
        let max_retries = self.inner.max_retries;
        // Throttles get their own, larger budget: they mean "slower", not "broken".
        let max_throttles = max_retries.saturating_mul(2).saturating_add(2);
        let (mut attempts, mut throttles, mut retries, mut timeouts) = (0u32, 0u32, 0u32, 0u32);
        let breaker = self.breaker(family);
        loop {
            if let Some(last) = breaker.tripped() {
                return Err(self.unreachable(family, &url, &last));
            }
            attempts += 1;
            // A place in flight first, then a pace slot: a slot must not pass while the call
            // waits for its place. (The semaphores are never closed: acquiring never fails.)
            let _in_flight = match family {
                Family::Search => self.inner.search_in_flight.acquire().await.ok(),
                Family::Entity => self.inner.entity_in_flight.acquire().await.ok(),
                Family::Tiles => None,
            };
            let pacer = self.pacer(family);
            pacer
                .ready()
                .await
                .map_err(|source| ApiError::Pacing { context: context.to_string(), source })?;
            // The semaphore is never closed, so acquiring fails never; a failure would only mean
            // "no gate", never a second request in its place.
            let mut gate =
                if family == Family::Tiles { self.inner.tile_gate.acquire().await.ok() } else { None };
            if family == Family::Tiles
                && let Some(e) = self.blocked_error()
            {
                return Err(e);
            }
            self.count(family);
            let started = Instant::now();
            let mut req = self.inner.http.get(url.clone()).headers(extra.clone());
            if family != Family::Tiles {
                req = req.header(header::AUTHORIZATION, self.inner.auth_header.clone());
            }
            let outcome = match req.send().await {
                Err(e) => {
                    let no_answer = e.is_connect() || e.is_timeout();
                    let message = self.scrub(&error_chain(&e.without_url()));
                    if no_answer {
                        breaker.failed(&message);
                    } else {
                        breaker.answered();
                    }
                    Err(message)
                }
                Ok(resp) => {
                    breaker.answered();
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    if family == Family::Tiles
                        && let Some(detail) = block_answer(status, &headers)
                    {
                        tracing::debug!(family = family.name(), url = %safe_url, status = status.as_u16(), "block answer");
                        return Err(self.record_block(detail));
                    }
                    // Status and headers are in: the next tile request may go.
                    drop(gate.take());
                    match read_capped(resp, cap).await {
                        Ok(body) => Ok((status, headers, body)),
                        Err(ReadError::TooLarge) => {
                            tracing::warn!(family = family.name(), url = %safe_url, cap, "response over the size cap");
                            return Err(ApiError::TooLarge { context: context.to_string() });
                        }
                        Err(ReadError::Http(e)) => {
                            let timed_out = e.is_timeout();
                            let message = self.scrub(&error_chain(&e.without_url()));
                            // A body that stops arriving until the timeout counts like no answer.
                            if timed_out {
                                breaker.failed(&message);
                            }
                            Err(message)
                        }
                    }
                }
            };
            drop(gate);
            let ms = started.elapsed().as_millis() as u64;
            let retry_after;
            let message = match outcome {
                Err(message) => {
                    tracing::debug!(family = family.name(), url = %safe_url, status = 0u16, ms, error = %message, "request failed");
                    retry_after = None;
                    message
                }
                Ok((status, headers, body)) => {
                    self.inner.counters.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    tracing::debug!(family = family.name(), url = %safe_url, status = status.as_u16(), ms, bytes = body.len(), "request");
                    if status.is_success() || status == StatusCode::NOT_MODIFIED {
                        if json_body
                            && status != StatusCode::NO_CONTENT
                            && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err()
                        {
                            retry_after = None;
                            "invalid JSON in a 2xx response (truncated?)".to_string()
                        } else {
                            pacer.succeeded();
                            return Ok(Reply::Ok { status: status.as_u16(), headers, body });
                        }
                    } else {
                        match classify(status.as_u16(), &body) {
                            Class::Auth(m) => {
                                return Err(ApiError::Auth {
                                    message: self.scrub(&format!("{context}: {m}")),
                                });
                            }
                            Class::Throttled(m) => {
                                self.inner.counters.throttled.fetch_add(1, Ordering::Relaxed);
                                throttles += 1;
                                let pause = pacer.throttled(retry_after_of(&headers));
                                let message =
                                    format!("HTTP {}: throttled: {}", status.as_u16(), self.scrub(&m));
                                if throttles > max_throttles {
                                    return Err(ApiError::Transient {
                                        context: context.to_string(),
                                        attempts,
                                        message,
                                    });
                                }
                                tracing::warn!(family = family.name(), url = %safe_url, status = status.as_u16(), pause_ms = pause.as_millis() as u64, throttles, "throttled; slowing down");
                                self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Class::Transient(m) => {
                                retry_after = retry_after_of(&headers);
                                format!("HTTP {}: {}", status.as_u16(), self.scrub(&m))
                            }
                            Class::Timeout(_) if timeouts < TIMEOUT_RETRIES => {
                                timeouts += 1;
                                self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(family = family.name(), url = %safe_url, "query timeout; retrying once");
                                tokio::time::sleep(backoff(1)).await;
                                continue;
                            }
                            class => return Ok(Reply::Refused { status: status.as_u16(), class }),
                        }
                    }
                }
            };
            if let Some(last) = breaker.tripped() {
                return Err(self.unreachable(family, &url, &last));
            }
            if retries >= max_retries {
                return Err(ApiError::Transient { context: context.to_string(), attempts, message });
            }
            retries += 1;
            self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
            let delay = retry_after.map_or_else(|| backoff(retries), |r| r.min(BACKOFF_CAP));
            tracing::warn!(family = family.name(), url = %safe_url, attempt = attempts, delay_ms = delay.as_millis() as u64, error = %message, "transient failure; retrying");
            // A breaker tripped by another call ends this wait at once (checked at the loop's top).
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = breaker.wait_tripped() => {}
            }
        }
    }
}

/// What a tile answer's status and headers say about a per-IP block, if they say one: any
/// redirect (never followed), or an HTML page. Names the redirect's host only: the Location
/// echoes the request URL, token included.
pub(super) fn block_answer(status: StatusCode, headers: &HeaderMap) -> Option<String> {
    if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
        let host = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| Url::parse(l).ok())
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| "an unknown place".into());
        return Some(format!("HTTP {} redirect to {host}", status.as_u16()));
    }
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/html"));
    (status.is_success() && html)
        .then(|| format!("HTTP {} with an HTML page instead of a tile", status.as_u16()))
}

/// Whether a body is markup (HTML/XML) rather than a protobuf tile.
pub(super) fn looks_like_markup(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<')
}

/// Full-jitter-ish exponential backoff: between half and all of `base * 2^(n-1)`, capped.
pub(crate) fn backoff(n: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(BACKOFF_CAP);
    exp.mul_f64(0.5 + fastrand::f64() * 0.5)
}

fn retry_after_of(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

pub(super) fn json(body: &[u8], context: &str) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::Decode { context: context.to_string(), message: e.to_string() })
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

/// Reads the body, refusing to hold more than `cap` bytes.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Bytes, ReadError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Http)? {
        if buf.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A reqwest error with its causes, which name the actual failure (reset, timeout, …).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn block_answers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LOCATION,
            HeaderValue::from_static(
                "https://www.mapillary.com/login/?next=%2Fmaps%3Faccess_token%3DMLY%7C1",
            ),
        );
        let d = block_answer(StatusCode::FOUND, &h).unwrap();
        assert_eq!(d, "HTTP 302 redirect to www.mapillary.com");
        assert!(block_answer(StatusCode::NOT_MODIFIED, &HeaderMap::new()).is_none());
        let mut html = HeaderMap::new();
        html.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        assert!(block_answer(StatusCode::OK, &html).is_some());
        assert!(block_answer(StatusCode::NOT_FOUND, &html).is_none());
        assert!(looks_like_markup(b"  <!DOCTYPE html><html>"));
        assert!(!looks_like_markup(&[0x1a, 0x3c]));
        assert!(!looks_like_markup(b""));
    }

    #[test]
    fn backoff_grows_and_caps() {
        for n in 1..30 {
            let d = backoff(n);
            assert!(d <= BACKOFF_CAP, "{n}: {d:?}");
            assert!(d >= BACKOFF_BASE / 2, "{n}: {d:?}");
        }
        assert!(backoff(6) >= Duration::from_secs(4));
    }
}
