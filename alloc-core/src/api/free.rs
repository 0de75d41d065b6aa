//! Freeing and measuring: `free`, `free_sized`, `malloc_usable_size` and the pointer checks.
//!
//! The fast path is here: `free` of a block of a cached class is a segment-map load, the
//! fast-path entry of its KiB (its class and its offset in the span), one multiplication that
//! checks the pointer starts a block, and a push. Anything suspicious takes the checked path, and misuse is fatal: a pointer that does
//! not start a live block of ours aborts with one line naming the function and the pointer.

use super::alloc::cache_or_init;
use super::sampled::{forget_sample, free_inner, free_sampled, huge_freeing};
use super::{misuse, Op};
use crate::addr::registry;
use crate::addr::sampled::{self as addr_sampled, InnerSample};
use crate::addr::segment::{self, kind, span_start, Location, Segment, SpanDesc, FLAG_SAMPLED};
use crate::base::guess;
use crate::base::size_class::{
    class_of, is_small, CLASSES, GRANULE, GRANULE_SHIFT, NUM_CACHED, QUANTUM, SMALL_MAX,
    STARTS_BY_CODE,
};
use crate::pool::arena;
use crate::pool::huge;
use crate::span::slab;
use crate::thread::cache::{self, ThreadCache};
use crate::thread::{self};
use core::ptr;

/// What `p` is, validated: aborts (naming `op`) unless `p` starts a live block of ours.
pub(super) enum Block {
    /// A block of span `d`, of class `class`.
    Span(*mut SpanDesc, usize),
    /// A sampled block served `offset` bytes into a block of class `class` of span `d`, and
    /// what its header holds (see `addr::sampled`).
    Inner(*mut SpanDesc, usize, usize, InnerSample),
    Huge(*mut u8),
}

#[inline(always)]
pub(super) fn validate(p: *mut u8, op: Op) -> Block {
    // SAFETY: `validate_with` hands `sample_of` only addresses that pass its contract.
    validate_with(p, op, |p| unsafe { addr_sampled::sample_of(p) })
}

/// [`validate`], finding a sampled block inside a larger one with `inner` (`addr::sampled`'s
/// `sample_of`, or `take` for a `free`), which is only handed addresses at least
/// `addr::sampled::HEADER` bytes into a block of a live span, 16-aligned.
#[inline(always)]
fn validate_with(p: *mut u8, op: Op, inner: impl FnOnce(*mut u8) -> Option<InnerSample>) -> Block {
    match segment::locate(p as usize) {
        Location::Span(d, start) => {
            // SAFETY: the segment map found a live segment; the descriptor is checked before use,
            // and a slab's class is always below NUM_CLASSES.
            unsafe {
                let k = (*d).kind;
                let class = (*d).class as usize;
                let offset = (p as usize).wrapping_sub(start);
                let ok = if k == kind::SLAB {
                    slab::starts_object(d, offset)
                } else {
                    k == kind::LARGE && offset == 0
                };
                if ok {
                    return Block::Span(d, class);
                }
                if k == kind::SLAB || k == kind::LARGE {
                    let inside = offset % CLASSES.get_unchecked(class).size as usize;
                    if inside >= addr_sampled::HEADER && (p as usize).is_multiple_of(QUANTUM) {
                        if let Some(sample) = inner(p) {
                            return Block::Inner(d, class, inside, sample);
                        }
                    }
                }
                bad_span_pointer(d, p, op)
            }
        }
        Location::Huge(h) => Block::Huge(h),
        Location::Foreign => misuse(op, "invalid pointer", p),
    }
}

#[cold]
fn bad_span_pointer(d: *mut SpanDesc, p: *mut u8, op: Op) -> ! {
    // SAFETY: `d` is a descriptor of a live segment.
    let k = unsafe { (*d).kind };
    if (k == kind::FREE_DIRTY || k == kind::FREE_CLEAN) && span_start(d) == p {
        misuse(op, "double free of", p)
    }
    misuse(op, "invalid pointer", p)
}

/// Frees `p` (null is ignored). Aborts on a pointer that is not a live block of ours.
///
/// # Safety
/// `p` must be null or a block from this engine that the caller no longer uses. Pointers that
/// are not live blocks are detected and abort, but a block still in use elsewhere is not.
#[inline]
pub unsafe fn free(p: *mut u8) {
    // SAFETY: forwarded contract.
    unsafe { free_as(p, Op::Free) }
}

