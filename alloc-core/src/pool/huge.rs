//! Huge blocks (over 2 MiB): each its own mapping, the block at its start, its header in
//! metadata memory.
//!
//! ```text
//!  mapping (aligned to 4 MiB, or to the block's alignment if larger)
//!  ┌──────────────────────────────────────────┬──────────┐        HugeHeader (metadata):
//!  │ block (page-rounded)                     │ slack    │        base, map_size, usable,
//!  └──────────────────────────────────────────┴──────────┘        cached, sample
//!  base                                                  base + map_size
//! ```
//!
//! The registry maps the 4 MiB chunk holding the block's start to the header. Mappings are
//! aligned to 4 MiB so that no two blocks ever share that chunk. Where the block is to be backed
//! by huge pages, its mapping is rounded up to whole 2 MiB pages: a mapping ending partway into a
//! huge page has that tail faulted in 4 KiB at a time, and a range holding 4 KiB pages stays in
//! small pages when the cache hands the mapping to another block (bigloop took 46 k faults
//! against 568 with whole huge pages). The header lives apart so that a block of a power-of-two
//! size fills whole huge pages, and so that cutting or growing a cached mapping writes nothing
//! into its pages.
//!
//! Freed huge blocks are kept in a cache for `dirty_decay_ms` (oldest unmapped first) and serve
//! later requests of any size: unmapping at once and faulting the pages in again on the next
//! request makes loops over multi-MiB buffers several times slower than glibc, whose mmap
//! threshold adapts. A request takes the smallest cached mapping that holds it; if that is
//! larger by at least a chunk, the block keeps the front (rounded up to a chunk) and the rest
//! stays cached as a mapping of its own, with a header of its own (the registry needs a block's
//! start chunk to belong to it alone). If no cached mapping is large enough, the largest one is
//! grown with `mremap` (in place, or moved to a fresh aligned range): its resident pages are
//! reused and only the growth is faulted in. A mapping may so be larger than its block needs
//! (by less than a chunk, or more for `realloc` growth); the slack is room for the block to
//! grow in place. The cache holds at most as many bytes as huge blocks were allocated in the
//! last one or two decay windows (at least [`CACHE_MIN_BYTES`]): what a program freeing and
//! allocating large buffers in a loop reuses at once, and nothing that the decay would not give
//! back anyway. Growing uses `mremap`, which moves page tables rather than copying data.

use crate::addr::registry;
use crate::addr::segment::{SampleRecord, SEGMENT_SIZE};
use crate::base::config;
use crate::base::meta;
use crate::platform::lock::Locked;
use crate::platform::os::{self, HugeAdvice, PAGE_SIZE};
use core::ptr;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Cached mappings kept at most (the oldest is unmapped to make room).
const CACHE_SLOTS: usize = 64;
/// The least the cache may hold, whatever the recent demand. A loop over 5–25 MiB buffers
/// (bigloop, 20 live) keeps its live bytes near their peak, so this is all it may cache there:
/// with 64 MiB it took 458 page faults and 430 MiB peak RSS, with 128 MiB 399 and 465 MiB,
/// unbounded 361 and 485 MiB (mimalloc 3: 379 and 542 MiB, and 14 % faster than with 64 MiB).
const CACHE_MIN_BYTES: usize = 128 << 20;
/// Mappings larger than this are unmapped when freed. Caching larger ones helps loops over
/// such buffers (bigloop over 40–120 MiB buffers: 0.90 M page faults uncapped, 3.29 M with
/// this cap, 4.05 M under glibc), but a single big buffer freed once (a `Vec`'s backing store,
/// often mostly untouched) would then stay mapped and count as resident until it decays.
const CACHE_MAX_BLOCK: usize = 64 << 20;
/// The demand window when decay is off (0) or never purges (negative).
const DEFAULT_WINDOW_MS: u64 = config::DEFAULT_DECAY_MS as u64;
/// A transparent huge page.
const HUGE_PAGE_SIZE: usize = 2 << 20;

