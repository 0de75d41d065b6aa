//! The registry answers "is this address ours, and whose metadata describes it?" in O(1).
//!
//! The address space is cut into 4 MiB chunks (the segment size). Two tables cover it:
//!
//! - the segment map, one byte per chunk in a flat array indexed by `addr >> 22`: is the chunk a
//!   segment? (A segment is a whole aligned chunk, so its header is `addr & !(4 MiB - 1)`.) It
//!   takes 64 MiB of address space, reserved at the first segment, of which only the pages
//!   covering our chunks are ever touched; `free`'s fast path reads it with one load whose
//!   address depends on nothing but `addr`.
//! - a two-level radix table mapping the chunk that holds a huge block's start to the block's
//!   header. Leaves are mapped on first use and never freed.
//!
//! Neither lookup faults, even for a wild pointer.
//!
//! ```text
//!  address bits  47 ........ 35 34 ........ 22 21 ........ 0
//!                 root index     leaf index     offset in chunk
//! ```

use crate::meta;
use crate::segment::SEGMENT_SHIFT;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};

/// User-space addresses on x86_64 and aarch64 (4-level paging) fit in 48 bits.
const ADDRESS_BITS: u32 = 48;
const LEAF_BITS: u32 = 13;
const ROOT_BITS: u32 = ADDRESS_BITS - SEGMENT_SHIFT - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;
const ROOT_LEN: usize = 1 << ROOT_BITS;

type Leaf = [AtomicPtr<u8>; LEAF_LEN];

static ROOT: [AtomicPtr<Leaf>; ROOT_LEN] = [const { AtomicPtr::new(ptr::null_mut()) }; ROOT_LEN];

#[inline(always)]
fn split(addr: usize) -> Option<(usize, usize)> {
    if addr >> ADDRESS_BITS != 0 {
        return None;
    }
    let chunk = addr >> SEGMENT_SHIFT;
    Some((chunk >> LEAF_BITS, chunk & (LEAF_LEN - 1)))
}

/// The huge block header registered for the chunk holding `addr`, or null.
#[inline(always)]
pub fn lookup(addr: usize) -> *mut u8 {
    let Some((r, l)) = split(addr) else {
        return ptr::null_mut();
    };
    let leaf = ROOT[r].load(Ordering::Acquire);
    if leaf.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: leaves are never freed once published.
    unsafe { (*leaf)[l].load(Ordering::Acquire) }
}

/// Chunks the segment map covers: the whole 48-bit space.
const MAP_LEN: usize = 1 << (ADDRESS_BITS - SEGMENT_SHIFT);

/// The segment map (see the module docs); null until the first segment.
static SEGMENT_MAP: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
/// Chunks covered by [`SEGMENT_MAP`]: 0 until it is mapped, then [`MAP_LEN`].
static SEGMENT_MAP_CHUNKS: AtomicUsize = AtomicUsize::new(0);

/// Whether the chunk holding `addr` is one of our segments: [`mark_segment`] set it and no
/// [`unmark_segment`] came after. Never faults.
#[inline(always)]
pub fn is_segment(addr: usize) -> bool {
    let chunk = addr >> SEGMENT_SHIFT;
    if chunk >= SEGMENT_MAP_CHUNKS.load(Ordering::Acquire) {
        return false;
    }
    // SAFETY: the map is published before its length and never unmapped; `chunk` is in range.
    unsafe {
        (*SEGMENT_MAP
            .load(Ordering::Relaxed)
            .add(chunk)
            .cast::<AtomicU8>())
        .load(Ordering::Relaxed)
            != 0
    }
}

