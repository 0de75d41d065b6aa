//! Arenas: the shared pools that thread caches refill from and flush to.
//!
//! There are at most [`MAX_ARENAS`] (255), statically allocated and constant-initialised, of
//! which the first `narenas` (at most 254) are handed to threads, two to each: a line arena for
//! the classes smaller than a cache line and a shared one for the rest (see [`ThreadArenas`]).
//! The last is the profiler's own (see [`profiler_arena`]). An arena
//! owns its segments. It has one lock per small size class (the bin: the class's current slab
//! and its list of non-full slabs) and one lock for its page heap (large blocks and new slabs).
//! Lock order: a bin lock may be held while the page lock is taken, never the reverse. Another
//! arena's page lock is only ever tried (`try_lock`), with no lock of ours held.

use crate::addr::segment::{
    self, kind, span_start, Segment, SpanDesc, FLAG_LANE, FLAG_SAMPLED, GRANULES_PER_PAGE,
};
use crate::base::config;
use crate::base::meta;
use crate::base::size_class::{
    class_size, mini_bytes, CLASSES, GRANULE, GRANULE_SHIFT, NUM_CLASSES, NUM_MINI, NUM_SMALL,
};
use crate::platform::lock::{Guard, Locked, Padded};
use crate::platform::os;
use crate::span::page_heap::PageHeap;
use crate::span::slab::{self, Put};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use static_assertions::const_assert;

/// The most arenas a process can have: each has a one-byte tag (index + 1) in the segment map.
pub const MAX_ARENAS: usize = 255;
/// The arena the profiler's own memory comes from (see [`profiler_arena`]): no thread is given
/// it.
const PROFILER_ARENA: usize = MAX_ARENAS - 1;

/// Pages of empty slabs an arena's bins keep for reuse, together (see [`SlabBin::empty`]):
/// 8 MiB. They are released at the arena's sweeps, once per `dirty_decay_ms`, so they live no
/// longer than the dirty pages they would otherwise have become.
const EMPTY_KEEP_PAGES: usize = (8 << 20) >> os::PAGE_SHIFT;
/// Classes that are large (page runs).
pub const NUM_LARGE: usize = NUM_CLASSES - NUM_SMALL;

// A bit for each small class in an arena's `bins_used`.
const_assert!(NUM_SMALL <= 64);

// Every slab holds at least two objects, so a slab that becomes empty was on the non-full list.
const_assert!({
    let mut ok = true;
    let mut c = 0;
    while c < NUM_SMALL {
        ok &= crate::base::size_class::slab_objects(c) >= 2;
        c += 1;
    }
    ok
});

/// Lanes of a bin: its slabs are split between them, each with a current slab and a non-full
/// list, and a refill takes objects from its lane's slabs first (see [`Arena::fill_small`]).
/// A thread's lane is its line arena's (one per CPU, see [`ThreadArenas`]): threads that run
/// at once then take their objects from different slabs of the arena they share, so their
/// blocks do not share slabs and lines, as with an arena each, while the arena's pages, kept
/// empty slabs and transfer arrays stay pooled. Two: one shared arena per two CPUs.
pub const SLAB_LANES: usize = 2;

/// The lane of slab `d` (see [`SLAB_LANES`]), kept in its flags.
///
/// # Safety
/// `d` must be a live slab's descriptor, guarded by its bin's lock.
unsafe fn slab_lane(d: *mut SpanDesc) -> usize {
    // SAFETY: per the contract.
    usize::from(unsafe { (*d).flags } & FLAG_LANE != 0)
}

/// Files slab `d` under lane `lane`.
///
/// # Safety
/// As for [`slab_lane`]; `d` must be on no list.
unsafe fn set_slab_lane(d: *mut SpanDesc, lane: usize) {
    // SAFETY: per the contract.
    unsafe {
        (*d).flags = (*d).flags & !FLAG_LANE | if lane == 0 { 0 } else { FLAG_LANE };
    }
}

/// One small size class of an arena. With its lock it fills one cache line (see [`Arena`]).
pub struct SlabBin {
    /// By lane: the slab objects are taken from first.
    current: [*mut SpanDesc; SLAB_LANES],
    /// By lane: slabs with free objects other than `current` (linked through `prev`/`next`).
    nonfull: [*mut SpanDesc; SLAB_LANES],
    /// Empty slabs kept for reuse (linked through `next`; see [`EMPTY_KEEP_PAGES`]): a class
    /// that empties and refills its slabs in batches then does not churn them through the page
    /// heap.
    empty: *mut SpanDesc,
    /// Objects taken out of slabs: in use, or cached by a thread.
    pub objects_out: usize,
    /// Slabs of this class.
    pub slabs: u32,
    /// Objects waiting in the transfer array (see [`transfer_capacity`]).
    transfer_len: u16,
    /// How many more objects the transfer array may take: refills add what they take, puts
    /// spend it, the sweep clears it. Objects parked there keep their slabs from emptying, so
    /// they are parked only while refills take as many: in a phase of frees alone they go
    /// back to their slabs after one array's worth.
    transfer_credit: u16,
}

// A bin and its lock fill one cache line; the transfer array's counts fit their fields.
const_assert!(core::mem::size_of::<Locked<SlabBin>>() <= 64);
const_assert!(TRANSFER_SLOTS <= u16::MAX as usize);

/// Slots of a bin's transfer array (see [`SlabBin`]).
const TRANSFER_SLOTS: usize = 1024;
/// A bin's transfer array holds at most this many bytes of objects.
const TRANSFER_BYTES: usize = 64 << 10;

/// How many objects of class `class` a bin's transfer array holds: at most [`TRANSFER_SLOTS`]
/// and [`TRANSFER_BYTES`] worth. Blocks one thread frees and another allocates (a producer and
/// its consumer) then go from cache to cache through it, two copies under the bin lock, instead
/// of into their slabs' bitmaps and out again, one object at a time.
const fn transfer_capacity(class: usize) -> usize {
    let n = TRANSFER_BYTES / class_size(class);
    if n < TRANSFER_SLOTS {
        n
    } else {
        TRANSFER_SLOTS
    }
}

/// Where each class's transfer array starts in an arena's transfer region, in slots, and (last)
/// the region's size: the arrays side by side, about 73 KiB, of which only the arrays used are
/// ever touched.
const TRANSFER_OFFSETS: [usize; NUM_SMALL + 1] = {
    let mut t = [0; NUM_SMALL + 1];
    let mut c = 0;
    while c < NUM_SMALL {
        t[c + 1] = t[c] + transfer_capacity(c);
        c += 1;
    }
    t
};

// SAFETY: the raw pointers are slab descriptors owned by the bin, reached only under its lock.
unsafe impl Send for SlabBin {}

// SAFETY: the shared page's descriptor is the arena's, reached only under its page lock.
unsafe impl Send for ArenaPages {}

// The bin's slab lists. Every method requires the bin's lock (it takes `&mut self` behind it)
// and slab descriptors of this bin.
impl SlabBin {
    /// Files slab `d`, which was full, on the non-full list.
    ///
    /// # Safety
    /// `d` is a live slab of this bin on no list.
    unsafe fn push_nonfull(&mut self, d: *mut SpanDesc) {
        // SAFETY: `d` and the list head are live slabs of this bin.
        unsafe {
            let head = &mut self.nonfull[slab_lane(d)];
            (*d).prev = ptr::null_mut();
            (*d).next = *head;
            if !head.is_null() {
                (**head).prev = d;
            }
            *head = d;
        }
    }

    /// Whether slab `d` is a lane's current slab (on no list).
    fn is_current(&self, d: *mut SpanDesc) -> bool {
        self.current.contains(&d)
    }

    /// Takes slab `d` off the non-full list.
    ///
    /// # Safety
    /// `d` is on this bin's non-full list.
    unsafe fn unlink_nonfull(&mut self, d: *mut SpanDesc) {
        // SAFETY: `d` and its neighbours are live slabs of this bin's list.
        unsafe {
            if (*d).prev.is_null() {
                self.nonfull[slab_lane(d)] = (*d).next;
            } else {
                (*(*d).prev).next = (*d).next;
            }
            if !(*d).next.is_null() {
                (*(*d).next).prev = (*d).prev;
            }
        }
    }

    /// The first non-full slab of lane `lane`, taken off its list; null if none.
    fn pop_nonfull(&mut self, lane: usize) -> *mut SpanDesc {
        let d = self.nonfull[lane];
        if !d.is_null() {
            // SAFETY: list members are live slabs of this bin.
            unsafe { self.unlink_nonfull(d) };
        }
        d
    }

    /// A partly used slab for lane `lane`, taken off its list: its own non-full slabs first,
    /// then another lane's; null if none. (Another lane's current slab stays that lane's,
    /// however many objects came back to it: the lanes would take it from each other.)
    fn take_partial(&mut self, lane: usize) -> *mut SpanDesc {
        let own = self.pop_nonfull(lane);
        if !own.is_null() {
            return own;
        }
        (0..SLAB_LANES)
            .filter(|&other| other != lane)
            .map(|other| self.pop_nonfull(other))
            .find(|d| !d.is_null())
            .unwrap_or(ptr::null_mut())
    }

    /// Keeps the empty slab `d`, which emptied at `now`, for reuse.
    ///
    /// # Safety
    /// `d` is a live, empty slab of this bin on no list.
    unsafe fn push_empty(&mut self, d: *mut SpanDesc, now: u64) {
        // SAFETY: `d` is ours, per the contract.
        unsafe {
            (*d).kept_at = now as u32;
            (*d).next = self.empty;
        }
        self.empty = d;
    }

