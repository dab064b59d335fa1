//! A baseline greyscale JPEG of one flat grey level: the bytes behind the simulator's image URLs.

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
