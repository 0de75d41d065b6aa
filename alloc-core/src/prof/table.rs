//! The heap profiler's bookkeeping: a deduplicated table of sampled call stacks with their
//! live and cumulative estimates, and the dump triggers.
//!
//! A sampled allocation is recorded after its stack was captured, with no engine lock held: its
//! stack is found (without a lock: entries are never removed, and each is published whole) or
//! inserted (under the table's lock), and the unbiased estimate of what it stands for is added
//! to the stack's live and cumulative counters. Each entry keeps its counters in one copy per
//! *lane* (up to one per CPU, each on a cache line of its own), and a thread adds to its own
//! lane's copy under its lane's lock: threads that sample the same stack at once, as the
//! threads of a pool do, neither wait for each other nor pass the entry's line between cores.
//! A dump sums the copies. The sampled block itself remembers its stack and estimate (in its
//! span descriptor, the sampled-blocks table or its huge header), so its `free` subtracts
//! exactly what was added, in whichever lane frees it. Counters are atomics, so a dump reads
//! the table without a lock and never stalls sampling threads.
//!
//! With `prof_peek` on, the table also keeps the address of every live sampled block (the
//! *peek set*, under the same lock), so that a dump can copy the first bytes of each block
//! ([`peek_next`]). Its free path takes this lock to forget the block before the block's pages
//! go back (`api::sampled`; a huge block is forgotten before its mapping is released or moved),
//! so a block found in the set under the lock is still ours to read.
//!
//! Dumps are requested by triggers that may fire in awkward places (a signal handler, the page
//! heap's lock): they only set a bit. The bits are served at the next tick of an allocating
//! thread, with no lock held, or at exit.

use crate::base::open_table::{Keyed, OpenTable};
use crate::base::{config, meta};
use crate::platform::lock::{Locked, Padded, RawLock, SpinLock};
use crate::platform::os;
use crate::prof::unwind::{self, LANES};
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Deepest stack recorded.
pub const MAX_FRAMES: usize = 64;

/// One distinct call stack and what its sampled allocations stand for. Its counters follow
/// it, one [`LaneCounts`] per lane in use (see [`lanes`]).
#[repr(C, align(64))]
pub struct StackEntry {
    hash: u64,
    /// Next entry of the bucket: read without a lock, so written with release.
    next_in_bucket: AtomicPtr<StackEntry>,
    /// Next entry in insertion order, newest first (see [`entries`]).
    pub next: *mut StackEntry,
    /// Frame count.
    pub depth: usize,
    /// Return addresses, innermost first.
    pub frames: *const usize,
    /// The last peek dump that listed a block of this stack (see [`StackEntry::mark`]).
    peek_mark: AtomicU64,
    /// Lanes of counters after the entry, less one (a power of two, less one).
    lane_mask: usize,
}

/// One lane's copy of a stack's counters, on a cache line of its own: written under the
/// lane's lock (see [`LaneLock`]), read anywhere. The live counts of one lane may go below
/// zero (a block sampled in one lane and freed in another); their sum does not.
#[repr(C, align(64))]
struct LaneCounts {
    live_objects: AtomicF64,
    live_bytes: AtomicF64,
    total_objects: AtomicF64,
    total_bytes: AtomicF64,
    live_samples: AtomicU64,
    total_samples: AtomicU64,
}

/// An f64 in an AtomicU64: written under its lane's lock, read anywhere.
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    fn add(&self, v: f64) {
        self.0.store((self.get() + v).to_bits(), Ordering::Relaxed);
    }
    /// Subtracts `v` (not `add(-v)`: negating takes a constant from memory, a cache miss on
    /// a sample's free).
    fn sub(&self, v: f64) {
        self.0.store((self.get() - v).to_bits(), Ordering::Relaxed);
    }
}

