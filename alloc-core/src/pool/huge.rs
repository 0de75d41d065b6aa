//! Huge blocks (over 2 MiB): each its own mapping, with a one-page header in front.
//!
//! ```text
//!  mapping (aligned to 4 MiB, or to the block's alignment if larger)
//!  ┌────────────────┬──────────────────────────────────────────┐
//!  │ HugeHeader ... │ block (page-rounded)                     │
//!  └────────────────┴──────────────────────────────────────────┘
//!  base             base + offset (one page, or the alignment)
//! ```
//!
//! The registry maps the 4 MiB chunk holding the block's start to the header. Mappings are
//! aligned to 4 MiB so that no two blocks ever share that chunk.
//!
//! Freed huge blocks are kept in a small cache for `dirty_decay_ms` and reused by requests of
//! nearly the same size: unmapping at once and faulting the pages in again on the next request
//! makes loops over multi-MiB buffers several times slower than glibc, whose mmap threshold
//! adapts. Growing uses `mremap`, which moves page tables rather than copying data.

use crate::addr::registry;
use crate::addr::segment::{SampleRecord, SEGMENT_SIZE};
use crate::base::config;
use crate::platform::lock::Locked;
use crate::platform::os::{self, PAGE_SIZE};
use core::ptr;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Cached blocks kept at most.
const CACHE_SLOTS: usize = 8;
/// Bytes kept in the cache at most: enough to keep loops over buffers of a few MiB fast, small
/// next to what such a program uses anyway.
const CACHE_MAX_BYTES: usize = 64 << 20;
/// Larger blocks are unmapped when freed: faulting their pages in again costs little next to
/// filling them, and keeping them would hold much memory.
const CACHE_MAX_BLOCK: usize = 32 << 20;

/// The header at the start of a huge mapping.
#[repr(C)]
pub struct HugeHeader {
    /// Set while the block sits in the cache (a second free is then a double free).
    pub cached: bool,
    /// Bytes of the whole mapping.
    pub map_size: usize,
    /// Offset of the block from the mapping's start.
    pub offset: usize,
    /// Usable bytes of the block.
    pub usable: usize,
    /// The profiler's record if the block was sampled ([`SampleRecord::NONE`] otherwise).
    pub sample: SampleRecord,
}

impl HugeHeader {
    fn block(h: *mut HugeHeader) -> *mut u8 {
        // SAFETY: the header is live.
        unsafe { (h as *mut u8).add((*h).offset) }
    }
}

struct Cached {
    header: *mut HugeHeader,
    freed_at: u64,
}

struct Cache {
    slots: [Cached; CACHE_SLOTS],
    len: usize,
    bytes: usize,
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
});
/// The oldest cached block's free time (u64::MAX: none), checked without the lock.
static OLDEST_CACHED: AtomicU64 = AtomicU64::new(u64::MAX);

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