    /// Objects parked in the bin's transfer array.
    pub fn parked(&self) -> usize {
        self.transfer_len.into()
    }

    /// Slabs kept empty for reuse: at most [`EMPTY_KEEP_PAGES`] pages' worth and a slab more,
    /// counted when asked (statistics) so that no count shares the bin's line.
    pub fn empty_slabs(&self) -> usize {
        let mut n = 0;
        let mut d = self.empty;
        while !d.is_null() {
            n += 1;
            // SAFETY: kept slabs are live slabs of this bin, linked through `next`.
            d = unsafe { (*d).next };
        }
        n
    }

    /// A kept empty slab, taken off its list; null if none.
    fn pop_empty(&mut self) -> *mut SpanDesc {
        let d = self.empty;
        if !d.is_null() {
            // SAFETY: kept slabs are live slabs of this bin.
            self.empty = unsafe { (*d).next };
        }
        d
    }

    /// Whether `s` is null or has no free object.
    fn exhausted(s: *mut SpanDesc) -> bool {
        // SAFETY: a non-null `s` is a live slab of this bin.
        s.is_null() || unsafe { (*s).nfree } == 0
    }
}

/// An arena's page heap and its large-block statistics, under one lock: the heap and the
/// mini slabs' page first, which every program uses, the statistics of large and sampled
/// blocks after them (see [`Arena`]).
#[repr(C)]
pub struct ArenaPages {
    /// The span allocator.
    pub heap: PageHeap,
    /// The shared page that mini slabs are cut from (see `span::slab`) while it has room;
    /// null before the first.
    shared: *mut SpanDesc,
    /// Per large class, its two counts side by side: the smaller classes' then lie on the
    /// page the fields above end on (see [`Arena`]).
    pub large: [LargeCounts; NUM_LARGE],
    /// Live sampled blocks of small classes on pages of their own (aligned so that no larger
    /// cached class can hold them, see `api::sampled`).
    pub sampled_small_live: [usize; NUM_SMALL],
}

/// The counts of one large class in an arena.
#[derive(Clone, Copy)]
pub struct LargeCounts {
    /// Live blocks (taken out of the heap, maybe in a thread cache).
    pub live: usize,
    /// Requests served straight from the heap.
    pub requests: u64,
}

/// An arena. See the module docs.
///
/// In this order (`repr(C)`): what a small program touches comes first (the counters, the bins,
/// a cache line each, the transfer arrays' pointer, the page heap and the mini slabs' page),
/// in about 3 KiB ([`ARENA_HOT_BYTES`]) that [`warm`] faults in at once; the counts of large
/// and sampled blocks (the smaller large classes' still on that page in the preload) and the
/// requests served without a cache come after. The preload
/// library's linker script puts the table of arenas first in `.bss`, so that arena 0's first
/// part lies on the page `.data` ends on, which the loader has written already.
#[repr(C)]
pub struct Arena {
    /// Threads that use this arena now, as their shared arena, their line arena or both (see
    /// [`ThreadArenas`]).
    pub threads: AtomicU32,
    /// Threads whose line arena this is: what new threads are spread by.
    line_threads: AtomicU32,
    /// Pages in the bins' kept empty slabs (changed under a bin lock, so bins may overshoot
    /// [`EMPTY_KEEP_PAGES`] by a slab each at most).
    empty_pages: AtomicUsize,
    /// When empty current slabs were last released (ms).
    last_sweep: AtomicU64,
    /// No dirty page of this arena expires before this time (ms): ticks skip the lock until
    /// then.
    purge_hint: Deadline,
    /// When the last thread left (ms; 0: never), for [`count_out`] and [`count_in`].
    last_exit: AtomicU64,
    /// A new thread took this arena over within a decay period of its last thread's exit: it
    /// serves rounds of short-lived threads, so its last thread's exit keeps the warm pages for
    /// the next round (see [`count_out`]).
    taken_over: AtomicBool,
    /// Since when (ms) this arena has been left without threads with its warm pages kept;
    /// `u64::MAX` if it is in use or nothing is kept. One decay period later, the next tick of
    /// any thread releases what is still unused ([`Arena::purge`]).
    idle_since: Deadline,
    /// Bit `c` set: bin `c` has had a slab (only those hold anything for a sweep to release).
    bins_used: AtomicU64,
    /// On cache lines of their own: the counters above change at flushes and refills.
    bins: [Padded<Locked<SlabBin>>; NUM_SMALL],
    /// The bins' transfer arrays, side by side (see [`TRANSFER_OFFSETS`]): free objects that
    /// threads of other arenas sent back, not yet put back in their slabs; the next refill
    /// takes them as they are. Metadata memory taken at the first use (null before), each
    /// array guarded by its bin's lock, which keeps its counts. One pointer, here on the
    /// arena's first page: a pointer per class did not fit there, and the page after it cost a
    /// program whose threads free each other's blocks a fault.
    transfers: AtomicPtr<*mut u8>,
    pages: Padded<Locked<ArenaPages>>,
    /// Per class: requests served straight from its bin, without a thread cache. Written
    /// under the bin's lock.
    direct_requests: [AtomicU64; NUM_SMALL],
}

/// Where the part of an arena that a small program touches ends: the mini slabs' page pointer
/// (see [`Arena`]).
pub const ARENA_HOT_BYTES: usize = core::mem::offset_of!(Arena, pages.0)
    + Locked::<ArenaPages>::DATA_OFFSET
    + core::mem::offset_of!(ArenaPages, shared)
    + core::mem::size_of::<*mut SpanDesc>();

/// A time (ms) that may be unset (`u64::MAX`, never), kept complemented so that its zero state
/// means never. The arenas' table then starts as all zeroes and lives in `.bss`: with these
/// two fields set to `u64::MAX`, it was 940 KiB of the library's file data, whose pages a
/// first read maps 64 KiB at a time (56 KiB more RSS for a small program).
struct Deadline(AtomicU64);

impl Deadline {
    const fn never() -> Self {
        Deadline(AtomicU64::new(0))
    }

    fn load(&self) -> u64 {
        !self.0.load(Ordering::Relaxed)
    }

    fn store(&self, t: u64) {
        self.0.store(!t, Ordering::Relaxed);
    }

    /// Moves the time earlier to `t`, if it is later.
    fn lower_to(&self, t: u64) {
        self.0.fetch_max(!t, Ordering::Relaxed);
    }

