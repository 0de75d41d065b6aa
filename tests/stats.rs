//! Statistics: `sampalloc::stats::snapshot()` and `stats_print`.
//!
//! Models a program that watches its own memory through the stats API: it holds known
//! allocation patterns and checks the figures follow them — `allocated` rises by what 10,000
//! live 1 KiB blocks and three 5 MiB huge blocks hold and falls back when they are freed; the
//! per-class `live` and `requests` counts and the huge counters match the requests made, also
//! for requests made by threads that have since exited (`requests` counts "allocation requests
//! served so far"); `threads` counts live threads; the figures keep their order (allocated ≤
//! active ≤ resident ≤ mapped, retained ≤ mapped). And `SAMPALLOC_CONF=stats_print:true`
//! prints the report on stderr at exit (checked in a child process running this binary).
//!
//! The tests take a static lock so that one test's allocations do not show in another's deltas.

use sampalloc::stats::{snapshot, Snapshot};
use sampalloc::SampAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::{Mutex, MutexGuard};

#[global_allocator]
static GLOBAL: SampAlloc = SampAlloc;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The index of the size class of exactly `size` bytes.
fn class(s: &Snapshot, size: usize) -> usize {
    s.classes
        .iter()
        .position(|c| c.size == size)
        .unwrap_or_else(|| panic!("no size class of {size} bytes"))
}

fn alloc(size: usize) -> *mut u8 {
    // SAFETY: a non-zero layout.
    let p = unsafe { GLOBAL.alloc(Layout::from_size_align(size, 16).unwrap()) };
    assert!(!p.is_null());
    // SAFETY: a fresh block of at least one byte.
    unsafe { p.write(1) };
    p
}

fn free(p: *mut u8, size: usize) {
    // SAFETY: allocated by `alloc(size)`, freed once.
    unsafe { GLOBAL.dealloc(p, Layout::from_size_align(size, 16).unwrap()) };
}

fn check_order(s: &Snapshot) {
    assert!(s.allocated <= s.active, "allocated > active: {s:?}");
    assert!(s.active <= s.resident, "active > resident: {s:?}");
    assert!(s.resident <= s.mapped, "resident > mapped: {s:?}");
    assert!(s.retained <= s.mapped, "retained > mapped: {s:?}");
    assert!(s.metadata <= s.resident, "metadata > resident: {s:?}");
}

#[test]
fn allocated_follows_live_small_blocks() {
    let _serial = serial();
    const N: usize = 10_000;
    const SIZE: usize = 1024;
    let before = snapshot();
    let c = class(&before, SIZE);
    let blocks: Vec<*mut u8> = (0..N).map(|_| alloc(SIZE)).collect();
    // SAFETY: a live block of ours.
    assert_eq!(unsafe { sampalloc::usable_size(blocks[0]) }, SIZE);
    let mid = snapshot();
    for &p in &blocks {
        free(p, SIZE);
    }
    drop(blocks);
    let after = snapshot();
    check_order(&before);
    check_order(&mid);
    check_order(&after);

    let held = N * SIZE;
    let rise = mid.allocated as isize - before.allocated as isize;
    // The vector of pointers (80 KB) and the harness's odd allocation also count, and the
    // harness's other threads free a little meanwhile (as in `huge_blocks_are_counted`: up to
    // 86 KB seen).
    assert!(
        (held as isize - (512 << 10)..held as isize + (512 << 10)).contains(&rise),
        "allocated rose by {rise}, expected about {held}"
    );
    assert!(mid.classes[c].live >= before.classes[c].live + N);
    assert!(mid.classes[c].requests >= before.classes[c].requests + N as u64);
    // Other classes' kept empty slabs (an earlier test's) may decay and leave meanwhile (this
    // thread's ticks purge them).
    assert!(
        mid.active + (256 << 10) >= before.active + held,
        "active rose from {} to {} for {held} bytes held",
        before.active,
        mid.active
    );
    let fall = mid.allocated as isize - after.allocated as isize;
    assert!(
        (held as isize..held as isize + (512 << 10)).contains(&fall),
        "allocated fell by {fall}, expected about {held}"
    );
    // As above: other threads' odd allocations, a cache flushed by a thread as it exits.
    assert!(
        after.allocated.abs_diff(before.allocated) <= 256 << 10,
        "allocated went from {} to {} and back to {}",
        before.allocated,
        mid.allocated,
        after.allocated
    );
    assert_eq!(after.classes[c].live, before.classes[c].live);
}

