//! The page heap: an arena's allocator of spans (runs of pages) inside its segments, and the
//! decay that gives unused pages back to the kernel.
//!
//! Free spans sit in size-binned lists, split in two sets: *dirty* (freed recently, probably
//! still resident) and *clean* (purged, reading as zero). Allocation prefers dirty spans, so
//! recently freed memory is reused before fresh pages are faulted in; that is what keeps
//! repeated multi-page allocations fast. Dirty spans also sit on a decay list, (nearly) oldest first;
//! a span dirty for longer than `dirty_decay_ms` is purged (`madvise`), becomes clean and merges
//! with clean neighbours. A segment that becomes wholly clean is unmapped.
//!
//! # A merged span is as old as its pages
//!
//! A dirty span's `freed_at` must say how long its pages have sat unused, or the decay list
//! stops meaning anything. This heap once stamped every merged span "freed now": a large region
//! next to blocks that keep being freed then stayed young for ever, a busy arena purged almost
//! nothing and its RSS kept rising. Now a freed span still merges with its dirty
//! neighbours (free space stays contiguous, so large requests keep finding resident pages), but
//! the merged span is stamped with its pages' *mean* free time, weighted by page count. It is
//! filed at the decay-list place of the oldest span it absorbed (O(1): no search under the
//! lock), or at the tail when it is the youngest. The list is then only nearly ordered: a span
//! filed behind a younger one waits until that one is due, at most one window. A large region absorbing a few freed pages stays about
//! as old as it was and expires about one `dirty_decay_ms` after it was freed; it only stays
//! young if about its own size is freed into it per window, i.e. if it is mostly recent memory.
//! Carving keeps the stamp of what is left. Purges come one span at a time as spans reach their
//! age, not all at once, and whether the arena is busy does not matter.
//!
//! Alternatives weighed: jemalloc's smoothstep decay (a dirty-page budget from the history of net
//! new dirty pages) purges by count, so in a steady churn (zero net growth) it drains pages that
//! are being reused, and it still needs a list ordered by true age to pick what to purge. Exact
//! per-page ages by merging only spans freed in the same epoch were tried: adjacent dirty spans
//! of different epochs then cannot serve one larger request, which fragmented free space enough
//! to fault in more fresh pages than decay saved (a 16-thread churn: 3x the page faults, +20%
//! RSS). The mean errs both ways, boundedly: a few recently freed pages merged into an old region
//! may be purged early (and faulted again if reused), and a few old pages merged into a recent
//! region wait at most until that region expires. A span freed and reused within the window is
//! never purged: carving takes it off the decay list.
//!
//! Neighbours are found through boundary tags: the descriptors of a free span's first and last
//! pages name its first page (the last only if a span follows, see `Segment::set_tail`), and
//! every descriptor that is not a span head has kind `NONE`. Slabs have every page's head set
//! (their objects are looked up from inside the span); large blocks only the first and last.

use crate::addr::segment::{
    kind, page_of_desc, segment_of_desc, Segment, SpanDesc, FLAG_SUBRELEASE, HEADER_PAGES,
    HUGE_PAGE_PAGES, PAGES_PER_SEGMENT, USABLE_PAGES,
};
use crate::base::size_class::{class_of_computed, class_size};
use crate::platform::os::{self, PAGE_SHIFT};
use core::ptr;

/// Free-span bins, one per page count class (the size-class formula applied to page counts).
const NUM_PAGE_BINS: usize = 36;
/// How many spans of the first candidate bin are checked before a larger bin is used.
const BIN_SCAN_LIMIT: usize = 16;
/// A dirty span in a huge page that is still well used waits this many decay periods (from its
/// free time) before it is purged, which breaks the huge page (subrelease).
const SUBRELEASE_DECAYS: u64 = 4;
/// A huge page is well used (kept whole past the decay time of its free pages) while at least
/// this many of its pages are in use. Below, a few surviving blocks would pin megabytes: its
/// free pages go at their decay time, as in a segment without huge pages.
const WELL_USED_PAGES: usize = HUGE_PAGE_PAGES / 2;

/// What [`PageHeap::merge_neighbours`] made of a freed span and its free neighbours.
struct Merged {
    first: usize,
    pages: usize,
    /// Dirty merges: the pages' mean free time.
    freed_at: u64,
    /// Dirty merges: the decay-list place of the oldest absorbed span (insert after this;
    /// null: at the head), or the list's tail if none was absorbed.
    decay_after: *mut SpanDesc,
}

fn bin_pages(b: usize) -> usize {
    class_size(b) / 16
}

/// The bin whose range `[bin_pages(b), bin_pages(b + 1))` holds `pages`.
fn bin_floor(pages: usize) -> usize {
    debug_assert!((1..=PAGES_PER_SEGMENT).contains(&pages));
    let c = class_of_computed(pages * 16);
    if bin_pages(c) == pages {
        c
    } else {
        c - 1
    }
}

struct FreeBins {
    heads: [*mut SpanDesc; NUM_PAGE_BINS],
    nonempty: u64,
}

impl FreeBins {
    const fn new() -> Self {
        FreeBins {
            heads: [ptr::null_mut(); NUM_PAGE_BINS],
            nonempty: 0,
        }
    }

    unsafe fn push(&mut self, d: *mut SpanDesc) {
        // SAFETY: `d` is a free span head owned by this heap (caller holds the arena lock).
        unsafe {
            let b = bin_floor((*d).pages as usize);
            (*d).prev = ptr::null_mut();
            (*d).next = self.heads[b];
            if !(*d).next.is_null() {
                (*(*d).next).prev = d;
            }
            self.heads[b] = d;
            self.nonempty |= 1 << b;
        }
    }

    unsafe fn remove(&mut self, d: *mut SpanDesc) {
        // SAFETY: `d` is on this set's list for its page count.
        unsafe {
            let b = bin_floor((*d).pages as usize);
            if (*d).prev.is_null() {
                self.heads[b] = (*d).next;
            } else {
                (*(*d).prev).next = (*d).next;
            }
            if !(*d).next.is_null() {
                (*(*d).next).prev = (*d).prev;
            }
            if self.heads[b].is_null() {
                self.nonempty &= !(1 << b);
            }
        }
    }

    /// A span of at least `pages` pages, or null. Of the fitting spans among the first
    /// [`BIN_SCAN_LIMIT`] of a bin (the first candidate bin, else the first larger one that
    /// has spans), the first one outside dense huge pages, else the one in the fullest dense
    /// huge page: new spans fill the huge pages that are well used, and the sparse ones can
    /// empty and go back whole (Temeraire's "filler" places by fullness the same way).
    fn find(&self, pages: usize) -> *mut SpanDesc {
        let b0 = bin_floor(pages);
        let found = Self::fullest_fit(self.heads[b0], pages);
        if !found.is_null() {
            return found;
        }
        let higher = self.nonempty & !((2u64 << b0) - 1);
        if higher == 0 {
            ptr::null_mut()
        } else {
            Self::fullest_fit(self.heads[higher.trailing_zeros() as usize], pages)
        }
    }

    /// The fitting span among the first [`BIN_SCAN_LIMIT`] of the list at `d` (see
    /// [`FreeBins::find`]), or null.
    fn fullest_fit(mut d: *mut SpanDesc, pages: usize) -> *mut SpanDesc {
        let mut best = ptr::null_mut();
        let mut best_free = usize::MAX;
        let mut scanned = 0;
        // SAFETY: list members are live descriptors owned by this heap, in live segments.
        unsafe {
            while !d.is_null() && scanned < BIN_SCAN_LIMIT {
                if (*d).pages as usize >= pages {
                    let seg = segment_of_desc(d);
                    let h = page_of_desc(d) / HUGE_PAGE_PAGES;
                    if !Segment::is_dense(seg, h) {
                        return d;
                    }
                    let free = (*seg).hp_free[h] as usize;
                    if free < best_free {
                        best = d;
                        best_free = free;
                    }
                }
                d = (*d).next;
                scanned += 1;
            }
        }
        best
    }
}

