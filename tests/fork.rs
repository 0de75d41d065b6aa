//! Fork safety: the engine's `pthread_atfork` handlers.
//!
//! Models a threaded server that forks workers: four threads allocate, free and pass blocks to
//! each other continuously (so that the engine's locks are taken all the time) while the main
//! thread forks 60 times (within a deadline). Each child, whose only thread is the forking
//! one, must find the engine usable: the blocks it inherited intact and freeable, exactly one
//! thread cache left (the other threads' caches were handed back), and new blocks allocated,
//! resized, checked and freed; then it `_exit(0)`s. Every fourth child does the full work: a
//! few thousand blocks of classes from 8 B to 2 MiB, a huge block grown by realloc, aligned and
//! zeroed blocks; the others a few hundred small blocks. A child that hangs (a lock inherited
//! in the locked state) is killed after a timeout and fails the test, as does one that aborts
//! (e.g. "double free" from inconsistent inherited state) or finds bad data.
//!
//! - `fork_while_threads_allocate`: the workers use every kind of block, so thread caches fill
//!   and flush all the time;
//! - `fork_while_threads_allocate_uncached_sizes`: the workers use only blocks that bypass the
//!   thread caches (large page runs over 256 KiB, the largest cached class, and huge blocks):
//!   the arena page heaps and the huge cache are under load, the caches stay quiet;
//! - `fork_child_survives_cache_flushes`: the minimal reproduction of an engine bug: threads
//!   that overflow (flush) one thread-cache class while the main thread forks children that
//!   only `_exit(0)`.
//!
//! - `handlers_registered_after_start_up_come_after_the_engines`: the order of handlers (see
//!   below).
//!
//! The tests take a static lock: a fork copies every thread of the process, so one test's
//! workers would otherwise be inherited by the other test's children.

mod common;

use common::Rng;
use sampalloc::SampAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: SampAlloc = SampAlloc;

const FORKS: usize = 60;
const DEADLINE: Duration = Duration::from_secs(12);
const CHILD_TIMEOUT: Duration = Duration::from_secs(10);
const WORKERS: usize = 4;
const RING: usize = 256;
const SHARED_MAX: usize = 4096;
/// The largest class the thread caches hold, and the largest class (larger blocks are huge), as
/// in `alloc-core/src/base/size_class.rs` (`class_size(NUM_CACHED - 1)`, `LARGE_MAX`).
const CACHED_MAX: usize = 256 << 10;
const LARGE_MAX: usize = 2 << 20;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which blocks the parent's workers use.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mix {
    /// Small, large and huge.
    All,
    /// Only sizes the thread caches never hold: large above [`CACHED_MAX`] (up to [`LARGE_MAX`])
    /// and huge.
    Uncached,
}

#[derive(Clone, Copy, Debug)]
struct Block {
    addr: usize,
    size: usize,
    align: usize,
    seed: u64,
}

impl Block {
    fn new(size: usize, align: usize, seed: u64) -> Option<Block> {
        let layout = Layout::from_size_align(size, align).ok()?;
        // SAFETY: a non-zero layout.
        let p = unsafe { GLOBAL.alloc(layout) };
        if p.is_null() || !(p as usize).is_multiple_of(align) {
            return None;
        }
        let b = Block {
            addr: p as usize,
            size,
            align,
            seed,
        };
        // SAFETY: a fresh block of `size` bytes, ours.
        unsafe { common::fill(p, size, b.key()) };
        Some(b)
    }

    fn key(&self) -> u64 {
        common::key(self.addr, self.size, self.seed)
    }

    fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, self.align).expect("valid layout")
    }

    fn intact(&self) -> bool {
        // SAFETY: a live block of `size` bytes, ours.
        unsafe { common::mismatch(self.addr as *const u8, self.size, self.key()).is_none() }
    }

    fn free(self) {
        // SAFETY: a live block allocated with this layout, freed once.
        unsafe { GLOBAL.dealloc(self.addr as *mut u8, self.layout()) };
    }
}

fn worker_size(rng: &mut Rng, mix: Mix) -> usize {
    match (mix, rng.below(1000)) {
        (Mix::All, 0..=939) => rng.log_range(8, 16 << 10),
        (Mix::All, 940..=997) => rng.log_range(16 << 10, 1 << 20),
        (Mix::Uncached, 0..=994) => rng.log_range(CACHED_MAX + 1, LARGE_MAX - 1),
        _ => rng.range(3 << 20, 5 << 20),
    }
}