/// Marks the chunk at `addr` (a new segment's header) as a segment in the segment map. False if
/// the map could not be reserved.
pub fn mark_segment(addr: usize) -> bool {
    let mut map = SEGMENT_MAP.load(Ordering::Acquire);
    if map.is_null() {
        let fresh = crate::os::reserve(MAP_LEN);
        if fresh.is_null() {
            return false;
        }
        match SEGMENT_MAP.compare_exchange(
            ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                map = fresh;
                SEGMENT_MAP_CHUNKS.store(MAP_LEN, Ordering::Release);
            }
            Err(existing) => {
                // Lost a race with another arena's first segment.
                // SAFETY: our own reservation, never published.
                unsafe { crate::os::unmap(fresh, MAP_LEN) };
                map = existing;
            }
        }
    }
    // SAFETY: `map` is the published map.
    unsafe { set_map_byte(map, addr, 1) };
    true
}

/// Clears the segment-map byte of the segment at `addr`, which is being unmapped.
pub fn unmark_segment(addr: usize) {
    let map = SEGMENT_MAP.load(Ordering::Acquire);
    if !map.is_null() {
        // SAFETY: `map` is the published map.
        unsafe { set_map_byte(map, addr, 0) };
    }
}

/// Sets the segment-map byte of the segment at `addr`.
///
/// # Safety
/// `map` must be the segment map and `addr` a segment's address (below 2^48), owned by the caller.
unsafe fn set_map_byte(map: *mut u8, addr: usize, value: u8) {
    // SAFETY: in range (a 48-bit address); the byte is this segment's alone.
    unsafe { (*map.add(addr >> SEGMENT_SHIFT).cast::<AtomicU8>()).store(value, Ordering::Release) }
}

/// Registers `header` for the chunk holding `addr`. False if metadata memory ran out.
pub fn insert(addr: usize, header: *mut u8) -> bool {
    let Some((r, l)) = split(addr) else {
        return false;
    };
    let mut leaf = ROOT[r].load(Ordering::Acquire);
    if leaf.is_null() {
        let fresh = meta::alloc(core::mem::size_of::<Leaf>(), 64).cast::<Leaf>();
        if fresh.is_null() {
            return false;
        }
        // Zeroed memory is a leaf of null pointers.
        match ROOT[r].compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => leaf = fresh,
            Err(existing) => leaf = existing, // lost a race: the fresh leaf is wasted, rarely
        }
    }
    // SAFETY: leaves are never freed once published.
    unsafe { (*leaf)[l].store(header, Ordering::Release) };
    true
}

/// Forgets the chunk holding `addr`.
pub fn remove(addr: usize) {
    let Some((r, l)) = split(addr) else { return };
    let leaf = ROOT[r].load(Ordering::Acquire);
    if !leaf.is_null() {
        // SAFETY: leaves are never freed once published.
        unsafe { (*leaf)[l].store(ptr::null_mut(), Ordering::Release) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_lookup_remove() {
        // Addresses in an otherwise unused part of the space.
        let a = 0x5a5a_0000_0000usize;
        let header = 0x1234usize as *mut u8;
        assert!(lookup(a).is_null());
        assert!(insert(a, header));
        assert_eq!(lookup(a + 12345), header);
        assert_eq!(lookup(a + (1 << SEGMENT_SHIFT) - 1), header);
        assert!(lookup(a + (1 << SEGMENT_SHIFT)).is_null());
        remove(a);
        assert!(lookup(a).is_null());
        assert!(lookup(usize::MAX).is_null());
        assert!(lookup(0).is_null());
    }

    #[test]
    fn segment_map_marks_and_unmarks() {
        // A chunk in an otherwise unused part of the space (not the one of the test above).
        let a = 0x5b5b_0000_0000usize;
        assert!(!is_segment(a));
        assert!(mark_segment(a));
        assert!(is_segment(a) && is_segment(a + (1 << SEGMENT_SHIFT) - 1));
        assert!(!is_segment(a + (1 << SEGMENT_SHIFT)) && !is_segment(a - 1));
        unmark_segment(a);
        assert!(!is_segment(a));
        // Never a segment, never a fault: beyond 48 bits, and address 0.
        assert!(!is_segment(usize::MAX) && !is_segment(1 << 48) && !is_segment(0));
    }
}
