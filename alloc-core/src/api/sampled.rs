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
use crate::base::size_class::{is_small, NUM_CACHED};
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

/// Allocates a sampled block: captures the stack, serves the block, and records it. A block of
/// a cached class comes from the thread cache like any other. A small one stays in its slab,
/// recorded by address (`addr::sampled`, which marks its page so that its `free` is seen); a
/// large one keeps its record in its descriptor and loses its page's fast-path code while it
/// lives. Anything else (aligned to pages, an uncached class, or a small block when that table
/// is full) gets pages of its own whose descriptor keeps the record.
#[cold]
#[inline(never)]
pub(super) unsafe fn alloc_sampled(
    tc: *mut ThreadCache,
    class: usize,
    align_pages: usize,
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
    if class < NUM_CACHED && align_pages == 1 {
        // SAFETY: the caller's own cache.
        let p = unsafe { alloc_class(tc, class, zero, size) };
        if p.is_null() {
            return p;
        }
        let record = record(known, trace, bytes, weight, p);
        remember(tc, &record);
        if !is_small(class) {
            // SAFETY: `p` starts a live large block of ours, just allocated and unrecorded.
            unsafe { segment::mark_sampled(Segment::desc_at(p as usize), record) };
            announce_alloc(p, record);
            return p;
        }
        // SAFETY: `p` is a live block of a live slab, ours, not yet recorded; codes are class + 1.
        if unsafe { addr_sampled::insert(p, record, class as u8 + 1) } {
            announce_alloc(p, record);
            return p;
        }
        // The table is full: the block goes back unsampled, the sample takes pages of its own.
        forget_sample(record, p as usize);
        // SAFETY: `p` is ours, unsampled and unmarked.
        unsafe { super::free::free(p) };
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

/// A block of a slab is being freed whose page is marked (a sampled small block starts on it):
/// if `p` is that sampled block, the profiler forgets it (before the block can be reused, and
/// so before a dump could copy another owner's bytes) and `otel_memory:free` fires.
///
/// # Safety
/// `p` must be a validated live block of a slab, being freed by the caller.
#[cold]
#[inline(never)]
pub(super) unsafe fn slab_freeing(p: *mut u8) {
    // SAFETY: per the contract.
    if let Some(record) = unsafe { addr_sampled::take(p) } {
        usdt::free(p);
        forget_sample(record, p as usize);
    }
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
    use crate::addr::registry;
    use crate::addr::sampled as addr_sampled;
    use crate::addr::segment::{locate, Location, Segment, FLAG_SAMPLED};
    use crate::api::alloc::malloc;
    use crate::api::free::{free, free_on_marked_page, free_sized};
    use crate::base::config;
    use crate::base::size_class::{class_of, MARKED};
    use crate::platform::os::PAGE_SIZE;

    fn code_of_page(p: *mut u8) -> usize {
        // SAFETY: `p` is a live block in a segment of ours.
        unsafe { Segment::fast_class_at(p as usize) }
    }

    /// Sampled small blocks stay in their slabs: not page-aligned, found by address, their
    /// pages marked (no fast-path code) while they live; freed by `free` from another thread or
    /// by `free_sized`, they are forgotten and their pages get their codes back.
    #[test]
    fn sampled_small_blocks_stay_in_their_slabs() {
        let _options = crate::base::config::hold_options();
        let size = 200;
        let is_sampled = |p: usize| addr_sampled::record_of(p as *mut u8).is_some();
        // Other tests switch sampling too: set it again until enough blocks were sampled.
        let mut blocks = Vec::new();
        while blocks.iter().filter(|&&p| is_sampled(p)).count() < 100 && blocks.len() < 400_000 {
            config::set(b"prof", b"true").unwrap();
            config::set(b"lg_prof_sample", b"10").unwrap();
            blocks.extend((0..1000).map(|_| malloc(size) as usize));
        }
        config::set(b"prof", b"false").unwrap();
        config::set(b"lg_prof_sample", b"19").unwrap();
        let (sampled, unsampled): (Vec<usize>, Vec<usize>) =
            blocks.iter().partition(|&&p| is_sampled(p));
        assert!(sampled.len() >= 100, "{} sampled", sampled.len());
        assert!(sampled.iter().any(|p| p % PAGE_SIZE != 0));
        // The filter counts every sampled block, and turns most of the others away before
        // the lock (a few meet another live sample's count).
        assert!(sampled.iter().all(|&p| addr_sampled::counted(p as *mut u8)));
        let passed = unsampled
            .iter()
            .filter(|&&p| addr_sampled::counted(p as *mut u8))
            .count();
        assert!(
            passed * 10 < unsampled.len(),
            "{passed} of {} unsampled blocks pass the filter",
            unsampled.len()
        );
        for &p in &sampled {
            let record = addr_sampled::record_of(p as *mut u8).unwrap();
            assert_eq!(record.bytes, size);
            assert_eq!(
                code_of_page(p as *mut u8),
                MARKED | (class_of(size) + 1),
                "a sampled block's page is not marked"
            );
        }
        // A marked page's other blocks go to the thread cache from the marked code; a sampled
        // block does not.
        let marked_page = |p: usize| code_of_page(p as *mut u8) & MARKED != 0;
        let neighbours: Vec<usize> = unsampled
            .iter()
            .copied()
            .filter(|&p| marked_page(p) && !addr_sampled::counted(p as *mut u8))
            .take(8)
            .collect();
        assert!(
            !neighbours.is_empty(),
            "no unsampled block on a marked page"
        );
        // SAFETY: live blocks of ours, each freed once; the sampled one is not freed here.
        unsafe {
            let tc = crate::thread::cache();
            let marked_free = |p: usize| {
                let (code, tag) = (code_of_page(p as *mut u8), registry::segment_tag(p));
                free_on_marked_page(p as *mut u8, code, tag, tc)
            };
            assert!(!marked_free(sampled[0]));
            for &p in &neighbours {
                assert!(marked_free(p), "{p:#x} took the checked path");
            }
        }
        let unsampled: Vec<usize> = unsampled
            .into_iter()
            .filter(|p| !neighbours.contains(p))
            .collect();
        // The sampled blocks go first, half from another thread, half by `free_sized`; the
        // others keep their slabs alive, so that each page's code can be checked.
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
        }
        for &p in &sampled {
            assert!(!is_sampled(p), "{p:#x} still recorded");
        }
        // Pages come back to their codes, unless another test's sample lives on one of them.
        // Tests run side by side: such a sample may go between the count and the look at the
        // live samples, so a few looks are allowed before a page counts as left marked.
        let marked = || {
            sampled
                .iter()
                .filter(|&&p| code_of_page(p as *mut u8) != class_of(size) + 1)
                .count()
        };
        let settled = (0..50).any(|_| {
            let ok = marked() <= addr_sampled::live().1;
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            ok
        });
        assert!(settled, "{} pages left marked", marked());
        // SAFETY: as above.
        unsafe {
            for &p in &unsampled {
                free(p as *mut u8);
            }
        }
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
        let _options = crate::base::config::hold_options();
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
