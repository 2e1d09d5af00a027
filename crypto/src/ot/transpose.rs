//! Transposition of a 128 × n bit matrix, the inner step of IKNP.
//!
//! Input: 128 rows of `n` bits each (row-major, least significant bit of
//! each byte first). Output: `n` blocks, where bit j of block i is bit i of
//! row j.

use crate::block::Block;

/// Transposes `rows` (128 rows of `n` bits, `n` a multiple of 8) into `out`.
pub(crate) fn transpose128(rows: &[u8], n: usize, out: &mut [Block]) {
    assert!(n.is_multiple_of(8) && rows.len() == 128 * (n / 8) && out.len() == n);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86_64 baseline; the sizes were
        // checked above, and `sse2` only indexes within them.
        unsafe { sse2(rows, n, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    portable(rows, n, out)
}

#[allow(dead_code)] // the reference on x86_64 (tests), the path elsewhere
pub(crate) fn portable(rows: &[u8], n: usize, out: &mut [Block]) {
    let rb = n / 8;
    for o in out.iter_mut() {
        *o = Block::ZERO;
    }
    for j in 0..128 {
        let row = &rows[j * rb..(j + 1) * rb];
        for (i, o) in out.iter_mut().enumerate() {
            let bit = (row[i / 8] >> (i % 8)) & 1;
            o.0 |= (bit as u128) << j;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
unsafe fn sse2(rows: &[u8], n: usize, out: &mut [Block]) {
    use std::arch::x86_64::{_mm_loadu_si128, _mm_movemask_epi8, _mm_slli_epi64};
    let rb = n / 8;
    for o in out.iter_mut() {
        *o = Block::ZERO;
    }
    let mut gather = [0u8; 16];
    for group in 0..8 {
        let shift = group * 16;
        for cb in 0..rb {
            for (k, g) in gather.iter_mut().enumerate() {
                *g = rows[(shift + k) * rb + cb];
            }
            // SAFETY: `gather` is 16 readable bytes; loadu has no alignment need.
            let mut v = unsafe { _mm_loadu_si128(gather.as_ptr().cast()) };
            for i in 0..8 {
                let mask = _mm_movemask_epi8(v) as u16;
                out[cb * 8 + 7 - i].0 |= (mask as u128) << shift;
                v = _mm_slli_epi64::<1>(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    #[test]
    fn transpose_matches_the_definition() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        for n in [8usize, 128, 1024] {
            let mut rows = vec![0u8; 128 * n / 8];
            rng.fill_bytes(&mut rows);
            let mut a = vec![Block::ZERO; n];
            let mut b = vec![Block::ZERO; n];
            transpose128(&rows, n, &mut a);
            portable(&rows, n, &mut b);
            assert_eq!(a, b);
            for i in [0, n / 2, n - 1] {
                for j in [0usize, 5, 64, 127] {
                    let bit = (rows[j * n / 8 + i / 8] >> (i % 8)) & 1 == 1;
                    assert_eq!((a[i].0 >> j) & 1 == 1, bit);
                }
            }
        }
    }
}
