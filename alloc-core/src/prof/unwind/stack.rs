//! The per-thread side of stack capture: a small initial-exec TLS block holding the thread's
//! unwind cache, its cached stack bounds and a re-entrancy flag, and the thread-exit hook that
//! frees the cache.
//!
//! The block is constant-initialised to zeroes, has no destructor and is reached without
//! `__tls_get_addr` (the same technique as `crate::thread`), so touching it can never allocate.
//! The cache itself (framehop's rule cache and gimli's unwind context, about 30 KiB) is boxed
//! the first time the thread meets code whose rule the process's table (`rules`) lacks, and
//! freed by a pthread key destructor at thread exit.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use framehop::x86_64::CacheX86_64;

/// The thread's framehop cache: its rule cache plus gimli's fixed-size unwind context. Built
/// when the thread first meets code whose rule the process's table (`rules`) lacks.
pub(super) type Cache = CacheX86_64<super::modules::LeanCfi>;

/// Stack that must be free below the caller of `capture` for a walk; with less, the sample is
/// skipped. A walk that misses framehop's rule cache (gimli evaluating CFI) was measured at
/// 3.2–3.4 KiB below the caller (release and test builds, see the `stack_use` test); this
/// leaves room for DWARF expressions and compiler differences.
pub const MIN_FREE_STACK: usize = 6 * 1024;

/// Stack that must be free to create the thread's cache (framehop builds the ~14 KiB cache by
/// value before boxing it: an 8 KiB frame), to initialise, or to refresh the module list (libc's
/// `dl_iterate_phdr`, the allocator, framehop's module set-up). With less, a capture skips
/// set-up and walks with what it has; set-up waits for a sample on a roomy stack.
pub(super) const MIN_FREE_STACK_FOR_SETUP: usize = 64 * 1024;

/// The thread-local block.
#[repr(C)]
pub(super) struct UnwindTls {
    /// The thread's cache, or null before its first walk.
    pub cache: *mut Cache,
    /// Lowest address of the thread's own stack verified readable so far.
    pub stack_lo: usize,
    /// One past the highest address of the thread's own stack, or 0 when not yet known.
    pub stack_hi: usize,
    /// Lowest address of the alternate signal stack last seen in use (0: none).
    pub alt_lo: usize,
    /// Set while a capture is running on this thread (a signal handler must not re-enter).
    pub busy: u8,
    /// Set once the thread-exit destructor has freed the cache: no more captures.
    pub dead: u8,
    /// The thread's lane plus one, 0 before it was given one (see [`lane`]).
    pub lane: u8,
    /// The rules of the thread's last walk, by depth (key and packed rule, see `rules`; the key
    /// holds the snapshot's generation, so a rule of another snapshot never matches).
    pub memo: [(u64, u64); MEMO_DEPTH],
}

/// Frames of a walk whose rules the thread remembers by depth: the innermost frames (the
/// allocator's own, the call site and its callers) repeat from walk to walk, and a rule found
/// at the same depth is a load from this thread's own block instead of one from the process's
/// table, which a program sampled once in half a megabyte has let fall out of the caches.
/// Eight, so that the whole block stays about 200 bytes: a copy of the engine in a library
/// loaded with `dlopen` takes its initial-exec TLS from the loader's small static reserve.
pub(super) const MEMO_DEPTH: usize = 8;

// The thread's unwind state, in its own initial-exec block (see `platform::tls`).
crate::platform::tls::initial_exec_block!(pub(super) fn state -> UnwindTls, "sampalloc_core_unwind_state");

/// The pthread key whose destructor frees a thread's cache (0 until created, stored + 1).
static CACHE_KEY: AtomicU32 = AtomicU32::new(0);
/// 0: key not created; 1: being created; 2: created; 3: creation failed.
static CACHE_KEY_STATE: AtomicU8 = AtomicU8::new(0);