#[test]
fn huge_blocks_are_counted() {
    let _serial = serial();
    const SIZE: usize = 5 << 20;
    let before = snapshot();
    let blocks: Vec<*mut u8> = (0..3).map(|_| alloc(SIZE)).collect();
    let mid = snapshot();
    for &p in &blocks {
        free(p, SIZE);
    }
    let after = snapshot();
    check_order(&mid);
    assert_eq!(mid.huge_allocated - before.huge_allocated, 3 * SIZE);
    assert_eq!(mid.huge_requests - before.huge_requests, 3);
    // The harness's own threads allocate and free a little meanwhile (a few hundred KB seen).
    let rise = mid.allocated as i64 - before.allocated as i64;
    assert!(
        rise.abs_diff(3 * SIZE as i64) <= 512 << 10,
        "allocated rose by {rise}"
    );
    // Resident memory counts the huge blocks' pages (compared within one snapshot: an exiting
    // harness thread's arena may purge between two).
    assert!(mid.resident >= mid.dirty + mid.metadata + 3 * SIZE);
    assert_eq!(after.huge_allocated, before.huge_allocated);
    assert!(after.allocated.abs_diff(before.allocated) <= 512 << 10);
}

#[test]
fn requests_are_counted_per_class() {
    let _serial = serial();
    let before = snapshot();
    let (small, large) = (2560, 96 << 10);
    let (cs, cl) = (class(&before, small), class(&before, large));
    for _ in 0..5000 {
        free(alloc(small), small);
    }
    for _ in 0..100 {
        free(alloc(large), large);
    }
    let after = snapshot();
    let ds = after.classes[cs].requests - before.classes[cs].requests;
    let dl = after.classes[cl].requests - before.classes[cl].requests;
    assert!((5000..5100).contains(&ds), "{ds} requests of {small} B");
    assert!((100..110).contains(&dl), "{dl} requests of {large} B");
}

#[test]
fn requests_of_exited_threads_still_count() {
    let _serial = serial();
    let size = 3584;
    let before = snapshot();
    let c = class(&before, size);
    std::thread::spawn(move || {
        for _ in 0..5000 {
            free(alloc(size), size);
        }
    })
    .join()
    .unwrap();
    let after = snapshot();
    let d = after.classes[c].requests as i64 - before.classes[c].requests as i64;
    assert!(
        d >= 5000,
        "class {size}: requests went from {} to {} after a thread made 5000 and exited",
        before.classes[c].requests,
        after.classes[c].requests
    );
}

#[test]
fn threads_are_counted_while_alive() {
    let _serial = serial();
    // Test-harness threads of other tests start and exit at any time, so one observation may
    // be disturbed; a correct count shows up cleanly within a few tries, a wrong one never.
    let mut seen = Vec::new();
    for _ in 0..10 {
        let before = snapshot().threads;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            free(alloc(100), 100);
            ready_tx.send(()).unwrap();
            rx.recv().unwrap();
        });
        ready_rx.recv().unwrap();
        let during = snapshot().threads;
        tx.send(()).unwrap();
        t.join().unwrap();
        let after = snapshot().threads;
        if during == before + 1 && after == before {
            return;
        }
        seen.push((before, during, after));
    }
    panic!("thread count never went up by one and back: (before, during, after) = {seen:?}");
}

/// Run only in the child process of `stats_print_at_exit`: allocates a recognisable pattern
/// (777 blocks of 1536 bytes, kept live until exit).
#[test]
#[ignore = "helper: run by stats_print_at_exit in a child process"]
fn stats_print_child() {
    let blocks: Vec<usize> = (0..777).map(|_| alloc(1536) as usize).collect();
    std::mem::forget(blocks);
}

