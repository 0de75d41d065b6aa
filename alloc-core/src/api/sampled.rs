//! The sampled path: a sampled block's stack is captured, the block is served where its `free`
//! is seen (inside a larger block, or on pages of its own), and the profiler records it; at
//! its free the profiler forgets exactly that record. The only user of the profiler's table
//! on the allocation path, and the only place OpenTelemetry's probes (`usdt`) fire.

use super::alloc::alloc_class;
use super::free::{free, free_block};
use super::usdt;
use super::Op;
use crate::addr::sampled::{self as addr_sampled, InnerSample};
use crate::addr::segment::{self, SampleRecord, SpanDesc};
use crate::base::config;
use crate::base::size_class::{class_of, is_small, CLASSES, NUM_CACHED, QUANTUM};
use crate::platform::os::PAGE_SIZE;
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

/// Allocates a sampled block of `size` bytes (class `class`) aligned to `align` (a power of two,
/// at least 16): captures the stack, serves the block, and records it. A block of a cached
/// class is placed at least `addr::sampled::HEADER` bytes into a block of a larger cached class,
/// taken from the thread cache like any other (see [`outer_class`]), with its record in the
/// header below it: the address the program gets then starts no block of its span, so its
/// `free` leaves the fast path and finds the header, and no page's fast-path code changes.
/// For a small block (whose larger block is always of another class), a block of its own class
/// is taken too and held (the stand-in), to be freed with it: the thread caches of the sampled
/// class then see the same takes and frees as without the sample. Without it, each sample
/// shifted the counts at which a producer's refills and its consumer's flushes fall, and the
/// objects a bin's transfer array passes on stopped coming a slab page at a time (a
/// producer/consumer pair of 64-byte objects in batches of 4,096 ran 1.2x slower with a sample
/// every 7,000 objects).
/// Anything else (aligned to a page or more, or too large for a cached class) gets pages of its
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
    let memo = unsafe { (*tc).trace_memo() };
    let (_inside, trace, recalled) = enter_and_capture(&mut frames, entry_sp, Some(memo));
    // The stack's entry, when the memo gave back the frames of the last sample (entries are
    // never freed).
    let known = if recalled {
        // SAFETY: as above.
        unsafe { (*tc).trace_memo().noted() as *mut StackEntry }
    } else {
        ptr::null_mut()
    };
    let weight = sampler::weight(size, config::lg_prof_sample());
    let bytes = size.max(1);
    if let Some((outer, offset)) = outer_class(class, size, align) {
        // The stand-in keeps the sampled class's blocks flowing as if unsampled. Large classes
        // have no transfer arrays, and a stand-in there would hold a large block a sample.
        let stand_in = if is_small(class) {
            // SAFETY: the caller's own cache.
            let b = unsafe { alloc_class(tc, class, false, size) };
            if b.is_null() {
                return b;
            }
            b
        } else {
            ptr::null_mut()
        };
        // SAFETY: the caller's own cache.
        let base = unsafe { alloc_class(tc, outer, zero, size + offset) };
        if base.is_null() {
            if !stand_in.is_null() {
                // SAFETY: the block we just took, never handed out.
                unsafe { free(stand_in) };
            }
            return base;
        }
        // In bounds: blocks of `outer` hold `size + offset` bytes.
        let p = base.wrapping_add(offset);
        let record = record(known, trace, bytes, weight, p);
        recorded(tc, &record);
        // SAFETY: `p` lies `offset` (at least HEADER, a multiple of 16) bytes into the block
        // `base`, ours and not handed out.
        unsafe { addr_sampled::write(p, InnerSample { stand_in, record }) };
        announce_alloc(p, record);
        return p;
    }
    let align_pages = (align / PAGE_SIZE).max(1);
    // SAFETY: the caller's own cache.
    let (p, d) = unsafe { (*tc).arena.alloc_sampled(class, align_pages, zero) };
    if p.is_null() {
        return p;
    }
    let record = record(known, trace, bytes, weight, p);
    recorded(tc, &record);
    // SAFETY: `d` heads the block we just allocated; its record is ours to set.
    unsafe { (*d).set_sample(record) };
    announce_alloc(p, record);
    p
}

