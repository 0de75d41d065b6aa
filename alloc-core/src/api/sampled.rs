//! The sampled path: a sampled block's stack is captured, the block is served from pages of
//! its own so that its `free` is seen, and the profiler records it; at its free the profiler
//! forgets exactly that record. The only user of the profiler's table on the allocation path,
//! and the only place OpenTelemetry's probes (`usdt`) fire.

use super::usdt;
use super::Op;
use crate::addr::segment::{self, SampleRecord, SpanDesc};
use crate::pool::arena;
use crate::pool::huge::{self, HugeHeader};
use crate::prof::backtrace;
use crate::prof::table::{self, MAX_FRAMES};
use crate::thread::cache::ThreadCache;
use crate::thread::sampler;
use crate::thread::InProfiler;
use core::mem::MaybeUninit;

/// Allocates a sampled block: captures the stack, serves the block from pages of its own so
/// that its `free` is seen, and records it.
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
    let start = backtrace::FrameRegs::here();
    let _inside = InProfiler::enter();
    let mut frames = [MaybeUninit::uninit(); MAX_FRAMES];
    let trace = backtrace::capture(&mut frames, entry_sp, start);
    // SAFETY: the caller's own cache.
    let (p, d) = unsafe { (*tc).arena.alloc_sampled(class, align_pages, zero) };
    if p.is_null() {
        return p;
    }
    let weight = sampler::weight(size, sampler::mean_interval());
    let bytes = size.max(1);
    let stack = table::record_alloc(trace, bytes, weight, p as usize);
    let record = SampleRecord {
        stack: stack.cast(),
        bytes,
        weight,
    };
    // SAFETY: `d` heads the block we just allocated; its record is ours to set.
    unsafe { (*d).set_sample(record) };
    announce_alloc(p, record);
    p
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

/// Frees sampled block `p`: the profiler forgets it (under its table lock, so a dump copying
/// the block's bytes is done with it), then its pages go back.
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