    /// Replaces `seen` with `t`; false if the time was no longer `seen`.
    fn replace(&self, seen: u64, t: u64) -> bool {
        self.0
            .compare_exchange(!seen, !t, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl Arena {
    const fn new() -> Self {
        Arena {
            bins: [const {
                Padded(Locked::new(SlabBin {
                    current: [ptr::null_mut(); SLAB_LANES],
                    nonfull: [ptr::null_mut(); SLAB_LANES],
                    empty: ptr::null_mut(),
                    objects_out: 0,
                    slabs: 0,
                    transfer_len: 0,
                    transfer_credit: 0,
                }))
            }; NUM_SMALL],
            pages: Padded(Locked::new(ArenaPages {
                heap: PageHeap::new(),
                shared: ptr::null_mut(),
                large: [LargeCounts {
                    live: 0,
                    requests: 0,
                }; NUM_LARGE],
                sampled_small_live: [0; NUM_SMALL],
            })),
            transfers: AtomicPtr::new(ptr::null_mut()),
            threads: AtomicU32::new(0),
            line_threads: AtomicU32::new(0),
            empty_pages: AtomicUsize::new(0),
            last_sweep: AtomicU64::new(0),
            purge_hint: Deadline::never(),
            last_exit: AtomicU64::new(0),
            taken_over: AtomicBool::new(false),
            bins_used: AtomicU64::new(0),
            idle_since: Deadline::never(),
            direct_requests: [const { AtomicU64::new(0) }; NUM_SMALL],
        }
    }

    /// Frees span `d` into the page heap (held by the caller) and notes that dirty pages now
    /// exist. Every span this arena frees goes through here.
    ///
    /// # Safety
    /// `d` must head an allocated span of this arena, no longer used.
    /// Frees span `d` to the page heap; returns the pages the heap purged meanwhile.
    unsafe fn free_span(&self, p: &mut ArenaPages, d: *mut SpanDesc, now: u64) -> usize {
        // SAFETY: per the contract.
        unsafe { self.free_span_aged(p, d, now, now) }
    }

    /// [`Arena::free_span`] of a span whose pages were last used at `freed_at` (a kept empty
    /// slab): it decays from then, not from `now`.
    ///
    /// # Safety
    /// As for [`Arena::free_span`].
    unsafe fn free_span_aged(
        &self,
        p: &mut ArenaPages,
        d: *mut SpanDesc,
        freed_at: u64,
        now: u64,
    ) -> usize {
        // SAFETY: per the contract.
        let purged = unsafe { p.heap.free_aged(d, freed_at, now, config::decay_ms()) };
        self.note_dirty(freed_at);
        purged
    }

    /// Pages were freed at `now`: they expire no earlier than `now + dirty_decay_ms`.
    fn note_dirty(&self, now: u64) {
        let decay = config::decay_ms();
        if decay >= 0 {
            self.purge_hint.lower_to(now.saturating_add(decay as u64));
        }
    }

    /// After a purge of `heap` (this arena's, under its lock): the next purge is due when its
    /// next dirty span comes due, if any.
    fn note_purged(&self, heap: &PageHeap, decay: i64) {
        let next = heap.next_purge_at(decay).unwrap_or(u64::MAX);
        self.purge_hint.store(next);
    }

    /// Whether this arena may have dirty pages: false only when it surely has none (its purge
    /// hint is unset, which with decay on means nothing was freed since its last purge), so
    /// other arenas can skip its lock.
    fn may_have_dirty(&self) -> bool {
        config::decay_ms() < 0 || self.purge_hint.load() != u64::MAX
    }

    /// Whether threads use this arena now. Freed blocks of an arena nobody uses are better
    /// reused by the thread that frees them than sent home to wait for a new thread.
    #[inline(always)]
    pub fn is_used(&self) -> bool {
        self.threads.load(Ordering::Relaxed) != 0
    }

    /// As a thread's line arena, the lane its threads take in their shared arena's bins (see
    /// [`SLAB_LANES`]): line arena `i` is paired with shared arena `i % shared_arenas()`.
    pub fn lane(&self) -> usize {
        self.index() / shared_arenas()
    }

    /// This arena's index.
    pub fn index(&self) -> usize {
        (self as *const Arena as usize - ptr::from_ref(&ARENAS) as usize) / ARENA_STRIDE
    }

    /// The transfer array of small class `class` (null before its first use), whose bin the
    /// caller holds locked.
    fn transfer_slots(&self, class: usize) -> *mut *mut u8 {
        let region = self.transfers.load(Ordering::Acquire);
        if region.is_null() {
            return region;
        }
        region.wrapping_add(TRANSFER_OFFSETS[class])
    }

    /// [`Arena::transfer_slots`], taking the arena's transfer region if it has none yet (under
    /// the page lock, which comes after the bins' in the lock order). Null if memory ran out.
    fn transfer_slots_or_new(&self, class: usize) -> *mut *mut u8 {
        if self.transfers.load(Ordering::Acquire).is_null() {
            let _pages = self.pages.lock();
            if self.transfers.load(Ordering::Acquire).is_null() {
                let bytes = TRANSFER_OFFSETS[NUM_SMALL] * size_of::<*mut u8>();
                let region = meta::alloc(bytes, align_of::<*mut u8>()).cast();
                self.transfers.store(region, Ordering::Release);
            }
        }
        self.transfer_slots(class)
    }

    /// The objects parked in the transfer array of class `class`, whose bin `bin` is (locked).
    fn parked_objects(&self, class: usize, bin: &SlabBin) -> &[*mut u8] {
        let slots = self.transfer_slots(class);
        if slots.is_null() {
            return &[];
        }
        // SAFETY: the array's first `transfer_len` slots hold objects.
        unsafe { core::slice::from_raw_parts(slots, bin.transfer_len.into()) }
    }

    /// The bin of small class `class`.
    pub fn bin(&self, class: usize) -> &Locked<SlabBin> {
        &self.bins[class].0
    }

    /// Requests of `class` served straight from its bin, without a thread cache.
    pub fn direct_requests(&self, class: usize) -> u64 {
        self.direct_requests[class].load(Ordering::Relaxed)
    }

    /// The page heap.
    pub fn pages(&self) -> &Locked<ArenaPages> {
        &self.pages
    }

    /// Fills `out` with free objects of small class `class` for a thread of lane `lane` (see
    /// [`SLAB_LANES`]); returns how many (fewer only when memory ran out). A lane takes its
    /// current slab's objects, then a partly used slab (its own, else another lane's, which
    /// becomes its own; see [`SlabBin::take_partial`]), then a kept empty slab, and only then
    /// a new slab.
    pub fn fill_small(
        &self,
        class: usize,
        lane: usize,
        out: &mut [*mut u8],
        direct: bool,
    ) -> usize {
        let lane = lane % SLAB_LANES;
        let mut bin = self.bin(class).lock();
        let from_transfer = usize::from(bin.transfer_len).min(out.len());
        if from_transfer > 0 {
            bin.transfer_len -= from_transfer as u16;
            // SAFETY: we hold the bin's lock; the array's first `len + from_transfer` slots
            // hold objects.
            unsafe {
                let src = self.transfer_slots(class).add(bin.transfer_len.into());
                ptr::copy_nonoverlapping(src, out.as_mut_ptr(), from_transfer);
            }
        }
        let mut n = from_transfer;
        // Kept empty slabs taken, counted off the arena's total once at the end: a locked
        // instruction per slab waited for the program's stores before it each time.
        let mut unkept = 0;
        let mut first_mini = false;
        while n < out.len() {
            let mut s = bin.current[lane];
            if SlabBin::exhausted(s) {
                s = bin.take_partial(lane);
                if s.is_null() {
                    s = bin.pop_empty();
                    if !s.is_null() {
                        unkept += CLASSES[class].pages as usize;
                    }
                }
                if s.is_null() {
                    s = self.new_slab(class, &bin);
                    if s.is_null() {
                        break;
                    }
                    bin.slabs += 1;
                    // SAFETY: a live slab of this bin.
                    first_mini = bin.slabs == 1 && unsafe { slab::is_mini(s) };
                }
                // SAFETY: a live slab of this bin, on no list; we hold its lock.
                unsafe { set_slab_lane(s, lane) };
                bin.current[lane] = s;
            }
            // SAFETY: `s` is a live slab of this bin with free objects; we hold its lock.
            n += unsafe { slab::take(s, &mut out[n..]) };
            // A class's first refill ends with its new mini slab: the class may not be used
            // more. Later refills go on to slabs of pages.
            if first_mini {
                break;
            }
        }
        if unkept > 0 {
            self.empty_pages.fetch_sub(unkept, Ordering::Relaxed);
        }
        bin.objects_out += n - from_transfer;
        bin.transfer_credit =
            (usize::from(bin.transfer_credit) + n).min(transfer_capacity(class)) as u16;
        if direct {
            // Under the bin's lock: no other thread writes the counter meanwhile.
            let requests = &self.direct_requests[class];
            requests.store(
                requests.load(Ordering::Relaxed) + n as u64,
                Ordering::Relaxed,
            );
        }
        n
    }

    /// A new slab of class `class`, whose bin `_bin` is (locked): its mini slab if it has
    /// none yet and its class has them, else one from the page heap. Null when memory ran out.
    fn new_slab(&self, class: usize, _bin: &SlabBin) -> *mut SpanDesc {
        let pages = CLASSES[class].pages as usize;
        let bit = 1u64 << class;
        // Set under the bin's lock, never cleared: the class's first slab is its mini slab.
        let first = self.bins_used.load(Ordering::Relaxed) & bit == 0;
        if first {
            self.bins_used.fetch_or(bit, Ordering::Relaxed);
        }
        let mut p = self.pages.lock();
        if class < NUM_MINI && first {
            // SAFETY: we hold the page lock.
            let mini = unsafe { self.new_mini(&mut p, class) };
            if !mini.is_null() {
                return mini;
            }
        }
        match p.heap.alloc(pages, 1, true, self.index() as u32) {
            Some((d, _)) => {
                // SAFETY: a fresh span head of ours.
                unsafe { slab::init(d, class) };
                d
            }
            None => ptr::null_mut(),
        }
    }

    /// A mini slab of class `class` (below `NUM_MINI`), cut from the arena's shared page, or
    /// from a new one when that one is full; null if the page heap or the header slots of its
    /// segment ran out.
    ///
    /// # Safety
    /// `p` must be this arena's page heap, locked.
    unsafe fn new_mini(&self, p: &mut ArenaPages, class: usize) -> *mut SpanDesc {
        // SAFETY: the shared page is a live span of ours, guarded by the page lock; the slot
        // and the granule are unused.
        unsafe {
            // Aligned to its size, so that its blocks are aligned as those of a slab of pages.
            let n = mini_bytes(class) >> GRANULE_SHIFT;
            let room = (!p.shared.is_null()).then(|| {
                (0..GRANULES_PER_PAGE)
                    .step_by(n)
                    .find(|&g| (g..g + n).all(|k| segment::shared_slot(p.shared, k) == 0))
            });
            let granule = match room.flatten() {
                Some(g) => g,
                None => {
                    let Some((d, _)) = p.heap.alloc(1, 1, true, self.index() as u32) else {
                        return ptr::null_mut();
                    };
                    (*d).kind = kind::SHARED;
                    (*d).words = [0; 4];
                    p.shared = d;
                    0
                }
            };
            let shared = p.shared;
            let slot = segment::take_mini_slot(segment::segment_of_desc(shared));
            if slot.is_null() {
                return ptr::null_mut();
            }
            let start = span_start(shared).add(granule * GRANULE);
            slab::init_mini(slot, class, start);
            segment::give_granules(shared, granule, n, slot);
            slot
        }
    }

    /// Returns objects of small class `class`, all from slabs of this arena and validated as
    /// object starts. A double free found here aborts. With `park`, for objects a consumer
    /// sends back (another arena's thread, or a thread of this arena that frees the class
    /// without allocating it), they may wait in the bin's transfer array for the next refill;
    /// an allocating thread's own objects go back to their slabs, which can then empty
    /// (parked there, they would keep a single thread's slabs from emptying and being purged).
    ///
    /// # Safety
    /// Every pointer must be an object start of a slab of this arena of class `class`.
    pub unsafe fn put_small(&self, class: usize, objects: &[*mut u8], park: bool) {
        let mut bin = self.bin(class).lock();
        let len = usize::from(bin.transfer_len);
        let room = if park {
            (transfer_capacity(class) - len).min(bin.transfer_credit.into())
        } else {
            0
        };
        let mut kept = 0;
        if room > 0 {
            let slots = self.transfer_slots_or_new(class);
            if !slots.is_null() {
                kept = room.min(objects.len());
                // SAFETY: `kept` slots from `len` on are within the array.
                unsafe { ptr::copy_nonoverlapping(objects.as_ptr(), slots.add(len), kept) };
                bin.transfer_len += kept as u16;
                bin.transfer_credit -= kept as u16;
            }
        }
        // SAFETY: as documented; we hold the bin's lock.
        unsafe { self.put_in_slabs(&mut bin, class, &objects[kept..], None) };
    }

    /// Puts objects of small class `class` back in their slabs' bitmaps, whose bin `bin` is
    /// (locked); a slab that empties is kept or goes back to the page heap, as emptied at
    /// `freed_at` (objects that waited in the transfer array) or now.
    ///
    /// # Safety
    /// As for [`Arena::put_small`]; `bin` must be this arena's bin of `class`.
    unsafe fn put_in_slabs(
        &self,
        bin: &mut SlabBin,
        class: usize,
        objects: &[*mut u8],
        freed_at: Option<u64>,
    ) {
        // Read once, at the first slab that empties.
        let mut now = None;
        // Pages of the slabs kept here, added to the arena's total once at the end (as in
        // `fill_small`).
        let mut kept = 0;
        for &p in objects {
            // SAFETY: per the contract, `p` lies inside a live slab of ours; we hold its bin's
            // lock.
            let Some((d, index, objects)) = (unsafe { slab::find_object(p as usize) }) else {
                os::fatal_pointer("free", "invalid pointer", p as usize)
            };
            // SAFETY: `d` is a slab of this bin (we hold its lock) and `index` one of its objects.
            match unsafe { slab::put(d, index, objects) } {
                Put::Partial => {}
                Put::AlreadyFree => os::fatal_pointer("free", "double free of", p as usize),
                Put::WasFull => {
                    if !bin.is_current(d) {
                        // SAFETY: a full slab other than a current one is on no list.
                        unsafe { bin.push_nonfull(d) };
                    }
                }
                Put::NowEmpty => {
                    // A mini slab stays where it is, a current slab or on the non-full list.
                    // SAFETY: `d` is a live slab.
                    if !bin.is_current(d) && !unsafe { slab::is_mini(d) } {
                        // SAFETY: a slab that was partly used, not a current one, is on the
                        // non-full list.
                        unsafe { bin.unlink_nonfull(d) };
                        let pages = CLASSES[class].pages as usize;
                        let now = *now.get_or_insert_with(os::now_ms);
                        let emptied = freed_at.unwrap_or(now);
                        let total = self.empty_pages.load(Ordering::Relaxed) + kept;
                        if total + pages <= EMPTY_KEEP_PAGES {
                            kept += pages;
                            // SAFETY: the slab is empty and now on no list.
                            unsafe { bin.push_empty(d, emptied) };
                        } else {
                            bin.slabs -= 1;
                            let mut p = self.pages.lock();
                            // SAFETY: an empty slab on no list: its span is unused.
                            unsafe { self.free_span_aged(&mut p, d, emptied, now) };
                        }
                    }
                }
            }
        }
        if kept > 0 {
            self.empty_pages.fetch_add(kept, Ordering::Relaxed);
        }
        bin.objects_out -= objects.len();
    }

    /// Whether the object at `p` (a validated object of a slab of ours, class `class`) is free
    /// in its slab, or waiting in the bin's transfer array. For double-free diagnosis.
    ///
    /// # Safety
    /// `d` must be the slab holding `p`.
    pub unsafe fn slab_object_is_free(&self, class: usize, d: *mut SpanDesc, p: usize) -> bool {
        let bin = self.bin(class).lock();
        // SAFETY: the slab is guarded by the lock we hold.
        unsafe {
            (*d).kind == kind::SLAB
                && (slab::object_index(d, p).is_some_and(|i| slab::is_free(d, i))
                    || self.parked_objects(class, &bin).contains(&(p as *mut u8)))
        }
    }

    /// Allocates a large block of class `class` aligned to `align_pages` pages; zeroed if
    /// `zero`. Null when out of memory.
    pub fn alloc_large(&self, class: usize, align_pages: usize, zero: bool) -> *mut u8 {
        self.alloc_large_with_room(class, align_pages, 0, zero)
    }

    /// [`Arena::alloc_large`] with `room` free pages after the block where possible (for a
    /// block that `realloc` is growing: its next growth can then happen in place).
    pub fn alloc_large_with_room(
        &self,
        class: usize,
        align_pages: usize,
        room: usize,
        zero: bool,
    ) -> *mut u8 {
        let pages = CLASSES[class].pages as usize;
        self.alloc_block(class, pages, align_pages, room, zero, 0).0
    }

    /// Allocates a block of class `class` that the profiler samples: always a page run of its
    /// own (small classes too), flagged so that its `free` is seen, aligned to `align_pages`.
    /// Returns the block and its descriptor; null when out of memory.
    pub fn alloc_sampled(
        &self,
        class: usize,
        align_pages: usize,
        zero: bool,
    ) -> (*mut u8, *mut SpanDesc) {
        let pages = (CLASSES[class].size as usize).div_ceil(os::PAGE_SIZE);
        self.alloc_block(class, pages, align_pages, 0, zero, FLAG_SAMPLED)
    }

    /// One block of `pages` pages for class `class` (a large block, or a sampled block of any
    /// class), counted in the statistics and zeroed if asked and not fresh.
    ///
    /// Resident pages come first, wherever they are: this arena's dirty spans, then another
    /// arena's (see [`Arena::span_elsewhere`]), and only then purged pages or a new segment. A
    /// block is owned by the arena whose segment holds it, and every free finds that arena
    /// from the address, so a block may come from any arena. Slabs may not: their bin is their
    /// arena's.
    fn alloc_block(
        &self,
        class: usize,
        pages: usize,
        align_pages: usize,
        room: usize,
        zero: bool,
        flags: u16,
    ) -> (*mut u8, *mut SpanDesc) {
        // A block with growth room (realloc) stays in this arena, where the room is looked for.
        let resident = if room == 0 {
            self.span_resident(pages, align_pages)
        } else {
            None
        };
        let (mut p, d, fresh) = match resident {
            Some((p, d)) => (p, d, false),
            None => {
                let mut p = self.pages.lock();
                let index = self.index() as u32;
                match p
                    .heap
                    .alloc_with_room(pages, align_pages, room, false, index)
                {
                    Some((d, fresh)) => (p, d, fresh),
                    None => return (ptr::null_mut(), ptr::null_mut()),
                }
            }
        };
        // SAFETY: a fresh span head of the heap `p` guards.
        unsafe {
            (*d).kind = kind::LARGE;
            (*d).class = class as u8;
            (*d).flags = flags;
            segment::set_fast_class_of_span(d);
        }
        if class < NUM_SMALL {
            p.sampled_small_live[class] += 1;
        } else {
            p.large[class - NUM_SMALL].live += 1;
            p.large[class - NUM_SMALL].requests += 1;
        }
        drop(p);
        let start = span_start(d);
        if zero && !fresh {
            // SAFETY: the block is ours, `pages` pages long.
            unsafe { ptr::write_bytes(start, 0, pages << os::PAGE_SHIFT) };
        }
        (start, d)
    }

    /// A span of resident (dirty) pages, with the page heap that gave it still locked: from
    /// this arena, else from another arena whose lock is free (busy ones are not waited for).
    /// None if no arena has one. This is how memory one thread freed serves another thread's
    /// large blocks before its arena faults in new pages: in `frag`, the bursts of different
    /// threads share pages.
    fn span_resident(
        &self,
        pages: usize,
        align_pages: usize,
    ) -> Option<(Guard<'_, ArenaPages>, *mut SpanDesc)> {
        {
            let mut p = self.pages.lock();
            if let Some(d) = p.heap.alloc_dirty(pages, align_pages, false) {
                return Some((p, d));
            }
        }
        let used = arenas_used();
        let me = self.index();
        for k in 1..used {
            let other = &ARENAS[(me + k) % used];
            if !other.may_have_dirty() {
                continue;
            }
            if let Some(mut q) = other.pages.try_lock() {
                if let Some(d) = q.heap.alloc_dirty(pages, align_pages, false) {
                    return Some((q, d));
                }
            }
        }
        None
    }

    /// Frees a sampled block.
    ///
    /// # Safety
    /// `d` must head a live sampled block of this arena, no longer used.
    pub unsafe fn free_sampled(&self, d: *mut SpanDesc) {
        let now = os::now_ms();
        let mut p = self.pages.lock();
        // SAFETY: per the contract.
        unsafe {
            let class = (*d).class as usize;
            if class < NUM_SMALL {
                p.sampled_small_live[class] -= 1;
            } else {
                p.large[class - NUM_SMALL].live -= 1;
            }
            (*d).flags = 0;
            self.free_span(&mut p, d, now);
        }
    }

    /// Frees large blocks (validated starts of large blocks of this arena).
    ///
    /// # Safety
    /// Every pointer must start a live large block of this arena, not used any more.
    pub unsafe fn free_large(&self, blocks: &[*mut u8]) {
        let now = os::now_ms();
        let mut p = self.pages.lock();
        for &b in blocks {
            // SAFETY: per the contract.
            unsafe {
                let d = Segment::desc_at(b as usize);
                if (*d).kind != kind::LARGE {
                    os::fatal_pointer("free", "double free of", b as usize);
                }
                p.large[(*d).class as usize - NUM_SMALL].live -= 1;
                self.free_span(&mut p, d, now);
            }
        }
    }

    /// Resizes large block `d` in place to class `want`, or failing that to class `class`
    /// (`want` is a growing block's headroom, at least `class`); false if the pages after it
    /// are taken.
    ///
    /// # Safety
    /// `d` must head a live large block of this arena.
    pub unsafe fn resize_large(&self, d: *mut SpanDesc, want: usize, class: usize) -> bool {
        let mut class = class;
        let new_pages = CLASSES[class].pages as usize;
        let mut p = self.pages.lock();
        // SAFETY: per the contract.
        unsafe {
            let old_pages = (*d).pages as usize;
            let ok = if new_pages > old_pages {
                if want != class && p.heap.try_grow(d, CLASSES[want].pages as usize) {
                    class = want;
                    true
                } else {
                    p.heap.try_grow(d, new_pages)
                }
            } else {
                if new_pages < old_pages {
                    let now = os::now_ms();
                    p.heap.shrink(d, new_pages, now, config::decay_ms());
                    self.note_dirty(now);
                }
                true
            };
            if ok {
                p.large[(*d).class as usize - NUM_SMALL].live -= 1;
                p.large[class - NUM_SMALL].live += 1;
                (*d).class = class as u8;
                segment::set_fast_class_of_span(d);
            }
            ok
        }
    }

    /// Purges this arena's dirty pages: those past the decay time, or all if `all`. Empty
    /// slabs that bins keep as their current slab (to avoid churn at a slab boundary) are
    /// released first: always if `all`, else at most once per decay period. An arena left
    /// without threads for a decay period with its warm pages kept (see [`count_out`])
    /// releases its empty slabs and purges all its dirty pages; one left without threads and
    /// not kept warm purges all of them at each sweep. Returns how many pages were purged.
    pub fn purge(&self, all: bool) -> usize {
        self.purge_at(os::now_ms(), all)
    }

    /// [`Arena::purge`] at time `now`. When nothing is due it costs three atomic loads.
    fn purge_at(&self, now: u64, all: bool) -> usize {
        let mut purged = 0;
        let decay = config::decay_ms();
        let last = self.last_sweep.load(Ordering::Relaxed);
        let sweep_due = decay >= 0 && now >= last.saturating_add(decay as u64);
        // Idle for a decay period: whatever the last round of threads left and no new thread
        // took goes back now. One caller claims it.
        let since = self.idle_since.load();
        let idle = decay >= 0
            && now >= since.saturating_add(decay as u64)
            && self.threads.load(Ordering::Relaxed) == 0
            && self.idle_since.replace(since, u64::MAX);
        let mut idle_sweep = false;
        if all
            || idle
            || (sweep_due
                && self
                    .last_sweep
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
        {
            purged += self.release_empty_slabs_since(now, parked_since(last, now));
            // An arena no thread uses and none is expected to (no round of threads left it
            // warm): what remote frees have emptied since its last thread left will not be
            // reused soon, so at a sweep it all goes back now rather than a decay period later.
            idle_sweep = decay >= 0
                && self.threads.load(Ordering::Relaxed) == 0
                && self.idle_since.load() == u64::MAX;
        }
        if !all && !idle && !idle_sweep && now < self.purge_hint.load() {
            return purged;
        }
        let mut p = self.pages.lock();
        purged += if all || idle || idle_sweep {
            p.heap.purge_all()
        } else {
            p.heap.purge_expired(now, decay)
        };
        self.note_purged(&p.heap, decay);
        purged
    }

    /// Frees the bins' kept empty slabs and their current slabs that are empty (for decay: as
    /// freed when they emptied, or at `now`), and puts the objects parked in transfer arrays
    /// back in their slabs, as freed at the arena's last sweep (they were parked since; at
    /// most a decay period ago). Returns the pages the page heap purged meanwhile (those
    /// that expired).
    fn release_empty_slabs(&self, now: u64) -> usize {
        let last = self.last_sweep.load(Ordering::Relaxed);
        self.release_empty_slabs_since(now, parked_since(last, now))
    }

    /// [`Arena::release_empty_slabs`], the parked objects as freed at `parked_since`.
    fn release_empty_slabs_since(&self, now: u64, parked_since: u64) -> usize {
        let mut purged = 0;
        // Bins that never had a slab hold nothing: a small program's sweep then leaves most
        // bins' locks (and their pages, never touched) alone.
        let used = self.bins_used.load(Ordering::Relaxed);
        for (class, (bin, info)) in self.bins.iter().zip(&CLASSES).enumerate() {
            if used & (1 << class) == 0 {
                continue;
            }
            let mut bin = bin.0.lock();
            // Objects waiting for a refill go back to their slabs, which may empty.
            bin.transfer_credit = 0;
            let waiting = usize::from(bin.transfer_len);
            if waiting > 0 {
                bin.transfer_len = 0;
                // SAFETY: we hold the bin's lock; the array's first `waiting` slots hold
                // validated objects of this bin's class, no longer listed there.
                unsafe {
                    let objects = core::slice::from_raw_parts(self.transfer_slots(class), waiting);
                    self.put_in_slabs(&mut bin, class, objects, Some(parked_since));
                }
            }
            if !bin.empty.is_null() {
                let mut kept_pages = 0;
                let mut p = self.pages.lock();
                while !bin.empty.is_null() {
                    let s = bin.empty;
                    // SAFETY: kept empty slabs are live descriptors of ours, guarded by the lock.
                    unsafe {
                        bin.empty = (*s).next;
                        let kept_for = (now as u32).wrapping_sub((*s).kept_at) as u64;
                        purged += self.free_span_aged(&mut p, s, now - kept_for.min(now), now);
                    }
                    kept_pages += info.pages as usize;
                    bin.slabs -= 1;
                }
                self.empty_pages.fetch_sub(kept_pages, Ordering::Relaxed);
            }
            for lane in 0..SLAB_LANES {
                let s = bin.current[lane];
                // A mini slab stays (see `span::slab`).
                // SAFETY: the current slab is a live descriptor guarded by the bin lock.
                let empty = |s: *mut SpanDesc| unsafe {
                    (*s).nfree == info.objects as u32 && !slab::is_mini(s)
                };
                if !s.is_null() && empty(s) {
                    bin.current[lane] = ptr::null_mut();
                    bin.slabs -= 1;
                    // SAFETY: an empty slab of this arena, on no list.
                    purged += unsafe { self.free_span(&mut self.pages.lock(), s, now) };
                }
            }
        }
        purged
    }
}

/// When objects parked in transfer arrays were parked at the earliest, for their decay: the
/// arena's last sweep (`last`), which put back all those parked before it, but no longer ago
/// than a decay period.
fn parked_since(last: u64, now: u64) -> u64 {
    let decay = config::decay_ms();
    if decay < 0 {
        return now;
    }
    last.max(now.saturating_sub(decay as u64)).min(now)
}

static ARENAS: ArenaTable = ArenaTable(
    [const {
        ArenaSlot {
            arena: Arena::new(),
            _pad: [0; ARENA_STRIDE - core::mem::size_of::<Arena>()],
        }
    }; MAX_ARENAS],
);

/// The arenas, each on a whole number of pages ([`ARENA_STRIDE`]): every arena's first part
/// then lies at the same place in its page as arena 0's, where it fits in the page (see
/// [`Arena`]). Packed, the next arena's straddled two pages, a fault more for its first thread.
#[repr(transparent)]
struct ArenaTable([ArenaSlot; MAX_ARENAS]);

/// An arena and the padding after it, never touched.
#[repr(C)]
struct ArenaSlot {
    arena: Arena,
    _pad: [u8; ARENA_STRIDE - core::mem::size_of::<Arena>()],
}

/// Bytes from one arena to the next (the table's 255 arenas take 2 MiB of `.bss`, in which
/// only what threads use is ever touched).
const ARENA_STRIDE: usize = core::mem::size_of::<Arena>().next_multiple_of(os::PAGE_SIZE);

impl core::ops::Index<usize> for ArenaTable {
    type Output = Arena;
    #[inline(always)]
    fn index(&self, i: usize) -> &Arena {
        &self.0[i].arena
    }
}

impl ArenaTable {
    /// The arenas in order.
    fn iter(&self) -> impl Iterator<Item = &Arena> {
        self.0.iter().map(|slot| &slot.arena)
    }

    /// Arena `i`, unchecked.
    ///
    /// # Safety
    /// `i` must be below [`MAX_ARENAS`].
    #[inline(always)]
    unsafe fn get_unchecked(&self, i: usize) -> &Arena {
        // SAFETY: per the contract.
        unsafe { &self.0.get_unchecked(i).arena }
    }
}
/// Shared arenas: `0..SHARED_ARENAS` (see [`ThreadArenas`]).
static SHARED_ARENAS: AtomicUsize = AtomicUsize::new(1);
/// Line arenas: `0..LINE_ARENAS`, never fewer than the shared ones.
static LINE_ARENAS: AtomicUsize = AtomicUsize::new(1);
/// Whether the arena counts were set (see [`ensure_sized`]).
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static SIZED: AtomicBool = AtomicBool::new(false);
/// One past the highest arena ever given a thread (only those hold memory: ticks, purges,
/// fork and stats visit these). Not every arena threads may be spread over: each arena's
/// state has a page of its own, and a program with one thread faulted in all of them at its
/// first tick.
static ARENAS_USED: AtomicUsize = AtomicUsize::new(1);

/// Whether the profiler's arena was ever used (it then holds memory: ticks, purges, fork and
/// stats visit it too). Read at every tick and thread exit: with the hot statics.
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static PROFILER_ARENA_USED: AtomicBool = AtomicBool::new(false);

/// Held while an arena comes into use ([`ARENAS_USED`] grows, or the profiler's is used for the
/// first time), and by `fork` from [`prefork`] until its handlers end: no arena comes into use
/// while it runs, so the parent's handler releases exactly the locks `prefork` took, and the
/// child finds no arena that a thread was changing under a lock `prefork` did not take.
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static GROWTH: Locked<()> = Locked::new(());

/// Counts arena `index` in use (before the thread can take any of its locks), under
/// [`GROWTH`] if it was not yet, after faulting in its first part (see [`warm`]): no other
/// thread uses it before it counts.
fn take_into_use(index: usize) {
    if arenas_used() <= index {
        let _growing = GROWTH.lock();
        if arenas_used() <= index {
            warm(&ARENAS[index]);
            ARENAS_USED.fetch_max(index + 1, Ordering::SeqCst);
        }
    }
}

/// The arena that serves the profiler's own allocations (its unwinder's module lists and
/// caches, its stack table, the buffers of a dump), which are made without a thread cache (see
/// `thread::InProfiler`). Apart from the program's arenas, so that they take no block or slab
/// the program's allocations would have had: with the profiler on, the program's blocks lie
/// where they lay with it off (its set-up's blocks alone made `pairs` 3-5 % slower).
pub fn profiler_arena() -> &'static Arena {
    if !PROFILER_ARENA_USED.load(Ordering::Relaxed) {
        // Before its first lock is taken: `prefork` then visits it.
        let _growing = GROWTH.lock();
        PROFILER_ARENA_USED.store(true, Ordering::SeqCst);
    }
    &ARENAS[PROFILER_ARENA]
}

/// The arenas that may hold memory: those ever given a thread, and the profiler's if used.
pub fn in_use() -> impl Iterator<Item = &'static Arena> {
    let profiler = PROFILER_ARENA_USED.load(Ordering::SeqCst);
    ARENAS
        .iter()
        .take(arenas_used())
        .chain(profiler.then(|| &ARENAS[PROFILER_ARENA]))
}

/// Arena number `i`.
pub fn get(i: usize) -> &'static Arena {
    &ARENAS[i]
}

/// The arena that owns segment `seg`.
///
/// # Safety
/// `seg` must be a live segment.
#[inline(always)]
pub unsafe fn of_segment(seg: *mut Segment) -> &'static Arena {
    // SAFETY: live segments record the arena that created them, always < MAX_ARENAS.
    &ARENAS[unsafe { (*seg).arena } as usize]
}