#[test]
fn stats_print_at_exit() {
    // Its own allocations (spawning the child) would disturb the other tests' before/after
    // figures: keep it serial too.
    let _serial = serial();
    let stderr = run_child("stats_print_child", Some("stats_print:true,narenas:8"));
    // Threads may be spread over 8 arenas, but the child's few threads used only some: the
    // others were never touched (ticks and purges visit the used ones only).
    assert!(stderr.contains("arenas: 8 "), "{stderr}");
    let used = report_field(&stderr, "arenas used: ");
    assert!((1..=3).contains(&used), "{used} arenas used: {stderr}");
    assert!(
        stderr.contains("___ sampalloc statistics ___"),
        "no report on stderr: {stderr}"
    );
    for field in [
        "allocated: ",
        "resident: ",
        "mapped: ",
        "threads: ",
        "segments: ",
    ] {
        assert!(
            stderr.contains(field),
            "no {field:?} in the report: {stderr}"
        );
    }
    // The class table has a row for 1536-byte blocks with at least the 777 live ones.
    let row = stderr
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 7 && f[1] == "1536")
        .unwrap_or_else(|| panic!("no row for class 1536: {stderr}"));
    let requests: u64 = row[2].parse().expect("requests column");
    let live: u64 = row[3].parse().expect("live column");
    assert!(live >= 777, "row {row:?}");
    // The requests were made by a test thread that has exited by then: they still count.
    assert!(requests >= 777, "row {row:?}");
    // Without the option, nothing is printed.
    let quiet = run_child("stats_print_child", None);
    assert!(!quiet.contains("sampalloc statistics"), "{quiet}");
}

/// Runs the ignored test `name` of this binary in a child process with `SAMPALLOC_CONF` set to
/// `conf` (or unset); asserts it succeeded and returns its stderr.
fn run_child(name: &str, conf: Option<&str>) -> String {
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--ignored", "--exact", name, "--test-threads=1"]);
    match conf {
        Some(c) => cmd.env("SAMPALLOC_CONF", c),
        None => cmd.env_remove("SAMPALLOC_CONF"),
    };
    let out = cmd.output().expect("run the test binary");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "child {name} failed: {stderr}");
    stderr
}

/// The number after `name` in a statistics report.
fn report_field(report: &str, name: &str) -> usize {
    report
        .split(name)
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name:?} in the report: {report}"))
}

/// Thread caches grow only for threads that allocate from a class too: a thread that only frees
/// blocks other threads allocated (a consumer) keeps its initial stack and passes the rest on,
/// while one that allocates and frees in batches grows its stack to hold a batch.
#[test]
fn only_allocating_threads_grow_their_caches() {
    let _serial = serial();
    const SIZE: usize = 1536; // a class little used elsewhere: initial stack 21 blocks, 170 at most
    const N: usize = 2000;
    let cached = |s: &Snapshot| s.classes[class(s, SIZE)].cached;
    let blocks: Vec<usize> = (0..N).map(|_| alloc(SIZE) as usize).collect();
    let consumer = std::thread::spawn(move || {
        let before = snapshot();
        for &p in &blocks {
            free(p as *mut u8, SIZE);
        }
        cached(&snapshot()) as i64 - cached(&before) as i64
    });
    let consumer_growth = consumer.join().unwrap();
    // Its initial stack, and what its flushes park in the arena's transfer array (at most
    // 64 KiB of a class) for a producer's next refill.
    assert!(
        consumer_growth <= 64 + (64 << 10) as i64 / SIZE as i64,
        "a thread that only frees holds {consumer_growth} more cached blocks of {SIZE} B"
    );
    let batcher = std::thread::spawn(move || {
        let before = snapshot();
        for _ in 0..20 {
            let batch: Vec<*mut u8> = (0..150).map(|_| alloc(SIZE)).collect();
            for p in batch {
                free(p, SIZE);
            }
        }
        cached(&snapshot()) as i64 - cached(&before) as i64
    });
    let batcher_growth = batcher.join().unwrap();
    assert!(
        batcher_growth >= 100,
        "a thread freeing batches of 150 blocks of {SIZE} B caches only {batcher_growth} more"
    );
}

