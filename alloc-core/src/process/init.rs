//! Process-wide start-up, done once on the first allocation of any thread.
//!
//! The first part reads the configuration, sizes the arena set and creates the thread-exit
//! key. It allocates nothing (so it can run inside the very first `malloc`, which the dynamic
//! loader may make before any constructor). The second part, after the engine is marked ready,
//! calls into libc functions that may themselves allocate (`atexit`, and `pthread_atfork` if
//! the process already has threads); those re-entrant calls are then served normally.

use crate::base::config;
use crate::platform::{fork_guard, os};
use crate::pool::arena;
use crate::process::{fork, memory, stats};
use crate::thread;
use core::sync::atomic::{AtomicU8, Ordering};

const UNINIT: u8 = 0;
const RUNNING: u8 = 1;
const READY: u8 = 2;

#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static STATE: AtomicU8 = AtomicU8::new(UNINIT);

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
    // x86-64 pages are always 4 KiB; elsewhere, ask (a call that faults in libc pages).
    if !cfg!(target_arch = "x86_64") && os::kernel_page_size() != os::PAGE_SIZE {
        os::fatal("the kernel's page size is not 4 KiB; this build cannot run here");
    }
    config::load_from_env();
    // The arena counts wait for a second thread (see `arena::ensure_sized`).
    arena::warm_first_arena();
    thread::create_exit_key();
    thread::cache::init_free_key();
    memory::install();
    STATE.store(READY, Ordering::Release);

    // Calls that may allocate: the engine is ready to serve them now. The fork handlers are
    // registered here, or under the preload library once the process has a second thread or
    // another library registers its own (see `platform::fork_guard`).
    fork_guard::set_handlers(fork::prefork, fork::postfork_parent, fork::postfork_child);
    // SAFETY: `at_exit` is a plain extern "C" function valid for the process's life.
    unsafe { libc::atexit(at_exit) };
    crate::prof::trigger::install_signal_handler();
    if config::prof() {
        // Set the unwinder up now, not at the first sample (which would be skipped if another
        // thread were setting it up). It takes the loader's lock and allocates: no engine lock
        // is held here, and its allocations are served but not sampled.
        let _inside = thread::InProfiler::enter();
        crate::prof::unwind::init();
    }
}

extern "C" fn at_exit() {
    crate::prof::trigger::at_exit();
    if config::stats_print() {
        stats::print(2);
    }
}
