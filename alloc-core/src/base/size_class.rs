//! Size classes: every request is rounded up to one of 64 sizes, four per power of two.
//!
//! ```text
//!  class  0..=3   16, 32, 48, 64                    (16-byte quantum)
//!  class  4..=35  80, 96, 112, 128, 160, … 16 KiB   small: objects carved from slabs
//!  class 36..=63  20 KiB … 2 MiB                     large: one page run per object
//!  above 2 MiB                                       huge: a dedicated mapping
//! ```
//!
//! With four classes per doubling the waste above 64 bytes is at most a fifth of the block;
//! below it the 16-byte alignment quantum decides (at most 15 bytes). A class whose size is a
//! multiple of an alignment `a ≤ 4 KiB` has every object aligned to `a`, because slabs start on
//! a page (mini slabs, of classes up to 1 KiB, on a multiple of their own size) and objects are
//! packed from the slab's start; aligned requests rely on that.
//! The table is computed by `const fn`s and its invariants checked at compile time.

use crate::platform::os::{PAGE_SHIFT, PAGE_SIZE};
use static_assertions::const_assert;

/// Every block is aligned to at least this many bytes.
pub const QUANTUM: usize = 16;
/// The number of size classes.
pub const NUM_CLASSES: usize = 64;
/// The largest small class (carved from slabs).
pub const SMALL_MAX: usize = 16 << 10;
/// Classes `0..NUM_SMALL` are small.
pub const NUM_SMALL: usize = 36;
/// The largest class; larger requests are huge and get their own mapping.
pub const LARGE_MAX: usize = 2 << 20;
/// Classes `0..NUM_CACHED` are kept in thread caches: all small ones plus large ones up to
/// 256 KiB, where a page-run allocation under the arena lock would dominate the cost.
pub const NUM_CACHED: usize = 52;
/// Cached classes above this size hold only two blocks per thread, and are flushed when idle.
pub const CACHED_LARGE_MIN: usize = 32 << 10;
/// The cache line size assumed for false sharing.
pub const CACHE_LINE: usize = 64;
/// Classes `0..SUBLINE_CLASSES` are smaller than a cache line: several objects share a line.
pub const SUBLINE_CLASSES: usize = class_of_computed(CACHE_LINE);
const_assert!(class_size(SUBLINE_CLASSES) == CACHE_LINE);

/// The largest number of objects in one slab (its free bitmap has this many bits).
pub const MAX_SLAB_OBJECTS: usize = 256;
/// The largest slab, in pages.
pub const MAX_SLAB_PAGES: usize = 16;

/// The size in bytes of class `c`.
pub const fn class_size(c: usize) -> usize {
    if c < 4 {
        QUANTUM * (c + 1)
    } else {
        let group = (c - 4) / 4;
        let step = (c - 4) % 4;
        let base = 64 << group;
        base + (step + 1) * (base / 4)
    }
}

/// The smallest class that holds `size` bytes, computed (see [`class_of`] for the fast one).
/// `size` must be at most [`LARGE_MAX`].
pub const fn class_of_computed(size: usize) -> usize {
    if size <= 64 {
        if size == 0 {
            0
        } else {
            size.div_ceil(QUANTUM) - 1
        }
    } else {
        let lg = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize; // 2^lg < size <= 2^(lg+1)
        let base = 1usize << lg;
        let spacing = base / 4;
        let step = (size - base).div_ceil(spacing) - 1;
        4 + (lg - 6) * 4 + step
    }
}

/// Sizes up to [`SMALL_MAX`] are looked up in this table, indexed by `(size + 15) / 16`.
static SMALL_CLASS_OF: [u8; SMALL_MAX / QUANTUM + 1] = {
    let mut table = [0u8; SMALL_MAX / QUANTUM + 1];
    let mut i = 0;
    while i < table.len() {
        table[i] = class_of_computed(i * QUANTUM) as u8;
        i += 1;
    }
    table
};

/// The smallest class that holds `size` bytes. `size` must be at most [`LARGE_MAX`].
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    if size <= SMALL_MAX {
        SMALL_CLASS_OF[size.div_ceil(QUANTUM)] as usize
    } else {
        class_of_computed(size)
    }
}

/// Whether class `c` is small (slab-allocated).
#[inline(always)]
pub const fn is_small(c: usize) -> bool {
    c < NUM_SMALL
}

