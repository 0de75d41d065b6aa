//! The sampled path: a sampled block's stack is captured, the block is served from pages of
//! its own so that its `free` is seen, and the profiler records it; at its free the profiler
//! forgets exactly that record. The only user of the profiler's table on the allocation path,
//! and the only place OpenTelemetry's probes (`usdt`) fire.

use super::alloc::alloc_class;
use super::free::free_block;
use super::usdt;
use super::Op;
use crate::addr::sampled as addr_sampled;
use crate::addr::segment::{self, SampleRecord, Segment, SpanDesc};
use crate::base::size_class::{class_of, is_small, CLASSES, NUM_CACHED, QUANTUM};
use crate::platform::os::PAGE_SHIFT;
use crate::pool::arena;
use crate::pool::huge::{self, HugeHeader};
use crate::prof::backtrace::{self, TraceMemo};
use crate::prof::table::{self, StackEntry, MAX_FRAMES};
use crate::thread::cache::ThreadCache;
use crate::thread::sampler;
use crate::thread::InProfiler;
use core::mem::MaybeUninit;
use core::ptr;

/// Enters the profiler (no nested samples while the guard lives) and captures the stack above
/// `entry_sp` into `frames`. Inlined, the walk starts at the sampling function's own registers
/// (`FrameRegs::here`, taken while its frame stays live), so no frame of the capture is walked.
/// With `memo` (the thread's), a stack that did not change since the thread's last sample is
/// not walked again; the flag says so.
#[inline(always)]
fn enter_and_capture<'a>(
    frames: &'a mut [MaybeUninit<usize>; MAX_FRAMES],
    entry_sp: usize,
    memo: Option<&mut TraceMemo>,
) -> (InProfiler, &'a [usize], bool) {
    let start = backtrace::FrameRegs::here();
    let inside = InProfiler::enter();
    let (trace, recalled) = backtrace::capture(frames, entry_sp, start, memo);
    (inside, trace, recalled)
}

/// Allocates a sampled block aligned to `align`: captures the stack, serves the block, and
/// records it. A block of a cached class comes from the thread cache like any other. A small
/// one is a block of a larger class handed out `align` bytes (at least 16) past its start
/// (see [`shifted_class`]): its `free` fails the fast path's block-start check, and the
/// checked path finds its record by address (`addr::sampled`). A large one keeps its record in
/// its descriptor and loses its page's fast-path code while it lives. Anything else (aligned
/// to pages, an uncached class, or a small block when that table is full) gets pages of its
/// own whose descriptor keeps the record.
#[cold]
#[inline(never)]
pub(super) unsafe fn alloc_sampled(
    tc: *mut ThreadCache,
    class: usize,
    align: usize,
    zero: bool,
    size: usize,
    entry_sp: usize,
) -> *mut u8 {
    let mut frames = [MaybeUninit::uninit(); MAX_FRAMES];
    // SAFETY: the caller's own cache; the memo is used by this thread's samples only, and
    // samples do not nest (the profiler guard).
    let memo = unsafe { &mut (*tc).trace_memo };
    let (_inside, trace, recalled) = enter_and_capture(&mut frames, entry_sp, Some(memo));
    // The stack's entry, when the memo gave back the frames of the last sample (entries are
    // never freed).
    let known = if recalled {
        // SAFETY: as above.
        unsafe { (*tc).trace_memo.noted() as *mut StackEntry }
    } else {
        ptr::null_mut()
    };
    let weight = sampler::weight(size, sampler::mean_interval());
    let bytes = size.max(1);
    let align_pages = (align >> PAGE_SHIFT).max(1);
    if is_small(class) {
        let shift = align.max(QUANTUM);
        if let Some(outer) = shifted_class(class, size, shift) {
            // SAFETY: the caller's own cache.
            let block = unsafe { alloc_class(tc, outer, zero, size + shift) };
            if block.is_null() {
                return block;
            }
            let p = block.wrapping_add(shift);
            let record = record(known, trace, bytes, weight, p);
            remember(tc, &record);
            // SAFETY: `p` lies inside a live block of a live slab, ours and not recorded.
            if unsafe { addr_sampled::insert(p, record) } {
                announce_alloc(p, record);
                return p;
            }
            // The table is full: the block goes back, the sample takes pages of its own.
            forget_sample(record, p as usize);
            // SAFETY: `block` is ours, an ordinary block.
            unsafe { super::free::free(block) };
        }
    } else if class < NUM_CACHED && align_pages == 1 {
        // SAFETY: the caller's own cache.
        let p = unsafe { alloc_class(tc, class, zero, size) };
        if p.is_null() {
            return p;
        }
        let record = record(known, trace, bytes, weight, p);
        remember(tc, &record);
        // SAFETY: `p` starts a live large block of ours, just allocated and unrecorded.
        unsafe { segment::mark_sampled(Segment::desc_at(p as usize), record) };
        announce_alloc(p, record);
        return p;
    }
    // SAFETY: the caller's own cache.
    let (p, d) = unsafe { (*tc).arena.alloc_sampled(class, align_pages, zero) };
    if p.is_null() {
        return p;
    }
    let record = record(known, trace, bytes, weight, p);
    remember(tc, &record);
    // SAFETY: `d` heads the block we just allocated; its record is ours to set.
    unsafe { (*d).set_sample(record) };
    announce_alloc(p, record);
    p
}