/// A parent thread: replaces random blocks of its ring until told to stop, passing some to the
/// other workers through `shared` and freeing the ones the others passed. Its own bookkeeping
/// is allocated up front, so with `Mix::Uncached` it never touches its thread cache.
fn worker(id: usize, mix: Mix, stop: &AtomicBool, shared: &Mutex<Vec<Block>>, ops: &AtomicUsize) {
    let mut rng = Rng::new(0xf0f0 + id as u64);
    let ring_len = if mix == Mix::All { RING } else { RING / 8 };
    let mut ring: Vec<Option<Block>> = vec![None; ring_len];
    let mut theirs: Vec<Block> = Vec::with_capacity(16);
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let i = rng.below(ring_len);
        if let Some(b) = ring[i].take() {
            assert!(b.intact(), "worker {id}: block {b:?} corrupted");
            let mut b = Some(b);
            if rng.chance(20) {
                let mut s = shared.lock().unwrap();
                if s.len() < SHARED_MAX {
                    s.push(b.take().unwrap());
                }
            }
            if let Some(b) = b {
                b.free();
            }
        }
        let align = if rng.chance(10) { 4096 } else { 16 };
        let size = worker_size(&mut rng, mix);
        ring[i] = Some(Block::new(size, align, rng.next_u64()).expect("alloc"));
        n += 1;
        if n.is_multiple_of(32) {
            {
                let mut s = shared.lock().unwrap();
                let at = s.len() - s.len().min(16);
                theirs.extend(s.drain(at..));
            }
            for b in theirs.drain(..) {
                assert!(
                    b.intact(),
                    "worker {id}: block from another thread corrupted"
                );
                b.free();
            }
            ops.fetch_add(32, Ordering::Relaxed);
        }
    }
    for b in ring.into_iter().flatten() {
        assert!(b.intact(), "worker {id}: block corrupted at the end");
        b.free();
    }
}

/// The child's work. Returns its exit code: 0 when everything held.
fn child(inherited: &[Block], round: usize, full: bool) -> i32 {
    // Blocks allocated by the parent before the fork: intact, and freeable here.
    for (j, b) in inherited.iter().enumerate() {
        if !full && j % 8 != round % 8 {
            continue;
        }
        if !b.intact() {
            return 10;
        }
        if j % 2 == round % 2 {
            b.free();
        }
    }
    // Only the forking thread survives: its cache is the only one left.
    let threads = sampalloc::stats::snapshot().threads;
    if threads != 1 {
        return 11;
    }
    const SIZES: [usize; 26] = [
        8,
        16,
        24,
        48,
        64,
        100,
        128,
        200,
        256,
        512,
        1000,
        1024,
        2000,
        4096,
        5000,
        8192,
        12_000,
        16 << 10,
        20_000,
        32 << 10,
        40_000,
        100_000,
        300_000,
        1 << 20,
        (2 << 20) - 100,
        2 << 20,
    ];
    let mut rng = Rng::new(round as u64);
    let count = if full { 3000 } else { 300 };
    let mut blocks = Vec::with_capacity(count);
    for k in 0..count {
        // The big ones less often, so a child stays quick.
        let size = if full && k % 40 == 0 {
            SIZES[k / 40 % SIZES.len()]
        } else {
            SIZES[rng.below(15)]
        };
        let align = [16, 16, 16, 64, 4096][k % 5];
        let Some(b) = Block::new(size, align, rng.next_u64()) else {
            return 12;
        };
        blocks.push(b);
    }
    // Resize some, keeping contents.
    for b in blocks.iter_mut().step_by(7) {
        let new_size = if b.size < 100_000 {
            b.size * 3
        } else {
            b.size / 3
        };
        // SAFETY: a live block with this layout; a non-zero new size.
        let q = unsafe { GLOBAL.realloc(b.addr as *mut u8, b.layout(), new_size) };
        if q.is_null() || !(q as usize).is_multiple_of(b.align) {
            return 13;
        }
        let keep = b.size.min(new_size);
        // SAFETY: the block holds at least `keep` bytes.
        if unsafe { common::mismatch(q, keep, b.key()) }.is_some() {
            return 14;
        }
        b.addr = q as usize;
        b.size = new_size;
        // SAFETY: the block holds `new_size` bytes, ours.
        unsafe { common::fill(q, new_size, b.key()) };
    }
    // Free in a shuffled order, checking every block.
    while !blocks.is_empty() {
        let b = blocks.swap_remove(rng.below(blocks.len()));
        if !b.intact() {
            return 15;
        }
        b.free();
    }
    if !full {
        return 0;
    }
    // A huge block, grown by realloc.
    let Some(mut h) = Block::new(5 << 20, 16, 7) else {
        return 16;
    };
    // SAFETY: a live block with this layout; a non-zero new size.
    let q = unsafe { GLOBAL.realloc(h.addr as *mut u8, h.layout(), 9 << 20) };
    // SAFETY: the block holds at least the old size.
    if q.is_null() || unsafe { common::mismatch(q, h.size, h.key()) }.is_some() {
        return 17;
    }
    h.addr = q as usize;
    h.size = 9 << 20;
    h.free();
    // Zeroed memory is zero.
    for size in [64usize, 3000, 40_000, 3 << 20] {
        let layout = Layout::from_size_align(size, 16).expect("valid layout");
        // SAFETY: a non-zero layout; the block is freed below with the same layout.
        unsafe {
            let z = GLOBAL.alloc_zeroed(layout);
            if z.is_null() || common::nonzero(z, size).is_some() {
                return 18;
            }
            GLOBAL.dealloc(z, layout);
        }
    }
    0
}