/// The arena with segment-map tag `tag` (non-zero, from a live segment).
#[inline(always)]
pub fn of_tag(tag: u8) -> &'static Arena {
    // SAFETY: tags are index + 1 of an arena below MAX_ARENAS, so `tag - 1` is in bounds.
    unsafe { ARENAS.get_unchecked(tag as usize - 1) }
}

/// Faults in, for writing, the pages of arena 0's first part, which the first thread takes
/// (no arena has threads yet). Called once, before any thread can use an arena.
pub fn warm_first_arena() {
    warm(&ARENAS[0]);
}

/// Faults in, for writing, the pages of `a`'s first [`ARENA_HOT_BYTES`] (its counters, bins,
/// page heap and mini slabs' page), which a thread's first refill uses. Its first access to
/// some of them is a read, which maps the zero page, and the write after it faulted again:
/// two faults for such a page. No thread may use the arena yet.
fn warm(a: &Arena) {
    // SAFETY: the range lies inside the arena, which no thread uses yet.
    unsafe { os::fault_in_for_write(ptr::from_ref(a).cast(), ARENA_HOT_BYTES) };
}

/// Sets the number of shared arenas to `n` (clamped to 1..=254, the arenas threads may have),
/// and that of line arenas to `n` or the CPU count, whichever is larger.
pub fn set_narenas(n: usize) {
    let n = n.clamp(1, PROFILER_ARENA);
    SHARED_ARENAS.store(n, Ordering::Relaxed);
    LINE_ARENAS.store(
        n.max(os::cpu_count()).min(PROFILER_ARENA),
        Ordering::Relaxed,
    );
    SIZED.store(true, Ordering::Release);
}