/// A huge block's header, in metadata memory.
#[repr(C, align(64))]
pub struct HugeHeader {
    /// Set while the block sits in the cache (a second free is then a double free).
    pub cached: bool,
    /// The mapping's start, which is the block's.
    pub base: *mut u8,
    /// Bytes of the whole mapping (at least `usable`).
    pub map_size: usize,
    /// Usable bytes of the block.
    pub usable: usize,
    /// The profiler's record if the block was sampled ([`SampleRecord::NONE`] otherwise).
    pub sample: SampleRecord,
    /// Which kernel mapping (VMA) holds the block: pieces cut from one mapping share it, and
    /// two such pieces side by side may be merged again (`mremap` needs a single VMA).
    vma: u64,
    /// The next spare header while this one describes no mapping.
    next_spare: *mut HugeHeader,
}

/// Headers that describe no mapping, for the next ones to reuse (metadata is never freed).
struct Spares(*mut HugeHeader);

// SAFETY: spare headers are reached only under the lock.
unsafe impl Send for Spares {}

/// Taken after [`CACHE`] where both are held.
static SPARES: Locked<Spares> = Locked::new(Spares(ptr::null_mut()));

/// The next [`HugeHeader::vma`].
static NEXT_VMA: AtomicU64 = AtomicU64::new(0);

/// A new kernel mapping's [`HugeHeader::vma`].
fn new_vma() -> u64 {
    NEXT_VMA.fetch_add(1, Ordering::Relaxed)
}

/// A header for the mapping `[base, base + map_size)` in kernel mapping `vma`, or null if
/// metadata memory ran out.
fn new_header(
    base: *mut u8,
    map_size: usize,
    usable: usize,
    cached: bool,
    vma: u64,
) -> *mut HugeHeader {
    let h = {
        let mut spares = SPARES.lock();
        let h = spares.0;
        if !h.is_null() {
            // SAFETY: a spare header, ours under the lock.
            spares.0 = unsafe { (*h).next_spare };
        }
        h
    };
    let h = if h.is_null() {
        meta::alloc(size_of::<HugeHeader>(), align_of::<HugeHeader>()).cast::<HugeHeader>()
    } else {
        h
    };
    if !h.is_null() {
        // SAFETY: metadata memory of the header's size and alignment, used by nobody else.
        unsafe {
            h.write(HugeHeader {
                cached,
                base,
                map_size,
                usable,
                sample: SampleRecord::NONE,
                vma,
                next_spare: ptr::null_mut(),
            })
        };
    }
    h
}

/// Returns `h`, which describes no mapping any more, to the spares.
///
/// # Safety
/// Nobody may use `h` again (the registry no longer finds it).
unsafe fn drop_header(h: *mut HugeHeader) {
    let mut spares = SPARES.lock();
    // SAFETY: ours alone, per the contract.
    unsafe { (*h).next_spare = spares.0 };
    spares.0 = h;
}

impl HugeHeader {
    fn block(h: *mut HugeHeader) -> *mut u8 {
        // SAFETY: the header is live.
        unsafe { (*h).base }
    }
}

struct Cached {
    header: *mut HugeHeader,
    freed_at: u64,
}

/// Cached mappings, oldest first.
struct Cache {
    slots: [Cached; CACHE_SLOTS],
    len: usize,
    bytes: usize,
    /// Start of the current demand window.
    window_start: u64,
    /// The peak of bytes mapped for live huge blocks in the previous demand window.
    peak_prev: usize,
}

// SAFETY: cached mappings are owned by the cache and reached only under its lock.
unsafe impl Send for Cache {}

static CACHE: Locked<Cache> = Locked::new(Cache {
    slots: [const {
        Cached {
            header: ptr::null_mut(),
            freed_at: 0,
        }
    }; CACHE_SLOTS],
    len: 0,
    bytes: 0,
    window_start: 0,
    peak_prev: 0,
});
/// The oldest cached block's free time (u64::MAX: none), checked without the lock.
static OLDEST_CACHED: AtomicU64 = AtomicU64::new(u64::MAX);
/// The peak of bytes mapped for live huge blocks in the current demand window.
static LIVE_PEAK: AtomicUsize = AtomicUsize::new(0);

/// Usable bytes of live huge blocks.
pub static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
/// Bytes mapped for huge blocks (live and cached).
pub static MAPPED: AtomicUsize = AtomicUsize::new(0);
/// Bytes of cached huge mappings.
pub static CACHED: AtomicUsize = AtomicUsize::new(0);
/// Huge allocations made.
pub static REQUESTS: AtomicU64 = AtomicU64::new(0);