/// `bytes` as an f64: through i64 (sizes are below 2^63), whose conversion takes no constant
/// from memory, unlike u64's.
fn bytes_f64(bytes: usize) -> f64 {
    bytes as i64 as f64
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

    /// Marks the entry as seen by dump `dump` (a number the caller never reuses); returns the
    /// previous mark. The peek writer lists each stack its blocks belong to once.
    pub fn mark(&self, dump: u64) -> u64 {
        self.peek_mark.swap(dump, Ordering::Relaxed)
    }

    /// The last mark set by [`StackEntry::mark`] (0: never).
    pub fn marked(&self) -> u64 {
        self.peek_mark.load(Ordering::Relaxed)
    }

    /// The stack's counters now: the sum of its lanes'.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for lane in 0..=self.lane_mask {
            let l = self.lane(lane);
            c.live_objects += l.live_objects.get();
            c.live_bytes += l.live_bytes.get();
            c.total_objects += l.total_objects.get();
            c.total_bytes += l.total_bytes.get();
            c.live_samples = c
                .live_samples
                .wrapping_add(l.live_samples.load(Ordering::Relaxed));
            c.total_samples = c
                .total_samples
                .wrapping_add(l.total_samples.load(Ordering::Relaxed));
        }
        c.live_objects = c.live_objects.max(0.0);
        c.live_bytes = c.live_bytes.max(0.0);
        c
    }

    /// The counters of lane `lane` (taken modulo the entry's lanes).
    fn lane(&self, lane: usize) -> &LaneCounts {
        // SAFETY: `lane_mask + 1` lanes follow the entry, written before it was published.
        unsafe {
            &*(self as *const StackEntry)
                .add(1)
                .cast::<LaneCounts>()
                .add(lane & self.lane_mask)
        }
    }
}

/// What the table's lock guards: insertion and growth of the buckets (published in
/// [`BUCKETS`]), and the peek set.
struct Table {
    count: usize,
    peek: PeekSet,
}

/// The bucket array: its mask in word 0, then `mask + 1` bucket heads. Replaced whole when the
/// table grows (old arrays are abandoned, never freed), so a reader loads it once and always
/// sees a mask and heads that belong together.
static BUCKETS: AtomicPtr<usize> = AtomicPtr::new(ptr::null_mut());

/// A lane's lock: it guards that lane's copy of every entry's counters, and the lane's sample
/// counts. Each is on a cache line of its own.
struct LaneLock {
    lock: SpinLock,
    /// Sampled blocks now live (this lane's samples less its frees, so one lane's count may
    /// wrap below zero) and sampled since the start: written under the lock.
    samples_live: AtomicU64,
    samples_total: AtomicU64,
}

static LANE_LOCKS: [Padded<LaneLock>; LANES] = [const {
    Padded(LaneLock {
        lock: SpinLock::new(),
        samples_live: AtomicU64::new(0),
        samples_total: AtomicU64::new(0),
    })
}; LANES];

/// Lanes of counters that entries carry, less one: set with the first bucket array, from the
/// CPUs the process may run on (at most 8, a power of two).
static LANE_MASK: AtomicUsize = AtomicUsize::new(0);

/// The number of counter lanes for `cpus` CPUs: one per CPU, rounded up to a power of two,
/// at most 8 (an entry then carries 512 bytes of counters).
fn lanes(cpus: usize) -> usize {
    cpus.clamp(1, 8).next_power_of_two()
}

/// Lane `lane` of `entry`'s counters (modulo its lanes), and that lane's lock.
fn lane_of(entry: &StackEntry, lane: usize) -> (&LaneCounts, &'static LaneLock) {
    let lane = lane & entry.lane_mask;
    (entry.lane(lane), &LANE_LOCKS[lane])
}

/// Adds `d` to `c` (wrapping: `u64::MAX` takes one away), whose writers all hold one lock, so
/// no read-modify-write is needed.
fn bump(c: &AtomicU64, d: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(d), Ordering::Relaxed);
}

/// Bucket `hash` of the array `arr` (from [`BUCKETS`]).
///
/// # Safety
/// `arr` must be a published bucket array.
unsafe fn bucket(arr: *mut usize, hash: u64) -> &'static AtomicPtr<StackEntry> {
    // SAFETY: word 0 is the mask; the heads follow, `mask + 1` of them; arrays live forever.
    unsafe {
        &*arr
            .add(1 + (hash as usize & *arr))
            .cast::<AtomicPtr<StackEntry>>()
    }
}

