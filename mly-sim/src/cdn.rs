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
}
