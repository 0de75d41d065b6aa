//! Stress test: the engine under concurrent load, as the global allocator of this binary.
//!
//! Models a multi-threaded program run with 1, 2, 4, 8 and 16 threads (more threads than the
//! cores of a small machine) that allocates, frees and resizes blocks of random sizes — small
//! (16 B–16 KiB, and a few under 16 B), large (16 KiB–2 MiB) and a few huge (2–6 MiB) — at
//! alignments from 1 B to 64 KiB, zeroed and not, and passes blocks to other threads through
//! mailboxes (`Mutex<Vec<_>>`) so that many frees and reallocs are remote. Half of the threads
//! exit half-way and hand their live blocks to the others, which free them later; short-lived
//! helper threads allocate blocks and exit before their new owner frees them; the survivors
//! leave blocks to the main thread, which frees them after every worker has exited.
//!
//! What must hold: every block carries a pattern derived from (address, size, seed), verified
//! before each free and realloc and on receipt from another thread (so a block handed out twice,
//! overlapping another, or scribbled on by the allocator is caught); realloc keeps the common
//! prefix of the contents, growing or shrinking, across small/large/huge; every block has the
//! alignment its `Layout` asked for; `alloc_zeroed` blocks read as zero. At the end, with every
//! block freed, `stats::snapshot().allocated` is back near its start value and the thread count
//! is back to what it was.
//!
//! Each thread count is bounded by an operation count per thread and a wall-clock deadline.

mod common;

use common::Rng;
use sampalloc::SampAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: SampAlloc = SampAlloc;

const THREAD_COUNTS: [usize; 5] = [1, 2, 4, 8, 16];
/// Wall-clock budget of one thread count.
const PER_COUNT: Duration = Duration::from_millis(2000);
/// Operation budget of one worker.
const OPS_PER_THREAD: usize = 300_000;
/// A worker frees rather than allocates beyond these.
const MAX_LIVE_BYTES: usize = 16 << 20;
const MAX_LIVE_BLOCKS: usize = 3000;
/// The largest size a block may reach.
const MAX_SIZE: usize = 6 << 20;
/// Tolerance on `allocated` at the end: the harness's own blocks.
const ALLOCATED_SLACK: usize = 4 << 20;

#[derive(Clone, Copy, Debug)]
struct Block {
    addr: usize,
    size: usize,
    align: usize,
    seed: u64,
}

impl Block {
    fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, self.align).expect("valid layout")
    }

    fn key(&self) -> u64 {
        common::key(self.addr, self.size, self.seed)
    }

    fn verify(&self, when: &str) {
        // SAFETY: a live block of `size` bytes that the caller owns.
        let bad = unsafe { common::mismatch(self.addr as *const u8, self.size, self.key()) };
        if let Some(offset) = bad {
            panic!(
                "{when}: block {:#x} (size {}, align {}) corrupted at offset {offset}",
                self.addr, self.size, self.align
            );
        }
    }
}

fn random_size(rng: &mut Rng) -> usize {
    match rng.below(1000) {
        0..=39 => rng.range(1, 15),
        40..=919 => rng.log_range(16, 16 << 10),
        920..=995 => rng.log_range((16 << 10) + 1, 2 << 20),
        _ => rng.range((2 << 20) + 1, MAX_SIZE),
    }
}

fn random_align(rng: &mut Rng) -> usize {
    if rng.chance(75) {
        [1, 8, 16][rng.below(3)]
    } else {
        1 << rng.range(5, 16) // 32 B ..= 64 KiB
    }
}

fn alloc_block(rng: &mut Rng, zeroed: bool) -> Block {
    let size = random_size(rng);
    let align = random_align(rng);
    let layout = Layout::from_size_align(size, align).expect("valid layout");
    // SAFETY: the layout has a non-zero size.
    let p = unsafe {
        if zeroed {
            GLOBAL.alloc_zeroed(layout)
        } else {
            GLOBAL.alloc(layout)
        }
    };
    assert!(!p.is_null(), "out of memory for {layout:?}");
    assert_eq!(p as usize % align, 0, "{p:p} misaligned for {layout:?}");
    if zeroed {
        // SAFETY: a fresh block of `size` bytes.
        if let Some(offset) = unsafe { common::nonzero(p, size) } {
            panic!("alloc_zeroed {layout:?} at {p:p}: byte {offset} is not zero");
        }
    }
    let b = Block {
        addr: p as usize,
        size,
        align,
        seed: rng.next_u64(),
    };
    // SAFETY: a fresh block of `size` bytes, ours.
    unsafe { common::fill(p, size, b.key()) };
    b
}

