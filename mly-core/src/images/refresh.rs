//! Fresh URLs, just in time: images wait in a queue and are looked up 50 at a time (one Graph
//! call) when fewer URLs are ready than twice the downloads that may run (so a lookup in flight
//! does not leave download slots idle), so a URL is used seconds after it was signed. An image whose URL expired anyway goes back to the front of the queue and rides along
//! in the next lookup; only at the end of a run does a lookup carry fewer than 50.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::ThumbSize;
use super::select::Wanted;
use crate::api::{ApiClient, ApiError, ByIds, MAX_IDS_PER_CALL, ThumbUrl};
use crate::model::ImageId;

/// How often one image's URL may be asked for again after expiring before it counts as failed.
pub(crate) const MAX_REFRESHES: u32 = 8;
/// At the end of a run, how long expired images are gathered before a lookup of fewer than 50.
const GATHER: Duration = Duration::from_millis(200);

/// An image still to download.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub want: Wanted,
    /// Its place, relative to the output directory.
    pub rel: String,
    /// How often its URL was asked for again.
    pub refreshes: u32,
}

/// An image with a URL to download it from.
pub(crate) struct Ready {
    pub job: Job,
    pub url: String,
}

/// Whether to look up now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Look up a batch now.
    Lookup,
    /// A short batch waits for company until then.
    WaitUntil(Instant),
    /// Nothing to look up (enough URLs ready, or none left to ask for).
    Idle,
}

/// What a lookup left unresolved: images the API does not know or gave no URL for.
pub(crate) struct Unresolved {
    pub job: Job,
    pub reason: String,
}

/// The queue of images waiting for a URL, and the URLs ready for download.
pub(crate) struct Urls {
    size: ThumbSize,
    waiting: VecDeque<Job>,
    ready: VecDeque<Ready>,
    /// Since when a short batch has been waiting at the end of the run.
    short_since: Option<Instant>,
}

impl Urls {
    /// All of `jobs` waiting for a URL.
    pub(crate) fn new(size: ThumbSize, jobs: Vec<Job>) -> Urls {
        Urls { size, waiting: jobs.into(), ready: VecDeque::new(), short_since: None }
    }

    /// Whether nothing waits for a URL or for a download slot.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.ready.is_empty()
    }

    /// The next image to download.
    pub(crate) fn pop_ready(&mut self) -> Option<Ready> {
        self.ready.pop_front()
    }

    /// An image whose URL expired: to the front of the queue, or `Err` once it has expired
    /// [`MAX_REFRESHES`] times.
    pub(crate) fn expired(&mut self, mut job: Job) -> Result<(), Job> {
        if job.refreshes >= MAX_REFRESHES {
            return Err(job);
        }
        job.refreshes += 1;
        self.waiting.push_front(job);
        Ok(())
    }

    /// Whether to look up now, given the downloads running and the most that may run.
    pub(crate) fn next(&mut self, running: usize, concurrency: usize, now: Instant) -> Next {
        // URLs ready for every slot twice over: asking now would only age the next batch.
        if self.waiting.is_empty() || self.ready.len() >= 2 * concurrency {
            self.short_since = None;
            return Next::Idle;
        }
        if self.waiting.len() >= MAX_IDS_PER_CALL || running == 0 {
            self.short_since = None;
            return Next::Lookup;
        }
        // A short batch (the end of the run): while downloads are still running, more of their
        // URLs may expire; gather them a moment rather than spend a call on each.
        if !self.ready.is_empty() {
            return Next::Idle;
        }
        let since = *self.short_since.get_or_insert(now);
        if now >= since + GATHER {
            self.short_since = None;
            Next::Lookup
        } else {
            Next::WaitUntil(since + GATHER)
        }
    }

    /// The next (at most 50) waiting images to look up, in one Graph call (more only when the
    /// batch holds ids the API does not know, found by bisection).
    pub(crate) fn take_batch(&mut self) -> Vec<Job> {
        let n = self.waiting.len().min(MAX_IDS_PER_CALL);
        self.waiting.drain(..n).collect()
    }

    /// Takes a lookup's answer for `batch`: URLs become ready; what the API does not know or gave
    /// no URL for is returned.
    pub(crate) fn accept(&mut self, batch: Vec<Job>, answer: ByIds<ThumbUrl>) -> Vec<Unresolved> {
        let mut urls: HashMap<i64, Option<String>> =
            answer.found.into_iter().map(|t| (t.id.0, t.url)).collect();
        let mut unresolved = Vec::new();
        for job in batch {
            match urls.remove(&job.want.id.0) {
                // A URL asked for again is used next, before it can expire as well.
                Some(Some(url)) if job.refreshes > 0 => self.ready.push_front(Ready { job, url }),
                Some(Some(url)) => self.ready.push_back(Ready { job, url }),
                Some(None) => {
                    let reason = format!("the Graph API gave no {} URL", self.size.field());
                    unresolved.push(Unresolved { job, reason });
                }
                None => unresolved.push(Unresolved {
                    job,
                    reason: "the Graph API does not know the image (deleted upstream?)".into(),
                }),
            }
        }
        unresolved
    }
}

