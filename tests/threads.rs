//! Threads come and go: a program that starts and ends many short-lived threads must not leave
//! memory behind per thread.
//!
//! Models a thread-per-task program: 2000 threads, eight at a time, each allocating and freeing
//! 300 blocks (small, plus a few large page runs, and a huge block in one thread of 16), checking
//! their contents, and leaving a few blocks to the main thread, which frees them after the
//! thread has exited. A warm-up of 200 such threads sets the baseline. After the 2000 threads
//! have been joined and memory purged, `stats::snapshot()` must show the thread count back to
//! its value before, and `mapped`, `resident` and `metadata` (thread caches are recycled, not
//! leaked) no more than a few MiB beyond the warm-up's.

mod common;

use common::Rng;
use sampalloc::SampAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::time::Instant;

#[global_allocator]
static GLOBAL: SampAlloc = SampAlloc;

const AT_ONCE: usize = 8;
const WARM_UP: usize = 200;
const THREADS: usize = 2000;
/// How much `mapped` and `resident` may exceed the warm-up's.
const SLACK: usize = 8 << 20;
/// How much `metadata` may: two of its 2 MiB chunks, room for a few more caches (about 200 KiB
/// each) when other threads overlap this test's; 2000 thread caches would be some 400 MiB.
const META_SLACK: usize = 4 << 20;

/// A block left to the main thread: address, size, pattern key.
type Left = (usize, usize, u64);

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 16).expect("valid layout")
}

/// One short-lived thread's work. Returns the blocks it leaves behind.
fn task(seed: u64) -> Vec<Left> {
    let mut rng = Rng::new(seed);
    let mut live = Vec::with_capacity(300);
    for i in 0..300 {
        let size = match i % 100 {
            0 if seed.is_multiple_of(16) => rng.range(3 << 20, 4 << 20),
            0 | 1 => rng.log_range(20 << 10, 256 << 10),
            _ => rng.log_range(8, 8 << 10),
        };
        // SAFETY: a non-zero layout.
        let p = unsafe { GLOBAL.alloc(layout(size)) };
        assert!(!p.is_null());
        let key = common::key(p as usize, size, seed);
        // SAFETY: a fresh block of `size` bytes, ours.
        unsafe { common::fill(p, size, key) };
        live.push((p as usize, size, key));
    }
    let left = live.split_off(live.len() - 3);
    for (p, size, key) in live {
        // SAFETY: a live block of ours with this layout, freed once.
        unsafe {
            assert_eq!(common::mismatch(p as *const u8, size, key), None);
            GLOBAL.dealloc(p as *mut u8, layout(size));
        }
    }
    left
}

fn run(n: usize, seed: u64) {
    let mut next = 0;
    while next < n {
        let handles: Vec<_> = (next..(next + AT_ONCE).min(n))
            .map(|i| std::thread::spawn(move || task(seed ^ i as u64)))
            .collect();
        next += handles.len();
        for h in handles {
            // `join` returns once the thread's exit destructors (the cache hand-back) have run.
            for (p, size, key) in h.join().expect("task panicked") {
                // SAFETY: a live block the exited thread left us, freed once.
                unsafe {
                    assert_eq!(common::mismatch(p as *const u8, size, key), None);
                    GLOBAL.dealloc(p as *mut u8, layout(size));
                }
            }
        }
    }
}

fn settled() -> sampalloc::stats::Snapshot {
    sampalloc::purge(true);
    sampalloc::stats::snapshot()
}

#[test]
fn short_lived_threads_leave_nothing_behind() {
    let t0 = Instant::now();
    let before = sampalloc::stats::snapshot();
    run(WARM_UP, 1);
    let warm = settled();
    let warm_rss = common::rss();
    run(THREADS, 2);
    let after = settled();
    let after_rss = common::rss();
    println!(
        "{THREADS} threads in {:.2?}: threads {} -> {} -> {}; mapped {:.1} -> {:.1} MiB; \
         resident {:.1} -> {:.1} MiB; metadata {:.2} -> {:.2} MiB; RSS {:.1} -> {:.1} MiB",
        t0.elapsed(),
        before.threads,
        warm.threads,
        after.threads,
        common::mib(warm.mapped),
        common::mib(after.mapped),
        common::mib(warm.resident),
        common::mib(after.resident),
        common::mib(warm.metadata),
        common::mib(after.metadata),
        common::mib(warm_rss),
        common::mib(after_rss),
    );
    assert_eq!(warm.threads, before.threads, "exited threads still counted");
    assert_eq!(
        after.threads, before.threads,
        "exited threads still counted"
    );
    assert!(
        after.mapped <= warm.mapped + SLACK,
        "mapped grew with the number of threads: {after:?}"
    );
    assert!(
        after.resident <= warm.resident + SLACK,
        "resident grew with the number of threads: {after:?}"
    );
    assert!(
        after.metadata <= warm.metadata + META_SLACK,
        "metadata grew with the number of threads (caches not recycled?): {after:?}"
    );
    assert!(
        after_rss <= warm_rss + SLACK,
        "RSS grew with the number of threads: {:.1} -> {:.1} MiB",
        common::mib(warm_rss),
        common::mib(after_rss)
    );
    assert!(
        after.allocated.abs_diff(before.allocated) <= 1 << 20,
        "blocks left allocated: {} -> {}",
        before.allocated,
        after.allocated
    );
}
