//! Thread caches: each thread's private stacks of free blocks, one per cached class.
//!
//! `malloc` pops and `free` pushes without locks or atomic read-modify-writes. An empty stack is
//! refilled from the thread's arena with half its capacity in one locked batch (all of it for a
//! producer, see [`refill_size`]); a full one flushes the half it took last (the top of the
//! stack: no block moves; all of it for a consumer, see [`on_full`]) back to the arenas
//! that own the blocks, grouped so each arena's lock is taken once. Flushing the older half
//! instead, and keeping the blocks freed last for the next allocations, measured no better
//! (`frag` and thread rounds 16–21 % slower, `pairs` 5 % faster).
//!
//! A block freed by a thread of another arena than the block's is normally cached and reused
//! by the thread that frees it, as in jemalloc and tcmalloc: that is cheapest and keeps memory
//! where it is used. Blocks smaller than a cache line are the exception while their arena has
//! threads: handed out here, they would put this thread's objects in lines the owner's thread
//! still writes (passive false sharing). They come from the thread's line arena (one per CPU,
//! see `pool::arena::ThreadArenas`), so threads that run at once are told apart by it even
//! when they share the arena of every other class. Those of another line arena wait in the
//! cache's remote buffer and go home with up to [`REMOTE_CAP`] others, sorted by class and
//! arena, one lock per group.
//!
//! Large classes up to 256 KiB are cached too, two blocks each, flushed at a tick when
//! they were not used since the last one.
//!
//! A small class's stack holds about 32 KiB worth (its standard capacity) and doubles each
//! time the thread overflows it, up to about 1 MiB worth and within the thread's share of a
//! growth allowance (see [`growth_allowance`]), so a thread that allocates and frees in large
//! batches ends up serving them from its cache alone. A stack has three places, taken in turn
//! (see [`STACK_LAYOUT`]): it starts small, 4 slots at most, packed side by side with the
//! other classes' on the cache's first page, with every field the hot paths and a tick use
//! (so a small program's thread touches one page of its cache); at its first
//! overflow or the second time it runs dry it moves to its standard stack, also packed (see
//! [`unpack`]); the first time it grows it moves to a region of its own, room for its largest
//! capacity. Laid out at their largest capacities from the start, every class a thread used
//! put its stack on a page of its own, a page fault and 4 KiB for each (about 20 per thread in
//! a small program); packed at their standard capacities, 1 KiB of slots each, they still
//! took five pages. A grown
//! stack whose class the thread has not used for `dirty_decay_ms` shrinks back by half at a
//! tick, once per period, as dirty pages decay: a class used in every round of a batch job
//! keeps its stack however many ticks fall between its rounds.
//!
//! Caches live in metadata memory, not in TLS (which holds only a pointer), so a thread costs
//! one recycled cache, and all live caches sit on a list that statistics and fork walk.
//! A freed block carries the process's `free_key` in its first word while cached, which lets a
//! second `free` of it be recognised cheaply (confirmed by a scan before aborting). `free`'s fast
//! path reads only the key's first byte (see [`may_hold_free_key`]).

use crate::addr::segment::{kind, Segment, SpanDesc};
use crate::base::config;
use crate::base::meta;
use crate::base::size_class::{
    is_small, packed_capacity, stack_capacity, total_stack_slots, StackCapacity, CACHED_LARGE_MIN,
    CLASSES, NUM_CACHED, SUBLINE_CLASSES, TOTAL_CACHE_SLOTS,
};
use crate::platform::lock::Locked;
use crate::platform::os;
use crate::pool::arena::{self, Arena, ThreadArenas};
use crate::thread::sampler::Schedule;
use crate::thread::trace_memo::TraceMemo;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// One class's stack: the blocks are `base..top`, oldest first, and `end` is `base` plus the
/// capacity. Pointers rather than counts keep `malloc` and `free` to one load, one compare and
/// one store on the stack. `top` and `requests` are atomics only so that statistics may read
/// them from other threads; the owner uses plain loads and stores. Statistics never read
/// `base`, which moves (see [`ThreadCache::cached_seen`]).
#[repr(C)]
pub struct CacheBin {
    /// The next free slot.
    pub top: AtomicPtr<*mut u8>,
    /// Bottom of the stack: in the small packed stacks, the standard packed ones, or the
    /// class's own region once the stack has grown (see [`STACK_LAYOUT`]).
    base: *mut *mut u8,
    /// One past the last slot the stack may use now.
    pub end: *mut *mut u8,
    /// Allocation requests served through this bin.
    pub requests: AtomicU64,
}

impl CacheBin {
    /// Bottom of the stack.
    #[inline(always)]
    pub fn base(&self) -> *mut *mut u8 {
        self.base
    }

    /// Blocks on the stack (the owner's view).
    #[inline]
    pub fn count(&self) -> usize {
        // SAFETY: `top` stays within `base..=end`, one allocation.
        unsafe { self.top.load(Ordering::Relaxed).offset_from(self.base()) as usize }
    }

    /// Sets the number of blocks on the stack (the slots below it must hold them).
    #[inline]
    pub fn set_count(&self, n: usize) {
        self.top
            .store(self.base().wrapping_add(n), Ordering::Relaxed);
    }

    /// The stack's capacity now.
    #[inline]
    pub fn capacity(&self) -> usize {
        // SAFETY: `end` is within the bin's slot range, like `top`.
        unsafe { self.end.offset_from(self.base()) as usize }
    }

    /// Pushes `p` if the stack has room; false if it is full.
    ///
    /// # Safety
    /// Only the cache's owner may push.
    #[inline(always)]
    pub unsafe fn try_push(&self, p: *mut u8) -> bool {
        let top = self.top.load(Ordering::Relaxed);
        if top == self.end {
            return false;
        }
        // SAFETY: `top` is below `end`, a slot of this stack, which only the owner writes.
        unsafe {
            *top = p;
            self.top.store(top.add(1), Ordering::Relaxed);
        }
        true
    }

    /// Sets the capacity (at most the class's largest, and not below the count).
    #[inline]
    pub fn set_capacity(&mut self, n: usize) {
        self.end = self.base().wrapping_add(n);
    }

    /// Moves the stack to `to`, which has room for `capacity` slots, and sets that capacity.
    ///
    /// # Safety
    /// Only the owner may move its stacks; `to` must be the class's own region, with room for
    /// `capacity` slots, not below the count.
    unsafe fn move_to(&mut self, to: *mut *mut u8, capacity: usize) {
        let n = self.count();
        // SAFETY: per the contract; the packed stack and the region do not overlap.
        unsafe { ptr::copy_nonoverlapping(self.base(), to, n) };
        self.base = to;
        self.top.store(to.wrapping_add(n), Ordering::Relaxed);
        self.end = to.wrapping_add(capacity);
    }
}

