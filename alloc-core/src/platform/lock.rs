//! A small futex mutex that never allocates, a spin lock for the profiler's few-instruction
//! critical sections, and `Locked<T>`, data guarded by either.
//!
//! A pure spin lock is wrong for most locks here: with more threads than cores a preempted
//! holder would make every waiter burn its time slice. So the mutex's waiters spin briefly,
//! then sleep in the kernel; its release must then be a read-modify-write, to see whether
//! anyone sleeps. [`SpinLock`] is for sections of a few instructions taken at every sample,
//! where that second locked instruction was a visible part of the cost: its waiters spin,
//! then give up the processor with `sched_yield`, never sleep, so its release is a plain
//! store. Fork needs locks held across function boundaries and reset in the child, which the
//! `raw_*` and `reset_after_fork` methods provide.

use super::fork_guard;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;
/// Spins before sleeping: long enough to ride out a short critical section on another core.
const SPINS: u32 = 100;

/// A mutex: 0 unlocked, 1 locked, 2 locked with sleepers.
pub struct Mutex {
    state: AtomicU32,
}

impl Mutex {
    /// An unlocked mutex.
    pub const fn new() -> Self {
        Mutex {
            state: AtomicU32::new(UNLOCKED),
        }
    }

    /// Takes the lock.
    #[inline]
    pub fn lock(&self) {
        fork_guard::before_lock();
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    /// Takes the lock if it is free now; false if another thread holds it.
    #[inline]
    pub fn try_lock(&self) -> bool {
        fork_guard::before_lock();
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[cold]
    fn lock_contended(&self) {
        for _ in 0..SPINS {
            if self.state.load(Ordering::Relaxed) == UNLOCKED
                && self
                    .state
                    .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            core::hint::spin_loop();
        }
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            futex_wait(&self.state, CONTENDED);
        }
    }

    /// Releases the lock.
    #[inline]
    pub fn unlock(&self) {
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            futex_wake(&self.state);
        }
    }

    /// Marks the lock free without waking anyone: only for the child after `fork`, where the
    /// thread that held it no longer exists.
    pub fn reset_after_fork(&self) {
        self.state.store(UNLOCKED, Ordering::Relaxed);
    }
}

impl Default for Mutex {
    fn default() -> Self {
        Self::new()
    }
}

