//! Helpers shared by the engine's integration tests: a small deterministic PRNG (splitmix64),
//! block contents derived from (address, size, seed) so that overlapping or corrupted blocks are
//! caught, and the process's resident set size from `/proc/self/statm`.
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

/// splitmix64: tiny, fast, deterministic, good enough to pick sizes and operations.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// Roughly log-uniform in `lo..=hi` (`lo >= 1`): as many small sizes as large ones per
    /// doubling, which spreads requests over the size classes.
    pub fn log_range(&mut self, lo: usize, hi: usize) -> usize {
        let lo_bits = usize::BITS - lo.leading_zeros() - 1;
        let hi_bits = usize::BITS - hi.leading_zeros() - 1;
        let bits = self.range(lo_bits as usize, hi_bits as usize);
        let base = 1usize << bits;
        self.range(base, (base * 2 - 1).min(hi)).max(lo)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// The splitmix64 finaliser: a bijective 64-bit mixer.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The pattern key of a block: depends on where it is, how long it is and a per-block seed, so
/// a block handed out twice or overlapping another is detected by either owner.
pub fn key(addr: usize, size: usize, seed: u64) -> u64 {
    mix(addr as u64 ^ mix(size as u64 ^ seed.rotate_left(29)))
}

/// The pattern's word number `i` for `key`.
#[inline]
fn word(key: u64, i: usize) -> u64 {
    mix(key.wrapping_add(i as u64))
}

/// Fills `len` bytes at `p` with the pattern of `key`.
///
/// # Safety
/// `[p, p + len)` must be writable memory the caller owns.
pub unsafe fn fill(p: *mut u8, len: usize, key: u64) {
    // SAFETY: the caller owns the range.
    let bytes = unsafe { std::slice::from_raw_parts_mut(p, len) };
    let mut chunks = bytes.chunks_exact_mut(8);
    let mut i = 0;
    for c in &mut chunks {
        c.copy_from_slice(&word(key, i).to_le_bytes());
        i += 1;
    }
    let rest = chunks.into_remainder();
    let last = word(key, i).to_le_bytes();
    rest.copy_from_slice(&last[..rest.len()]);
}

/// The offset of the first byte in `[p, p + len)` that differs from the pattern of `key`.
///
/// # Safety
/// `[p, p + len)` must be readable memory the caller owns.
pub unsafe fn mismatch(p: *const u8, len: usize, key: u64) -> Option<usize> {
    // SAFETY: the caller owns the range.
    let bytes = unsafe { std::slice::from_raw_parts(p, len) };
    let mut chunks = bytes.chunks_exact(8);
    let mut i = 0;
    for c in &mut chunks {
        let want = word(key, i).to_le_bytes();
        if c != want {
            let j = c.iter().zip(want).position(|(a, b)| *a != b).unwrap_or(0);
            return Some(i * 8 + j);
        }
        i += 1;
    }
    let rest = chunks.remainder();
    let last = word(key, i).to_le_bytes();
    rest.iter()
        .zip(last)
        .position(|(a, b)| *a != b)
        .map(|j| i * 8 + j)
}

/// The offset of the first non-zero byte in `[p, p + len)`.
///
/// # Safety
/// `[p, p + len)` must be readable memory the caller owns.
pub unsafe fn nonzero(p: *const u8, len: usize) -> Option<usize> {
    // SAFETY: the caller owns the range.
    let bytes = unsafe { std::slice::from_raw_parts(p, len) };
    bytes.iter().position(|&b| b != 0)
}

/// The process's resident set size in bytes, from `/proc/self/statm`.
pub fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm has a resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

/// Bytes as MiB, for messages.
pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Signed difference `a - b` in MiB, for messages.
pub fn diff_mib(a: usize, b: usize) -> f64 {
    (a as f64 - b as f64) / (1 << 20) as f64
}
