//! Bounded reads of user-named files: a file is capped while it is read, never trusted by its
//! stated size (a FIFO or `/dev/zero` states size 0).

use std::path::Path;

/// Reads a UTF-8 text file, refusing one larger than `cap` bytes while reading.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(cap.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("is larger than {cap} bytes, the most that is read"),
        ));
    }
    String::from_utf8(buf)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "is not UTF-8 text"))
}
