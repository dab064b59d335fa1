//! COPY text encoding of a tile's rows, done once per tile outside the (retried) transaction.

use std::borrow::Cow;
use std::io::Write as _;

use crate::store::{StoreError, TileWrite, tile_key};
use mly_contract::Tileset;

/// The identity of one encoded row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct RowKey {
    pub(super) id: i64,
    pub(super) tile_hash: i64,
    pub(super) has_details: bool,
}

/// COPY text rows with each row's end, so that a write can send any subset of them.
#[derive(Debug, Default)]
pub(super) struct EncodedRows {
    pub(super) text: CopyText,
    pub(super) ends: Vec<usize>,
    pub(super) keys: Vec<RowKey>,
    /// stage_link rows (feature, image) of the features with details.
    pub(super) links: Vec<u8>,
}

impl EncodedRows {
    pub(super) fn end_row(&mut self, key: RowKey) {
        self.text.end_row();
        self.ends.push(self.text.buf.len());
        self.keys.push(key);
    }

    /// The rows `idx` (ascending, distinct), concatenated.
    pub(super) fn select(&self, idx: &[usize]) -> Cow<'_, [u8]> {
        if idx.len() == self.ends.len() {
            return Cow::Borrowed(&self.text.buf);
        }
        let mut out = Vec::new();
        for &i in idx {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            out.extend_from_slice(&self.text.buf[start..self.ends[i]]);
        }
        Cow::Owned(out)
    }
}

/// COPY text-format payloads of one tile, encoded once.
pub struct Staged {
    pub(super) images: EncodedRows,
    /// The sequence each image row names (to rebuild the lines of written images' sequences).
    pub(super) image_sequences: Vec<Option<String>>,
    pub(super) features: EncodedRows,
    pub(super) detections: Vec<u8>,
    pub(super) image_count: i32,
    pub(super) feature_count: i32,
}

impl Staged {
    pub fn encode(w: &TileWrite) -> Result<Staged, StoreError> {
        let computed = w.tileset == Tileset::ComputedPublic;
        let (z, x, y) = tile_key(w.tile);
        let mut img =
            EncodedRows { text: CopyText::with_capacity(w.images.len() * 200), ..Default::default() };
        let mut image_sequences = Vec::with_capacity(w.images.len());
        for r in &w.images {
            let t = &r.tile;
            let d = r.details.as_ref();
            let tile_pos = (t.lon, t.lat);
            let geom = d.and_then(|d| d.geometry).unwrap_or(tile_pos);
            let computed_geom = match d.and_then(|d| d.computed_geometry) {
                Some(p) => Some(p),
                None if computed => Some(tile_pos),
                None => None,
            };
            let what = || format!("image {}", t.id);
            let seq = d.and_then(|d| d.sequence_id.as_deref()).or(t.sequence_id.as_deref());
            let c = &mut img.text;
            c.int(Some(t.id.0));
            c.text(seq);
            c.timestamp(d.and_then(|d| d.captured_at_ms).or(t.captured_at_ms), &what)?;
            c.float(d.and_then(|d| d.compass_angle).or(t.compass_angle));
            c.bool(d.and_then(|d| d.is_pano).or(t.is_pano));
            c.int(d.and_then(|d| d.organization_id).or(t.organization_id));
            c.int(d.and_then(|d| d.creator_id).or(t.creator_id));
            c.int(Some(r.tile_hash));
            c.point(Some(geom), &what)?;
            c.now_if(d.is_some());
            c.float(d.and_then(|d| d.computed_compass_angle));
            c.text(d.and_then(|d| d.creator_username.as_deref()));
            c.text(d.and_then(|d| d.camera_type.as_deref()));
            c.text(d.and_then(|d| d.make.as_deref()));
            c.text(d.and_then(|d| d.model.as_deref()));
            c.int(d.and_then(|d| d.width).map(i64::from));
            c.int(d.and_then(|d| d.height).map(i64::from));
            c.float(d.and_then(|d| d.altitude));
            c.float(d.and_then(|d| d.computed_altitude));
            c.float(d.and_then(|d| d.quality_score));
            c.point(computed_geom, &what)?;
            c.int(Some(i64::from(z)));
            c.int(Some(i64::from(x)));
            c.int(Some(i64::from(y)));
            image_sequences.push(seq.map(str::to_string));
            img.end_row(RowKey { id: t.id.0, tile_hash: r.tile_hash, has_details: d.is_some() });
        }
        let mut feat =
            EncodedRows { text: CopyText::with_capacity(w.features.len() * 160), ..Default::default() };
        let mut links = CopyText::with_capacity(0);
        for r in &w.features {
            let t = &r.tile;
            let d = r.details.as_ref();
            let what = || format!("map feature {}", t.id);
            let c = &mut feat.text;
            c.int(Some(t.id.0));
            // The tile's kind, not the API's spelling ("trafficsign"): tombstones select on it.
            c.text(Some(t.kind.as_str()));
            c.text(d.and_then(|d| d.object_value.as_deref()).or(t.value.as_deref()));
            c.timestamp(d.and_then(|d| d.first_seen_at_ms).or(t.first_seen_at_ms), &what)?;
            c.timestamp(d.and_then(|d| d.last_seen_at_ms).or(t.last_seen_at_ms), &what)?;
            c.float(d.and_then(|d| d.aligned_direction));
            c.point(Some(d.and_then(|d| d.geometry).unwrap_or((t.lon, t.lat))), &what)?;
            c.int(Some(r.tile_hash));
            c.now_if(d.is_some());
            c.int(Some(i64::from(z)));
            c.int(Some(i64::from(x)));
            c.int(Some(i64::from(y)));
            feat.end_row(RowKey { id: t.id.0, tile_hash: r.tile_hash, has_details: d.is_some() });
            for img in d.map(|d| d.images.as_slice()).unwrap_or_default() {
                links.int(Some(t.id.0));
                links.int(Some(img.0));
                links.end_row();
            }
        }
        feat.links = links.buf;
        let mut det = CopyText::with_capacity(w.detections.len() * 200);
        for r in &w.detections {
            let d = &r.det;
            det.int(Some(d.id));
            det.int(Some(d.image_id.0));
            det.int(d.map_feature_id.map(|f| f.0));
            det.text(d.value.as_deref());
            det.int(d.created_at_ms);
            det.bytea(r.pixel_geom_wkb.as_deref());
            det.text(d.geometry_b64.as_deref());
            det.end_row();
        }
        Ok(Staged {
            images: img,
            image_sequences,
            features: feat,
            detections: det.buf,
            image_count: super::to_i32(w.images.len()),
            feature_count: super::to_i32(w.features.len()),
        })
    }
}

