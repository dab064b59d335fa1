//! Making files appear: complete temp files are recorded in `image_files` in batches (one
//! statement each), then renamed into place and their directories fsynced. A run stopped between
//! the two leaves a temp file its row describes, which the next run renames without a download
//! (`check::Action::Finish`); a file under its final name is therefore always complete.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::state::{self, FileRow};
use super::{Counters, ImagesError};
use crate::store::Store;

/// Rows per statement at most.
const BATCH: usize = 256;
/// How long the first file of a batch waits for others before the batch is written: short, as a
/// file downloaded but not yet committed is fetched again if the process is killed.
const LINGER: Duration = Duration::from_millis(20);
/// Complete files waiting to be committed (bounded: downloads wait when the database is slow).
const QUEUE: usize = 1024;

/// A file to make appear (or whose row changes).
#[derive(Debug)]
pub(crate) struct Commit {
    pub row: FileRow,
    pub how: How,
}

/// How a committed file gets to its place.
#[derive(Debug)]
pub(crate) enum How {
    /// Downloaded into this temp file: row first, then the rename.
    Downloaded { part: PathBuf },
    /// A temp file whose row was committed by an earlier run: only the rename.
    Finish { part: PathBuf },
    /// A complete file at another place: the rename first (the next run finds it at its new
    /// place by its hash, `check::Action::Relink`), then the row.
    Move { from: PathBuf },
    /// Already at its place; only the row changes.
    Relink,
}

/// The committer: a task writing what it receives until its sender is dropped.
pub(crate) struct Committer {
    tx: mpsc::Sender<Commit>,
    task: JoinHandle<Result<(), ImagesError>>,
}

impl Committer {
    /// Starts committing into `root` (absolute path; `key` its `image_files.root` text).
    pub(crate) fn start(store: Store, root: PathBuf, key: String, counters: Arc<Counters>) -> Committer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(store, root, key, counters, rx));
        Committer { tx, task }
    }

    /// Hands a file over; `false` once the committer has stopped on an error (see [`Self::finish`]).
    pub(crate) async fn send(&self, c: Commit) -> bool {
        self.tx.send(c).await.is_ok()
    }

    /// Commits what is left and ends; the first error the committer met, if any.
    pub(crate) async fn finish(self) -> Result<(), ImagesError> {
        drop(self.tx);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ImagesError::Internal(format!("the commit task failed: {e}"))),
        }
    }
}

async fn run(
    store: Store,
    root: PathBuf,
    key: String,
    counters: Arc<Counters>,
    mut rx: mpsc::Receiver<Commit>,
) -> Result<(), ImagesError> {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(c)) => batch.push(c),
                Ok(None) | Err(_) => break,
            }
        }
        commit(&store, &root, &key, &counters, batch).await?;
    }
    Ok(())
}

async fn commit(
    store: &Store,
    root: &Path,
    key: &str,
    counters: &Counters,
    batch: Vec<Commit>,
) -> Result<(), ImagesError> {
    let mut dirs = BTreeSet::new();
    // Moves first: their rename comes before their row.
    for c in &batch {
        if let How::Move { from } = &c.how {
            let to = root.join(&c.row.path);
            rename(from, &to).await?;
            dirs.extend(from.parent().map(Path::to_path_buf));
            dirs.extend(to.parent().map(Path::to_path_buf));
        }
    }
    let rows: Vec<FileRow> =
        batch.iter().filter(|c| !matches!(c.how, How::Finish { .. })).map(|c| c.row.clone()).collect();
    state::upsert(store, key, &rows).await?;
    let (mut files, mut bytes) = (0u64, 0u64);
    for c in &batch {
        let to = root.join(&c.row.path);
        match &c.how {
            How::Downloaded { part } => {
                rename(part, &to).await?;
                files += 1;
                bytes += u64::try_from(c.row.bytes).unwrap_or_default();
            }
            How::Finish { part } => rename(part, &to).await?,
            How::Move { .. } | How::Relink => continue,
        }
        dirs.extend(to.parent().map(Path::to_path_buf));
    }
    // The renames are durable once their directories are.
    for d in dirs {
        sync_dir(&d).await?;
    }
    Counters::add(&counters.files, files);
    Counters::add(&counters.bytes, bytes);
    tracing::debug!(files, rows = rows.len(), "committed downloaded files");
    Ok(())
}

async fn rename(from: &Path, to: &Path) -> Result<(), ImagesError> {
    if let Some(dir) = to.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(ImagesError::output(dir))?;
    }
    tokio::fs::rename(from, to).await.map_err(ImagesError::output(to))
}

/// fsyncs a directory, so that the names created in it survive a crash of the machine.
pub(crate) async fn sync_dir(dir: &Path) -> Result<(), ImagesError> {
    let d = dir.to_path_buf();
    let r = tokio::task::spawn_blocking(move || std::fs::File::open(&d).and_then(|f| f.sync_all())).await;
    match r {
        Ok(r) => r.map_err(ImagesError::output(dir)),
        Err(e) => Err(ImagesError::Internal(format!("the directory sync task failed: {e}"))),
    }
}