fn futex_wait(state: &AtomicU32, expected: u32) {
    // SAFETY: the futex word is a live AtomicU32; a spurious return is handled by the caller's loop.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            state.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(state: &AtomicU32) {
    // SAFETY: waking waiters on a live futex word has no other effect.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            state.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

/// A lock without data: [`Mutex`] or [`SpinLock`].
pub trait RawLock {
    /// An unlocked lock.
    const UNLOCKED: Self;
    /// Takes the lock.
    fn lock(&self);
    /// Takes the lock if it is free now.
    fn try_lock(&self) -> bool;
    /// Releases the lock.
    fn unlock(&self);
    /// Marks the lock free (the child after `fork`).
    fn reset_after_fork(&self);
}

impl RawLock for Mutex {
    const UNLOCKED: Self = Mutex::new();
    #[inline]
    fn lock(&self) {
        Mutex::lock(self)
    }
    #[inline]
    fn try_lock(&self) -> bool {
        Mutex::try_lock(self)
    }
    #[inline]
    fn unlock(&self) {
        Mutex::unlock(self)
    }
    fn reset_after_fork(&self) {
        Mutex::reset_after_fork(self)
    }
}

/// A spin lock whose release is a plain store (see the module docs): for critical sections of
/// a few instructions that never make a system call.
pub struct SpinLock {
    state: AtomicU32,
}

impl SpinLock {
    /// An unlocked lock.
    pub const fn new() -> Self {
        SpinLock {
            state: AtomicU32::new(UNLOCKED),
        }
    }

    #[cold]
    fn lock_contended(&self) {
        loop {
            for _ in 0..SPINS {
                if self.state.load(Ordering::Relaxed) == UNLOCKED && self.try_lock() {
                    return;
                }
                core::hint::spin_loop();
            }
            // SAFETY: sched_yield is a plain system call.
            unsafe { libc::sched_yield() };
        }
    }
}

impl Default for SpinLock {
    fn default() -> Self {
        Self::new()
    }
}

impl RawLock for SpinLock {
    const UNLOCKED: Self = SpinLock::new();
    #[inline]
    fn lock(&self) {
        if !self.try_lock() {
            self.lock_contended();
        }
    }
    #[inline]
    fn try_lock(&self) -> bool {
        fork_guard::before_lock();
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }
    #[inline]
    fn unlock(&self) {
        self.state.store(UNLOCKED, Ordering::Release);
    }
    fn reset_after_fork(&self) {
        self.state.store(UNLOCKED, Ordering::Relaxed);
    }
}

/// Data that may only be touched with its lock (a [`Mutex`] unless said otherwise) held. The
/// lock comes first (`repr(C)`), so that a layout may place the data's fields by page (see
/// [`Locked::DATA_OFFSET`]).
#[repr(C)]
pub struct Locked<T, L: RawLock = Mutex> {
    mutex: L,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialised by `mutex`.
unsafe impl<T: Send, L: RawLock + Sync> Sync for Locked<T, L> {}
// SAFETY: as above; the data itself is Send.
unsafe impl<T: Send, L: RawLock + Send> Send for Locked<T, L> {}

impl<T, L: RawLock> Locked<T, L> {
    /// Where the data lies in a `Locked`.
    pub const DATA_OFFSET: usize = core::mem::offset_of!(Self, data);

    /// Wraps `data`.
    pub const fn new(data: T) -> Self {
        Locked {
            mutex: L::UNLOCKED,
            data: UnsafeCell::new(data),
        }
    }

    /// Takes the lock; it is released when the guard drops.
    #[inline]
    pub fn lock(&self) -> Guard<'_, T, L> {
        self.mutex.lock();
        Guard { locked: self }
    }

    /// Takes the lock if it is free now, without waiting.
    #[inline]
    pub fn try_lock(&self) -> Option<Guard<'_, T, L>> {
        // Lazily: a guard made for a failed attempt would unlock on drop.
        self.mutex.try_lock().then(|| Guard { locked: self })
    }

    /// Takes the lock with no guard (fork handlers hold locks across calls).
    pub fn raw_lock(&self) {
        self.mutex.lock();
    }

    /// Releases a lock taken by [`Locked::raw_lock`].
    ///
    /// # Safety
    /// The caller must hold the lock and have no guard outstanding.
    pub unsafe fn raw_unlock(&self) {
        self.mutex.unlock();
    }

    /// See [`RawLock::reset_after_fork`].
    pub fn reset_after_fork(&self) {
        self.mutex.reset_after_fork();
    }
}

/// Proof that the lock is held; gives access to the data.
pub struct Guard<'a, T, L: RawLock = Mutex> {
    locked: &'a Locked<T, L>,
}

impl<T, L: RawLock> Deref for Guard<'_, T, L> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the lock is held.
        unsafe { &*self.locked.data.get() }
    }
}

impl<T, L: RawLock> DerefMut for Guard<'_, T, L> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while the lock is held, and is not Clone.
        unsafe { &mut *self.locked.data.get() }
    }
}

impl<T, L: RawLock> Drop for Guard<'_, T, L> {
    fn drop(&mut self) {
        self.locked.mutex.unlock();
    }
}

/// `T` on cache lines of its own: for locks and counters that different threads write, so that
/// neighbours in an array do not pass one line back and forth between cores.
#[repr(align(64))]
pub struct Padded<T>(pub T);

impl<T> core::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Eight threads add 20,000 times each under `L`: no increment is lost, and `try_lock`
    /// fails while a guard lives.
    fn counts_under_contention_with<L: RawLock + Send + Sync + 'static>() {
        let counter = Arc::new(Locked::<u64, L>::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        *c.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*counter.lock(), 160_000);
        let held = counter.lock();
        assert!(counter.try_lock().is_none());
        drop(held);
        assert!(counter.try_lock().is_some());
    }

    #[test]
    fn counts_under_contention() {
        counts_under_contention_with::<Mutex>();
    }

    #[test]
    fn a_spin_lock_counts_under_contention() {
        counts_under_contention_with::<SpinLock>();
    }

    #[test]
    fn try_lock_fails_only_while_held() {
        let l: Locked<i32> = Locked::new(1);
        let held = l.lock();
        assert!(l.try_lock().is_none());
        // The failed attempt must have left the lock held.
        assert!(
            l.try_lock().is_none(),
            "a failed try_lock released the lock"
        );
        drop(held);
        *l.try_lock().expect("a free lock") += 1;
        assert_eq!(*l.lock(), 2);
    }

    #[test]
    fn raw_lock_and_reset() {
        let l: Locked<i32> = Locked::new(1);
        l.raw_lock();
        l.reset_after_fork();
        *l.lock() += 1;
        assert_eq!(*l.lock(), 2);
    }
}
