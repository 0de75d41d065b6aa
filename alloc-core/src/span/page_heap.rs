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
//! Neighbours are found through boundary tags: a free span's first and last `page_head` entries
//! name its first page, and every descriptor that is not a span head has kind `NONE`. Slabs
//! have every `page_head` entry set (their objects are looked up from inside the span); large
//! blocks only the first and last.

use crate::addr::segment::{
    kind, page_of_desc, segment_of_desc, span_start, Segment, SpanDesc, HEADER_PAGES,
    PAGES_PER_SEGMENT, USABLE_PAGES,
};
use crate::base::size_class::{class_of_computed, class_size};
use crate::platform::os::{self, PAGE_SHIFT};
use core::ptr;

/// Free-span bins, one per page count class (the size-class formula applied to page counts).
const NUM_PAGE_BINS: usize = 36;
/// How many spans of the first candidate bin are checked before a larger bin is used.
const BIN_SCAN_LIMIT: usize = 16;

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

    /// A span of at least `pages` pages, or null.
    fn find(&self, pages: usize) -> *mut SpanDesc {
        let b0 = bin_floor(pages);
        let mut d = self.heads[b0];
        let mut scanned = 0;
        // SAFETY: list members are live descriptors owned by this heap.
        unsafe {
            while !d.is_null() && scanned < BIN_SCAN_LIMIT {
                if (*d).pages as usize >= pages {
                    return d;
                }
                d = (*d).next;
                scanned += 1;
            }
        }
        let higher = self.nonempty & !((2u64 << b0) - 1);
        if higher == 0 {
            ptr::null_mut()
        } else {
            self.heads[higher.trailing_zeros() as usize]
        }
    }
}