/// A list of dirty spans linked through their decay words, oldest at the head.
struct DecayList {
    head: *mut SpanDesc,
    tail: *mut SpanDesc,
}

impl DecayList {
    const fn new() -> Self {
        DecayList {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
        }
    }

    /// Links `d` in right after `after` (null: at the head).
    unsafe fn insert_after(&mut self, after: *mut SpanDesc, d: *mut SpanDesc) {
        // SAFETY: `after` (if any) is on this list; `d` is on none.
        unsafe {
            let next = if after.is_null() {
                self.head
            } else {
                (*after).decay_next()
            };
            (*d).set_decay_prev(after);
            (*d).set_decay_next(next);
            if after.is_null() {
                self.head = d;
            } else {
                (*after).set_decay_next(d);
            }
            if next.is_null() {
                self.tail = d;
            } else {
                (*next).set_decay_prev(d);
            }
        }
    }

    unsafe fn remove(&mut self, d: *mut SpanDesc) {
        // SAFETY: `d` is on this list.
        unsafe {
            let (prev, next) = ((*d).decay_prev(), (*d).decay_next());
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).set_decay_next(next);
            }
            if next.is_null() {
                self.tail = prev;
            } else {
                (*next).set_decay_prev(prev);
            }
        }
    }
}

/// The first page of huge page `h` and the page after it, within a segment's usable pages.
fn huge_page_range(h: usize) -> (usize, usize) {
    (
        (h * HUGE_PAGE_PAGES).max(HEADER_PAGES),
        (h + 1) * HUGE_PAGE_PAGES,
    )
}

/// The first span of kind `k` at or after page `from` of `seg` that reaches into huge page `h`,
/// with its first page. Span heads are visited from `from` on (which must be a span head: only
/// heads are reliable entries).
///
/// # Safety
/// `seg` must be a live segment of ours, and `from` a span head or the huge page's end.
unsafe fn span_into_huge_page(
    seg: *mut Segment,
    h: usize,
    k: u8,
    from: usize,
) -> Option<(usize, *mut SpanDesc)> {
    let (hf, he) = huge_page_range(h);
    let mut p = from;
    while p < he {
        let d = Segment::desc(seg, p);
        // SAFETY: per the contract, `p` heads a span of the live segment.
        let (end, kind) = unsafe { (p + (*d).pages as usize, (*d).kind) };
        if end > hf && kind == k {
            return Some((p, d));
        }
        p = end;
    }
    None
}

/// Adds (or takes away) `[first, first + pages)` to the free counts of the huge pages of
/// `seg` it lies in.
unsafe fn count_huge_page_free(seg: *mut Segment, first: usize, pages: usize, add: bool) {
    let end = first + pages;
    let mut p = first;
    while p < end {
        let h = p / HUGE_PAGE_PAGES;
        let stop = end.min((h + 1) * HUGE_PAGE_PAGES);
        let n = (stop - p) as u16;
        // SAFETY: `seg` is a live segment of ours, reached under the arena's page lock.
        unsafe {
            if add {
                (*seg).hp_free[h] += n;
            } else {
                (*seg).hp_free[h] -= n;
            }
        }
        p = stop;
    }
}

/// Whether huge page `h` of `seg` is dense (asked for a huge page) and all of it free.
unsafe fn dense_and_free(seg: *mut Segment, h: usize) -> bool {
    let (first, end) = huge_page_range(h);
    // SAFETY: `seg` is a live segment of ours.
    unsafe { Segment::is_dense(seg, h) && (*seg).hp_free[h] as usize == end - first }
}

/// Whether huge page `h` of `seg` is dense and well used (see [`WELL_USED_PAGES`]).
unsafe fn dense_and_well_used(seg: *mut Segment, h: usize) -> bool {
    // SAFETY: `seg` is a live segment of ours.
    unsafe {
        Segment::is_dense(seg, h) && HUGE_PAGE_PAGES - (*seg).hp_free[h] as usize >= WELL_USED_PAGES
    }
}

/// Page counts of a page heap, for statistics.
#[derive(Clone, Copy, Default, Debug)]
pub struct PageCounts {
    /// Pages in slabs and large blocks.
    pub active: usize,
    /// Free pages that may be resident.
    pub dirty: usize,
    /// Of those, pages past their decay time kept whole in huge pages that still hold live
    /// blocks, waiting for the longer subrelease delay.
    pub subrelease: usize,
    /// Free pages given back to the kernel.
    pub clean: usize,
    /// Segments mapped.
    pub segments: usize,
    /// Pages purged so far.
    pub purged: u64,
}

/// One arena's spans. Every method requires the arena's page lock (the `Locked` around it).
pub struct PageHeap {
    dirty: FreeBins,
    clean: FreeBins,
    /// Dirty spans not yet past their decay time, (nearly) oldest first.
    decay: DecayList,
    /// Dirty spans past their decay time that lie in dense huge pages still holding live blocks:
    /// purged only after [`SUBRELEASE_DECAYS`] decay periods (or when the huge page empties).
    subrelease: DecayList,
    /// Statistics.
    pub counts: PageCounts,
}

impl Default for PageHeap {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: the raw pointers are descriptors inside segments owned by this heap; the heap is only
// reached through its lock.
unsafe impl Send for PageHeap {}

impl PageHeap {
    /// An empty heap.
    pub const fn new() -> Self {
        PageHeap {
            dirty: FreeBins::new(),
            clean: FreeBins::new(),
            decay: DecayList::new(),
            subrelease: DecayList::new(),
            counts: PageCounts {
                active: 0,
                dirty: 0,
                subrelease: 0,
                clean: 0,
                segments: 0,
                purged: 0,
            },
        }
    }

    /// Allocates a span of `pages` pages whose address is a multiple of `align_pages` pages
    /// (a power of two up to the segment size). Returns its descriptor (kind still `NONE`, to be
    /// set by the caller) and whether its memory is known to be zero. `all_heads` sets every
    /// page's `page_head` entry (slabs need it), otherwise only the first and last. New
    /// segments are tagged with `arena`, the owner of this heap.
    pub fn alloc(
        &mut self,
        pages: usize,
        align_pages: usize,
        all_heads: bool,
        arena: u32,
    ) -> Option<(*mut SpanDesc, bool)> {
        self.alloc_with_room(pages, align_pages, 0, all_heads, arena)
    }

    /// [`PageHeap::alloc`], from a free span with at least `room` more free pages after the
    /// block (left free), so that the block can later grow in place. `room` is dropped when no
    /// such span exists without mapping a new segment.
    pub fn alloc_with_room(
        &mut self,
        pages: usize,
        align_pages: usize,
        room: usize,
        all_heads: bool,
        arena: u32,
    ) -> Option<(*mut SpanDesc, bool)> {
        let mut need = pages + align_pages - 1;
        if room > 0
            && (need + room > USABLE_PAGES
                || (self.dirty.find(need + room).is_null()
                    && self.clean.find(need + room).is_null()))
        {
            // Growth room is a hint: not worth a new segment.
        } else {
            need += room;
        }
        if pages == 0 || need > USABLE_PAGES {
            return None;
        }
        let mut found = self.dirty.find(need);
        let mut dirty = true;
        if found.is_null() {
            dirty = false;
            found = self.clean.find(need);
            if found.is_null() {
                self.add_segment(arena)?;
                found = self.clean.find(need);
                if found.is_null() {
                    return None;
                }
            }
        }
        // SAFETY: `found` is a free span head of this heap; we hold the lock.
        unsafe {
            Some((
                self.carve(found, dirty, pages, align_pages, all_heads),
                !dirty,
            ))
        }
    }

    /// A span of `pages` pages aligned to `align_pages` pages, carved only from dirty (resident)
    /// free spans: never from purged pages or a new segment. The descriptor is as
    /// [`PageHeap::alloc`] returns it.
    pub fn alloc_dirty(
        &mut self,
        pages: usize,
        align_pages: usize,
        all_heads: bool,
    ) -> Option<*mut SpanDesc> {
        let need = pages + align_pages - 1;
        if pages == 0 || need > USABLE_PAGES {
            return None;
        }
        let found = self.dirty.find(need);
        if found.is_null() {
            return None;
        }
        // SAFETY: `found` is a dirty free span head of this heap; we hold the lock.
        Some(unsafe { self.carve(found, true, pages, align_pages, all_heads) })
    }

