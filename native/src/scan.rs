//! Byte-level scanning for the JSON decoder (lib.rs): digits 8 at a time, the exact fast path of decimal to
//! float conversion, the search for a string's end 16 bytes at a time, and short copies without a call.
//! Pure functions of byte slices; each fast path answers exactly what its slow one would (tests/test_json_native.py).

/// A mask with the high bit of each byte of `w` (read little-endian) that may not be an ASCII digit: exact up
/// to and including the first non-digit (the bytes after it may be flagged by its carry or borrow).
#[inline(always)]
fn non_digits(w: u64) -> u64 {
    // a byte c passes when c + 0x46 < 0x80 (c <= '9') and c - 0x30 does not wrap (c >= '0'); a failing byte
    // sets its high bit in one of the two. Digits pass on no carry or borrow, so the lowest flag is exact.
    (w.wrapping_add(0x4646_4646_4646_4646) | w.wrapping_sub(0x3030_3030_3030_3030)) & 0x8080_8080_8080_8080
}

/// The value of 8 ASCII digits (checked by `non_digits`), the first in the lowest byte.
#[inline(always)]
pub(crate) fn parse8(w: u64) -> u64 {
    let w = w.wrapping_sub(0x3030_3030_3030_3030);
    // pairs of digits, then pairs of pairs: 10a + b in each 16-bit lane, then 100 * that + the next lane, ...
    let w = w.wrapping_mul(10).wrapping_add(w >> 8);
    let lo = (w & 0x0000_00FF_0000_00FF).wrapping_mul(100 + (1_000_000 << 32));
    let hi = ((w >> 16) & 0x0000_00FF_0000_00FF).wrapping_mul(1 + (10_000 << 32));
    lo.wrapping_add(hi) >> 32
}

/// Past the digits from `p`, adding them to `mant` (wrapping: only meaningful while `digits` <= 19) and
/// counting them in `digits`.
#[inline(always)]
pub(crate) fn digit_run(b: &[u8], mut p: usize, mant: &mut u64, digits: &mut usize) -> usize {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    while p + 8 <= b.len() {
        let w = u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
        let m = non_digits(w);
        if m == 0 {
            *mant = mant.wrapping_mul(100_000_000).wrapping_add(parse8(w));
            *digits += 8;
            p += 8;
            continue;
        }
        // the n (0..=7) digits before the first non-digit: moved to the word's top, below them '0's
        let n = (m.trailing_zeros() / 8) as usize;
        if n > 0 {
            let top = (w << (64 - 8 * n)) | (ZEROS >> (8 * n));
            *mant = mant.wrapping_mul(POW10_INT[n]).wrapping_add(parse8(top));
            *digits += n;
            p += n;
        }
        return p;
    }
    // fewer than 8 bytes left in the block
    while p < b.len() && b[p].is_ascii_digit() {
        *mant = mant.wrapping_mul(10).wrapping_add((b[p] - b'0') as u64);
        *digits += 1;
        p += 1;
    }
    p
}

const POW10_INT: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
    1e20, 1e21, 1e22,
];

/// `mant` * 10^`exp10` as the nearest f64 when one IEEE operation gets it exactly (Clinger's fast path), else
/// None. `mant` is the decimal's digits as an integer (exact: at most 19 digits, the caller checks).
///
/// Why it is exact: a mantissa up to 2^53 and 10^0..10^22 are each exactly an f64 (5^22 < 2^53), and one
/// IEEE multiplication or division rounds its exact result to the nearest f64 (ties to even), which is what
/// `str::parse::<f64>` answers for the decimal.
#[inline(always)]
pub(crate) fn clinger(mant: u64, exp10: i64, neg: bool) -> Option<f64> {
    if mant > 1 << 53 || !(-22..=22).contains(&exp10) {
        return None;
    }
    let m = mant as f64; // exact: mant <= 2^53
    let v = if exp10 < 0 { m / POW10[(-exp10) as usize] } else { m * POW10[exp10 as usize] };
    Some(if neg { -v } else { v })
}

/// The first quote, backslash, control character or non-ASCII byte at or after `p` (or `b.len()`).
#[inline(always)]
pub(crate) fn next_special(b: &[u8], mut p: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        while p + 16 <= b.len() {
            // SAFETY: b[p..p + 16] is in bounds (unaligned load); SSE2 is part of x86_64's baseline
            let mask = unsafe {
                let x = _mm_loadu_si128(b.as_ptr().add(p) as *const __m128i);
                let quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
                let slash = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8));
                // a signed comparison: bytes >= 0x80 are negative, so "below 0x20" takes them too
                let low = _mm_cmplt_epi8(x, _mm_set1_epi8(0x20));
                _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, slash), low)) as u32
            };
            if mask != 0 {
                return p + mask.trailing_zeros() as usize;
            }
            p += 16;
        }
    }
    // fewer than 16 bytes left (or another architecture): 8 at a time, then one by one
    p = plain_run(b, p);
    while p < b.len() {
        let c = b[p];
        if c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c) {
            break;
        }
        p += 1;
    }
    p
}

/// Past the 8-byte words from `p` that hold no quote, backslash, control character or non-ASCII byte.
#[inline(always)]
fn plain_run(b: &[u8], mut p: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while p + 8 <= b.len() {
        let w = u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
        let quote = w ^ (ONES * b'"' as u64);
        let slash = w ^ (ONES * b'\\' as u64);
        let special = (quote.wrapping_sub(ONES) & !quote)
            | (slash.wrapping_sub(ONES) & !slash)
            | (w.wrapping_sub(ONES * 0x20) & !w)
            | w;
        if special & HIGH != 0 {
            break;
        }
        p += 8;
    }
    p
}

/// Appends `src[at..at + n]` to `out`. Most strings are short: when 16 bytes can be read from `at` and
/// `n` <= 16, it copies a fixed 16 bytes into `out`'s spare room (an inlined move, not a call to memcpy) and
/// keeps the first `n`.
#[inline(always)]
pub(crate) fn append(out: &mut Vec<u8>, src: &[u8], at: usize, n: usize) {
    if n <= 16 && at + 16 <= src.len() {
        out.reserve(16);
        // SAFETY: src[at..at + 16] is in bounds; `out` has room for 16 more bytes (reserved), which we write
        // through a raw pointer; only the first n (<= 16) of them, now initialized, join its length
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr().add(at), out.as_mut_ptr().add(out.len()), 16);
            out.set_len(out.len() + n);
        }
    } else {
        out.extend_from_slice(&src[at..at + n]);
    }
}