/// The small class that holds a sampled block of `size` bytes of class `class` handed out
/// `shift` bytes past its start, if one does. It is larger than `class` even when `size +
/// shift` would fit `class`, so that `free_sized` with the block's size, which trusts a page
/// whose code is `class_of(size)`, never takes it for an ordinary block. A shift of the
/// request's alignment keeps the block aligned: a small class whose size is a multiple of an
/// alignment has blocks aligned to it (`size_class`), and `size` of an aligned request is a
/// multiple of it.
fn shifted_class(class: usize, size: usize, shift: usize) -> Option<usize> {
    let mut outer = class_of(size + shift);
    if outer == class {
        outer = class_of(CLASSES[class].size as usize + shift);
    }
    (is_small(outer) && outer < NUM_CACHED).then_some(outer)
}

/// Allocates a sampled huge block: captures the stack, maps the block, and records it in the
/// block's header.
#[cold]
#[inline(never)]
pub(super) fn alloc_huge_sampled(
    size: usize,
    align: usize,
    zero: bool,
    growth: bool,
    entry_sp: usize,
) -> *mut u8 {
    let mut frames = [MaybeUninit::uninit(); MAX_FRAMES];
    let (_inside, trace, _) = enter_and_capture(&mut frames, entry_sp, None);
    let p = huge::alloc(size, align, zero, growth);
    if !p.is_null() {
        let record = record(
            ptr::null_mut(),
            trace,
            size,
            sampler::weight(size, sampler::mean_interval()),
            p,
        );
        // SAFETY: a live huge block we just allocated.
        unsafe { huge::set_sample(p, record) };
        announce_alloc(p, record);
    }
    p
}

/// The profiler's record of a sample of `bytes` with `weight` and stack `trace`, block `p`;
/// `known` is the stack's entry if the caller has it already (null: search the table).
fn record(
    known: *mut StackEntry,
    trace: &[usize],
    bytes: usize,
    weight: f64,
    p: *mut u8,
) -> SampleRecord {
    SampleRecord {
        stack: table::record_alloc(known, trace, bytes, weight, p as usize).cast(),
        bytes,
        weight,
    }
}

/// Notes `record`'s stack entry in thread cache `tc`'s memo, which holds the frames it was
/// recorded from, for the next sample from the same stack.
fn remember(tc: *mut ThreadCache, record: &SampleRecord) {
    // SAFETY: the caller's own cache (see `alloc_sampled`).
    unsafe { (*tc).trace_memo.note(record.stack as usize) };
}