/// Pages in a slab of small class `c`: the fewest (up to 16) holding at least four objects
/// with at most 1/32 of the slab left over, so that slabs waste little and stay small.
pub const fn slab_pages(c: usize) -> usize {
    let size = class_size(c);
    let mut pages = 1;
    while pages < MAX_SLAB_PAGES {
        let bytes = pages * PAGE_SIZE;
        if bytes / size >= 4 && bytes % size <= bytes / 32 {
            break;
        }
        pages += 1;
    }
    pages
}

/// Objects in a slab of small class `c`.
pub const fn slab_objects(c: usize) -> usize {
    let n = slab_pages(c) * PAGE_SIZE / class_size(c);
    if n > MAX_SLAB_OBJECTS {
        MAX_SLAB_OBJECTS
    } else {
        n
    }
}

/// Pages in a block of large class `c`.
pub const fn large_pages(c: usize) -> usize {
    class_size(c) >> PAGE_SHIFT
}

/// The most blocks one thread-cache stack ever holds: 2048, so that a loop that allocates and
/// frees 1,600 small blocks (glibc's malloc benchmark) runs from the cache alone; at 1024 it
/// sent 600 to their slabs and back at each round (1.06x the time).
pub const MAX_CACHE_CAPACITY: usize = 2048;

const fn clamp_capacity(n: usize, max: usize) -> usize {
    if n < 4 {
        4
    } else if n > max {
        max
    } else {
        n
    }
}

/// How many blocks of cached class `c` a thread cache starts out holding: about 32 KiB worth,
/// between 4 and 128 blocks. Small classes get many (refills are batched), large two: with one,
/// a thread that allocates and frees blocks of a large class in turn (churn) took every other
/// one from the page heap, under the arena's lock (two: 0.95× the time, 4 % more peak RSS).
pub const fn cache_capacity(c: usize) -> usize {
    let size = class_size(c);
    if size > CACHED_LARGE_MIN {
        return 2;
    }
    clamp_capacity((32 << 10) / size, 128)
}

/// Slots of class `c`'s stack while it is packed among the other classes' at a thread's
/// start (see `thread::cache`): at most 4, 32 bytes, so that all of them fit the cache's first
/// page with its fields (at 16 they ran into a second page, which every thread touched). At
/// the full [`cache_capacity`] (up to 1 KiB of slots each) a small program's 20 or so classes
/// spread over five pages.
pub const fn packed_capacity(c: usize) -> usize {
    let n = cache_capacity(c);
    if n < PACKED_MAX {
        n
    } else {
        PACKED_MAX
    }
}

const PACKED_MAX: usize = 4;

/// How far a class's stack may grow when the thread keeps overflowing it (allocating and
/// freeing in batches larger than the stack): about 1 MiB worth, up to [`MAX_CACHE_CAPACITY`]
/// blocks (a batch of 2,000 blocks of up to 512 B). The thread's growth allowance bounds the
/// sum (see `thread::cache`).
pub const fn cache_capacity_max(c: usize) -> usize {
    if class_size(c) > CACHED_LARGE_MIN {
        return cache_capacity(c);
    }
    let n = clamp_capacity((1 << 20) / class_size(c), MAX_CACHE_CAPACITY);
    if n < cache_capacity(c) {
        cache_capacity(c)
    } else {
        n
    }
}

/// `ceil(2^32 / size)` for class `c`: `(offset * magic) >> 32` divides an offset inside a slab
/// by the class size exactly when the offset is a multiple of it, which is what free checks.
pub const fn div_magic(c: usize) -> u64 {
    let d = class_size(c) as u64;
    (1u64 << 32).div_ceil(d)
}

/// The multiplier of [`ClassInfo::starts_block`] for class `c`: `floor(2^64 / size) + 1`.
///
/// With `e = mul * size - 2^64` (between 1 and `size`), an offset `k * size` times `mul` wraps
/// to `k * e`, while any other offset below 4 MiB lands at `mul` or above (Lemire, Kaser and
/// Kurz, "Faster remainder by direct computation"). So one multiplication and one comparison
/// against `objects * e` tell whether an offset starts one of the span's blocks.
pub const fn start_mul(c: usize) -> u64 {
    ((1u128 << 64) / class_size(c) as u128 + 1) as u64
}

const fn start_limit(c: usize, objects: usize) -> u64 {
    let e = start_mul(c).wrapping_mul(class_size(c) as u64);
    e * objects as u64
}

/// What `free`'s fast path needs of one cached class, in a table indexed by a fast-path code
/// (class + 1 in a slab, [`mini_code`] in a mini slab, or 0 where no cached block starts): the
/// block-start check ([`ClassInfo::starts_block`]'s constants, for as many blocks as the span
/// holds), whether the class is smaller than a cache line, and the class.
#[derive(Clone, Copy)]
pub struct BlockStarts {
    mul: u64,
    limit: u64,
    /// All ones for classes below [`SUBLINE_CLASSES`], else 0: `(tag ^ own) & subline` is
    /// non-zero exactly for a line-sharing block of another arena, with no branch on the class.
    pub subline: u32,
    /// The class.
    pub class: u32,
}

