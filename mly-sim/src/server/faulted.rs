//! What the faults file's failure modes do to a request that got past the block, the token and
//! the rate limit.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;

use super::answer::{ApiError, empty_response, protobuf};
use super::conn::ConnCtl;
use super::route::Route;
use super::{AppState, Fault};
use mly_contract::hash::splitmix64 as splitmix;
use mly_contract::tiles::TileId;

/// What a drawn fault does to the request.
pub(super) enum Faulted {
    /// Answer this instead of the real answer.
    Answer(Response),
    /// Answer normally after this delay.
    Slow(Duration),
    /// Answer normally, but cut the body short.
    Truncate,
}

impl AppState {
    /// The 500 of a tile the faults file lists as `permanent`.
    pub(super) fn permanent_failure(&self, route: &Route) -> Option<(Response, Option<&'static str>)> {
        let Route::Tile { z, x, y, .. } = route else { return None };
        let (Ok(z), Ok(x), Ok(y)) = (z.parse(), x.parse(), y.parse()) else { return None };
        if !TileId::new(z, x, y).is_ok_and(|t| self.faults.is_permanent(&t)) {
            return None;
        }
        self.count_fault("permanent");
        Some((ApiError::transient().into_response(), Some("permanent")))
    }

    /// What `fault`, drawn for request number `n`, does.
    pub(super) fn faulted(&self, fault: Fault, n: u64, conn: Option<&ConnCtl>) -> Faulted {
        Faulted::Answer(match fault {
            Fault::Error5xx => ApiError::transient().into_response(),
            Fault::Throttle => {
                self.stats().throttled += 1;
                ApiError::throttle(self.throttle_status).into_response()
            }
            Fault::Reset => {
                if let Some(c) = conn {
                    c.0.store(true, Ordering::SeqCst);
                }
                empty_response(StatusCode::INTERNAL_SERVER_ERROR)
            }
            Fault::Corrupt => {
                // A layer tag with a length far beyond the body: no protobuf decoder accepts it.
                let mut b = vec![0x1a, 0xff, 0xff, 0xff, 0xff, 0x0f];
                let mut h = splitmix(n);
                for _ in 0..64 {
                    h = splitmix(h);
                    b.push(h as u8);
                }
                protobuf(StatusCode::OK, Bytes::from(b))
            }
            Fault::QueryTimeout => ApiError::query_timeout().into_response(),
            Fault::Slow(secs) => return Faulted::Slow(Duration::from_secs_f64(secs)),
            Fault::Truncate => return Faulted::Truncate,
        })
    }
}