/// The entry of `frames` (hash `hash`), without a lock; null if not found. May miss an entry
/// while the table grows (the caller then takes the lock and looks again), never finds a
/// wrong one.
fn find(frames: &[usize], hash: u64) -> *mut StackEntry {
    let arr = BUCKETS.load(Ordering::Acquire);
    if arr.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: a published array; entries are published whole (release) and never freed.
    unsafe {
        let mut e = bucket(arr, hash).load(Ordering::Acquire);
        while !e.is_null() {
            if (*e).hash == hash && (*e).frames() == frames {
                return e;
            }
            e = (*e).next_in_bucket.load(Ordering::Acquire);
        }
    }
    ptr::null_mut()
}

/// One live sampled block of the peek set (`addr` 0: an empty slot).
#[derive(Clone, Copy)]
#[repr(C)]
struct PeekSlot {
    addr: usize,
    entry: *mut StackEntry,
    bytes: usize,
}

impl Keyed for PeekSlot {
    fn key(&self) -> usize {
        self.addr
    }
}

/// The live sampled blocks, by address.
type PeekSet = OpenTable<PeekSlot>;

// SAFETY: the table's memory is metadata owned by it, reached only under its lock.
unsafe impl Send for Table {}

static TABLE: Locked<Table> = Locked::new(Table {
    count: 0,
    peek: PeekSet::new(),
});
static NEWEST: AtomicPtr<StackEntry> = AtomicPtr::new(ptr::null_mut());
/// Blocks in the peek set (written under the table lock), so that frees skip the lock when
/// it is empty.
static PEEK_USED: AtomicUsize = AtomicUsize::new(0);

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
    let (live, total) = LANE_LOCKS.iter().fold((0u64, 0u64), |(live, total), s| {
        (
            live.wrapping_add(s.samples_live.load(Ordering::Relaxed)),
            total.wrapping_add(s.samples_total.load(Ordering::Relaxed)),
        )
    });
    (live as usize, total)
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

/// Records a sampled allocation of `bytes` bytes at `block` standing for `weight` allocations,
/// made from the stack `frames`. With `prof_peek` on, `block` (if not 0) joins the peek set.
/// Returns the stack's entry (to be handed to [`record_free`]), or null if metadata memory ran
/// out (the sample is then dropped). `known`, if not null, is the entry this returned before
/// for these same frames (the caller remembered it with them), and the table is not searched.
pub fn record_alloc(
    known: *mut StackEntry,
    frames: &[usize],
    bytes: usize,
    weight: f64,
    block: usize,
) -> *mut StackEntry {
    let frames = &frames[..frames.len().min(MAX_FRAMES)];
    let peek = block != 0 && config::prof_peek() > 0;
    let mut entry = known;
    let mut hash = 0;
    if entry.is_null() {
        hash = hash_frames(frames);
        entry = find(frames, hash);
    }
    if entry.is_null() || peek {
        let mut table = TABLE.lock();
        if entry.is_null() {
            entry = find_or_insert(&mut table, frames, hash);
        }
        if peek && !entry.is_null() {
            let slot = PeekSlot {
                addr: block,
                entry,
                bytes,
            };
            table.peek.insert(slot, usize::MAX);
            PEEK_USED.store(table.peek.live(), Ordering::Relaxed);
        }
    }
    if entry.is_null() {
        return entry;
    }
    // SAFETY: entries are never freed.
    let (e, s) = lane_of(unsafe { &*entry }, unwind::lane());
    s.lock.lock();
    e.live_objects.add(weight);
    e.live_bytes.add(weight * bytes_f64(bytes));
    e.total_objects.add(weight);
    e.total_bytes.add(weight * bytes_f64(bytes));
    bump(&e.live_samples, 1);
    bump(&e.total_samples, 1);
    bump(&s.samples_live, 1);
    bump(&s.samples_total, 1);
    s.lock.unlock();
    entry
}

