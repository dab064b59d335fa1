//! Image bytes: the simulator's stand-in for Meta's image CDN.
//!
//! `thumb_256_url`, `thumb_1024_url`, `thumb_2048_url` and `thumb_original_url` point at
//! `{base}/m1/v/t6/{opaque}?stp=…&oh=…&oe=…`, shaped like the real signed fbcdn URLs (§7). `base` is
//! the simulator's own address unless `--public-url` names another. The route serves a small
//! deterministic baseline JPEG (one grey level per image) of the thumbnail's exact width and height.
//! Like the CDN, it needs no token, refuses a URL whose signature `oh` does not match (403 "Bad URL
//! hash") and one whose hex expiry `oe` has passed (403 "URL signature expired"), so clients must
//! ask the Graph API for fresh URLs rather than store them.

use crate::world::SimImage;
use mly_contract::hash::splitmix64 as splitmix;

/// How long a handed-out URL stays valid by default; real signed URLs live for days.
pub(crate) const URL_TTL_SECS: i64 = 3 * 86_400;

/// Path prefix of image URLs (the real CDN's).
pub(crate) const PATH_PREFIX: &str = "/m1/v/t6/";

/// The four sizes the Graph API hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Thumb {
    /// `thumb_256_url`: 256 px wide.
    S256,
    /// `thumb_1024_url`: 1024 px wide.
    S1024,
    /// `thumb_2048_url`: 2048 px wide.
    S2048,
    /// `thumb_original_url`: the image's own width and height.
    Original,
}

impl Thumb {
    /// The Graph field naming this size.
    pub(crate) fn from_field(field: &str) -> Option<Thumb> {
        Some(match field {
            "thumb_256_url" => Thumb::S256,
            "thumb_1024_url" => Thumb::S1024,
            "thumb_2048_url" => Thumb::S2048,
            "thumb_original_url" => Thumb::Original,
            _ => return None,
        })
    }

    fn width(self) -> Option<u32> {
        match self {
            Thumb::S256 => Some(256),
            Thumb::S1024 => Some(1024),
            Thumb::S2048 => Some(2048),
            Thumb::Original => None,
        }
    }
}

/// (width, height) of a thumbnail of an image of `w`×`h`: the thumbnail's width, the image's aspect.
pub(crate) fn thumb_size(w: u32, h: u32, kind: Thumb) -> (u32, u32) {
    let (w, h) = (w.max(1), h.max(1));
    match kind.width() {
        None => (w, h),
        Some(tw) => {
            let th = (f64::from(tw) * f64::from(h) / f64::from(w)).round().max(1.0);
            // At most 65,535 (the JPEG limit); an aspect that extreme is not an image the world makes.
            (tw, th.min(65_535.0) as u32)
        }
    }
}

/// Where image URLs point and how they are signed.
#[derive(Debug, Clone)]
pub(crate) struct Cdn {
    base: String,
    key: u64,
    ttl_s: i64,
}

/// What a valid image URL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageRequest {
    /// The image id.
    pub(crate) id: i64,
    /// Width of the JPEG.
    pub(crate) width: u32,
    /// Height of the JPEG.
    pub(crate) height: u32,
}

/// Why an image URL is refused (both are 403 on the real CDN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CdnRefusal {
    /// The path or signature was not made by this simulator.
    #[error("Bad URL hash")]
    BadHash,
    /// `oe` lies in the past.
    #[error("URL signature expired")]
    Expired,
}

impl Cdn {
    /// URLs under `base` (scheme, host and port; a trailing `/` is dropped), signed with `seed`,
    /// valid for `ttl_s` seconds.
    pub(crate) fn new(base: &str, seed: u64, ttl_s: i64) -> Cdn {
        Cdn {
            base: base.trim_end_matches('/').to_string(),
            key: splitmix(seed ^ 0x6364_6e5f_6b65_7921),
            ttl_s,
        }
    }

    fn sign(&self, opaque: &str, oe: i64) -> u64 {
        let h = opaque.bytes().fold(self.key, |h, b| splitmix(h ^ u64::from(b)));
        splitmix(h ^ oe as u64)
    }

    /// The signed URL of `img` at size `kind`, valid for the TTL after `now_s`.
    pub(crate) fn url(&self, img: &SimImage, kind: Thumb, now_s: i64) -> String {
        let (w, h) = thumb_size(img.width, img.height, kind);
        let opaque = format!("An{:x}_{w}x{h}", img.id);
        let oe = now_s + self.ttl_s;
        let oh = self.sign(&opaque, oe);
        let gid = splitmix(img.id as u64 ^ oe as u64);
        let stp = match kind {
            Thumb::Original => String::new(),
            _ => format!("stp=s{w}x{h}&"),
        };
        format!(
            "{}{PATH_PREFIX}{opaque}?{stp}_nc_gid={gid:x}&ccb=10-5&oh=00_{oh:016x}&oe={oe:08X}&_nc_sid=201bca",
            self.base
        )
    }