/// A thread's cache. See the module docs.
#[repr(C)]
pub struct ThreadCache {
    /// Counts down the bytes allocated until the next thread event (a sample or a tick).
    pub bytes_until_event: i64,
    /// When the next sample and tick fall.
    pub schedule: Schedule,
    /// The value written into cached blocks, for double-free detection.
    pub free_key: u64,
    /// The last block `malloc`'s fast path handed out, and its class: when `free` is handed that
    /// block, it guesses the class (see `api::free`). Only a guess, checked before use; the
    /// block is only compared, never dereferenced.
    pub last_block: *mut u8,
    /// The class of `last_block`.
    pub last_class: usize,
    /// The stacks.
    pub bins: [CacheBin; NUM_CACHED],
    /// The thread's shared arena: refills of every class but the sub-line ones come from here
    /// (see [`ThreadArenas`]).
    pub arena: &'static Arena,
    /// The thread's line arena: refills of the sub-line classes come from here (after the
    /// stacks, which keep their alignment to cache lines).
    pub line_arena: &'static Arena,
    /// Bytes by which the stacks have grown beyond their initial capacities (at most the
    /// growth allowance when they grew, see [`growth_allowance`]).
    grown_bytes: usize,
    /// The block this thread's last growing `realloc` returned, if still where it was moved:
    /// growing it again means it keeps growing, and it gets headroom (see `api::realloc`).
    /// Only compared, never dereferenced.
    pub last_grown: *mut u8,
    /// The size that `realloc` was last asked to grow `last_grown` to.
    pub last_grown_size: usize,
    next: *mut ThreadCache,
    prev: *mut ThreadCache,
    /// How many of `remote` hold blocks. Atomic only so that statistics may read it.
    remote_len: AtomicUsize,
    /// How many growths in a row made `last_grown` what it is.
    pub grown_steps: u32,
    /// The segment-map tag of the thread's line arena, which tells `free` a sub-line block that
    /// another thread may be using a cache line of.
    pub arena_tag: u8,
    /// Whether `trace_memo` may hold a walk (see [`ThreadCache::trace_memo`]).
    memo_used: bool,
    /// Each stack's `requests` (their low 32 bits, as every field below) at which its last
    /// refill runs out if the thread frees none of the class meanwhile, or [`FREES_TOO`] (see
    /// [`refill_size`]).
    refill_runs_out_at: [u32; NUM_CACHED],
    /// Each stack's `requests` at the last tick: unchanged means unused since (see [`gc`]).
    requests_seen: [u32; NUM_CACHED],
    /// Blocks of other arenas freed by this thread, waiting to go home, with their classes:
    /// the first [`REMOTE_NEAR`] of the `remote_len` (see [`ThreadCache::remote_slot`]).
    /// Atomics only so that statistics may read them.
    remote_near: [AtomicPtr<u8>; REMOTE_NEAR],
    remote_near_class: [AtomicU8; REMOTE_NEAR],
    /// The stacks' slots: every class's small stack, packed, then every class's standard
    /// stack, packed, then each class's own region for its largest capacity (see
    /// [`STACK_LAYOUT`]). Everything up to the small stacks lies in the cache's first page.
    slots: [*mut u8; TOTAL_SMALL_SLOTS + TOTAL_STANDARD_SLOTS + TOTAL_CACHE_SLOTS],
    /// When each grown stack's class was last seen used at a tick, grew or shrank
    /// ([`os::now_ms`], wrapping); written only for grown stacks, so that a thread whose
    /// stacks never grow never touches it (see [`gc`]).
    used_at: [u32; NUM_CACHED],
    /// The profiler's last stack walk on this thread, to repeat it without walking. Far from
    /// the first page and left as mapped (zero: empty) until a sample uses it, so that a
    /// thread that takes no sample never touches its page.
    trace_memo: TraceMemo,
    /// The rest of the remote buffer, from [`REMOTE_NEAR`] on.
    remote_far: [AtomicPtr<u8>; REMOTE_CAP - REMOTE_NEAR],
    remote_far_class: [AtomicU8; REMOTE_CAP - REMOTE_NEAR],
}

impl ThreadCache {
    /// Slot `i` (below [`REMOTE_CAP`]) of the remote buffer and its class: a thread that frees
    /// a few blocks of other arenas between ticks uses the slots on the cache's first page
    /// alone; one that frees many, all of them.
    #[inline(always)]
    fn remote_slot(&self, i: usize) -> (&AtomicPtr<u8>, &AtomicU8) {
        if i < REMOTE_NEAR {
            (&self.remote_near[i], &self.remote_near_class[i])
        } else {
            (
                &self.remote_far[i - REMOTE_NEAR],
                &self.remote_far_class[i - REMOTE_NEAR],
            )
        }
    }

    /// The profiler's memo of this thread's last stack walk (the caller's own cache).
    pub fn trace_memo(&mut self) -> &mut TraceMemo {
        self.memo_used = true;
        &mut self.trace_memo
    }

    /// The thread's arenas.
    pub fn arenas(&self) -> ThreadArenas {
        ThreadArenas {
            shared: self.arena,
            line: self.line_arena,
        }
    }

    /// The arena that refills `class` for this thread, and that its blocks of `class` call
    /// home.
    #[inline(always)]
    pub fn arena_for(&self, class: usize) -> &'static Arena {
        if class < SUBLINE_CLASSES {
            self.line_arena
        } else {
            self.arena
        }
    }

    /// Blocks cached for `class`, as another thread sees them (statistics). Only `top` is
    /// read: the stack's bottom is the start of whichever of its three places `top` lies in
    /// (they come in that order; the owner may be moving the stack), so the count is never
    /// made of two torn pointers.
    pub fn cached_seen(&self, class: usize) -> usize {
        let slots = self.slots.as_ptr() as usize;
        let top = self.bins[class].top.load(Ordering::Relaxed) as usize;
        let place = |offset: usize| slots + offset * size_of::<*mut u8>();
        let base = STACK_LAYOUT[class]
            .iter()
            .map(|&offset| place(offset))
            .rfind(|&start| top >= start)
            .unwrap_or(slots);
        top.saturating_sub(base) / size_of::<*mut u8>()
    }
}

/// The slots of every class's small stack, packed at the start of a cache's slots.
const TOTAL_SMALL_SLOTS: usize = total_stack_slots(StackCapacity::Packed);

/// The slots of every class's standard stack, packed after the small ones.
const TOTAL_STANDARD_SLOTS: usize = total_stack_slots(StackCapacity::Standard);