fn free_block(b: Block, when: &str) {
    b.verify(when);
    // SAFETY: a live block allocated by GLOBAL with this layout, freed once.
    unsafe { GLOBAL.dealloc(b.addr as *mut u8, b.layout()) };
}

fn realloc_block(rng: &mut Rng, b: Block) -> Block {
    b.verify("before realloc");
    let new_size = match rng.below(4) {
        0 => (b.size * rng.range(2, 4)).min(MAX_SIZE),
        1 => (b.size / rng.range(2, 8)).max(1),
        2 => random_size(rng),
        _ => (b.size + rng.range(0, 64)).saturating_sub(32).max(1),
    };
    // SAFETY: `b` is live with this layout; the new size is non-zero and far from overflowing
    // when rounded to the alignment.
    let q = unsafe { GLOBAL.realloc(b.addr as *mut u8, b.layout(), new_size) };
    assert!(!q.is_null(), "realloc {} -> {new_size} failed", b.size);
    assert_eq!(
        q as usize % b.align,
        0,
        "realloc {} -> {new_size} lost alignment {}",
        b.size,
        b.align
    );
    let keep = b.size.min(new_size);
    // SAFETY: the resized block holds at least `keep` bytes.
    if let Some(offset) = unsafe { common::mismatch(q, keep, b.key()) } {
        panic!(
            "realloc {:#x} {} -> {q:p} {new_size} (align {}) lost contents at offset {offset}",
            b.addr, b.size, b.align
        );
    }
    let nb = Block {
        addr: q as usize,
        size: new_size,
        align: b.align,
        seed: rng.next_u64(),
    };
    // SAFETY: the block now holds `new_size` bytes, ours.
    unsafe { common::fill(q, new_size, nb.key()) };
    nb
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    allocs: usize,
    zeroed: usize,
    frees: usize,
    reallocs: usize,
    sent: usize,
    received: usize,
    helpers: usize,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.allocs += o.allocs;
        self.zeroed += o.zeroed;
        self.frees += o.frees;
        self.reallocs += o.reallocs;
        self.sent += o.sent;
        self.received += o.received;
        self.helpers += o.helpers;
    }
}

/// Mailboxes: one per worker, and a last one for the main thread.
type Mailboxes = Vec<Mutex<Vec<Block>>>;

fn post(boxes: &Mailboxes, to: usize, blocks: impl IntoIterator<Item = Block>) {
    boxes[to].lock().unwrap().extend(blocks);
}

/// One worker: random operations until its deadline or budget, then it hands its blocks on
/// (to the survivors if it exits early, else half to the main thread) and exits.
fn worker(id: usize, n: usize, boxes: &Mailboxes, stop_at: Instant, early: bool) -> Counts {
    let mut rng = Rng::new(0x5eed ^ ((n as u64) << 32) ^ id as u64);
    let mut live: Vec<Block> = Vec::new();
    let mut live_bytes = 0usize;
    let mut c = Counts::default();
    let main_box = n;
    for i in 0..OPS_PER_THREAD {
        if i % 64 == 0 && Instant::now() >= stop_at {
            break;
        }
        let op = rng.below(1000);
        let room = live.len() < MAX_LIVE_BLOCKS && live_bytes < MAX_LIVE_BYTES;
        if (op < 400 && room) || (live.is_empty() && op < 870) {
            let zeroed = rng.chance(10);
            let b = alloc_block(&mut rng, zeroed);
            c.allocs += 1;
            c.zeroed += zeroed as usize;
            live_bytes += b.size;
            live.push(b);
        } else if op < 650 {
            let b = live.swap_remove(rng.below(live.len()));
            live_bytes -= b.size;
            free_block(b, "free");
            c.frees += 1;
        } else if op < 770 {
            let i = rng.below(live.len());
            live_bytes -= live[i].size;
            live[i] = realloc_block(&mut rng, live[i]);
            live_bytes += live[i].size;
            c.reallocs += 1;
        } else if op < 870 {
            let b = live.swap_remove(rng.below(live.len()));
            live_bytes -= b.size;
            let mut to = rng.below(n + 1);
            if to == id {
                to = main_box;
            }
            post(boxes, to, [b]);
            c.sent += 1;
        } else if op < 996 {
            let got = std::mem::take(&mut *boxes[id].lock().unwrap());
            for b in got {
                b.verify("received from another thread");
                live_bytes += b.size;
                live.push(b);
                c.received += 1;
            }
        } else {
            // A short-lived thread allocates blocks and exits; this thread frees them later.
            let seed = rng.next_u64();
            let blocks = std::thread::spawn(move || {
                let mut rng = Rng::new(seed);
                (0..24)
                    .map(|_| alloc_block(&mut rng, false))
                    .collect::<Vec<_>>()
            })
            .join()
            .expect("helper thread");
            for b in blocks {
                b.verify("from an exited helper thread");
                live_bytes += b.size;
                live.push(b);
            }
            c.helpers += 1;
        }
    }
    if early {
        // Exit while others hold (and later free) every block this thread still has.
        for (j, b) in live.into_iter().enumerate() {
            let to = if n >= 2 { (j * 2) % n } else { main_box };
            post(boxes, to, [b]);
            c.sent += 1;
        }
    } else {
        // Free half; leave the rest to the main thread, freed after this thread has exited.
        let keep = live.split_off(live.len() / 2);
        for b in live {
            free_block(b, "final free");
            c.frees += 1;
        }
        c.sent += keep.len();
        post(boxes, main_box, keep);
    }
    c
}