/// Waits for `pid`; kills it if it is still running after `timeout`. Returns its wait status,
/// or `None` if it hung.
fn wait_with_timeout(pid: libc::pid_t, timeout: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-parameter.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(
            r >= 0,
            "waitpid failed: {}",
            std::io::Error::last_os_error()
        );
        if r == pid {
            return Some(status);
        }
        if start.elapsed() > timeout {
            // SAFETY: `pid` is our child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn describe(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status:#x}")
    }
}

/// Forks up to `FORKS` times while `WORKERS` threads of `mix` run; every child must succeed.
fn fork_under_load(mix: Mix) {
    let _serial = serial();
    let t0 = Instant::now();
    let stop = AtomicBool::new(false);
    let ops = AtomicUsize::new(0);
    let shared = Mutex::new(Vec::with_capacity(SHARED_MAX));
    let mut rng = Rng::new(42);
    let inherited: Vec<Block> = (0..400)
        .map(|i| {
            let size = if i % 100 == 0 {
                3 << 20
            } else {
                [24, 700, 9000, 30_000, 100_000][i % 5]
            };
            Block::new(size, 16, rng.next_u64()).expect("alloc")
        })
        .collect();
    let mut failures = Vec::new();
    let mut forks = 0;
    let mut ops_at_forks = Vec::new();
    let mut child_time = Duration::ZERO;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|id| {
                let (stop, shared, ops) = (&stop, &shared, &ops);
                s.spawn(move || worker(id, mix, stop, shared, ops))
            })
            .collect();
        while ops.load(Ordering::Relaxed) < 1000 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for round in 0..FORKS {
            if t0.elapsed() > DEADLINE {
                break;
            }
            let full = round % 4 == 0;
            // SAFETY: the child only runs `child` (allocation, checks) and then `_exit`s; it
            // never returns into the test harness.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let code =
                    catch_unwind(AssertUnwindSafe(|| child(&inherited, round, full))).unwrap_or(90);
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(code) };
            }
            assert!(pid > 0, "fork failed: {}", std::io::Error::last_os_error());
            forks += 1;
            let forked = Instant::now();
            let status = wait_with_timeout(pid, CHILD_TIMEOUT);
            child_time = child_time.max(forked.elapsed());
            match status {
                None => failures.push(format!("fork {round}: child hung; killed")),
                Some(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => {}
                Some(st) => failures.push(format!("fork {round}: child {}", describe(st))),
            }
            ops_at_forks.push(ops.load(Ordering::Relaxed));
            // Land the next fork at a different point of the workers' work.
            std::thread::sleep(Duration::from_micros(rng.range(0, 2000) as u64));
        }
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().expect("worker panicked");
        }
    });
    for b in inherited {
        assert!(b.intact(), "parent's block corrupted");
        b.free();
    }
    let total_ops = ops.load(Ordering::Relaxed);
    println!(
        "{mix:?}: {forks} forks, {total_ops} worker operations, {:.2?} (slowest child \
         {child_time:.2?}); failures: {failures:?}",
        t0.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{mix:?}: children failed: {failures:#?}"
    );
    assert!(forks >= 20, "only {forks} forks before the deadline");
    assert!(
        ops_at_forks.last() > ops_at_forks.first(),
        "the workers made no progress while the main thread forked"
    );
}

#[test]
fn fork_while_threads_allocate() {
    fork_under_load(Mix::All);
}

#[test]
fn fork_while_threads_allocate_uncached_sizes() {
    fork_under_load(Mix::Uncached);
}

