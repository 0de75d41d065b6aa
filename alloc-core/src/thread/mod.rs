//! Per-thread state: where the thread cache pointer lives, and the thread's life cycle.
//!
//! ```text
//!  Uninit ──first malloc/free──> Initializing ──cache ready──> Live
//!  Live ──pthread key destructor (thread exit)──> TearingDown ──cache flushed──> Dead
//! ```
//!
//! `Live` threads use their cache. A call made in any other state (the thread is setting up
//! and a libc call re-entered malloc, or it is exiting and a later destructor allocates) is
//! served by the locked fallback path straight from an arena.
//!
//! The state is one small constant-initialised block of thread-local storage with no
//! destructor. On x86-64 Linux it is reached with the initial-exec TLS model written out in
//! assembly, because the dynamic model (`__tls_get_addr`) may call malloc, which a malloc
//! replacement loaded with `LD_PRELOAD` must never do. Thread exit is seen through a pthread key
//! destructor registered at start-up.
//!
//! Layer 6, per thread: this state, the thread cache (`cache`), the event countdown
//! (`sampler`) and the sampler's memo of its last stack walk (`trace_memo`). Uses `pool` and
//! below.

use crate::pool::arena;
pub mod cache;
pub mod sampler;
pub mod trace_memo;

use crate::platform::os;
use crate::thread::cache::{self as thread_cache, ThreadCache};
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

/// The pthread key whose destructor cleans up exiting threads.
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static EXIT_KEY: AtomicU32 = AtomicU32::new(0);

/// Creates the thread-exit key (once, at start-up, before any thread is set up).
pub fn create_exit_key() {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-parameter; glibc's pthread_key_create does not allocate.
    if unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } != 0 {
        os::fatal("cannot create the thread-exit key");
    }
    EXIT_KEY.store(key, Ordering::Relaxed);
}

/// The phases of a thread's life (see the module docs).
pub mod phase {
    /// No allocation seen yet.
    pub const UNINIT: u8 = 0;
    /// Setting up the thread cache.
    pub const INITIALIZING: u8 = 1;
    /// Using the thread cache.
    pub const LIVE: u8 = 2;
    /// Flushing the cache at thread exit.
    pub const TEARING_DOWN: u8 = 3;
    /// After exit clean-up; only the fallback path is used.
    pub const DEAD: u8 = 4;
}

/// The thread-local block. Constant-initialised to zeroes (null cache, `UNINIT`).
#[repr(C)]
pub struct ThreadState {
    /// The cache, non-null exactly when the phase is `LIVE`.
    pub cache: *mut ThreadCache,
    /// One of [`phase`].
    pub phase: u8,
    /// Set while this thread is inside the profiler, so its own allocations are not sampled.
    pub in_profiler: u8,
}

// `cache` reads the cache pointer at offset 0 of the block.
const _: () = assert!(core::mem::offset_of!(ThreadState, cache) == 0);

crate::platform::tls::initial_exec_block!(pub fn state -> ThreadState, "sampalloc_core_thread_state");
crate::platform::tls::initial_exec_first_word!(fn state_first_word, state, "sampalloc_core_thread_state");

/// The calling thread's cache, or null when it is not `LIVE`: the block's first word, read
/// directly through the thread pointer, on every `malloc` and `free`.
#[inline(always)]
pub fn cache() -> *mut ThreadCache {
    state_first_word() as *mut ThreadCache
}

/// The calling thread's cache, setting the thread up if this is its first call. Null when the
/// thread must use the fallback path.
#[cold]
pub fn cache_or_init() -> *mut ThreadCache {
    let s = state();
    // SAFETY: the block belongs to the calling thread.
    unsafe {
        if (*s).in_profiler != 0 {
            // The profiler's own allocations (see `InProfiler`), and set-up waits until the
            // thread leaves it.
            return ptr::null_mut();
        }
        match (*s).phase {
            phase::LIVE => (*s).cache,
            phase::UNINIT => init(s),
            _ => ptr::null_mut(),
        }
    }
}

#[cold]
unsafe fn init(s: *mut ThreadState) -> *mut ThreadCache {
    // SAFETY: the block belongs to the calling thread.
    unsafe {
        (*s).phase = phase::INITIALIZING;
        // A non-null value makes the key's destructor run at thread exit. This may call
        // calloc (for high key numbers); the INITIALIZING phase sends that to the fallback.
        libc::pthread_setspecific(
            EXIT_KEY.load(Ordering::Relaxed),
            core::ptr::dangling::<libc::c_void>(),
        );
        let arenas = arena::assign_thread();
        let tc = thread_cache::acquire(arenas, thread_cache::free_key());
        if tc.is_null() {
            arena::release_thread(arenas);
            (*s).phase = phase::UNINIT; // try again on the next call
            return tc;
        }
        (*s).cache = tc;
        (*s).phase = phase::LIVE;
        tc
    }
}

