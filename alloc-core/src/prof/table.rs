//! The heap profiler's bookkeeping: a deduplicated table of sampled call stacks with their
//! live and cumulative estimates, and the dump triggers.
//!
//! A sampled allocation is recorded under one lock (after its stack was captured, with no
//! engine lock held): its stack is found or inserted, and the unbiased estimate of what it
//! stands for is added to the stack's live and cumulative counters. The sampled block itself
//! remembers its stack and estimate (in its span descriptor or huge header), so its `free`
//! subtracts exactly what was added. Entries are never removed, and their counters are atomics,
//! so a dump reads the table without taking the lock and never stalls sampling threads.
//!
//! Dumps are requested by triggers that may fire in awkward places (a signal handler, the page
//! heap's lock): they only set a bit. The bits are served at the next tick of an allocating
//! thread, with no lock held, or at exit.

use crate::base::meta;
use crate::platform::lock::Locked;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Deepest stack recorded.
pub const MAX_FRAMES: usize = 64;

/// One distinct call stack and what its sampled allocations stand for.
#[repr(C)]
pub struct StackEntry {
    hash: u64,
    next_in_bucket: *mut StackEntry,
    /// Next entry in insertion order, newest first (see [`first_entry`]).
    pub next: *mut StackEntry,
    /// Frame count.
    pub depth: usize,
    /// Return addresses, innermost first.
    pub frames: *const usize,
    live_objects: AtomicF64,
    live_bytes: AtomicF64,
    total_objects: AtomicF64,
    total_bytes: AtomicF64,
    live_samples: AtomicU64,
    total_samples: AtomicU64,
}

/// An f64 in an AtomicU64: written under the table lock, read anywhere.
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    fn add(&self, v: f64) {
        self.0.store((self.get() + v).to_bits(), Ordering::Relaxed);
    }
}

/// A stack's counters, read from its entry.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    /// Estimated objects still allocated.
    pub live_objects: f64,
    /// Estimated bytes still allocated.
    pub live_bytes: f64,
    /// Estimated objects allocated since the start.
    pub total_objects: f64,
    /// Estimated bytes allocated since the start.
    pub total_bytes: f64,
    /// Sampled blocks still allocated.
    pub live_samples: u64,
    /// Sampled blocks since the start.
    pub total_samples: u64,
}

impl StackEntry {
    /// The stack's frames.
    pub fn frames(&self) -> &[usize] {
        // SAFETY: written once at insertion, `depth` long, never freed.
        unsafe { core::slice::from_raw_parts(self.frames, self.depth) }
    }

    /// The stack's counters now.
    pub fn counts(&self) -> Counts {
        Counts {
            live_objects: self.live_objects.get().max(0.0),
            live_bytes: self.live_bytes.get().max(0.0),
            total_objects: self.total_objects.get(),
            total_bytes: self.total_bytes.get(),
            live_samples: self.live_samples.load(Ordering::Relaxed),
            total_samples: self.total_samples.load(Ordering::Relaxed),
        }
    }
}

struct Table {
    buckets: *mut *mut StackEntry,
    mask: usize,
    count: usize,
}

// SAFETY: the table's memory is metadata owned by it, reached only under its lock.
unsafe impl Send for Table {}

static TABLE: Locked<Table> = Locked::new(Table {
    buckets: ptr::null_mut(),
    mask: 0,
    count: 0,
});
static NEWEST: AtomicPtr<StackEntry> = AtomicPtr::new(ptr::null_mut());
static SAMPLES_LIVE: AtomicUsize = AtomicUsize::new(0);
static SAMPLES_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Every stack entry, newest first. Entries are never removed nor freed, and each is fully
/// written before it is published, so the walk needs no lock.
pub fn entries() -> impl Iterator<Item = &'static StackEntry> {
    let mut e: *const StackEntry = NEWEST.load(Ordering::Acquire);
    core::iter::from_fn(move || {
        // SAFETY: entries live for the process and are linked before they are published.
        let entry = unsafe { e.as_ref() }?;
        e = entry.next;
        Some(entry)
    })
}

/// Sampled blocks currently live, and sampled since the start.
pub fn sample_counts() -> (usize, u64) {
    (
        SAMPLES_LIVE.load(Ordering::Relaxed),
        SAMPLES_TOTAL.load(Ordering::Relaxed),
    )
}

fn hash_frames(frames: &[usize]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ frames.len() as u64;
    for &f in frames {
        h = (h ^ f as u64)
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(29);
    }
    h ^ (h >> 32)
}

/// Records a sampled allocation of `bytes` bytes standing for `weight` allocations, made from
/// the stack `frames`. Returns the stack's entry (to be handed to [`record_free`]), or null if
/// metadata memory ran out (the sample is then dropped).
pub fn record_alloc(frames: &[usize], bytes: usize, weight: f64) -> *mut StackEntry {
    let frames = &frames[..frames.len().min(MAX_FRAMES)];
    let hash = hash_frames(frames);
    let mut table = TABLE.lock();
    let entry = find_or_insert(&mut table, frames, hash);
    if !entry.is_null() {
        // SAFETY: entries are never freed.
        let e = unsafe { &*entry };
        e.live_objects.add(weight);
        e.live_bytes.add(weight * bytes as f64);
        e.total_objects.add(weight);
        e.total_bytes.add(weight * bytes as f64);
        e.live_samples.fetch_add(1, Ordering::Relaxed);
        e.total_samples.fetch_add(1, Ordering::Relaxed);
        SAMPLES_LIVE.fetch_add(1, Ordering::Relaxed);
        SAMPLES_TOTAL.fetch_add(1, Ordering::Relaxed);
    }
    entry
}