    /// Checks an image URL's opaque path part and query (`oh`, `oe`) at time `now_s`.
    pub(crate) fn verify(
        &self,
        opaque: &str,
        query: &[(String, String)],
        now_s: i64,
    ) -> Result<ImageRequest, CdnRefusal> {
        let q = |k: &str| query.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let oe = q("oe").and_then(|v| i64::from_str_radix(v, 16).ok()).ok_or(CdnRefusal::BadHash)?;
        let oh = q("oh")
            .and_then(|v| v.strip_prefix("00_"))
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or(CdnRefusal::BadHash)?;
        if oh != self.sign(opaque, oe) {
            return Err(CdnRefusal::BadHash);
        }
        // The signature proves the simulator made this path, so it parses; still, refuse rather
        // than panic on anything else.
        let (id, size) =
            opaque.strip_prefix("An").and_then(|r| r.split_once('_')).ok_or(CdnRefusal::BadHash)?;
        let (w, h) = size.split_once('x').ok_or(CdnRefusal::BadHash)?;
        let req = ImageRequest {
            id: i64::from_str_radix(id, 16).map_err(|_| CdnRefusal::BadHash)?,
            width: w.parse().map_err(|_| CdnRefusal::BadHash)?,
            height: h.parse().map_err(|_| CdnRefusal::BadHash)?,
        };
        if oe < now_s {
            return Err(CdnRefusal::Expired);
        }
        Ok(req)
    }
}

/// The grey level of an image's JPEG (deterministic per id, never pure black or white).
pub(crate) fn grey_level(id: i64) -> u8 {
    32 + (splitmix(id as u64 ^ 0x6772_6579) % 192) as u8
}

/// Appends `n` bits of `v` (most significant first) to a JPEG entropy-coded segment, stuffing a
/// zero byte after every 0xFF as the format requires.
struct BitWriter {
    out: Vec<u8>,
    acc: u32,
    bits: u32,
}

impl BitWriter {
    fn put(&mut self, v: u32, n: u32) {
        for i in (0..n).rev() {
            self.acc = (self.acc << 1) | ((v >> i) & 1);
            self.bits += 1;
            if self.bits == 8 {
                self.byte();
            }
        }
    }

    fn byte(&mut self) {
        let b = self.acc as u8;
        self.out.push(b);
        if b == 0xFF {
            self.out.push(0);
        }
        self.acc = 0;
        self.bits = 0;
    }

    /// Pads the last byte with one-bits (as the format asks).
    fn finish(mut self) -> Vec<u8> {
        if self.bits > 0 {
            let pad = 8 - self.bits;
            self.put((1 << pad) - 1, pad);
        }
        self.out
    }
}

/// The standard luminance DC Huffman table (ITU T.81 K.3): code lengths per length 1..=16.
const DC_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];

/// (code, length) of DC category `cat` (0..=11) in [`DC_BITS`]'s canonical code.
fn dc_code(cat: u32) -> (u32, u32) {
    let (mut code, mut k) = (0u32, 0u32);
    for (len, &count) in (1u32..).zip(DC_BITS.iter()) {
        for _ in 0..count {
            if k == cat {
                return (code, len);
            }
            code += 1;
            k += 1;
        }
        code <<= 1;
    }
    // Categories above 11 do not occur: a DC difference of 8-bit samples needs at most 11 bits.
    (0, 0)
}