/// Looks up the URLs of `batch`.
pub(crate) async fn lookup(
    api: &ApiClient,
    size: ThumbSize,
    batch: &[Job],
) -> Result<ByIds<ThumbUrl>, ApiError> {
    let ids: Vec<ImageId> = batch.iter().map(|j| j.want.id).collect();
    api.thumb_urls(&ids, size).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(n: usize) -> Vec<Job> {
        (0..n)
            .map(|i| Job {
                want: Wanted { id: ImageId(i as i64), sequence_id: None, captured_at: None },
                rel: String::new(),
                refreshes: 0,
            })
            .collect()
    }

    #[test]
    fn looks_up_full_batches_and_gathers_short_ones_at_the_end() {
        let t0 = Instant::now();
        let mut u = Urls::new(ThumbSize::S256, jobs(120));
        assert_eq!(u.next(0, 8, t0), Next::Lookup);
        // A batch came back: 50 URLs ready is plenty for 8 slots.
        let batch = u.take_batch();
        assert_eq!(batch.len(), 50);
        let found = batch
            .iter()
            .skip(1)
            .map(|j| ThumbUrl { id: j.want.id, url: (j.want.id.0 != 1).then(|| "http://x/a".to_string()) })
            .collect();
        let unresolved = u.accept(batch, ByIds { found, missing: vec![0] });
        let reasons: Vec<(i64, &str)> =
            unresolved.iter().map(|x| (x.job.want.id.0, x.reason.as_str())).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].0 == 0 && reasons[0].1.contains("does not know"), "{reasons:?}");
        assert!(reasons[1].0 == 1 && reasons[1].1.contains("no thumb_256_url"), "{reasons:?}");
        assert_eq!(u.ready.len(), 48);
        assert_eq!(u.next(8, 8, t0), Next::Idle);
        u.ready.truncate(15);
        assert_eq!(u.next(8, 8, t0), Next::Lookup, "70 waiting: a full batch");
        u.waiting.truncate(10);
        assert_eq!(u.next(8, 8, t0), Next::Idle, "a short batch while URLs are ready");
        u.ready.clear();
        assert_eq!(u.next(8, 8, t0), Next::WaitUntil(t0 + GATHER));
        assert_eq!(u.next(8, 8, t0 + GATHER), Next::Lookup);
        assert_eq!(u.next(0, 8, t0), Next::Lookup, "nothing running: no reason to wait");
        // Expired URLs go to the front, up to MAX_REFRESHES times.
        let mut j = jobs(1).remove(0);
        j.want.id = ImageId(999);
        j.refreshes = MAX_REFRESHES - 1;
        assert!(u.expired(j).is_ok());
        assert_eq!(u.waiting.front().map(|j| j.want.id), Some(ImageId(999)));
        let again = u.waiting.pop_front().unwrap();
        assert!(u.expired(again).is_err());
    }
}