/// Allocates a huge block of at least `size` bytes aligned to `align`; zeroed if `zero`.
/// Null when out of memory. With `growth` (a block `realloc` is growing) the largest cached
/// mapping that fits is taken whole: its pages are resident and the block's next growth is
/// free.
pub fn alloc(size: usize, align: usize, zero: bool, growth: bool) -> *mut u8 {
    let Some(usable) = round_page(size) else {
        return ptr::null_mut();
    };
    let offset = align.max(PAGE_SIZE);
    if let Some(h) = take_cached(usable, offset, growth) {
        let p = HugeHeader::block(h);
        if zero {
            // SAFETY: the block is ours and at least `size` bytes long.
            unsafe { ptr::write_bytes(p, 0, size) };
        }
        return p;
    }
    let Some(map_size) = usable.checked_add(offset) else {
        return ptr::null_mut();
    };
    let base = os::map_dense(
        map_size,
        offset.max(SEGMENT_SIZE),
        config::huge_advice(config::Dense::HugeBlock),
    );
    if base.is_null() {
        return base;
    }
    let h = base.cast::<HugeHeader>();
    // SAFETY: fresh mapping of ours, at least two pages long.
    unsafe {
        h.write(HugeHeader {
            cached: false,
            map_size,
            offset,
            usable,
            sample: SampleRecord::NONE,
        });
    }
    let p = HugeHeader::block(h);
    if !registry::insert(p as usize, base) {
        // SAFETY: our fresh mapping, known to nobody.
        unsafe { os::unmap(base, map_size) };
        return ptr::null_mut();
    }
    MAPPED.fetch_add(map_size, Ordering::Relaxed);
    ALLOCATED.fetch_add(usable, Ordering::Relaxed);
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    p
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

fn take_cached(usable: usize, offset: usize, largest: bool) -> Option<*mut HugeHeader> {
    if OLDEST_CACHED.load(Ordering::Relaxed) == u64::MAX {
        return None;
    }
    let mut cache = CACHE.lock();
    let len = cache.len;
    // Best fit among blocks no more than a quarter larger than needed.
    let mut best: Option<usize> = None;
    for i in 0..len {
        // SAFETY: cached headers are live mappings owned by the cache.
        let (u, o) = unsafe {
            (
                (*cache.slots[i].header).usable,
                (*cache.slots[i].header).offset,
            )
        };
        if o == offset && u >= usable && (largest || u - usable <= usable / 4) {
            // SAFETY: as above.
            let b_usable = |b: usize| unsafe { (*cache.slots[b].header).usable };
            if best.is_none_or(|b| {
                if largest {
                    u > b_usable(b)
                } else {
                    u < b_usable(b)
                }
            }) {
                best = Some(i);
            }
        }
    }
    let i = best?;
    let h = cache.slots[i].header;
    remove_slot(&mut cache, i);
    // SAFETY: the header is ours again.
    unsafe {
        (*h).cached = false;
        (*h).sample = SampleRecord::NONE;
        CACHED.fetch_sub((*h).map_size, Ordering::Relaxed);
        ALLOCATED.fetch_add((*h).usable, Ordering::Relaxed);
    }
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    Some(h)
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
        if decay != 0 && (*h).map_size <= CACHE_MAX_BLOCK {
            let now = os::now_ms();
            let mut cache = CACHE.lock();
            while cache.len == CACHE_SLOTS || cache.bytes + (*h).map_size > CACHE_MAX_BYTES {
                let old = cache.slots[0].header;
                remove_slot(&mut cache, 0);
                release(old);
            }
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
        let map_size = (*h).map_size;
        registry::remove(HugeHeader::block(h) as usize);
        MAPPED.fetch_sub(map_size, Ordering::Relaxed);
        if (*h).cached {
            CACHED.fetch_sub(map_size, Ordering::Relaxed);
        }
        os::unmap(h.cast(), map_size);
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
        if usable > old_usable {
            // Grow by at least a quarter, so a block grown in small steps is remapped only a
            // logarithmic number of times.
            usable = usable.max(round_page(old_usable + old_usable / 4).unwrap_or(usable));
        }
        let offset = (*h).offset;
        let old_map = (*h).map_size;
        let Some(new_map) = usable.checked_add(offset) else {
            return ptr::null_mut();
        };
        if usable <= old_usable {
            // Shrink only when more than half would be unused: a block that was grown with room
            // to spare must not give the room back at the next small step (munmap, then mremap
            // again a few steps later).
            if usable < old_usable / 2 {
                os::unmap((h as *mut u8).add(new_map), old_map - new_map);
                (*h).map_size = new_map;
                (*h).usable = usable;
                MAPPED.fetch_sub(old_map - new_map, Ordering::Relaxed);
                ALLOCATED.fetch_sub(old_usable - usable, Ordering::Relaxed);
            }
            return p;
        }
        if os::remap_in_place(h.cast(), old_map, new_map) {
            (*h).map_size = new_map;
            (*h).usable = usable;
            MAPPED.fetch_add(new_map - old_map, Ordering::Relaxed);
            ALLOCATED.fetch_add(usable - old_usable, Ordering::Relaxed);
            return p;
        }
        // Reserve an aligned range, then move the pages (and the header with them) there.
        let to = os::map_aligned(new_map, offset.max(SEGMENT_SIZE));
        if to.is_null() {
            return ptr::null_mut();
        }
        registry::remove(p as usize);
        if !os::remap_to(h.cast(), old_map, new_map, to) {
            registry::insert(p as usize, h.cast());
            os::unmap(to, new_map);
            return ptr::null_mut();
        }
        let nh = to.cast::<HugeHeader>();
        (*nh).map_size = new_map;
        (*nh).usable = usable;
        let np = HugeHeader::block(nh);
        if !registry::insert(np as usize, to) {
            os::fatal("out of metadata memory while moving a huge block");
        }
        MAPPED.fetch_add(new_map - old_map, Ordering::Relaxed);
        ALLOCATED.fetch_add(usable - old_usable, Ordering::Relaxed);
        np
    }
}

/// Fork: hold the cache lock across `fork`.
pub fn prefork() {
    CACHE.raw_lock();
}

/// Fork: release in the parent.
pub fn postfork_parent() {
    // SAFETY: taken in `prefork` by this thread.
    unsafe { CACHE.raw_unlock() };
}

/// Fork: reset in the child.
pub fn postfork_child() {
    CACHE.reset_after_fork();
}