/// A baseline greyscale JPEG of `width`×`height` pixels, all of grey level `level`.
///
/// Every 8×8 block is flat, so only DC coefficients are coded: the first block's value, then a
/// difference of 0 and an end-of-block per block (3 bits), which keeps even a 16-megapixel
/// original around 100 KB and its encoding instant.
pub(crate) fn flat_jpeg(width: u16, height: u16, level: u8) -> Vec<u8> {
    let mut j = Vec::with_capacity(1024);
    j.extend_from_slice(&[0xFF, 0xD8]);
    // JFIF APP0: version 1.01, no density units, 1:1 aspect.
    j.extend_from_slice(&[0xFF, 0xE0, 0, 16, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0]);
    // One quantisation table of ones: the DC coefficient is coded exactly.
    j.extend_from_slice(&[0xFF, 0xDB, 0, 67, 0]);
    j.extend_from_slice(&[1u8; 64]);
    // SOF0: 8-bit, height, width, one component (id 1, 1×1 sampling, table 0).
    j.extend_from_slice(&[0xFF, 0xC0, 0, 11, 8]);
    j.extend_from_slice(&height.to_be_bytes());
    j.extend_from_slice(&width.to_be_bytes());
    j.extend_from_slice(&[1, 1, 0x11, 0]);
    // DHT: the standard DC table (class 0, id 0) ...
    j.extend_from_slice(&[0xFF, 0xC4, 0, 31, 0x00]);
    j.extend_from_slice(&DC_BITS);
    j.extend_from_slice(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    // ... and an AC table (class 1, id 0) holding only end-of-block, coded as the single bit 0.
    j.extend_from_slice(&[0xFF, 0xC4, 0, 20, 0x10, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00]);
    // SOS: one component using tables 0/0, full spectral range.
    j.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0x00, 0, 63, 0]);
    let blocks = u64::from(width.div_ceil(8)) * u64::from(height.div_ceil(8));
    let mut w = BitWriter { out: Vec::with_capacity((blocks * 3 / 8 + 16) as usize), acc: 0, bits: 0 };
    // With a table of ones, the forward DCT's DC term of a flat block is 8 × (level − 128).
    let dc = 8 * (i32::from(level) - 128);
    let cat = 32 - dc.unsigned_abs().leading_zeros();
    let (code, len) = dc_code(cat);
    w.put(code, len);
    // Negative values are sent as their one's complement in `cat` bits.
    let bits = if dc < 0 { (dc + (1 << cat) - 1) as u32 } else { dc as u32 };
    w.put(bits, cat);
    w.put(0, 1);
    let (zero, zlen) = dc_code(0);
    for _ in 1..blocks {
        w.put(zero, zlen);
        w.put(0, 1);
    }
    j.extend_from_slice(&w.finish());
    j.extend_from_slice(&[0xFF, 0xD9]);
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: i64, w: u32, h: u32) -> SimImage {
        SimImage {
            id,
            sequence_id: String::new(),
            captured_at_ms: 0,
            compass_angle: 0.0,
            computed_compass_angle: 0.0,
            lon: 0.0,
            lat: 0.0,
            computed: None,
            altitude: 0.0,
            computed_altitude: 0.0,
            is_pano: false,
            creator_id: 1,
            creator_username: String::new(),
            organization_id: None,
            camera_type: String::new(),
            make: String::new(),
            model: String::new(),
            width: w,
            height: h,
            quality_score: None,
            atomic_scale: 1.0,
            camera_parameters: vec![],
            computed_rotation: [0.0; 3],
            exif_orientation: 1,
            merge_cc: 0,
            has_mesh: false,
            foot: false,
        }
    }

    fn split(url: &str) -> (String, Vec<(String, String)>) {
        let (path, q) = url.split_once('?').unwrap();
        let opaque = path.split(PATH_PREFIX).nth(1).unwrap().to_string();
        let q =
            q.split('&').map(|kv| kv.split_once('=').unwrap()).map(|(k, v)| (k.into(), v.into())).collect();
        (opaque, q)
    }

    #[test]
    fn urls_verify_until_they_expire_and_resist_tampering() {
        let cdn = Cdn::new("http://127.0.0.1:9/", 1, URL_TTL_SECS);
        let url = cdn.url(&img(1234, 4160, 3120), Thumb::S256, 1_000);
        assert!(url.starts_with("http://127.0.0.1:9/m1/v/t6/An4d2_256x192?stp=s256x192&"), "{url}");
        let (opaque, q) = split(&url);
        assert_eq!(cdn.verify(&opaque, &q, 1_000), Ok(ImageRequest { id: 1234, width: 256, height: 192 }));
        assert_eq!(
            cdn.verify(&opaque, &q, 1_000 + URL_TTL_SECS),
            Ok(ImageRequest { id: 1234, width: 256, height: 192 })
        );
        assert_eq!(cdn.verify(&opaque, &q, 1_001 + URL_TTL_SECS), Err(CdnRefusal::Expired));
        assert_eq!(cdn.verify("An4d2_2048x1536", &q, 1_000), Err(CdnRefusal::BadHash));
        assert_eq!(
            Cdn::new("http://x", 2, URL_TTL_SECS).verify(&opaque, &q, 1_000),
            Err(CdnRefusal::BadHash)
        );
        let orig = cdn.url(&img(1, 5760, 2880), Thumb::Original, 0);
        assert!(orig.contains("/An1_5760x2880?_nc_gid="), "{orig}");
        assert_eq!(thumb_size(5760, 2880, Thumb::S1024), (1024, 512));
    }

    #[test]
    fn jpeg_has_the_asked_size_and_stuffs_ff() {
        for (w, h, level) in [(256u16, 192u16, 200u8), (1, 1, 32), (9, 17, 223), (4160, 3120, 128)] {
            let j = flat_jpeg(w, h, level);
            assert_eq!(&j[..2], &[0xFF, 0xD8]);
            assert_eq!(&j[j.len() - 2..], &[0xFF, 0xD9]);
            let sof = j.windows(2).position(|x| x == [0xFF, 0xC0]).unwrap();
            assert_eq!(u16::from_be_bytes([j[sof + 5], j[sof + 6]]), h);
            assert_eq!(u16::from_be_bytes([j[sof + 7], j[sof + 8]]), w);
            // No marker inside the entropy-coded data: every 0xFF there is followed by 0x00.
            let sos = j.windows(2).position(|x| x == [0xFF, 0xDA]).unwrap() + 10;
            let data = &j[sos..j.len() - 2];
            assert!(data.windows(2).all(|x| x[0] != 0xFF || x[1] == 0), "{w}x{h}");
        }
        assert!(flat_jpeg(4160, 3120, 90).len() < 100_000);
        assert_eq!(dc_code(0), (0, 2));
        assert_eq!(dc_code(1), (2, 3));
        assert_eq!(dc_code(6), (0b1110, 4));
        assert_eq!(dc_code(11), (0b1_1111_1110, 9));
    }
}