/// Sets the arena counts from the configuration unless [`set_narenas`] already did. Start-up
/// leaves them at one each, all that a thread needs while arena 0 has none (it takes arena 0
/// whatever the counts); a thread that finds arena 0 taken sets them. So a program with one
/// thread never asks for the CPU count, whose call faults in a page of libc's code.
pub fn ensure_sized() {
    if !SIZED.load(Ordering::Acquire) {
        set_narenas(config::narenas_or_default());
    }
}

/// How many arenas threads are spread over, in all (the line arenas, which include the shared
/// ones).
pub fn narenas() -> usize {
    LINE_ARENAS.load(Ordering::Relaxed)
}

/// How many of them are shared arenas.
pub fn shared_arenas() -> usize {
    SHARED_ARENAS.load(Ordering::Relaxed)
}

/// Arenas that may hold memory.
pub fn arenas_used() -> usize {
    ARENAS_USED.load(Ordering::SeqCst)
}

/// A thread's two arenas. Its `shared` arena serves every class but those smaller than a cache
/// line; its `line` arena serves those, and its tag is the one `free` compares to tell blocks
/// that may share a cache line with another thread's (see `thread::cache`). Line arenas are one
/// per CPU, so threads that run at once have different ones; shared arenas are fewer
/// (`narenas`; by default one per two CPUs), so that the memory of threads that come and go is
/// pooled in fewer arenas, each with its own partly used slabs and free pages. Arena `i` is
/// line arena `i` and, below the shared count, shared arena `i` too: a thread on line arena `i`
/// has shared arena `i % shared`, and a program with one thread uses one arena.
#[derive(Clone, Copy)]
pub struct ThreadArenas {
    /// Every class but the sub-line ones.
    pub shared: &'static Arena,
    /// The classes smaller than a cache line.
    pub line: &'static Arena,
}