/// Where each class's stack lives in a cache's slots, in the order it takes them: the offsets
/// of its small stack (where it starts), of its standard one (see [`unpack`]) and of its own
/// region (room for its largest capacity, taken the first time it grows, see [`grow`]).
const STACK_LAYOUT: [[usize; 3]; NUM_CACHED] = {
    let mut t = [[0; 3]; NUM_CACHED];
    let mut small = 0;
    let mut standard = TOTAL_SMALL_SLOTS;
    let mut own = TOTAL_SMALL_SLOTS + TOTAL_STANDARD_SLOTS;
    let mut c = 0;
    while c < NUM_CACHED {
        t[c] = [small, standard, own];
        small += stack_capacity(c, StackCapacity::Packed);
        standard += stack_capacity(c, StackCapacity::Standard);
        own += stack_capacity(c, StackCapacity::Largest);
        c += 1;
    }
    t
};

/// The index of a class's standard stack in [`STACK_LAYOUT`].
const STANDARD: usize = 1;
/// The index of a class's own region in [`STACK_LAYOUT`].
const OWN: usize = 2;

/// Blocks of other arenas a cache holds before sending them home: enough that a consumer
/// thread's frees take one lock per class and arena for dozens of blocks, little enough (2 KiB
/// of pointers) that a thread which stops freeing keeps little memory from others.
pub const REMOTE_CAP: usize = 256;

/// The remote buffer's slots on the cache's first page, with the small stacks: all of it lay
/// on a page of its own, which a thread faulted in at the first block of another arena it
/// freed. The rest stays where it was, so a thread that frees many such blocks still sends
/// them home 256 at a time.
const REMOTE_NEAR: usize = 32;

struct CacheList {
    live: *mut ThreadCache,
    spare: *mut ThreadCache,
}

// SAFETY: the list's caches are reached only under its lock (or by their own threads).
unsafe impl Send for CacheList {}

/// Bytes of capacity the live threads' stacks may grow by, together, beyond their initial
/// capacities, shared evenly: a thread alone may grow its stacks by all of it, so a batch job
/// serves batches of a few MiB from its cache (as tcmalloc's thread caches do: at 1 MiB,
/// `pairs batches` refilled and flushed through the bins' locks and took 1.2x tcmalloc's time).
const GROWTH_SHARED: usize = 4 << 20;

/// What every thread's stacks may grow by however many threads there are: enough for every
/// tiny class to reach 1024 blocks. Larger, it mostly raised peak RSS where many threads cache
/// at once (16 threads a round: +13 % at 4 MiB each) or free what others allocated (17.5 MiB at
/// 2 MiB against 15.8 MiB, producer/consumer).
const GROWTH_PER_THREAD: usize = 1 << 20;

/// Thread caches in use (acquired and not yet released).
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static LIVE_CACHES: AtomicUsize = AtomicUsize::new(0);

/// Bytes each thread's stacks may grow by now: an even share of [`GROWTH_SHARED`] among the
/// live caches, and never less than [`GROWTH_PER_THREAD`].
fn growth_allowance() -> usize {
    let live = LIVE_CACHES.load(Ordering::Relaxed).max(1);
    (GROWTH_SHARED / live).max(GROWTH_PER_THREAD)
}

/// Requests served by the caches of threads that have exited, per cached class.
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static RETIRED_REQUESTS: [AtomicU64; NUM_CACHED] = [const { AtomicU64::new(0) }; NUM_CACHED];

/// Requests served so far by the caches of exited threads, for class `class` (< NUM_CACHED).
pub fn retired_requests(class: usize) -> u64 {
    RETIRED_REQUESTS[class].load(Ordering::Relaxed)
}

/// Moves a cache's request counts to the retired totals (the cache is being recycled).
fn retire_requests(tc: *mut ThreadCache) {
    for (class, total) in RETIRED_REQUESTS.iter().enumerate() {
        // SAFETY: the caller owns the cache.
        let n = unsafe { (*tc).bins[class].requests.swap(0, Ordering::Relaxed) };
        total.fetch_add(n, Ordering::Relaxed);
    }
}

#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static CACHES: Locked<CacheList> = Locked::new(CacheList {
    live: ptr::null_mut(),
    spare: ptr::null_mut(),
});

/// The value cached free blocks carry in their first word (see the module docs).
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static FREE_KEY: AtomicU64 = AtomicU64::new(0);

/// Draws the process's free key (once, at start-up).
pub fn init_free_key() {
    FREE_KEY.store(make_free_key(), Ordering::Relaxed);
}

/// The process's free key, for new thread caches.
pub fn free_key() -> u64 {
    FREE_KEY.load(Ordering::Relaxed)
}

/// A per-process value unlikely to appear in user data: address-space layout, the time and
/// the CPU's cycle counter (the pid elsewhere) mixed together (no allocation, no system entropy
/// source needed; `getpid` faulted in a page of libc that a small program does not use).
fn make_free_key() -> u64 {
    let local = 0u8;
    let mut x = (&local as *const u8 as u64) ^ (os::now_ms() << 32);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: reading the time-stamp counter has no preconditions.
        x ^= unsafe { core::arch::x86_64::_rdtsc() }.rotate_left(23);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: getpid has no preconditions.
        x ^= unsafe { libc::getpid() } as u64;
    }
    x ^= make_free_key as *const () as usize as u64;
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    // The first byte is one that UTF-8 text never holds and that is odd (so never a pointer's),
    // so that `may_hold_free_key`'s one-byte test seldom passes on live data.
    const FIRST_BYTES: [u64; 6] = [0xc1, 0xf5, 0xf7, 0xf9, 0xfb, 0xfd];
    (x & !0xff) | FIRST_BYTES[(x % FIRST_BYTES.len() as u64) as usize]
}

/// Whether the block at `p` may hold `key` in its first word (may be cached: a second `free`),
/// as `free`'s fast path asks it: by the first byte alone, which sends on to the checked path
/// (there [`holds_free_key`]) only about one block in 256 of random data, fewer of text.
///
/// A program that stores one byte at `p` just before `free(p)` (a flag, a string's terminator)
/// would make an eight-byte load wait for that store to reach the cache (a store is forwarded
/// only to a load it covers), about 2 ns a `free`; a one-byte load is forwarded.
///
/// # Safety
/// `p` must start a block of at least 8 bytes that the caller may read.
#[inline(always)]
pub unsafe fn may_hold_free_key(p: *const u8, key: u64) -> bool {
    // SAFETY: per the contract.
    unsafe { p.read() == key as u8 }
}

/// Whether the block at `p` holds `key` in its whole first word (it is cached, or the match
/// is a coincidence that [`check_double_free`] tells apart).
///
/// # Safety
/// As for [`may_hold_free_key`].
#[inline(always)]
pub unsafe fn holds_free_key(p: *const u8, key: u64) -> bool {
    // SAFETY: per the contract.
    unsafe { p.cast::<u64>().read() == key }
}

