//! Slabs: spans cut into equal objects of one small class, with a free bitmap.
//!
//! The bitmap lives out of band in the span descriptor (1 = free), so user data never holds
//! allocator pointers, and returning an object whose bit is already set is a detected double
//! free. Objects are packed from the slab's (page-aligned) start.
//!
//! A class of at most `size_class::MINI_MAX` bytes starts in each arena with a mini slab: a
//! granule or two of a page that other classes' mini slabs share (a `SHARED` span, see
//! `size_class::mini_bytes`). A program that uses a few blocks of many classes then touches a
//! page for every four to eight of them, as it would under an allocator that mixes sizes on a
//! page, instead of a page for each; a class used more goes on to full slabs. Mini slabs are
//! never given back (an arena holds at most 14 KiB of them); their descriptors live in header
//! slots that are no page's, and keep their start in their last word.

use crate::addr::segment::{self, kind, span_start, Segment, SpanDesc, FLAG_MINI};
use crate::base::size_class::{mini_objects, ClassInfo, CLASSES, STARTS_BY_CODE};

/// What returning an object did to its slab.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    /// The slab had free objects before and still has allocated ones.
    Partial,
    /// The slab was full and now has one free object.
    WasFull,
    /// Every object of the slab is free now.
    NowEmpty,
    /// The object was already free: a double free.
    AlreadyFree,
}

/// Makes span `d` a slab of class `class` with every object free.
///
/// # Safety
/// `d` must be an allocated span head with the class's slab page count, owned by the caller.
pub unsafe fn init(d: *mut SpanDesc, class: usize) {
    // SAFETY: per the contract.
    unsafe {
        init_objects(d, class, CLASSES[class].objects as usize);
        crate::addr::segment::set_fast_class_of_span(d);
    }
}

/// Makes descriptor `d` (a header slot) the mini slab of class `class` (below
/// `size_class::NUM_MINI`) at `start`, a KiB of a shared page, with every object free.
///
/// # Safety
/// `d` must be an unused header slot and `start` a granule of a shared page of the same
/// segment, both owned by the caller.
pub unsafe fn init_mini(d: *mut SpanDesc, class: usize, start: *mut u8) {
    // SAFETY: exclusive access to the descriptor; the words after the first are free for the
    // start, since a mini slab has at most 64 objects.
    unsafe {
        (*d).flags = FLAG_MINI;
        (*d).pages = 0;
        init_objects(d, class, mini_objects(class));
        (*d).words[3] = start as usize as u64;
        crate::addr::segment::set_fast_class_of_span(d);
    }
}

/// [`init`] of a slab of `objects` objects.
///
/// # Safety
/// As for [`init`].
unsafe fn init_objects(d: *mut SpanDesc, class: usize, objects: usize) {
    // SAFETY: exclusive access to the descriptor.
    unsafe {
        (*d).kind = kind::SLAB;
        (*d).class = class as u8;
        (*d).nfree = objects as u32;
        for (i, w) in (*d).words.iter_mut().enumerate() {
            let lo = i * 64;
            *w = if objects >= lo + 64 {
                u64::MAX
            } else if objects > lo {
                (1u64 << (objects - lo)) - 1
            } else {
                0
            };
        }
    }
}

/// Takes up to `out.len()` free objects from slab `d`; returns how many.
///
/// # Safety
/// `d` must be a slab whose bin lock the caller holds.
pub unsafe fn take(d: *mut SpanDesc, out: &mut [*mut u8]) -> usize {
    // SAFETY: the caller holds the bin lock that guards this slab.
    unsafe {
        let size = CLASSES[(*d).class as usize].size as usize;
        let base = start(d) as usize;
        // No more than the free objects: a mini slab's last word is its start, not bits.
        let want = out.len().min((*d).nfree as usize);
        let mut n = 0;
        for (i, word) in (*d).words.iter_mut().enumerate() {
            while *word != 0 && n < want {
                let bit = word.trailing_zeros() as usize;
                *word &= *word - 1;
                out[n] = (base + (i * 64 + bit) * size) as *mut u8;
                n += 1;
            }
            if n == want {
                break;
            }
        }
        (*d).nfree -= n as u32;
        n
    }
}

/// Whether slab `d` is a mini slab.
///
/// # Safety
/// `d` must be a live slab's descriptor.
#[inline(always)]
pub unsafe fn is_mini(d: *const SpanDesc) -> bool {
    // SAFETY: per the contract.
    unsafe { (*d).flags & FLAG_MINI != 0 }
}

/// The first byte of slab `d`.
///
/// # Safety
/// `d` must be a live slab's descriptor.
#[inline(always)]
pub unsafe fn start(d: *const SpanDesc) -> *mut u8 {
    // SAFETY: per the contract.
    unsafe { segment::start_of(d) }
}

/// How many objects slab `d` holds.
///
/// # Safety
/// `d` must be a live slab's descriptor.
#[inline(always)]
pub unsafe fn capacity(d: *const SpanDesc) -> usize {
    // SAFETY: per the contract; a slab's class is small.
    unsafe {
        let class = (*d).class as usize;
        if is_mini(d) {
            mini_objects(class)
        } else {
            CLASSES.get_unchecked(class).objects as usize
        }
    }
}

