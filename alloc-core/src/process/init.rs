//! Process-wide start-up, done once on the first allocation of any thread.
//!
//! The first part reads the configuration, sizes the arena set and creates the thread-exit
//! key. It allocates nothing (so it can run inside the very first `malloc`, which the dynamic
//! loader may make before any constructor). The second part, after the engine is marked ready,
//! calls into libc functions that may themselves allocate (`pthread_atfork`, `atexit`); those
//! re-entrant calls are then served normally.

use crate::base::config;
use crate::platform::os;
use crate::pool::arena;
use crate::process::{fork, stats};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

const UNINIT: u8 = 0;
const RUNNING: u8 = 1;
const READY: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static THREAD_KEY: AtomicU32 = AtomicU32::new(0);
static FREE_KEY: AtomicU64 = AtomicU64::new(0);

/// Makes sure start-up has run; waits if another thread is running it.
#[inline]
pub fn ensure_ready() {
    if STATE.load(Ordering::Acquire) != READY {
        init_slow();
    }
}

#[cold]
fn init_slow() {
    if STATE
        .compare_exchange(UNINIT, RUNNING, Ordering::Acquire, Ordering::Acquire)
        .is_err()
    {
        while STATE.load(Ordering::Acquire) != READY {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
        return;
    }
    if os::kernel_page_size() != os::PAGE_SIZE {
        os::fatal("the kernel's page size is not 4 KiB; this build cannot run here");
    }
    config::load_from_env();
    let n = match config::narenas() {
        0 => 4 * os::cpu_count(),
        n => n,
    };
    arena::set_narenas(n);
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-parameter; glibc's pthread_key_create does not allocate.
    if unsafe { libc::pthread_key_create(&mut key, Some(crate::thread::on_thread_exit)) } != 0 {
        os::fatal("cannot create the thread-exit key");
    }
    THREAD_KEY.store(key, Ordering::Relaxed);
    FREE_KEY.store(make_free_key(), Ordering::Relaxed);
    STATE.store(READY, Ordering::Release);

    // Calls that may allocate: the engine is ready to serve them now.
    // SAFETY: the handlers are plain extern "C" functions valid for the process's life.
    unsafe {
        libc::pthread_atfork(
            Some(fork::prefork),
            Some(fork::postfork_parent),
            Some(fork::postfork_child),
        );
        libc::atexit(at_exit);
    }
    crate::prof::table::install_signal_handler();
    if config::prof() {
        // Set the unwinder up now, not at the first sample (which would be skipped if another
        // thread were setting it up). It takes the loader's lock and allocates: no engine lock
        // is held here, and its allocations are served but not sampled.
        let _inside = crate::prof::dump::InProfiler::enter();
        crate::prof::unwind::init();
    }
}

extern "C" fn at_exit() {
    crate::prof::table::at_exit();
    if config::stats_print() {
        stats::print(2);
    }
}

/// The pthread key whose destructor cleans up exiting threads.
pub fn thread_key() -> libc::pthread_key_t {
    THREAD_KEY.load(Ordering::Relaxed)
}

/// The value cached free blocks carry (see `thread_cache`).
pub fn free_key() -> u64 {
    FREE_KEY.load(Ordering::Relaxed)
}

/// A per-process value unlikely to appear in user data: address-space layout, time and pid
/// mixed together (no allocation, no system entropy source needed).
fn make_free_key() -> u64 {
    let local = 0u8;
    let mut x = (&local as *const u8 as u64) ^ (os::now_ms() << 32);
    // SAFETY: getpid has no preconditions.
    x ^= unsafe { libc::getpid() } as u64;
    x ^= make_free_key as *const () as usize as u64;
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    x | 1
}
