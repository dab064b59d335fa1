//! The sidecars of an output directory: `images.geojson` (points, for QGIS: the `path` property
//! is relative to the file, which QGIS's attachment widget and photo plugins resolve) and
//! `images.csv` (the same rows with lon/lat columns, for photo tools and spreadsheets). Both list
//! every file `image_files` holds for the directory, with the image's metadata, and are written
//! atomically (temp file, fsync, rename).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::mpsc;

use super::ImagesError;
use super::commit::sync_dir;
use super::layout::{SIDECAR_CSV, SIDECAR_GEOJSON, hidden};
use crate::store::{Store, query_err};

const LIST: &str = "
SELECT f.image_id, f.size, f.path, f.bytes, f.sha256, f.fetched_at,
       i.sequence_id, i.captured_at, ST_X(i.geom), ST_Y(i.geom), i.compass_angle,
       i.computed_compass_angle, i.is_pano, i.creator_username, i.width, i.height, i.camera_type,
       i.make, i.model, i.deleted_at IS NOT NULL
  FROM image_files f LEFT JOIN images i ON i.id = f.image_id
 WHERE f.root = $1
 ORDER BY f.path";

/// The CSV columns, in order (GeoJSON properties carry the same names, lon/lat aside).
const COLUMNS: [&str; 20] = [
    "image_id",
    "sequence_id",
    "captured_at",
    "lon",
    "lat",
    "compass_angle",
    "computed_compass_angle",
    "is_pano",
    "creator_username",
    "width",
    "height",
    "camera_type",
    "make",
    "model",
    "size",
    "path",
    "bytes",
    "sha256",
    "fetched_at",
    "deleted",
];

/// Rows in flight between the database and the writer.
const QUEUE: usize = 1024;

/// One listed file: the values of [`COLUMNS`], in order.
struct Listed(Vec<Value>);

/// Writes both sidecars of `root` (rows of `key`); returns how many files they list and where
/// they are.
pub(crate) async fn write(store: &Store, root: &Path, key: &str) -> Result<(u64, Vec<PathBuf>), ImagesError> {
    let (tx, rx) = mpsc::channel::<Listed>(QUEUE);
    let dir = root.to_path_buf();
    // File writes are blocking: a writer thread takes the rows as the database streams them.
    let writer = tokio::task::spawn_blocking(move || write_files(&dir, rx));
    let read = async {
        let mut rows = sqlx::query(LIST).bind(key).fetch(store.pool());
        while let Some(r) = rows.try_next().await.map_err(query_err("listing downloaded files"))? {
            let listed = listed(&r).map_err(query_err("reading downloaded files"))?;
            if tx.send(listed).await.is_err() {
                // The writer stopped on an error, which it returns below.
                break;
            }
        }
        drop(tx);
        Ok::<(), ImagesError>(())
    };
    let read = read.await;
    let written =
        writer.await.map_err(|e| ImagesError::Internal(format!("the sidecar writer failed: {e}")))?;
    read?;
    let (n, files) = written?;
    sync_dir(root).await?;
    Ok((n, files))
}

fn listed(r: &sqlx::postgres::PgRow) -> Result<Listed, sqlx::Error> {
    let time = |t: Option<DateTime<Utc>>| {
        t.map_or(Value::Null, |t| Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true)))
    };
    let fetched: DateTime<Utc> = r.try_get(5)?;
    Ok(Listed(vec![
        json!(r.try_get::<i64, _>(0)?),
        json!(r.try_get::<Option<String>, _>(6)?),
        time(r.try_get(7)?),
        json!(r.try_get::<Option<f64>, _>(8)?),
        json!(r.try_get::<Option<f64>, _>(9)?),
        json!(r.try_get::<Option<f64>, _>(10)?),
        json!(r.try_get::<Option<f64>, _>(11)?),
        json!(r.try_get::<Option<bool>, _>(12)?),
        json!(r.try_get::<Option<String>, _>(13)?),
        json!(r.try_get::<Option<i32>, _>(14)?),
        json!(r.try_get::<Option<i32>, _>(15)?),
        json!(r.try_get::<Option<String>, _>(16)?),
        json!(r.try_get::<Option<String>, _>(17)?),
        json!(r.try_get::<Option<String>, _>(18)?),
        json!(r.try_get::<String, _>(1)?),
        json!(r.try_get::<String, _>(2)?),
        json!(r.try_get::<i64, _>(3)?),
        json!(r.try_get::<String, _>(4)?),
        time(Some(fetched)),
        // An image row is never removed, only tombstoned; NULL only if the table was edited.
        json!(r.try_get::<Option<bool>, _>(19)?.unwrap_or(true)),
    ]))
}