/// The pthread key destructor: returns the exiting thread's cache.
pub extern "C" fn on_thread_exit(_value: *mut libc::c_void) {
    let s = state();
    // SAFETY: the block belongs to the calling (exiting) thread.
    unsafe {
        if (*s).phase != phase::LIVE {
            return;
        }
        (*s).phase = phase::TEARING_DOWN;
        let tc = (*s).cache;
        (*s).cache = ptr::null_mut();
        let arenas = (*tc).arenas();
        thread_cache::release(tc);
        arena::release_thread(arenas);
        (*s).phase = phase::DEAD;
    }
}

/// Marks the calling thread as inside the profiler until dropped: its allocations are not
/// sampled, do not serve pending dumps, and do not use its cache. The cache pointer reads
/// null meanwhile, so `malloc` and `free` leave their fast paths for the fallback path, which
/// serves the profiler from an arena of its own (`pool::arena::profiler_arena`): the
/// profiler's memory then never takes a block the program would have had, and the fast paths
/// pay nothing for it. The sampling path keeps the cache it was called with.
pub struct InProfiler {
    previous: u8,
    /// The thread's cache, set aside by the outermost guard.
    cache: *mut ThreadCache,
}

impl InProfiler {
    /// Enters.
    pub fn enter() -> Self {
        let s = state();
        // SAFETY: the thread's own block.
        unsafe {
            let previous = (*s).in_profiler;
            (*s).in_profiler = 1;
            let cache = if previous == 0 {
                core::mem::replace(&mut (*s).cache, ptr::null_mut())
            } else {
                ptr::null_mut()
            };
            InProfiler { previous, cache }
        }
    }

    /// Whether the calling thread is inside the profiler.
    #[inline]
    pub fn inside() -> bool {
        // SAFETY: the thread's own block.
        unsafe { (*state()).in_profiler != 0 }
    }
}

impl Drop for InProfiler {
    fn drop(&mut self) {
        let s = state();
        // SAFETY: the thread's own block. No set-up or exit ran while the cache was aside
        // (`cache_or_init` starts none inside the profiler), so it is the thread's still.
        unsafe {
            (*s).in_profiler = self.previous;
            if self.previous == 0 {
                (*s).cache = self.cache;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::segment::Segment;
    use crate::api::alloc::malloc;
    use crate::api::free::free;

    /// The arena whose segment holds `p`.
    fn arena_of(p: *mut u8) -> usize {
        // SAFETY: `p` is a live block of ours, in one of our segments.
        unsafe { arena::of_segment(Segment::of(p as usize)).index() }
    }

    /// Inside the profiler, blocks come from the profiler's arena, not from the thread's
    /// cache: the block the program gets next is the one it would have got anyway. Leaving
    /// (the outermost guard only) gives the thread its cache back.
    #[test]
    fn the_profiler_allocates_apart_from_the_program() {
        // No other test may switch sampling on meanwhile: a sampled block is not the top one.
        let _options = crate::base::config::hold_options();
        let warm = malloc(200);
        assert!(!cache().is_null());
        // SAFETY: a live block of ours, freed once.
        unsafe { free(warm) };
        let profiler_arena = arena::profiler_arena().index();
        let (inner, outer);
        {
            let _outer_guard = InProfiler::enter();
            assert!(cache().is_null());
            assert!(InProfiler::inside());
            outer = malloc(200);
            {
                let _inner_guard = InProfiler::enter();
                inner = malloc(5000);
            }
            // Still inside: the inner guard must not give the cache back.
            assert!(cache().is_null());
        }
        assert!(!InProfiler::inside());
        assert!(!cache().is_null());
        assert_eq!(arena_of(outer), profiler_arena);
        assert_eq!(arena_of(inner), profiler_arena);
        // The program's next block of that class is the one the thread freed last.
        let again = malloc(200);
        assert_eq!(again, warm);
        assert_ne!(arena_of(again), profiler_arena);
        // SAFETY: live blocks of ours, each freed once (the profiler's from outside it, too).
        unsafe {
            free(again);
            free(outer);
            free(inner);
        }
    }
}