/// Frees the sampled small block handed out at `p`, inside block `block` of class `class`
/// (span `d`): the profiler forgets it (before the block can be reused, and so before a dump
/// could copy another owner's bytes), `otel_memory:free` fires, and the block goes back like
/// any other. False, having done nothing, when no sampled block was handed out at `p`.
///
/// # Safety
/// `p` must lie inside `block`, a live block of `class` in slab `d`, being freed by the caller.
#[cold]
#[inline(never)]
pub(super) unsafe fn free_shifted(
    p: *mut u8,
    block: *mut u8,
    d: *mut SpanDesc,
    class: usize,
    op: Op,
) -> bool {
    let Some(record) = addr_sampled::take(p) else {
        return false;
    };
    usdt::free(p);
    forget_sample(record, p as usize);
    // SAFETY: per the contract.
    unsafe { free_block(block, d, class, op) };
    true
}

/// Fires `otel_memory:alloc` for the sampled block `p` just recorded as `record`.
#[inline(always)]
pub(super) fn announce_alloc(p: *mut u8, record: SampleRecord) {
    usdt::alloc(
        p,
        record.bytes as u64,
        usdt::weight_bytes(record.bytes, record.weight),
    );
}

/// Frees sampled block `p` (span `d`): the profiler forgets it (under its table lock, so a dump
/// copying the block's bytes is done with it). A large block of a cached class then goes to
/// the thread cache like any other; pages of its own go back to their arena.
#[cold]
#[inline(never)]
pub(super) unsafe fn free_sampled(p: *mut u8, d: *mut SpanDesc, op: Op) {
    usdt::free(p);
    // SAFETY: `d` heads the live sampled block `p` whose descriptor holds its record.
    unsafe {
        forget_sample((*d).sample(), p as usize);
        let class = (*d).class as usize;
        if !is_small(class) && class < NUM_CACHED {
            segment::unmark_sampled(d);
            return free_block(p, d, class, op);
        }
        arena::of_segment(segment::segment_of_desc(d)).free_sampled(d);
    }
}

/// A huge block `p` (header `h`) is about to be freed. If it was sampled, while its address is
/// still ours: it leaves the peek set (a dump must not read the mapping once it is released or
/// cached, or another block's), and `otel_memory:free` fires (once `huge::free` has cached or
/// unmapped it, another thread may be handed the same address and announce it first). Costs an
/// unsampled huge free one load of the header that `huge::free` reads next.
///
/// # Safety
/// `h` must be the header the registry found for `p`.
#[inline(always)]
pub(super) unsafe fn huge_freeing(h: *mut u8, p: *mut u8, op: Op) {
    let h = h.cast::<HugeHeader>();
    // SAFETY: a registered header is a live mapping; `check` aborts unless `p` is its live block.
    unsafe {
        if is_sample((*h).sample) {
            huge::check(h, p, op.name());
            table::peek_forget(p as usize);
            usdt::free(p);
        }
    }
}

/// `realloc` of the validated huge block `p` (header `h`) to `size` bytes by `huge::realloc`
/// (in place or by `mremap`). A sampled block leaves the peek set while its mapping may move
/// and comes back at its new address (or the old one, if the move failed); if it moved, the
/// tracer is told that `p` is gone and the new block holds the sample (the profile keeps the
/// record as it was).
///
/// # Safety
/// `h` must be `p`'s validated header; on success `p` must not be used again.
pub(super) unsafe fn huge_realloc(h: *mut u8, p: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: per the contract, a live mapping.
    let record = unsafe { (*h.cast::<HugeHeader>()).sample };
    if !is_sample(record) {
        // SAFETY: per the contract.
        return unsafe { huge::realloc(h, p, size) };
    }
    let peeked = table::peek_forget(p as usize);
    // SAFETY: per the contract.
    let q = unsafe { huge::realloc(h, p, size) };
    if let Some((entry, bytes)) = peeked {
        let at = if q.is_null() { p } else { q };
        table::peek_restore(at as usize, entry, bytes);
    }
    if !q.is_null() && q != p {
        usdt::free(p);
        announce_alloc(q, record);
    }
    q
}

/// Whether `record` is a sampled block's (every sample weighs at least 1; none weighs 0).
#[inline(always)]
pub(super) fn is_sample(record: SampleRecord) -> bool {
    record.weight != 0.0
}

