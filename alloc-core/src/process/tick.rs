//! The thread tick: each thread counts down the bytes it allocates to its next event, a sample
//! point or a tick (periodic work: thread-cache trimming, decay, the profiler's triggers).
//! An allocation that does not reach the event pays one subtraction and one branch.

use crate::platform::os::{self};
use crate::pool::arena;
use crate::pool::huge;
use crate::thread::cache::{self, ThreadCache};
use crate::thread::sampler;
use crate::thread::{self};

/// Counts `bytes` towards the next thread event and runs it when due. True if the allocation
/// being made is to be sampled.
#[inline(always)]
pub unsafe fn count_event(tc: *mut ThreadCache, bytes: usize) -> bool {
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