impl ThreadArenas {
    /// Whether both are one arena.
    pub fn same(&self) -> bool {
        ptr::eq(self.shared, self.line)
    }
}

/// Picks the arenas of a new thread: the line arena with the fewest threads, and its shared
/// arena, and counts the thread in (see [`count_in`]).
pub fn assign_thread() -> ThreadArenas {
    let mut best = 0;
    let mut best_threads = u32::MAX;
    // An arena no thread ever took has none, and is not read: its page's first access is
    // then the count's write (a read first maps the zero page, and the write faults again).
    let used = arenas_used();
    // A thread that finds arena 0 free takes it whatever the counts.
    if ARENAS[0].line_threads.load(Ordering::Relaxed) != 0 {
        ensure_sized();
    }
    for (i, a) in ARENAS.iter().enumerate().take(narenas()) {
        let t = if i < used {
            a.line_threads.load(Ordering::Relaxed)
        } else {
            0
        };
        if t < best_threads {
            best = i;
            best_threads = t;
            if t == 0 {
                break;
            }
        }
    }
    // Before the thread can take any of the arena's locks: `prefork` visits the arenas used.
    take_into_use(best);
    let arenas = ThreadArenas {
        shared: &ARENAS[best % shared_arenas()],
        line: &ARENAS[best],
    };
    count_thread_in(arenas);
    arenas
}

/// Counts a thread in to its arenas: once in each, whether they are two or one. Also fork's
/// recount of the surviving thread, whose arenas the child found with no thread.
pub fn count_thread_in(arenas: ThreadArenas) {
    arenas.line.line_threads.fetch_add(1, Ordering::Relaxed);
    count_in(arenas.shared);
    if !arenas.same() {
        count_in(arenas.line);
    }
}

/// Counts a thread in to arena `a`. A thread that finds the arena empty takes it over: within
/// a decay period of the last thread's exit, the arena is marked as serving rounds of threads
/// (see [`count_out`]).
fn count_in(a: &Arena) {
    if a.threads.fetch_add(1, Ordering::Relaxed) == 0 {
        a.idle_since.store(u64::MAX);
        let last = a.last_exit.load(Ordering::Relaxed);
        let decay = config::decay_ms();
        let soon = last != 0 && decay >= 0 && os::now_ms() <= last.saturating_add(decay as u64);
        a.taken_over.store(soon, Ordering::Relaxed);
    }
}

/// Dirty pages an arena keeps when its last thread exits and no round of threads was seen
/// (see [`count_out`]); above this, all of them are purged. A pool of short-lived threads
/// with small heaps then never pays for purges and refaults, while a thread that leaves
/// megabytes behind gives them back at once.
const IDLE_DIRTY_KEEP_PAGES: usize = 512;

