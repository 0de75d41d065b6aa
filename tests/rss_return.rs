//! Memory goes back to the kernel: RSS follows live memory.
//!
//! Models a program that builds up 1 GiB of live data, touches all of it, then frees all of it:
//! in small blocks (64–4096 B, mixed sizes, so many slabs of many classes), in large blocks
//! (256 KiB page runs) and in huge blocks (8 MiB dedicated mappings). For each it measures the
//! process's RSS (`/proc/self/statm`) and the engine's `stats::snapshot().resident` before,
//! at the peak (which must show the GiB really resident, so the test can fail) and after the
//! memory is returned, which must bring RSS back to within 16 MiB of the start:
//!
//! - `*_purge`: by an explicit `sampalloc::purge(true)`;
//! - `*_decay`: with a short `dirty_decay_ms` set through `sampalloc::configure`, by decay alone:
//!   the test sleeps past the decay time and then allocates a little (decay makes progress on
//!   allocation activity), without calling `purge` or flushing the thread cache.
//! - `*_thread_exit`: the GiB is built and freed by a thread that exits; the main thread then
//!   waits as the decay variants do.
//! - `*_thread_rounds`: rounds of one short-lived thread each, each building and freeing the GiB.
//!   An arena that a new thread takes over keeps its warm pages when its last thread exits (the
//!   next round reuses them instead of faulting them in again): most rounds after the first
//!   must end with the GiB still resident in the engine. After the last round, one decay
//!   period and a little activity give it back.
//!
//! The variants take a static lock so that no two 1-GiB tests run at once.

mod common;

use common::Rng;
use sampalloc::SampAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: SampAlloc = SampAlloc;

/// Live bytes at the peak.
const TOTAL: usize = 1 << 30;
/// How far above the starting RSS the end may be.
const SLACK: usize = 16 << 20;
/// `dirty_decay_ms` of the decay and thread-exit variants.
const SHORT_DECAY_MS: u64 = 200;
/// `dirty_decay_ms` of the thread-rounds variant: longer than a round's build and free take on
/// a loaded machine, so that decay alone does not purge the pages freed early in a round before
/// the thread exits.
const ROUNDS_DECAY_MS: u64 = 3000;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Small,
    Large,
    Huge,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Return {
    Purge,
    Decay,
    /// The memory is built and freed by a thread that then exits; no purge call: its arena,
    /// left without threads, gives the pages back at once or, if it serves rounds of threads,
    /// one decay period later at the next tick of any thread (the test waits that long).
    ThreadExit,
    /// [`ROUNDS`] threads one after the other build and free the memory (see the module docs).
    ThreadRounds,
}

/// Rounds of the `ThreadRounds` variant.
const ROUNDS: usize = 4;

/// Restores the default decay time when dropped (also when an assertion fails).
struct DecayGuard;

impl DecayGuard {
    fn set(ms: u64) -> DecayGuard {
        sampalloc::configure(&format!("dirty_decay_ms:{ms}")).expect("valid option");
        DecayGuard
    }
}

impl Drop for DecayGuard {
    fn drop(&mut self) {
        sampalloc::configure("dirty_decay_ms:1000").expect("valid option");
    }
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("valid layout")
}

/// Allocates `TOTAL` bytes in blocks of `kind` and writes every byte. Each block's first word
/// holds its size, its last byte a check value.
fn build(kind: Kind, blocks: &mut Vec<usize>) {
    let mut rng = Rng::new(0x1a2b_3c4d);
    let mut total = 0;
    while total < TOTAL {
        let size = match kind {
            Kind::Small => rng.range(64, 4096),
            Kind::Large => 256 << 10,
            Kind::Huge => 8 << 20,
        };
        // SAFETY: a non-zero layout.
        let p = unsafe { GLOBAL.alloc(layout(size)) };
        assert!(!p.is_null(), "out of memory after {total} bytes");
        // SAFETY: a fresh block of `size` bytes (at least 64), ours.
        unsafe {
            std::ptr::write_bytes(p, 0x5a, size);
            p.cast::<u64>().write(size as u64);
            *p.add(size - 1) = size as u8;
        }
        blocks.push(p as usize);
        total += size;
    }
}

fn free_all(blocks: &mut Vec<usize>) {
    for p in blocks.drain(..) {
        let p = p as *mut u8;
        // SAFETY: every entry is a live block written by `build`, freed once.
        unsafe {
            let size = p.cast::<u64>().read() as usize;
            assert!((64..=8 << 20).contains(&size), "block {p:p} overwritten");
            assert_eq!(*p.add(size - 1), size as u8, "block {p:p} overwritten");
            assert_eq!(*p.add(size / 2), 0x5a, "block {p:p} overwritten");
            GLOBAL.dealloc(p, layout(size));
        }
    }
}

/// Some allocation activity after the decay time: a few MiB of short-lived buffers of several
/// kinds, which is when the engine does its periodic decay work.
fn activity() {
    for i in 0..256usize {
        let v = vec![i as u8; [1 << 10, 16 << 10, 64 << 10][i % 3]];
        std::hint::black_box(&v);
    }
}