/// Gets a cache for a new thread of `arenas`: a recycled one or fresh metadata memory.
/// Null if memory ran out.
pub fn acquire(arenas: ThreadArenas, free_key: u64) -> *mut ThreadCache {
    let mut list = CACHES.lock();
    let mut tc = list.spare;
    let recycled = !tc.is_null();
    if !recycled {
        // Page-aligned: the fields and the small stacks take one page (see `ThreadCache`).
        tc = meta::alloc(core::mem::size_of::<ThreadCache>(), os::PAGE_SIZE).cast();
        if tc.is_null() {
            return tc;
        }
    } else {
        // SAFETY: spare caches are ours, off every other list.
        list.spare = unsafe { (*tc).next };
    }
    // SAFETY: `tc` is exclusively ours; every field is written before use.
    unsafe {
        let (schedule, countdown) = Schedule::new(free_key ^ (tc as u64).rotate_left(17));
        ptr::addr_of_mut!((*tc).bytes_until_event).write(countdown);
        ptr::addr_of_mut!((*tc).schedule).write(schedule);
        ptr::addr_of_mut!((*tc).free_key).write(free_key);
        ptr::addr_of_mut!((*tc).last_block).write(ptr::null_mut());
        ptr::addr_of_mut!((*tc).last_class).write(0);
        ptr::addr_of_mut!((*tc).arena_tag)
            .write(crate::addr::registry::tag_of_index(arenas.line.index()));
        ptr::addr_of_mut!((*tc).arena).write(arenas.shared);
        ptr::addr_of_mut!((*tc).line_arena).write(arenas.line);
        ptr::addr_of_mut!((*tc).remote_len).write(AtomicUsize::new(0));
        ptr::addr_of_mut!((*tc).requests_seen).write([0; NUM_CACHED]);
        ptr::addr_of_mut!((*tc).refill_runs_out_at).write([0; NUM_CACHED]);
        ptr::addr_of_mut!((*tc).grown_bytes).write(0);
        ptr::addr_of_mut!((*tc).last_grown).write(ptr::null_mut());
        ptr::addr_of_mut!((*tc).last_grown_size).write(0);
        ptr::addr_of_mut!((*tc).grown_steps).write(0);
        // Fresh metadata is zero, an empty memo; a recycled cache's is emptied only if used
        // (writing it would fault its page in).
        if recycled && (*tc).memo_used {
            ptr::addr_of_mut!((*tc).trace_memo).write(TraceMemo::EMPTY);
        }
        ptr::addr_of_mut!((*tc).memo_used).write(false);
        let slots = ptr::addr_of_mut!((*tc).slots).cast::<*mut u8>();
        for (class, &[small, ..]) in STACK_LAYOUT.iter().enumerate() {
            let base = slots.add(small);
            ptr::addr_of_mut!((*tc).bins[class]).write(CacheBin {
                top: AtomicPtr::new(base),
                base,
                end: base.add(packed_capacity(class)),
                requests: AtomicU64::new(0),
            });
        }
        (*tc).prev = ptr::null_mut();
        (*tc).next = list.live;
        if !list.live.is_null() {
            (*list.live).prev = tc;
        }
        list.live = tc;
    }
    LIVE_CACHES.fetch_add(1, Ordering::Relaxed);
    tc
}

