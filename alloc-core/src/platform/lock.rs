//! A small futex mutex that never allocates, and `Locked<T>`, data guarded by one.
//!
//! A pure spin lock is wrong here: with more threads than cores a preempted holder would make
//! every waiter burn its time slice. So waiters spin briefly, then sleep in the kernel.
//! Fork needs locks held across function boundaries and reset in the child, which the
//! `raw_*` and `reset_after_fork` methods provide.

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

/// Data that may only be touched with its mutex held.
pub struct Locked<T> {
    mutex: Mutex,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialised by `mutex`.
unsafe impl<T: Send> Sync for Locked<T> {}
// SAFETY: as above; the data itself is Send.
unsafe impl<T: Send> Send for Locked<T> {}

impl<T> Locked<T> {
    /// Wraps `data`.
    pub const fn new(data: T) -> Self {
        Locked {
            mutex: Mutex::new(),
            data: UnsafeCell::new(data),
        }
    }

    /// Takes the lock; it is released when the guard drops.
    #[inline]
    pub fn lock(&self) -> Guard<'_, T> {
        self.mutex.lock();
        Guard { locked: self }
    }

    /// Takes the lock if it is free now, without waiting.
    #[inline]
    pub fn try_lock(&self) -> Option<Guard<'_, T>> {
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

    /// See [`Mutex::reset_after_fork`].
    pub fn reset_after_fork(&self) {
        self.mutex.reset_after_fork();
    }
}

/// Proof that the lock is held; gives access to the data.
pub struct Guard<'a, T> {
    locked: &'a Locked<T>,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the lock is held.
        unsafe { &*self.locked.data.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while the lock is held, and is not Clone.
        unsafe { &mut *self.locked.data.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
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

    #[test]
    fn counts_under_contention() {
        let counter = Arc::new(Locked::new(0u64));
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
    }

    #[test]
    fn try_lock_fails_only_while_held() {
        let l = Locked::new(1);
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
        let l = Locked::new(1);
        l.raw_lock();
        l.reset_after_fork();
        *l.lock() += 1;
        assert_eq!(*l.lock(), 2);
    }
}