/// Frees `p`, which was allocated with `size` bytes at an alignment of at most 16 (by
/// [`malloc`], [`malloc_zeroed`] or [`realloc`] to that size). With the size known
/// the block's class is known too, so a small block goes straight to the thread cache with no
/// descriptor lookup, if its KiB's fast-path code is that class's: a sampled block (inside a
/// block of a larger class, or on pages of its own) takes [`free`]'s path, as do blocks
/// smaller than a cache line from other arenas (which may go home).
///
/// # Safety
/// `p` must be a live block of this engine whose requested (or last reallocated) size was
/// `size`, freed once. Unlike [`free`], a wrong pointer is not detected.
#[inline(always)]
pub unsafe fn free_sized(p: *mut u8, size: usize) {
    // SAFETY: a small block lies in a live segment. (A block of a mini slab, whose code is
    // another, takes `free`.)
    let code = || unsafe { Segment::fast_code_at(p as usize) } & 0xff;
    if size <= SMALL_MAX && code() == class_of(size) + 1 {
        let class = class_of(size);
        let tc = thread::cache();
        // A block that may have to go home takes `free`.
        let foreign = || {
            cache::may_send_home(class)
                // SAFETY: only read when the cache is non-null: our own.
                && registry::segment_tag(p as usize) != unsafe { (*tc).arena_tag }
        };
        if !tc.is_null() && !foreign() {
            // SAFETY: our own cache; `class_of` of a small size is a cached class.
            if unsafe { (*tc).bins.get_unchecked(class).try_push(p) } {
                return;
            }
        }
    }
    // SAFETY: forwarded contract.
    unsafe { free(p) }
}

/// [`free`], naming `op` in the message if `p` is not a live block (e.g. `realloc(p, 0)`).
///
/// The fast path serves the common case, a block of a cached class in a segment, from its KiB's
/// fast-path entry: the segment map says the chunk is a segment, the entry gives the class and
/// how far `p`'s KiB lies into its span, the class's constants check that `p` starts a block,
/// and the block goes on the thread cache. The segment's address comes from `p` itself, so the loads of the code
/// and of the segment map run side by side. A block smaller than a cache line whose segment
/// belongs to another arena (the map byte is the arena's tag) takes [`free_foreign`], which may
/// send it home. Everything else (null, huge and sampled blocks, uncached classes, invalid
/// pointers, a full stack, a suspected double free, a thread without a cache) takes the checked
/// path. Both are tail calls, so the fast path saves no registers. A sampled block of a cached
/// class starts no block of its span (see `addr::sampled`), so the block-start check sends it
/// there too, and sampling costs the fast path nothing.
///
/// # Safety
/// As for [`free`].
#[inline(always)]
pub unsafe fn free_as(p: *mut u8, op: Op) {
    // A block freed right after its `malloc` is pushed on the stack of the class that
    // `malloc` noted, once the page code agrees: the next `malloc` then reads the stack
    // without waiting for the loads of the page code. (Whether `p` is that block is known at
    // once, so a wrong guess costs little.)
    // SAFETY: forwarded contract; `free_guessing` hands the closure the caller's own cache.
    unsafe {
        free_guessing(p, op, |tc| {
            (p == (*tc).last_block).then(|| (*tc).last_class)
        })
    }
}

/// [`free_as`] of a block whose requested size the caller states (C++ sized `delete`): the
/// block goes on the stack of the size's class at once, as [`free_as`] does with `malloc`'s
/// note, once the page code agrees. A wrong size is harmless (the page's class is used) and a
/// wrong pointer aborts, as in [`free`]: only the speed is [`free_sized`]'s.
///
/// # Safety
/// As for [`free`].
#[inline(always)]
pub unsafe fn free_with_size(p: *mut u8, size: usize, op: Op) {
    let hint = (size <= SMALL_MAX).then(|| class_of(size));
    // SAFETY: forwarded contract.
    unsafe { free_guessing(p, op, |_| hint) }
}