/// Counts an exiting thread out of its arenas (see [`count_out`]); then it serves the other
/// arenas' due purges, as a tick would.
pub fn release_thread(arenas: ThreadArenas) {
    arenas.line.line_threads.fetch_sub(1, Ordering::Relaxed);
    if !arenas.same() {
        count_out(arenas.line);
    }
    count_out(arenas.shared);
    purge_due_arenas(os::now_ms());
}

/// Counts a thread out of arena `a` (it exited). What the last thread out does depends on what
/// the arena has seen:
///
/// - It serves rounds of threads (a new thread took it over within a decay period of its last
///   exit, see [`count_in`]): the next round will most likely want the same memory, so
///   nothing is released now. Its dirty pages keep decaying span by span, and if no thread
///   takes the arena over within a decay period, the next tick of any thread (or the next
///   thread exit) releases its empty slabs and purges all its dirty pages ([`Arena::purge`]).
///   Purging at once made every round fault its pages in again.
/// - Otherwise (its first thread leaves, or one that came after a long pause): the bins' empty
///   slabs go back to the page heap and, if more than [`IDLE_DIRTY_KEEP_PAGES`] are dirty, all
///   dirty pages are purged at once, so workers that exit return their memory even if no
///   thread ever allocates again; but free pages in huge pages that still hold live blocks
///   wait for their decay time, as purging them would break the huge pages (and a round of
///   threads that comes back would fault them in 4 KiB at a time).
fn count_out(a: &Arena) {
    if a.threads.fetch_sub(1, Ordering::Relaxed) > 1 {
        // Others remain. What the exiting thread's frees parked or emptied goes back to the
        // page heap now, to decay from now: a thread that freed a lot and left must not wait
        // for the next sweep (a decay period after some tick) to start the clock.
        a.release_empty_slabs(os::now_ms());
    } else {
        let now = os::now_ms();
        a.last_exit.store(now, Ordering::Relaxed);
        let decay = config::decay_ms();
        if decay >= 0 && a.taken_over.load(Ordering::Relaxed) {
            a.idle_since.store(now);
        } else {
            a.release_empty_slabs(now);
            let mut p = a.pages.lock();
            if decay >= 0 && p.heap.counts.dirty > IDLE_DIRTY_KEEP_PAGES {
                p.heap.purge_all_but_huge_pages_in_use();
                a.note_purged(&p.heap, decay);
            }
        }
    }
}

/// Purges what is due in every arena, whoever uses it: the arenas of threads that exited are
/// visited by the ticks of those that remain. Costs two atomic loads per arena when nothing is
/// due.
pub fn purge_due_arenas(now: u64) {
    for a in in_use() {
        a.purge_at(now, false);
    }
}

/// Purges every arena (see [`Arena::purge`]). Returns how many pages were purged.
pub fn purge_all_arenas(all: bool) -> usize {
    in_use().map(|a| a.purge(all)).sum()
}

/// Fork: take every arena lock, in the documented order, and hold the arenas in use as they
/// are until the parent's or child's handler.
pub fn prefork() {
    // First: the arenas in use are then the same when the parent's handler releases them.
    GROWTH.raw_lock();
    for a in in_use() {
        for b in &a.bins {
            b.0.raw_lock();
        }
        a.pages.raw_lock();
    }
}

/// Fork: release every arena lock in the parent (those [`prefork`] took: [`GROWTH`] kept the
/// arenas in use as they were).
pub fn postfork_parent() {
    for a in in_use() {
        // SAFETY: all taken by this thread in `prefork`.
        unsafe {
            a.pages.raw_unlock();
            for b in &a.bins {
                b.0.raw_unlock();
            }
        }
    }
    // SAFETY: taken in `prefork` by this thread.
    unsafe { GROWTH.raw_unlock() };
}