fn round_page(n: usize) -> Option<usize> {
    n.checked_add(PAGE_SIZE - 1).map(|v| v & !(PAGE_SIZE - 1))
}

/// The mapping for a block of `usable` (page-rounded) bytes given `advice`: whole huge pages
/// where the kernel is asked for them (see the module docs), else the block alone.
fn mapping_size(usable: usize, advice: HugeAdvice) -> Option<usize> {
    match advice {
        HugeAdvice::Huge => usable.checked_next_multiple_of(HUGE_PAGE_SIZE),
        HugeAdvice::None | HugeAdvice::NoHuge => Some(usable),
    }
}

/// Allocates a huge block of at least `size` bytes aligned to `align`; zeroed if `zero`.
/// Null when out of memory. With `growth` (a block `realloc` is growing) the block is cut from
/// the largest cached mapping that fits: the rest stays cached right after it, and the block's
/// next growth takes it without a system call (see [`grow_into_next`]).
pub fn alloc(size: usize, align: usize, zero: bool, growth: bool) -> *mut u8 {
    let Some(usable) = round_page(size) else {
        return ptr::null_mut();
    };
    let advice = config::huge_advice(config::Dense::HugeBlock);
    let Some(map_size) = mapping_size(usable, advice) else {
        return ptr::null_mut();
    };
    let align = align.max(SEGMENT_SIZE);
    if let Some((h, reused)) = take_cached(usable, map_size, align, growth) {
        let p = HugeHeader::block(h);
        if zero {
            // SAFETY: the block is ours and at least `size` bytes long; past `reused` bytes its
            // pages are fresh (zero) ones.
            unsafe { ptr::write_bytes(p, 0, size.min(reused)) };
        }
        note_live();
        return p;
    }
    let base = os::map_dense(map_size, align, advice);
    if base.is_null() {
        return base;
    }
    let h = new_header(base, map_size, usable, false, new_vma());
    if h.is_null() || !registry::insert(base as usize, h.cast()) {
        // SAFETY: our fresh mapping and header, known to nobody.
        unsafe {
            if !h.is_null() {
                drop_header(h);
            }
            os::unmap(base, map_size);
        }
        return ptr::null_mut();
    }
    MAPPED.fetch_add(map_size, Ordering::Relaxed);
    ALLOCATED.fetch_add(usable, Ordering::Relaxed);
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    note_live();
    base
}

/// Bytes mapped for live huge blocks now.
fn live_mapped() -> usize {
    MAPPED
        .load(Ordering::Relaxed)
        .saturating_sub(CACHED.load(Ordering::Relaxed))
}

/// Records the bytes mapped for live huge blocks towards the window's peak.
fn note_live() {
    LIVE_PEAK.fetch_max(live_mapped(), Ordering::Relaxed);
}

/// Records the profiler's sample for huge block `p` (just allocated).
///
/// # Safety
/// `p` must be a live huge block of ours.
pub unsafe fn set_sample(p: *mut u8, record: SampleRecord) {
    let h = registry::lookup(p as usize).cast::<HugeHeader>();
    // SAFETY: a live huge block's registered header.
    unsafe { (*h).sample = record };
}

