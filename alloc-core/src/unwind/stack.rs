//! The per-thread side of stack capture: a small initial-exec TLS block holding the thread's
//! unwind cache, its cached stack bounds and a re-entrancy flag, and the thread-exit hook that
//! frees the cache.
//!
//! The block is constant-initialised to zeroes, has no destructor and is reached without
//! `__tls_get_addr` (the same technique as `crate::thread`), so touching it can never allocate.
//! The cache itself (framehop's rule cache and gimli's unwind context, about 30 KiB) is boxed
//! the first time the thread is sampled and freed by a pthread key destructor at thread exit.

use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use framehop::x86_64::CacheX86_64;

/// The unwinder cache type: framehop's rule cache plus gimli's fixed-size unwind context.
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
    /// Lowest address of the thread's own stack, or 0 when not yet known.
    pub stack_lo: usize,
    /// One past the highest address of the thread's own stack, or 0 when not yet known.
    pub stack_hi: usize,
    /// Set while a capture is running on this thread (a signal handler must not re-enter).
    pub busy: u8,
    /// Set once the thread-exit destructor has freed the cache: no more captures.
    pub dead: u8,
}

mod tls {
    use super::UnwindTls;

    // The block, in .tbss, hidden so that a second copy of the engine in the process keeps its
    // own (see crate::thread for the same construction).
    core::arch::global_asm!(
        ".pushsection .tbss,\"awT\",@nobits",
        ".p2align 4",
        ".globl sampalloc_core_unwind_state",
        ".hidden sampalloc_core_unwind_state",
        ".type sampalloc_core_unwind_state,@object",
        ".size sampalloc_core_unwind_state, {size}",
        "sampalloc_core_unwind_state:",
        ".zero {size}",
        ".popsection",
        size = const core::mem::size_of::<UnwindTls>(),
    );

    /// The calling thread's block: the thread pointer plus the initial-exec offset.
    #[inline(always)]
    pub fn state() -> *mut UnwindTls {
        let p: usize;
        // SAFETY: reads the thread pointer (%fs:0 holds it on x86-64 glibc) and the GOT entry
        // the linker fills with the block's offset; both are constant for the thread.
        unsafe {
            core::arch::asm!(
                "mov {p}, qword ptr fs:[0]",
                "add {p}, qword ptr [rip + sampalloc_core_unwind_state@GOTTPOFF]",
                p = out(reg) p,
                options(pure, readonly, nostack),
            );
        }
        p as *mut UnwindTls
    }
}

pub(super) use tls::state;

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
pub(super) fn cache_or_create(st: &mut UnwindTls, free_stack: usize) -> *mut Cache {
    if !st.cache.is_null() {
        return st.cache;
    }
    if st.dead != 0 || free_stack < MIN_FREE_STACK_FOR_SETUP {
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

/// The stack `[lo, hi)` that contains `sp`: the thread's own stack (found once per thread with
/// `pthread_getattr_np`, which may allocate) or the alternate signal stack the thread is
/// running on. `None` when `sp` is on neither (a user-made coroutine stack, for example).
pub(super) fn bounds(st: &mut UnwindTls, sp: usize) -> Option<(usize, usize)> {
    if st.stack_hi != 0 && sp > st.stack_lo && sp < st.stack_hi {
        return Some((st.stack_lo, st.stack_hi));
    }
    // SAFETY: a zeroed stack_t is a valid out-parameter; a null new stack only queries.
    let mut ss: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: as above; sigaltstack is a plain system call.
    if unsafe { libc::sigaltstack(core::ptr::null(), &mut ss) } == 0
        && ss.ss_flags & libc::SS_ONSTACK != 0
    {
        let lo = ss.ss_sp as usize;
        let hi = lo.saturating_add(ss.ss_size);
        if sp > lo && sp < hi {
            return Some((lo, hi));
        }
    }
    if st.stack_hi == 0 {
        let (lo, hi) = thread_stack()?;
        st.stack_lo = lo;
        st.stack_hi = hi;
        if sp > lo && sp < hi {
            return Some((lo, hi));
        }
    }
    None
}

/// The calling thread's stack from `pthread_getattr_np`. For the main thread glibc reads
/// `/proc/self/maps` and allocates; for others it allocates a CPU set.
fn thread_stack() -> Option<(usize, usize)> {
    // SAFETY: `attr` is initialised by pthread_getattr_np before use and destroyed after;
    // the out-pointers are valid locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = core::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 || addr.is_null() || size == 0 {
            return None;
        }
        Some((addr as usize, (addr as usize).saturating_add(size)))
    }
}
