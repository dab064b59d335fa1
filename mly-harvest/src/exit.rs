//! Exit codes (documented in the README's table), and the one place errors and run outcomes
//! of the core are mapped onto them.

use mly_core::images::ImagesError;
use mly_core::pipeline::{Outcome, PipelineError};

/// Success.
pub const OK: i32 = 0;
/// An unexpected internal error (a bug).
pub const INTERNAL: i32 = 1;
/// Bad command-line usage (clap's own code).
pub const USAGE: i32 = 2;
/// Bad configuration file, key, type or environment value.
pub const CONFIG: i32 = 3;
/// Bad input: a region (bbox, GeoJSON, unknown name, too large without --yes), a `--where`
/// clause the database refuses, an unusable `--out` directory.
pub const INPUT: i32 = 4;
/// Database unreachable, PostGIS missing, or a database error.
pub const DATABASE: i32 = 5;
/// The access token was refused (missing, malformed, expired, unknown).
pub const AUTH: i32 = 6;
/// The daily tile budget is spent; the next run carries on.
pub const QUOTA: i32 = 7;
/// The run finished but some tiles (or pictures) failed permanently; re-run to retry them.
pub const PARTIAL: i32 = 8;
/// The API failed in a way that stopped the run.
pub const API: i32 = 9;
/// The tile server blocked this IP (now or earlier, and the block is not over); `sync`
/// resumes after the recorded time.
pub const BLOCKED: i32 = 10;
/// Interrupted by SIGINT/SIGTERM; the run resumes where it stopped.
pub const INTERRUPTED: i32 = 130;

/// The exit code of an error that stopped a sync.
pub fn of_pipeline_error(e: &PipelineError) -> i32 {
    match e {
        PipelineError::NoToken | PipelineError::Auth(_) => AUTH,
        PipelineError::Store(_) | PipelineError::Jobs(_) => DATABASE,
        PipelineError::Api(_) | PipelineError::Unreachable(_) => API,
        PipelineError::Blocked(_) => BLOCKED,
        PipelineError::Internal(_) => INTERNAL,
    }
}

/// The exit code a sync that ran to its end returns.
pub fn of_outcome(o: Outcome) -> i32 {
    match o {
        Outcome::Done => OK,
        Outcome::Partial => PARTIAL,
        Outcome::QuotaExhausted => QUOTA,
        Outcome::Stopped => INTERRUPTED,
    }
}

/// The exit code of an error that stopped `images download`.
pub fn of_images_error(e: &ImagesError) -> i32 {
    match e {
        ImagesError::Where { .. } | ImagesError::BadOut { .. } | ImagesError::Busy { .. } => INPUT,
        ImagesError::Store(_) => DATABASE,
        ImagesError::Api(a) if a.is_auth() => AUTH,
        ImagesError::Api(_) | ImagesError::CdnUnreachable { .. } => API,
        // A file that cannot be written is an output file that cannot be written.
        ImagesError::Output { .. } => CONFIG,
        ImagesError::Internal(_) => INTERNAL,
    }
}