/// Serves a block of `usable` bytes in a mapping of at least `need` bytes aligned to `align`
/// from the cache: the smallest cached mapping that holds it (the largest with `largest`),
/// trimmed if much larger; else the largest one, grown. Returns the header and how many bytes
/// of the block were reused (the rest is fresh, zeroed memory).
fn take_cached(
    usable: usize,
    need: usize,
    align: usize,
    largest: bool,
) -> Option<(*mut HugeHeader, usize)> {
    if OLDEST_CACHED.load(Ordering::Relaxed) == u64::MAX {
        return None;
    }
    let mut cache = CACHE.lock();
    // Best fit among mappings that hold the request; the largest of those that do not.
    let mut fit: Option<(usize, usize)> = None;
    let mut grow: Option<(usize, usize)> = None;
    for i in 0..cache.len {
        // SAFETY: cached headers are live mappings owned by the cache.
        let (m, base) = unsafe {
            let h = cache.slots[i].header;
            ((*h).map_size, (*h).base as usize)
        };
        if base & (align - 1) != 0 {
            continue;
        }
        if m >= need {
            if fit.is_none_or(|(_, b)| if largest { m > b } else { m < b }) {
                fit = Some((i, m));
            }
        } else if grow.is_none_or(|(_, b)| m > b) {
            grow = Some((i, m));
        }
    }
    let (h, reused) = if let Some((i, map_size)) = fit {
        let h = cache.slots[i].header;
        let cut = need.next_multiple_of(SEGMENT_SIZE);
        // SAFETY: a cached mapping, ours under the lock.
        let tail = unsafe { split(h, cut) };
        if tail.is_null() {
            remove_slot(&mut cache, i);
        } else {
            // The tail keeps the slot, and so its place in the decay order.
            cache.slots[i].header = tail;
            cache.bytes -= cut;
        }
        CACHED.fetch_sub(map_size - cache_size_of(tail), Ordering::Relaxed);
        (h, usable)
    } else {
        let (i, map_size) = grow?;
        let h = cache.slots[i].header;
        remove_slot(&mut cache, i);
        CACHED.fetch_sub(map_size, Ordering::Relaxed);
        drop(cache);
        // SAFETY: removed from the cache, so ours alone.
        if !unsafe { resize_mapping(h, need, align) } {
            // SAFETY: ours alone, and marked cached for `release`'s accounting no more.
            unsafe {
                (*h).cached = false;
                release(h);
            }
            return None;
        }
        (h, map_size)
    };
    // SAFETY: the header is ours again.
    unsafe {
        (*h).cached = false;
        (*h).usable = usable;
        (*h).sample = SampleRecord::NONE;
    }
    ALLOCATED.fetch_add(usable, Ordering::Relaxed);
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    Some((h, reused))
}

/// Bytes of the cached mapping `h` (0 for null).
fn cache_size_of(h: *mut HugeHeader) -> usize {
    if h.is_null() {
        0
    } else {
        // SAFETY: a live cached header.
        unsafe { (*h).map_size }
    }
}

/// Cuts the cached mapping `h` after its first `cut` bytes (a multiple of the chunk size) if at
/// least a chunk would remain, making the rest a cached mapping of its own. Returns the rest's
/// header, or null if `h` was left whole. Writes nothing into the mapping.
///
/// # Safety
/// `h` must be a cached mapping owned by the caller (the cache lock held).
unsafe fn split(h: *mut HugeHeader, cut: usize) -> *mut HugeHeader {
    // SAFETY: per the contract.
    unsafe {
        let map_size = (*h).map_size;
        if map_size < cut + SEGMENT_SIZE {
            return ptr::null_mut();
        }
        // Chunk-aligned, as `h`'s block is, and past the chunk holding it: the tail's block
        // start chunk is its own.
        let rest = map_size - cut;
        let t = new_header((*h).base.add(cut), rest, rest, true, (*h).vma);
        if t.is_null() {
            return t;
        }
        if !registry::insert((*t).base as usize, t.cast()) {
            drop_header(t);
            return ptr::null_mut();
        }
        (*h).map_size = cut;
        t
    }
}

/// Moves the pages of `h`'s mapping to a fresh range of `new_size` bytes aligned to `align`
/// (the registry follows). False if that failed (`h` intact).
///
/// # Safety
/// `h` must be a registered mapping of ours, used by nobody else while it moves.
unsafe fn move_mapping(h: *mut HugeHeader, new_size: usize, align: usize) -> bool {
    // SAFETY: per the contract.
    unsafe {
        let (base, old) = ((*h).base, (*h).map_size);
        let to = os::map_aligned(new_size, align);
        if to.is_null() {
            return false;
        }
        registry::remove(base as usize);
        if !os::remap_to(base, old, new_size, to) {
            registry::insert(base as usize, h.cast());
            os::unmap(to, new_size);
            return false;
        }
        (*h).base = to;
        (*h).vma = new_vma();
        if !registry::insert(to as usize, h.cast()) {
            os::fatal("out of metadata memory while moving a huge block");
        }
        true
    }
}

