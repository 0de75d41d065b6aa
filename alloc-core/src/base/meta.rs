//! Metadata memory: where the engine's own bookkeeping lives (thread caches, registry leaves,
//! and later the profiler's tables), apart from user blocks.
//!
//! A bump allocator over 2 MiB mappings under one lock. Metadata is rarely freed; the few kinds
//! that are recycled (thread caches) keep their own free lists on top of this.

use crate::platform::lock::Locked;
use crate::platform::os;
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Mapping size for metadata: large enough that the lock is rarely taken for a new chunk.
const CHUNK: usize = 2 << 20;

struct Bump {
    next: usize,
    end: usize,
}

#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static BUMP: Locked<Bump> = Locked::new(Bump { next: 0, end: 0 });
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// Returns `size` zeroed bytes aligned to `align` (a power of two up to the page size) that are
/// never given back. Null if the kernel refuses memory.
pub fn alloc(size: usize, align: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two() && align <= os::PAGE_SIZE);
    if size >= CHUNK / 4 {
        let bytes = (size + os::PAGE_SIZE - 1) & !(os::PAGE_SIZE - 1);
        let p = os::map(bytes);
        if !p.is_null() {
            MAPPED.fetch_add(bytes, Ordering::Relaxed);
        }
        return p;
    }
    let mut bump = BUMP.lock();
    let mut start = (bump.next + align - 1) & !(align - 1);
    if bump.next == 0 || start + size > bump.end {
        let chunk = os::map(CHUNK);
        if chunk.is_null() {
            return ptr::null_mut();
        }
        MAPPED.fetch_add(CHUNK, Ordering::Relaxed);
        bump.next = chunk as usize;
        bump.end = chunk as usize + CHUNK;
        start = bump.next;
    }
    bump.next = start + size;
    start as *mut u8
}

/// Bytes mapped for metadata by this module.
pub fn mapped() -> usize {
    MAPPED.load(Ordering::Relaxed)
}

/// Fork support: hold the lock across `fork`.
pub fn prefork() {
    BUMP.raw_lock();
}

/// Fork support: release in the parent.
pub fn postfork_parent() {
    // SAFETY: taken in `prefork` by this thread.
    unsafe { BUMP.raw_unlock() };
}

/// Fork support: reset in the child.
pub fn postfork_child() {
    BUMP.reset_after_fork();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_disjoint_and_zeroed() {
        let a = alloc(24, 8);
        let b = alloc(100, 64);
        let big = alloc(CHUNK, 4096);
        assert!(!a.is_null() && !b.is_null() && !big.is_null());
        assert_eq!(b as usize % 64, 0);
        assert!(b as usize >= a as usize + 24 || a as usize >= b as usize + 100);
        // SAFETY: freshly returned, sizes as requested.
        unsafe {
            assert_eq!(*b.add(99), 0);
            assert_eq!(*big.add(CHUNK - 1), 0);
        }
        assert!(mapped() >= 2 * CHUNK);
    }
}