/// The profiler forgets a sampled block being freed (nothing if `record` is no sample), and
/// drops `block` from the peek set (0: already dropped, see `table::peek_forget`).
pub(super) fn forget_sample(record: SampleRecord, block: usize) {
    // SAFETY: a non-null stack is the entry `record_alloc` returned; entries live forever.
    unsafe { table::record_free(record.stack.cast(), record.bytes, record.weight, block) };
}

#[cfg(test)]
mod tests {
    use crate::addr::sampled as addr_sampled;
    use crate::addr::segment::{locate, Location, Segment, FLAG_SAMPLED};
    use crate::api::alloc::{alloc_aligned, malloc};
    use crate::api::free::{free, free_sized, usable_size};
    use crate::api::realloc::realloc;
    use crate::base::config;
    use crate::base::size_class::{class_of, CLASSES};

    fn code_of_page(p: *mut u8) -> usize {
        // SAFETY: `p` is a live block in a segment of ours.
        unsafe { Segment::fast_class_at(p as usize) }
    }

    /// Allocates blocks with `alloc` while sampling one in about `2^10` bytes, until `want` of
    /// them are sampled small blocks; returns them all, and sampling is back to its default.
    fn with_samples(want: usize, alloc: impl Fn() -> *mut u8) -> Vec<usize> {
        let is_sampled = |p: usize| addr_sampled::record_of(p as *mut u8).is_some();
        // Other tests switch sampling too: set it again until enough blocks were sampled.
        let mut blocks = Vec::new();
        while blocks.iter().filter(|&&p| is_sampled(p)).count() < want && blocks.len() < 400_000 {
            config::set(b"prof", b"true").unwrap();
            config::set(b"lg_prof_sample", b"10").unwrap();
            blocks.extend((0..1000).map(|_| alloc() as usize));
        }
        config::set(b"prof", b"false").unwrap();
        config::set(b"lg_prof_sample", b"19").unwrap();
        blocks
    }

    /// Where `p` lies: the class of its slab and its offset from the block it is in.
    fn placement(p: usize) -> (usize, usize) {
        let Location::Span(d, start) = locate(p) else {
            panic!("{p:#x} is not in a segment")
        };
        // SAFETY: `d` is the live span holding `p`.
        let class = unsafe { (*d).class } as usize;
        (class, (p - start) % CLASSES[class].size as usize)
    }

    /// A sampled small block lies 16 bytes into a block of a larger class and is found by
    /// address; its slab's fast-path codes are those of the class, so the other blocks of its
    /// pages are freed on the fast path. Freed by `free` from another thread or by
    /// `free_sized`, it is forgotten; `realloc` moves it with its contents.
    #[test]
    fn sampled_small_blocks_lie_inside_larger_blocks() {
        let size = 200;
        let blocks = with_samples(100, || malloc(size));
        let (sampled, unsampled): (Vec<usize>, Vec<usize>) = blocks
            .iter()
            .partition(|&&p| addr_sampled::record_of(p as *mut u8).is_some());
        assert!(sampled.len() >= 100, "{} sampled", sampled.len());
        for &p in &sampled {
            let record = addr_sampled::record_of(p as *mut u8).unwrap();
            assert_eq!(record.bytes, size);
            let (class, offset) = placement(p);
            assert!(
                class > class_of(size),
                "{p:#x} is in a slab of its own class"
            );
            assert_eq!(offset, 16, "{p:#x} is not 16 bytes into its block");
            assert_eq!(code_of_page(p as *mut u8), class + 1);
            // SAFETY: a live block of ours.
            assert!(unsafe { usable_size(p as *mut u8) } >= size);
        }
        // Sampling changed no page's code: every unsampled block's is its class's.
        for &p in &unsampled {
            assert_eq!(code_of_page(p as *mut u8), class_of(size) + 1);
        }
        // `realloc` moves a sampled block with its contents; the old address is forgotten.
        let (first, sampled) = sampled.split_first().unwrap();
        // SAFETY: a live block of ours, `size` bytes long, then reallocated once.
        let moved = unsafe {
            let p = *first as *mut u8;
            (0..size).for_each(|i| p.add(i).write(i as u8));
            let q = realloc(p, size);
            assert_ne!(q, p, "a sampled block stayed in place");
            assert!((0..size).all(|i| q.add(i).read() == i as u8));
            q as usize
        };
        assert!(addr_sampled::record_of(*first as *mut u8).is_none());
        // Half from another thread, half by `free_sized`.
        let (half, rest) = sampled.split_at(sampled.len() / 2);
        let rest = rest.to_vec();
        // SAFETY: live blocks of ours, each freed once, with the size they were allocated with.
        std::thread::spawn(move || unsafe {
            for &p in &rest {
                free(p as *mut u8);
            }
        })
        .join()
        .unwrap();
        // SAFETY: as above.
        unsafe {
            for &p in half {
                free_sized(p as *mut u8, size);
            }
            for &p in unsampled.iter().chain([&moved]) {
                free(p as *mut u8);
            }
        }
        for &p in sampled {
            assert!(
                addr_sampled::record_of(p as *mut u8).is_none(),
                "{p:#x} still recorded"
            );
        }
    }

