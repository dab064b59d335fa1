//! The per-IP tile block of the faults file (§13.1): 302 to the login page after N tile requests.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use super::AppState;
use super::params::pct;
use super::route::Params;

/// Where the simulated per-IP tile block stands.
#[derive(Debug, Default)]
pub(super) struct BlockState {
    /// Tile requests served since the last block lifted.
    pub(super) served: u64,
    /// The block lasts until then (each tile request during it pushes this on).
    pub(super) until: Option<Instant>,
}

impl AppState {
    /// The block answer when the faults file's per-IP block is on and this tile request falls in
    /// it: 302 to the login page, whose `next` echoes the request (token redacted).
    pub(super) fn block_answer(&self, path: &str, p: &Params) -> Option<Response> {
        let cfg = self.faults.block()?;
        let now = Instant::now();
        let mut b = self.block.lock().unwrap_or_else(|p| p.into_inner());
        let blocked = match b.until {
            Some(until) if now < until => true,
            Some(_) => {
                // Lifted: a fresh allowance of tile requests.
                b.until = None;
                b.served = 0;
                false
            }
            None => false,
        };
        if !blocked && b.served < cfg.after_tiles {
            b.served += 1;
            return None;
        }
        // Asking during a block extends it.
        b.until = Some(now + Duration::from_secs_f64(cfg.secs));
        drop(b);
        let q: Vec<String> =
            p.0.iter()
                .map(|(k, v)| if k == "access_token" { format!("{k}=REDACTED") } else { format!("{k}={v}") })
                .collect();
        let next: String = pct(&format!("{path}?{}", q.join("&")));
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::FOUND;
        if let Ok(v) = HeaderValue::from_str(&format!("https://www.mapillary.com/login/?next={next}")) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        Some(r)
    }
}