fn run(n: usize) -> (Counts, Duration) {
    let boxes: Mailboxes = (0..=n).map(|_| Mutex::new(Vec::new())).collect();
    let start = Instant::now();
    let deadline = start + PER_COUNT;
    let mut total = Counts::default();
    std::thread::scope(|s| {
        let boxes = &boxes;
        let handles: Vec<_> = (0..n)
            .map(|id| {
                // Odd workers exit half-way.
                let early = id % 2 == 1;
                let stop_at = if early {
                    start + PER_COUNT / 2
                } else {
                    deadline
                };
                s.spawn(move || worker(id, n, boxes, stop_at, early))
            })
            .collect();
        // Read the statistics under load meanwhile: it takes every lock briefly.
        while !handles.iter().all(|h| h.is_finished()) {
            let st = sampalloc::stats::snapshot();
            assert!(st.mapped >= st.retained, "mapped < retained: {st:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Join explicitly: pthread_join waits for the thread-exit destructors to have run.
        for h in handles {
            total += h.join().expect("worker panicked");
        }
    });
    for mailbox in boxes {
        for b in mailbox.into_inner().unwrap() {
            free_block(b, "freed by main after its thread exited");
            total.frees += 1;
        }
    }
    (total, start.elapsed())
}

#[test]
fn concurrent_alloc_free_realloc_with_verified_contents() {
    let before = sampalloc::stats::snapshot();
    let t0 = Instant::now();
    for n in THREAD_COUNTS {
        let (c, took) = run(n);
        println!("threads {n:2}: {took:.2?} {c:?}");
        assert!(
            took < PER_COUNT + Duration::from_secs(5),
            "{n} threads overran"
        );
        assert!(c.allocs >= 1000, "{n} threads: too little work: {c:?}");
        assert!(c.reallocs >= 200, "{n} threads: too few reallocs: {c:?}");
        assert!(c.zeroed >= 50, "{n} threads: too few zeroed: {c:?}");
        assert!(
            c.sent >= 200 && c.received + c.sent >= 400,
            "{n} threads: too few cross-thread blocks: {c:?}"
        );
        assert!(c.helpers >= 1, "{n} threads: no helper thread ran: {c:?}");
    }
    println!("total {:.2?}", t0.elapsed());
    let after = sampalloc::stats::snapshot();
    println!(
        "allocated before {} after {}; threads before {} after {}",
        before.allocated, after.allocated, before.threads, after.threads
    );
    assert!(
        after.allocated.abs_diff(before.allocated) <= ALLOCATED_SLACK,
        "allocated did not return: before {} after {} ({:+.1} MiB)",
        before.allocated,
        after.allocated,
        common::diff_mib(after.allocated, before.allocated)
    );
    assert_eq!(
        after.threads, before.threads,
        "thread caches of exited threads still counted"
    );
}
