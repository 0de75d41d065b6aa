//! The dump triggers: every `2^lg_prof_interval` bytes allocated, at the first tick after every
//! `prof_interval_ms` milliseconds (both are interval dumps, kind `i`), at a new high-water mark of
//! the engine's mapped memory (`prof_gdump`), on `prof_signal`, and at exit. A trigger only
//! sets a bit (a signal handler may); the next tick of any thread, with no lock held, serves
//! it by writing the dump.

use crate::base::config;
use crate::platform::os;
use crate::prof::heap_v2;
use crate::prof::leak;
use crate::prof::name::kind;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

const PENDING_INTERVAL: u8 = 1;
const PENDING_HIGH_WATER: u8 = 2;
const PENDING_SIGNAL: u8 = 4;

static PENDING: AtomicU8 = AtomicU8::new(0);
static ALLOCATED: AtomicU64 = AtomicU64::new(0);
static MAPPED_HIGH_WATER: AtomicUsize = AtomicUsize::new(0);
static DUMPING: AtomicBool = AtomicBool::new(false);
/// When the next timed dump is due, in [`os::now_ms`] milliseconds (0: not started yet).
static NEXT_TIMED_MS: AtomicU64 = AtomicU64::new(0);

/// Called every tick of every thread with the bytes it allocated since its last tick:
/// accounts for interval dumps and serves pending dumps. Must be called with no lock held.
pub fn on_tick(bytes: u64) {
    if !config::prof() {
        return;
    }
    let lg = config::lg_prof_interval();
    if lg >= 0 {
        let interval = 1u64 << lg;
        let before = ALLOCATED.fetch_add(bytes, Ordering::Relaxed);
        if (before + bytes) / interval != before / interval {
            PENDING.fetch_or(PENDING_INTERVAL, Ordering::Relaxed);
        }
    }
    let every = config::prof_interval_ms();
    if every > 0 {
        timed(os::now_ms(), every);
    }
    if config::prof_gdump() {
        // A new maximum of the engine's mapped bytes (metadata included, as the statistics
        // count it) asks for a high-water dump.
        let mapped = os::mapped();
        if mapped > MAPPED_HIGH_WATER.fetch_max(mapped, Ordering::Relaxed) {
            PENDING.fetch_or(PENDING_HIGH_WATER, Ordering::Relaxed);
        }
    }
    if PENDING.load(Ordering::Relaxed) != 0 {
        serve_pending();
    }
}

/// Timed dumps: the first tick counts from `now`; a tick at or after the due time asks for an
/// interval dump and sets the next one `every` ms later (from now: ticks missed while the
/// program did not allocate do not queue dumps). One thread wins the exchange per period.
fn timed(now: u64, every: u64) {
    let due = NEXT_TIMED_MS.load(Ordering::Relaxed);
    if due == 0 {
        let _ =
            NEXT_TIMED_MS.compare_exchange(0, now + every, Ordering::Relaxed, Ordering::Relaxed);
    } else if now >= due
        && NEXT_TIMED_MS
            .compare_exchange(due, now + every, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        PENDING.fetch_or(PENDING_INTERVAL, Ordering::Relaxed);
    }
}

/// The `prof_signal` handler: async-signal-safe, it only sets a bit.
pub extern "C" fn on_signal(_sig: libc::c_int) {
    PENDING.fetch_or(PENDING_SIGNAL, Ordering::Relaxed);
}

/// Installs the `prof_signal` handler if one is configured.
pub fn install_signal_handler() {
    let sig = config::prof_signal();
    if !config::prof() || sig == 0 {
        return;
    }
    // `on_signal` only sets a bit: async-signal-safe.
    if !os::install_signal_handler(sig, on_signal) {
        os::Line::new()
            .str("sampalloc: cannot install the prof_signal handler for signal ")
            .dec(sig as u64)
            .emit();
    }
}

fn serve_pending() {
    if DUMPING.swap(true, Ordering::Acquire) {
        return; // another thread is dumping; the bits stay for the next tick
    }
    let pending = PENDING.swap(0, Ordering::Relaxed);
    for (bit, k) in [
        (PENDING_INTERVAL, kind::INTERVAL),
        (PENDING_HIGH_WATER, kind::HIGH_WATER),
        (PENDING_SIGNAL, kind::SIGNAL),
    ] {
        if pending & bit != 0 {
            heap_v2::dump_named_or_warn(k);
        }
    }
    DUMPING.store(false, Ordering::Release);
}

/// At exit: the final dump and the leak summary, as configured.
pub fn at_exit() {
    if !config::prof() {
        return;
    }
    if PENDING.load(Ordering::Relaxed) != 0 {
        serve_pending();
    }
    if config::prof_final() {
        heap_v2::dump_named_or_warn(kind::FINAL);
    }
    if config::prof_leak() {
        leak::leak_summary();
    }
}

/// Fork: a dump the parent had in progress is not the child's.
pub fn postfork_child() {
    DUMPING.store(false, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_dumps_count_from_the_first_tick_and_do_not_queue() {
        NEXT_TIMED_MS.store(0, Ordering::Relaxed);
        let asked = || PENDING.fetch_and(!PENDING_INTERVAL, Ordering::Relaxed) & PENDING_INTERVAL;
        asked();
        timed(1000, 200);
        assert_eq!(NEXT_TIMED_MS.load(Ordering::Relaxed), 1200);
        timed(1199, 200);
        assert_eq!(asked(), 0, "not due yet");
        timed(1200, 200);
        assert_ne!(asked(), 0, "due");
        assert_eq!(NEXT_TIMED_MS.load(Ordering::Relaxed), 1400);
        // A long pause without ticks: one dump, then the period starts again.
        timed(5000, 200);
        assert_ne!(asked(), 0);
        timed(5100, 200);
        assert_eq!(asked(), 0);
        assert_eq!(NEXT_TIMED_MS.load(Ordering::Relaxed), 5200);
        NEXT_TIMED_MS.store(0, Ordering::Relaxed);
    }
}