impl BlockStarts {
    /// Whether `offset` (from the span's start, below 4 MiB) starts a block.
    #[inline(always)]
    pub fn accepts(&self, offset: usize) -> bool {
        (offset as u64).wrapping_mul(self.mul) < self.limit
    }
}

/// log2 of [`GRANULE`].
pub const GRANULE_SHIFT: u32 = 9;
/// The granule of `free`'s fast-path codes (see `addr::segment`), and of mini slabs.
pub const GRANULE: usize = 1 << GRANULE_SHIFT;
/// The largest class with mini slabs: a class's first slab in an arena, a granule or two of a
/// page that other classes' mini slabs share (see `span::slab`). A small program then touches
/// a page for every four to eight such classes it uses, not one for each; and the KiB that
/// stdio takes for a `/proc` file's buffer (the block size procfs reports) shares a page too.
pub const MINI_MAX: usize = 1 << 10;
/// Classes `0..NUM_MINI` have mini slabs.
pub const NUM_MINI: usize = class_of_computed(MINI_MAX) + 1;
const_assert!(class_size(NUM_MINI - 1) == MINI_MAX);

/// Classes up to this size have mini slabs of one granule (two blocks at least), the larger
/// ones of two, aligned to their size (so that a KiB block is aligned to a KiB). At 128 B,
/// `pairs`' classes took a page more (11 KiB of mini slabs against 13); programs that use a
/// few blocks of the classes of 160-256 B take their first slab of pages a refill earlier.
const MINI_ONE_GRANULE_MAX: usize = 256;

/// Bytes of a mini slab of class `c` (below [`NUM_MINI`]): one granule or two.
pub const fn mini_bytes(c: usize) -> usize {
    if class_size(c) <= MINI_ONE_GRANULE_MAX {
        GRANULE
    } else {
        2 * GRANULE
    }
}
const_assert!(2 * GRANULE >= MINI_MAX);

/// Objects in a mini slab of class `c` (below [`NUM_MINI`]).
pub const fn mini_objects(c: usize) -> usize {
    mini_bytes(c) / class_size(c)
}

/// The fast-path code of class `c`'s blocks in a mini slab (below [`NUM_MINI`]): the codes
/// after the cached classes' (`class + 1`), since a mini slab holds fewer blocks than a slab.
pub const fn mini_code(c: usize) -> usize {
    NUM_CACHED + 1 + c
}

/// Entries of [`STARTS_BY_CODE`]: every fast-path code is below this.
pub const CODES: usize = 80;
const_assert!(mini_code(NUM_MINI - 1) < CODES && CODES <= 256);

/// [`BlockStarts`] by fast-path code. Code 0's entry and the unused ones accept no offset
/// (nothing is below 0), so `free`'s fast path needs no separate test for them.
pub static STARTS_BY_CODE: [BlockStarts; CODES] = {
    let mut t = [BlockStarts {
        mul: 0,
        limit: 0,
        subline: 0,
        class: 0,
    }; CODES];
    let mut c = 0;
    while c < NUM_CACHED {
        let objects = if is_small(c) { slab_objects(c) } else { 1 };
        t[c + 1] = block_starts(c, objects);
        if c < NUM_MINI {
            t[mini_code(c)] = block_starts(c, mini_objects(c));
        }
        c += 1;
    }
    t
};

const fn block_starts(c: usize, objects: usize) -> BlockStarts {
    BlockStarts {
        mul: start_mul(c),
        limit: start_limit(c, objects),
        subline: if c < SUBLINE_CLASSES { u32::MAX } else { 0 },
        class: c as u32,
    }
}

/// Per-class constants gathered in one table, read on the hot paths.
#[derive(Clone, Copy)]
pub struct ClassInfo {
    /// Block size in bytes.
    pub size: u32,
    /// Slab pages (small) or block pages (large).
    pub pages: u16,
    /// Objects per slab (small only).
    pub objects: u16,
    /// See [`div_magic`].
    pub div_magic: u32,
    /// Initial thread-cache capacity (cached classes only).
    pub cache_capacity: u16,
    /// Largest thread-cache capacity (cached classes only).
    pub cache_capacity_max: u16,
    /// See [`start_mul`].
    pub start_mul: u64,
    /// `objects * e`: see [`start_mul`].
    pub start_limit: u64,
}

