//! The registry answers "is this address ours, and whose metadata describes it?" in O(1).
//!
//! The address space is cut into 4 MiB chunks (the segment size). A two-level radix table maps
//! each chunk to the header that owns it: a segment's own header, or a huge block's header for
//! the chunk holding the block's start. Leaves are mapped on first use and never freed, so a
//! lookup is two dependent loads and never faults, even for a wild pointer.
//!
//! ```text
//!  address bits  47 ........ 35 34 ........ 22 21 ........ 0
//!                 root index     leaf index     offset in chunk
//! ```

use crate::meta;
use crate::segment::SEGMENT_SHIFT;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

/// User-space addresses on x86_64 and aarch64 (4-level paging) fit in 48 bits.
const ADDRESS_BITS: u32 = 48;
const LEAF_BITS: u32 = 13;
const ROOT_BITS: u32 = ADDRESS_BITS - SEGMENT_SHIFT - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;
const ROOT_LEN: usize = 1 << ROOT_BITS;

type Leaf = [AtomicPtr<u8>; LEAF_LEN];

/// Set in an entry's low bit when the chunk holds a huge block's start rather than a segment.
/// Segment headers are 4 MiB aligned and huge headers page aligned, so the bit is free; with it,
/// `free` tells the two apart without reading the header's tag (another cache line).
pub const TAG_HUGE: usize = 1;

static ROOT: [AtomicPtr<Leaf>; ROOT_LEN] = [const { AtomicPtr::new(ptr::null_mut()) }; ROOT_LEN];

#[inline(always)]
fn split(addr: usize) -> Option<(usize, usize)> {
    if addr >> ADDRESS_BITS != 0 {
        return None;
    }
    let chunk = addr >> SEGMENT_SHIFT;
    Some((chunk >> LEAF_BITS, chunk & (LEAF_LEN - 1)))
}

/// The entry registered for the chunk holding `addr` (a header, tagged with [`TAG_HUGE`] for
/// huge blocks), or null if the chunk is not ours.
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
}