/// [`free_as`], with `guess(tc)` (given the caller's cache) the block's class if it is known
/// before the page code is read.
///
/// # Safety
/// As for [`free`]; `guess` may read the cache it is given.
#[inline(always)]
unsafe fn free_guessing(p: *mut u8, op: Op, guess: impl FnOnce(*mut ThreadCache) -> Option<usize>) {
    let tag = registry::segment_tag(p as usize);
    if tag != 0 {
        let tc = thread::cache();
        // SAFETY: `p` lies in a live segment.
        let entry = unsafe { Segment::fast_code_at(p as usize) };
        // SAFETY: as above; codes are below `CODES`.
        let class = unsafe { block_of_code(p, entry) };
        if let (Some((class, subline)), false) = (class, tc.is_null()) {
            // SAFETY: our own cache; `p` starts a live-or-cached block of cached `class`.
            unsafe {
                if (tag ^ (*tc).arena_tag) as u64 & subline != 0 {
                    return free_foreign(tc, p, class, tag, op);
                }
                let class = match guess(tc) {
                    Some(guessed) => guess::confirmed(class, guessed),
                    None => class,
                };
                if push_to_cache(tc, p, class) {
                    return;
                }
            }
        }
    }
    // SAFETY: forwarded contract.
    unsafe { free_checked(p, op) }
}

/// The class of the block starting at `p`, a pointer into a live segment, if `entry` (its
/// granule's fast-path entry, see `Segment::fast_code`) has a cached class's code and `p` is
/// where one of its blocks starts; with the class's `subline` mask (see [`STARTS_BY_CODE`]).
///
/// # Safety
/// `p` must lie in a live segment and `entry` be one of its entries, whose codes are below
/// `size_class::CODES`.
#[inline(always)]
unsafe fn block_of_code(p: *mut u8, entry: usize) -> Option<(usize, u64)> {
    // The offset of `p` in its span: into its granule, plus the granules before. A granule
    // without a code has any distance: code 0 accepts no offset.
    let offset = (p as usize & (GRANULE - 1)) + ((entry >> 8) << GRANULE_SHIFT);
    // SAFETY: `entry`'s code is within the table.
    let starts = unsafe { STARTS_BY_CODE.get_unchecked(entry & 0xff) };
    starts
        .accepts(offset)
        .then_some((starts.class as usize, starts.subline as u64))
}

/// Pushes `p`, a block of cached class `class`, on the cache `tc` and writes the free key into
/// it; false, having done nothing, when its first byte is the key's (it may be cached: a double
/// free; the checked path reads the whole word) or the stack is full.
///
/// # Safety
/// `tc` must be the caller's cache and `p` start a block of `class` the caller frees.
#[inline(always)]
unsafe fn push_to_cache(tc: *mut ThreadCache, p: *mut u8, class: usize) -> bool {
    // SAFETY: per the contract; a cached class's bin is in bounds.
    unsafe {
        let key = (*tc).free_key;
        if cache::may_hold_free_key(p, key) || !(*tc).bins.get_unchecked(class).try_push(p) {
            return false;
        }
        p.cast::<u64>().write(key);
        true
    }
}

/// [`free_as`] of a block smaller than a cache line from another arena, already checked to
/// start a block of cached class `class` in a segment with tag `tag`: into the remote buffer if
/// it goes home (see `thread_cache`). Otherwise (its arena is unused, or a double free is
/// suspected) the checked path, which caches it here.
///
/// # Safety
/// `tc` must be the caller's cache; otherwise as for [`free`].
#[inline(never)]
unsafe fn free_foreign(tc: *mut ThreadCache, p: *mut u8, class: usize, tag: u8, op: Op) {
    // SAFETY: our own cache; `p` starts a block of `class` (checked by the caller).
    unsafe {
        if !cache::may_hold_free_key(p, (*tc).free_key)
            && cache::sends_home(class, arena::of_tag(tag))
        {
            return cache::push_remote(tc, class, p);
        }
        free_checked(p, op)
    }
}

/// `free` through the descriptors, with every check: the path for everything the fast path of
/// [`free_as`] does not take.
#[inline(never)]
pub(super) unsafe fn free_checked(p: *mut u8, op: Op) {
    if p.is_null() {
        return;
    }
    // SAFETY: `validate_with` hands `take` only addresses that pass its contract; the block
    // is being freed.
    match validate_with(p, op, |p| unsafe { addr_sampled::take(p) }) {
        // SAFETY: validated as a live block of class `class` in span `d`.
        Block::Span(d, class) => unsafe {
            if (*d).flags & FLAG_SAMPLED != 0 {
                free_sampled(p, d);
            } else {
                free_block(p, d, class, op);
            }
        },
        // SAFETY: validated (and its record taken) as a sampled block inside a live block of
        // `class` in span `d`.
        Block::Inner(d, class, offset, sample) => unsafe {
            free_inner(p, d, class, offset, sample, op)
        },
        // SAFETY: `h` is the registered header for `p`.
        Block::Huge(h) => unsafe {
            huge_freeing(h, p, op);
            forget_sample(huge::free(h, p, op.name()), 0)
        },
    }
}

