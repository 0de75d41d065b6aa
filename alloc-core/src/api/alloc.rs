//! Allocation: `malloc`, its zeroed and aligned kinds, and the control calls (flush, purge).
//!
//! The fast path is here: `malloc` of a small size is a table lookup, a countdown, and a pop
//! from the thread cache. Everything else (refills, large and huge blocks, sampled blocks,
//! threads that are not set up) is on the slow paths below it, reached by tail calls.

use super::sampled::{alloc_huge_sampled, alloc_sampled};
use crate::addr::segment::USABLE_PAGES;
use crate::base::size_class::{
    class_of, is_small, CLASSES, LARGE_MAX, NUM_CACHED, NUM_SMALL, QUANTUM, SMALL_MAX,
};
use crate::platform::os::{self, PAGE_SIZE};
use crate::pool::arena;
use crate::pool::huge;
use crate::process::init;
use crate::process::tick::count_event;
use crate::prof::backtrace;
use crate::thread;
use crate::thread::cache::{self, ThreadCache};
use core::ptr;
use core::sync::atomic::Ordering::Relaxed;

/// Allocates at least `size` bytes aligned to 16. Null when out of memory.
#[inline(always)]
pub fn malloc(size: usize) -> *mut u8 {
    let p = malloc_fast(size);
    if !p.is_null() {
        return p;
    }
    alloc_slow(size, QUANTUM, false, backtrace::current_sp())
}

/// [`malloc`]'s fast path alone: a small block popped from the thread cache, or null when the
/// slow path ([`malloc_slow`]) must run. For entry points that want the slow path as a tail call.
#[inline(always)]
pub fn malloc_fast(size: usize) -> *mut u8 {
    if size <= SMALL_MAX {
        let tc = thread::cache();
        if !tc.is_null() {
            let class = class_of(size);
            // SAFETY: a non-null cache belongs to the calling thread alone.
            unsafe {
                let tc = &mut *tc;
                // Sampling counts requested bytes (see `sampler`).
                let left = tc.bytes_until_event - size as i64;
                // `class_of` of a small size is a small class: in bounds of the bins.
                let bin = tc.bins.get_unchecked(class);
                let top = bin.top.load(Relaxed);
                if left >= 0 && top != bin.base() {
                    tc.bytes_until_event = left;
                    tc.last_class = class;
                    let top = top.sub(1);
                    bin.top.store(top, Relaxed);
                    bin.requests.store(bin.requests.load(Relaxed) + 1, Relaxed);
                    let p = *top;
                    tc.last_block = p;
                    // Clear the free key so that freeing an untouched block stays fast.
                    p.cast::<u64>().write(0);
                    return p;
                }
            }
        }
    }
    ptr::null_mut()
}

/// [`malloc`]'s slow path: everything [`malloc_fast`] does not serve. `entry_sp` is the public
/// entry point's stack pointer (see `backtrace`). Null when out of memory.
#[inline(always)]
pub fn malloc_slow(size: usize, entry_sp: usize) -> *mut u8 {
    alloc_slow(size, QUANTUM, false, entry_sp)
}

/// Allocates at least `size` zeroed bytes aligned to 16: a small block from the thread cache
/// ([`malloc_fast`]) cleared, anything else from the slow path, where fresh pages from the
/// kernel are not zeroed again. Null when out of memory.
#[inline(always)]
pub fn malloc_zeroed(size: usize) -> *mut u8 {
    alloc_aligned(QUANTUM, size, true)
}

/// The allocation slow path, for blocks aligned to `align` (16, or for a small size a power of
/// two up to a page that divides `size`, which its class's blocks are aligned to). `entry_sp` is
/// the stack pointer of the public entry point, so a sampled stack starts at its caller.
#[inline(never)]
pub(super) fn alloc_slow(size: usize, align: usize, zero: bool, entry_sp: usize) -> *mut u8 {
    if size > LARGE_MAX {
        return alloc_huge(size, QUANTUM, zero, false, entry_sp);
    }
    let class = class_of(size);
    let tc = cache_or_init();
    if tc.is_null() {
        return fallback_alloc(class, zero, size);
    }
    // SAFETY: a non-null cache belongs to the calling thread.
    unsafe {
        if count_event(tc, size) {
            return alloc_sampled(tc, class, align, zero, size, entry_sp);
        }
        alloc_class(tc, class, zero, size)
    }
}