/// Page counts of a page heap, for statistics.
#[derive(Clone, Copy, Default, Debug)]
pub struct PageCounts {
    /// Pages in slabs and large blocks.
    pub active: usize,
    /// Free pages that may be resident.
    pub dirty: usize,
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
    /// Oldest dirty span (purged first).
    decay_head: *mut SpanDesc,
    /// Youngest dirty span.
    decay_tail: *mut SpanDesc,
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
            decay_head: ptr::null_mut(),
            decay_tail: ptr::null_mut(),
            counts: PageCounts {
                active: 0,
                dirty: 0,
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
            self.unlink_free(d, dirty);
            (*d).kind = kind::NONE;

            let seg_page_base = seg as usize >> PAGE_SHIFT;
            let start = ((seg_page_base + head).next_multiple_of(align_pages)) - seg_page_base;
            let lead = start - head;
            let trail = total - lead - pages;
            let mut after = decay_after;
            if lead > 0 {
                after = self.insert_free(seg, head, lead, dirty, freed_at, after);
            }
            if trail > 0 {
                self.insert_free(seg, start + pages, trail, dirty, freed_at, after);
            }
            let sd = Segment::desc(seg, start);
            (*sd).pages = pages as u32;
            (*sd).flags = 0;
            if all_heads {
                Segment::set_heads(seg, start, pages, start);
            } else {
                Segment::set_heads(seg, start, 1, start);
                Segment::set_heads(seg, start + pages - 1, 1, start);
            }
            self.counts.active += pages;
            sd
        }
    }

    /// Makes `[first, first + pages)` of `seg` a free span and files it; dirty spans go into the
    /// decay list right after `decay_after` (null: at the head). Returns the new descriptor.
    unsafe fn insert_free(
        &mut self,
        seg: *mut Segment,
        first: usize,
        pages: usize,
        dirty: bool,
        freed_at: u64,
        decay_after: *mut SpanDesc,
    ) -> *mut SpanDesc {
        // SAFETY: the pages are ours and on no list; the caller holds the lock.
        unsafe {
            let d = Segment::desc(seg, first);
            (*d).pages = pages as u32;
            Segment::set_heads(seg, first, 1, first);
            Segment::set_heads(seg, first + pages - 1, 1, first);
            if dirty {
                (*d).kind = kind::FREE_DIRTY;
                (*d).set_freed_at(freed_at);
                self.dirty.push(d);
                self.decay_insert_after(decay_after, d);
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
            if dirty {
                self.dirty.remove(d);
                self.decay_remove(d);
                self.counts.dirty -= pages;
            } else {
                self.clean.remove(d);
                self.counts.clean -= pages;
            }
        }
    }

    unsafe fn decay_insert_after(&mut self, after: *mut SpanDesc, d: *mut SpanDesc) {
        // SAFETY: `after` (if any) is on the decay list; `d` is not.
        unsafe {
            let next = if after.is_null() {
                self.decay_head
            } else {
                (*after).decay_next()
            };
            (*d).set_decay_prev(after);
            (*d).set_decay_next(next);
            if after.is_null() {
                self.decay_head = d;
            } else {
                (*after).set_decay_next(d);
            }
            if next.is_null() {
                self.decay_tail = d;
            } else {
                (*next).set_decay_prev(d);
            }
        }
    }

    unsafe fn decay_remove(&mut self, d: *mut SpanDesc) {
        // SAFETY: `d` is on the decay list.
        unsafe {
            let (prev, next) = ((*d).decay_prev(), (*d).decay_next());
            if prev.is_null() {
                self.decay_head = next;
            } else {
                (*prev).set_decay_next(next);
            }
            if next.is_null() {
                self.decay_tail = prev;
            } else {
                (*next).set_decay_prev(prev);
            }
        }
    }

    fn add_segment(&mut self, arena: u32) -> Option<()> {
        let seg = Segment::create(arena);
        if seg.is_null() {
            return None;
        }
        self.counts.segments += 1;
        // SAFETY: a fresh segment of ours; its pages are on no list.
        unsafe {
            self.insert_free(seg, HEADER_PAGES, USABLE_PAGES, false, 0, ptr::null_mut());
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
        // SAFETY: as documented; neighbours are checked through boundary tags.
        unsafe {
            self.counts.active -= (*d).pages as usize;
            self.free_span(d, now);
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
            // a younger one is purged at most one window late.
            let tail = self.decay_tail;
            let after = if tail.is_null() || merged.freed_at >= (*tail).freed_at() {
                tail
            } else {
                merged.decay_after
            };
            self.insert_free(
                seg,
                merged.first,
                merged.pages,
                true,
                merged.freed_at,
                after,
            );
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
            // Absorbed dirty spans: (descriptor, its decay predecessor, its free time).
            let mut absorbed = [(ptr::null_mut(), ptr::null_mut(), u64::MAX); 2];
            (*d).kind = kind::NONE;
            if first > HEADER_PAGES {
                let ph = Segment::head_of(seg, first - 1);
                let pd = Segment::desc(seg, ph);
                if (*pd).kind == k && ph + (*pd).pages as usize == first {
                    if dirty {
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
                    if dirty {
                        absorbed[1] = (nd, (*nd).decay_prev(), (*nd).freed_at());
                    }
                    self.unlink_free(nd, dirty);
                    (*nd).kind = kind::NONE;
                    pages += (*nd).pages as usize;
                    time_sum += (*nd).pages as u128 * (*nd).freed_at() as u128;
                }
            }
            // The place of the oldest absorbed span: after its predecessor, unless that was
            // absorbed too (then after the predecessor's).
            let [a, b] = absorbed;
            let (oldest, other) = if a.2 <= b.2 { (a, b) } else { (b, a) };
            let decay_after = if oldest.0.is_null() {
                self.decay_tail
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
            self.unlink_free(nd, dirty);
            (*nd).kind = kind::NONE;
            if rest > 0 {
                self.insert_free(seg, first + new_pages, rest, dirty, freed_at, after);
            }
            (*d).pages = new_pages as u32;
            Segment::set_heads(seg, first + new_pages - 1, 1, first);
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
            (*tail).pages = (old - new_pages) as u32;
            (*d).pages = new_pages as u32;
            Segment::set_heads(seg, first + new_pages - 1, 1, first);
            Segment::set_heads(seg, first + new_pages, 1, first + new_pages);
            Segment::set_heads(seg, first + old - 1, 1, first + new_pages);
            self.free(tail, now, decay_ms);
        }
    }

    /// Purges dirty spans freed more than `decay_ms` ago (all of them if `decay_ms` is 0;
    /// none if it is negative). Returns how many pages it purged.
    pub fn purge_expired(&mut self, now: u64, decay_ms: i64) -> usize {
        let mut purged = 0;
        if decay_ms < 0 {
            return purged;
        }
        while !self.decay_head.is_null() {
            // SAFETY: the decay head is a dirty span of ours.
            let freed_at = unsafe { (*self.decay_head).freed_at() };
            if freed_at.saturating_add(decay_ms as u64) > now {
                break;
            }
            // SAFETY: as above.
            purged += unsafe { self.purge_span(self.decay_head) };
        }
        purged
    }

    /// When the oldest dirty span was freed, if there is one.
    pub fn oldest_dirty(&self) -> Option<u64> {
        // SAFETY: the decay head, if any, is a dirty span of ours.
        (!self.decay_head.is_null()).then(|| unsafe { (*self.decay_head).freed_at() })
    }

    /// Dirty pages freed at or before `before` (ms): with `before = now - dirty_decay_ms`, the
    /// pages dirty for longer than a decay window, which decay should have purged already.
    /// Walks the whole decay list (it is only nearly ordered): for statistics, not hot paths.
    pub fn dirty_freed_before(&self, before: u64) -> usize {
        let mut pages = 0;
        let mut d = self.decay_head;
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

    /// Purges every dirty span now. Returns how many pages it purged.
    pub fn purge_all(&mut self) -> usize {
        let mut purged = 0;
        while !self.decay_head.is_null() {
            // SAFETY: the decay head is a dirty span of ours.
            purged += unsafe { self.purge_span(self.decay_head) };
        }
        purged
    }

    /// Purges the dirty span `d`; returns its length in pages.
    unsafe fn purge_span(&mut self, d: *mut SpanDesc) -> usize {
        // SAFETY: `d` is a dirty span of ours; its pages hold no live data.
        unsafe {
            let pages = (*d).pages as usize;
            self.unlink_free(d, true);
            os::purge(span_start(d), pages << PAGE_SHIFT);
            self.counts.purged += pages as u64;
            let seg = segment_of_desc(d);
            let Merged {
                first,
                pages: merged,
                ..
            } = self.merge_neighbours(seg, d, kind::FREE_CLEAN, 0);
            if first == HEADER_PAGES && merged == USABLE_PAGES {
                self.counts.segments -= 1;
                Segment::destroy(seg);
            } else {
                self.insert_free(seg, first, merged, false, 0, ptr::null_mut());
            }
            pages
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
                        assert_eq!(Segment::head_of(seg, after - 1), first);
                        if after < PAGES_PER_SEGMENT {
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
        // The decay list holds every dirty span (nearly oldest first: see the module docs).
        let mut n = 0;
        let mut d = self.decay_head;
        while !d.is_null() {
            // SAFETY: list members are live descriptors.
            unsafe {
                assert_eq!((*d).kind, kind::FREE_DIRTY);
                n += (*d).pages as usize;
                d = (*d).decay_next();
            }
        }
        assert_eq!(n, dirty_pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