#[inline(always)]
pub(super) unsafe fn free_block(p: *mut u8, d: *mut SpanDesc, class: usize, op: Op) {
    let tc = thread::cache();
    if !tc.is_null() && class < NUM_CACHED {
        // SAFETY: the caller's own cache; `p` is a validated block of `class`.
        unsafe {
            let key = (*tc).free_key;
            if cache::holds_free_key(p, key) {
                cache::check_double_free(tc, class, d, p, op.name());
            }
            let owner = arena::of_segment(segment::segment_of_desc(d));
            if !ptr::eq(owner, (*tc).line_arena) && cache::sends_home(class, owner) {
                cache::push_remote(tc, class, p);
                return;
            }
            if !(*tc).bins.get_unchecked(class).try_push(p) {
                cache::on_full(tc, class);
                // `on_full` grew or flushed the stack: there is room now.
                let pushed = (*tc).bins.get_unchecked(class).try_push(p);
                debug_assert!(pushed);
            }
            p.cast::<u64>().write(key);
        }
        return;
    }
    // SAFETY: as above.
    unsafe { free_block_slow(p, d, class, op) }
}

#[cold]
unsafe fn free_block_slow(p: *mut u8, d: *mut SpanDesc, class: usize, op: Op) {
    let tc = cache_or_init();
    // SAFETY: `p` is a validated block of `class` in span `d`.
    unsafe {
        if !tc.is_null() && class < NUM_CACHED {
            return free_block(p, d, class, op);
        }
        let owner = arena::of_segment(Segment::of(p as usize));
        if is_small(class) {
            owner.put_small(class, &[p], false);
        } else {
            owner.free_large(&[p]);
        }
    }
}

/// Usable bytes of the block `p`. Aborts on a pointer that is not a live block of ours.
///
/// # Safety
/// `p` should be a live block from this engine (anything else aborts).
pub unsafe fn usable_size(p: *mut u8) -> usize {
    match validate(p, Op::UsableSize) {
        Block::Span(_, class) => CLASSES[class].size as usize,
        Block::Inner(_, class, offset, _) => CLASSES[class].size as usize - offset,
        // SAFETY: `h` is the registered header for `p`.
        Block::Huge(h) => unsafe { huge::usable_size(h, p, "malloc_usable_size") },
    }
}

#[cfg(test)]
mod tests {
    use super::free;
    use crate::api::alloc::malloc;
    use crate::base::size_class::class_of;
    use crate::thread;

    /// `free` of the block `malloc` handed out last takes the class `malloc` noted only when
    /// the page says the same: with the note made wrong, the block still goes on the stack of
    /// its own class, and the noted class's stack is left as it was.
    #[test]
    fn a_wrong_guess_of_the_class_is_not_used() {
        std::thread::spawn(|| {
            let (size, other) = (64, 200);
            let (class, wrong) = (class_of(size), class_of(other));
            // SAFETY: live blocks of ours, each freed once; the first sets up this thread's
            // cache, and each class's stack then holds blocks.
            unsafe {
                [malloc(size), malloc(other)]
                    .into_iter()
                    .for_each(|p| free(p))
            };
            let tc = thread::cache();
            // SAFETY: this thread's own cache; only it changes the stacks.
            let top = move |c: usize| unsafe {
                let bin = &(*tc).bins[c];
                (bin.count(), *bin.base().add(bin.count() - 1))
            };
            for guess_right in [true, false] {
                let p = malloc(size);
                // SAFETY: as above.
                unsafe {
                    assert_eq!((*tc).last_block, p, "malloc did not note its block");
                    assert_eq!((*tc).last_class, class, "malloc did not note its class");
                    if !guess_right {
                        (*tc).last_class = wrong;
                    }
                }
                let before = top(wrong);
                // SAFETY: as above.
                unsafe { free(p) };
                let (mine, noted) = (top(class).1, top(wrong));
                if noted != before {
                    // Taken back before the checks fail: handed out as the noted class, the
                    // block would corrupt the panic's own allocations.
                    // SAFETY: as above.
                    unsafe { (*tc).bins[wrong].set_count(before.0) };
                }
                assert_eq!(mine, p, "the block is not on its class's stack");
                assert_eq!(noted, before, "the noted class's stack changed");
            }
        })
        .join()
        .unwrap();
    }
}
