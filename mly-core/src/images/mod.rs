//! Downloading the pictures of harvested images (`mly-harvest images download`).
//!
//! A [`Selection`] of live images is read from the database (read-only), each picture's signed
//! URL is asked for just before its download (multi-id lookups of 50 through the Graph client;
//! an expired URL is asked for again), and the bytes stream to a temp file next to their place,
//! are fsynced, recorded in `image_files` and renamed into place, so a file under the output
//! directory is always complete and a rerun fetches only what is missing or changed. At the end
//! a GeoJSON and a CSV sidecar list every file `image_files` holds for the directory.
//!
//! Files: `select` (which images), `layout` (where their files go), `state` (the `image_files`
//! table), `check` (what is on disk already), `refresh` (fresh URLs), `fetch` (one download),
//! `commit` (rows, then renames), `sidecar`, `download` (the run that ties them together).

mod check;
mod commit;
mod download;
mod fetch;
mod layout;
mod refresh;
mod select;
mod sidecar;
mod state;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use download::download;
pub use layout::{SIDECAR_CSV, SIDECAR_GEOJSON};
pub use mly_contract::api::ThumbSize;
pub use select::Selection;

use crate::api::ApiError;
use crate::store::StoreError;

/// How one download run works.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// The output directory (created if missing).
    pub out: PathBuf,
    /// Which picture of each image.
    pub size: ThumbSize,
    /// Re-hash files already complete instead of trusting their length.
    pub verify: bool,
    /// Downloads in flight at once (their own limit: image bytes are not a Graph API family).
    pub concurrency: usize,
    /// How long a download may wait for the next bytes (and for a connection).
    pub timeout: Duration,
    /// Retries of a transient download failure before the image counts as failed.
    pub max_retries: u32,
    /// Downloads in a row that fail to connect or time out before the run stops.
    pub breaker_after: u32,
}

/// Counts of a run as it goes, for a progress display (all monotonic).
#[derive(Debug, Default)]
pub struct Counters {
    selected: AtomicU64,
    to_fetch: AtomicU64,
    skipped: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    refreshed: AtomicU64,
    failed: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Live images the selection matched.
    pub selected: u64,
    /// Of those, the ones whose file had to be downloaded.
    pub to_fetch: u64,
    /// Already complete under the directory (moved into place or finished without a download).
    pub skipped: u64,
    /// Files downloaded and complete.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// URLs asked for again because the CDN answered that they had expired.
    pub refreshed: u64,
    /// Images whose file could not be had (gone upstream, no URL, refused, retries exhausted).
    pub failed: u64,
}

impl Counters {
    /// The counts now.
    pub fn counts(&self) -> Counts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            selected: g(&self.selected),
            to_fetch: g(&self.to_fetch),
            skipped: g(&self.skipped),
            files: g(&self.files),
            bytes: g(&self.bytes),
            refreshed: g(&self.refreshed),
            failed: g(&self.failed),
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// The output directory, absolute.
    pub root: PathBuf,
    /// The counts at the end.
    pub counts: Counts,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Graph API calls the run made (URL lookups).
    pub graph_calls: u64,
    /// Files the sidecars list (every file of `image_files` under the directory).
    pub listed: u64,
    /// The sidecar files written.
    pub sidecars: Vec<PathBuf>,
    /// Whether SIGINT/SIGTERM stopped the run before every file was done.
    pub interrupted: bool,
}

/// Errors that stop a download run. Failures of single images are counted, not errors.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    /// The `--where` clause was refused by the database (syntax, unknown column, a write in a
    /// read-only transaction, the statement timeout); nothing was changed.
    #[error("--where {clause:?}: {message}")]
    Where { clause: String, message: String },
    /// The output directory cannot be used.
    #[error("--out {path}: {reason}")]
    BadOut { path: String, reason: String },
    /// Another process is downloading into the same directory.
    #[error(
        "another `mly-harvest images download` is writing into {root} (its files would be fetched twice); wait for it to end or choose another --out"
    )]
    Busy { root: String },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Graph API failed in a way that stops the run (a refused token, a host that does not answer).
    #[error(transparent)]
    Api(ApiError),
    /// The image server did not answer `failures` downloads in a row.
    #[error(
        "the image server at {host} failed to connect or timed out {failures} times in a row (last: {last}); stopping: check the network, proxy or firewall (mapillary.breaker_after = {failures}); the same command resumes"
    )]
    CdnUnreachable { host: String, failures: u32, last: String },
    /// A file could not be written (full disk, permissions).
    #[error("while writing {path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A bug or a broken runtime (a task that panicked, a client that cannot be built).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ImagesError {
    fn output(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImagesError {
        let path = path.into();
        move |source| ImagesError::Output { path, source }
    }
}

/// Lower-case hex of a digest.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}