    unsafe fn carve(
        &mut self,
        d: *mut SpanDesc,
        dirty: bool,
        pages: usize,
        align_pages: usize,
        all_heads: bool,
    ) -> *mut SpanDesc {
        // SAFETY: `d` is a free span head owned by this heap.
        unsafe {
            let seg = segment_of_desc(d);
            let head = page_of_desc(d);
            let total = (*d).pages as usize;
            let freed_at = (*d).freed_at();
            let decay_after = if dirty {
                (*d).decay_prev()
            } else {
                ptr::null_mut()
            };
            let sub = dirty && (*d).flags & FLAG_SUBRELEASE != 0;
            self.unlink_free(d, dirty);
            (*d).kind = kind::NONE;

            let seg_page_base = seg as usize >> PAGE_SHIFT;
            let start = ((seg_page_base + head).next_multiple_of(align_pages)) - seg_page_base;
            let lead = start - head;
            let trail = total - lead - pages;
            let mut after = decay_after;
            if lead > 0 {
                after = self.insert_free(seg, head, lead, dirty, freed_at, after, sub);
            }
            if trail > 0 {
                self.insert_free(seg, start + pages, trail, dirty, freed_at, after, sub);
            }
            let sd = Segment::desc(seg, start);
            (*sd).pages = pages as u16;
            (*sd).flags = 0;
            if all_heads {
                Segment::set_heads(seg, start, pages, start);
            } else {
                Segment::set_ends(seg, start, pages);
            }
            self.counts.active += pages;
            sd
        }
    }

    /// Makes `[first, first + pages)` of `seg` a free span and files it; dirty spans go into the
    /// decay list (or with `sub` the subrelease list) right after `decay_after` (null: at the
    /// head). Returns the new descriptor.
    #[allow(clippy::too_many_arguments)]
    unsafe fn insert_free(
        &mut self,
        seg: *mut Segment,
        first: usize,
        pages: usize,
        dirty: bool,
        freed_at: u64,
        decay_after: *mut SpanDesc,
        sub: bool,
    ) -> *mut SpanDesc {
        // SAFETY: the pages are ours and on no list; the caller holds the lock.
        unsafe {
            let d = Segment::desc(seg, first);
            (*d).pages = pages as u16;
            (*d).flags = 0;
            Segment::set_ends(seg, first, pages);
            count_huge_page_free(seg, first, pages, true);
            if dirty {
                (*d).kind = kind::FREE_DIRTY;
                (*d).set_freed_at(freed_at);
                self.dirty.push(d);
                if sub {
                    (*d).flags = FLAG_SUBRELEASE;
                    self.subrelease.insert_after(decay_after, d);
                    self.counts.subrelease += pages;
                } else {
                    self.decay.insert_after(decay_after, d);
                }
                self.counts.dirty += pages;
            } else {
                (*d).kind = kind::FREE_CLEAN;
                self.clean.push(d);
                self.counts.clean += pages;
            }
            d
        }
    }

    unsafe fn unlink_free(&mut self, d: *mut SpanDesc, dirty: bool) {
        // SAFETY: `d` is a free span head on the matching lists.
        unsafe {
            let pages = (*d).pages as usize;
            count_huge_page_free(segment_of_desc(d), page_of_desc(d), pages, false);
            if dirty {
                self.dirty.remove(d);
                if (*d).flags & FLAG_SUBRELEASE != 0 {
                    self.subrelease.remove(d);
                    self.counts.subrelease -= pages;
                } else {
                    self.decay.remove(d);
                }
                self.counts.dirty -= pages;
            } else {
                self.clean.remove(d);
                self.counts.clean -= pages;
            }
        }
    }

    fn add_segment(&mut self, arena: u32) -> Option<()> {
        let seg = Segment::create(arena, self.counts.segments == 0);
        if seg.is_null() {
            return None;
        }
        self.counts.segments += 1;
        // SAFETY: a fresh segment of ours; its pages are on no list.
        unsafe {
            let none = ptr::null_mut();
            self.insert_free(seg, HEADER_PAGES, USABLE_PAGES, false, 0, none, false);
        }
        Some(())
    }

    /// Frees the span `d` (a slab or large block of this heap): it becomes dirty, merges with
    /// dirty neighbours and joins the decay list, aged as the pages' mean free time. Then
    /// expired dirty spans are purged; returns how many pages that purged.
    ///
    /// # Safety
    /// `d` must be the head of an allocated span of this heap, no longer used.
    pub unsafe fn free(&mut self, d: *mut SpanDesc, now: u64, decay_ms: i64) -> usize {
        // SAFETY: forwarded contract.
        unsafe { self.free_aged(d, now, now, decay_ms) }
    }

    /// [`PageHeap::free`] of a span whose pages were last used at `freed_at` (before `now`):
    /// its decay counts from then.
    ///
    /// # Safety
    /// As for [`PageHeap::free`].
    pub unsafe fn free_aged(
        &mut self,
        d: *mut SpanDesc,
        freed_at: u64,
        now: u64,
        decay_ms: i64,
    ) -> usize {
        // SAFETY: as documented; neighbours are checked through boundary tags.
        unsafe {
            self.counts.active -= (*d).pages as usize;
            self.free_span(d, freed_at);
        }
        self.purge_expired(now, decay_ms)
    }

    unsafe fn free_span(&mut self, d: *mut SpanDesc, now: u64) {
        // SAFETY: `d` is a span head of ours that is on no list.
        unsafe {
            crate::addr::segment::clear_fast_class_of_span(d);
            let seg = segment_of_desc(d);
            let merged = self.merge_neighbours(seg, d, kind::FREE_DIRTY, now);
            // A span older than the youngest keeps the decay-list place of the oldest span it
            // absorbed (O(1), no walk): the list is then only nearly ordered, and a span behind
            // a younger one is purged at most one window late. One older than the oldest (a
            // kept empty slab let go, aged from when it emptied) goes first.
            let (head, tail) = (self.decay.head, self.decay.tail);
            let after = if tail.is_null() || merged.freed_at >= (*tail).freed_at() {
                tail
            } else if merged.freed_at <= (*head).freed_at() {
                ptr::null_mut()
            } else {
                merged.decay_after
            };
            let (first, pages) = (merged.first, merged.pages);
            self.insert_free(seg, first, pages, true, merged.freed_at, after, false);
        }
    }