/// Whether `offset` from slab `d`'s start is where one of its objects starts.
///
/// # Safety
/// `d` must be a live slab's descriptor.
#[inline(always)]
pub unsafe fn starts_object(d: *const SpanDesc, offset: usize) -> bool {
    // SAFETY: per the contract; a slab's class is small, so its mini code is in the table
    // when it has mini slabs.
    unsafe {
        let class = (*d).class as usize;
        if is_mini(d) {
            let code = crate::base::size_class::mini_code(class);
            STARTS_BY_CODE.get_unchecked(code).accepts(offset)
        } else {
            ClassInfo::starts_block(CLASSES.get_unchecked(class), offset)
        }
    }
}

/// Where a slab's objects start and how many it holds, read once for a run of lookups.
#[derive(Clone, Copy)]
pub struct Shape {
    /// The slab's first byte.
    pub start: usize,
    /// Its objects.
    pub objects: usize,
}

/// The shape of slab `d`.
///
/// # Safety
/// `d` must be a live slab's descriptor.
#[inline(always)]
pub unsafe fn shape(d: *const SpanDesc) -> Shape {
    // SAFETY: per the contract.
    unsafe {
        Shape {
            start: start(d) as usize,
            objects: capacity(d),
        }
    }
}

/// The index of the object at `p` in slab `d`, or `None` if `p` is not the start of one.
///
/// # Safety
/// `d` must be a slab descriptor covering the page of `p`.
#[inline(always)]
pub unsafe fn object_index(d: *const SpanDesc, p: usize) -> Option<usize> {
    // SAFETY: per the contract.
    unsafe { index_in(d, shape(d), p) }
}

/// [`object_index`] with the slab's [`shape`] known.
///
/// # Safety
/// As for [`object_index`]; `shape` must be `d`'s.
#[inline(always)]
pub unsafe fn index_in(d: *const SpanDesc, shape: Shape, p: usize) -> Option<usize> {
    // SAFETY: `d` is a live slab descriptor; a slab's class (always < NUM_CLASSES) and kind do
    // not change while it is a slab.
    unsafe {
        let info = CLASSES.get_unchecked((*d).class as usize);
        let off = p.wrapping_sub(shape.start) as u64;
        let index = (off * info.div_magic as u64) >> 32;
        if index * info.size as u64 == off && index < shape.objects as u64 {
            Some(index as usize)
        } else {
            None
        }
    }
}

/// Returns the object with index `index` to slab `d`, which holds `objects` objects.
///
/// # Safety
/// `d` must be a slab whose bin lock the caller holds; `index` must be in range and `objects`
/// the slab's [`capacity`].
pub unsafe fn put(d: *mut SpanDesc, index: usize, objects: usize) -> Put {
    // SAFETY: the caller holds the bin lock that guards this slab.
    unsafe {
        let word = &mut (*d).words[index / 64];
        let bit = 1u64 << (index % 64);
        if *word & bit != 0 {
            return Put::AlreadyFree;
        }
        *word |= bit;
        (*d).nfree += 1;
        if (*d).nfree as usize == objects {
            Put::NowEmpty
        } else if (*d).nfree == 1 {
            Put::WasFull
        } else {
            Put::Partial
        }
    }
}

/// The slab holding the object at `p`, a pointer into a slab of ours, with the object's index
/// and the slab's object count, or `None` if `p` starts no object of a live slab (an invalid
/// pointer).
///
/// # Safety
/// `p` must lie in a live segment of ours whose arena's bin lock for `p`'s class the caller
/// holds.
#[inline(always)]
pub unsafe fn find_object(p: usize) -> Option<(*mut SpanDesc, usize, usize)> {
    let seg = Segment::of(p);
    // SAFETY: per the contract; a slab on pages of its own is never a mini slab.
    unsafe {
        let d = Segment::desc(seg, Segment::head_of(seg, Segment::page_index(p)));
        match (*d).kind {
            kind::SLAB => {
                let objects = CLASSES.get_unchecked((*d).class as usize).objects as usize;
                let shape = Shape {
                    start: span_start(d) as usize,
                    objects,
                };
                index_in(d, shape, p).map(|i| (d, i, objects))
            }
            kind::SHARED => find_mini_object(d, p),
            _ => None,
        }
    }
}

/// [`find_object`] in a shared page, out of the way of the common case.
///
/// # Safety
/// As for [`find_object`]; `shared` must be the descriptor of `p`'s shared page.
#[cold]
#[inline(never)]
unsafe fn find_mini_object(
    shared: *mut SpanDesc,
    p: usize,
) -> Option<(*mut SpanDesc, usize, usize)> {
    // SAFETY: per the contract.
    unsafe {
        let d = segment::mini_at(shared, p);
        if d.is_null() {
            return None;
        }
        let shape = shape(d);
        index_in(d, shape, p).map(|i| (d, i, shape.objects))
    }
}

/// Whether the object with index `index` is free (for double-free diagnosis).
///
/// # Safety
/// `d` must be a slab whose bin lock the caller holds.
pub unsafe fn is_free(d: *const SpanDesc, index: usize) -> bool {
    // SAFETY: as documented.
    unsafe { (*d).words[index / 64] & (1u64 << (index % 64)) != 0 }
}