/// Takes a cached block of the largest class from large class `class` up to four times its
/// size that has one, for a block that `realloc` is growing (see `api::realloc`): a buffer
/// built up and freed waits in its class's stack, and the next one built the same way moves
/// into it rather than into new pages. None if no such class has a block cached.
///
/// The largest, not the smallest: a smaller block left in the cache (one a buffer outgrew, or
/// one a sample put in the way) would otherwise be taken by every buffer, outgrown and copied
/// out of, and cached again for the next (`regrow` with the profiler on fell into that after
/// a sample about one run in two: a copy or two of 16-40 KiB for every buffer).
///
/// # Safety
/// Only the cache's owner may call this; `class` must be a large class.
pub unsafe fn take_at_least(tc: *mut ThreadCache, class: usize) -> Option<*mut u8> {
    // Four classes a doubling: eight up is four times the size.
    for c in (class..NUM_CACHED.min(class + 9)).rev() {
        // SAFETY: the owner's own cache.
        let bin = unsafe { &(*tc).bins[c] };
        let n = bin.count();
        if n > 0 {
            bin.requests
                .store(bin.requests.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            bin.set_count(n - 1);
            // SAFETY: slot `n - 1` holds a cached block of class `c`, now ours; the free key in
            // its first word goes, as `malloc` clears it.
            unsafe {
                let p = *bin.base().add(n - 1);
                p.cast::<u64>().write(0);
                return Some(p);
            }
        }
    }
    None
}

/// Flushes a cache completely and recycles it (thread exit).
///
/// # Safety
/// `tc` must be a live cache no thread will use again.
pub unsafe fn release(tc: *mut ThreadCache) {
    // SAFETY: the caller hands the cache over.
    unsafe {
        flush_all(tc);
        let mut list = CACHES.lock();
        retire_requests(tc);
        unlink(&mut list, tc);
        LIVE_CACHES.fetch_sub(1, Ordering::Relaxed);
        (*tc).next = list.spare;
        list.spare = tc;
    }
}

unsafe fn unlink(list: &mut CacheList, tc: *mut ThreadCache) {
    // SAFETY: `tc` is on the live list, which the caller has locked.
    unsafe {
        if (*tc).prev.is_null() {
            list.live = (*tc).next;
        } else {
            (*(*tc).prev).next = (*tc).next;
        }
        if !(*tc).next.is_null() {
            (*(*tc).next).prev = (*tc).prev;
        }
    }
}

/// Returns every cached block to its arena. In chunks of [`EXIT_CHUNK`]: this runs at thread
/// exit, on a stack the thread itself may never have used as deeply.
///
/// # Safety
/// Only the cache's owner (or, after fork, the sole surviving thread) may call this.
pub unsafe fn flush_all(tc: *mut ThreadCache) {
    for class in 0..NUM_CACHED {
        // SAFETY: as documented.
        unsafe {
            let n = (*tc).bins[class].count();
            flush_in::<EXIT_CHUNK>(tc, class, n, false);
        }
    }
    // SAFETY: as documented.
    unsafe { flush_remote_in::<EXIT_CHUNK>(tc) };
}

/// Whether a block of class `class` may go home when another arena's thread frees it: the
/// first, cheap test of [`sends_home`], predictable where most blocks are larger.
#[inline(always)]
pub fn may_send_home(class: usize) -> bool {
    class < SUBLINE_CLASSES
}

/// Whether a block of class `class` from arena `owner` (not the freeing thread's) goes home
/// rather than into the freeing thread's cache: see the module docs.
#[inline(always)]
pub fn sends_home(class: usize, owner: &Arena) -> bool {
    may_send_home(class) && owner.is_used()
}

/// Takes block `p` of cached class `class`, which belongs to another arena, into the remote
/// buffer (see the module docs), sending the buffer home first if it is full.
///
/// # Safety
/// Only the cache's owner may call this; `p` must be a validated, unused block of `class`, a
/// class [`sends_home`] may send.
pub unsafe fn push_remote(tc: *mut ThreadCache, class: usize, p: *mut u8) {
    debug_assert!(may_send_home(class));
    // SAFETY: the owner has exclusive use of its cache.
    unsafe {
        let mut n = (*tc).remote_len.load(Ordering::Relaxed);
        if n == REMOTE_CAP {
            flush_remote(tc);
            n = 0;
        }
        let t = &*tc;
        let (slot, slot_class) = t.remote_slot(n);
        slot.store(p, Ordering::Relaxed);
        slot_class.store(class as u8, Ordering::Relaxed);
        t.remote_len.store(n + 1, Ordering::Relaxed);
        p.cast::<u64>().write(t.free_key);
    }
}

/// Sends every block of the remote buffer home: grouped by class here, then by arena in
/// [`return_blocks`]. Published before any block is returned, in chunks, as in [`flush`].
///
/// # Safety
/// Only the cache's owner (or, after fork, the sole surviving thread) may call this.
pub unsafe fn flush_remote(tc: *mut ThreadCache) {
    // SAFETY: forwarded contract.
    unsafe { flush_remote_in::<FLUSH_CHUNK>(tc) }
}

/// [`flush_remote`] in chunks of `CHUNK` blocks, copied to the stack.
///
/// # Safety
/// As for [`flush_remote`].
unsafe fn flush_remote_in<const CHUNK: usize>(tc: *mut ThreadCache) {
    let mut batch = [ptr::null_mut::<u8>(); CHUNK];
    let mut classes = [0u8; CHUNK];
    // SAFETY: the owner has exclusive use of its cache.
    let t = unsafe { &*tc };
    loop {
        let n = t.remote_len.load(Ordering::Relaxed);
        if n == 0 {
            return;
        }
        let k = n.min(CHUNK);
        for i in 0..k {
            let (slot, slot_class) = t.remote_slot(n - k + i);
            batch[i] = slot.load(Ordering::Relaxed);
            classes[i] = slot_class.load(Ordering::Relaxed);
        }
        t.remote_len.store(n - k, Ordering::Relaxed);
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        // Only the few sub-line classes come here: one pass per class, which moves that
        // class's blocks to the front of what is left.
        let mut done = 0;
        for class in 0..SUBLINE_CLASSES {
            let start = done;
            for i in start..k {
                if classes[i] as usize == class {
                    batch.swap(i, done);
                    classes.swap(i, done);
                    done += 1;
                }
            }
            if done > start {
                // SAFETY: validated, unused blocks of `class` (`push_remote`'s contract).
                unsafe { return_blocks(class, &mut batch[start..done], (*tc).line_arena, false) };
            }
        }
    }
}

/// Calls `f(class)` for every block in a cache's remote buffer (statistics; racy but in
/// bounds).
pub fn for_each_remote(tc: &ThreadCache, mut f: impl FnMut(usize)) {
    let n = tc.remote_len.load(Ordering::Relaxed).min(REMOTE_CAP);
    for i in 0..n {
        f(tc.remote_slot(i).1.load(Ordering::Relaxed) as usize);
    }
}

/// The mark of a stack whose thread has overflowed it (see [`refill_size`]).
const FREES_TOO: u32 = u32::MAX;

/// How many blocks to take into the empty stack of small class `class` at a refill (see
/// [`refill_rule`]). A small stack's first refill fills it: at half of its four slots, a
/// thread that used a class three times (a small program's `main`: two `FILE`s of stdio, a few
/// strings) ran it dry twice, and the move to the standard stack touched a second page of
/// the cache. A small stack that runs dry a second time moves to its standard stack
/// first (see [`unpack`]), so the stack's base may move: read it again afterwards. That refill
/// takes what a refill of the standard stack would, less what the small stack's took, so that
/// the thread holds what it held when every stack started at its standard capacity (one block
/// more or less left over in a stack tipped a batch of 1,000 blocks into flushing half of them
/// at each round: 1.07x the time). Call [`refilled`] with what the refill took.
///
/// # Safety
/// Only the cache's owner may call this.
#[inline(always)]
pub unsafe fn refill_size(tc: *mut ThreadCache, class: usize) -> usize {
    // SAFETY: the owner's own cache.
    unsafe {
        let unpacked = in_small_stack(tc, class);
        if unpacked {
            // The request being served is counted: one, and this is the small stack's first
            // refill.
            if (*tc).bins[class].requests.load(Ordering::Relaxed) <= 1 {
                return (*tc).bins[class].capacity();
            }
            unpack(tc, class);
        }
        let bin = &(*tc).bins[class];
        let want = refill_rule(
            bin.capacity(),
            bin.requests.load(Ordering::Relaxed) as u32,
            (*tc).refill_runs_out_at[class],
            (*tc).requests_seen[class] != 0,
        );
        if unpacked {
            // The small stack's one refill took its mark (the requests then, 1, plus what it
            // took) less one: a mini slab's few blocks may have been fewer than a small stack
            // (see `span::slab`). Frees before that refill can only make it seem more.
            let packed_refill = packed_capacity(class);
            let took = (*tc).refill_runs_out_at[class].saturating_sub(1);
            want.saturating_sub(packed_refill.min(took as usize)).max(1)
        } else {
            want
        }
    }
}

/// A refill of a stack of capacity `cap` whose `requests` (counting the one being served) are
/// `requests`, with its mark `runs_out_at` (see [`refilled`]), `ticked` if a tick has seen the
/// class in use: half the capacity, so that frees that follow find room; all of it when the
/// thread allocated every block of the last refill without freeing one of the class, has
/// never overflowed the stack, and has used the class since before a tick (a producer, whose
/// frees happen elsewhere): its refills, each a bin lock, halve (producer/consumer 0.92x the
/// time, queues of batches 0.83x; growing such a stack as well gained nothing more). A
/// thread that frees the class in batches of its own keeps half refills: full ones in its
/// first batches left more blocks in the stacks when the frees came, the stacks grew further
/// to take them, and the classes after them found the growth allowance spent (1.08x the time).
fn refill_rule(cap: usize, requests: u32, runs_out_at: u32, ticked: bool) -> usize {
    if requests == runs_out_at && ticked {
        cap
    } else {
        (cap / 2).max(1)
    }
}

/// Notes that a refill of `class` took `n` blocks into the empty stack, one of them for the
/// request being served (see [`refill_size`]).
///
/// # Safety
/// Only the cache's owner may call this.
#[inline(always)]
pub unsafe fn refilled(tc: *mut ThreadCache, class: usize, n: usize) {
    // SAFETY: the owner's own cache.
    unsafe {
        let mark = &mut (*tc).refill_runs_out_at[class];
        if *mark != FREES_TOO {
            // A mark that came out as the sentinel by wrapping is one off: one half refill.
            let at = ((*tc).bins[class].requests.load(Ordering::Relaxed) + n as u64) as u32;
            *mark = at.min(FREES_TOO - 1);
        }
    }
}

/// Whether the stack of `class` is still its small stack, below the class's standard
/// capacity (classes whose small capacity is their standard one stay there until they grow).
///
/// # Safety
/// Only the cache's owner may call this.
#[inline(always)]
unsafe fn in_small_stack(tc: *mut ThreadCache, class: usize) -> bool {
    // SAFETY: the owner's own cache.
    unsafe { (*tc).bins[class].capacity() < CLASSES[class].cache_capacity as usize }
}

/// Moves the small stack of `class` ([`in_small_stack`]) to its standard one
/// (`cache_capacity`), packed among the other classes' too, which takes nothing of the growth
/// allowance. Thread caches start with small stacks so that a small program's classes share
/// the cache's first page; a class that outgrows one gets the capacity and the place every
/// stack used to start with (given a region of its own instead, each class that a thread used
/// a few dozen times took a page: larson, whose 4 threads at a time use about 20 classes each,
/// 1.19x the page faults).
///
/// # Safety
/// Only the cache's owner may call this, and only while [`in_small_stack`] holds.
#[cold]
#[inline(never)]
unsafe fn unpack(tc: *mut ThreadCache, class: usize) {
    // SAFETY: the owner has exclusive use of its cache; the standard stack has room for the
    // standard capacity, above the small one and so above the count.
    unsafe {
        let to = ptr::addr_of_mut!((*tc).slots)
            .cast::<*mut u8>()
            .add(STACK_LAYOUT[class][STANDARD]);
        (*tc).bins[class].move_to(to, CLASSES[class].cache_capacity as usize);
    }
}

/// Doubles the stack of `class` (up to the class's largest capacity) if the thread's growth
/// allowance has room; whether it grew.
///
/// # Safety
/// Only the cache's owner may call this.
unsafe fn grow(tc: *mut ThreadCache, class: usize) -> bool {
    // SAFETY: the owner has exclusive use of its cache.
    unsafe {
        let t = &mut *tc;
        let info = &CLASSES[class];
        let cap = t.bins[class].capacity();
        let grown = (2 * cap).min(info.cache_capacity_max as usize);
        let cost = (grown - cap) * info.size as usize;
        if grown == cap || t.grown_bytes + cost > growth_allowance() {
            return false;
        }
        t.grown_bytes += cost;
        t.used_at[class] = os::now_ms() as u32;
        let region = ptr::addr_of_mut!(t.slots)
            .cast::<*mut u8>()
            .add(STACK_LAYOUT[class][OWN]);
        let bin = &mut t.bins[class];
        if bin.base() == region {
            bin.set_capacity(grown);
        } else {
            // The first growth: the stack leaves the packed stacks.
            bin.move_to(region, grown);
        }
        true
    }
}

/// The stack of `class` is full and a block is being freed: move a small stack to its
/// standard stack (see [`unpack`]); else grow the stack if the thread's growth allowance
/// has room and the thread allocates from this class too, else flush half of it (all of it if
/// the thread does not allocate the class).
///
/// # Safety
/// Only the cache's owner may call this.
#[cold]
#[inline(never)]
pub unsafe fn on_full(tc: *mut ThreadCache, class: usize) {
    // SAFETY: the owner has exclusive use of its cache.
    unsafe {
        (*tc).refill_runs_out_at[class] = FREES_TOO;
        if in_small_stack(tc, class) {
            unpack(tc, class);
            return;
        }
        let cap = (*tc).bins[class].capacity();
        // Only a thread that also allocates from this class gains from a bigger stack; one that
        // only frees (a consumer of blocks other threads allocate) would just hold more memory.
        let allocates = (*tc).bins[class].requests.load(Ordering::Relaxed) >= cap as u64;
        if !(allocates && grow(tc, class)) {
            // A thread that frees this class without allocating it (a consumer of blocks that
            // producers allocate) parks them for the next refill, its own arena's too: a
            // producer on that arena takes them as they are. It will not reuse any: all go, a
            // stack's worth a lock (half a stack's took 1.05x the time, producer/consumer).
            let n = if allocates { (cap / 2).max(1) } else { cap };
            flush_in::<FLUSH_CHUNK>(tc, class, n, !allocates);
        }
    }
}

/// At a tick (time `now`, ms): the remote buffer goes home; a large class's blocks go back to
/// the page heap if the class was not used since the last tick; a grown stack whose class was
/// not used for `dirty_decay_ms` shrinks back by half (flushing what no longer fits), at most
/// once per period, so an idle class gives its blocks and allowance back; and while the
/// stacks have grown by more than the thread's share of the allowance (more threads live than
/// when they grew), every grown stack halves at each tick.
///
/// # Safety
/// Only the cache's owner may call this.
pub unsafe fn gc(tc: *mut ThreadCache, now: u64) {
    // Blocks of other arenas go home at least once a tick.
    // SAFETY: the owner's own cache.
    unsafe { flush_remote(tc) };
    let decay = config::decay_ms();
    let share = growth_allowance();
    for (class, info) in CLASSES.iter().enumerate().take(NUM_CACHED) {
        // SAFETY: the owner has exclusive use of its cache.
        unsafe {
            let t = &mut *tc;
            let requests = t.bins[class].requests.load(Ordering::Relaxed) as u32;
            let used = requests != t.requests_seen[class];
            let cap = t.bins[class].capacity();
            let initial = info.cache_capacity as usize;
            if used {
                t.requests_seen[class] = requests;
                if cap > initial {
                    t.used_at[class] = now as u32;
                }
            }
            if info.size as usize > CACHED_LARGE_MIN {
                if !used {
                    // Idle large blocks go back to the page heap, where others can use them.
                    let count = t.bins[class].count();
                    flush(tc, class, count);
                }
                continue;
            }
            let idle_for = (now as u32).wrapping_sub(t.used_at[class]);
            let idle = !used && decay >= 0 && u64::from(idle_for) >= decay as u64;
            // A thread that grew while it had fewer peers gives back down to its share.
            let over_share = t.grown_bytes > share;
            if cap > initial && (idle || over_share) {
                t.used_at[class] = now as u32;
                let shrunk = (cap / 2).max(initial);
                let count = t.bins[class].count();
                if count > shrunk {
                    flush(tc, class, count - shrunk);
                }
                let t = &mut *tc;
                t.bins[class].set_capacity(shrunk);
                t.grown_bytes -= (cap - shrunk) * info.size as usize;
            }
        }
    }
}

/// Returns the `n` most recently cached blocks of `class` to their arenas.
///
/// Fork safety: the blocks are copied out and the shortened stack is published with one store
/// before any block is returned, so at every instant `slots[..count]` holds distinct cached
/// blocks. A child forked in between sees either all of them cached or none (a few blocks
/// leak in the child), never one block twice.
///
/// # Safety
/// Only the cache's owner may call this; `n` must not exceed the count.
pub unsafe fn flush(tc: *mut ThreadCache, class: usize, n: usize) {
    // SAFETY: forwarded contract.
    unsafe { flush_in::<FLUSH_CHUNK>(tc, class, n, false) }
}

/// [`flush`] in chunks of `CHUNK` blocks, copied to the stack; `park_home` as for
/// [`return_blocks`].
///
/// # Safety
/// As for [`flush`].
#[inline(always)]
unsafe fn flush_in<const CHUNK: usize>(
    tc: *mut ThreadCache,
    class: usize,
    n: usize,
    park_home: bool,
) {
    // Chunks keep the copy small: callers may be on a small (signal) stack.
    let mut batch = [ptr::null_mut::<u8>(); CHUNK];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK);
        // SAFETY: the owner has exclusive use of its stacks.
        unsafe {
            let bin = &(*tc).bins[class];
            let count = bin.count();
            debug_assert!(k <= count);
            let kept = count - k;
            ptr::copy_nonoverlapping(bin.base().add(kept), batch.as_mut_ptr(), k);
            bin.set_count(kept);
            // The store above must not sink below the locks taken while returning blocks.
            core::sync::atomic::compiler_fence(Ordering::SeqCst);
            return_blocks(class, &mut batch[..k], (*tc).arena_for(class), park_home);
        }
        left -= k;
    }
}