    /// Detaches the free neighbours of kind `k` around span `d` and returns the merged range,
    /// and for dirty merges the pages' mean free time (`d`'s pages counting as freed at `now`)
    /// and the decay-list place of the oldest absorbed span. Absorbed descriptors (and `d`
    /// itself) get kind `NONE`.
    unsafe fn merge_neighbours(
        &mut self,
        seg: *mut Segment,
        d: *mut SpanDesc,
        k: u8,
        now: u64,
    ) -> Merged {
        // SAFETY: descriptors and page_head entries of a live segment; boundary tags are
        // validated (kind and extent) before they are trusted.
        unsafe {
            let dirty = k == kind::FREE_DIRTY;
            let mut first = page_of_desc(d);
            let mut pages = (*d).pages as usize;
            let mut time_sum = pages as u128 * now as u128;
            // Absorbed dirty spans of the decay list: (descriptor, its decay predecessor, its
            // free time). Spans of the subrelease list are older than any of those.
            let mut absorbed = [(ptr::null_mut(), ptr::null_mut(), u64::MAX); 2];
            let mut absorbed_subrelease = false;
            (*d).kind = kind::NONE;
            if first > HEADER_PAGES {
                let ph = Segment::head_of(seg, first - 1);
                let pd = Segment::desc(seg, ph);
                if (*pd).kind == k && ph + (*pd).pages as usize == first {
                    if dirty && (*pd).flags & FLAG_SUBRELEASE != 0 {
                        absorbed_subrelease = true;
                    } else if dirty {
                        absorbed[0] = (pd, (*pd).decay_prev(), (*pd).freed_at());
                    }
                    self.unlink_free(pd, dirty);
                    (*pd).kind = kind::NONE;
                    first = ph;
                    pages += (*pd).pages as usize;
                    time_sum += (*pd).pages as u128 * (*pd).freed_at() as u128;
                }
            }
            let after = first + pages;
            if after < PAGES_PER_SEGMENT {
                let nd = Segment::desc(seg, after);
                if (*nd).kind == k {
                    if dirty && (*nd).flags & FLAG_SUBRELEASE != 0 {
                        absorbed_subrelease = true;
                    } else if dirty {
                        absorbed[1] = (nd, (*nd).decay_prev(), (*nd).freed_at());
                    }
                    self.unlink_free(nd, dirty);
                    (*nd).kind = kind::NONE;
                    pages += (*nd).pages as usize;
                    time_sum += (*nd).pages as u128 * (*nd).freed_at() as u128;
                }
            }
            // The place of the oldest absorbed span: after its predecessor, unless that was
            // absorbed too (then after the predecessor's); the head if it came from the
            // subrelease list.
            let [a, b] = absorbed;
            let (oldest, other) = if a.2 <= b.2 { (a, b) } else { (b, a) };
            let decay_after = if absorbed_subrelease {
                ptr::null_mut()
            } else if oldest.0.is_null() {
                self.decay.tail
            } else if oldest.1 == other.0 {
                other.1
            } else {
                oldest.1
            };
            Merged {
                first,
                pages,
                freed_at: (time_sum / pages as u128) as u64,
                decay_after,
            }
        }
    }

    /// Grows the large block `d` to `new_pages` pages in place if the span after it is free and
    /// big enough. True on success.
    ///
    /// # Safety
    /// `d` must be the head of an allocated large block of this heap.
    pub unsafe fn try_grow(&mut self, d: *mut SpanDesc, new_pages: usize) -> bool {
        // SAFETY: as documented.
        unsafe {
            let seg = segment_of_desc(d);
            let first = page_of_desc(d);
            let old = (*d).pages as usize;
            let extra = new_pages - old;
            let next = first + old;
            if next >= PAGES_PER_SEGMENT {
                return false;
            }
            let nd = Segment::desc(seg, next);
            let nk = (*nd).kind;
            if (nk != kind::FREE_DIRTY && nk != kind::FREE_CLEAN) || ((*nd).pages as usize) < extra
            {
                return false;
            }
            let dirty = nk == kind::FREE_DIRTY;
            let rest = (*nd).pages as usize - extra;
            let freed_at = (*nd).freed_at();
            let after = if dirty {
                (*nd).decay_prev()
            } else {
                ptr::null_mut()
            };
            let sub = dirty && (*nd).flags & FLAG_SUBRELEASE != 0;
            self.unlink_free(nd, dirty);
            (*nd).kind = kind::NONE;
            if rest > 0 {
                self.insert_free(seg, first + new_pages, rest, dirty, freed_at, after, sub);
            }
            (*d).pages = new_pages as u16;
            Segment::set_tail(seg, first, new_pages);
            self.counts.active += extra;
            true
        }
    }

    /// Shrinks the large block `d` to `new_pages` pages, freeing its tail.
    ///
    /// # Safety
    /// `d` must be the head of an allocated large block of this heap, `new_pages` smaller.
    pub unsafe fn shrink(&mut self, d: *mut SpanDesc, new_pages: usize, now: u64, decay_ms: i64) {
        // SAFETY: as documented; the tail becomes a span of its own, then freed.
        unsafe {
            let seg = segment_of_desc(d);
            let first = page_of_desc(d);
            let old = (*d).pages as usize;
            let tail = Segment::desc(seg, first + new_pages);
            (*tail).kind = kind::LARGE;
            (*tail).pages = (old - new_pages) as u16;
            (*d).pages = new_pages as u16;
            Segment::set_tail(seg, first, new_pages);
            Segment::set_ends(seg, first + new_pages, old - new_pages);
            self.free(tail, now, decay_ms);
        }
    }

    /// Purges dirty spans freed more than `decay_ms` ago (all of them if `decay_ms` is 0;
    /// none if it is negative), except those in dense huge pages that are well used: these
    /// move to the subrelease list, and are purged [`SUBRELEASE_DECAYS`] decay periods
    /// after their free time. Returns how many pages it purged.
    pub fn purge_expired(&mut self, now: u64, decay_ms: i64) -> usize {
        let mut purged = 0;
        if decay_ms < 0 {
            return purged;
        }
        let decay = decay_ms as u64;
        while !self.decay.head.is_null() {
            let d = self.decay.head;
            // SAFETY: the decay head is a dirty span of ours.
            if unsafe { (*d).freed_at() }.saturating_add(decay) > now {
                break;
            }
            // SAFETY: as above.
            purged += unsafe { self.decay_due(d) };
        }
        let late = decay.saturating_mul(SUBRELEASE_DECAYS);
        while !self.subrelease.head.is_null() {
            let d = self.subrelease.head;
            // SAFETY: the subrelease head is a dirty span of ours.
            if unsafe { (*d).freed_at() }.saturating_add(late) > now {
                break;
            }
            // SAFETY: as above.
            purged += unsafe { self.purge_now(d) };
        }
        purged
    }

    /// The decay time of dirty span `d` (on the decay list) has come: purge it, or the whole
    /// huge page it empties, or (in a dense huge page that is well used) move it to the
    /// subrelease list. Each call takes `d` off the decay list, or shortens it. Returns the
    /// pages purged.
    unsafe fn decay_due(&mut self, d: *mut SpanDesc) -> usize {
        // Parts in huge pages that were not asked for or are little used go now; parts in well
        // used dense ones wait.
        // SAFETY: `d` is a dirty span of ours on the decay list; we hold the lock. The
        // closure's segment is `d`'s, live.
        unsafe {
            if let Some(pages) = self.purge_unless_held(d, |seg, h| dense_and_well_used(seg, h)) {
                return pages;
            }
            self.decay.remove(d);
            (*d).flags = FLAG_SUBRELEASE;
            self.subrelease.insert_after(self.subrelease.tail, d);
            self.counts.subrelease += (*d).pages as usize;
            0
        }
    }

    /// Purges part of dirty span `d`: all of it in a segment without huge pages; else the first
    /// whole free huge page it reaches into; else its part in the first huge page that
    /// `held(segment, h)` does not hold back. `None` (nothing purged) when every huge page it
    /// lies in is held back. What stays of `d` keeps its list place.
    unsafe fn purge_unless_held(
        &mut self,
        d: *mut SpanDesc,
        held: impl Fn(*mut Segment, usize) -> bool,
    ) -> Option<usize> {
        // SAFETY: `d` is a dirty span of ours; we hold the lock.
        unsafe {
            let seg = segment_of_desc(d);
            let first = page_of_desc(d);
            let end = first + (*d).pages as usize;
            if (*seg).dense == 0 {
                return Some(self.purge_range(d, first, end));
            }
            let (h0, h1) = (first / HUGE_PAGE_PAGES, (end - 1) / HUGE_PAGE_PAGES);
            for h in h0..=h1 {
                if dense_and_free(seg, h) {
                    return Some(self.purge_huge_page(seg, h));
                }
            }
            for h in h0..=h1 {
                if !held(seg, h) {
                    let (hf, he) = huge_page_range(h);
                    return Some(self.purge_range(d, first.max(hf), end.min(he)));
                }
            }
            None
        }
    }

