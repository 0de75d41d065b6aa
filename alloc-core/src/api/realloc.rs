//! `realloc`: in place where the block's class or pages allow, else a new block and a copy;
//! blocks that keep growing get room after them or a mapping of their own.

use super::alloc::{alloc_huge, alloc_slow, cache_or_init, fallback_alloc};
use super::free::{free_as, validate, Block};
use super::sampled::{alloc_sampled, huge_realloc};
use super::Op;
use crate::addr::segment::{Segment, FLAG_SAMPLED};
use crate::base::size_class::{class_of, is_small, CLASSES, LARGE_MAX, QUANTUM, SMALL_MAX};
use crate::pool::arena;
use crate::pool::huge;
use crate::process::tick::count_event;
use crate::prof::backtrace;
use crate::thread;
use crate::thread::cache;
use core::ptr;

/// Blocks that `realloc` grows to at least this size get a mapping of their own (see
/// `realloc_slow`): growing one is then `mremap`, not a copy. glibc grows blocks in place at
/// the top of its heap; this is how a realloc-heavy program keeps up with it.
const REALLOC_MAP_MIN: usize = 256 << 10;

/// Allocates the new home of a block that `realloc` is growing, placed so that it can keep
/// growing: a large block takes a cached one up to four times its size (the last buffer built
/// up, freed) or else gets free pages after it, and blocks from `REALLOC_MAP_MIN` up mappings
/// of their own (reusing the largest cached one).
pub(super) fn alloc_for_growth(size: usize, entry_sp: usize) -> *mut u8 {
    if size >= REALLOC_MAP_MIN {
        return alloc_huge(size, QUANTUM, false, true, entry_sp);
    }
    if size <= SMALL_MAX {
        return alloc_slow(size, QUANTUM, false, entry_sp);
    }
    let class = class_of(size);
    let tc = cache_or_init();
    if tc.is_null() {
        return fallback_alloc(class, false, size);
    }
    // SAFETY: our own cache.
    unsafe {
        if count_event(tc, size) {
            return alloc_sampled(tc, class, QUANTUM, false, size, entry_sp);
        }
        // A buffer built up before and freed, cached (or any cached block large enough).
        if let Some(p) = cache::take_at_least(tc, class) {
            return p;
        }
        let pages = CLASSES[class].pages as usize;
        (*tc).arena.alloc_large_with_room(class, 1, pages, false)
    }
}

/// A block that keeps growing by small steps moves, past this size, into a page run with
/// free pages after it (the smallest large class at least), where it then grows in place: the
/// copies from here to 16 KiB were most of a built-up buffer's cost.
const BUILD_UP_MIN: usize = 2 << 10;
/// ... after this many growths in a row: a buffer appended to in small steps, not one that
/// doubles itself (which copies little anyway) nor one grown a few times and then kept.
const BUILD_UP_STEPS: u32 = 16;

/// The size to allocate for block `p` (usable size `old_usable`) that `realloc` grows to
/// `size`. A block this thread's previous `realloc` grew, growing again, is being built up (a
/// string, a buffer appended to): it gets twice its old size, up to the largest class of its
/// kind, so that it is copied or resized about once per doubling rather than once per size
/// class; after many small steps it moves to a page run (see [`BUILD_UP_MIN`]). glibc grows
/// such a block in place at the top of its heap; slab classes cannot. A block grown only once
/// gets exactly what it asked for.
fn with_headroom(p: *mut u8, size: usize, old_usable: usize) -> usize {
    let tc = thread::cache();
    // SAFETY: the calling thread's own cache, if any.
    if size > LARGE_MAX || tc.is_null() || unsafe { (*tc).last_grown } != p {
        return size;
    }
    let doubled = size.max(old_usable * 2);
    if size <= SMALL_MAX {
        // SAFETY: as above.
        if size > BUILD_UP_MIN && unsafe { (*tc).grown_steps } >= BUILD_UP_STEPS {
            return doubled.clamp(SMALL_MAX + 1, LARGE_MAX);
        }
        return doubled.min(SMALL_MAX);
    }
    doubled.min(LARGE_MAX)
}