/// Blocks returned to arenas per round of a flush.
const FLUSH_CHUNK: usize = 128;

/// Blocks per round of the flushes that run at thread exit ([`flush_all`]'s, of the stacks
/// and of the remote buffer): a quarter of [`FLUSH_CHUNK`]. An exiting
/// thread runs them on its own stack, below whatever depth the thread itself reached, and a
/// thread's stack is often fresh memory (glibc keeps at most 40 MiB of stacks for reuse): with
/// 1 KiB and 2 KiB copies there, each exit of a short-lived thread faulted in one more page.
const EXIT_CHUNK: usize = FLUSH_CHUNK / 4;

/// Returns blocks of cached class `class` to the arenas owning them, one lock per arena.
/// Reorders `blocks`. `home` is the returning thread's arena: blocks of other arenas may wait
/// in their bin's transfer array for the next refill there (see `Arena::put_small`), and with
/// `park_home` (a thread that frees the class without allocating it) blocks of `home` too.
///
/// # Safety
/// Every block must be a validated, unused block of `class`.
pub unsafe fn return_blocks(class: usize, blocks: &mut [*mut u8], home: &Arena, park_home: bool) {
    let mut rest = blocks;
    // SAFETY: validated blocks lie in live segments.
    let owner_of = |p: *mut u8| unsafe { arena::of_segment(Segment::of(p as usize)) };
    while !rest.is_empty() {
        let owner = owner_of(rest[0]);
        let mut same = 0;
        for i in 0..rest.len() {
            if ptr::eq(owner_of(rest[i]), owner) {
                rest.swap(i, same);
                same += 1;
            }
        }
        let (mine, others) = rest.split_at_mut(same);
        // SAFETY: validated blocks of `owner`, as the contract says.
        unsafe {
            if is_small(class) {
                owner.put_small(class, mine, park_home || !ptr::eq(owner, home));
            } else {
                owner.free_large(mine);
            }
        }
        rest = others;
    }
}

