//! Blocks freed by a thread of another arena (see `thread_cache`'s module docs):
//!
//! - a block smaller than a cache line goes home while its arena has threads, so the freeing
//!   thread never hands it out and its new objects share no line with the owner's (Hoard's
//!   passive false sharing, `cache-scratch` in the workload suite);
//! - a larger block, or one of an arena no thread uses any more, is reused by the freeing
//!   thread, the cheapest place for it.
//!
//! One test function: the steps depend on which arena each thread gets, so no other test of
//! this binary may start threads meanwhile. Threads get arenas with no thread first, and the
//! test asks for eight arenas (by default, one per two CPUs, and line arenas one per CPU), so
//! the harness thread, this test's thread and the two workers below each have one of their
//! own.

use sampalloc::SampAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::mpsc;
use std::thread;

#[global_allocator]
static GLOBAL: SampAlloc = SampAlloc;

const LINE: usize = 64;

fn alloc(size: usize) -> usize {
    // SAFETY: a valid, non-zero layout.
    let p = unsafe { GLOBAL.alloc(Layout::from_size_align(size, 8).unwrap()) };
    assert!(!p.is_null());
    p as usize
}

fn dealloc(p: usize, size: usize) {
    // SAFETY: `p` came from `alloc(size)` and is freed once.
    unsafe { GLOBAL.dealloc(p as *mut u8, Layout::from_size_align(size, 8).unwrap()) }
}

fn line(p: usize) -> usize {
    p / LINE
}

/// A thread of another arena frees one of ours, then allocates the same size: what does it get?
/// Returns its allocations (freed again by the worker before it ends).
fn worker_reuse(given: usize, size: usize, n: usize) -> Vec<usize> {
    thread::spawn(move || {
        dealloc(given, size);
        let got: Vec<usize> = (0..n).map(|_| alloc(size)).collect();
        for &p in &got {
            dealloc(p, size);
        }
        got
    })
    .join()
    .unwrap()
}

#[test]
fn remote_frees_go_home_only_where_they_must() {
    sampalloc::configure("narenas:8").expect("a valid option");
    // Small blocks, adjacent: several share a line. The worker frees one; none of the blocks
    // it then allocates may be that one, or share a line with ours.
    let ours: Vec<usize> = (0..64).map(|_| alloc(16)).collect();
    let given = ours[10];
    let got = worker_reuse(given, 16, 200);
    assert!(
        !got.contains(&given),
        "the freeing thread reused a line-sharing block"
    );
    for p in &got {
        assert!(
            ours.iter().all(|q| line(*q) != line(*p)),
            "a new block of the freeing thread shares a line with the owner's blocks"
        );
    }
    // It went home: this thread gets it back from its arena (flush our cache first so that a
    // refill reaches the slab).
    sampalloc::flush_thread_cache();
    let back: Vec<usize> = (0..4096).map(|_| alloc(16)).collect();
    assert!(
        back.contains(&given),
        "the block did not return to its arena"
    );
    for p in back
        .into_iter()
        .chain(ours.into_iter().filter(|&p| p != given))
    {
        dealloc(p, 16);
    }

    // A block of a line or more: the freeing thread keeps and reuses it.
    let big = alloc(256);
    let got = worker_reuse(big, 256, 1);
    assert_eq!(
        got,
        [big],
        "a large-enough foreign block was not reused locally"
    );

    // A small block of an arena no thread uses any more: reused where it is freed. The owner
    // and the worker start together, so they get different arenas; the owner then ends.
    let (to_worker, from_owner) = mpsc::channel::<usize>();
    let (go, wait) = mpsc::channel::<()>();
    let (ready, worker_ready) = mpsc::channel::<()>();
    let worker = thread::spawn(move || {
        // Allocating gives the thread its arena, before the owner's.
        dealloc(alloc(16), 16);
        ready.send(()).unwrap();
        let given = from_owner.recv().unwrap();
        wait.recv().unwrap();
        dealloc(given, 16);
        let p = alloc(16);
        dealloc(p, 16);
        (given, p)
    });
    worker_ready.recv().unwrap();
    let owner = thread::spawn(move || to_worker.send(alloc(16)).unwrap());
    owner.join().unwrap();
    go.send(()).unwrap();
    let (given, p) = worker.join().unwrap();
    assert_eq!(
        p, given,
        "a block of an unused arena was not reused locally"
    );
}
