//! The engine's fork handlers, registered under the preload library when the process first has
//! a second thread, or another library registers its own, rather than at start-up.
//!
//! The handlers take every engine lock before `fork` and release or reset them after it, so
//! that a child never inherits a lock held by a thread that does not exist in it. While a
//! process has only ever had one thread, no other thread can hold a lock when it forks: the
//! only thread is the forking one, and it forks outside the engine. Registering with
//! `pthread_atfork` faults in two pages of libc (its code and its list of handlers) that a
//! program which never forks does not otherwise touch, so it waits: every lock acquisition
//! first calls [`before_lock`], which, once glibc says the process has made a thread
//! (`__libc_single_threaded` is false), registers the handlers before the lock is taken. A
//! thread is only made outside the engine's locks, so no lock taken while the process was
//! single-threaded is still held when a second thread can fork. Other C libraries, which do
//! not say, get the handlers at once.
//!
//! Registration may allocate (glibc grows its list of handlers), so while one thread registers,
//! every lock passes, its own and the others': a thread that waited could deadlock against a
//! `fork` in progress, which holds glibc's handler lock while it runs other libraries'
//! handlers, which may allocate. A `fork` that races the registration itself is not covered,
//! as one that raced start-up was not when the handlers were registered there.
//!
//! Ours must come before any other library's handlers: glibc runs the prepare handlers in the
//! reverse order of registration and the parent and child ones in order. Registered after
//! another library's, ours would take every lock before that library's prepare handler runs
//! and reset them only after its child handler ran: one that allocates (and needs a lock)
//! would wait for ever. So the preload library interposes glibc's `__register_atfork` (what
//! `pthread_atfork` calls) and registers ours first ([`register_now`]) whenever another
//! library registers; a program that registers no handler of its own and never has a second
//! thread never faults in those pages. Only the preload library can interpose (its
//! constructor says so, [`interposed`]); without it the handlers are registered at start-up,
//! before any library that registers later.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

/// No handlers yet (start-up is running): locks pass.
const UNSET: u8 = 0;
/// Handlers known, not registered: the process has had one thread so far.
const WAITING: u8 = 1;
/// A thread is registering them: locks pass.
const REGISTERING: u8 = 2;
/// Registered.
const DONE: u8 = 3;

#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static STATE: AtomicU8 = AtomicU8::new(UNSET);
/// The handlers, as function addresses: before, after in the parent, after in the child.
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static HANDLERS: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];

/// Set by [`interposed`].
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static INTERPOSED: AtomicBool = AtomicBool::new(false);

/// Says that every other library's registration of fork handlers comes through
/// [`register_now`] first (the preload library's `__register_atfork`, from its constructor):
/// start-up may then leave the handlers unregistered until the process has a second thread.
/// Start-up that ran before (a constructor that allocated) registered them already.
pub fn interposed() {
    INTERPOSED.store(true, Ordering::Relaxed);
}

/// Gives the handlers (once, at the end of start-up, when the engine can serve the allocations
/// that registering them may make); registers them now if the process already has threads, or
/// if nothing said it interposes `__register_atfork` ([`interposed`]; the Rust global
/// allocator): the earliest the engine can, as other allocators do, since it cannot put its
/// handlers before those of a library that registers later.
pub fn set_handlers(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) {
    HANDLERS[0].store(prepare as usize, Ordering::Relaxed);
    HANDLERS[1].store(parent as usize, Ordering::Relaxed);
    HANDLERS[2].store(child as usize, Ordering::Relaxed);
    let _ = STATE.compare_exchange(UNSET, WAITING, Ordering::Release, Ordering::Relaxed);
    if INTERPOSED.load(Ordering::Relaxed) {
        before_lock();
    } else {
        register_now();
    }
}

/// Whether the handlers are registered (statistics).
pub fn registered() -> bool {
    STATE.load(Ordering::Acquire) == DONE
}

/// Called before every lock acquisition: registers the handlers if the process has made a
/// thread and they are not registered yet (see the module docs).
#[inline(always)]
pub fn before_lock() {
    if STATE.load(Ordering::Acquire) != DONE {
        before_lock_slow();
    }
}

#[cold]
fn before_lock_slow() {
    if STATE.load(Ordering::Acquire) == WAITING && !single_threaded() {
        register_now();
    }
}

/// Registers the handlers now if they are given and not registered yet, however many threads
/// the process has: before another library registers handlers of its own (see the module
/// docs).
pub fn register_now() {
    if STATE
        .compare_exchange(WAITING, REGISTERING, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let handler = |i: usize| {
        let f = HANDLERS[i].load(Ordering::Relaxed);
        // SAFETY: `set_handlers` stored these from `unsafe extern "C" fn()` values.
        (f != 0).then(|| unsafe { core::mem::transmute::<usize, unsafe extern "C" fn()>(f) })
    };
    // SAFETY: the handlers are plain extern "C" functions valid for the process's life.
    unsafe { libc::pthread_atfork(handler(0), handler(1), handler(2)) };
    STATE.store(DONE, Ordering::Release);
}

/// Whether the process has never made a thread, as glibc keeps it; false where unknown.
fn single_threaded() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            static __libc_single_threaded: core::ffi::c_char;
        }
        // SAFETY: glibc (2.32 and later) defines the flag; it only ever goes from 1 to 0, in
        // the thread that makes the first thread, before that thread runs.
        unsafe { core::ptr::addr_of!(__libc_single_threaded).read_volatile() != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threaded_process_registers_at_its_next_lock() {
        // The test harness runs tests on threads of its own: the process has made threads.
        assert!(!single_threaded());
        // Start-up (any engine use by the harness) set the handlers; the next lock registers
        // them if nothing did yet.
        crate::process::init::ensure_ready();
        before_lock();
        assert!(registered());
    }
}