/// Called when a cached block's first word holds the free key: aborts if the block is in fact
/// already free (in this cache or in its slab). Otherwise the match was a coincidence.
///
/// # Safety
/// `tc` must be the caller's cache, `d` the span of `p`, validated for class `class`. `op`
/// names the public function `p` was handed to, for the message.
#[cold]
pub unsafe fn check_double_free(
    tc: *mut ThreadCache,
    class: usize,
    d: *mut SpanDesc,
    p: *mut u8,
    op: &str,
) {
    // SAFETY: the owner reads its own stack; the slab check takes the bin lock.
    unsafe {
        let bin = &(*tc).bins[class];
        if core::slice::from_raw_parts(bin.base(), bin.count()).contains(&p) {
            os::fatal_pointer(op, "double free of", p as usize);
        }
        let n = (*tc).remote_len.load(Ordering::Relaxed);
        if (0..n).any(|i| (*tc).remote_slot(i).0.load(Ordering::Relaxed) == p) {
            os::fatal_pointer(op, "double free of", p as usize);
        }
        if (*d).kind == kind::SLAB {
            let owner = arena::of_segment(Segment::of(p as usize));
            if owner.slab_object_is_free(class, d, p as usize) {
                os::fatal_pointer(op, "double free of", p as usize);
            }
        }
    }
}

/// Calls `f` on every live cache while holding the list lock (statistics).
pub fn for_each_live(mut f: impl FnMut(&ThreadCache)) {
    let list = CACHES.lock();
    let mut tc = list.live;
    while !tc.is_null() {
        // SAFETY: live caches stay valid while the list lock is held; `f` reads atomics only
        // of fields other threads may change.
        unsafe {
            f(&*tc);
            tc = (*tc).next;
        }
    }
}

/// Fork: hold the list lock across `fork`.
pub fn prefork() {
    CACHES.raw_lock();
}

/// Fork: release in the parent.
pub fn postfork_parent() {
    // SAFETY: taken in `prefork` by this thread.
    unsafe { CACHES.raw_unlock() };
}

