//! Fresh URLs, just in time: images wait in a queue and are looked up 50 at a time (one Graph
//! call) only when the downloads are about to need them, so a URL is used seconds after it was
//! signed. An image whose URL expired anyway goes back to the front of the queue and rides along
//! in the next lookup; only at the end of a run does a lookup carry fewer than 50.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::ThumbSize;
use super::select::Wanted;
use crate::api::{ApiClient, ApiError, MAX_IDS_PER_CALL};
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
        // URLs ready for every slot, and then some: asking now would only age the next batch.
        if self.waiting.is_empty() || self.ready.len() >= concurrency {
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

    /// Looks up the URLs of the next (at most 50) waiting images: one Graph call, more only when
    /// the batch holds ids the API does not know (found by bisection).
    pub(crate) async fn lookup(&mut self, api: &ApiClient) -> Result<Vec<Unresolved>, (ApiError, Vec<Job>)> {
        let n = self.waiting.len().min(MAX_IDS_PER_CALL);
        let batch: Vec<Job> = self.waiting.drain(..n).collect();
        let ids: Vec<ImageId> = batch.iter().map(|j| j.want.id).collect();
        let answer = match api.thumb_urls(&ids, self.size).await {
            Ok(a) => a,
            Err(e) => return Err((e, batch)),
        };
        let mut urls: std::collections::HashMap<i64, Option<String>> =
            answer.found.into_iter().map(|t| (t.id.0, t.url)).collect();
        let mut unresolved = Vec::new();
        for job in batch {
            match urls.remove(&job.want.id.0) {
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
        Ok(unresolved)
    }
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
        // Pretend a batch came back: 8 URLs ready is enough for 8 slots.
        for j in u.waiting.drain(..50).collect::<Vec<_>>() {
            u.ready.push_back(Ready { job: j, url: String::new() });
        }
        assert_eq!(u.next(8, 8, t0), Next::Idle);
        u.ready.truncate(3);
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