/// Resizes `h`'s mapping to `new_size` bytes, in place if the kernel can, else by moving its
/// pages to a range aligned to `align`. False if that failed (`h` intact).
///
/// # Safety
/// `h` must be a registered mapping of ours, used by nobody else while it grows.
unsafe fn resize_mapping(h: *mut HugeHeader, new_size: usize, align: usize) -> bool {
    // SAFETY: per the contract.
    unsafe {
        let old = (*h).map_size;
        if !os::remap_in_place((*h).base, old, new_size) && !move_mapping(h, new_size, align) {
            return false;
        }
        (*h).map_size = new_size;
        MAPPED.fetch_add(new_size - old, Ordering::Relaxed);
        true
    }
}

fn remove_slot(cache: &mut Cache, i: usize) {
    // SAFETY: slot `i` holds a live cached header.
    cache.bytes -= unsafe { (*cache.slots[i].header).map_size };
    for j in i..cache.len - 1 {
        cache.slots[j] = Cached {
            header: cache.slots[j + 1].header,
            freed_at: cache.slots[j + 1].freed_at,
        };
    }
    cache.len -= 1;
    let oldest = if cache.len == 0 {
        u64::MAX
    } else {
        cache.slots[0].freed_at
    };
    OLDEST_CACHED.store(oldest, Ordering::Relaxed);
}

/// The most the cache may hold now: what live huge blocks held at their recent peak (in the
/// current and the previous demand window) and hold no more, at least [`CACHE_MIN_BYTES`].
/// A loop freeing and allocating buffers keeps about one buffer's worth cached; a program
/// that freed all its buffers keeps them until they decay. Rolls the window when it is over.
fn cache_limit(cache: &mut Cache, now: u64, freeing: usize) -> usize {
    let decay = config::decay_ms();
    let window = if decay > 0 {
        decay as u64
    } else {
        DEFAULT_WINDOW_MS
    };
    let live = live_mapped();
    if now.saturating_sub(cache.window_start) >= window {
        // The new window starts from what is live (the block being freed still counted).
        let current = LIVE_PEAK.swap(live, Ordering::Relaxed);
        cache.peak_prev = if now - cache.window_start < 2 * window {
            current
        } else {
            0
        };
        cache.window_start = now;
    }
    let peak = cache.peak_prev.max(LIVE_PEAK.load(Ordering::Relaxed));
    CACHE_MIN_BYTES.max(peak.saturating_sub(live - freeing.min(live)))
}

/// Validates `p` against huge header `h` and frees the block. `op` names the calling function
/// in the error message. Returns the block's sample record for the profiler to forget.
///
/// # Safety
/// `h` must be a header found through the registry for `p`.
pub unsafe fn free(h: *mut u8, p: *mut u8, op: &str) -> SampleRecord {
    let h = h.cast::<HugeHeader>();
    // SAFETY: `h` is a registered header, per the contract.
    unsafe { check(h, p, op) };
    // SAFETY: a valid, live huge block.
    unsafe {
        let sample = (*h).sample;
        (*h).sample = SampleRecord::NONE;
        ALLOCATED.fetch_sub((*h).usable, Ordering::Relaxed);
        let decay = config::decay_ms();
        let map_size = (*h).map_size;
        if decay != 0 && map_size <= CACHE_MAX_BLOCK {
            let now = os::now_ms();
            let mut cache = CACHE.lock();
            let limit = cache_limit(&mut cache, now, map_size);
            if map_size > limit {
                drop(cache);
                release(h);
                return sample;
            }
            while cache.len == CACHE_SLOTS || cache.bytes + map_size > limit {
                let old = cache.slots[0].header;
                remove_slot(&mut cache, 0);
                release(old);
            }
            absorb_neighbours(&mut cache, h);
            (*h).cached = true;
            let len = cache.len;
            cache.slots[len] = Cached {
                header: h,
                freed_at: now,
            };
            cache.len += 1;
            cache.bytes += (*h).map_size;
            CACHED.fetch_add((*h).map_size, Ordering::Relaxed);
            if len == 0 {
                OLDEST_CACHED.store(now, Ordering::Relaxed);
            }
            drop(cache);
            maybe_purge(now);
        } else {
            release(h);
        }
        sample
    }
}