/// Fork: reset every arena lock in the child.
pub fn postfork_child() {
    GROWTH.reset_after_fork();
    for a in in_use() {
        a.pages.reset_after_fork();
        for b in &a.bins {
            b.0.reset_after_fork();
        }
        a.threads.store(0, Ordering::Relaxed);
        a.line_threads.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::size_class::{class_of, slab_objects};
    use crate::span::slab;

    /// Every arena lies where arena 0 does in its page, so that where the preload's linker
    /// script puts arena 0's first part within a page, every arena's lies within one too.
    #[test]
    fn arenas_lie_alike_in_their_pages() {
        let offset = |a: &Arena| ptr::from_ref(a) as usize % os::PAGE_SIZE;
        assert!(ARENAS.iter().all(|a| offset(a) == offset(&ARENAS[0])));
        assert_eq!(ARENAS[MAX_ARENAS - 1].index(), MAX_ARENAS - 1);
    }

    /// The slab holding object `p` of one of our slabs.
    fn slab_of(p: *mut u8) -> *mut SpanDesc {
        match segment::locate(p as usize) {
            segment::Location::Span(d, _) => d,
            _ => panic!("{p:?} is not in a span of ours"),
        }
    }

    /// While `fork` runs (from `prefork` to the parent's handler), no arena comes into use: a
    /// thread's first use of one waits, so the child never finds an arena that a thread was
    /// changing under a lock `prefork` did not take. And the parent's handler releases only the
    /// locks `prefork` took: those of the arenas in use, not another's (here: arena 212's bin,
    /// which this test holds, as a thread using it would).
    #[test]
    fn fork_holds_the_arenas_in_use_as_they_were() {
        const WAITS: usize = 210; // arenas no other test uses
        const HELD: usize = 212;
        assert!(arenas_used() <= WAITS);
        // The thread is made before `prefork`: nothing between it and `postfork_parent` may
        // allocate (this thread holds every arena lock).
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let taker = {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                take_into_use(WAITS);
            })
        };
        prefork();
        start.wait();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let during = arenas_used();
        postfork_parent();
        taker.join().unwrap();
        assert!(during <= WAITS, "an arena came into use while fork ran");
        assert_eq!(arenas_used(), WAITS + 1);

        let a = get(HELD);
        let held = a.bin(0).try_lock().expect("the arena's bin is free");
        prefork();
        postfork_parent();
        assert!(
            a.bin(0).try_lock().is_none(),
            "released the lock of another thread"
        );
        drop(held);
        assert!(a.bin(0).try_lock().is_some());
    }

    /// Two lanes' refills come from slabs of their own, and a lane whose slabs are full takes
    /// the other lane's non-full slab before it makes a new one.
    #[test]
    fn lanes_take_objects_from_slabs_of_their_own() {
        let a = get(204); // an arena no other test uses
        let class = class_of(1280); // without mini slabs, as in the tests below
        let per_slab = slab_objects(class);
        let mut zero = vec![ptr::null_mut(); per_slab];
        let mut one = vec![ptr::null_mut(); per_slab];
        assert_eq!(a.fill_small(class, 0, &mut zero[..4], false), 4);
        assert_eq!(a.fill_small(class, 1, &mut one[..4], false), 4);
        let (s, t) = (slab_of(zero[0]), slab_of(one[0]));
        assert_ne!(s, t, "two lanes took objects from one slab");
        assert!(zero[..4].iter().all(|&p| slab_of(p) == s));
        assert!(one[..4].iter().all(|&p| slab_of(p) == t));
        // Both slabs full; two of lane 0's objects come back, so its slab is non-full.
        assert_eq!(a.fill_small(class, 0, &mut zero[4..], false), per_slab - 4);
        assert_eq!(a.fill_small(class, 1, &mut one[4..], false), per_slab - 4);
        assert!(zero.iter().all(|&p| slab_of(p) == s) && one.iter().all(|&p| slab_of(p) == t));
        // Lane 0 moves on to a new slab; two of its first slab's objects come back, so that
        // slab is non-full, on lane 0's list.
        let mut next = [ptr::null_mut(); 1];
        assert_eq!(a.fill_small(class, 0, &mut next, false), 1);
        assert!(slab_of(next[0]) != s && slab_of(next[0]) != t);
        // SAFETY: objects of this arena's slabs of `class`, unused, each put back once.
        unsafe { a.put_small(class, &zero[..2], false) };
        let mut more = [ptr::null_mut(); 2];
        assert_eq!(a.fill_small(class, 1, &mut more, false), 2);
        assert!(
            more.iter().all(|&p| slab_of(p) == s),
            "lane 1 made a new slab while lane 0's had room"
        );
        // SAFETY: as above.
        unsafe {
            a.put_small(class, &zero[2..], false);
            a.put_small(class, &one, false);
            a.put_small(class, &more, false);
            a.put_small(class, &next, false);
        }
        a.release_empty_slabs(0);
        let bin = a.bin(class).lock();
        assert_eq!((bin.objects_out, bin.slabs), (0, 0));
    }

    /// A class of at most `MINI_MAX` bytes starts with a mini slab, a granule or two aligned
    /// to its size: the first refills of six classes share one page, a refill stops at a
    /// class's mini slab and the next takes a slab of pages. Every block is found and checked
    /// from its address, fast path and checked path alike. When all is back, the slabs of
    /// pages go and the mini slabs stay.
    #[test]
    fn small_classes_start_with_mini_slabs_six_to_a_page() {
        use crate::base::size_class::{mini_code, mini_objects};
        let a = get(205); // an arena no other test uses
        let page = |p: *mut u8| p as usize >> os::PAGE_SHIFT;
        // Granules 0 to 3, then 4-5 and 6-7 (a KiB slab is aligned to a KiB).
        let classes = [
            class_of(16),
            class_of(48),
            class_of(256),
            class_of(64),
            class_of(512),
            class_of(1024),
        ];
        let mut taken = Vec::new();
        for &class in &classes {
            let mut out = vec![ptr::null_mut(); 8];
            let n = a.fill_small(class, 0, &mut out, false);
            assert_eq!(
                n,
                mini_objects(class).min(8),
                "class {class}: not its mini slab"
            );
            out.truncate(n);
            let d = slab_of(out[0]);
            let size = CLASSES[class].size as usize;
            // SAFETY: `d` is the live mini slab of these objects.
            unsafe {
                assert!(slab::is_mini(d));
                let start = slab::start(d) as usize;
                assert_eq!(start % mini_bytes(class), 0);
                for &p in &out {
                    assert_eq!(slab_of(p), d);
                    assert_eq!(Segment::fast_code_at(p as usize) & 0xff, mini_code(class));
                    assert!(slab::object_index(d, p as usize).is_some());
                }
                // The first offset past its last whole block is no block, though it lies in
                // its granule for 48-byte blocks (480).
                let past = start + mini_objects(class) * size;
                assert!(slab::object_index(d, past).is_none());
                assert!(!slab::starts_object(d, past - start));
            }
            taken.push((class, out));
        }
        let shared = page(taken[0].1[0]);
        assert!(
            taken.iter().all(|(_, out)| page(out[0]) == shared),
            "six classes' mini slabs on more than one page"
        );
        // The next refill of 512-byte blocks (two to a mini slab) takes a slab of pages.
        let class = class_of(512);
        let mut more = vec![ptr::null_mut(); 4];
        assert_eq!(a.fill_small(class, 0, &mut more, false), 4);
        // SAFETY: the slab of a live object of ours.
        let in_mini = |p: *mut u8| unsafe { slab::is_mini(slab_of(p)) };
        assert!(more.iter().all(|&p| page(p) != shared && !in_mini(p)));
        taken.push((class, more));
        // So does the next refill of 16-byte blocks once their mini slab (32) runs out.
        let class = class_of(16);
        let mut rest = vec![ptr::null_mut(); 64];
        assert_eq!(
            a.fill_small(class, 0, &mut rest, false),
            64,
            "a short refill"
        );
        let left = mini_objects(class) - mini_objects(class).min(8);
        assert_eq!(rest.iter().filter(|&&p| page(p) == shared).count(), left);
        taken.push((class, rest));
        // A seventh class starts another shared page.
        let mut seventh = vec![ptr::null_mut(); 1];
        assert_eq!(a.fill_small(class_of(32), 0, &mut seventh, false), 1);
        assert_ne!(page(seventh[0]), shared);
        // The rest of that page belongs to no slab yet: no object is found there.
        let unused = (seventh[0] as usize & !(GRANULE - 1)) + GRANULE;
        // SAFETY: an address in a live shared page of this arena, which no other test uses.
        assert!(unsafe { slab::find_object(unused) }.is_none());
        // SAFETY: as above.
        assert!(unsafe { slab::find_object(seventh[0] as usize) }.is_some());
        taken.push((class_of(32), seventh));
        for (class, out) in &taken {
            // SAFETY: objects of this arena's slabs of `class`, unused, each put back once.
            unsafe { a.put_small(*class, out, false) };
        }
        a.release_empty_slabs(0);
        for &class in classes.iter().chain(&[class_of(32)]) {
            let bin = a.bin(class).lock();
            assert_eq!(
                (bin.objects_out, bin.slabs),
                (0, 1),
                "class {class}: mini slab gone"
            );
        }
        // The mini slab serves the class again.
        let mut again = [ptr::null_mut(); 1];
        assert_eq!(a.fill_small(class_of(16), 0, &mut again, false), 1);
        assert_eq!(page(again[0]), shared);
        // SAFETY: as above.
        unsafe { a.put_small(class_of(16), &again, false) };
    }

    /// Objects a thread cache sends back wait in their bin's transfer array: the next refill
    /// takes them as they are (the last sent first), a second free of one is recognised, and
    /// the sweep puts the rest back in their slab, which then empties and goes.
    #[test]
    fn sent_back_objects_wait_for_the_next_refill() {
        let a = get(200); // an arena no other test uses
        let class = class_of(1280);
        let mut out = [ptr::null_mut(); 8];
        assert_eq!(a.fill_small(class, 0, &mut out, false), 8);
        // SAFETY: objects of this arena's slabs of `class`, unused.
        unsafe { a.put_small(class, &out[..6], true) };
        {
            let bin = a.bin(class).lock();
            assert_eq!(bin.parked(), 6);
            assert_eq!(a.parked_objects(class, &bin), &out[..6]);
            assert_eq!(bin.objects_out, 8, "still out of their slab");
        }
        let d = slab_of(out[0]);
        // SAFETY: `d` is the slab of these objects (all from one fresh slab).
        unsafe {
            assert!(a.slab_object_is_free(class, d, out[0] as usize));
            assert!(!a.slab_object_is_free(class, d, out[7] as usize));
        }
        let mut again = [ptr::null_mut(); 4];
        assert_eq!(a.fill_small(class, 0, &mut again, false), 4);
        assert_eq!(
            again,
            out[2..6],
            "taken from the transfer array, as they were"
        );
        let bin = a.bin(class).lock();
        assert_eq!(a.parked_objects(class, &bin), &out[..2]);
        drop(bin);
        // SAFETY: as above.
        unsafe {
            a.put_small(class, &again, true);
            a.put_small(class, &out[6..], true);
        }
        a.release_empty_slabs(0);
        let bin = a.bin(class).lock();
        assert_eq!(
            (bin.parked(), bin.objects_out, bin.slabs),
            (0, 0, 0),
            "back in the slab, which emptied and went"
        );
    }

    /// A kept empty slab that its bin lets go (at a sweep, or when a thread of the arena
    /// exits) decays from when it emptied, not from then: its pages are due a decay period
    /// after the slab was last used.
    #[test]
    fn a_kept_slab_decays_from_when_it_emptied() {
        let a = get(202); // an arena no other test uses
        let class = class_of(1280);
        let per_slab = CLASSES[class].objects as usize;
        // Two slabs' worth: the first is no longer the bin's current slab.
        let mut out = vec![ptr::null_mut(); per_slab + 1];
        assert_eq!(a.fill_small(class, 0, &mut out, false), per_slab + 1);
        let emptied = os::now_ms();
        // SAFETY: objects of this arena's slabs of `class`, unused.
        unsafe { a.put_small(class, &out[..per_slab], false) };
        assert_eq!(
            a.bin(class).lock().empty_slabs(),
            1,
            "the first slab is kept"
        );
        let later = emptied + 10_000;
        a.release_empty_slabs(later);
        let oldest = a.pages().lock().heap.oldest_dirty();
        let done = os::now_ms();
        // Purged already if the decay time had come (it has, unless decay is off), else dirty
        // as freed when it emptied.
        assert!(
            oldest.is_none_or(|t| t <= done),
            "dated at the release ({later}), not when it emptied ({emptied}): {oldest:?}"
        );
        // SAFETY: as above.
        unsafe { a.put_small(class, &out[per_slab..], false) };
        a.release_empty_slabs(0);
    }

    /// A thread counts once in each arena it uses, whether its line and shared arenas are two
    /// or one, and leaves them unused when it exits.
    #[test]
    fn a_thread_counts_once_in_each_of_its_arenas() {
        // Arenas no other test uses.
        let two = ThreadArenas {
            shared: get(210),
            line: get(211),
        };
        let one = ThreadArenas {
            shared: get(212),
            line: get(212),
        };
        let counts = |a: &Arena| {
            (
                a.threads.load(Ordering::Relaxed),
                a.line_threads.load(Ordering::Relaxed),
            )
        };
        count_thread_in(two);
        assert_eq!((counts(two.shared), counts(two.line)), ((1, 0), (1, 1)));
        assert!(two.shared.is_used() && two.line.is_used());
        release_thread(two);
        assert_eq!((counts(two.shared), counts(two.line)), ((0, 0), (0, 0)));
        assert!(!two.shared.is_used() && !two.line.is_used());
        count_thread_in(one);
        assert_eq!(counts(one.line), (1, 1), "one arena, counted once");
        release_thread(one);
        assert_eq!(counts(one.line), (0, 0));
    }

    /// Objects are parked only as many as refills took: in a phase of frees alone they go
    /// back to their slabs (which can then empty), not into the transfer array.
    #[test]
    fn frees_alone_go_back_to_their_slabs() {
        let a = get(201); // an arena no other test uses
        let class = class_of(1280);
        let mut out = [ptr::null_mut(); 16];
        assert_eq!(a.fill_small(class, 0, &mut out, false), 16);
        // A sweep: no credit left.
        a.release_empty_slabs(0);
        // SAFETY: objects of this arena's slabs of `class`, unused.
        unsafe { a.put_small(class, &out[..8], true) };
        assert_eq!(a.bin(class).lock().parked(), 0);
        // A thread's own objects are never parked.
        assert_eq!(a.fill_small(class, 0, &mut out[..8], false), 8);
        // SAFETY: as above.
        unsafe { a.put_small(class, &out, false) };
        let bin = a.bin(class).lock();
        assert_eq!((bin.parked(), bin.objects_out), (0, 0));
    }
}
