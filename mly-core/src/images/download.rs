//! One run of `images download`: select, see what is on disk already, download the rest with
//! URLs looked up just in time, commit, drop rows of files that vanished, write the sidecars.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, info, info_span, warn};

use super::check::{self, Action};
use super::commit::{Commit, Committer, How};
use super::fetch::{Cdn, Outcome};
use super::layout::{self, part_path};
use super::refresh::{self, Job, MAX_REFRESHES, Next, Urls};
use super::select::{self, Selection, Wanted};
use super::state::{self, FileRow};
use super::{Counters, DownloadOptions, ImagesError, Summary, sidecar};
use crate::api::{ApiClient, ApiError, ByIds, ThumbUrl};
use crate::store::Store;

/// Files checked per blocking task, and such tasks at once.
const CHECK_CHUNK: usize = 256;
const CHECK_TASKS: usize = 2;
/// After SIGINT/SIGTERM, how long downloads in flight may take to finish (a picture completed is
/// a picture not fetched again); what is still running then is dropped with its temp file.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Whether downloads go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    /// They do.
    Go,
    /// No new ones (an interrupt); those in flight get [`STOP_GRACE`] to finish.
    Drain,
    /// Those in flight end at once (an error stops the run).
    Now,
}

/// Downloads the pictures of the selected images into `opts.out`. `stop` resolving (SIGINT,
/// SIGTERM) ends the run cleanly: no new download starts, those in flight get a few seconds to
/// finish (then they are dropped with their temp files), complete files are committed, the
/// sidecars are written, and the summary says `interrupted`.
pub async fn download(
    store: &Store,
    api: &ApiClient,
    selection: &Selection,
    opts: &DownloadOptions,
    counters: Arc<Counters>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Summary, ImagesError> {
    let started = Instant::now();
    let calls_before = api.counters().entity;
    let (stop_tx, _) = watch::channel(Halt::Go);
    let stop_tx = Arc::new(stop_tx);
    let interrupted = Arc::new(AtomicBool::new(false));
    let stopper = {
        let (tx, flag) = (stop_tx.clone(), interrupted.clone());
        tokio::spawn(async move {
            stop.await;
            flag.store(true, Ordering::Relaxed);
            tx.send_if_modified(|h| {
                let go = *h == Halt::Go;
                if go {
                    *h = Halt::Drain;
                }
                go
            });
        })
    };
    let result = async {
        // Nothing is created before the selection is known to be good: a bad --where changes nothing.
        let wanted = select::select(store, selection).await?;
        let (root, key) = layout::prepare_root(&opts.out)?;
        let lock = state::lock(store, &key).await?;
        let run = Run { store, api, opts, counters: &counters, root: &root, key: &key, stop: &stop_tx };
        let done = run.run(wanted).await;
        let released = lock.release().await;
        let (listed, sidecars) = done?;
        released?;
        Ok::<_, ImagesError>((root, listed, sidecars))
    }
    .instrument(info_span!("images", out = %opts.out.display(), size = %opts.size))
    .await;
    stopper.abort();
    let (root, listed, sidecars) = result?;
    Ok(Summary {
        root,
        counts: counters.counts(),
        elapsed: started.elapsed(),
        graph_calls: api.counters().entity.saturating_sub(calls_before),
        listed,
        sidecars,
        interrupted: interrupted.load(Ordering::Relaxed),
    })
}

/// A run holding its directory's lock.
struct Run<'a> {
    store: &'a Store,
    api: &'a ApiClient,
    opts: &'a DownloadOptions,
    counters: &'a Arc<Counters>,
    root: &'a Path,
    key: &'a str,
    stop: &'a Arc<watch::Sender<Halt>>,
}