impl ClassInfo {
    /// Whether `offset` (from the start of a span of this class, below 4 MiB) is the start of
    /// one of its blocks.
    #[inline(always)]
    pub fn starts_block(&self, offset: usize) -> bool {
        (offset as u64).wrapping_mul(self.start_mul) < self.start_limit
    }
}

const fn info(c: usize) -> ClassInfo {
    let small = is_small(c);
    let objects = if small { slab_objects(c) } else { 1 };
    ClassInfo {
        size: class_size(c) as u32,
        pages: if small {
            slab_pages(c) as u16
        } else {
            large_pages(c) as u16
        },
        objects: objects as u16,
        div_magic: div_magic(c) as u32,
        cache_capacity: if c < NUM_CACHED {
            cache_capacity(c) as u16
        } else {
            0
        },
        cache_capacity_max: if c < NUM_CACHED {
            cache_capacity_max(c) as u16
        } else {
            0
        },
        start_mul: start_mul(c),
        start_limit: start_limit(c, objects),
    }
}

/// The class table.
pub static CLASSES: [ClassInfo; NUM_CLASSES] = {
    let mut t = [info(0); NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        t[c] = info(c);
        c += 1;
    }
    t
};

/// One of the capacities of a thread-cache stack (see `thread::cache`).
#[derive(Clone, Copy)]
pub enum StackCapacity {
    /// [`packed_capacity`], where a stack starts.
    Packed,
    /// [`cache_capacity`].
    Standard,
    /// [`cache_capacity_max`].
    Largest,
}

/// Class `c`'s stack capacity of kind `which`.
pub const fn stack_capacity(c: usize, which: StackCapacity) -> usize {
    match which {
        StackCapacity::Packed => packed_capacity(c),
        StackCapacity::Standard => cache_capacity(c),
        StackCapacity::Largest => cache_capacity_max(c),
    }
}

/// The slots of every cached class's stack at capacity `which`, side by side.
pub const fn total_stack_slots(which: StackCapacity) -> usize {
    let mut sum = 0;
    let mut c = 0;
    while c < NUM_CACHED {
        sum += stack_capacity(c, which);
        c += 1;
    }
    sum
}

/// The sum of all largest thread-cache capacities: the slots one thread cache needs for its
/// stacks' own regions (the memory is only touched as far as stacks actually grow).
pub const TOTAL_CACHE_SLOTS: usize = total_stack_slots(StackCapacity::Largest);

const fn table_is_sound() -> bool {
    let mut c = 0;
    while c < NUM_CLASSES {
        let size = class_size(c);
        // Multiples of the quantum, strictly increasing, and each its own class.
        if !size.is_multiple_of(QUANTUM) || class_of_computed(size) != c {
            return false;
        }
        if c > 0 {
            let prev = class_size(c - 1);
            if size <= prev {
                return false;
            }
            // Worst-case internal waste: a request of prev+1 bytes in this class.
            if size > 64 && (size - prev - 1) * 5 > size {
                return false;
            }
            if class_of_computed(prev + 1) != c {
                return false;
            }
        }
        if is_small(c) {
            let objs = slab_pages(c) * PAGE_SIZE / size;
            if objs < 1 || objs > MAX_SLAB_OBJECTS || slab_pages(c) > MAX_SLAB_PAGES {
                return false;
            }
        } else if !size.is_multiple_of(PAGE_SIZE) {
            return false;
        }
        c += 1;
    }
    true
}