/// Records that a sampled block recorded with `record_alloc(.., bytes, weight, block)` is
/// being freed, and drops `block` from the peek set (0: nothing to drop). Called before the
/// block's memory goes back, so that a dump holding the lock never reads a block that is gone.
///
/// # Safety
/// `entry` must come from [`record_alloc`] and the block be freed once.
pub unsafe fn record_free(entry: *mut StackEntry, bytes: usize, weight: f64, block: usize) {
    if entry.is_null() {
        return;
    }
    // The set is only ever filled by allocations that happened before this free.
    if block != 0 && PEEK_USED.load(Ordering::Relaxed) != 0 {
        let mut table = TABLE.lock();
        if table.peek.remove(block).is_some() {
            PEEK_USED.store(table.peek.live(), Ordering::Relaxed);
        }
    }
    // SAFETY: entries are never freed.
    subtract(unsafe { &*entry }, unwind::lane(), bytes, weight);
}

/// Takes a freed sample of `bytes` with `weight` off `entry`'s counters in lane `lane`.
fn subtract(entry: &StackEntry, lane: usize, bytes: usize, weight: f64) {
    let (e, s) = lane_of(entry, lane);
    s.lock.lock();
    e.live_objects.sub(weight);
    e.live_bytes.sub(weight * bytes_f64(bytes));
    bump(&e.live_samples, u64::MAX);
    bump(&s.samples_live, u64::MAX);
    s.lock.unlock();
}

/// Drops `block` from the peek set, if it is there: for a huge block, before its mapping is
/// released or moved (its counters are settled by [`record_free`] afterwards, with block 0).
/// Returns its stack entry and recorded size. Takes the lock only if the set holds anything.
pub fn peek_forget(block: usize) -> Option<(*mut StackEntry, usize)> {
    if PEEK_USED.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut table = TABLE.lock();
    let found = table.peek.remove(block)?;
    PEEK_USED.store(table.peek.live(), Ordering::Relaxed);
    Some((found.entry, found.bytes))
}

/// Puts a block taken out by [`peek_forget`] back, at its (new) address.
pub fn peek_restore(block: usize, entry: *mut StackEntry, bytes: usize) {
    if block != 0 && !entry.is_null() {
        let mut table = TABLE.lock();
        table.peek.insert(
            PeekSlot {
                addr: block,
                entry,
                bytes,
            },
            usize::MAX,
        );
        PEEK_USED.store(table.peek.live(), Ordering::Relaxed);
    }
}

/// A live sampled block copied by [`peek_next`].
pub struct PeekBlock {
    /// Where to go on from (the next call's `cursor`).
    pub next: usize,
    /// The block's address.
    pub addr: usize,
    /// The stack it was allocated from.
    pub entry: &'static StackEntry,
    /// Its requested size.
    pub bytes: usize,
    /// How many of its first bytes were copied (0 if it could not be read).
    pub copied: usize,
}

/// The first block of the peek set at or after slot `cursor`: copies its first
/// `min(out.len(), size)` bytes into `out` under the table lock, which the block's free path
/// takes before its memory goes back, so the block is live (or being freed, its pages still
/// ours) while it is read. None past the end. The set may change between calls: a block
/// allocated or freed meanwhile may be missed, and one moved by the set's growth seen twice.
pub fn peek_next(cursor: usize, out: &mut [u8]) -> Option<PeekBlock> {
    let table = TABLE.lock();
    let set = &table.peek;
    let mut i = cursor;
    while let Some((next, s)) = set.next_from(i) {
        i = next;
        if s.entry.is_null() {
            continue;
        }
        let n = out.len().min(s.bytes);
        let copied = match os::copy_own(s.addr, &mut out[..n]) {
            Some(true) => n,
            Some(false) => 0,
            None => {
                // The kernel copy is filtered: read directly. The block is live (see above).
                for (k, b) in out[..n].iter_mut().enumerate() {
                    // SAFETY: `[addr, addr + bytes)` is a live block of ours.
                    *b = unsafe { core::ptr::read_volatile((s.addr as *const u8).add(k)) };
                }
                n
            }
        };
        return Some(PeekBlock {
            next: i,
            addr: s.addr,
            // SAFETY: entries are never freed.
            entry: unsafe { &*s.entry },
            bytes: s.bytes,
            copied,
        });
    }
    None
}