/// Builder of PostgreSQL COPY text format (tab-separated, `\N` for NULL, backslash escapes).
#[derive(Debug)]
pub(super) struct CopyText {
    pub(super) buf: Vec<u8>,
    pub(super) at_row_start: bool,
}

impl Default for CopyText {
    fn default() -> CopyText {
        CopyText::with_capacity(0)
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

impl CopyText {
    pub(super) fn with_capacity(n: usize) -> CopyText {
        CopyText { buf: Vec::with_capacity(n), at_row_start: true }
    }

    pub(super) fn sep(&mut self) {
        if !self.at_row_start {
            self.buf.push(b'\t');
        }
        self.at_row_start = false;
    }

    pub(super) fn end_row(&mut self) {
        self.buf.push(b'\n');
        self.at_row_start = true;
    }

    pub(super) fn null(&mut self) {
        self.buf.extend_from_slice(b"\\N");
    }

    pub(super) fn text(&mut self, v: Option<&str>) {
        self.sep();
        let Some(s) = v else { return self.null() };
        for b in s.bytes() {
            match b {
                b'\\' => self.buf.extend_from_slice(b"\\\\"),
                b'\t' => self.buf.extend_from_slice(b"\\t"),
                b'\n' => self.buf.extend_from_slice(b"\\n"),
                b'\r' => self.buf.extend_from_slice(b"\\r"),
                // NUL cannot be stored in PostgreSQL text at all; drop it rather than fail the tile.
                0 => {}
                _ => self.buf.push(b),
            }
        }
    }

    pub(super) fn int(&mut self, v: Option<i64>) {
        self.sep();
        match v {
            // Writing into a Vec cannot fail.
            Some(n) => {
                let _ = write!(self.buf, "{n}");
            }
            None => self.null(),
        }
    }

    pub(super) fn float(&mut self, v: Option<f64>) {
        self.sep();
        match v.filter(|f| f.is_finite()) {
            // `{:?}` prints the shortest representation that round-trips exactly.
            Some(f) => {
                let _ = write!(self.buf, "{f:?}");
            }
            None => self.null(),
        }
    }

    pub(super) fn bool(&mut self, v: Option<bool>) {
        self.sep();
        match v {
            Some(true) => self.buf.push(b't'),
            Some(false) => self.buf.push(b'f'),
            None => self.null(),
        }
    }

    pub(super) fn hex(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.buf.push(HEX[usize::from(b >> 4)]);
            self.buf.push(HEX[usize::from(b & 0xf)]);
        }
    }

    /// A point as hex EWKB with SRID 4326, the text input form of `geometry`.
    pub(super) fn point(
        &mut self,
        v: Option<(f64, f64)>,
        what: &dyn Fn() -> String,
    ) -> Result<(), StoreError> {
        self.sep();
        let Some((lon, lat)) = v else {
            self.null();
            return Ok(());
        };
        if !(lon.is_finite() && lat.is_finite()) {
            return Err(StoreError::Encode {
                what: what(),
                reason: format!("position {lon},{lat} is not finite"),
            });
        }
        // Little endian (1), type Point with the SRID flag (0x20000001), SRID 4326, x, y.
        self.hex(&[0x01, 0x01, 0x00, 0x00, 0x20, 0xE6, 0x10, 0x00, 0x00]);
        self.hex(&lon.to_le_bytes());
        self.hex(&lat.to_le_bytes());
        Ok(())
    }

    /// Milliseconds since the epoch as a `timestamptz` literal, exactly what
    /// `to_timestamp(ms / 1000.0)` gives (millisecond values are exact in microseconds).
    pub(super) fn timestamp(&mut self, ms: Option<i64>, what: &dyn Fn() -> String) -> Result<(), StoreError> {
        self.sep();
        let Some(ms) = ms else {
            self.null();
            return Ok(());
        };
        use chrono::{Datelike, Timelike};
        let t = chrono::DateTime::from_timestamp_millis(ms)
            .filter(|t| (1..=9999).contains(&t.year()))
            .ok_or_else(|| StoreError::Encode {
                what: what(),
                reason: format!("time {ms} ms since 1970 is out of range"),
            })?;
        let _ = write!(
            self.buf,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}+00",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.timestamp_subsec_millis()
        );
        Ok(())
    }

