//! The registry answers "is this address ours, and whose metadata describes it?" in O(1).
//!
//! The address space is cut into 4 MiB chunks (the segment size). Two tables cover it:
//!
//! - the segment map, one byte per chunk in a flat array indexed by `(addr >> 22) - 1` (see
//!   [`segment_tag`]): is the chunk a
//!   segment, and of which arena? (A segment is a whole aligned chunk, so its header is
//!   `addr & !(4 MiB - 1)`.) The byte is the owning arena's tag (index + 1; 0: not a segment). It
//!   takes 64 MiB of address space (`.bss`), of which only the pages covering our chunks are
//!   ever touched; `free`'s fast path reads it with one load whose
//!   address depends on nothing but `addr`, and compares it with the thread's own arena.
//! - a two-level radix table mapping the chunk that holds a huge block's start to the block's
//!   header. Leaves are mapped on first use and never freed.
//!
//! Neither lookup faults, even for a wild pointer.
//!
//! ```text
//!  address bits  47 ........ 35 34 ........ 22 21 ........ 0
//!                 root index     leaf index     offset in chunk
//! ```

use crate::base::meta;
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

/// User-space addresses on x86_64 and aarch64 (4-level paging) fit in 48 bits.
/// log2 of a chunk: the unit both tables index, and the segment size (`segment` takes it
/// from here).
pub const CHUNK_SHIFT: u32 = 22;
const ADDRESS_BITS: u32 = 48;
const LEAF_BITS: u32 = 13;
const ROOT_BITS: u32 = ADDRESS_BITS - CHUNK_SHIFT - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;
const ROOT_LEN: usize = 1 << ROOT_BITS;

type Leaf = [AtomicPtr<u8>; LEAF_LEN];

static ROOT: [AtomicPtr<Leaf>; ROOT_LEN] = [const { AtomicPtr::new(ptr::null_mut()) }; ROOT_LEN];

#[inline(always)]
fn split(addr: usize) -> Option<(usize, usize)> {
    if addr >> ADDRESS_BITS != 0 {
        return None;
    }
    let chunk = addr >> CHUNK_SHIFT;
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
const MAP_LEN: usize = 1 << (ADDRESS_BITS - CHUNK_SHIFT);

/// The segment map (see the module docs): zero-initialised, so it lives in `.bss`, where the
/// kernel maps pages only when they are first written (reads of untouched pages share the zero
/// page). A static rather than a mapping: `free` reaches it PC-relative, with no pointer or
/// length to load first.
struct SegmentMap(UnsafeCell<[u8; MAP_LEN]>);

// SAFETY: every access is an atomic byte load or store (see `byte`).
unsafe impl Sync for SegmentMap {}

static SEGMENT_MAP: SegmentMap = SegmentMap(UnsafeCell::new([0; MAP_LEN]));

/// The map byte of the chunk holding `addr`, which lies in a chunk the map covers.
#[inline(always)]
fn byte(addr: usize) -> &'static AtomicU8 {
    let chunk = map_index(addr);
    debug_assert!(chunk < MAP_LEN);
    // The map's address less one, plus the chunk: the load takes the one off in its
    // displacement, and waits on no subtraction.
    let before_map = SEGMENT_MAP.0.get().cast::<AtomicU8>().wrapping_sub(1);
    // SAFETY: in bounds (`chunk` is the index plus one); the map is only ever accessed through
    // atomics.
    unsafe { &*before_map.wrapping_add(addr >> CHUNK_SHIFT) }
}

/// The segment-map tag of arena number `index`: never 0, which means "not a segment".
pub const fn tag_of_index(index: usize) -> u8 {
    (index + 1) as u8
}

/// The tag of the arena owning the segment at `addr` (its index + 1), or 0 if the chunk holding
/// `addr` is not one of our segments ([`mark_segment`] set it and no [`unmark_segment`] came
/// after). Never faults.
#[inline(always)]
pub fn segment_tag(addr: usize) -> u8 {
    let chunk = map_index(addr);
    if chunk >= MAP_LEN {
        return 0;
    }
    byte(addr).load(Ordering::Relaxed)
}

/// The map index of the chunk holding `addr`: the chunks from the second on, so that a lookup
/// of null (glibc frees null at every thread's exit) falls outside the map like a wild
/// address, and does not fault in the map's first page, which no segment uses.
#[inline(always)]
fn map_index(addr: usize) -> usize {
    (addr >> CHUNK_SHIFT).wrapping_sub(1)
}

/// Whether the chunk holding `addr` is one of our segments. Never faults.
#[inline(always)]
pub fn is_segment(addr: usize) -> bool {
    segment_tag(addr) != 0
}

/// Marks the chunk at `addr` (a new segment's header, below 2^48) as a segment of the arena
/// with tag `tag` (non-zero) in the segment map.
pub fn mark_segment(addr: usize, tag: u8) {
    debug_assert!(tag != 0);
    byte(addr).store(tag, Ordering::Release);
}

/// Clears the segment-map byte of the segment at `addr` (it is being unmapped).
pub fn unmark_segment(addr: usize) {
    byte(addr).store(0, Ordering::Release);
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
        assert_eq!(lookup(a + (1 << CHUNK_SHIFT) - 1), header);
        assert!(lookup(a + (1 << CHUNK_SHIFT)).is_null());
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
        mark_segment(a, 7);
        assert!(is_segment(a) && is_segment(a + (1 << CHUNK_SHIFT) - 1));
        assert_eq!(segment_tag(a + 12345), 7);
        assert!(!is_segment(a + (1 << CHUNK_SHIFT)) && !is_segment(a - 1));
        unmark_segment(a);
        assert!(!is_segment(a));
        // Never a segment, never a fault: beyond 48 bits, and address 0.
        assert!(!is_segment(usize::MAX) && !is_segment(1 << 48) && !is_segment(0));
    }

    /// The null chunk is outside the map: its lookup reads no byte of it (the map's first byte
    /// is the second chunk's), and every other 48-bit address is inside.
    #[test]
    fn the_segment_map_starts_at_the_second_chunk() {
        let chunk = 1usize << CHUNK_SHIFT;
        assert_eq!(map_index(0), usize::MAX);
        assert!(
            map_index(chunk - 1) >= MAP_LEN,
            "the null chunk's last byte"
        );
        assert_eq!(map_index(chunk), 0);
        assert!(map_index((1 << ADDRESS_BITS) - 1) < MAP_LEN);
        let first = ptr::from_ref(byte(chunk));
        assert_eq!(first.cast::<u8>(), SEGMENT_MAP.0.get().cast::<u8>());
        assert_eq!(segment_tag(chunk - 1), 0);
    }
}
