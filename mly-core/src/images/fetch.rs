//! One download: GET a signed picture URL from the image server (Meta's CDN, or the simulator's
//! stand-in) and stream the body to a temp file, hashing it on the way, never holding it whole.
//!
//! The image server is not the Graph API: it takes no token (none is sent) and counts against no
//! API family, so downloads have their own concurrency limit and their own circuit breaker. A 403
//! means the URL's signature expired (`oe=`): the caller asks for a fresh URL.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{DownloadOptions, ImagesError, hex};
use crate::api::{backoff, error_chain};
use mly_contract::secret::scrub;

/// The largest picture accepted (real originals, panoramas included, are tens of MB).
const MAX_PICTURE_BYTES: u64 = 256 << 20;
/// Longest one attempt may take, however steadily a slow server trickles bytes.
const MAX_ATTEMPT: Duration = Duration::from_secs(15 * 60);
/// Write buffer per download: few system calls, and memory stays flat at any picture size.
const WRITE_BUFFER: usize = 256 << 10;
/// Every JPEG starts with SOI and a marker.
const JPEG_MAGIC: [u8; 3] = [0xFF, 0xD8, 0xFF];

/// A complete, fsynced temp file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fetched {
    pub bytes: u64,
    pub sha256: String,
}

/// How a download ended, short of an error that stops the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The temp file holds the picture.
    Done(Fetched),
    /// The URL expired (403): ask the Graph API for a fresh one.
    Expired,
    /// The picture could not be had; the reason names why.
    Failed(String),
}

/// One attempt's result.
enum Attempt {
    Done(Fetched),
    Expired,
    /// Refused for good (404, not a JPEG, too large).
    Refused(String),
    /// Worth retrying; `no_answer` when the server did not answer (connect failure, timeout).
    Transient {
        message: String,
        no_answer: bool,
    },
}

/// The download client, shared by every download of a run.
pub(crate) struct Cdn {
    http: reqwest::Client,
    max_retries: u32,
    breaker_after: u32,
    in_a_row: AtomicU32,
    /// Set once the breaker trips: (host, last failure).
    tripped: Mutex<Option<(String, String)>>,
}

impl Cdn {
    /// A client without a token, without redirects and without content decoding (the bytes on
    /// disk are the bytes served).
    pub(crate) fn new(o: &DownloadOptions) -> Result<Cdn, ImagesError> {
        // Fails only when a provider is already installed, which is what we want anyway.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_gzip()
            .connect_timeout(o.timeout.min(Duration::from_secs(10)))
            .read_timeout(o.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mly-harvest/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ImagesError::Internal(format!(
                    "cannot build the download client: {}",
                    error_chain(&e.without_url())
                ))
            })?;
        Ok(Cdn {
            http,
            max_retries: o.max_retries,
            breaker_after: o.breaker_after.max(1),
            in_a_row: AtomicU32::new(0),
            tripped: Mutex::new(None),
        })
    }

    /// Downloads `url` into `part` (created or truncated), retrying transient failures.
    pub(crate) async fn fetch(&self, url: &str, part: &Path) -> Result<Outcome, ImagesError> {
        let mut last = String::new();
        for attempt in 0..=self.max_retries {
            self.check_breaker()?;
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let once = tokio::time::timeout(MAX_ATTEMPT, self.once(url, part)).await;
            let result = once.unwrap_or_else(|_| {
                Ok(Attempt::Transient { message: "the download took too long".into(), no_answer: true })
            })?;
            match result {
                Attempt::Done(f) => return Ok(Outcome::Done(f)),
                Attempt::Expired => return Ok(Outcome::Expired),
                Attempt::Refused(m) => return Ok(Outcome::Failed(m)),
                Attempt::Transient { message, no_answer } => {
                    if no_answer {
                        self.failed_to_connect(url, &message);
                    }
                    tracing::debug!(attempt, error = %message, "download failed; retrying");
                    last = message;
                }
            }
        }
        self.check_breaker()?;
        Ok(Outcome::Failed(format!("gave up after {} attempts: {last}", self.max_retries + 1)))
    }

    async fn once(&self, url: &str, part: &Path) -> Result<Attempt, ImagesError> {
        let transient = |e: reqwest::Error| Attempt::Transient {
            no_answer: e.is_connect() || e.is_timeout(),
            message: scrub(&error_chain(&e.without_url())),
        };
        let mut resp = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) => return Ok(transient(e)),
        };
        self.in_a_row.store(0, Ordering::Relaxed);
        let status = resp.status();
        match status {
            StatusCode::FORBIDDEN => return Ok(Attempt::Expired),
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                return Ok(Attempt::Refused(format!(
                    "HTTP {}: the image server has no such picture",
                    status.as_u16()
                )));
            }
            s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                return Ok(Attempt::Transient { message: format!("HTTP {}", s.as_u16()), no_answer: false });
            }
            s if !s.is_success() => return Ok(Attempt::Refused(format!("HTTP {}", s.as_u16()))),
            _ => {}
        }
        let declared = resp.content_length();
        if declared.is_some_and(|n| n > MAX_PICTURE_BYTES) {
            return Ok(Attempt::Refused(format!("larger than {} MiB", MAX_PICTURE_BYTES >> 20)));
        }
        let disk = ImagesError::output;
        if let Some(dir) = part.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(disk(dir))?;
        }
        let file = tokio::fs::File::create(part).await.map_err(disk(part))?;
        let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut hash = Sha256::new();
        let mut head = Vec::with_capacity(JPEG_MAGIC.len());
        let mut n = 0u64;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Ok(transient(e)),
            };
            n += chunk.len() as u64;
            if n > MAX_PICTURE_BYTES {
                return Ok(Attempt::Refused(format!("larger than {} MiB", MAX_PICTURE_BYTES >> 20)));
            }
            if head.len() < JPEG_MAGIC.len() {
                let take = (JPEG_MAGIC.len() - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
                if head[..] != JPEG_MAGIC[..head.len()] {
                    return Ok(Attempt::Refused("the image server sent something that is not a JPEG".into()));
                }
            }
            hash.update(&chunk);
            out.write_all(&chunk).await.map_err(disk(part))?;
        }
        if declared.is_some_and(|d| d != n) {
            let message = format!("body of {n} bytes where {} were announced", declared.unwrap_or_default());
            return Ok(Attempt::Transient { message, no_answer: false });
        }
        if head.len() < JPEG_MAGIC.len() {
            return Ok(Attempt::Refused("the image server sent something that is not a JPEG".into()));
        }
        out.flush().await.map_err(disk(part))?;
        let file = out.into_inner();
        // The rename that makes the file appear comes later; its content must be on disk first.
        file.sync_all().await.map_err(disk(part))?;
        Ok(Attempt::Done(Fetched { bytes: n, sha256: hex(&hash.finalize()) }))
    }

    fn failed_to_connect(&self, url: &str, message: &str) {
        let n = self.in_a_row.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n >= self.breaker_after {
            let mut t = self.tripped.lock().unwrap_or_else(|p| p.into_inner());
            // Only the host: the path and query of a signed URL grant access to the picture.
            let host = reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0))))
                .unwrap_or_else(|| "(no host)".into());
            t.get_or_insert((host, message.to_string()));
        }
    }

    fn check_breaker(&self) -> Result<(), ImagesError> {
        let t = self.tripped.lock().unwrap_or_else(|p| p.into_inner());
        match &*t {
            Some((host, last)) => Err(ImagesError::CdnUnreachable {
                host: host.clone(),
                failures: self.breaker_after,
                last: last.clone(),
            }),
            None => Ok(()),
        }
    }
}