/// A thread that allocates a class and never frees it (a producer) takes its whole stack at
/// each refill once a tick has seen it do so; before, half the stack (so that frees find room).
#[test]
fn a_producer_refills_its_whole_stack() {
    let _serial = serial();
    run_child("producer_child", None);
}

#[test]
#[ignore = "helper: run by a_producer_refills_its_whole_stack in a child process (alone: the \
            figures count every thread's cached blocks)"]
fn producer_child() {
    const SIZE: usize = 1280; // a class no other test uses: a stack of 25 blocks
    let cached = |s: &Snapshot| s.classes[class(s, SIZE)].cached;
    let most_cached = std::thread::spawn(move || {
        let mut blocks = Vec::with_capacity(4100);
        let mut most_before = 0;
        for i in 0..4000 {
            blocks.push(alloc(SIZE));
            // The first 4 MiB allocated bring a tick.
            if i < 100 {
                most_before = most_before.max(cached(&snapshot()));
            }
        }
        let mut most = 0;
        for _ in 0..100 {
            blocks.push(alloc(SIZE));
            most = most.max(cached(&snapshot()));
        }
        for p in blocks {
            free(p, SIZE);
        }
        (most_before, most)
    });
    let (before_tick, after_tick) = most_cached.join().unwrap();
    assert!(
        before_tick <= 12,
        "before a tick, {before_tick} cached after a refill"
    );
    assert!(
        after_tick >= 20,
        "a producer's refill left only {after_tick} cached"
    );
}

/// Bytes cached of the classes of `sizes`, in every thread cache.
fn cached_bytes(s: &Snapshot, sizes: &[usize]) -> usize {
    sizes
        .iter()
        .map(|&n| s.classes[class(s, n)].cached * n)
        .sum()
}