/// Whether `realloc` (not `realloc_exact`) of block `p`, with `usable` bytes, to `size` leaves
/// it where it is. A block being built up keeps its headroom until it has grown into it (noted
/// as grown again); with `shrinks_in_place` (a small block, or a sampled one inside a larger
/// block), one that shrinks to no less than half stays (as mimalloc does): the headroom given
/// to a growing block is not lost to a copy at its first shrink.
fn stays(p: *mut u8, size: usize, usable: usize, exact: bool, shrinks_in_place: bool) -> bool {
    if exact || size > usable {
        return false;
    }
    if grows_again(p, size) {
        note_grown(p, p, size);
        return true;
    }
    shrinks_in_place && size > usable / 2
}

/// Whether `realloc(p, size)` grows again the block that this thread's last growing
/// `realloc` returned (a shrink is not growth: a block built up is often trimmed to fit).
fn grows_again(p: *mut u8, size: usize) -> bool {
    let tc = thread::cache();
    // SAFETY: the calling thread's own cache, if any.
    !tc.is_null() && unsafe { (*tc).last_grown == p && size >= (*tc).last_grown_size }
}

/// Notes that this thread's `realloc` just grew block `p` to `q` (perhaps `p`), asked for
/// `size` bytes, so that its next growth gets headroom (see [`with_headroom`]).
fn note_grown(p: *mut u8, q: *mut u8, size: usize) {
    let tc = thread::cache();
    if !tc.is_null() {
        // SAFETY: the calling thread's own cache.
        unsafe {
            (*tc).grown_steps = if (*tc).last_grown == p {
                (*tc).grown_steps.saturating_add(1)
            } else {
                1
            };
            (*tc).last_grown = q;
            (*tc).last_grown_size = size;
        }
    }
}

/// Resizes `p` to at least `size` bytes, in place when it can, keeping the contents; null `p`
/// allocates. Returns null (leaving `p` intact) when memory ran out. Aborts on a pointer that
/// is not a live block of ours.
///
/// # Safety
/// `p` must be null or a live block from this engine; on success it must not be used again.
#[inline(always)]
pub unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { realloc_slow(p, size, backtrace::current_sp(), false) }
}

/// [`realloc`] for callers that free with the size ([`free_sized`](super::free::free_sized),
/// Rust's `dealloc`): a small result is always of `class_of(size)`, so no headroom for a
/// growing block and no shrinking in place across classes. (Rust's collections grow by
/// doubling themselves.)
///
/// # Safety
/// As for [`realloc`].
#[inline(always)]
pub unsafe fn realloc_exact(p: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { realloc_slow(p, size, backtrace::current_sp(), true) }
}