    /// Purges dirty span `d` now: the whole huge pages it lies in that are free, else all of
    /// it (breaking a huge page if it is in one). Returns the pages purged.
    unsafe fn purge_now(&mut self, d: *mut SpanDesc) -> usize {
        // SAFETY: `d` is a dirty span of ours; we hold the lock.
        unsafe {
            let seg = segment_of_desc(d);
            let first = page_of_desc(d);
            let end = first + (*d).pages as usize;
            for h in first / HUGE_PAGE_PAGES..=(end - 1) / HUGE_PAGE_PAGES {
                if dense_and_free(seg, h) {
                    return self.purge_huge_page(seg, h);
                }
            }
            self.purge_range(d, first, end)
        }
    }

    /// Purges every dirty span in huge page `h` of `seg`, which is all free: the huge page goes
    /// back whole. Dirty spans reaching past it keep their outer part.
    unsafe fn purge_huge_page(&mut self, seg: *mut Segment, h: usize) -> usize {
        let (hf, he) = huge_page_range(h);
        let mut purged = 0;
        // An intact huge page goes back with one `madvise` of all of it (clean pages too: they
        // were resident with it), which keeps it whole for the kernel: the next touch faults
        // it in as one huge page again. The first holds the header and cannot go whole.
        // SAFETY: `seg` is a live segment of ours; the huge page holds no live data.
        let whole = hf == h * HUGE_PAGE_PAGES && unsafe { Segment::is_intact(seg, h) };
        if whole {
            let start = (seg as usize + (hf << PAGE_SHIFT)) as *mut u8;
            // SAFETY: as above.
            unsafe { os::purge(start, (he - hf) << PAGE_SHIFT) };
        }
        loop {
            // Each purge may merge spans: look again from the segment's start.
            // SAFETY: `seg` is a live segment of ours.
            let Some((p, dirty)) =
                (unsafe { span_into_huge_page(seg, h, kind::FREE_DIRTY, HEADER_PAGES) })
            else {
                return purged;
            };
            let segments = self.counts.segments;
            // SAFETY: a dirty span of ours; the range is its part inside the huge page.
            purged += unsafe {
                let end = p + (*dirty).pages as usize;
                self.purge_part(dirty, p.max(hf), end.min(he), !whole)
            };
            if self.counts.segments != segments {
                return purged; // the segment was wholly clean and is unmapped
            }
        }
    }

    /// When the next dirty span comes due (its decay time, or its subrelease time), if any.
    pub fn next_purge_at(&self, decay_ms: i64) -> Option<u64> {
        if decay_ms < 0 {
            return None;
        }
        let decay = decay_ms as u64;
        let due = |d: *mut SpanDesc, wait: u64| {
            // SAFETY: list heads, if any, are dirty spans of ours.
            (!d.is_null()).then(|| unsafe { (*d).freed_at() }.saturating_add(wait))
        };
        let soon = due(self.decay.head, decay);
        let late = due(
            self.subrelease.head,
            decay.saturating_mul(SUBRELEASE_DECAYS),
        );
        soon.into_iter().chain(late).min()
    }

    /// When the oldest dirty span of the decay list was freed, if there is one (spans waiting
    /// for subrelease are older, and counted apart).
    pub fn oldest_dirty(&self) -> Option<u64> {
        // SAFETY: the decay head, if any, is a dirty span of ours.
        (!self.decay.head.is_null()).then(|| unsafe { (*self.decay.head).freed_at() })
    }

    /// Dirty pages of the decay list freed at or before `before` (ms): with `before = now -
    /// dirty_decay_ms`, the pages dirty for longer than a decay window, which decay should have
    /// dealt with already. Walks the whole list (it is only nearly ordered): for statistics,
    /// not hot paths.
    pub fn dirty_freed_before(&self, before: u64) -> usize {
        let mut pages = 0;
        let mut d = self.decay.head;
        // SAFETY: decay-list members are dirty spans of ours.
        unsafe {
            while !d.is_null() {
                if (*d).freed_at() <= before {
                    pages += (*d).pages as usize;
                }
                d = (*d).decay_next();
            }
        }
        pages
    }

    /// Purges every dirty span now, whole huge pages where they are free. Returns how many
    /// pages it purged.
    pub fn purge_all(&mut self) -> usize {
        let mut purged = 0;
        for sub in [false, true] {
            loop {
                let d = if sub {
                    self.subrelease.head
                } else {
                    self.decay.head
                };
                if d.is_null() {
                    break;
                }
                // SAFETY: the head is a dirty span of ours.
                purged += unsafe { self.purge_now(d) };
            }
        }
        purged
    }

    /// Purges every dirty span now, except its parts in dense huge pages that still hold live
    /// blocks: those keep their decay time (or subrelease time) and list place. Purging them
    /// now would break their huge pages, and whoever reuses the memory next (a thread that
    /// takes the arena over) would fault it in again 4 KiB at a time. Whole free huge pages and
    /// segments without huge pages are purged as by [`PageHeap::purge_all`]. Returns how many
    /// pages it purged.
    pub fn purge_all_but_huge_pages_in_use(&mut self) -> usize {
        let mut purged = 0;
        for sub in [false, true] {
            // Spans at or before `kept` are kept; no purge touches them (a kept span lies only
            // in huge pages with live blocks, which `purge_huge_page` never visits, and merges
            // join clean spans only), so the walk goes on from there.
            let mut kept: *mut SpanDesc = ptr::null_mut();
            loop {
                let d = if !kept.is_null() {
                    // SAFETY: `kept` is a dirty span of ours, still on its list.
                    unsafe { (*kept).decay_next() }
                } else if sub {
                    self.subrelease.head
                } else {
                    self.decay.head
                };
                if d.is_null() {
                    break;
                }
                // SAFETY: `d` is a dirty span of ours on the list walked; the closure's segment
                // is `d`'s, live. A dense huge page that is not all free holds live blocks.
                match unsafe { self.purge_unless_held(d, |seg, h| Segment::is_dense(seg, h)) } {
                    Some(pages) => purged += pages,
                    None => kept = d,
                }
            }
        }
        purged
    }

    /// Purges pages `[from, to)` of dirty span `d` (all of `d` or part of it): they become
    /// clean and merge with clean neighbours; the rest of `d` stays dirty, with its free time
    /// and list place. A segment left wholly clean is unmapped. Returns `to - from`.
    unsafe fn purge_range(&mut self, d: *mut SpanDesc, from: usize, to: usize) -> usize {
        // SAFETY: as documented.
        unsafe { self.purge_part(d, from, to, true) }
    }

    /// [`PageHeap::purge_range`]; with `advise` false the caller has already given the pages
    /// back (a whole huge page at once), and only the books change.
    unsafe fn purge_part(
        &mut self,
        d: *mut SpanDesc,
        from: usize,
        to: usize,
        advise: bool,
    ) -> usize {
        // SAFETY: `d` is a dirty span of ours and `[from, to)` lies inside it; its pages hold
        // no live data.
        unsafe {
            let seg = segment_of_desc(d);
            let first = page_of_desc(d);
            let end = first + (*d).pages as usize;
            debug_assert!(first <= from && from < to && to <= end);
            if advise {
                // Before the books change: the walk needs them consistent.
                for h in from / HUGE_PAGE_PAGES..=(to - 1) / HUGE_PAGE_PAGES {
                    let whole = from <= h * HUGE_PAGE_PAGES && to >= (h + 1) * HUGE_PAGE_PAGES;
                    if !whole && Segment::is_intact(seg, h) {
                        self.break_huge_page(seg, h);
                    }
                }
            }
            let freed_at = (*d).freed_at();
            let sub = (*d).flags & FLAG_SUBRELEASE != 0;
            let mut after = (*d).decay_prev();
            self.unlink_free(d, true);
            (*d).kind = kind::NONE;
            if from > first {
                after = self.insert_free(seg, first, from - first, true, freed_at, after, sub);
            }
            if to < end {
                self.insert_free(seg, to, end - to, true, freed_at, after, sub);
            }
            let pages = to - from;
            let start = (seg as usize + (from << PAGE_SHIFT)) as *mut u8;
            if advise {
                os::purge(start, pages << PAGE_SHIFT);
            }
            self.counts.purged += pages as u64;
            let md = Segment::desc(seg, from);
            (*md).pages = pages as u16;
            Segment::set_ends(seg, from, to - from);
            let Merged {
                first,
                pages: merged,
                ..
            } = self.merge_neighbours(seg, md, kind::FREE_CLEAN, 0);
            if first == HEADER_PAGES && merged == USABLE_PAGES {
                self.counts.segments -= 1;
                Segment::destroy(seg);
            } else {
                self.insert_free(seg, first, merged, false, 0, ptr::null_mut(), false);
            }
            pages
        }
    }