/// The minimal reproduction: two threads allocate 200 blocks of 1 KiB and free them, over and
/// over (each round overflows the class's 32-slot cache, so it flushes), while the main thread
/// forks children that do nothing but `_exit(0)`. The child's atfork handler flushes the
/// vanished threads' caches; it must never abort.
#[test]
fn fork_child_survives_cache_flushes() {
    let _serial = serial();
    let stop = AtomicBool::new(false);
    let mut died = Vec::new();
    let forks = 300;
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let v: Vec<Box<[u8; 1024]>> = (0..200).map(|_| Box::new([1; 1024])).collect();
                    drop(v);
                }
            });
        }
        for round in 0..forks {
            // SAFETY: the child does nothing but `_exit`.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(0) };
            }
            assert!(pid > 0, "fork failed: {}", std::io::Error::last_os_error());
            match wait_with_timeout(pid, CHILD_TIMEOUT) {
                Some(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => {}
                Some(st) => died.push(format!("fork {round}: {}", describe(st))),
                None => died.push(format!("fork {round}: hung")),
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(
        died.is_empty(),
        "{} of {forks} children died: {:?}",
        died.len(),
        &died[..died.len().min(5)]
    );
}

/// Set in the environment of a re-executed test binary: its constructor runs
/// [`fork_order_scenario`] and exits, before the test harness makes a thread.
const FORK_ORDER_ENV: &str = "SAMPALLOC_TEST_FORK_ORDER";

/// Allocates and frees 4,096 blocks of `N` bytes through the engine: more than a thread cache
/// holds, so the engine's locks are needed.
fn churn<const N: usize>() {
    let blocks: Vec<Box<[u8; N]>> = (0..4096).map(|_| Box::new([7; N])).collect();
    drop(blocks);
}

extern "C" fn prepare_allocates() {
    churn::<3000>();
}

extern "C" fn parent_allocates() {
    churn::<1500>();
}

extern "C" fn child_allocates() {
    churn::<700>();
}

/// A single-threaded program that starts the engine, registers fork handlers of its own that
/// allocate, makes a second thread and forks. glibc runs prepare handlers last-registered
/// first and the others in order, so the engine's handlers must have been registered before
/// the program's: at start-up, without the preload library's `__register_atfork` (had the
/// engine waited for the second thread, the fork would hang in the program's handlers). Exits
/// 0 when the fork and its child succeed, 1 if the child failed or hung, 3 if the parent hung.
fn fork_order_scenario() -> i32 {
    churn::<64>();
    // SAFETY: plain extern "C" functions, valid for the process's life.
    let r = unsafe {
        libc::pthread_atfork(
            Some(prepare_allocates),
            Some(parent_allocates),
            Some(child_allocates),
        )
    };
    if r != 0 {
        return 2;
    }
    // No panic may leave this function: it runs in a constructor.
    match std::thread::Builder::new().spawn(churn::<64>) {
        Ok(t) => t.join().unwrap_or(()),
        Err(_) => return 2,
    }
    // SAFETY: the default action of SIGALRM ends this process if a handler hangs in it.
    unsafe { libc::alarm(20) };
    // SAFETY: the child only `_exit`s (its handler ran inside `fork`).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    if pid < 0 {
        return 2;
    }
    match wait_with_timeout(pid, CHILD_TIMEOUT) {
        Some(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => 0,
        _ => 1,
    }
}

/// Runs [`fork_order_scenario`] instead of the tests when [`FORK_ORDER_ENV`] is set.
extern "C" fn fork_order_constructor() {
    if std::env::var_os(FORK_ORDER_ENV).is_some() {
        let code = fork_order_scenario();
        // SAFETY: ends the re-executed process with the scenario's result.
        unsafe { libc::_exit(code) };
    }
}

#[used]
#[link_section = ".init_array"]
static FORK_ORDER_CONSTRUCTOR: extern "C" fn() = fork_order_constructor;

/// Fork handlers that a program (using the engine as Rust's global allocator) registers after
/// the engine started and before its second thread, and that allocate: the fork succeeds,
/// because the engine registered its own at start-up. Runs in a re-executed copy of this
/// binary, whose constructor plays the program before the harness makes any thread.
#[test]
fn handlers_registered_after_start_up_come_after_the_engines() {
    let exe = std::env::current_exe().expect("the test binary");
    let status = std::process::Command::new(exe)
        .env(FORK_ORDER_ENV, "1")
        .status()
        .expect("re-execute the test binary");
    assert_eq!(
        status.code(),
        Some(0),
        "the fork hung or failed in the program's handlers: {status}"
    );
}