/// Fork: in the child only the forking thread survives. The other threads' caches are flushed
/// (their blocks would otherwise leak) and recycled. Arena locks must be usable already.
pub fn postfork_child(survivor: *mut ThreadCache) {
    CACHES.reset_after_fork();
    let mut list = CACHES.lock();
    let mut tc = list.live;
    while !tc.is_null() {
        // SAFETY: single-threaded now; the caches of vanished threads have no owner.
        unsafe {
            let next = (*tc).next;
            if tc != survivor {
                flush_all(tc);
                retire_requests(tc);
                unlink(&mut list, tc);
                (*tc).next = list.spare;
                list.spare = tc;
            } else {
                // The survivor's thread counts again in the (reset) arena counts.
                arena::count_thread_in((*tc).arenas());
            }
            tc = next;
        }
    }
    // The survivor's cache alone is live (if it has one): its growth allowance is the whole.
    LIVE_CACHES.store(usize::from(!list.live.is_null()), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::size_class::class_of;

    /// A thread that frees a class without allocating it (a consumer) parks even its own
    /// arena's blocks in the bin's transfer array, for a producer's next refill; a thread that
    /// allocates the class puts its own blocks back in their slabs.
    #[test]
    fn a_consumer_parks_its_own_arenas_blocks() {
        let a = arena::get(203); // an arena no other test uses
        let class = class_of(64);
        let mut out = [ptr::null_mut(); 8];
        assert_eq!(a.fill_small(class, 0, &mut out, false), 8);
        // SAFETY: unused objects of this arena's slabs of `class`.
        unsafe { return_blocks(class, &mut out[..4], a, false) };
        assert_eq!(
            a.bin(class).lock().parked(),
            0,
            "an allocating thread's own"
        );
        // SAFETY: as above.
        unsafe { return_blocks(class, &mut out[4..], a, true) };
        assert_eq!(
            a.bin(class).lock().parked(),
            4,
            "a consumer's, its arena's too"
        );
        let mut again = [ptr::null_mut(); 4];
        assert_eq!(a.fill_small(class, 0, &mut again, false), 4);
        again.sort();
        out[4..].sort();
        assert_eq!(again, out[4..], "the next refill takes the parked blocks");
        // SAFETY: as above.
        unsafe { a.put_small(class, &again, false) };
    }

    /// The key's first byte is odd and never in UTF-8 text; the fast path's test reads that
    /// byte, the checked path's the whole word.
    #[test]
    fn the_free_key_is_matched_by_its_whole_word() {
        let key = make_free_key();
        assert!(
            matches!(key & 0xff, 0xc1 | 0xf5 | 0xf7 | 0xf9 | 0xfb | 0xfd),
            "{key:#x}"
        );
        let mut block = [0u64; 2];
        let p = block.as_mut_ptr().cast::<u8>();
        // SAFETY: `p` starts 16 bytes of ours.
        let tests = |w: u64| unsafe {
            p.cast::<u64>().write(w);
            (may_hold_free_key(p, key), holds_free_key(p, key))
        };
        assert_eq!(tests(key), (true, true));
        assert_eq!(
            tests(key ^ 0x100),
            (true, false),
            "same first byte, another word"
        );
        assert_eq!(tests(key ^ 0x1), (false, false), "another first byte");
        assert_eq!(tests(0), (false, false));
    }

    /// The remote buffer's first slots lie on the cache's first page, the rest after the
    /// stacks: a thread that frees more blocks of another arena than the first page holds
    /// keeps them all, and sends them all home at the flush.
    #[test]
    fn the_remote_buffer_runs_on_past_the_first_page() {
        let a = arena::get(206); // an arena no other test uses
        let class = class_of(16);
        let n = REMOTE_NEAR + 8;
        // Refills stop at the class's mini slab: as many as it takes.
        let mut out = Vec::new();
        while out.len() < n {
            let mut more = vec![ptr::null_mut(); n - out.len()];
            let k = a.fill_small(class, 0, &mut more, false);
            assert!(k > 0);
            out.extend_from_slice(&more[..k]);
        }
        assert_eq!(a.bin(class).lock().objects_out, n);
        let blocks: Vec<usize> = out.iter().map(|&p| p as usize).collect();
        let mut sent = blocks.clone();
        std::thread::spawn(move || {
            // SAFETY: a live block of ours, freed once; it sets up this thread's cache.
            unsafe { crate::api::free::free(crate::api::alloc::malloc(16)) };
            let tc = crate::thread::cache();
            assert!(!tc.is_null());
            // SAFETY: this thread's own cache; unused blocks of a sub-line class of another
            // arena, each pushed once.
            unsafe {
                for &p in &blocks {
                    push_remote(tc, class, p as *mut u8);
                }
                let mut held = Vec::new();
                for i in 0..(*tc).remote_len.load(Ordering::Relaxed) {
                    held.push((*tc).remote_slot(i).0.load(Ordering::Relaxed) as usize);
                }
                assert_eq!(held, blocks, "the buffer lost or reordered blocks");
                let mut classes = 0;
                for_each_remote(&*tc, |c| {
                    assert_eq!(c, class);
                    classes += 1;
                });
                assert_eq!(classes, n);
                flush_remote(tc);
                assert_eq!((*tc).remote_len.load(Ordering::Relaxed), 0);
            }
        })
        .join()
        .unwrap();
        // Home, waiting in the transfer array: the arena's next refill takes them all.
        let mut again = vec![ptr::null_mut(); n];
        assert_eq!(a.fill_small(class, 0, &mut again, false), n);
        let mut back: Vec<usize> = again.iter().map(|&p| p as usize).collect();
        back.sort();
        sent.sort();
        assert_eq!(back, sent, "not all went home");
        // SAFETY: unused objects of this arena's slabs of `class`.
        unsafe { a.put_small(class, &again, false) };
        assert_eq!(a.bin(class).lock().objects_out, 0);
    }

    /// A thread that uses a few dozen classes touches one page of its cache: every field
    /// `malloc`, `free`, a refill and a tick use, the remote buffer and every class's small
    /// stack lie in the first page; the grown stacks' times and the profiler's memo far from
    /// it.
    #[test]
    fn a_small_programs_cache_is_one_page() {
        use core::mem::offset_of;
        let small_end = offset_of!(ThreadCache, slots) + TOTAL_SMALL_SLOTS * size_of::<*mut u8>();
        assert!(
            small_end <= os::PAGE_SIZE,
            "the small stacks end at {small_end}"
        );
        assert!(offset_of!(ThreadCache, remote_near_class) + REMOTE_NEAR <= small_end);
        for (name, at) in [
            ("used_at", offset_of!(ThreadCache, used_at)),
            ("trace_memo", offset_of!(ThreadCache, trace_memo)),
            ("remote_far", offset_of!(ThreadCache, remote_far)),
        ] {
            assert!(
                at >= os::PAGE_SIZE,
                "{name} lies in the first page, at {at}"
            );
        }
    }

    /// Half refills, but whole ones for a producer: a thread whose last refill all went out
    /// before any block of the class came back, that never overflowed the stack, and that has
    /// used the class since before a tick.
    #[test]
    fn a_producers_refills_fill_its_stack() {
        assert_eq!(refill_rule(128, 1, 0, false), 64, "a first refill");
        assert_eq!(refill_rule(128, 65, 65, true), 128, "a producer's");
        assert_eq!(
            refill_rule(128, 65, 65, false),
            64,
            "no tick has seen the class yet"
        );
        assert_eq!(
            refill_rule(128, 70, 65, true),
            64,
            "blocks came back in between"
        );
        assert_eq!(
            refill_rule(128, 65, FREES_TOO, true),
            64,
            "the stack overflowed once"
        );
        assert_eq!(refill_rule(1, 5, 5, false), 1);
    }
}