/// Records that a sampled block recorded with `record_alloc(.., bytes, weight)` was freed.
///
/// # Safety
/// `entry` must come from [`record_alloc`] and the block be freed once.
pub unsafe fn record_free(entry: *mut StackEntry, bytes: usize, weight: f64) {
    if entry.is_null() {
        return;
    }
    let _table = TABLE.lock();
    // SAFETY: entries are never freed.
    let e = unsafe { &*entry };
    e.live_objects.add(-weight);
    e.live_bytes.add(-weight * bytes as f64);
    e.live_samples.fetch_sub(1, Ordering::Relaxed);
    SAMPLES_LIVE.fetch_sub(1, Ordering::Relaxed);
}

fn find_or_insert(table: &mut Table, frames: &[usize], hash: u64) -> *mut StackEntry {
    if table.buckets.is_null() || table.count > table.mask {
        grow(table);
        if table.buckets.is_null() {
            return ptr::null_mut();
        }
    }
    // SAFETY: bucket arrays and entries are metadata owned by the table, under its lock.
    unsafe {
        let slot = table.buckets.add(hash as usize & table.mask);
        let mut e = *slot;
        while !e.is_null() {
            if (*e).hash == hash && (*e).frames() == frames {
                return e;
            }
            e = (*e).next_in_bucket;
        }
        let copy = meta::alloc(core::mem::size_of_val(frames).max(8), 8).cast::<usize>();
        let entry = meta::alloc(core::mem::size_of::<StackEntry>(), 64).cast::<StackEntry>();
        if copy.is_null() || entry.is_null() {
            return ptr::null_mut();
        }
        ptr::copy_nonoverlapping(frames.as_ptr(), copy, frames.len());
        entry.write(StackEntry {
            hash,
            next_in_bucket: *slot,
            next: NEWEST.load(Ordering::Relaxed),
            depth: frames.len(),
            frames: copy,
            live_objects: AtomicF64(AtomicU64::new(0)),
            live_bytes: AtomicF64(AtomicU64::new(0)),
            total_objects: AtomicF64(AtomicU64::new(0)),
            total_bytes: AtomicF64(AtomicU64::new(0)),
            live_samples: AtomicU64::new(0),
            total_samples: AtomicU64::new(0),
        });
        *slot = entry;
        table.count += 1;
        NEWEST.store(entry, Ordering::Release);
        entry
    }
}

/// Doubles the bucket array (the old one is abandoned: metadata is never freed, and the sizes
/// double, so at most as much again is wasted).
fn grow(table: &mut Table) {
    let new_len = if table.buckets.is_null() {
        1024
    } else {
        2 * (table.mask + 1)
    };
    let buckets =
        meta::alloc(new_len * core::mem::size_of::<usize>(), 64).cast::<*mut StackEntry>();
    if buckets.is_null() {
        return;
    }
    // SAFETY: the new array is zeroed metadata of `new_len` slots; entries are ours.
    unsafe {
        let mut e = NEWEST.load(Ordering::Relaxed);
        while !e.is_null() {
            let slot = buckets.add((*e).hash as usize & (new_len - 1));
            (*e).next_in_bucket = *slot;
            *slot = e;
            e = (*e).next;
        }
    }
    table.buckets = buckets;
    table.mask = new_len - 1;
}

/// Fork: hold the table lock across `fork`.
pub fn prefork() {
    TABLE.raw_lock();
}

/// Fork: release in the parent.
pub fn postfork_parent() {
    // SAFETY: taken in `prefork` by this thread.
    unsafe { TABLE.raw_unlock() };
}

/// Fork: reset in the child; a dump the parent had in progress is not the child's.
pub fn postfork_child() {
    TABLE.reset_after_fork();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_are_deduplicated_and_counted() {
        let a = [0x1000usize, 0x2000, 0x3000];
        let b = [0x1000usize, 0x2000, 0x3001];
        let ea = record_alloc(&a, 100, 2.0);
        let eb = record_alloc(&b, 100, 1.0);
        let ea2 = record_alloc(&a, 50, 4.0);
        assert_eq!(ea, ea2);
        assert_ne!(ea, eb);
        // SAFETY: entries are never freed.
        let c = unsafe { &*ea }.counts();
        assert_eq!(c.live_objects, 6.0);
        assert_eq!(c.live_bytes, 400.0);
        // SAFETY: recorded above with these figures.
        unsafe { record_free(ea, 100, 2.0) };
        // SAFETY: as above.
        let c = unsafe { &*ea }.counts();
        assert_eq!((c.live_objects, c.live_bytes), (4.0, 200.0));
        assert_eq!((c.total_objects, c.total_bytes), (6.0, 400.0));
        // SAFETY: as above.
        assert_eq!(unsafe { &*eb }.frames(), &b);
    }

    #[test]
    fn table_grows_and_keeps_every_stack() {
        let base = 0x7000_0000usize;
        let entries: Vec<_> = (0..5000)
            .map(|i| record_alloc(&[base + i, base], 16, 1.0))
            .collect();
        for (i, &e) in entries.iter().enumerate() {
            assert_eq!(record_alloc(&[base + i, base], 16, 1.0), e);
        }
    }
}