    /// Dense huge page `h` of `seg` was intact and is being purged in part, which splits it.
    /// While it was whole, its clean pages were resident too (the first touch of any page
    /// brings in all of them), though the heap never saw them dirty: they go back now, or they
    /// would stay resident, unseen, until reused. From now on its pages fault in one by one.
    unsafe fn break_huge_page(&mut self, seg: *mut Segment, h: usize) {
        let (hf, he) = huge_page_range(h);
        // SAFETY: a live segment of ours; clean spans hold no data.
        unsafe {
            (*seg).broken |= 1 << h;
            let mut from = HEADER_PAGES;
            while let Some((p, d)) = span_into_huge_page(seg, h, kind::FREE_CLEAN, from) {
                let end = p + (*d).pages as usize;
                let (first, last) = (p.max(hf), end.min(he));
                let start = (seg as usize + (first << PAGE_SHIFT)) as *mut u8;
                os::purge(start, (last - first) << PAGE_SHIFT);
                from = end;
            }
        }
    }

    /// Checks the heap's invariants (tests and debugging): list membership, counts and that
    /// free spans never touch a free span of the same kind.
    #[cfg(test)]
    pub fn check(&self) {
        let mut dirty_pages = 0;
        let mut clean_pages = 0;
        for (set, k, total) in [
            (&self.dirty, kind::FREE_DIRTY, &mut dirty_pages),
            (&self.clean, kind::FREE_CLEAN, &mut clean_pages),
        ] {
            for b in 0..NUM_PAGE_BINS {
                let mut d = set.heads[b];
                assert_eq!(set.nonempty & (1 << b) != 0, !d.is_null());
                while !d.is_null() {
                    // SAFETY: list members are live descriptors.
                    unsafe {
                        assert_eq!((*d).kind, k);
                        assert_eq!(bin_floor((*d).pages as usize), b);
                        *total += (*d).pages as usize;
                        let seg = segment_of_desc(d);
                        let first = page_of_desc(d);
                        let after = first + (*d).pages as usize;
                        assert_eq!(Segment::head_of(seg, first), first);
                        if after < PAGES_PER_SEGMENT {
                            assert_eq!(Segment::head_of(seg, after - 1), first);
                            assert_ne!((*Segment::desc(seg, after)).kind, k, "unmerged neighbours");
                        }
                        d = (*d).next;
                    }
                }
            }
        }
        assert_eq!(dirty_pages, self.counts.dirty);
        assert_eq!(clean_pages, self.counts.clean);
        assert_eq!(
            self.counts.active + dirty_pages + clean_pages,
            self.counts.segments * USABLE_PAGES
        );
        // The decay and subrelease lists hold every dirty span (nearly oldest first: see the
        // module docs), each marked with its list.
        let mut n = 0;
        let mut waiting = 0;
        for (list, sub) in [(&self.decay, false), (&self.subrelease, true)] {
            let mut d = list.head;
            while !d.is_null() {
                // SAFETY: list members are live descriptors.
                unsafe {
                    assert_eq!((*d).kind, kind::FREE_DIRTY);
                    assert_eq!((*d).flags & FLAG_SUBRELEASE != 0, sub);
                    n += (*d).pages as usize;
                    if sub {
                        waiting += (*d).pages as usize;
                    }
                    d = (*d).decay_next();
                }
            }
        }
        assert_eq!(n, dirty_pages);
        assert_eq!(waiting, self.counts.subrelease);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::segment::span_start;

    fn mark_large(d: *mut SpanDesc) {
        // SAFETY: a freshly allocated span head.
        unsafe { (*d).kind = kind::LARGE };
    }

    #[test]
    fn bins_cover_every_page_count() {
        for pages in 1..=PAGES_PER_SEGMENT {
            let b = bin_floor(pages);
            assert!(bin_pages(b) <= pages && pages < bin_pages(b + 1));
        }
    }

    #[test]
    fn alloc_free_merge_purge_release() {
        let mut heap = PageHeap::new();
        let mut spans = Vec::new();
        for (i, pages) in [1usize, 3, 7, 16, 100, 2, 300].iter().enumerate() {
            let (d, zero) = heap.alloc(*pages, 1, i % 2 == 0, 0).unwrap();
            assert!(zero, "first use comes from fresh pages");
            mark_large(d);
            spans.push(d);
            heap.check();
        }
        assert_eq!(heap.counts.segments, 1);
        // Free every other span, then the rest: everything must merge back.
        for d in spans.iter().step_by(2) {
            // SAFETY: allocated above, freed once.
            unsafe { heap.free(*d, 10, -1) };
            heap.check();
        }
        let (d, zero) = heap.alloc(3, 1, false, 0).unwrap();
        assert!(!zero, "dirty memory is reused first");
        mark_large(d);
        // SAFETY: allocated above.
        unsafe { heap.free(d, 11, -1) };
        for d in spans.iter().skip(1).step_by(2) {
            // SAFETY: allocated above, freed once.
            unsafe { heap.free(*d, 12, -1) };
            heap.check();
        }
        assert_eq!(heap.counts.active, 0);
        assert_eq!(heap.counts.dirty, 1 + 3 + 7 + 16 + 100 + 2 + 300);
        assert_eq!(heap.purge_expired(100, 1000), 0);
        assert_eq!(heap.counts.dirty, 429, "not expired yet");
        assert_eq!(
            heap.purge_expired(2000, 1000),
            429,
            "every dirty page is purged"
        );
        assert_eq!(heap.purge_all(), 0, "nothing is left to purge");
        assert_eq!(
            heap.counts.segments, 0,
            "a wholly clean segment is unmapped"
        );
        heap.check();
    }

    #[test]
    fn aligned_spans() {
        let mut heap = PageHeap::new();
        let (a, _) = heap.alloc(1, 1, false, 0).unwrap();
        mark_large(a);
        for align in [2usize, 16, 64, 256] {
            let (d, _) = heap.alloc(5, align, false, 0).unwrap();
            mark_large(d);
            assert_eq!((span_start(d) as usize >> PAGE_SHIFT) % align, 0);
            heap.check();
        }
    }

    #[test]
    fn grow_and_shrink_in_place() {
        let mut heap = PageHeap::new();
        let (d, _) = heap.alloc(4, 1, false, 0).unwrap();
        mark_large(d);
        // SAFETY: `d` is an allocated large block.
        unsafe {
            assert!(heap.try_grow(d, 40));
            assert_eq!((*d).pages, 40);
            heap.check();
            heap.shrink(d, 10, 5, -1);
            assert_eq!((*d).pages, 10);
            heap.check();
            let (blocker, _) = heap.alloc(1, 1, false, 0).unwrap();
            mark_large(blocker);
            // The block after `d` is now `blocker`, so growing must fail.
            if span_start(blocker) as usize == span_start(d) as usize + (10 << PAGE_SHIFT) {
                assert!(!heap.try_grow(d, 12));
            }
            heap.check();
        }
    }
}

#[cfg(test)]
mod decay_tests {
    use super::*;
    use crate::addr::segment::span_start;
    use std::collections::HashMap;

    const DECAY: i64 = 1000;

    fn alloc_large(heap: &mut PageHeap, pages: usize) -> *mut SpanDesc {
        let (d, _) = heap.alloc(pages, 1, false, 0).unwrap();
        // SAFETY: a freshly allocated span head.
        unsafe { (*d).kind = kind::LARGE };
        d
    }