/// Merges into the mapping of `h` (a block being cached) the cached mappings right before and
/// after it that were cut from the same kernel mapping: a block freed next to the rest of the
/// mapping it was cut from makes that whole again, and it can serve a larger request without
/// new pages. The merged mapping takes `h`'s place in the decay order.
///
/// # Safety
/// `h` must be a registered mapping of ours, not in the cache; the cache lock held.
unsafe fn absorb_neighbours(cache: &mut Cache, h: *mut HugeHeader) {
    let mut i = 0;
    // SAFETY: cached headers are live mappings the cache owns; `h` is ours per the contract.
    unsafe {
        while i < cache.len {
            let n = cache.slots[i].header;
            let (start, end) = ((*h).base, (*h).base.add((*h).map_size));
            let (n_start, n_size) = ((*n).base, (*n).map_size);
            if (*n).vma != (*h).vma || (n_start.add(n_size) != start && n_start != end) {
                i += 1;
                continue;
            }
            remove_slot(cache, i);
            CACHED.fetch_sub(n_size, Ordering::Relaxed);
            if n_start == end {
                registry::remove(n_start as usize);
            } else {
                // `n`'s start chunk is registered: re-pointing it cannot run out of memory.
                registry::insert(n_start as usize, h.cast());
                registry::remove(start as usize);
                (*h).base = n_start;
            }
            (*h).map_size += n_size;
            drop_header(n);
        }
    }
}

/// Aborts unless `p` is the live block of header `h`.
///
/// # Safety
/// `h` must be a registered huge header.
pub unsafe fn check(h: *mut HugeHeader, p: *mut u8, op: &str) {
    // SAFETY: registered headers are live mappings.
    unsafe {
        if HugeHeader::block(h) != p {
            os::fatal_pointer(op, "invalid pointer", p as usize);
        }
        if (*h).cached {
            os::fatal_pointer(op, "double free of", p as usize);
        }
    }
}

unsafe fn release(h: *mut HugeHeader) {
    // SAFETY: `h` is a mapping of ours no longer in use.
    unsafe {
        let (base, map_size) = ((*h).base, (*h).map_size);
        registry::remove(base as usize);
        MAPPED.fetch_sub(map_size, Ordering::Relaxed);
        if (*h).cached {
            CACHED.fetch_sub(map_size, Ordering::Relaxed);
        }
        os::unmap(base, map_size);
        drop_header(h);
    }
}

/// Unmaps cached blocks older than the decay time (all if `all`). Returns how many bytes it
/// unmapped.
pub fn purge(now: u64, all: bool) -> usize {
    let decay = config::decay_ms();
    if !all && (decay < 0 || OLDEST_CACHED.load(Ordering::Relaxed) == u64::MAX) {
        return 0;
    }
    let mut unmapped = 0;
    let mut cache = CACHE.lock();
    while cache.len > 0 && (all || cache.slots[0].freed_at.saturating_add(decay as u64) <= now) {
        let h = cache.slots[0].header;
        // SAFETY: slot 0 holds a live cached header.
        unmapped += unsafe { (*h).map_size };
        remove_slot(&mut cache, 0);
        // SAFETY: removed from the cache, so ours alone.
        unsafe { release(h) };
    }
    unmapped
}

/// Purges expired cached blocks if any may have expired; cheap when none has.
#[inline]
pub fn maybe_purge(now: u64) {
    let oldest = OLDEST_CACHED.load(Ordering::Relaxed);
    let decay = config::decay_ms();
    if oldest != u64::MAX && decay >= 0 && oldest.saturating_add(decay as u64) <= now {
        purge(now, false);
    }
}

/// Usable bytes of the huge block `p` with header `h`.
///
/// # Safety
/// `h` must be the registered header for `p`.
pub unsafe fn usable_size(h: *mut u8, p: *mut u8, op: &str) -> usize {
    let h = h.cast::<HugeHeader>();
    // SAFETY: `h` is a registered header, per the contract.
    unsafe { check(h, p, op) };
    // SAFETY: validated above.
    unsafe { (*h).usable }
}

