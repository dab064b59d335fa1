//! Where files go: `DIR/<sequence>/<captured_at>_<image id>.jpg`, with the capture time in a
//! sortable, filename-safe UTC form (`20240131T235959.123Z`), so a directory listing is a drive in
//! capture order. Temp files are hidden names in the same directory (a rename within one
//! directory is atomic).

use std::path::{Path, PathBuf};

use super::ImagesError;
use super::select::Wanted;

/// The GeoJSON sidecar listing every downloaded file of the directory.
pub const SIDECAR_GEOJSON: &str = "images.geojson";
/// The CSV sidecar (the same rows, with lon/lat columns).
pub const SIDECAR_CSV: &str = "images.csv";

/// Directory of images without a sequence, and the time part of images without a capture time.
const UNKNOWN: &str = "unknown";
/// Longest directory name made of a sequence id (real ones are 22 characters).
const MAX_SEQUENCE_NAME: usize = 100;

/// The file's path relative to the output directory (always `/`-separated).
pub(crate) fn rel_path(w: &Wanted) -> String {
    let seq = w.sequence_id.as_deref().map(safe_name).unwrap_or_else(|| UNKNOWN.to_string());
    let time = w
        .captured_at
        .map(|t| t.format("%Y%m%dT%H%M%S%.3fZ").to_string())
        .unwrap_or_else(|| UNKNOWN.to_string());
    format!("{seq}/{time}_{}.jpg", w.id)
}

/// A sequence id as a directory name: letters, digits, `-` and `_` kept, anything else (a `/`,
/// `..`, a control character from a hostile server) replaced by `_`.
fn safe_name(s: &str) -> String {
    let name: String = s
        .chars()
        .take(MAX_SEQUENCE_NAME)
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    if name.is_empty() { UNKNOWN.to_string() } else { name }
}

/// The temp file a download of `file` is written to before it is renamed into place.
pub(crate) fn part_path(file: &Path) -> PathBuf {
    hidden(file, ".part")
}

/// `dir/.name<suffix>` for `dir/name`.
pub(crate) fn hidden(file: &Path, suffix: &str) -> PathBuf {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    file.with_file_name(format!(".{name}{suffix}"))
}

/// Creates the output directory if needed; returns its absolute path and that path as the text
/// `image_files.root` keys its rows by.
pub(crate) fn prepare_root(out: &Path) -> Result<(PathBuf, String), ImagesError> {
    let bad = |reason: String| ImagesError::BadOut { path: out.display().to_string(), reason };
    if out.as_os_str().is_empty() {
        return Err(bad("is empty".into()));
    }
    if out.exists() && !out.is_dir() {
        return Err(bad("exists and is not a directory".into()));
    }
    std::fs::create_dir_all(out).map_err(ImagesError::output(out))?;
    let root = std::fs::canonicalize(out).map_err(ImagesError::output(out))?;
    let key = root.to_str().ok_or_else(|| bad("is not valid UTF-8".into()))?.to_string();
    Ok((root, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ImageId;
    use chrono::TimeZone;

    #[test]
    fn paths_sort_by_capture_time_and_stay_inside_the_directory() {
        let t = chrono::Utc.with_ymd_and_hms(2024, 1, 31, 23, 59, 59).unwrap()
            + chrono::Duration::milliseconds(123);
        let w = Wanted { id: ImageId(42), sequence_id: Some("abcXYZ_-9".into()), captured_at: Some(t) };
        assert_eq!(rel_path(&w), "abcXYZ_-9/20240131T235959.123Z_42.jpg");
        let hostile = Wanted { id: ImageId(1), sequence_id: Some("../../etc\n".into()), captured_at: None };
        assert_eq!(rel_path(&hostile), "______etc_/unknown_1.jpg");
        let none = Wanted { id: ImageId(2), sequence_id: Some(String::new()), captured_at: None };
        assert_eq!(rel_path(&none), "unknown/unknown_2.jpg");
        let earlier = Wanted { captured_at: Some(t - chrono::Duration::days(400)), ..w.clone() };
        assert!(rel_path(&earlier) < rel_path(&w));
        assert_eq!(part_path(Path::new("/d/s/a.jpg")), Path::new("/d/s/.a.jpg.part"));
    }
}
