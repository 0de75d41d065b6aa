//! Resident pages are shared across arenas for large blocks: pages a thread of one arena freed
//! (dirty, not yet purged) serve the next large blocks of a thread of another arena, before
//! that arena uses purged pages or maps a new segment. Without this, every arena faults in
//! its own peak (the `frag` workload: 67 k page faults against 43 k).
//!
//! One test function: which arena each thread gets depends on the threads alive, so no other
//! test of this binary may start threads meanwhile. Threads get arenas with no thread first,
//! and the test asks for eight arenas (by default, one per two CPUs), so the two workers
//! below have arenas of their own.

use sampalloc::SampAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::mpsc;
use std::thread;

#[global_allocator]
static GLOBAL: SampAlloc = SampAlloc;

/// Large (page-run) blocks, too big for the thread caches.
const SIZE: usize = 1 << 20;
const N: usize = 8;

fn layout() -> Layout {
    Layout::from_size_align(SIZE, 16).unwrap()
}

fn alloc_all() -> Vec<usize> {
    (0..N)
        .map(|_| {
            // SAFETY: a valid, non-zero layout.
            let p = unsafe { GLOBAL.alloc(layout()) };
            assert!(!p.is_null());
            // Touch every page, as a program would.
            // SAFETY: the block is SIZE bytes long.
            unsafe { std::ptr::write_bytes(p, 0x5a, SIZE) };
            p as usize
        })
        .collect()
}

fn free_all(blocks: &[usize]) {
    for &p in blocks {
        // SAFETY: from `alloc_all`, freed once.
        unsafe { GLOBAL.dealloc(p as *mut u8, layout()) };
    }
}

#[test]
fn freed_pages_of_one_arena_serve_another_arenas_large_blocks() {
    sampalloc::configure("narenas:8").expect("a valid option");
    let before = sampalloc::stats::snapshot();
    // The first worker allocates and frees its blocks, then stays alive (its arena keeps its
    // dirty pages: no exit purge) while the second, on another arena, allocates the same.
    let (freed_tx, freed_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let first = thread::spawn(move || {
        let blocks = alloc_all();
        free_all(&blocks);
        sampalloc::flush_thread_cache();
        freed_tx.send(blocks).unwrap();
        done_rx.recv().unwrap();
    });
    let freed = freed_rx.recv().unwrap();
    let (second, mapped_before, mapped_after) = thread::spawn(|| {
        // A small allocation gives the thread's arena its first segment (for slabs).
        let warm = std::hint::black_box(vec![0u64; 64]);
        let mapped_before = sampalloc::stats::snapshot().mapped;
        let blocks = alloc_all();
        let mapped_after = sampalloc::stats::snapshot().mapped;
        free_all(&blocks);
        drop(warm);
        (blocks, mapped_before, mapped_after)
    })
    .join()
    .unwrap();
    done_tx.send(()).unwrap();
    first.join().unwrap();

    assert!(
        mapped_after <= mapped_before,
        "the second thread mapped new memory ({} → {} bytes) though {} MiB were free and resident \
         (before the test: {})",
        mapped_before,
        mapped_after,
        (N * SIZE) >> 20,
        before.mapped
    );
    // Most come from the first thread's pages (others may come from other arenas' free pages).
    let lo = *freed.iter().min().unwrap();
    let hi = *freed.iter().max().unwrap() + SIZE;
    let reused = second
        .iter()
        .filter(|&&p| p >= lo && p + SIZE <= hi)
        .count();
    assert!(
        reused >= N / 2,
        "only {reused} of the second thread's blocks {second:x?} reuse the pages freed at \
         {lo:#x}..{hi:#x}"
    );
}