#[inline(never)]
unsafe fn realloc_slow(p: *mut u8, size: usize, entry_sp: usize, exact: bool) -> *mut u8 {
    if p.is_null() {
        return alloc_slow(size, QUANTUM, false, entry_sp);
    }
    let old_usable = match validate(p, Op::Realloc) {
        Block::Huge(h) => {
            // SAFETY: `h` is the registered header for `p`.
            unsafe { huge::check(h.cast(), p, "realloc") };
            if size >= REALLOC_MAP_MIN {
                // SAFETY: `h` is the validated header of `p`.
                return unsafe { huge_realloc(h, p, size) };
            }
            // SAFETY: as above.
            unsafe { huge::usable_size(h, p, "realloc") }
        }
        // A sampled block inside another stays while it fits, as a small block does: its
        // record keeps the size it was sampled at. Moving it would drop a buffer out of the
        // page run it grows in.
        Block::Inner(_, class, offset, _) => {
            let usable = CLASSES[class].size as usize - offset;
            if stays(p, size, usable, exact, true) {
                return p;
            }
            usable
        }
        Block::Span(d, class) => {
            let usable = CLASSES[class].size as usize;
            if stays(p, size, usable, exact, is_small(class)) {
                return p;
            }
            if size <= LARGE_MAX {
                let new_class = class_of(size);
                if new_class == class {
                    return p;
                }
                // Sampled blocks always move. A large block that keeps growing grows in place
                // by doubling where the pages after it are free: the arena's lock once per
                // doubling rather than once per class.
                if !is_small(class)
                    && !is_small(new_class)
                    // SAFETY: `d` heads the live large block `p`.
                    && unsafe { (*d).flags } & FLAG_SAMPLED == 0
                {
                    let grows = !exact && size > usable;
                    let want = if grows {
                        class_of(with_headroom(p, size, usable))
                    } else {
                        new_class
                    };
                    // SAFETY: as above; the block is ours to resize.
                    if unsafe {
                        arena::of_segment(Segment::of(p as usize)).resize_large(d, want, new_class)
                    } {
                        if grows {
                            note_grown(p, p, size);
                        }
                        return p;
                    }
                }
            }
            usable
        }
    };
    // A block growing past REALLOC_MAP_MIN moves into a mapping of its own, so that its later
    // growth is mremap (page tables move, no copy) rather than a copy per size class.
    let growing = size > old_usable;
    let q = if growing {
        let want = if exact {
            size
        } else {
            with_headroom(p, size, old_usable)
        };
        alloc_for_growth(want, entry_sp)
    } else {
        alloc_slow(size, QUANTUM, false, entry_sp)
    };
    if q.is_null() {
        return q;
    }
    if growing && !exact && size <= LARGE_MAX {
        note_grown(p, q, size);
    }
    // SAFETY: both blocks are live and at least the copied length long.
    unsafe {
        ptr::copy_nonoverlapping(p, q, old_usable.min(size));
        free_as(p, Op::Realloc);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::segment::{self, kind, Location};
    use crate::api::alloc::malloc;
    use crate::api::free::free;

    /// Grows a block from 8 bytes to `max` by steps of about 1/8, as a string builder does.
    fn build_up(max: usize) -> *mut u8 {
        let mut n = 8;
        let mut p = malloc(n);
        while n < max {
            n = (n + n / 8 + 1).min(max);
            // SAFETY: `p` is live; the result replaces it.
            p = unsafe { realloc(p, n) };
            assert!(!p.is_null());
        }
        p
    }

    /// A buffer built up into a page run waits in the thread cache when it is freed, and the
    /// next buffer built the same way moves into it when it reaches the page-run sizes, so
    /// that it grows where the last one did, with no page-heap work at either end.
    #[test]
    fn the_next_built_up_buffer_moves_into_the_last_one() {
        // A sampled buffer would take other paths: no other test may turn sampling on.
        let _options = crate::base::config::hold_options();
        std::thread::spawn(|| {
            let tc = thread::cache_or_init();
            let p = build_up(64 << 10);
            let Location::Span(d, _) = segment::locate(p as usize) else {
                panic!("{p:?} is not in a segment");
            };
            // SAFETY: `d` heads the live block `p`.
            let class = unsafe {
                assert_eq!((*d).kind, kind::LARGE, "a 64 KiB buffer is a page run");
                (*d).class as usize
            };
            // SAFETY: this thread's own cache.
            let cached = || unsafe { (*tc).cached_seen(class) };
            let before = cached();
            // SAFETY: a live block of ours, freed once.
            unsafe { free(p) };
            assert_eq!(
                cached(),
                before + 1,
                "the buffer did not go into the thread cache"
            );
            let q = build_up(64 << 10);
            assert_eq!(q, p, "the next buffer did not move into the last one");
            assert_eq!(cached(), before);
            // SAFETY: as above.
            unsafe { free(q) };
        })
        .join()
        .unwrap();
    }
    /// A smaller block left cached in the classes a growing buffer may move into (one a buffer
    /// outgrew, or a sampled block's) does not come between successive buffers built up: the
    /// next buffer still moves into the last one, the largest cached, and the smaller block
    /// stays where it is. Taken first, it was outgrown, copied out of and cached again by
    /// every buffer.
    #[test]
    fn a_smaller_cached_block_does_not_come_between_built_up_buffers() {
        let _options = crate::base::config::hold_options();
        std::thread::spawn(|| {
            let p = build_up(64 << 10);
            let stray = malloc(20 << 10);
            // SAFETY: live blocks of ours, freed once; `stray` on top of its own stack.
            unsafe {
                free(p);
                free(stray);
            }
            for _ in 0..3 {
                let q = build_up(64 << 10);
                assert_eq!(q, p, "the next buffer did not move into the last one");
                // SAFETY: as above.
                unsafe { free(q) };
            }
            assert_eq!(
                malloc(20 << 10),
                stray,
                "the smaller block was taken meanwhile"
            );
        })
        .join()
        .unwrap();
    }
}
