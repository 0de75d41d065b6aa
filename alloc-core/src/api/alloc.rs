//! The engine's entry points: allocate, free, resize, measure.
//!
//! The fast paths are here: `malloc` of a small size is a table lookup, a countdown, and a pop
//! from the thread cache; `free` of a block of a cached class is a segment-map load, the page's
//! fast-path code (its class), one multiplication that checks the pointer starts a block, and a
//! push. Everything else (refills, flushes, large and huge blocks, sampled blocks, threads that
//! are not set up, anything suspicious) is on the slow paths below them, reached by tail calls.
//!
//! Misuse is fatal: freeing a pointer that does not start a live block of ours aborts with one
//! line naming the function and the pointer.

use crate::addr::registry;
use crate::addr::segment::{
    self, kind, span_start, Location, SampleRecord, Segment, SpanDesc, FLAG_SAMPLED,
    PAGES_PER_SEGMENT, USABLE_PAGES,
};
use crate::base::size_class::{
    class_of, is_small, CLASSES, LARGE_MAX, NUM_CACHED, NUM_SMALL, QUANTUM, SMALL_MAX,
    STARTS_BY_CODE,
};
use crate::platform::os::{self, PAGE_SHIFT, PAGE_SIZE};
use crate::pool::arena;
use crate::pool::huge;
use crate::process::init;
use crate::prof::backtrace;
use crate::prof::table::{self, MAX_FRAMES};
use crate::thread::cache::{self, ThreadCache};
use crate::thread::sampler;
use crate::thread::{self, InProfiler};
use core::ptr;
use core::sync::atomic::Ordering::Relaxed;

/// Blocks that `realloc` grows to at least this size get a mapping of their own (see
/// `realloc_slow`): growing one is then `mremap`, not a copy. glibc grows blocks in place at
/// the top of its heap; this is how a realloc-heavy program keeps up with it.
const REALLOC_MAP_MIN: usize = 256 << 10;

/// The public function a pointer was handed to, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `free`.
    Free,
    /// `realloc`.
    Realloc,
    /// `malloc_usable_size`.
    UsableSize,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Free => "free",
            Op::Realloc => "realloc",
            Op::UsableSize => "malloc_usable_size",
        }
    }
}

#[cold]
#[inline(never)]
fn misuse(op: Op, what: &str, p: *mut u8) -> ! {
    os::Line::new()
        .str("sampalloc: ")
        .str(op.name())
        .str("(): ")
        .str(what)
        .str(" ")
        .hex(p as usize)
        .emit();
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// Allocates at least `size` bytes aligned to 16. Null when out of memory.
#[inline(always)]
pub fn malloc(size: usize) -> *mut u8 {
    let p = malloc_fast(size);
    if !p.is_null() {
        return p;
    }
    alloc_slow(size, false, backtrace::current_sp())
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
                if left >= 0 && top != bin.base {
                    tc.bytes_until_event = left;
                    let top = top.sub(1);
                    bin.top.store(top, Relaxed);
                    bin.requests.store(bin.requests.load(Relaxed) + 1, Relaxed);
                    let p = *top;
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
    alloc_slow(size, false, entry_sp)
}

/// Allocates at least `size` zeroed bytes aligned to 16. Fresh pages from the kernel are not
/// zeroed again. Null when out of memory.
#[inline(always)]
pub fn malloc_zeroed(size: usize) -> *mut u8 {
    alloc_slow(size, true, backtrace::current_sp())
}

/// The allocation slow path. `entry_sp` is the stack pointer of the public entry point, so a
/// sampled stack starts at its caller.
#[inline(never)]
fn alloc_slow(size: usize, zero: bool, entry_sp: usize) -> *mut u8 {
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
            return alloc_sampled(tc, class, 1, zero, size, entry_sp);
        }
        alloc_class(tc, class, zero, size)
    }
}

/// The calling thread's cache, starting the engine and then the thread up on first use. Null
/// when the thread must use the fallback path.
#[cold]
fn cache_or_init() -> *mut ThreadCache {
    init::ensure_ready();
    thread::cache_or_init()
}

