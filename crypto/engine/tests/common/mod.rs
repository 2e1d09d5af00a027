//! What several test binaries share.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::Write;

/// `inflated` zero bytes, zstd-compressed, behind a SEAL header that says
/// "zstd" and declares the frame's true length: a decompression bomb of a
/// few KiB.
pub fn bomb(inflated: usize) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..inflated >> 20 {
        enc.write_all(&zeros).unwrap();
    }
    let body = enc.finish().unwrap();
    let mut out = vec![0u8; 16];
    out[0..2].copy_from_slice(&0xA15Eu16.to_le_bytes());
    out[2] = 16;
    out[3] = 4;
    out[5] = 2;
    out.extend(body);
    let len = out.len() as u64;
    out[8..16].copy_from_slice(&len.to_le_bytes());
    out
}
