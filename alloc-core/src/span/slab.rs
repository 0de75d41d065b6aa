//! Slabs: spans cut into equal objects of one small class, with a free bitmap.
//!
//! The bitmap lives out of band in the span descriptor (1 = free), so user data never holds
//! allocator pointers, and returning an object whose bit is already set is a detected double
//! free. Objects are packed from the slab's (page-aligned) start.

use crate::addr::segment::{kind, span_start, SpanDesc};
use crate::base::size_class::CLASSES;

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
    let objects = CLASSES[class].objects as usize;
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
        crate::addr::segment::set_fast_class_of_span(d);
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
        let base = span_start(d) as usize;
        let mut n = 0;
        for (i, word) in (*d).words.iter_mut().enumerate() {
            while *word != 0 && n < out.len() {
                let bit = word.trailing_zeros() as usize;
                *word &= *word - 1;
                out[n] = (base + (i * 64 + bit) * size) as *mut u8;
                n += 1;
            }
            if n == out.len() {
                break;
            }
        }
        (*d).nfree -= n as u32;
        n
    }
}

/// The index of the object at `p` in slab `d`, or `None` if `p` is not the start of one.
///
/// # Safety
/// `d` must be a slab descriptor covering the page of `p`.
#[inline(always)]
pub unsafe fn object_index(d: *const SpanDesc, p: usize) -> Option<usize> {
    // SAFETY: `d` is a live slab descriptor; a slab's class (always < NUM_CLASSES) and kind do
    // not change while it is a slab.
    unsafe {
        let info = CLASSES.get_unchecked((*d).class as usize);
        let off = p.wrapping_sub(span_start(d) as usize) as u64;
        let index = (off * info.div_magic as u64) >> 32;
        if index * info.size as u64 == off && index < info.objects as u64 {
            Some(index as usize)
        } else {
            None
        }
    }
}

/// Returns the object with index `index` to slab `d`.
///
/// # Safety
/// `d` must be a slab whose bin lock the caller holds; `index` must be in range.
pub unsafe fn put(d: *mut SpanDesc, index: usize) -> Put {
    // SAFETY: the caller holds the bin lock that guards this slab.
    unsafe {
        let word = &mut (*d).words[index / 64];
        let bit = 1u64 << (index % 64);
        if *word & bit != 0 {
            return Put::AlreadyFree;
        }
        *word |= bit;
        (*d).nfree += 1;
        let objects = CLASSES[(*d).class as usize].objects as u32;
        if (*d).nfree == objects {
            Put::NowEmpty
        } else if (*d).nfree == 1 {
            Put::WasFull
        } else {
            Put::Partial
        }
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