fn check(kind: Kind, ret: Return) {
    let _serial = serial();
    let t0 = Instant::now();
    let decay_ms = match ret {
        Return::ThreadRounds => ROUNDS_DECAY_MS,
        _ => SHORT_DECAY_MS,
    };
    let _decay = (ret != Return::Purge).then(|| DecayGuard::set(decay_ms));
    sampalloc::purge(true);
    let rss0 = common::rss();
    let s0 = sampalloc::stats::snapshot();
    let cycle = move || {
        let mut blocks: Vec<usize> = Vec::with_capacity(TOTAL / 64);
        build(kind, &mut blocks);
        let rss_peak = common::rss();
        let s_peak = sampalloc::stats::snapshot();
        let n = blocks.len();
        free_all(&mut blocks);
        drop(blocks);
        (n, rss_peak, s_peak)
    };
    let (n, rss_peak, s_peak) = match ret {
        Return::ThreadExit => std::thread::spawn(cycle).join().expect("worker thread"),
        Return::ThreadRounds => {
            // Resident bytes in the engine right after each round's thread exited.
            let mut after_exit = Vec::new();
            let mut last = None;
            for _ in 0..ROUNDS {
                last = Some(std::thread::spawn(cycle).join().expect("worker thread"));
                after_exit.push(sampalloc::stats::snapshot().resident);
            }
            println!(
                "resident after each round's exit: {:.1?} MiB",
                after_exit
                    .iter()
                    .map(|&r| common::mib(r))
                    .collect::<Vec<_>>()
            );
            // The first round's arena has not been taken over yet; a test thread of the harness
            // starting between two rounds may take the arena a round left, hence "most".
            let kept = after_exit[1..].iter().filter(|&&r| r >= TOTAL / 2).count();
            assert!(
                kept * 2 >= ROUNDS - 1,
                "the warm GiB was given back at the end of most rounds: resident after each \
                 exit {after_exit:?}"
            );
            last.expect("at least one round")
        }
        _ => cycle(),
    };

    match ret {
        Return::Purge => sampalloc::purge(true),
        Return::Decay | Return::ThreadExit | Return::ThreadRounds => {
            // Past one decay period after the last exit (idle arenas) and past the decay time
            // of the pages freed last (arenas in use), then the ticks of some activity.
            std::thread::sleep(Duration::from_millis(decay_ms + decay_ms.max(300)));
            activity();
        }
    }
    let rss1 = common::rss();
    let s1 = sampalloc::stats::snapshot();
    println!(
        "{kind:?}/{ret:?}: {n} blocks; RSS {:.1} -> {:.1} -> {:.1} MiB; resident {:.1} -> {:.1} \
         -> {:.1} MiB; mapped {:.1} MiB after; {:.2?}",
        common::mib(rss0),
        common::mib(rss_peak),
        common::mib(rss1),
        common::mib(s0.resident),
        common::mib(s_peak.resident),
        common::mib(s1.resident),
        common::mib(s1.mapped),
        t0.elapsed()
    );
    assert!(
        rss_peak >= rss0 + TOTAL - TOTAL / 16,
        "the GiB was not resident at the peak: {:.1} -> {:.1} MiB",
        common::mib(rss0),
        common::mib(rss_peak)
    );
    assert!(
        s_peak.allocated >= TOTAL,
        "allocated at the peak: {s_peak:?}"
    );
    assert!(s_peak.resident >= TOTAL, "resident at the peak: {s_peak:?}");
    assert!(
        rss1 <= rss0 + SLACK,
        "{kind:?}/{ret:?}: RSS did not come back: {:.1} MiB at the start, {:.1} MiB at the \
         peak, {:.1} MiB after ({:+.1} MiB); engine: {s1:?}",
        common::mib(rss0),
        common::mib(rss_peak),
        common::mib(rss1),
        common::diff_mib(rss1, rss0)
    );
    assert!(
        s1.resident <= s0.resident + SLACK,
        "{kind:?}/{ret:?}: stats resident did not come back: {:.1} -> {:.1} MiB; {s1:?}",
        common::mib(s0.resident),
        common::mib(s1.resident)
    );
}

#[test]
fn small_blocks_purge() {
    check(Kind::Small, Return::Purge);
}

#[test]
fn small_blocks_decay() {
    check(Kind::Small, Return::Decay);
}

#[test]
fn small_blocks_thread_exit() {
    check(Kind::Small, Return::ThreadExit);
}

#[test]
fn small_blocks_thread_rounds() {
    check(Kind::Small, Return::ThreadRounds);
}

#[test]
fn large_blocks_purge() {
    check(Kind::Large, Return::Purge);
}

#[test]
fn large_blocks_decay() {
    check(Kind::Large, Return::Decay);
}

#[test]
fn huge_blocks_purge() {
    check(Kind::Huge, Return::Purge);
}

#[test]
fn huge_blocks_decay() {
    check(Kind::Huge, Return::Decay);
}
