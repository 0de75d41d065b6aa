//! The sampled path: a sampled block's stack is captured, the block is served from pages of
//! its own so that its `free` is seen, and the profiler records it; at its free the profiler
//! forgets exactly that record. The only user of the profiler's table on the allocation path.

use crate::addr::segment::{self, SampleRecord, SpanDesc};
use crate::pool::arena;
use crate::prof::backtrace;
use crate::prof::table::{self, MAX_FRAMES};
use crate::thread::cache::ThreadCache;
use crate::thread::sampler;
use crate::thread::InProfiler;

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
    let stack = table::record_alloc(&frames[..depth], bytes, weight, p as usize);
    let record = SampleRecord {
        stack: stack.cast(),
        bytes,
        weight,
    };
    // SAFETY: `d` heads the block we just allocated; its record is ours to set.
    unsafe { (*d).set_sample(record) };
    p
}

/// Frees sampled block `p`: the profiler forgets it (under its table lock, so a dump copying
/// the block's bytes is done with it), then its pages go back.
#[cold]
#[inline(never)]
pub(super) unsafe fn free_sampled(p: *mut u8, d: *mut SpanDesc) {
    // SAFETY: `d` heads the live sampled block `p` whose descriptor holds its record.
    unsafe {
        forget_sample((*d).sample(), p as usize);
        arena::of_segment(segment::segment_of_desc(d)).free_sampled(d);
    }
}

/// The profiler forgets a sampled block being freed (nothing if `record` is no sample), and
/// drops `block` from the peek set (0: already dropped, see `table::peek_forget`).
pub(super) fn forget_sample(record: SampleRecord, block: usize) {
    // SAFETY: a non-null stack is the entry `record_alloc` returned; entries live forever.
    unsafe { table::record_free(record.stack.cast(), record.bytes, record.weight, block) };
}