/// The entry of `frames`, inserted if new; under the table lock. Null when metadata memory ran
/// out.
fn find_or_insert(table: &mut Table, frames: &[usize], hash: u64) -> *mut StackEntry {
    let found = find(frames, hash);
    if !found.is_null() {
        return found;
    }
    let arr = BUCKETS.load(Ordering::Relaxed);
    // SAFETY: a published array (the lock is held: nobody else replaces it).
    if arr.is_null() || table.count > unsafe { *arr } {
        grow();
    }
    let arr = BUCKETS.load(Ordering::Relaxed);
    if arr.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: entries and the array are metadata owned by the table, changed under its lock.
    unsafe {
        let head = bucket(arr, hash);
        let lane_mask = LANE_MASK.load(Ordering::Relaxed);
        let size = core::mem::size_of::<StackEntry>()
            + (lane_mask + 1) * core::mem::size_of::<LaneCounts>();
        let copy = meta::alloc(core::mem::size_of_val(frames).max(8), 8).cast::<usize>();
        let entry = meta::alloc(size, 64).cast::<StackEntry>();
        if copy.is_null() || entry.is_null() {
            return ptr::null_mut();
        }
        ptr::copy_nonoverlapping(frames.as_ptr(), copy, frames.len());
        // The lanes' counters after it are zeroes already (metadata is zeroed): all 0.0.
        entry.write(StackEntry {
            hash,
            next_in_bucket: AtomicPtr::new(head.load(Ordering::Relaxed)),
            next: NEWEST.load(Ordering::Relaxed),
            depth: frames.len(),
            frames: copy,
            peek_mark: AtomicU64::new(0),
            lane_mask,
        });
        head.store(entry, Ordering::Release);
        table.count += 1;
        NEWEST.store(entry, Ordering::Release);
        entry
    }
}

/// Doubles the bucket array (the old one is abandoned: metadata is never freed, and the sizes
/// double, so at most as much again is wasted). Under the table lock. Readers still walking the
/// old array may follow a relinked entry into the new chains and miss what they look for;
/// chains only ever lead to older entries, or (once relinked) to newer ones, so every walk ends.
fn grow() {
    let old = BUCKETS.load(Ordering::Relaxed);
    let new_len = if old.is_null() {
        LANE_MASK.store(lanes(os::cpu_count()) - 1, Ordering::Relaxed);
        1024
    } else {
        // SAFETY: a published array's word 0 is its mask.
        2 * (unsafe { *old } + 1)
    };
    let arr = meta::alloc((1 + new_len) * core::mem::size_of::<usize>(), 64).cast::<usize>();
    if arr.is_null() {
        return;
    }
    // SAFETY: the new array is zeroed metadata of `1 + new_len` words, not yet published;
    // entries are ours under the lock.
    unsafe {
        *arr = new_len - 1;
        let mut e = NEWEST.load(Ordering::Relaxed);
        while !e.is_null() {
            let head = bucket(arr, (*e).hash);
            (*e).next_in_bucket
                .store(head.load(Ordering::Relaxed), Ordering::Release);
            head.store(e, Ordering::Relaxed);
            e = (*e).next;
        }
    }
    BUCKETS.store(arr, Ordering::Release);
}

/// Fork: hold the table lock across `fork`.
pub fn prefork() {
    TABLE.raw_lock();
    LANE_LOCKS.iter().for_each(|s| s.lock.lock());
}

/// Fork: release in the parent.
pub fn postfork_parent() {
    LANE_LOCKS.iter().rev().for_each(|s| s.lock.unlock());
    // SAFETY: taken in `prefork` by this thread.
    unsafe { TABLE.raw_unlock() };
}