/// Resizes huge block `p` to hold `size` (> 2 MiB) bytes, in place or by moving its pages with
/// `mremap`. Returns the block's new address, or null if memory ran out (the block is intact).
///
/// # Safety
/// `h` must be the registered header for `p`, validated.
pub unsafe fn realloc(h: *mut u8, p: *mut u8, size: usize) -> *mut u8 {
    let h = h.cast::<HugeHeader>();
    let Some(mut usable) = round_page(size) else {
        return ptr::null_mut();
    };
    // SAFETY: `h` is a live huge header of ours.
    unsafe {
        let old_usable = (*h).usable;
        let old_map = (*h).map_size;
        if usable > old_usable {
            // Grow by at least a quarter, so a block grown in small steps is remapped only a
            // logarithmic number of times; within the mapping's room if the request fits there.
            let mut quarter = round_page(old_usable + old_usable / 4).unwrap_or(usable);
            if usable <= old_map {
                quarter = quarter.min(old_map);
            }
            usable = usable.max(quarter);
        }
        let advice = config::huge_advice(config::Dense::HugeBlock);
        let Some(new_map) = mapping_size(usable, advice) else {
            return ptr::null_mut();
        };
        if usable <= old_usable {
            // Shrink only when more than half would be unused: a block that was grown with room
            // to spare must not give the room back at the next small step (munmap, then mremap
            // again a few steps later).
            if usable < old_usable / 2 {
                if new_map < old_map {
                    os::unmap(p.add(new_map), old_map - new_map);
                    // The rest of its kernel mapping is no longer next to it.
                    (*h).vma = new_vma();
                    (*h).map_size = new_map;
                    MAPPED.fetch_sub(old_map - new_map, Ordering::Relaxed);
                }
                (*h).usable = usable;
                ALLOCATED.fetch_sub(old_usable - usable, Ordering::Relaxed);
            }
            return p;
        }
        // In the mapping's room (a block served from a larger cached one), into the cached
        // rest of its mapping, or resized.
        if usable > old_map
            && !grow_into_next(h, new_map)
            && !resize_mapping(h, new_map, SEGMENT_SIZE)
        {
            return ptr::null_mut();
        }
        (*h).usable = usable;
        ALLOCATED.fetch_add(usable - old_usable, Ordering::Relaxed);
        (*h).base
    }
}

/// Grows the mapping of live block `h` to at least `new_map` bytes with the cached piece right
/// after it, cut from the same kernel mapping (the rest of a cached mapping the block was
/// served from): those pages, resident already, join the block without a system call, where
/// `mremap` could not grow it in place and would move it to fresh pages. Takes whole chunks
/// (the rest's start must begin one); false if there is no such piece or it is too small.
///
/// # Safety
/// `h` must be a live huge block's header, the block resized by its owner alone.
unsafe fn grow_into_next(h: *mut HugeHeader, new_map: usize) -> bool {
    if OLDEST_CACHED.load(Ordering::Relaxed) == u64::MAX {
        return false;
    }
    let mut cache = CACHE.lock();
    // SAFETY: cached headers are live mappings the cache owns; `h` is ours per the contract.
    unsafe {
        let end = (*h).base.add((*h).map_size);
        let Some(i) = (0..cache.len).find(|&i| {
            let n = cache.slots[i].header;
            (*n).base == end && (*n).vma == (*h).vma
        }) else {
            return false;
        };
        let n = cache.slots[i].header;
        let need = new_map - (*h).map_size;
        let size = (*n).map_size;
        if size < need {
            return false;
        }
        let take = need.next_multiple_of(SEGMENT_SIZE);
        if take < size && registry::insert(end as usize + take, n.cast()) {
            (*n).base = end.add(take);
            (*n).map_size = size - take;
            (*n).usable = size - take;
            cache.bytes -= take;
            CACHED.fetch_sub(take, Ordering::Relaxed);
            (*h).map_size += take;
        } else {
            remove_slot(&mut cache, i);
            CACHED.fetch_sub(size, Ordering::Relaxed);
            drop_header(n);
            (*h).map_size += size;
        }
        registry::remove(end as usize);
    }
    drop(cache);
    note_live();
    true
}

/// Fork: hold the locks across `fork`.
pub fn prefork() {
    CACHE.raw_lock();
    SPARES.raw_lock();
}

/// Fork: release in the parent.
pub fn postfork_parent() {
    // SAFETY: taken in `prefork` by this thread.
    unsafe {
        SPARES.raw_unlock();
        CACHE.raw_unlock();
    }
}

/// Fork: reset in the child.
pub fn postfork_child() {
    CACHE.reset_after_fork();
    SPARES.reset_after_fork();
}