/// Creates the thread-exit key. May allocate inside glibc; called from `init`.
pub(super) fn create_key() -> bool {
    match CACHE_KEY_STATE.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {}
        Err(s) => return s == 2,
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-pointer; the destructor is an `extern "C"` fn of the right
    // type that tolerates any value it was given by `pthread_setspecific` below.
    let rc = unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) };
    if rc != 0 {
        CACHE_KEY_STATE.store(3, Ordering::Release);
        return false;
    }
    CACHE_KEY.store(key + 1, Ordering::Release);
    CACHE_KEY_STATE.store(2, Ordering::Release);
    true
}

/// The thread's cache, creating it if this is the thread's first walk. Null when it cannot
/// be created now (too little stack, no key, thread exiting). May allocate.
pub(super) fn cache_or_create(st: &mut UnwindTls, roomy: bool) -> *mut Cache {
    if !st.cache.is_null() {
        return st.cache;
    }
    if st.dead != 0 || !roomy {
        return core::ptr::null_mut();
    }
    create_cache(st)
}

/// Out of line: building the cache needs a large temporary frame that the walk must not carry.
#[cold]
#[inline(never)]
fn create_cache(st: &mut UnwindTls) -> *mut Cache {
    let key = CACHE_KEY.load(Ordering::Acquire);
    if key == 0 {
        return core::ptr::null_mut();
    }
    let cache = Box::into_raw(Box::new(Cache::new_in()));
    // SAFETY: the key was created by `create_key`; the value is our own box, freed by the
    // destructor. This may call calloc for high key numbers (the caller guards allocation).
    let rc = unsafe { libc::pthread_setspecific(key - 1, cache as *const libc::c_void) };
    if rc != 0 {
        // SAFETY: `cache` came from Box::into_raw just above and was not shared.
        drop(unsafe { Box::from_raw(cache) });
        return core::ptr::null_mut();
    }
    st.cache = cache;
    cache
}

/// Lanes of the profiler's counters that every sampling thread writes (the walks' snapshot
/// holds and capture counts, the stack table's counters): each is kept in this many copies on
/// cache lines of their own, and a thread writes only its lane's, so that threads sampling at
/// once do not pass one line back and forth between cores.
pub const LANES: usize = 16;

/// The lane the next thread to ask takes.
static NEXT_LANE: AtomicU32 = AtomicU32::new(0);

/// The calling thread's lane (below [`LANES`]), handed out round-robin at its first call.
#[inline]
pub fn lane() -> usize {
    let st = state();
    // SAFETY: the calling thread's own block, one byte read (and, at the thread's first call,
    // written) through the pointer: no reference is made, so a capture this call interrupts
    // (a free in a signal handler) keeps its own, and a capture gives its thread a lane
    // before anything else, so such a call only reads.
    unsafe {
        let lane = core::ptr::addr_of_mut!((*st).lane);
        if *lane == 0 {
            *lane = next_lane();
        }
        *lane as usize - 1
    }
}

/// A lane for a thread that has none, plus one (0 is "none").
fn next_lane() -> u8 {
    (NEXT_LANE.fetch_add(1, Ordering::Relaxed) as usize % LANES) as u8 + 1
}

/// [`lane`], for a capture that holds the thread's block.
#[inline]
pub(super) fn lane_of(st: &mut UnwindTls) -> usize {
    if st.lane == 0 {
        st.lane = next_lane();
    }
    st.lane as usize - 1
}

/// The key destructor: frees the exiting thread's cache and stops further captures on it.
extern "C" fn on_thread_exit(value: *mut libc::c_void) {
    let st = state();
    // SAFETY: the block belongs to the calling (exiting) thread; `value` is the box stored by
    // `cache_or_create` on this thread, never freed elsewhere.
    unsafe {
        (*st).dead = 1;
        if (*st).cache == value.cast() {
            (*st).cache = core::ptr::null_mut();
        }
        if !value.is_null() {
            drop(Box::from_raw(value.cast::<Cache>()));
        }
    }
}