impl Run<'_> {
    async fn run(&self, wanted: Vec<Wanted>) -> Result<(u64, Vec<PathBuf>), ImagesError> {
        Counters::add(&self.counters.selected, wanted.len() as u64);
        let known = state::load(self.store, self.key).await?;
        let checked = self.check(wanted, &known).await?;
        let committer = Committer::start(
            self.store.clone(),
            self.root.to_path_buf(),
            self.key.to_string(),
            self.counters.clone(),
        );
        let mut jobs = Vec::new();
        let mut committer_stopped = false;
        for (job, action) in checked {
            let row = known.get(&job.want.id.0);
            let (how, row) = match (action, row) {
                (Action::Fetch, _) | (_, None) => {
                    jobs.push(job);
                    continue;
                }
                (Action::Complete, Some(_)) => {
                    Counters::add(&self.counters.skipped, 1);
                    continue;
                }
                (Action::Finish { part }, Some(r)) => (How::Finish { part }, r),
                (Action::Move { from }, Some(r)) => (How::Move { from }, r),
                (Action::Relink, Some(r)) => (How::Relink, r),
            };
            Counters::add(&self.counters.skipped, 1);
            let row = FileRow { path: job.rel.clone(), ..row.clone() };
            if !committer.send(Commit { row, how }).await {
                // It stopped on an error, which `finish` returns below.
                committer_stopped = true;
                break;
            }
        }
        Counters::add(&self.counters.to_fetch, jobs.len() as u64);
        info!(
            selected = self.counters.counts().selected,
            to_fetch = jobs.len(),
            skipped = self.counters.counts().skipped,
            "checked the files on disk"
        );
        let fetched = if committer_stopped { Ok(()) } else { self.fetch_all(&committer, jobs).await };
        let committed = committer.finish().await;
        // The sidecars reflect what is complete, however the run ended.
        let listed = async {
            self.forget_vanished().await?;
            sidecar::write(self.store, self.root, self.key).await
        };
        match fetched.and(committed) {
            Ok(()) => listed.await,
            Err(e) => {
                if let Err(also) = listed.await {
                    warn!(error = %also, "the sidecars were not rewritten");
                }
                Err(e)
            }
        }
    }

    /// Decides, for every selected image, what its file needs (blocking file IO, a few at once).
    async fn check(
        &self,
        wanted: Vec<Wanted>,
        known: &HashMap<i64, FileRow>,
    ) -> Result<Vec<(Job, Action)>, ImagesError> {
        let (size, verify) = (self.opts.size, self.opts.verify);
        let chunks: Vec<Vec<(Job, Option<FileRow>)>> = wanted
            .chunks(CHECK_CHUNK)
            .map(|c| {
                c.iter()
                    .map(|w| {
                        let job = Job { rel: layout::rel_path(w), want: w.clone(), refreshes: 0 };
                        (job, known.get(&w.id.0).cloned())
                    })
                    .collect()
            })
            .collect();
        let root = self.root.to_path_buf();
        let decided: Vec<Vec<(Job, Action)>> = futures::stream::iter(chunks)
            .map(|chunk| {
                let root = root.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        chunk
                            .into_iter()
                            .map(|(job, row)| {
                                check::decide(&root, &job.rel, row.as_ref(), size, verify)
                                    .map(|a| (job, a))
                                    .map_err(ImagesError::output(&root))
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .await
                    .map_err(|e| ImagesError::Internal(format!("the file check task failed: {e}")))?
                }
            })
            .buffered(CHECK_TASKS)
            .try_collect()
            .await?;
        Ok(decided.into_iter().flatten().collect())
    }

    /// Downloads `jobs`: URLs looked up 50 at a time as the downloads need them (the lookup
    /// runs beside the downloads), at most `concurrency` downloads at once, complete files handed
    /// to the committer.
    async fn fetch_all(&self, committer: &Committer, jobs: Vec<Job>) -> Result<(), ImagesError> {
        let cdn = Arc::new(Cdn::new(self.opts)?);
        let concurrency = self.opts.concurrency.max(1);
        let mut urls = Urls::new(self.opts.size, jobs);
        let mut running: JoinSet<Fetching> = JoinSet::new();
        let mut lookup: Option<JoinHandle<Looked>> = None;
        let mut stop = self.stop.subscribe();
        let mut fatal: Option<ImagesError> = None;
        loop {
            if *stop.borrow() != Halt::Go {
                break;
            }
            while running.len() < concurrency {
                let Some(r) = urls.pop_ready() else { break };
                self.spawn(&mut running, &cdn, r.job, r.url);
            }
            let mut deadline = None;
            if lookup.is_none() {
                match urls.next(running.len(), concurrency, Instant::now()) {
                    Next::Lookup => {
                        let (api, size, batch) = (self.api.clone(), self.opts.size, urls.take_batch());
                        lookup = Some(tokio::spawn(async move {
                            let answer = refresh::lookup(&api, size, &batch).await;
                            (batch, answer)
                        }));
                    }
                    Next::WaitUntil(t) => deadline = Some(tokio::time::Instant::from_std(t)),
                    Next::Idle => {}
                }
            }
            if running.is_empty() && lookup.is_none() {
                if urls.is_empty() {
                    break;
                }
                if deadline.is_none() {
                    fatal =
                        Some(ImagesError::Internal("the download scheduler has nothing to wait for".into()));
                    break;
                }
            }
            let event = tokio::select! {
                looked = pending_unless(lookup.as_mut()) => Event::Looked(looked),
                Some(joined) = running.join_next() => Event::Joined(joined),
                _ = sleep_until(deadline), if deadline.is_some() => Event::Tick,
                _ = stop.wait_for(|h| *h != Halt::Go) => Event::Halt,
            };
            match event {
                Event::Looked(looked) => {
                    lookup = None;
                    let (batch, answer) = looked
                        .map_err(|e| ImagesError::Internal(format!("a URL lookup task failed: {e}")))?;
                    match answer {
                        Ok(answer) => {
                            for u in urls.accept(batch, answer) {
                                self.failed(&u.job, &u.reason);
                            }
                        }
                        Err(e) if e.is_auth() || e.is_unreachable() => {
                            fatal = Some(ImagesError::Api(e));
                            break;
                        }
                        Err(e) => {
                            let reason = format!("no URL: {e}");
                            for job in &batch {
                                self.failed(job, &reason);
                            }
                        }
                    }
                }
                Event::Joined(joined) => {
                    if let Err(e) = self.settle(joined, committer, Some(&mut urls)).await {
                        fatal = Some(e);
                        break;
                    }
                }
                Event::Tick => {}
                Event::Halt => break,
            }
        }
        // A lookup still under way is an API call: it may be cancelled.
        if let Some(l) = lookup {
            l.abort();
        }
        // An error ends downloads in flight at once; an interrupt lets them finish for a moment.
        // Whatever completes is committed all the same.
        if fatal.is_some() {
            self.stop.send_replace(Halt::Now);
        }
        while let Some(joined) = running.join_next().await {
            if let Err(e) = self.settle(joined, committer, None).await {
                fatal.get_or_insert(e);
            }
        }
        fatal.map_or(Ok(()), Err)
    }

    fn spawn(&self, running: &mut JoinSet<Fetching>, cdn: &Arc<Cdn>, job: Job, url: String) {
        let part = part_path(&self.root.join(&job.rel));
        let (cdn, stop) = (cdn.clone(), self.stop.subscribe());
        running.spawn(async move {
            let outcome = tokio::select! {
                biased;
                _ = halted(stop) => None,
                r = cdn.fetch(&url, &part) => Some(r),
            };
            if !matches!(outcome, Some(Ok(Outcome::Done(_)))) {
                // Best effort: an incomplete temp file is truncated by the next download anyway.
                let _ = tokio::fs::remove_file(&part).await;
            }
            Fetching { job, part, outcome }
        });
    }

    /// Takes a finished download: commit, ask for a fresh URL (while `urls` is given, i.e. the
    /// run goes on), or count a failure. An error stops the run.
    async fn settle(
        &self,
        joined: Result<Fetching, tokio::task::JoinError>,
        committer: &Committer,
        urls: Option<&mut Urls>,
    ) -> Result<(), ImagesError> {
        let Fetching { job, part, outcome } =
            joined.map_err(|e| ImagesError::Internal(format!("a download task failed: {e}")))?;
        match outcome {
            // Stopped before it finished: the next run fetches it.
            None => Ok(()),
            Some(Err(e)) => Err(e),
            Some(Ok(Outcome::Done(f))) => {
                let row = FileRow {
                    image_id: job.want.id.0,
                    size: self.opts.size,
                    path: job.rel,
                    bytes: i64::try_from(f.bytes).unwrap_or(i64::MAX),
                    sha256: f.sha256,
                    fetched_at: chrono::Utc::now(),
                };
                if committer.send(Commit { row, how: How::Downloaded { part } }).await {
                    Ok(())
                } else {
                    // The committer stopped on an error; `finish` returns it.
                    self.stop.send_replace(Halt::Now);
                    Ok(())
                }
            }
            Some(Ok(Outcome::Expired)) => {
                let Some(urls) = urls else { return Ok(()) };
                match urls.expired(job) {
                    Ok(()) => Counters::add(&self.counters.refreshed, 1),
                    Err(job) => {
                        self.failed(&job, &format!("its URL expired {} times in a row", MAX_REFRESHES + 1))
                    }
                }
                Ok(())
            }
            Some(Ok(Outcome::Failed(reason))) => {
                self.failed(&job, &reason);
                Ok(())
            }
        }
    }

    fn failed(&self, job: &Job, reason: &str) {
        Counters::add(&self.counters.failed, 1);
        warn!(image = job.want.id.0, %reason, "picture not downloaded");
    }

    /// Drops the rows of files no longer there (deleted by hand, or a download that replaced
    /// them failed), so that the sidecars list only files that exist.
    async fn forget_vanished(&self) -> Result<(), ImagesError> {
        let rows = state::load(self.store, self.key).await?;
        let root = self.root.to_path_buf();
        let gone = tokio::task::spawn_blocking(move || {
            let mut gone = Vec::new();
            for row in rows.values() {
                if !check::still_there(&root, row).map_err(ImagesError::output(root.join(&row.path)))? {
                    gone.push(row.image_id);
                }
            }
            Ok::<_, ImagesError>(gone)
        })
        .await
        .map_err(|e| ImagesError::Internal(format!("the file check task failed: {e}")))??;
        if !gone.is_empty() {
            info!(files = gone.len(), "forgetting files that are no longer on disk");
        }
        state::forget(self.store, self.key, &gone).await
    }
}

/// A URL lookup task's result: its batch and the API's answer.
type Looked = (Vec<Job>, Result<ByIds<ThumbUrl>, ApiError>);

/// What the download loop woke up for.
enum Event {
    Looked(Result<Looked, tokio::task::JoinError>),
    Joined(Result<Fetching, tokio::task::JoinError>),
    Tick,
    Halt,
}

/// A download task's result.
struct Fetching {
    job: Job,
    part: PathBuf,
    outcome: Option<Result<Outcome, ImagesError>>,
}

/// Resolves when a download in flight must end: at once on [`Halt::Now`], after
/// [`STOP_GRACE`] on [`Halt::Drain`].
async fn halted(mut rx: watch::Receiver<Halt>) {
    // The sender outlives every download task; Err (closed) would mean the run is gone anyway.
    let _ = rx.wait_for(|h| *h != Halt::Go).await;
    if *rx.borrow() == Halt::Drain {
        tokio::select! {
            _ = tokio::time::sleep(STOP_GRACE) => {}
            _ = rx.wait_for(|h| *h == Halt::Now) => {}
        }
    }
}

/// The task's result, or never when there is none.
async fn pending_unless<T>(task: Option<&mut JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