fn alloc_huge(size: usize, align: usize, zero: bool, growth: bool, entry_sp: usize) -> *mut u8 {
    let tc = cache_or_init();
    // SAFETY: our own cache.
    let sample = !tc.is_null() && unsafe { count_event(tc, size) };
    if !sample {
        return huge::alloc(size, align, zero, growth);
    }
    let _inside = InProfiler::enter();
    let mut frames = [0usize; MAX_FRAMES];
    let depth = backtrace::capture(&mut frames, entry_sp);
    let p = huge::alloc(size, align, zero, growth);
    if !p.is_null() {
        let weight = sampler::weight(size, sampler::mean_interval());
        let stack = table::record_alloc(&frames[..depth], size, weight);
        let record = SampleRecord {
            stack: stack.cast(),
            bytes: size,
            weight,
        };
        // SAFETY: a live huge block we just allocated.
        unsafe { huge::set_sample(p, record) };
    }
    p
}

/// Counts `bytes` towards the next thread event and runs it when due. True if the allocation
/// being made is to be sampled.
#[inline(always)]
unsafe fn count_event(tc: *mut ThreadCache, bytes: usize) -> bool {
    // SAFETY: the caller's own cache.
    unsafe {
        // Clamped so that the countdown cannot overflow on an impossible request.
        (*tc).bytes_until_event -= bytes.min(1 << 60) as i64;
        (*tc).bytes_until_event < 0 && thread_event(tc)
    }
}

/// A thread event: a sample point was crossed, or a tick is due (periodic work: decay makes
/// progress in programs that never free large blocks; profile dumps are served).
#[cold]
#[inline(never)]
unsafe fn thread_event(tc: *mut ThreadCache) -> bool {
    // SAFETY: the caller's own cache and thread block.
    unsafe {
        let (due, countdown) = (*tc).schedule.on_event((*tc).bytes_until_event);
        (*tc).bytes_until_event = countdown;
        let in_profiler = (*thread::state()).in_profiler != 0;
        if due.tick {
            let now = os::now_ms();
            cache::gc(tc, now);
            arena::purge_due_arenas(now);
            huge::maybe_purge(now);
            if !in_profiler {
                crate::prof::trigger::on_tick(sampler::tick_bytes());
            }
        }
        due.sample && !in_profiler
    }
}

/// Allocates a sampled block: captures the stack, serves the block from pages of its own so
/// that its `free` is seen, and records it.
#[cold]
#[inline(never)]
unsafe fn alloc_sampled(
    tc: *mut ThreadCache,
    class: usize,
    align_pages: usize,
    zero: bool,
    size: usize,
    entry_sp: usize,
) -> *mut u8 {
    let _inside = InProfiler::enter();
    let mut frames = [0usize; MAX_FRAMES];
    let depth = backtrace::capture(&mut frames, entry_sp);
    // SAFETY: the caller's own cache.
    let (p, d) = unsafe { (*tc).arena.alloc_sampled(class, align_pages, zero) };
    if p.is_null() {
        return p;
    }
    let weight = sampler::weight(size, sampler::mean_interval());
    let bytes = size.max(1);
    let stack = table::record_alloc(&frames[..depth], bytes, weight);
    let record = SampleRecord {
        stack: stack.cast(),
        bytes,
        weight,
    };
    // SAFETY: `d` heads the block we just allocated; its record is ours to set.
    unsafe { (*d).set_sample(record) };
    p
}

/// Frees a sampled block: the profiler forgets it, then its pages go back.
#[cold]
#[inline(never)]
unsafe fn free_sampled(d: *mut SpanDesc) {
    // SAFETY: `d` heads a live sampled block whose descriptor holds its record.
    unsafe {
        forget_sample((*d).sample());
        arena::of_segment(segment::segment_of_desc(d)).free_sampled(d);
    }
}

/// The profiler forgets a sampled block being freed (nothing if `record` is no sample).
fn forget_sample(record: SampleRecord) {
    // SAFETY: a non-null stack is the entry `record_alloc` returned; entries live forever.
    unsafe { table::record_free(record.stack.cast(), record.bytes, record.weight) };
}