/// Child of `a_lone_thread_caches_its_batches_and_gives_back_its_share`: a thread that
/// allocates and frees batches of 2.3 MiB while it is alone (beside the harness's main
/// thread) caches well over the 1 MiB every thread may grow by; once seven more threads live,
/// its next ticks give back down to its share; a child forked then, alone, may grow again.
#[test]
#[ignore = "helper: run by a_lone_thread_caches_its_batches_and_gives_back_its_share"]
fn lone_batcher_child() {
    const SIZES: [usize; 3] = [512, 768, 1024];
    const N: usize = 1000;
    const MIB: usize = 1 << 20;
    let before = cached_bytes(&snapshot(), &SIZES);
    assert!(snapshot().threads <= 2, "not alone: {:?}", snapshot());
    for _ in 0..8 {
        let batch: Vec<(*mut u8, usize)> =
            (0..N).flat_map(|_| SIZES.map(|n| (alloc(n), n))).collect();
        for (p, n) in batch {
            free(p, n);
        }
    }
    let alone = cached_bytes(&snapshot(), &SIZES) - before;
    assert!(
        alone >= 3 * MIB / 2,
        "alone, batches of 2.3 MiB left only {alone} bytes cached"
    );
    let peers = 7;
    let started = std::sync::Barrier::new(peers + 1);
    let done = std::sync::Barrier::new(peers + 1);
    std::thread::scope(|s| {
        for _ in 0..peers {
            s.spawn(|| {
                let p = alloc(64);
                started.wait();
                done.wait();
                free(p, 64);
            });
        }
        started.wait();
        pass_ticks(12 << 20);
        let shared = cached_bytes(&snapshot(), &SIZES) - before;
        // A child forked now has one thread: its allowance is the whole again.
        // SAFETY: fork has no preconditions; the child only allocates (the engine's fork
        // handlers make that safe) and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            for _ in 0..8 {
                let batch: Vec<(*mut u8, usize)> =
                    (0..N).flat_map(|_| SIZES.map(|n| (alloc(n), n))).collect();
                for (p, n) in batch {
                    free(p, n);
                }
            }
            let held = cached_bytes(&snapshot(), &SIZES);
            // SAFETY: leaves the child at once.
            unsafe { libc::_exit(if held >= 2 * MIB { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        done.wait();
        assert!(
            shared <= MIB,
            "with {peers} more threads live, {shared} bytes are still cached"
        );
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "a forked child, alone, did not cache its batches (status {status})"
        );
    });
}

/// Thread caches share a growth allowance: a thread alone may hold batches of a few MiB in its
/// cache, as a batch job needs, and gives back to its share when more threads start.
#[test]
fn a_lone_thread_caches_its_batches_and_gives_back_its_share() {
    let _serial = serial();
    run_child("lone_batcher_child", None);
}

/// Allocates and frees `bytes` in 1 MiB blocks: enough allocation to pass the thread's ticks
/// (one each 4 MiB allocated) without touching the small classes.
fn pass_ticks(bytes: usize) {
    const MIB: usize = 1 << 20;
    for _ in 0..bytes / MIB {
        free(alloc(MIB), MIB);
    }
}

/// A grown stack is kept while its class is used, however many ticks fall between the rounds
/// that use it (a batch job using several classes in turn), and shrinks back once the class
/// has been idle for `dirty_decay_ms` (1 s by default).
#[test]
fn grown_caches_last_while_used_and_shrink_when_idle() {
    let _serial = serial();
    const SIZE: usize = 256; // initial stack 128 blocks, 1024 at most
    const N: usize = 1000;
    let cached = |s: &Snapshot| s.classes[class(s, SIZE)].cached as i64;
    let (in_use, idle) = std::thread::spawn(move || {
        let before = cached(&snapshot());
        for _ in 0..6 {
            let batch: Vec<*mut u8> = (0..N).map(|_| alloc(SIZE)).collect();
            for p in batch {
                free(p, SIZE);
            }
            pass_ticks(12 << 20);
        }
        let in_use = cached(&snapshot()) - before;
        std::thread::sleep(std::time::Duration::from_millis(1100));
        pass_ticks(12 << 20);
        (in_use, cached(&snapshot()) - before)
    })
    .join()
    .unwrap();
    assert!(
        in_use >= 900,
        "after rounds of {N} blocks of {SIZE} B with ticks between, the cache holds only {in_use}"
    );
    assert!(
        idle <= 600,
        "a class idle for over a decay period still has {idle} blocks of {SIZE} B cached"
    );
}

/// Slabs that empty go to their bin's empty list, not back to the page heap, so refilling the
/// class maps no new slabs; a full purge releases them.
#[test]
fn empty_slabs_are_kept_for_reuse_until_purged() {
    let _serial = serial();
    const SIZE: usize = 3072; // 4 to a 3-page slab; the stack holds 85 at most
    const N: usize = 1000;
    let c = |s: &Snapshot| s.classes[class(s, SIZE)];
    std::thread::spawn(move || {
        let first: Vec<*mut u8> = (0..N).map(|_| alloc(SIZE)).collect();
        let full = c(&snapshot());
        for p in first {
            free(p, SIZE);
        }
        let emptied = c(&snapshot());
        assert!(
            emptied.empty_slabs >= 100,
            "freeing {N} blocks of {SIZE} B kept {} empty slabs: {emptied:?}",
            emptied.empty_slabs
        );
        assert_eq!(emptied.slabs, full.slabs, "slabs were released at once");
        let again: Vec<*mut u8> = (0..N).map(|_| alloc(SIZE)).collect();
        let refilled = c(&snapshot());
        assert_eq!(
            refilled.slabs, full.slabs,
            "refilling the class made new slabs instead of reusing the empty ones"
        );
        for p in again {
            free(p, SIZE);
        }
        sampalloc::purge(true);
        let purged = c(&snapshot());
        assert_eq!(
            purged.empty_slabs, 0,
            "a full purge kept empty slabs: {purged:?}"
        );
        assert!(
            purged.slabs < full.slabs,
            "a full purge kept the slabs: {purged:?}"
        );
    })
    .join()
    .unwrap();
}

/// Child of `threads_beyond_the_cpus_share_an_arena_per_cpu`: more threads than CPUs (four
/// times as many, plus one), alive together, each allocating.
#[test]
#[ignore = "helper: run by threads_beyond_the_cpus_share_an_arena_per_cpu in a child process"]
fn many_threads_child() {
    let n = 4 * cpus() + 1;
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        for _ in 0..n {
            s.spawn(|| {
                let p = alloc(64) as usize;
                barrier.wait();
                // SAFETY: `p` came from `alloc(64)` and is freed once.
                unsafe { GLOBAL.dealloc(p as *mut u8, Layout::from_size_align(64, 8).unwrap()) };
            });
        }
    });
}