    /// The first page address of every page on `set`'s lists.
    fn pages_of(set: &FreeBins) -> Vec<usize> {
        let mut out = Vec::new();
        for b in 0..NUM_PAGE_BINS {
            let mut d = set.heads[b];
            while !d.is_null() {
                // SAFETY: list members are live descriptors.
                unsafe {
                    let start = span_start(d) as usize;
                    out.extend((0..(*d).pages as usize).map(|i| start + (i << PAGE_SHIFT)));
                    d = (*d).next;
                }
            }
        }
        out
    }

    /// A big dirty span whose neighbour pages keep being freed, one every 100 ms, is still
    /// purged about one decay window after it was freed (it used to be merged with each freed
    /// neighbour and stamped "freed now", so it never expired).
    /// A span freed late but aged from long before (a kept empty slab let go) is purged when
    /// its time comes, though younger spans were freed before it: it goes to the head of the
    /// decay list, not behind them.
    #[test]
    fn an_aged_span_is_purged_ahead_of_younger_ones() {
        let mut heap = PageHeap::new();
        let young = alloc_large(&mut heap, 8);
        let _gap = alloc_large(&mut heap, 1);
        let aged = alloc_large(&mut heap, 8);
        let _gap2 = alloc_large(&mut heap, 1);
        // SAFETY: allocated above, each freed once.
        unsafe {
            heap.free(young, 1_000, DECAY);
            heap.free_aged(aged, 100, 1_000, DECAY);
        }
        heap.check();
        assert_eq!(heap.counts.dirty, 16);
        // The aged span's time has come (100 + DECAY), the young one's (1_000 + DECAY) not.
        heap.purge_expired(100 + DECAY as u64, DECAY);
        assert_eq!(
            (heap.counts.dirty, heap.counts.purged),
            (8, 8),
            "the aged span waited behind the younger one"
        );
        heap.check();
    }

    #[test]
    fn old_span_with_busy_neighbours_is_purged() {
        let mut heap = PageHeap::new();
        let big = alloc_large(&mut heap, 200);
        let small: Vec<_> = (0..60).map(|_| alloc_large(&mut heap, 1)).collect();
        // SAFETY: `big` starts right before the small blocks, allocated in address order.
        unsafe {
            assert_eq!(
                span_start(small[0]) as usize,
                span_start(big) as usize + (200 << PAGE_SHIFT)
            );
            heap.free(big, 0, DECAY);
        }
        let mut now = 0;
        for (i, &d) in small.iter().enumerate() {
            now = 100 * (i as u64 + 1);
            // SAFETY: allocated above, freed once.
            unsafe { heap.free(d, now, DECAY) };
            heap.check();
            if now >= 2 * DECAY as u64 {
                assert!(
                    heap.counts.purged >= 200,
                    "at {now} ms the 200 pages freed at 0 ms are still dirty ({} purged)",
                    heap.counts.purged
                );
            }
        }
        assert!(now >= 2 * DECAY as u64);
        // What is still dirty was freed within the last two windows (a region of neighbours
        // freed one by one expires when its mean free time is a window old).
        let recent = 2 * DECAY as u64 / 100 + 1;
        assert!(
            heap.counts.dirty as u64 <= recent,
            "{} dirty",
            heap.counts.dirty
        );
    }

    /// A span freed and reused within the window is never purged, however long the loop runs.
    #[test]
    fn reused_within_window_is_not_purged() {
        let mut heap = PageHeap::new();
        let keep = alloc_large(&mut heap, 3);
        let mut d = alloc_large(&mut heap, 50);
        for step in 0..100u64 {
            let now = step * 300;
            // SAFETY: `d` is allocated, freed once here.
            unsafe { heap.free(d, now, DECAY) };
            heap.purge_expired(now + 290, DECAY);
            let (again, zero) = heap.alloc(50, 1, false, 0).unwrap();
            assert!(
                !zero,
                "step {step}: the freed span was purged before its reuse"
            );
            // SAFETY: a freshly allocated span head.
            unsafe { (*again).kind = kind::LARGE };
            d = again;
            heap.check();
        }
        assert_eq!(heap.counts.purged, 0);
        let _ = keep;
    }

    /// Random churn against a shadow of every page's last free: hardly any dirty page was freed
    /// more than two windows ago.
    #[test]
    fn churn_purges_old_pages() {
        let mut heap = PageHeap::new();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 16
        };
        let mut live: Vec<(*mut SpanDesc, usize)> = Vec::new();
        let mut last_free: HashMap<usize, u64> = HashMap::new();
        const STEP: u64 = 20;
        let late = 2 * DECAY as u64 + STEP;
        let (mut stale, mut dirty) = (0, 0);
        for step in 0..1500u64 {
            let now = step * STEP;
            if live.len() >= 40 || (!live.is_empty() && next() % 3 == 0) {
                let (d, pages) = live.swap_remove(next() as usize % live.len());
                // SAFETY: a live block of the heap, freed once.
                unsafe {
                    let start = span_start(d) as usize;
                    for i in 0..pages {
                        last_free.insert(start + (i << PAGE_SHIFT), now);
                    }
                    heap.free(d, now, DECAY);
                }
            }
            let pages = 1 + next() as usize % 64;
            let d = alloc_large(&mut heap, pages);
            let start = span_start(d) as usize;
            for i in 0..pages {
                last_free.remove(&(start + (i << PAGE_SHIFT)));
            }
            live.push((d, pages));
            heap.purge_expired(now, DECAY);
            if step % 50 == 0 {
                heap.check();
                for p in pages_of(&heap.dirty) {
                    dirty += 1;
                    stale += (last_free[&p] + late <= now) as usize;
                }
            }
        }
        assert!(heap.counts.purged > 0);
        assert!(
            stale * 20 <= dirty,
            "{stale} of {dirty} dirty pages seen were freed more than two windows before"
        );
    }
}

#[cfg(test)]
mod huge_page_tests {
    use super::*;

    /// A heap whose segments' huge pages are both dense, whatever the kernel's mode (the
    /// advice itself is the kernel's business; the decay policy is ours), with one large block
    /// of `pages` pages at the start of its first segment.
    fn dense_heap(pages: usize) -> (PageHeap, *mut Segment, *mut SpanDesc) {
        let mut heap = PageHeap::new();
        let (d, _) = heap.alloc(pages, 1, false, 0).unwrap();
        // SAFETY: a freshly allocated span head in a live segment of ours.
        let seg = unsafe {
            (*d).kind = kind::LARGE;
            segment_of_desc(d)
        };
        // SAFETY: as above.
        unsafe { (*seg).dense = 0b11 };
        (heap, seg, d)
    }

    fn alloc_large(heap: &mut PageHeap, pages: usize) -> *mut SpanDesc {
        let (d, _) = heap.alloc(pages, 1, false, 0).unwrap();
        // SAFETY: a freshly allocated span head.
        unsafe { (*d).kind = kind::LARGE };
        d
    }

    /// Free pages next to live blocks in a well used dense huge page wait past their decay time
    /// (the huge page stays whole) and go after the subrelease delay; they are reused
    /// meanwhile.
    #[test]
    fn a_well_used_huge_page_is_broken_only_after_the_subrelease_delay() {
        // The first huge page: the header, 300 live pages, 100 freed ones, the rest free.
        let (mut heap, seg, _live) = dense_heap(300);
        let freed = alloc_large(&mut heap, 100);
        // SAFETY: `freed` is an allocated block of this heap.
        unsafe { heap.free(freed, 1000, 1000) };
        assert_eq!(
            heap.purge_expired(2500, 1000),
            0,
            "past decay, but kept whole"
        );
        heap.check();
        assert!(heap.counts.subrelease >= 100, "{:?}", heap.counts);
        assert_eq!(heap.next_purge_at(1000), Some(1000 + 4 * 1000));
        // Reused meanwhile: carved from the waiting span.
        let again = alloc_large(&mut heap, 50);
        heap.check();
        // SAFETY: `again` is allocated, `seg` is live.
        unsafe {
            assert_eq!(segment_of_desc(again), seg);
            heap.free(again, 2600, 1000);
        }
        heap.check();
        // The 50 pages merged back in make the span younger (its pages' mean free time:
        // 50 pages freed at 1000 and 50 at 2600, 1800), so it starts over on the decay list.
        assert_eq!(heap.next_purge_at(1000), Some(1800 + 1000));
        assert_eq!(heap.purge_expired(2800, 1000), 0, "kept whole again");
        assert_eq!(heap.next_purge_at(1000), Some(1800 + 4 * 1000));
        assert_eq!(heap.purge_expired(1800 + 4 * 1000 - 1, 1000), 0);
        let purged = heap.purge_expired(1800 + 4 * 1000, 1000);
        assert!(purged >= 100, "subrelease after the longer delay: {purged}");
        assert_eq!(heap.counts.subrelease, 0);
        heap.check();
    }