unsafe fn alloc_class(tc: *mut ThreadCache, class: usize, zero: bool, size: usize) -> *mut u8 {
    // SAFETY: the caller's own cache.
    unsafe {
        let arena = (*tc).arena;
        if class >= NUM_CACHED {
            return arena.alloc_large(class, 1, zero);
        }
        let bin = &(*tc).bins[class];
        let mut n = bin.count();
        bin.requests.store(bin.requests.load(Relaxed) + 1, Relaxed);
        if n == 0 {
            if !is_small(class) {
                return arena.alloc_large(class, 1, zero);
            }
            let want = (bin.capacity() / 2).max(1);
            let slots = core::slice::from_raw_parts_mut(bin.base, want);
            n = arena.fill_small(class, slots, false);
            if n == 0 {
                return ptr::null_mut();
            }
        }
        bin.set_count(n - 1);
        let p = *bin.base.add(n - 1);
        if zero {
            ptr::write_bytes(p, 0, size.max(8));
        } else {
            p.cast::<u64>().write(0);
        }
        p
    }
}

/// Serves a thread that has no cache (setting up, exiting, or out of metadata): straight from
/// arena 0 under its locks. Such allocations are not sampled.
#[cold]
fn fallback_alloc(class: usize, zero: bool, size: usize) -> *mut u8 {
    init::ensure_ready();
    let a = arena::get(0);
    if is_small(class) {
        let mut out = [ptr::null_mut(); 1];
        if a.fill_small(class, &mut out, true) == 0 {
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

/// Allocates the new home of a block that `realloc` is growing, placed so that it can keep
/// growing: large blocks get free pages after them, and blocks from `REALLOC_MAP_MIN` up
/// mappings of their own (reusing the largest cached one).
fn alloc_for_growth(size: usize, entry_sp: usize) -> *mut u8 {
    if size >= REALLOC_MAP_MIN {
        return alloc_huge(size, QUANTUM, false, true, entry_sp);
    }
    if size <= SMALL_MAX {
        return alloc_slow(size, false, entry_sp);
    }
    let class = class_of(size);
    let tc = cache_or_init();
    if tc.is_null() {
        return fallback_alloc(class, false, size);
    }
    // SAFETY: our own cache.
    unsafe {
        if count_event(tc, size) {
            return alloc_sampled(tc, class, 1, false, size, entry_sp);
        }
        let pages = CLASSES[class].pages as usize;
        (*tc).arena.alloc_large_with_room(class, 1, pages, false)
    }
}

/// Allocates at least `size` bytes aligned to `align` (a power of two), zeroed if `zero`.
/// Null when out of memory.
#[inline(always)]
pub fn alloc_aligned(align: usize, size: usize, zero: bool) -> *mut u8 {
    aligned_slow(align, size, zero, backtrace::current_sp())
}

#[inline(never)]
fn aligned_slow(align: usize, size: usize, zero: bool, entry_sp: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two());
    if align <= QUANTUM {
        return alloc_slow(size, zero, entry_sp);
    }
    let Some(rounded) = size.max(1).checked_add(align - 1).map(|v| v & !(align - 1)) else {
        return ptr::null_mut();
    };
    // Small classes whose size is a multiple of `align` have aligned objects (size_class docs);
    // sampled ones get pages of their own, aligned too.
    if rounded <= SMALL_MAX && align <= PAGE_SIZE {
        return alloc_slow(rounded, zero, entry_sp);
    }
    if rounded <= LARGE_MAX {
        let class = class_of(rounded).max(NUM_SMALL);
        let align_pages = (align / PAGE_SIZE).max(1);
        if CLASSES[class].pages as usize + align_pages - 1 <= USABLE_PAGES {
            let tc = cache_or_init();
            if tc.is_null() {
                init::ensure_ready();
                return arena::get(0).alloc_large(class, align_pages, zero);
            }
            // SAFETY: our own cache.
            unsafe {
                if count_event(tc, size) {
                    return alloc_sampled(tc, class, align_pages, zero, size, entry_sp);
                }
                return (*tc).arena.alloc_large(class, align_pages, zero);
            }
        }
    }
    alloc_huge(size.max(1), align, zero, false, entry_sp)
}

/// What `p` is, validated: aborts (naming `op`) unless `p` starts a live block of ours.
enum Block {
    Span(*mut SpanDesc, usize),
    Huge(*mut u8),
}

#[inline(always)]
fn validate(p: *mut u8, op: Op) -> Block {
    match segment::locate(p as usize) {
        Location::Span(d, start) => {
            // SAFETY: the segment map found a live segment; the descriptor is checked before use,
            // and a slab's class is always below NUM_CLASSES.
            unsafe {
                let k = (*d).kind;
                let ok = if k == kind::SLAB {
                    CLASSES
                        .get_unchecked((*d).class as usize)
                        .starts_block((p as usize).wrapping_sub(start))
                } else {
                    k == kind::LARGE && start == p as usize
                };
                if !ok {
                    bad_span_pointer(d, p, op);
                }
                Block::Span(d, (*d).class as usize)
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
/// the block's class is known too, so a small block that is not page-aligned goes straight to
/// the thread cache without the metadata lookup; anything else takes [`free`]'s path. (Sampled
/// blocks have pages of their own and so are page-aligned.) Blocks smaller than a cache line
/// from other arenas take [`free`]'s path, which may send them home.
///
/// # Safety
/// `p` must be a live block of this engine whose requested (or last reallocated) size was
/// `size`, freed once. Unlike [`free`], a wrong pointer is not detected.
#[inline(always)]
pub unsafe fn free_sized(p: *mut u8, size: usize) {
    if size <= SMALL_MAX && (p as usize) & (PAGE_SIZE - 1) != 0 {
        let tc = thread::cache();
        let class = class_of(size);
        // A block that may have to go home takes `free`.
        // SAFETY: a non-null cache is our own.
        let foreign = || {
            cache::may_send_home(class)
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
/// The fast path serves the common case, a block of a cached class in a segment, from the page's
/// fast-path code: the segment map says the chunk is a segment, the code gives the class, the
/// page's span start and the class's constants check that `p` starts a block, and the block goes
/// on the thread cache. The segment's address comes from `p` itself, so the loads of the code
/// and of the segment map run side by side. A block smaller than a cache line whose segment
/// belongs to another arena (the map byte is the arena's tag) takes [`free_foreign`], which may
/// send it home. Everything else (null, huge and sampled blocks, uncached classes, invalid
/// pointers, a full stack, a suspected double free, a thread without a cache) takes the checked
/// path. Both are tail calls, so the fast path saves no registers.
///
/// # Safety
/// As for [`free`].
#[inline(always)]
pub unsafe fn free_as(p: *mut u8, op: Op) {
    let tag = registry::segment_tag(p as usize);
    if tag != 0 {
        let tc = thread::cache();
        // SAFETY: `p` lies in a live segment.
        let class = unsafe { cached_block_class(p) };
        if let (Some((class, subline)), false) = (class, tc.is_null()) {
            // SAFETY: our own cache; `p` starts a live-or-cached block of cached `class`.
            unsafe {
                if (tag ^ (*tc).arena_tag) as u64 & subline != 0 {
                    return free_foreign(tc, p, class, tag, op);
                }
                let key = (*tc).free_key;
                if p.cast::<u64>().read() != key && (*tc).bins.get_unchecked(class).try_push(p) {
                    p.cast::<u64>().write(key);
                    return;
                }
            }
        }
    }
    // SAFETY: forwarded contract.
    unsafe { free_checked(p, op) }
}

/// The class of the block starting at `p`, a pointer into a live segment, if the page's
/// fast-path code says it is a block of a cached class and `p` is where one starts; with the
/// class's `subline` mask (see [`STARTS_BY_CODE`]).
///
/// # Safety
/// `p` must lie in a live segment.
#[inline(always)]
unsafe fn cached_block_class(p: *mut u8) -> Option<(usize, u64)> {
    let addr = p as usize;
    let seg = Segment::of(addr);
    let page = (addr >> PAGE_SHIFT) & (PAGES_PER_SEGMENT - 1);
    // SAFETY: `seg` is a live segment and `page` is in range; codes are at most NUM_CACHED.
    // A page without a code has a `page_head` too (any value): code 0 accepts no offset.
    unsafe {
        let code = Segment::fast_class_of(seg, page);
        let start = seg as usize + (Segment::head_of(seg, page) << PAGE_SHIFT);
        let entry = STARTS_BY_CODE.get_unchecked(code);
        entry
            .accepts(addr.wrapping_sub(start))
            .then(|| (code - 1, entry.subline))
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
        if p.cast::<u64>().read() != (*tc).free_key && cache::sends_home(class, arena::of_tag(tag))
        {
            return cache::push_remote(tc, class, p);
        }
        free_checked(p, op)
    }
}

/// `free` through the descriptors, with every check: the path for everything the fast path of
/// [`free_as`] does not take.
#[inline(never)]
unsafe fn free_checked(p: *mut u8, op: Op) {
    if p.is_null() {
        return;
    }
    match validate(p, op) {
        // SAFETY: validated as a live block of class `class` in span `d`.
        Block::Span(d, class) => unsafe {
            if (*d).flags & FLAG_SAMPLED != 0 {
                free_sampled(d);
            } else {
                free_block(p, d, class);
            }
        },
        // SAFETY: `h` is the registered header for `p`.
        Block::Huge(h) => forget_sample(unsafe { huge::free(h, p, op.name()) }),
    }
}

#[inline(always)]
unsafe fn free_block(p: *mut u8, d: *mut SpanDesc, class: usize) {
    let tc = thread::cache();
    if !tc.is_null() && class < NUM_CACHED {
        // SAFETY: the caller's own cache; `p` is a validated block of `class`.
        unsafe {
            let key = (*tc).free_key;
            if p.cast::<u64>().read() == key {
                cache::check_double_free(tc, class, d, p);
            }
            let owner = arena::of_segment(segment::segment_of_desc(d));
            if !ptr::eq(owner, (*tc).arena) && cache::sends_home(class, owner) {
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
    unsafe { free_block_slow(p, d, class) }
}

#[cold]
unsafe fn free_block_slow(p: *mut u8, d: *mut SpanDesc, class: usize) {
    let tc = cache_or_init();
    // SAFETY: `p` is a validated block of `class` in span `d`.
    unsafe {
        if !tc.is_null() && class < NUM_CACHED {
            return free_block(p, d, class);
        }
        let owner = arena::of_segment(Segment::of(p as usize));
        if is_small(class) {
            owner.put_small(class, &[p]);
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
        // SAFETY: `h` is the registered header for `p`.
        Block::Huge(h) => unsafe { huge::usable_size(h, p, "malloc_usable_size") },
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
    unsafe { realloc_slow(p, size, backtrace::current_sp()) }
}

#[inline(never)]
unsafe fn realloc_slow(p: *mut u8, size: usize, entry_sp: usize) -> *mut u8 {
    if p.is_null() {
        return alloc_slow(size, false, entry_sp);
    }
    let old_usable = match validate(p, Op::Realloc) {
        Block::Huge(h) => {
            // SAFETY: `h` is the registered header for `p`.
            unsafe { huge::check(h.cast(), p, "realloc") };
            if size >= REALLOC_MAP_MIN {
                // SAFETY: `h` is the validated header of `p`.
                return unsafe { huge::realloc(h, p, size) };
            }
            // SAFETY: as above.
            unsafe { huge::usable_size(h, p, "realloc") }
        }
        Block::Span(d, class) => {
            if size <= LARGE_MAX {
                let new_class = class_of(size);
                if new_class == class {
                    return p;
                }
                // SAFETY: `d` heads the live large block `p`; sampled blocks always move.
                if !is_small(class)
                    && !is_small(new_class)
                    && unsafe { (*d).flags } & FLAG_SAMPLED == 0
                    && unsafe {
                        arena::of_segment(Segment::of(p as usize)).resize_large(d, new_class)
                    }
                {
                    return p;
                }
            }
            CLASSES[class].size as usize
        }
    };
    // A block growing past REALLOC_MAP_MIN moves into a mapping of its own, so that its later
    // growth is mremap (page tables move, no copy) rather than a copy per size class.
    let q = if size > old_usable {
        alloc_for_growth(size, entry_sp)
    } else {
        alloc_slow(size, false, entry_sp)
    };
    if q.is_null() {
        return q;
    }
    // SAFETY: both blocks are live and at least the copied length long.
    unsafe {
        ptr::copy_nonoverlapping(p, q, old_usable.min(size));
        free(p);
    }
    q
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
    (pages << PAGE_SHIFT) + huge::purge(os::now_ms(), all)
}