/// The CPUs this process may run on, as the engine counts them.
fn cpus() -> usize {
    // SAFETY: `set` is a plain bit set the kernel fills in.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        libc::CPU_COUNT(&set) as usize
    }
}

/// By default threads are spread over one line arena per CPU, and threads beyond them share
/// those; the classes of a cache line and more come from one shared arena per two CPUs.
#[test]
fn threads_beyond_the_cpus_share_an_arena_per_cpu() {
    let _serial = serial();
    let stderr = run_child("many_threads_child", Some("stats_print:true"));
    let cpus = cpus();
    assert_eq!(report_field(&stderr, "arenas: "), cpus, "{stderr}");
    assert_eq!(
        report_field(&stderr, "shared arenas: "),
        cpus.div_ceil(2),
        "{stderr}"
    );
    assert_eq!(report_field(&stderr, "arenas used: "), cpus, "{stderr}");
}

/// Child of `threads_running_together_share_memory_but_not_cache_lines`: two threads, alive
/// together, each allocate a block smaller than a cache line and a larger one, and print the
/// addresses.
#[test]
#[ignore = "helper: run by threads_running_together_share_memory_but_not_cache_lines"]
fn two_threads_child() {
    let barrier = std::sync::Barrier::new(2);
    let blocks: Vec<(usize, usize)> = std::thread::scope(|s| {
        let spawn = || {
            s.spawn(|| {
                let small = alloc(16) as usize;
                let large = alloc(256) as usize;
                // Both threads hold their arenas until both have allocated.
                barrier.wait();
                (small, large)
            })
        };
        let (a, b) = (spawn(), spawn());
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    // Straight to stderr: the test harness captures `eprintln!`.
    use std::io::Write;
    for (small, large) in blocks {
        writeln!(std::io::stderr(), "small {small} large {large}").unwrap();
    }
}

/// With one shared arena (`narenas:1`), two threads running at once take their 256-byte blocks
/// from the same arena's segment, but their 16-byte blocks from line arenas of their own (on a
/// machine with two CPUs or more), so they never share a cache line: the guard against passive
/// false sharing still tells them apart.
#[test]
fn threads_running_together_share_memory_but_not_cache_lines() {
    let _serial = serial();
    let stderr = run_child("two_threads_child", Some("narenas:1"));
    let blocks: Vec<(usize, usize)> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("small "))
        .map(|l| {
            let (small, large) = l.split_once(" large ").expect("two numbers");
            (small.parse().unwrap(), large.parse().unwrap())
        })
        .collect();
    let [(small_a, large_a), (small_b, large_b)] = blocks[..] else {
        panic!("two threads' blocks: {stderr}");
    };
    let segment = |p: usize| p >> 22;
    assert_eq!(
        segment(large_a),
        segment(large_b),
        "one shared arena: {stderr}"
    );
    if cpus() >= 2 {
        assert_ne!(segment(small_a), segment(small_b), "line arenas: {stderr}");
        assert_ne!(small_a / 64, small_b / 64, "{stderr}");
    } else {
        assert_eq!(
            segment(small_a),
            segment(small_b),
            "one CPU, one arena: {stderr}"
        );
    }
}