/// The top (one past the highest address) of the stack `sp` is on: the thread's own stack or
/// the alternate signal stack it is running on. `None` when `sp` is on neither (a user-made
/// coroutine stack, for example). Found without calling into libc: `pthread_getattr_np`
/// allocates while holding the thread's lock, so a query from inside a `malloc` that it made
/// deadlocks (seen under the JVM, which calls it at every thread start).
pub(super) fn top(st: &mut UnwindTls, sp: usize) -> Option<usize> {
    // Within the part of the own stack verified before: no system call needed.
    if st.stack_hi != 0 && sp >= st.stack_lo && sp < st.stack_hi {
        st.alt_lo = 0;
        return Some(st.stack_hi);
    }
    // Deeper than ever, or somewhere else: an alternate signal stack may lie anywhere, even
    // below the own stack's top, so ask before trusting `[sp, top)`.
    if let Some((lo, hi)) = crate::platform::os::alt_stack(sp) {
        st.alt_lo = lo;
        return Some(hi);
    }
    st.alt_lo = 0;
    let hi = own_stack_top(sp)?;
    if st.stack_hi != hi {
        st.stack_hi = hi;
        st.stack_lo = hi;
    }
    // `has_free` verifies `[sp - need, stack_lo)` before the walk reads `[sp, hi)`.
    Some(hi)
}

/// Whether the stack has room for set-up ([`MIN_FREE_STACK_FOR_SETUP`] below a walk's `sp`),
/// found out only when a walk needs set-up (initialisation, a module refresh, building the
/// framehop cache). Proving that room reads a byte of each page down to 64 KiB below `sp`
/// (see [`has_free`]), which faults in up to sixteen pages of a thread's stack that the thread
/// may never use; most threads never need set-up, since the process's rule table knows their
/// code.
pub(super) struct Roomy {
    sp: usize,
    known: Option<bool>,
}

impl Roomy {
    /// Not yet known, for a walk from `sp`.
    pub fn at(sp: usize) -> Roomy {
        Roomy { sp, known: None }
    }

    /// Whether the stack has the room, probing it the first time.
    pub fn get(&mut self, st: &mut UnwindTls) -> bool {
        if let Some(roomy) = self.known {
            return roomy;
        }
        let roomy = has_free(st, self.sp, MIN_FREE_STACK_FOR_SETUP);
        self.known = Some(roomy);
        roomy
    }
}

/// Whether at least `need` bytes of stack are free below `sp` (after [`top`] found the stack).
/// On the alternate signal stack the bounds are known; on the thread's own stack the pages
/// below `sp` are probed once (see [`readable`]) and the lowest verified address remembered.
pub(super) fn has_free(st: &mut UnwindTls, sp: usize, need: usize) -> bool {
    let want = sp.saturating_sub(need);
    if st.alt_lo != 0 {
        return want >= st.alt_lo;
    }
    if want >= st.stack_lo {
        return true;
    }
    // Above `sp` is the live stack; only the free part below it needs checking.
    match crate::platform::os::readable(want, st.stack_lo.min(sp)) {
        Some(false) => false,
        // Readable, or the probe is unavailable (seccomp): trust the stack, as other
        // profilers always do.
        _ => {
            st.stack_lo = want;
            true
        }
    }
}

/// A thread stack is assumed no larger than this when locating its top.
const MAX_STACK: usize = 1 << 30;

extern "C" {
    /// Set by the dynamic loader: the main thread's stack pointer at process start (argv is
    /// just above it), so the main stack is readable from any `sp` of it up to here.
    static __libc_stack_end: *mut libc::c_void;
}

/// The top of the calling thread's own stack. A thread made by glibc's `pthread_create` (on a
/// stack glibc allocated or one the caller supplied) has its thread control block, where `%fs`
/// points, at the top of that stack, just above the static TLS blocks: so `[sp, fs base)` is
/// this thread's stack and its TLS. The main thread's control block lives elsewhere; its stack
/// ends at `__libc_stack_end`.
fn own_stack_top(sp: usize) -> Option<usize> {
    let tp: usize;
    // SAFETY: reads the thread pointer from the thread control block's self-pointer.
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    if sp < tp && tp - sp <= MAX_STACK {
        return Some(tp);
    }
    // SAFETY: a plain pointer-sized variable the loader sets before any code of ours runs.
    let end = unsafe { __libc_stack_end } as usize;
    if sp < end && end - sp <= MAX_STACK {
        return Some(end);
    }
    None
}