/// Fork: reset in the child; a dump the parent had in progress is not the child's.
pub fn postfork_child() {
    LANE_LOCKS.iter().for_each(|s| s.lock.reset_after_fork());
    TABLE.reset_after_fork();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_are_deduplicated_and_counted() {
        let a = [0x1000usize, 0x2000, 0x3000];
        let b = [0x1000usize, 0x2000, 0x3001];
        let ea = record_alloc(ptr::null_mut(), &a, 100, 2.0, 0);
        let eb = record_alloc(ptr::null_mut(), &b, 100, 1.0, 0);
        let ea2 = record_alloc(ptr::null_mut(), &a, 50, 4.0, 0);
        assert_eq!(ea, ea2);
        assert_ne!(ea, eb);
        // SAFETY: entries are never freed.
        let c = unsafe { &*ea }.counts();
        assert_eq!(c.live_objects, 6.0);
        assert_eq!(c.live_bytes, 400.0);
        // SAFETY: recorded above with these figures.
        unsafe { record_free(ea, 100, 2.0, 0) };
        // SAFETY: as above.
        let c = unsafe { &*ea }.counts();
        assert_eq!((c.live_objects, c.live_bytes), (4.0, 200.0));
        assert_eq!((c.total_objects, c.total_bytes), (6.0, 400.0));
        // SAFETY: as above.
        assert_eq!(unsafe { &*eb }.frames(), &b);
    }

    /// Threads record distinct and shared stacks while the table grows under them: each stack
    /// has one entry (a lookup that misses during growth finds it under the lock instead of
    /// inserting it twice) and no count is lost across the lanes.
    #[test]
    fn concurrent_recording_keeps_one_entry_per_stack_and_every_count() {
        let base = 0x5100_0000usize;
        let threads: Vec<_> = (0..4usize)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..3000usize {
                        let own = [base + t * 100_000 + i, base];
                        let shared = [base + 1_000_000 + i % 50, base];
                        mine.push(record_alloc(ptr::null_mut(), &own, 8, 1.0, 0) as usize);
                        record_alloc(ptr::null_mut(), &shared, 8, 1.0, 0);
                    }
                    for (i, &e) in mine.iter().enumerate() {
                        let again = record_alloc(
                            ptr::null_mut(),
                            &[base + t * 100_000 + i, base],
                            8,
                            1.0,
                            0,
                        );
                        assert_eq!(again as usize, e, "stack {i} of thread {t} has two entries");
                    }
                    mine
                })
            })
            .collect();
        for h in threads {
            for e in h.join().unwrap() {
                // SAFETY: entries are never freed.
                let c = unsafe { &*(e as *const StackEntry) }.counts();
                assert_eq!((c.total_samples, c.total_objects), (2, 2.0));
            }
        }
        for i in 0..50usize {
            let e = record_alloc(ptr::null_mut(), &[base + 1_000_000 + i, base], 8, 1.0, 0);
            // SAFETY: as above.
            let c = unsafe { &*e }.counts();
            assert_eq!(c.total_samples, 4 * 60 + 1, "shared stack {i}");
            assert_eq!(c.live_bytes, 8.0 * (4 * 60 + 1) as f64);
        }
    }

    /// A block sampled in one lane and freed in another leaves its stack's live counts where
    /// they were, though each lane holds its own copy of them.
    #[test]
    fn a_block_freed_in_another_lane_is_subtracted() {
        assert_eq!([lanes(0), lanes(2), lanes(3), lanes(64)], [1, 2, 4, 8]);
        let stack = [0x6100_0000usize, 0x6100_0010];
        let before = sample_counts().1;
        // SAFETY: entries are never freed.
        let entry = unsafe { &*record_alloc(ptr::null_mut(), &stack, 64, 3.0, 0) };
        subtract(entry, unwind::lane() + 1, 64, 3.0);
        let c = entry.counts();
        assert_eq!(
            (c.live_samples, c.live_objects, c.live_bytes),
            (0, 0.0, 0.0)
        );
        assert_eq!((c.total_samples, c.total_bytes), (1, 192.0));
        assert!(sample_counts().1 > before);
    }

    #[test]
    fn table_grows_and_keeps_every_stack() {
        let base = 0x7000_0000usize;
        let entries: Vec<_> = (0..5000)
            .map(|i| record_alloc(ptr::null_mut(), &[base + i, base], 16, 1.0, 0))
            .collect();
        for (i, &e) in entries.iter().enumerate() {
            assert_eq!(
                record_alloc(ptr::null_mut(), &[base + i, base], 16, 1.0, 0),
                e
            );
        }
    }
}