    /// The transaction's start time when `yes` (`now` is timestamptz input for exactly what
    /// `now()` returns), else NULL.
    pub(super) fn now_if(&mut self, yes: bool) {
        self.sep();
        if yes {
            self.buf.extend_from_slice(b"now");
        } else {
            self.null();
        }
    }

    /// bytea in COPY text: `\x` + hex, with the backslash itself escaped for COPY.
    pub(super) fn bytea(&mut self, v: Option<&[u8]>) {
        self.sep();
        match v {
            Some(b) => {
                self.buf.extend_from_slice(b"\\\\x");
                self.hex(b);
            }
            None => self.null(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes() {
        let mut c = CopyText::with_capacity(0);
        c.text(Some("a\tb\\c\nd\re\0f"));
        c.text(None);
        c.int(Some(-5));
        c.float(Some(f64::NAN));
        c.float(Some(0.1));
        c.bool(Some(true));
        c.bytea(Some(&[0x01, 0xab]));
        c.end_row();
        assert_eq!(
            String::from_utf8(c.buf).unwrap(),
            "a\\tb\\\\c\\nd\\ref\t\\N\t-5\t\\N\t0.1\tt\t\\\\x01AB\n"
        );
    }

    #[test]
    fn point_is_ewkb_with_srid() {
        let mut c = CopyText::with_capacity(0);
        c.point(Some((8.5, 47.4)), &|| "x".into()).unwrap();
        let s = String::from_utf8(c.buf).unwrap();
        // little endian, type Point with the SRID flag (0x20000001), SRID 4326 (0x10E6)
        assert!(s.starts_with("0101000020E6100000"), "{s}");
        assert!(c_point_err());
    }

    #[test]
    fn point_bytes_equal_geozero_ewkb() {
        use geozero::{CoordDimensions, ToWkb};
        let (lon, lat) = (13.000_123_4, 55.600_987_6);
        let mut c = CopyText::with_capacity(0);
        c.point(Some((lon, lat)), &|| "x".into()).unwrap();
        let g = geo_types::Geometry::Point(geo_types::Point::new(lon, lat));
        let ewkb = g.to_ewkb(CoordDimensions::xy(), Some(4326)).unwrap();
        let hex: String = ewkb.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(String::from_utf8(c.buf).unwrap(), hex);
    }

    #[test]
    fn timestamps_are_iso_utc_milliseconds() {
        let mut c = CopyText::with_capacity(0);
        c.timestamp(Some(1_600_000_000_123), &|| "x".into()).unwrap();
        c.timestamp(Some(0), &|| "x".into()).unwrap();
        c.timestamp(Some(-1), &|| "x".into()).unwrap();
        c.timestamp(None, &|| "x".into()).unwrap();
        c.now_if(true);
        c.now_if(false);
        assert_eq!(
            String::from_utf8(c.buf).unwrap(),
            "2020-09-13 12:26:40.123+00\t1970-01-01 00:00:00.000+00\t1969-12-31 23:59:59.999+00\t\\N\tnow\t\\N"
        );
        let mut c = CopyText::with_capacity(0);
        let e = c.timestamp(Some(i64::MAX), &|| "image 7".into()).unwrap_err().to_string();
        assert!(e.contains("image 7") && e.contains("out of range"), "{e}");
    }

    fn c_point_err() -> bool {
        let mut c = CopyText::with_capacity(0);
        c.point(Some((f64::NAN, 1.0)), &|| "image 1".into()).is_err()
    }

    #[test]
    fn encoded_rows_select_subsets() {
        let mut r = EncodedRows::default();
        for id in 1..=3 {
            r.text.int(Some(id));
            r.end_row(RowKey { id, tile_hash: 0, has_details: false });
        }
        assert_eq!(&*r.select(&[0, 1, 2]), b"1\n2\n3\n");
        assert_eq!(&*r.select(&[0, 2]), b"1\n3\n");
        assert_eq!(&*r.select(&[1]), b"2\n");
    }
}