    /// A sampled small block of an aligned request is handed out the alignment into a block
    /// of a larger class, so it keeps its alignment.
    #[test]
    fn sampled_aligned_small_blocks_keep_their_alignment() {
        let (align, size) = (64, 192);
        let blocks = with_samples(20, || alloc_aligned(align, size, false));
        let mut seen = 0;
        for &p in &blocks {
            assert_eq!(p % align, 0, "{p:#x} is not aligned");
            if addr_sampled::record_of(p as *mut u8).is_some() {
                let (class, offset) = placement(p);
                assert!(class > class_of(size));
                assert_eq!(offset, align);
                seen += 1;
            }
        }
        assert!(seen >= 20, "{seen} sampled");
        // SAFETY: live blocks of ours, each freed once.
        unsafe { blocks.iter().for_each(|&p| free(p as *mut u8)) };
    }

    /// The sample record of large block `p` if it is sampled, and its page's fast-path code.
    fn large_sample(p: *mut u8) -> (Option<usize>, usize) {
        let Location::Span(d, _) = locate(p as usize) else {
            panic!("not in a segment")
        };
        // SAFETY: `p` is a live block in a segment of ours; its descriptor is its own.
        unsafe {
            let sampled = ((*d).flags & FLAG_SAMPLED != 0).then(|| (*d).sample().bytes);
            (sampled, code_of_page(p))
        }
    }

    /// A sampled large block of a cached class is served from the thread cache like any other,
    /// keeps its record in its descriptor with its page's code cleared while it lives, and its
    /// free gives it back to the thread cache as an ordinary block.
    #[test]
    fn sampled_large_blocks_come_from_and_go_back_to_the_thread_cache() {
        let size = 100_000;
        std::thread::spawn(move || {
            // Blocks in this thread's cache, the last freed on top.
            let warm: Vec<*mut u8> = (0..4).map(|_| malloc(size)).collect();
            // SAFETY: live blocks of ours, freed once.
            unsafe { warm.iter().for_each(|&p| free(p)) };
            let mut top = warm[3];
            let mut tries = 0;
            let p = loop {
                // Other tests switch sampling too: set it again now and then (each setting
                // draws the next sample point anew).
                if tries % 32 == 0 {
                    config::set(b"prof", b"true").unwrap();
                    config::set(b"lg_prof_sample", b"10").unwrap();
                }
                tries += 1;
                let p = malloc(size);
                if large_sample(p).0.is_some() {
                    break p;
                }
                top = p;
                // SAFETY: as above.
                unsafe { free(p) };
            };
            config::set(b"prof", b"false").unwrap();
            config::set(b"lg_prof_sample", b"19").unwrap();
            assert_eq!(
                p, top,
                "the sampled block did not come from the thread cache"
            );
            assert_eq!(large_sample(p), (Some(size), 0));
            // SAFETY: as above.
            unsafe { free(p) };
            let q = malloc(size);
            assert_eq!(
                q, p,
                "the sampled block did not go back to the thread cache"
            );
            assert_eq!(large_sample(q), (None, class_of(size) + 1));
            // SAFETY: as above.
            unsafe { free(q) };
        })
        .join()
        .unwrap();
    }
}
