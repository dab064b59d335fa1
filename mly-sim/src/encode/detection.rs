//! The base64 MVT blob of a detection's outline, as the Graph API sends it.

use base64::Engine;
use geozero::mvt::tile::GeomType;

use super::layer::{command, zigzag};
use mly_contract::tiles::EXTENT;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Base64 of a one-polygon MVT (layer `mpy-or`, version 2, extent 4096, feature id 1, no
/// properties) outlining `polygon_px` (image-normalised pixels, 0..4096, ring without repeat).
///
/// Hand-encoded rather than through prost because the real blobs put the layer's `version` and
/// `extent` before its features, an order prost's field-declaration order does not reproduce.
pub(crate) fn detection_geometry_b64(polygon_px: &[(u32, u32)]) -> String {
    let pts: Vec<(i64, i64)> = polygon_px.iter().map(|&(x, y)| (i64::from(x), i64::from(y))).collect();
    let mut geom = Vec::new();
    if pts.len() >= 3 {
        geom.push(command(1, 1));
        geom.push(zigzag(pts[0].0));
        geom.push(zigzag(pts[0].1));
        let mut cur = pts[0];
        geom.push(command(2, (pts.len() - 1) as u32));
        for &p in &pts[1..] {
            geom.push(zigzag(p.0 - cur.0));
            geom.push(zigzag(p.1 - cur.1));
            cur = p;
        }
        geom.push(command(7, 1));
    }
    let mut packed = Vec::new();
    for g in geom {
        put_varint(&mut packed, u64::from(g));
    }
    let mut feature = Vec::new();
    put_varint(&mut feature, 1 << 3); // id
    put_varint(&mut feature, 1);
    put_varint(&mut feature, 3 << 3); // type
    put_varint(&mut feature, GeomType::Polygon as u64);
    put_len(&mut feature, 4, &packed);
    let mut layer = Vec::new();
    put_varint(&mut layer, 15 << 3); // version
    put_varint(&mut layer, 2);
    put_len(&mut layer, 1, b"mpy-or");
    put_varint(&mut layer, 5 << 3); // extent
    put_varint(&mut layer, u64::from(EXTENT));
    put_len(&mut layer, 2, &feature);
    let mut tile = Vec::new();
    put_len(&mut tile, 3, &layer);
    base64::engine::general_purpose::STANDARD.encode(tile)
}