/// The calling thread's cache, starting the engine and then the thread up on first use. Null
/// when the thread must use the fallback path.
#[cold]
pub(super) fn cache_or_init() -> *mut ThreadCache {
    init::ensure_ready();
    thread::cache_or_init()
}

pub(super) fn alloc_huge(
    size: usize,
    align: usize,
    zero: bool,
    growth: bool,
    entry_sp: usize,
) -> *mut u8 {
    let tc = cache_or_init();
    // SAFETY: our own cache.
    let sample = !tc.is_null() && unsafe { count_event(tc, size) };
    if !sample {
        return huge::alloc(size, align, zero, growth);
    }
    alloc_huge_sampled(size, align, zero, growth, entry_sp)
}

pub(super) unsafe fn alloc_class(
    own: *mut ThreadCache,
    class: usize,
    zero: bool,
    size: usize,
) -> *mut u8 {
    // SAFETY: the caller's own cache, used by this thread only.
    let tc = unsafe { &*own };
    if class >= NUM_CACHED {
        return tc.arena.alloc_large(class, 1, zero);
    }
    let mut bin = &tc.bins[class];
    let mut n = bin.count();
    bin.requests.store(bin.requests.load(Relaxed) + 1, Relaxed);
    if n == 0 {
        if !is_small(class) {
            return tc.arena.alloc_large(class, 1, zero);
        }
        // SAFETY: our own cache.
        let want = unsafe { cache::refill_size(own, class) };
        // SAFETY: as above; read again, as the stack may have moved.
        bin = unsafe { &(*own).bins[class] };
        // SAFETY: the stack's storage holds `capacity` slots, all free (the stack is empty).
        let slots = unsafe { core::slice::from_raw_parts_mut(bin.base(), want) };
        n = tc
            .arena_for(class)
            .fill_small(class, tc.line_arena.lane(), slots, false);
        if n == 0 {
            return ptr::null_mut();
        }
        // SAFETY: our own cache.
        unsafe { cache::refilled(own, class, n) };
    }
    bin.set_count(n - 1);
    // SAFETY: slot `n - 1` of the stack holds a free block of `class`, now ours.
    let p = unsafe { *bin.base().add(n - 1) };
    // SAFETY: `p` is a free block of at least `size` (and 8) bytes.
    unsafe {
        if zero {
            ptr::write_bytes(p, 0, size.max(8));
        } else {
            p.cast::<u64>().write(0);
        }
    }
    p
}

/// Serves a thread that has no cache (setting up, exiting, or out of metadata) straight from
/// arena 0 under its locks, and the profiler from its own arena. Such allocations are not
/// sampled.
#[cold]
pub(super) fn fallback_alloc(class: usize, zero: bool, size: usize) -> *mut u8 {
    init::ensure_ready();
    let a = fallback_arena();
    if is_small(class) {
        let mut out = [ptr::null_mut(); 1];
        if a.fill_small(class, 0, &mut out, true) == 0 {
            return ptr::null_mut();
        }
        if zero {
            // SAFETY: a block of at least `size` bytes, ours.
            unsafe { ptr::write_bytes(out[0], 0, size) };
        }
        out[0]
    } else {
        a.alloc_large(class, 1, zero)
    }
}

/// The arena of an allocation made without a cache: the profiler's own when inside it.
fn fallback_arena() -> &'static arena::Arena {
    if thread::InProfiler::inside() {
        arena::profiler_arena()
    } else {
        arena::get(0)
    }
}

/// Allocates at least `size` bytes aligned to `align` (a power of two), zeroed if `zero`.
/// Null when out of memory.
///
/// A small size is served by [`aligned_fast`].
#[inline(always)]
pub fn alloc_aligned(align: usize, size: usize, zero: bool) -> *mut u8 {
    let p = aligned_fast(align, size);
    if !p.is_null() {
        if zero {
            // SAFETY: a block of at least `size` bytes, just handed out.
            unsafe { ptr::write_bytes(p, 0, size) };
        }
        return p;
    }
    aligned_slow(align, size, zero, backtrace::current_sp())
}