const_assert!(table_is_sound());
const_assert!(class_size(NUM_SMALL - 1) == SMALL_MAX);
const_assert!(class_size(NUM_CLASSES - 1) == LARGE_MAX);
const_assert!(class_size(NUM_CACHED - 1) == 256 << 10);
const_assert!(NUM_CLASSES <= 256); // class indices fit a u8

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_matches_computation_for_every_size() {
        for size in 0..=LARGE_MAX {
            let c = class_of(size);
            assert_eq!(c, class_of_computed(size), "size {size}");
            assert!(class_size(c) >= size.max(1));
            if c > 0 {
                assert!(
                    class_size(c - 1) < size,
                    "size {size} is not in the smallest class"
                );
            }
        }
    }

    #[test]
    fn waste_is_bounded() {
        for size in 1..=LARGE_MAX {
            let usable = class_size(class_of(size));
            if size > 64 {
                assert!(
                    (usable - size) * 5 <= usable,
                    "size {size} -> {usable} wastes over 20%"
                );
            } else {
                assert!(usable - size < QUANTUM);
            }
        }
    }

    #[test]
    fn about_four_classes_per_doubling() {
        let mut lo = 64;
        while lo < LARGE_MAX {
            let n = (0..NUM_CLASSES)
                .filter(|&c| class_size(c) > lo && class_size(c) <= 2 * lo)
                .count();
            assert_eq!(n, 4, "classes in ({lo}, {}]", 2 * lo);
            lo *= 2;
        }
    }

    #[test]
    fn aligned_sizes_give_aligned_objects() {
        // A class holding a multiple of `a` has a size that is a multiple of `a`.
        let mut a = QUANTUM;
        while a <= PAGE_SIZE {
            for size in (a..=SMALL_MAX).step_by(a) {
                let c = class_of(size);
                assert_eq!(class_size(c) % a, 0, "size {size} align {a}");
            }
            a *= 2;
        }
    }

    #[test]
    fn slabs_waste_little() {
        for c in 0..NUM_SMALL {
            let bytes = slab_pages(c) * PAGE_SIZE;
            let used = slab_objects(c) * class_size(c);
            assert!(bytes - used <= bytes / 32 || slab_pages(c) == MAX_SLAB_PAGES);
            assert!(slab_objects(c) >= 1);
        }
    }

    #[test]
    fn div_magic_divides_multiples_exactly() {
        for info in CLASSES.iter().take(NUM_SMALL) {
            let size = info.size as u64;
            for i in 0..info.objects as u64 {
                let off = i * size;
                assert_eq!((off * info.div_magic as u64) >> 32, i);
                // Offsets that are not multiples never pass the check.
                for delta in [1u64, 8, size / 2] {
                    let bad = off + delta;
                    if delta % size != 0 {
                        let q = (bad * info.div_magic as u64) >> 32;
                        assert_ne!(q * size, bad);
                    }
                }
            }
        }
    }

    #[test]
    fn fast_free_table_matches_the_classes_and_code_0_accepts_nothing() {
        for off in (0..(4usize << 20)).step_by(16) {
            for code in [0, mini_code(NUM_MINI - 1) + 1, CODES - 1] {
                assert!(
                    !STARTS_BY_CODE[code].accepts(off),
                    "code {code} accepted offset {off}"
                );
            }
        }
        for (c, info) in CLASSES.iter().enumerate().take(NUM_CACHED) {
            let span = info.pages as usize * PAGE_SIZE;
            for off in (0..span + 2 * info.size as usize).step_by(16) {
                assert_eq!(STARTS_BY_CODE[c + 1].accepts(off), info.starts_block(off));
            }
            assert_eq!(
                STARTS_BY_CODE[c + 1].subline != 0,
                (info.size as usize) < CACHE_LINE
            );
            assert_eq!(STARTS_BY_CODE[c + 1].class as usize, c);
        }
    }

    #[test]
    fn mini_codes_accept_only_blocks_that_end_in_their_mini_slab() {
        for c in 0..NUM_MINI {
            let entry = &STARTS_BY_CODE[mini_code(c)];
            let size = class_size(c);
            let bytes = mini_bytes(c);
            assert_eq!(entry.class as usize, c);
            assert!(mini_objects(c) >= if size <= MINI_ONE_GRANULE_MAX { 2 } else { 1 });
            for off in (0..2 * bytes).step_by(16) {
                let whole = off % size == 0 && off + size <= bytes;
                assert_eq!(entry.accepts(off), whole, "class {c} offset {off}");
            }
        }
    }

    #[test]
    fn starts_block_accepts_exactly_the_block_starts() {
        // Every offset of a span (and a little past it) against the plain definition; large
        // classes only at coarse steps and around the block's start and end.
        for (c, info) in CLASSES.iter().enumerate() {
            let size = info.size as usize;
            let span = info.pages as usize * PAGE_SIZE;
            let check = |off: usize| {
                let expected = off.is_multiple_of(size) && off / size < info.objects as usize;
                assert_eq!(info.starts_block(off), expected, "class {c} offset {off}");
            };
            if is_small(c) {
                (0..span + 2 * size).for_each(check);
            } else {
                (0..span + 2 * PAGE_SIZE).step_by(4093).for_each(check);
                (0..64).chain(size - 64..size + 64).for_each(check);
            }
        }
        // Offsets up to the segment size never pass falsely.
        for info in CLASSES.iter() {
            for off in (1..4 << 20).step_by(9973) {
                let expected = off % info.size as usize == 0
                    && off / (info.size as usize) < info.objects as usize;
                assert_eq!(info.starts_block(off), expected);
            }
        }
    }
}