    /// A little used dense huge page is not kept whole: its free pages go at their decay time.
    #[test]
    fn a_little_used_huge_page_is_broken_at_the_decay_time() {
        let (mut heap, seg, _live) = dense_heap(10);
        let freed = alloc_large(&mut heap, 300);
        // SAFETY: `freed` is an allocated block of this heap.
        unsafe { heap.free(freed, 1000, 1000) };
        // SAFETY: `seg` is live.
        assert!(unsafe { Segment::is_intact(seg, 0) });
        assert!(heap.purge_expired(2000, 1000) >= 300);
        assert_eq!(heap.counts.subrelease, 0);
        // SAFETY: as above.
        let intact = unsafe { Segment::is_intact(seg, 0) };
        assert!(!intact, "purged in part: broken");
        heap.check();
    }

    /// A dense huge page that empties goes back whole at its decay time, without waiting.
    #[test]
    fn an_empty_huge_page_goes_back_at_its_decay_time() {
        // Live pages in the first huge page only; the second is filled and then emptied.
        let (mut heap, seg, _live) = dense_heap(HUGE_PAGE_PAGES - HEADER_PAGES);
        let second = alloc_large(&mut heap, HUGE_PAGE_PAGES);
        // SAFETY: `second` is allocated in `seg`.
        unsafe {
            assert_eq!(page_of_desc(second), HUGE_PAGE_PAGES);
            heap.free(second, 1000, 1000);
        }
        assert_eq!(heap.counts.dirty, HUGE_PAGE_PAGES);
        assert_eq!(heap.purge_expired(2000, 1000), HUGE_PAGE_PAGES);
        assert_eq!(heap.counts.subrelease, 0);
        assert_eq!(heap.counts.clean, HUGE_PAGE_PAGES);
        // SAFETY: `seg` is live (the first huge page holds a live block).
        assert_eq!(unsafe { (*seg).hp_free }, [0, HUGE_PAGE_PAGES as u16]);
        heap.check();
    }

    /// A thread's exit purge keeps huge pages with live blocks whole: it gives back the huge
    /// pages that are all free (whole, so they stay intact) and the pages of segments without
    /// huge pages.
    #[test]
    fn exit_purge_keeps_huge_pages_in_use_whole() {
        // The first huge page: 300 live pages and a freed block; the second: all free.
        let (mut heap, seg, _live) = dense_heap(300);
        let freed = alloc_large(&mut heap, 100);
        let _rest = alloc_large(&mut heap, HUGE_PAGE_PAGES - HEADER_PAGES - 400);
        let second = alloc_large(&mut heap, HUGE_PAGE_PAGES);
        // A segment without huge pages (the first is full), with a live block and a freed one.
        let plain_live = alloc_large(&mut heap, HUGE_PAGE_PAGES);
        let plain_freed = alloc_large(&mut heap, 100);
        // SAFETY: blocks of this heap; the freed ones are no longer used.
        unsafe {
            assert_eq!(page_of_desc(second), HUGE_PAGE_PAGES);
            assert_ne!(segment_of_desc(plain_live), seg);
            assert_eq!(segment_of_desc(plain_freed), segment_of_desc(plain_live));
            heap.free(freed, 1000, 1000);
            heap.free(second, 1000, 1000);
            heap.free(plain_freed, 1000, 1000);
        }
        assert_eq!(heap.counts.dirty, 100 + HUGE_PAGE_PAGES + 100);
        assert_eq!(
            heap.purge_all_but_huge_pages_in_use(),
            HUGE_PAGE_PAGES + 100
        );
        assert_eq!(
            heap.counts.dirty, 100,
            "the live huge page's free pages wait"
        );
        // SAFETY: `seg` is live.
        unsafe {
            assert!(Segment::is_intact(seg, 0), "not broken");
            assert!(Segment::is_intact(seg, 1), "given back whole");
        }
        heap.check();
        // Their decay time still comes: well used, they move to the subrelease list.
        assert_eq!(heap.purge_expired(2000, 1000), 0);
        assert_eq!(heap.counts.subrelease, 100);
        heap.check();
    }

    /// A span across the two huge pages of a segment: the emptied huge page goes back whole,
    /// the part in the huge page with live blocks waits.
    #[test]
    fn a_span_across_huge_pages_is_split_at_the_boundary() {
        let (mut heap, seg, live) = dense_heap(300);
        let span = alloc_large(&mut heap, 2 * HUGE_PAGE_PAGES - HEADER_PAGES - 300);
        // SAFETY: `span` is allocated in `seg`.
        unsafe {
            assert_eq!(segment_of_desc(span), seg);
            heap.free(span, 1000, 1000);
        }
        assert_eq!(heap.purge_expired(2000, 1000), HUGE_PAGE_PAGES);
        assert_eq!(
            heap.counts.subrelease,
            HUGE_PAGE_PAGES - HEADER_PAGES - 300,
            "the part next to the live block waits"
        );
        heap.check();
        // Freeing the live block empties the segment: everything goes, the segment is unmapped.
        // The merged span's mean free time: 300 pages at 3000 and the rest of the huge page
        // (193) at 1000, 2217.
        let rest = HUGE_PAGE_PAGES - HEADER_PAGES - 300;
        let mean = (300 * 3000 + rest as u64 * 1000) / (300 + rest as u64);
        // SAFETY: `live` is allocated in `seg`.
        assert_eq!(unsafe { heap.free(live, 3000, 1000) }, 0);
        heap.check();
        assert_eq!(heap.purge_expired(mean + 999, 1000), 0, "purged early");
        assert_eq!(
            heap.purge_expired(mean + 1000, 1000),
            HUGE_PAGE_PAGES - HEADER_PAGES
        );
        assert_eq!(heap.counts.segments, 0);
    }
}

#[cfg(test)]
mod filler_tests {
    use super::*;

    fn alloc_large(heap: &mut PageHeap, pages: usize) -> *mut SpanDesc {
        let (d, _) = heap.alloc(pages, 1, false, 0).unwrap();
        // SAFETY: a freshly allocated span head.
        unsafe { (*d).kind = kind::LARGE };
        d
    }

    /// Two free spans of the same size, the newer one in a sparse huge page: a new span goes
    /// into the fuller huge page.
    #[test]
    fn new_spans_go_to_the_fullest_huge_page() {
        let mut heap = PageHeap::new();
        // The first huge page full: a 10-page block, then the rest of it.
        let in_full = alloc_large(&mut heap, 10);
        let _rest = alloc_large(&mut heap, HUGE_PAGE_PAGES - HEADER_PAGES - 10);
        // The second huge page: two 10-page blocks, the rest free.
        let in_sparse = alloc_large(&mut heap, 10);
        let _keep = alloc_large(&mut heap, 10);
        // SAFETY: blocks of this heap, in one live segment.
        unsafe {
            let seg = segment_of_desc(in_full);
            assert_eq!(segment_of_desc(in_sparse), seg);
            assert_eq!(page_of_desc(in_sparse), HUGE_PAGE_PAGES);
            (*seg).dense = 0b11;
            heap.free(in_full, 1000, -1);
            heap.free(in_sparse, 1001, -1);
        }
        heap.check();
        // The sparse huge page's span is first in its bin (freed last), yet the full one's is
        // taken.
        let again = alloc_large(&mut heap, 10);
        assert_eq!(again, in_full);
        heap.check();
    }
}