/// [`alloc_aligned`]'s fast path alone (not zeroed): a small size served by [`malloc_fast`] as
/// `aligned_slow` would serve it, rounded up to a multiple of `align` (up to a page), whose
/// class's blocks are aligned to it; or null when the slow path must run.
#[inline(always)]
pub fn aligned_fast(align: usize, size: usize) -> *mut u8 {
    let fast_size = if align <= QUANTUM {
        size
    } else if align <= PAGE_SIZE {
        // Too large (or no size at all) for `malloc_fast`, which then returns null.
        round_to(align, size).unwrap_or(usize::MAX)
    } else {
        usize::MAX
    };
    malloc_fast(fast_size)
}

/// `size` (at least 1) rounded up to a multiple of `align`, a power of two; none on overflow.
#[inline(always)]
fn round_to(align: usize, size: usize) -> Option<usize> {
    size.max(1).checked_add(align - 1).map(|v| v & !(align - 1))
}

/// [`alloc_aligned`] past its fast path, for entry points that read their own stack pointer
/// (`entry_sp`, see `prof::backtrace`). `align` must be a power of two.
#[inline(never)]
pub fn aligned_slow(align: usize, size: usize, zero: bool, entry_sp: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two());
    if align <= QUANTUM {
        return alloc_slow(size, QUANTUM, zero, entry_sp);
    }
    let Some(rounded) = round_to(align, size) else {
        return ptr::null_mut();
    };
    // Small classes whose size is a multiple of `align` have aligned objects (size_class docs),
    // sampled or not.
    if rounded <= SMALL_MAX && align <= PAGE_SIZE {
        return alloc_slow(rounded, align, zero, entry_sp);
    }
    if rounded <= LARGE_MAX {
        let class = class_of(rounded).max(NUM_SMALL);
        let align_pages = (align / PAGE_SIZE).max(1);
        if CLASSES[class].pages as usize + align_pages - 1 <= USABLE_PAGES {
            let tc = cache_or_init();
            if tc.is_null() {
                init::ensure_ready();
                return fallback_arena().alloc_large(class, align_pages, zero);
            }
            // SAFETY: our own cache.
            unsafe {
                if count_event(tc, size) {
                    return alloc_sampled(tc, class, align, zero, size, entry_sp);
                }
                return (*tc).arena.alloc_large(class, align_pages, zero);
            }
        }
    }
    alloc_huge(size.max(1), align, zero, false, entry_sp)
}

/// Returns the calling thread's cached blocks to their arenas.
pub fn flush_thread_cache() {
    let tc = thread::cache();
    if !tc.is_null() {
        // SAFETY: our own cache.
        unsafe { cache::flush_all(tc) };
    }
}

