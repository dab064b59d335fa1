//! What is on disk already: for each selected image, whether its file is complete (its length,
//! or with `--verify` its sha256, matches its `image_files` row), can be had without a download,
//! or must be fetched. Blocking file IO: called on the blocking pool.

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::layout::part_path;
use super::state::FileRow;
use super::{ThumbSize, hex};

/// What to do for one selected image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Its file is complete where it belongs.
    Complete,
    /// Its row was committed but the rename of its temp file was not: finish it.
    Finish { part: PathBuf },
    /// Its complete file lies at the place its row names, which is no longer its place
    /// (its sequence or capture time changed): move it.
    Move { from: PathBuf },
    /// Its complete file is at its place already but its row still names the old one (a run
    /// stopped between a move and its row): only the row changes.
    Relink,
    /// Download it.
    Fetch,
}

/// Decides for the image whose place is `root/rel`, given its row (if any).
pub(crate) fn decide(
    root: &Path,
    rel: &str,
    row: Option<&FileRow>,
    size: ThumbSize,
    verify: bool,
) -> std::io::Result<Action> {
    let Some(row) = row.filter(|r| r.size == size) else { return Ok(Action::Fetch) };
    let file = root.join(rel);
    let part = part_path(&file);
    // A temp file only survives a rename that never happened; it is the row's file when its
    // length and hash say so (a complete download is fsynced before its row is written).
    if matches_row(&part, row, true)? {
        return Ok(Action::Finish { part });
    }
    if row.path == rel {
        return Ok(if matches_row(&file, row, verify)? { Action::Complete } else { Action::Fetch });
    }
    let from = root.join(&row.path);
    if matches_row(&from, row, verify)? {
        return Ok(Action::Move { from });
    }
    if matches_row(&file, row, true)? {
        return Ok(Action::Relink);
    }
    Ok(Action::Fetch)
}

/// Whether `path` has the row's length (and, when `hash`, its sha256). Absent is `false`.
fn matches_row(path: &Path, row: &FileRow, hash: bool) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if i64::try_from(len).ok() != Some(row.bytes) {
        return Ok(false);
    }
    if !hash {
        return Ok(true);
    }
    Ok(sha256_file(path)?.1 == row.sha256)
}

/// Length and sha256 (hex) of a file, read in blocks.
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex(&h.finalize())))
}

/// Whether the file a row names is still there with the row's length; rows whose file is gone
/// are dropped before the sidecar is written, so that it lists only files that exist.
pub(crate) fn still_there(root: &Path, row: &FileRow) -> std::io::Result<bool> {
    matches_row(&root.join(&row.path), row, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(path: &str, body: &[u8]) -> FileRow {
        FileRow {
            image_id: 1,
            size: ThumbSize::S256,
            path: path.into(),
            bytes: body.len() as i64,
            sha256: hex(&Sha256::digest(body)),
            fetched_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn decides_from_the_row_and_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("s")).unwrap();
        let body = b"\xff\xd8\xffjpeg bytes";
        let r = row("s/a.jpg", body);
        let d = |r: Option<&FileRow>, verify| decide(root, "s/a.jpg", r, ThumbSize::S256, verify).unwrap();
        assert_eq!(d(None, false), Action::Fetch);
        assert_eq!(d(Some(&r), false), Action::Fetch, "no file yet");
        std::fs::write(root.join("s/a.jpg"), body).unwrap();
        assert_eq!(d(Some(&r), false), Action::Complete);
        assert_eq!(decide(root, "s/a.jpg", Some(&r), ThumbSize::Original, false).unwrap(), Action::Fetch);
        // Same length, other bytes: only --verify sees it.
        std::fs::write(root.join("s/a.jpg"), b"\xff\xd8\xffjpeg bytex").unwrap();
        assert_eq!(d(Some(&r), false), Action::Complete);
        assert_eq!(d(Some(&r), true), Action::Fetch);
        std::fs::write(root.join("s/.a.jpg.part"), body).unwrap();
        assert_eq!(d(Some(&r), false), Action::Finish { part: root.join("s/.a.jpg.part") });
        std::fs::remove_file(root.join("s/.a.jpg.part")).unwrap();
        // The row names an old place.
        std::fs::write(root.join("s/a.jpg"), body).unwrap();
        let old = row("t/b.jpg", body);
        assert_eq!(d(Some(&old), false), Action::Relink);
        std::fs::create_dir_all(root.join("t")).unwrap();
        std::fs::write(root.join("t/b.jpg"), body).unwrap();
        assert_eq!(d(Some(&old), false), Action::Move { from: root.join("t/b.jpg") });
        assert!(still_there(root, &old).unwrap());
        std::fs::remove_file(root.join("t/b.jpg")).unwrap();
        assert!(!still_there(root, &old).unwrap());
        assert_eq!(sha256_file(&root.join("s/a.jpg")).unwrap(), (body.len() as u64, r.sha256.clone()));
    }
}