/// Where a sampled block of `size` bytes (of class `class`) aligned to `align` goes inside a
/// larger block: the cached class and the offset.
/// The offset is [`addr_sampled::HEADER`] rounded up to `align`. The class is the smallest whose
/// blocks hold `size + offset` bytes and start at multiples of `align`, and, for a small block,
/// above `class`, because `free_sized` trusts a page whose code is the size's class. The block
/// must start on its large block's first page, the only one besides the last that names the
/// span (`page_heap`'s boundary tags; a slab's pages all do).
/// None when no cached class fits (the block then gets pages of its own).
fn outer_class(class: usize, size: usize, align: usize) -> Option<(usize, usize)> {
    let offset = addr_sampled::HEADER.next_multiple_of(align.max(QUANTUM));
    let want = size.checked_add(offset)?;
    if offset > PAGE_SIZE || want > CLASSES[NUM_CACHED - 1].size as usize {
        return None;
    }
    let mut outer = class_of(want);
    if is_small(class) {
        outer = outer.max(class + 1);
    }
    // Slabs and page runs start on pages, so blocks of a size that `align` divides are aligned.
    while outer < NUM_CACHED && !(CLASSES[outer].size as usize).is_multiple_of(align) {
        outer += 1;
    }
    (outer < NUM_CACHED && (is_small(outer) || offset < PAGE_SIZE)).then_some((outer, offset))
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
            sampler::weight(size, config::lg_prof_sample()),
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

/// What thread cache `tc` keeps once a sample is recorded as `record`: its stack entry in the
/// memo, which holds the frames it was recorded from, for the next sample from the same stack;
/// and the next sample point's draw, made now that the sample's locked instructions are behind
/// (see `Schedule::prepare_draw`).
fn recorded(tc: *mut ThreadCache, record: &SampleRecord) {
    // SAFETY: the caller's own cache (see `alloc_sampled`).
    unsafe {
        (*tc).trace_memo().note(record.stack as usize);
        (*tc).schedule.prepare_draw();
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

/// Frees sampled block `p`, which has pages of its own (span `d`): the profiler forgets it
/// (under its table lock, so a dump copying the block's bytes is done with it), and the pages
/// go back to their arena.
#[cold]
#[inline(never)]
pub(super) unsafe fn free_sampled(p: *mut u8, d: *mut SpanDesc) {
    usdt::free(p);
    // SAFETY: `d` heads the live sampled block `p` whose descriptor holds its record.
    unsafe {
        forget_sample((*d).sample(), p as usize);
        arena::of_segment(segment::segment_of_desc(d)).free_sampled(d);
    }
}

/// Frees sampled block `p`, served `offset` bytes into a block of `class` of span `d` (see
/// [`alloc_sampled`]), whose header held `sample` (taken): the profiler forgets it, and that
/// block and the stand-in are freed like any other.
///
/// # Safety
/// `p` must be a sampled block whose header the caller took, `offset` bytes into a live block
/// of `class` of span `d`, freed by the caller.
#[cold]
#[inline(never)]
pub(super) unsafe fn free_inner(
    p: *mut u8,
    d: *mut SpanDesc,
    class: usize,
    offset: usize,
    sample: InnerSample,
    op: Op,
) {
    usdt::free(p);
    forget_sample(sample.record, p as usize);
    // SAFETY: per the contract, the block around `p` is live and ours to free; the stand-in
    // was taken with it and is held by nothing else.
    unsafe {
        free_block(p.wrapping_sub(offset), d, class, op);
        if !sample.stand_in.is_null() {
            free(sample.stand_in);
        }
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

/// The record of `p`, a live block of ours, if it is a sampled block inside a larger one.
#[cfg(test)]
pub(crate) fn inner_record(p: *mut u8) -> Option<SampleRecord> {
    match super::free::validate(p, Op::UsableSize) {
        super::free::Block::Inner(_, _, _, sample) => Some(sample.record),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::inner_record;
    use crate::addr::registry;
    use crate::addr::sampled as addr_sampled;
    use crate::addr::segment::{fast_class_at, locate, Location};
    use crate::api::alloc::{alloc_aligned, malloc};
    use crate::api::free::{free, free_sized, usable_size};
    use crate::api::realloc::realloc;
    use crate::base::config;
    use crate::base::size_class::{class_of, CLASSES};
    use crate::span::slab;

    /// The class + 1 that `p`'s fast-path code names (in a slab or a mini slab), or 0.
    fn code_of_page(p: usize) -> usize {
        // SAFETY: `p` is a live block in a segment of ours.
        unsafe { fast_class_at(p) }
    }

    /// The span class holding `p`, and whether `p` starts one of its blocks.
    fn where_is(p: usize) -> (usize, bool) {
        let Location::Span(d, start) = locate(p) else {
            panic!("{p:#x} is not in a segment")
        };
        // SAFETY: `p` is a live block of ours; its span's descriptor is live.
        unsafe {
            let class = (*d).class as usize;
            let starts = if (*d).kind == crate::addr::segment::kind::SLAB {
                slab::starts_object(d, p - start)
            } else {
                CLASSES[class].starts_block(p - start)
            };
            (class, starts)
        }
    }

    /// Allocates with `alloc` under one sample per KiB until `want` blocks were sampled (other
    /// tests switch sampling too: it is set again each round); the sampled and the others.
    fn sample(want: usize, alloc: impl Fn() -> *mut u8) -> (Vec<usize>, Vec<usize>) {
        let mut blocks = Vec::new();
        let is_sampled = |p: usize| inner_record(p as *mut u8).is_some();
        while blocks.iter().filter(|&&p| is_sampled(p)).count() < want && blocks.len() < 400_000 {
            config::set(b"prof", b"true").unwrap();
            config::set(b"lg_prof_sample", b"10").unwrap();
            blocks.extend((0..1000).map(|_| alloc() as usize));
        }
        config::set(b"prof", b"false").unwrap();
        config::set(b"lg_prof_sample", b"19").unwrap();
        blocks.iter().partition(|&&p| is_sampled(p))
    }

    /// Sampled blocks of cached classes lie inside blocks of a larger class and start none:
    /// their pages keep their codes (sampling writes no code), `free` finds their records by
    /// address, from another thread or by `free_sized`, and their blocks are free again after.
    #[test]
    fn sampled_blocks_lie_inside_larger_blocks() {
        let _options = config::hold_options();
        let size = 200;
        let (sampled, unsampled) = sample(100, || malloc(size));
        assert!(sampled.len() >= 100, "{} sampled", sampled.len());
        for &p in &sampled {
            let record = inner_record(p as *mut u8).unwrap();
            assert_eq!(record.bytes, size);
            assert_eq!(p % 16, 0);
            let (class, starts) = where_is(p);
            assert!(!starts, "{p:#x} starts a block of its span");
            assert!(class > class_of(size), "{p:#x} in class {class}");
            assert_eq!(code_of_page(p), class + 1, "{p:#x}'s page lost its code");
            // SAFETY: a live block of ours.
            assert!(unsafe { usable_size(p as *mut u8) } >= size);
        }
        for &p in &unsampled {
            assert_eq!(where_is(p), (class_of(size), true));
        }
        // Half are freed from another thread, half by `free_sized`.
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
            for &p in &unsampled {
                free(p as *mut u8);
            }
        }
        for &p in &sampled {
            assert!(!still_recorded(p), "{p:#x} still recorded");
        }
    }

    /// Whether freed block `p` still has a valid header (its segment may be gone).
    fn still_recorded(p: usize) -> bool {
        // SAFETY: a segment's memory stays readable while it is mapped; `p` was at least
        // HEADER bytes into a block, 16-aligned.
        registry::is_segment(p) && unsafe { addr_sampled::sample_of(p as *mut u8) }.is_some()
    }

    /// A sampled block asked for at an alignment has it, inside its larger block (up to a page
    /// into a slab, less than a page into a page run).
    #[test]
    fn sampled_aligned_blocks_keep_their_alignment() {
        let _options = config::hold_options();
        for (align, size) in [
            (32, 100),
            (64, 200),
            (256, 700),
            (4096, 5000),
            (2048, 30_000),
        ] {
            let (sampled, unsampled) = sample(4, || alloc_aligned(align, size, false));
            assert!(!sampled.is_empty(), "align {align}: none sampled");
            for &p in sampled.iter().chain(&unsampled) {
                assert_eq!(p % align, 0, "align {align}, size {size}: {p:#x}");
                // SAFETY: a live block of ours.
                let usable = unsafe { usable_size(p as *mut u8) };
                assert!(
                    usable >= size,
                    "align {align}, size {size}: {p:#x} {usable} {:?} {}",
                    where_is(p),
                    sampled.contains(&p)
                );
            }
            for &p in &sampled {
                assert!(!where_is(p).1, "{p:#x} starts a block of its span");
            }
            // SAFETY: live blocks of ours, each freed once.
            unsafe {
                sampled
                    .iter()
                    .chain(&unsampled)
                    .for_each(|&p| free(p as *mut u8))
            };
        }
    }

    /// `realloc` of a sampled block keeps it in place while it fits, recorded; past its usable
    /// size it moves with its bytes, and the record goes with the old address.
    #[test]
    fn a_sampled_block_stays_while_it_fits_and_moves_with_its_bytes() {
        let _options = config::hold_options();
        let (sampled, unsampled) = sample(8, || malloc(300));
        // SAFETY: live blocks of ours, each freed once (by `realloc` or `free`).
        unsafe {
            for &p in &sampled {
                let p = p as *mut u8;
                (0..300).for_each(|i| *p.add(i) = i as u8);
                let usable = usable_size(p);
                assert_eq!(
                    realloc(p, usable),
                    p,
                    "a sampled block moved though it fits"
                );
                assert!(still_recorded(p as usize));
                let q = realloc(p, usable + 1);
                assert_ne!(q, p, "a sampled block grew past its usable size in place");
                assert!((0..300).all(|i| *q.add(i) == i as u8), "bytes lost");
                assert!(!still_recorded(p as usize));
                free(q);
            }
            unsampled.iter().for_each(|&p| free(p as *mut u8));
        }
    }

    /// A sampled small block takes the block of its own class that an unsampled `malloc` would
    /// have taken (its stand-in, the top of the thread cache's stack), and its `free` gives that
    /// one back: the class's stack sees the same takes and frees as without the sample.
    #[test]
    fn a_sampled_small_block_takes_and_gives_back_a_block_of_its_class() {
        let _options = config::hold_options();
        let size = 64;
        std::thread::spawn(move || {
            let class = class_of(size);
            // SAFETY: this thread's own cache, set up by the first `malloc` below.
            let bin = || unsafe { &(*crate::thread::cache()).bins[class] };
            // SAFETY: the stack's first `count` slots hold cached blocks.
            let top = || unsafe { *bin().base().add(bin().count() - 1) };
            let warm: Vec<*mut u8> = (0..8).map(|_| malloc(size)).collect();
            // SAFETY: live blocks of ours, each freed once.
            unsafe { warm.iter().for_each(|&p| free(p)) };
            let mut tries = 0;
            let (p, stand_in) = loop {
                // As in the test above: sampling is set again now and then.
                if tries % 32 == 0 {
                    config::set(b"prof", b"true").unwrap();
                    config::set(b"lg_prof_sample", b"10").unwrap();
                }
                tries += 1;
                let (count, expected) = (bin().count(), top());
                let p = malloc(size);
                assert_eq!(
                    bin().count(),
                    count - 1,
                    "a malloc took other than one block"
                );
                if inner_record(p).is_some() {
                    break (p, expected);
                }
                // SAFETY: as above.
                unsafe { free(p) };
            };
            config::set(b"prof", b"false").unwrap();
            config::set(b"lg_prof_sample", b"19").unwrap();
            // SAFETY: a live sampled block inside a larger one.
            let sample = unsafe { addr_sampled::sample_of(p) }.unwrap();
            assert_eq!(
                sample.stand_in, stand_in,
                "the stand-in is not the stack's top"
            );
            assert_ne!(where_is(p as usize).0, class);
            let count = bin().count();
            // SAFETY: as above.
            unsafe { free(p) };
            assert_eq!(bin().count(), count + 1);
            assert_eq!(top(), stand_in, "the stand-in did not go back to the stack");
        })
        .join()
        .unwrap();
    }

    /// A sampled large block of a cached class lies inside a block from the thread cache, its
    /// page keeps its code, and its free gives that block back to the thread cache, as an
    /// unsampled block's, a buffer `realloc` built up too (moved on by `realloc`, or the one
    /// the thread's last growing `realloc` returned): the next buffer built up looks for it
    /// there (`thread::cache::take_at_least`).
    #[test]
    fn sampled_large_blocks_come_from_and_go_back_to_the_thread_cache() {
        let _options = config::hold_options();
        let size = 100_000;
        std::thread::spawn(move || {
            // Blocks in this thread's cache, the last freed on top.
            let warm: Vec<*mut u8> = (0..4).map(|_| malloc(size)).collect();
            // SAFETY: live blocks of ours, freed once.
            unsafe { warm.iter().for_each(|&p| free(p)) };
            // A sampled block, and the cache's top block before it was taken.
            let mut top = warm[3];
            let mut sampled = || {
                let mut tries = 0;
                loop {
                    // Other tests switch sampling too: set it again now and then (each
                    // setting draws the next sample point anew).
                    if tries % 32 == 0 {
                        config::set(b"prof", b"true").unwrap();
                        config::set(b"lg_prof_sample", b"10").unwrap();
                    }
                    tries += 1;
                    let p = malloc(size);
                    if inner_record(p).is_some() {
                        config::set(b"prof", b"false").unwrap();
                        config::set(b"lg_prof_sample", b"19").unwrap();
                        return (p, top);
                    }
                    top = p;
                    // SAFETY: as above.
                    unsafe { free(p) };
                }
            };
            let (p, top) = sampled();
            let base = p.wrapping_sub(addr_sampled::HEADER);
            assert_eq!(
                base, top,
                "the sampled block did not come from the thread cache"
            );
            assert_eq!(where_is(base as usize), (class_of(size), true));
            assert_eq!(code_of_page(base as usize), class_of(size) + 1);
            let tc = crate::thread::cache();
            // SAFETY: this thread's own cache.
            let cached = move || unsafe { (*tc).cached_seen(class_of(size)) };
            let before = cached();
            // SAFETY: as above.
            unsafe { free(p) };
            assert_eq!(
                cached(),
                before + 1,
                "the sampled block's block did not go back to the thread cache"
            );
            // Moved on by a growing `realloc` (to a larger class): to the thread cache.
            let (p, _) = sampled();
            let before = cached();
            // SAFETY: a live block of ours; the result replaces it.
            let q = unsafe { crate::api::realloc::realloc(p, 3 * size) };
            assert_ne!(q, p);
            assert_eq!(
                cached(),
                before + 1,
                "the moved buffer's block did not go back to the thread cache"
            );
            // The buffer the thread's last growing `realloc` returned: to the thread cache too.
            let (p, _) = sampled();
            // SAFETY: this thread's own cache; the note is only compared.
            unsafe { (*tc).last_grown = p };
            let before = cached();
            // SAFETY: as above.
            unsafe { free(p) };
            assert_eq!(
                cached(),
                before + 1,
                "the built-up buffer's block did not go back to the thread cache"
            );
            // SAFETY: as above.
            unsafe { free(q) };
        })
        .join()
        .unwrap();
    }
}