/// Gives memory back to the kernel: dirty pages past their decay time, or all of them if
/// `all`, and likewise cached huge blocks. Returns how many bytes it gave back.
pub fn purge(all: bool) -> usize {
    let pages = arena::purge_all_arenas(all);
    (pages << os::PAGE_SHIFT) + huge::purge(os::now_ms(), all)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::{alloc_aligned, flush_thread_cache, malloc, malloc_zeroed};
    use crate::addr::segment::{self, Location, Segment};
    use crate::api::free::free;
    use crate::base::size_class::{class_of, packed_capacity, CLASSES, NUM_CACHED};
    use crate::platform::stack_use::used_below;
    use crate::pool::arena;
    use crate::thread;

    /// Frees a dirtied block of `freed` bytes, then allocates `size` bytes with `alloc`, which
    /// must hand out that block (the stack's top), cleared if `zero`; frees it again.
    fn takes_the_dirty_top(freed: usize, size: usize, zero: bool, alloc: impl FnOnce() -> *mut u8) {
        let p = malloc(freed);
        // SAFETY: a live block of at least `freed` bytes, ours, freed once.
        unsafe {
            p.write_bytes(0xff, freed);
            free(p);
        }
        let q = alloc();
        assert_eq!(q, p, "{size} B: not the block freed last");
        // SAFETY: a live block of at least `size` bytes.
        let bytes = unsafe { core::slice::from_raw_parts(q, size) };
        assert!(
            !zero || bytes.iter().all(|&b| b == 0),
            "{size} B: not cleared"
        );
        // SAFETY: as above.
        unsafe { free(q) };
    }

    /// A zeroed allocation takes the thread cache's top block, as `malloc` would, and clears
    /// the bytes a freed block left behind.
    #[test]
    fn a_zeroed_block_from_the_cache_reads_zero() {
        // No other test may switch sampling on meanwhile: a sampled block is not the top one.
        let _options = crate::base::config::hold_options();
        std::thread::spawn(|| {
            for size in [8, 100, 1000, 5000] {
                takes_the_dirty_top(size, size, true, || malloc_zeroed(size));
            }
        })
        .join()
        .unwrap();
    }

    /// An aligned allocation of a small size takes the top block of the class `aligned_slow`
    /// would use, aligned, and zeroed if asked.
    #[test]
    fn a_small_aligned_block_comes_from_the_cache() {
        // As above: no sampling meanwhile.
        let _options = crate::base::config::hold_options();
        std::thread::spawn(|| {
            let cases = [
                (8, 24),
                (16, 100),
                (32, 40),
                (64, 64),
                (64, 200),
                (256, 300),
            ];
            for (align, size) in cases {
                let rounded = usize::next_multiple_of(size, align.max(16));
                for zero in [false, true] {
                    takes_the_dirty_top(rounded, size, zero, || {
                        let q = alloc_aligned(align, size, zero);
                        assert_eq!(q as usize % align, 0, "{align}/{size}: misaligned");
                        q
                    });
                }
            }
        })
        .join()
        .unwrap();
    }

    /// A new thread's stacks start small and packed side by side, so the classes it uses
    /// share a page; a stack that runs dry a second time moves to its standard stack, packed
    /// too, and one that keeps overflowing moves to a region of its own and grows there,
    /// keeping its blocks.
    #[test]
    fn stacks_start_packed_and_move_out_when_they_grow() {
        std::thread::spawn(|| {
            // SAFETY: a live block of ours, freed once; it sets up this thread's cache.
            unsafe { free(malloc(16)) };
            let tc = thread::cache();
            assert!(!tc.is_null());
            // SAFETY: this thread's own cache; only it changes the stacks.
            let base = |c: usize| unsafe { (*tc).bins[c].base() as usize };
            for c in 1..NUM_CACHED {
                let previous = packed_capacity(c - 1) * size_of::<usize>();
                assert_eq!(
                    base(c),
                    base(c - 1) + previous,
                    "class {c}'s stack is not packed"
                );
            }
            let class = class_of(16);
            let packed = base(class);
            // SAFETY: as above.
            let seen = || unsafe { ((*tc).cached_seen(class), (*tc).bins[class].count()) };
            let (s, n) = seen();
            assert!(n > 0 && s == n, "statistics see {s} of {n} blocks");
            // SAFETY: as above.
            let capacity = || unsafe { (*tc).bins[class].capacity() };
            assert_eq!(capacity(), packed_capacity(class));
            // Its first refill filled it: as many blocks as it holds come from it, and it
            // stays where it is, on the cache's first page.
            let mut held: Vec<*mut u8> = (0..capacity()).map(|_| malloc(16)).collect();
            assert_eq!(
                (base(class), capacity()),
                (packed, packed_capacity(class)),
                "the small stack moved out before it ran dry twice"
            );
            // As many again, none freed: it runs dry a second time and moves to its standard
            // stack, packed with the next class's.
            held.extend((0..capacity()).map(|_| malloc(16)));
            let standard = CLASSES[class].cache_capacity as usize;
            assert!(standard > packed_capacity(class));
            assert_eq!(capacity(), standard, "the stack did not move out");
            assert_ne!(
                base(class),
                packed,
                "the stack did not leave the small ones"
            );
            let next = class_of(32);
            assert_eq!(next, class + 1);
            let next_held: Vec<*mut u8> =
                (0..2 * packed_capacity(next)).map(|_| malloc(32)).collect();
            assert_eq!(
                base(next),
                base(class) + standard * size_of::<usize>(),
                "standard stacks are not packed"
            );
            // SAFETY: live blocks of ours, each freed once.
            held.iter()
                .chain(&next_held)
                .for_each(|&p| unsafe { free(p) });
            let first = capacity();
            // Batches far larger than the stack: it grows, as far as the budget allows.
            for _ in 0..4 {
                let blocks: Vec<*mut u8> = (0..4 * first).map(|_| malloc(16)).collect();
                // SAFETY: live blocks of ours, each freed once.
                blocks.iter().for_each(|&p| unsafe { free(p) });
            }
            assert!(capacity() > first, "the stack did not grow");
            assert_ne!(base(class), packed, "the grown stack did not move");
            // SAFETY: as above.
            let count = unsafe { (*tc).bins[class].count() };
            assert!(count > first, "{count} blocks kept");
            assert_eq!(seen(), (count, count), "statistics see the moved stack");
            // Every cached block is still a free block of the class: allocating them all
            // hands out distinct blocks.
            let mut again: Vec<*mut u8> = (0..count).map(|_| malloc(16)).collect();
            again.sort_unstable();
            again.dedup();
            assert_eq!(again.len(), count);
            // SAFETY: as above.
            again.iter().for_each(|&p| unsafe { free(p) });
        })
        .join()
        .unwrap();
    }

    /// A packed stack that overflows moves out at the class's standard capacity, whether or
    /// not its thread allocates the class: the frees of a consumer thread are taken a
    /// standard stack's worth at a time, as before stacks started small.
    #[test]
    fn a_packed_stack_that_overflows_moves_out_at_the_standard_capacity() {
        let size = 256;
        let class = class_of(size);
        let standard = CLASSES[class].cache_capacity as usize;
        let blocks: Vec<usize> = (0..standard).map(|_| malloc(size) as usize).collect();
        std::thread::spawn(move || {
            // SAFETY: blocks of the spawning thread's, each freed once, here.
            blocks.iter().for_each(|&p| unsafe { free(p as *mut u8) });
            let tc = thread::cache();
            // SAFETY: this thread's own cache.
            let (capacity, count) = unsafe {
                let bin = &(*tc).bins[class];
                (bin.capacity(), bin.count())
            };
            assert_eq!(
                capacity, standard,
                "a packed stack overflowed into a flush or growth"
            );
            assert_eq!(count, standard, "every freed block is cached");
        })
        .join()
        .unwrap();
    }

    /// The block freed last comes back first, whichever way it was freed, and a flush leaves
    /// no block cached: each goes back to its slab.
    #[test]
    fn the_block_freed_last_comes_back_first() {
        std::thread::spawn(|| {
            let size = 100;
            let class = class_of(size);
            // Another test's thread (of the same arena, allocating this class) may take a
            // block from its slab before it is looked at: a few tries, one of which must find
            // all three back.
            let all_back = (0..5).any(|_| {
                let blocks: Vec<*mut u8> = (0..3).map(|_| malloc(size)).collect();
                // SAFETY: live blocks of ours, each freed once (the middle one with its size).
                unsafe {
                    free(blocks[0]);
                    crate::api::free::free_sized(blocks[1], size);
                    free(blocks[2]);
                }
                let again: Vec<*mut u8> = (0..3).map(|_| malloc(size)).collect();
                assert_eq!(again, [blocks[2], blocks[1], blocks[0]]);
                // SAFETY: as above.
                again.iter().for_each(|&p| unsafe { free(p) });
                let tc = thread::cache();
                // SAFETY: this thread's own cache.
                let held = || unsafe { ((*tc).cached_seen(class), (*tc).bins[class].count()) };
                let (seen, cached) = held();
                assert!(
                    cached >= 3 && seen == cached,
                    "statistics see {seen} of {cached}"
                );
                flush_thread_cache();
                assert_eq!(held(), (0, 0), "a flush left blocks cached");
                blocks.iter().all(|&p| {
                    let Location::Span(d, _) = segment::locate(p as usize) else {
                        panic!("{p:?} is not in a segment");
                    };
                    // SAFETY: `d` is the slab holding `p`.
                    unsafe {
                        arena::of_segment(Segment::of(p as usize))
                            .slab_object_is_free(class, d, p as usize)
                    }
                })
            });
            assert!(all_back, "flushed blocks did not go back to their slabs");
        })
        .join()
        .unwrap();
    }

    /// Flushing a thread's cache, as its exit does, stays within 1 KiB of stack below the
    /// caller: an exit runs on the thread's own stack, often fresh memory, and each page it
    /// reaches below where the thread went is a page fault per thread.
    #[test]
    fn the_exit_flush_stays_shallow() {
        let used = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                for size in [16, 48, 100, 200, 700, 3000, 9000, 60_000] {
                    let blocks: Vec<*mut u8> = (0..200).map(|_| malloc(size)).collect();
                    // SAFETY: live blocks of ours, freed once.
                    blocks.iter().for_each(|&p| unsafe { free(p) });
                }
                used_below(flush_thread_cache).1
            })
            .unwrap()
            .join()
            .unwrap();
        eprintln!("flush_all: {used} B of stack below its caller");
        assert!(used <= 1024, "flush_all used {used} B of stack");
    }
}