/// The blocking half: both temp files, row by row, then fsync and rename.
fn write_files(root: &Path, mut rx: mpsc::Receiver<Listed>) -> Result<(u64, Vec<PathBuf>), ImagesError> {
    let geojson = root.join(SIDECAR_GEOJSON);
    let csv = root.join(SIDECAR_CSV);
    let (gj_tmp, csv_tmp) = (hidden(&geojson, ".part"), hidden(&csv, ".part"));
    let open = |p: &Path| std::fs::File::create(p).map(BufWriter::new).map_err(ImagesError::output(p));
    let (mut gj, mut cs) = (open(&gj_tmp)?, open(&csv_tmp)?);
    let mut n = 0u64;
    let result = (|| -> std::io::Result<()> {
        gj.write_all(b"{\"type\":\"FeatureCollection\",\"features\":[\n")?;
        cs.write_all(COLUMNS.join(",").as_bytes())?;
        cs.write_all(b"\r\n")?;
        while let Some(Listed(values)) = rx.blocking_recv() {
            if n > 0 {
                gj.write_all(b",\n")?;
            }
            serde_json::to_writer(&mut gj, &feature(&values))?;
            let line: Vec<String> = values.iter().map(csv_field).collect();
            cs.write_all(line.join(",").as_bytes())?;
            cs.write_all(b"\r\n")?;
            n += 1;
        }
        gj.write_all(b"\n]}\n")?;
        Ok(())
    })();
    result.map_err(ImagesError::output(&gj_tmp))?;
    for (w, tmp, to) in [(gj, &gj_tmp, &geojson), (cs, &csv_tmp, &csv)] {
        let f =
            w.into_inner().map_err(|e| ImagesError::Output { path: tmp.clone(), source: e.into_error() })?;
        f.sync_all().map_err(ImagesError::output(tmp))?;
        std::fs::rename(tmp, to).map_err(ImagesError::output(to))?;
    }
    Ok((n, vec![geojson, csv]))
}

/// A GeoJSON point feature of one listed file (no geometry when the image has no position).
fn feature(values: &[Value]) -> Value {
    let mut props = serde_json::Map::new();
    for (name, v) in COLUMNS.iter().zip(values) {
        if *name != "lon" && *name != "lat" {
            props.insert((*name).to_string(), v.clone());
        }
    }
    let geometry = match (values.get(3).and_then(Value::as_f64), values.get(4).and_then(Value::as_f64)) {
        (Some(lon), Some(lat)) => json!({"type": "Point", "coordinates": [lon, lat]}),
        _ => Value::Null,
    };
    json!({"type": "Feature", "id": values.first(), "geometry": geometry, "properties": props})
}

/// One CSV field (RFC 4180): quoted when it holds a comma, quote or line break; NULL is empty.
fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field(&json!("plain")), "plain");
        assert_eq!(csv_field(&json!("a,b")), "\"a,b\"");
        assert_eq!(csv_field(&json!("say \"hi\"\n")), "\"say \"\"hi\"\"\n\"");
        assert_eq!(csv_field(&Value::Null), "");
        assert_eq!(csv_field(&json!(12.5)), "12.5");
        assert_eq!(csv_field(&json!(true)), "true");
    }

    #[test]
    fn features_are_points_with_every_other_column_as_a_property() {
        let mut values: Vec<Value> = COLUMNS.iter().map(|_| Value::Null).collect();
        values[0] = json!(7);
        values[3] = json!(13.0);
        values[4] = json!(55.5);
        let f = feature(&values);
        assert_eq!(f["geometry"]["coordinates"], json!([13.0, 55.5]));
        assert_eq!(f["id"], json!(7));
        assert_eq!(f["properties"].as_object().unwrap().len(), COLUMNS.len() - 2);
        values[3] = Value::Null;
        assert_eq!(feature(&values)["geometry"], Value::Null);
    }
}
