//! Segments: the 4 MiB, 4 MiB-aligned mappings that small and large blocks are carved from.
//!
//! A segment describes itself: its first pages hold the header, which has one span descriptor
//! per page; each also names the first page of the span that covers its page. So `free(p)`
//! finds its metadata with no header in front of the block:
//!
//! ```text
//!  segment (4 MiB, aligned)                         page = (p - segment) >> 12
//!  ┌──────────────┬────────────┬───────────┬──────┬──────────────────────────┐
//!  │ header pages │ slab (3 p) │ large (5p)│ free │ ...                      │
//!  └──────────────┴────────────┴───────────┴──────┴──────────────────────────┘
//!  header: spans[page].head -> first page of its span -> spans[first] = SpanDesc
//!          { kind: slab/large/free, class, pages, free bitmap or free-list links }
//! ```
//!
//! The header's fields sit between the descriptors, which run backwards from them (the
//! first page's last), and `fast_code` (below), which runs forwards: the descriptors and
//! codes of a segment's first 51 pages then share the fields' page, and a small program's
//! header costs one page fault, not two.
//!
//! Descriptors are only meaningful at a span's first page; every other descriptor has kind
//! `NONE`, so a pointer into the middle of anything is recognised as invalid.
//!
//! `free`'s fast path reads no descriptor: a table, `fast_code`, holds one entry per granule
//! (512 bytes), the fast-path code of a live slab (every granule) or of an unsampled cached
//! large block (its first page), with how far the granule lies from the span's start.
//! Everything else reads 0 and takes the checked path through the descriptors. A page can
//! hold up to eight mini slabs of different classes, a granule or two each (see
//! `span::slab`): its descriptor is of kind `SHARED` and names theirs, which live in the
//! header's descriptor slots of the header pages.

use crate::addr::registry;
use crate::base::config;
use crate::base::size_class::{mini_bytes, mini_code, GRANULE_SHIFT, NUM_CACHED, NUM_MINI};
use crate::platform::os::{self, PAGE_SHIFT, PAGE_SIZE};
use core::ptr;
use static_assertions::const_assert;

/// log2 of the segment size: one registry chunk.
pub const SEGMENT_SHIFT: u32 = registry::CHUNK_SHIFT;
/// Segment size and alignment: large enough to hold the largest large block (2 MiB) twice over.
pub const SEGMENT_SIZE: usize = 1 << SEGMENT_SHIFT;
/// Pages per segment, header included.
pub const PAGES_PER_SEGMENT: usize = SEGMENT_SIZE / PAGE_SIZE;

/// Span flag: a sampled block (its descriptor's words hold the profiler's record).
pub const FLAG_SAMPLED: u16 = 1;
/// Span flag of a dirty free span: it waits on the page heap's subrelease list, not its decay
/// list (see `span::page_heap`).
pub const FLAG_SUBRELEASE: u16 = 2;
/// Span flag of a mini slab (see `span::slab`).
pub const FLAG_MINI: u16 = 8;
/// Span flag of a slab: it belongs to its bin's second lane (see `pool::arena::SLAB_LANES`).
pub const FLAG_LANE: u16 = 1 << 15;

/// Pages in a transparent huge page (2 MiB on x86-64).
pub const HUGE_PAGE_PAGES: usize = (2 << 20) / PAGE_SIZE;
/// Transparent huge pages in a segment.
pub const HUGE_PAGES_PER_SEGMENT: usize = PAGES_PER_SEGMENT / HUGE_PAGE_PAGES;

/// Descriptor kinds.
pub mod kind {
    /// Not the first page of a span.
    pub const NONE: u8 = 0;
    /// Free pages that may still be resident.
    pub const FREE_DIRTY: u8 = 1;
    /// Free pages given back to the kernel (read as zero).
    pub const FREE_CLEAN: u8 = 2;
    /// A slab of small objects.
    pub const SLAB: u8 = 3;
    /// One large block.
    pub const LARGE: u8 = 4;
    /// A page of mini slabs: byte `g` of `words[0]` names the header slot (plus one) of the
    /// mini slab in its `g`-th granule, or is 0 (see `segment::mini_at`).
    pub const SHARED: u8 = 5;
}

/// Granules of `free`'s fast-path codes in a page.
pub const GRANULES_PER_PAGE: usize = PAGE_SIZE >> GRANULE_SHIFT;
/// Granules in a segment.
pub const GRANULES_PER_SEGMENT: usize = SEGMENT_SIZE >> GRANULE_SHIFT;

/// Describes one span (a run of pages). 64 bytes, one cache line.
#[repr(C, align(64))]
pub struct SpanDesc {
    /// One of [`kind`].
    pub kind: u8,
    /// Size class (slabs and large blocks).
    pub class: u8,
    /// Spare bits for later use (e.g. the profiler's "sampled" mark).
    pub flags: u16,
    /// Pages in the span.
    pub pages: u16,
    /// The first page of the span that covers this page: kept on every page of a slab (its
    /// objects are looked up from inside it) and on the first and last pages of other spans
    /// (the boundary tags that free spans merge by). Stale elsewhere.
    head: u16,
    /// Previous in the list this span is on (free bin or a bin's non-full slabs).
    pub prev: *mut SpanDesc,
    /// Next in that list.
    pub next: *mut SpanDesc,
    /// Free objects (slabs).
    pub nfree: u32,
    /// Kept empty slabs: when the slab emptied (the low 32 bits of `os::now_ms`), so that it
    /// decays from then once its bin lets it go.
    pub kept_at: u32,
    /// Slabs: the free-object bitmap (1 = free). Dirty free spans: decay-list links and the
    /// time the span was freed (see the accessors).
    pub words: [u64; 4],
}

const_assert!(core::mem::size_of::<SpanDesc>() == 64);

/// What the profiler recorded for a sampled block, kept with the block (in its span
/// descriptor or huge header) so that its `free` subtracts exactly that. The stack is the
/// profiler's entry, opaque to the layers that only keep the record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleRecord {
    /// The profiler's stack entry; null when the block was not sampled.
    pub stack: *mut (),
    /// The requested size recorded.
    pub bytes: usize,
    /// The weight recorded.
    pub weight: f64,
}

impl SampleRecord {
    /// No sample.
    pub const NONE: SampleRecord = SampleRecord {
        stack: ptr::null_mut(),
        bytes: 0,
        weight: 0.0,
    };
}

impl SpanDesc {
    /// Dirty spans: previous (older) span in the decay list.
    pub fn decay_prev(&self) -> *mut SpanDesc {
        self.words[0] as usize as *mut SpanDesc
    }
    /// Dirty spans: next (younger) span in the decay list.
    pub fn decay_next(&self) -> *mut SpanDesc {
        self.words[1] as usize as *mut SpanDesc
    }
    /// Sets the decay-list predecessor.
    pub fn set_decay_prev(&mut self, d: *mut SpanDesc) {
        self.words[0] = d as usize as u64;
    }
    /// Sets the decay-list successor.
    pub fn set_decay_next(&mut self, d: *mut SpanDesc) {
        self.words[1] = d as usize as u64;
    }
    /// Dirty spans: when the span was freed (ms of the coarse monotonic clock).
    pub fn freed_at(&self) -> u64 {
        self.words[2]
    }
    /// Sets the free time.
    pub fn set_freed_at(&mut self, t: u64) {
        self.words[2] = t;
    }
    /// Sampled blocks (`FLAG_SAMPLED`): the profiler's record.
    pub fn sample(&self) -> SampleRecord {
        SampleRecord {
            stack: self.words[0] as usize as *mut (),
            bytes: self.words[1] as usize,
            weight: f64::from_bits(self.words[2]),
        }
    }
    /// Keeps the profiler's record of a sampled block.
    pub fn set_sample(&mut self, r: SampleRecord) {
        self.words[0] = r.stack as usize as u64;
        self.words[1] = r.bytes as u64;
        self.words[2] = r.weight.to_bits();
    }
}

/// Bytes before the descriptors, never touched: they place the fields (and the descriptors and
/// fast-path codes of the first pages, on either side) 51 descriptors into a page.
const LEAD_BYTES: usize = SHARED_PAGES * size_of::<SpanDesc>();

/// Pages whose descriptors and fast-path codes lie on the fields' page, as many as fit: a
/// small program's spans, from the first usable page on, have theirs there.
const SHARED_PAGES: usize = 51;

/// The segment header, at the start of every segment.
#[repr(C)]
pub struct Segment {
    _lead: [u8; LEAD_BYTES],
    /// One descriptor per page, the last page's first (see [`Segment::desc`]); meaningful at
    /// span heads. Those of the header pages hold mini slabs' descriptors.
    spans: [SpanDesc; PAGES_PER_SEGMENT],
    /// The arena that owns every span in this segment.
    pub arena: u32,
    /// Bit `h` set: huge page `h` of this segment was given `MADV_HUGEPAGE` (see
    /// [`Segment::create`]); the decay then returns it whole or, later, in part.
    pub dense: u8,
    /// Bit `h` set: part of dense huge page `h` was purged since the segment was mapped, so the
    /// kernel split it, and its pages fault in 4 KiB at a time from then on (an intact one is
    /// faulted in whole by the first touch of any of its pages).
    pub broken: u8,
    /// Free pages (dirty or clean) in each huge page of the segment, kept by the page heap.
    pub hp_free: [u16; HUGE_PAGES_PER_SEGMENT],
    /// Descriptor slots of the header pages given to mini slabs (they are never taken back).
    pub minis: u8,
    /// For every granule, `free`'s fast-path code in the low byte: class + 1 on every granule of a
    /// slab and of the first page of a large block of a cached class, the class's
    /// `size_class::mini_code` on a mini slab's, 0 everywhere else (free pages, the header,
    /// blocks with pages of their own, uncached blocks), which sends `free` to its checked
    /// path. The high byte is the granule's distance from the span's start in granules, so
    /// that a block's offset in its span comes from this entry alone. Sampling never changes
    /// a code (see `addr::sampled`).
    pub fast_code: [u16; GRANULES_PER_SEGMENT],
}

/// Where page 0's descriptor lies in a segment.
const DESC_0: usize =
    core::mem::offset_of!(Segment, spans) + (PAGES_PER_SEGMENT - 1) * size_of::<SpanDesc>();

// The fields, the first pages' descriptors and their fast-path codes share a page.
const_assert!(
    (core::mem::offset_of!(Segment, arena) - SHARED_PAGES * size_of::<SpanDesc>()) / PAGE_SIZE
        == (core::mem::offset_of!(Segment, fast_code) + SHARED_PAGES * GRANULES_PER_PAGE * 2 - 1)
            / PAGE_SIZE
);

/// Pages taken by the header; the first usable page.
pub const HEADER_PAGES: usize = core::mem::size_of::<Segment>().div_ceil(PAGE_SIZE);
/// Pages a segment offers for spans.
pub const USABLE_PAGES: usize = PAGES_PER_SEGMENT - HEADER_PAGES;

const_assert!(USABLE_PAGES >= crate::base::size_class::LARGE_MAX / PAGE_SIZE);
const_assert!(PAGES_PER_SEGMENT <= u16::MAX as usize);
const_assert!(HEADER_PAGES <= 21); // the header costs about 2 % of a segment
                                   // An arena's mini slabs fit one segment's slots.
const_assert!(NUM_MINI <= HEADER_PAGES);
// A shared page names its mini slabs' slots a byte each, in its descriptor's first word.
const_assert!(HEADER_PAGES < 256 && GRANULES_PER_PAGE <= 8);
const_assert!(crate::base::size_class::MAX_SLAB_PAGES * GRANULES_PER_PAGE <= 256);

impl Segment {
    /// Maps and registers a new segment for `arena`; its usable pages are not yet on any list.
    /// Its huge pages ask for huge pages (are dense) if `config::thp` says so for segments and
    /// the kernel could give them; but with `first` (the only segment of its arena) the huge
    /// page holding the header does not: the header's first touch would fault in 2 MiB, and
    /// a small program's whole heap fits in the rest of that huge page. Null if the kernel
    /// refuses memory.
    pub fn create(arena: u32, first: bool) -> *mut Segment {
        let advice = config::huge_advice(config::Dense::Segment);
        // The first huge page advised (as `map_dense` does, from it to the end).
        let dense_from = usize::from(first && advice == os::HugeAdvice::Huge);
        let base = os::map_aligned(SEGMENT_SIZE, SEGMENT_SIZE);
        if base.is_null() {
            return ptr::null_mut();
        }
        let from = dense_from * HUGE_PAGE_PAGES * PAGE_SIZE;
        // SAFETY: `from` lies within the fresh mapping.
        os::advise_huge(unsafe { base.add(from) }, SEGMENT_SIZE - from, advice);
        let seg = base.cast::<Segment>();
        // SAFETY: fresh, zeroed, exclusively ours; zero is a valid value for every field.
        unsafe {
            (*seg).arena = arena;
            if advice == os::HugeAdvice::Huge {
                (*seg).dense = ((1 << HUGE_PAGES_PER_SEGMENT) - 1) >> dense_from << dense_from;
            }
        }
        registry::mark_segment(base as usize, registry::tag_of_index(arena as usize));
        seg
    }

    /// Whether huge page `h` of `seg` is dense and was never purged in part: touching any of
    /// its pages faults all of it in.
    ///
    /// # Safety
    /// `seg` must be a live segment.
    #[inline]
    pub unsafe fn is_intact(seg: *const Segment, h: usize) -> bool {
        // SAFETY: as documented.
        unsafe { Segment::is_dense(seg, h) && (*seg).broken & (1 << h) == 0 }
    }

    /// Whether huge page `h` of `seg` was asked to be backed by a huge page.
    ///
    /// # Safety
    /// `seg` must be a live segment.
    #[inline]
    pub unsafe fn is_dense(seg: *const Segment, h: usize) -> bool {
        // SAFETY: as documented.
        unsafe { (*seg).dense & (1 << h) != 0 }
    }

    /// Unregisters and unmaps a segment whose spans are all free.
    ///
    /// # Safety
    /// No block in the segment may be in use or on any list.
    pub unsafe fn destroy(seg: *mut Segment) {
        registry::unmark_segment(seg as usize);
        // SAFETY: the caller gives the whole segment up.
        unsafe { os::unmap(seg.cast(), SEGMENT_SIZE) };
    }

    /// The segment holding `p` (which must be inside one).
    #[inline(always)]
    pub fn of(p: usize) -> *mut Segment {
        (p & !(SEGMENT_SIZE - 1)) as *mut Segment
    }

    /// The descriptor of page `page` of `seg`. They run backwards, page 0's last, ending where
    /// the fields begin (see the module docs).
    #[inline(always)]
    pub fn desc(seg: *mut Segment, page: usize) -> *mut SpanDesc {
        debug_assert!(page < PAGES_PER_SEGMENT);
        (seg as usize + DESC_0 - page * size_of::<SpanDesc>()) as *mut SpanDesc
    }

    /// Records `head` as the first page of the span covering pages `first..first + pages`.
    ///
    /// # Safety
    /// `seg` must be a live segment and the caller must own those pages (arena lock held).
    #[inline]
    pub unsafe fn set_heads(seg: *mut Segment, first: usize, pages: usize, head: usize) {
        debug_assert!(first + pages <= PAGES_PER_SEGMENT);
        for i in first..first + pages {
            // SAFETY: in bounds; the caller owns the descriptors.
            unsafe { (*Segment::desc(seg, i)).head = head as u16 };
        }
    }

    /// Records the span `first..first + pages` (not a slab) by its ends: the head on its first
    /// page, and on its last the boundary tag that the span after it reads when freed.
    ///
    /// # Safety
    /// As for [`Segment::set_heads`].
    #[inline]
    pub unsafe fn set_ends(seg: *mut Segment, first: usize, pages: usize) {
        // SAFETY: per the contract.
        unsafe {
            Segment::set_heads(seg, first, 1, first);
            Segment::set_tail(seg, first, pages);
        }
    }

    /// Records on the last page of span `first..first + pages` its boundary tag, the first
    /// page, unless the span ends the segment: no span after it reads that, and the last
    /// page's descriptor lies on a page of the header that a small program, whose first span
    /// ends the segment, touches for nothing else.
    ///
    /// # Safety
    /// As for [`Segment::set_heads`].
    #[inline]
    pub unsafe fn set_tail(seg: *mut Segment, first: usize, pages: usize) {
        let last = first + pages - 1;
        if last + 1 < PAGES_PER_SEGMENT {
            // SAFETY: per the contract.
            unsafe { Segment::set_heads(seg, last, 1, first) };
        }
    }

    /// Sets the fast-path code (see [`Segment::fast_code`]) of `granules` granules from
    /// `first` on, which start a span: each entry also says how far it is from `first`.
    ///
    /// # Safety
    /// `seg` must be a live segment and the caller must own those granules (arena lock held).
    #[inline]
    pub unsafe fn set_fast_codes(seg: *mut Segment, first: usize, granules: usize, code: u8) {
        debug_assert!(first + granules <= GRANULES_PER_SEGMENT);
        debug_assert!(code == 0 || granules <= 256);
        // SAFETY: in bounds; the caller owns the entries.
        unsafe {
            let table = ptr::addr_of_mut!((*seg).fast_code).cast::<u16>().add(first);
            for k in 0..granules {
                let entry = if code == 0 {
                    0
                } else {
                    (k << 8) as u16 | code as u16
                };
                *table.add(k) = entry;
            }
        }
    }

    /// The fast-path entry of `granule` (see [`Segment::fast_code`]).
    ///
    /// # Safety
    /// `seg` must be a live segment and `granule` in range.
    #[inline(always)]
    pub unsafe fn fast_code_of(seg: *mut Segment, granule: usize) -> usize {
        // SAFETY: in bounds of the header's table.
        unsafe { *ptr::addr_of!((*seg).fast_code).cast::<u16>().add(granule) as usize }
    }

    /// The descriptor of the page holding address `p` (the span's own when `p` is where a
    /// span starts).
    #[inline(always)]
    pub fn desc_at(p: usize) -> *mut SpanDesc {
        Segment::desc(Segment::of(p), Segment::page_index(p))
    }

    /// The index, within its segment, of the page holding address `p`.
    #[inline(always)]
    pub fn page_index(p: usize) -> usize {
        (p >> PAGE_SHIFT) & (PAGES_PER_SEGMENT - 1)
    }

    /// The index, within its segment, of the granule holding address `p`.
    #[inline(always)]
    pub fn granule_index(p: usize) -> usize {
        (p >> GRANULE_SHIFT) & (GRANULES_PER_SEGMENT - 1)
    }

    /// The fast-path entry of the granule holding address `p` (see [`Segment::fast_code`]).
    ///
    /// # Safety
    /// `p` must lie in a live segment.
    #[inline(always)]
    pub unsafe fn fast_code_at(p: usize) -> usize {
        // SAFETY: per the contract; the index is in range.
        unsafe { Segment::fast_code_of(Segment::of(p), Segment::granule_index(p)) }
    }

    /// The first page of the span covering `page`.
    ///
    /// # Safety
    /// `seg` must be a live segment.
    #[inline(always)]
    pub unsafe fn head_of(seg: *mut Segment, page: usize) -> usize {
        // SAFETY: a descriptor of the header.
        unsafe { (*Segment::desc(seg, page)).head as usize }
    }
}

/// The segment a descriptor lives in (descriptors are inside their segment's header).
#[inline(always)]
pub fn segment_of_desc(d: *const SpanDesc) -> *mut Segment {
    Segment::of(d as usize)
}

/// The page index a descriptor describes.
#[inline(always)]
pub fn page_of_desc(d: *const SpanDesc) -> usize {
    let seg = segment_of_desc(d);
    (seg as usize + DESC_0 - d as usize) / core::mem::size_of::<SpanDesc>()
}

/// Sets the fast-path codes of span `d` from its kind, class and flags: class + 1 on every page
/// of a slab, on the first page of an unsampled large block of a cached class; the mini code on
/// a mini slab's granule; 0 otherwise. Called whenever a span becomes a slab or a large block,
/// or a large block changes class.
///
/// # Safety
/// `d` must head a live span that the caller owns (arena lock held).
pub unsafe fn set_fast_class_of_span(d: *mut SpanDesc) {
    // SAFETY: per the contract.
    unsafe {
        let class = (*d).class as usize;
        if (*d).flags & FLAG_MINI != 0 {
            let start = mini_start(d) as usize;
            let code = mini_code(class) as u8;
            return Segment::set_fast_codes(
                Segment::of(start),
                Segment::granule_index(start),
                mini_bytes(class) >> GRANULE_SHIFT,
                code,
            );
        }
        let seg = segment_of_desc(d);
        let first = page_of_desc(d) * GRANULES_PER_PAGE;
        let code = class as u8 + 1;
        match (*d).kind {
            kind::SLAB => {
                let granules = (*d).pages as usize * GRANULES_PER_PAGE;
                Segment::set_fast_codes(seg, first, granules, code)
            }
            kind::LARGE if (*d).flags & FLAG_SAMPLED == 0 && class < NUM_CACHED => {
                Segment::set_fast_codes(seg, first, GRANULES_PER_PAGE, code)
            }
            _ => Segment::set_fast_codes(seg, first, GRANULES_PER_PAGE, 0),
        }
    }
}

/// Clears the fast-path codes of every page of span `d`, which is about to be freed.
///
/// # Safety
/// As for [`set_fast_class_of_span`].
pub unsafe fn clear_fast_class_of_span(d: *mut SpanDesc) {
    // SAFETY: per the contract.
    unsafe {
        let granules = (*d).pages as usize * GRANULES_PER_PAGE;
        let first = page_of_desc(d) * GRANULES_PER_PAGE;
        Segment::set_fast_codes(segment_of_desc(d), first, granules, 0)
    }
}

/// The first byte of the span a descriptor describes (not a mini slab's: see [`mini_start`]).
#[inline(always)]
pub fn span_start(d: *const SpanDesc) -> *mut u8 {
    let seg = segment_of_desc(d);
    (seg as usize + (page_of_desc(d) << PAGE_SHIFT)) as *mut u8
}

/// The first byte of mini slab `d` (`FLAG_MINI`), kept in its last word: its descriptor
/// lives in a header slot, not in the slot of its page.
///
/// # Safety
/// `d` must be a live mini slab's descriptor.
#[inline(always)]
pub unsafe fn mini_start(d: *const SpanDesc) -> *mut u8 {
    // SAFETY: per the contract.
    unsafe { (*d).words[3] as usize as *mut u8 }
}

/// The class + 1 that the fast-path code of `p`'s KiB names (in a slab or a mini slab), or 0
/// (for tests).
///
/// # Safety
/// `p` must lie in a live segment.
#[cfg(test)]
pub unsafe fn fast_class_at(p: usize) -> usize {
    // SAFETY: per the contract.
    match unsafe { Segment::fast_code_at(p) } & 0xff {
        0 => 0,
        code => crate::base::size_class::STARTS_BY_CODE[code].class as usize + 1,
    }
}

/// The first byte of the span or mini slab `d` describes.
///
/// # Safety
/// `d` must be a live descriptor: a span head's or a mini slab's.
#[inline(always)]
pub unsafe fn start_of(d: *const SpanDesc) -> *mut u8 {
    // SAFETY: per the contract; only mini slabs' descriptors carry `FLAG_MINI`.
    unsafe {
        if (*d).flags & FLAG_MINI != 0 {
            mini_start(d)
        } else {
            span_start(d)
        }
    }
}

/// The mini slab of shared page `shared` whose granule holds `p`, or null if that granule
/// has none.
///
/// # Safety
/// `shared` must be a live shared page's descriptor and `p` an address in that page.
#[inline(always)]
pub unsafe fn mini_at(shared: *const SpanDesc, p: usize) -> *mut SpanDesc {
    // SAFETY: per the contract.
    match unsafe { shared_slot(shared, (p >> GRANULE_SHIFT) & (GRANULES_PER_PAGE - 1)) } {
        0 => ptr::null_mut(),
        slot => Segment::desc(segment_of_desc(shared), slot - 1),
    }
}

/// The header slot plus one of the mini slab in granule `g` of shared page `shared`, or 0.
///
/// # Safety
/// `shared` must be a live shared page's descriptor and `g` below [`GRANULES_PER_PAGE`].
#[inline(always)]
pub unsafe fn shared_slot(shared: *const SpanDesc, g: usize) -> usize {
    // SAFETY: per the contract; the first word holds a byte per granule.
    unsafe { ((*shared).words[0] >> (8 * g)) as u8 as usize }
}

/// Gives granules `first..first + n` of shared page `shared` to mini slab `mini`, a header
/// slot of the same segment.
///
/// # Safety
/// `shared` must be a live shared page's descriptor, the granules free in it, and the caller
/// must hold its arena's page lock.
pub unsafe fn give_granules(shared: *mut SpanDesc, first: usize, n: usize, mini: *mut SpanDesc) {
    let slot = page_of_desc(mini) as u64 + 1;
    for g in first..first + n {
        // SAFETY: per the contract.
        unsafe { (*shared).words[0] |= slot << (8 * g) };
    }
}

/// Takes a header slot of `seg` for a mini slab's descriptor; null when all are taken.
///
/// # Safety
/// `seg` must be a live segment whose arena's page lock the caller holds.
pub unsafe fn take_mini_slot(seg: *mut Segment) -> *mut SpanDesc {
    // SAFETY: per the contract.
    unsafe {
        let slot = (*seg).minis as usize;
        if slot >= HEADER_PAGES {
            return ptr::null_mut();
        }
        (*seg).minis += 1;
        Segment::desc(seg, slot)
    }
}

/// The descriptor of the span holding `p`, a block of a live slab or large block of ours:
/// a mini slab's own for a block in a shared page.
///
/// # Safety
/// `p` must lie in a live span of a live segment.
#[inline(always)]
pub unsafe fn span_of(p: usize) -> *mut SpanDesc {
    let seg = Segment::of(p);
    // SAFETY: per the contract.
    unsafe {
        let d = Segment::desc(seg, Segment::head_of(seg, Segment::page_index(p)));
        if (*d).kind == kind::SHARED {
            let mini = mini_at(d, p);
            if !mini.is_null() {
                return mini;
            }
        }
        d
    }
}

/// Where a pointer sits, as found by [`locate`].
pub enum Location {
    /// In a segment: the descriptor of the span covering it, and the span's first byte.
    Span(*mut SpanDesc, usize),
    /// At the start of a huge block: its header.
    Huge(*mut u8),
    /// Not in memory of ours.
    Foreign,
}

/// Finds the metadata for `p` in O(1) through the registry.
#[inline(always)]
pub fn locate(p: usize) -> Location {
    if !registry::is_segment(p) {
        let header = registry::lookup(p);
        return if header.is_null() {
            Location::Foreign
        } else {
            Location::Huge(header)
        };
    }
    let seg = Segment::of(p);
    let page = (p - seg as usize) >> PAGE_SHIFT;
    if page < HEADER_PAGES {
        return Location::Foreign;
    }
    // SAFETY: a live segment; `page` is in range.
    let d = unsafe { span_of(p) };
    // SAFETY: as above: `d` is a live descriptor of a span head or a mini slab.
    Location::Span(d, unsafe { start_of(d) } as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let seg = Segment::create(3, false);
        assert!(!seg.is_null());
        assert_eq!(seg as usize % SEGMENT_SIZE, 0);
        let d = Segment::desc(seg, 700);
        assert_eq!(page_of_desc(d), 700);
        assert_eq!(span_start(d) as usize, seg as usize + 700 * PAGE_SIZE);
        // SAFETY: the segment is ours and unused.
        unsafe {
            Segment::set_heads(seg, 700, 5, 700);
            assert_eq!(Segment::head_of(seg, 704), 700);
            assert!(
                matches!(locate(seg as usize + 704 * PAGE_SIZE + 17), Location::Span(x, _) if x == d)
            );
            assert!(matches!(locate(seg as usize + 8), Location::Foreign));
            Segment::destroy(seg);
        }
        assert!(matches!(
            locate(seg as usize + 704 * PAGE_SIZE),
            Location::Foreign
        ));
    }

    #[test]
    fn fast_codes_follow_live_blocks() {
        use crate::api::{alloc::malloc, free::free, realloc::realloc};
        use crate::base::size_class::class_of;
        // A sampled block (the profiler may pick any) lies inside a block of another class or
        // has pages of its own: its class is the one it was asked for.
        let code_of = |p: *mut u8| {
            let a = p as usize;
            let Location::Span(d, start) = locate(a) else {
                panic!("not in a segment")
            };
            // SAFETY: `p` is a live block in a segment of ours.
            unsafe {
                let code = fast_class_at(a);
                if (*d).flags & FLAG_SAMPLED != 0 {
                    assert_eq!(code, 0, "a sampled block has a fast-path code");
                    return class_of((*d).sample().bytes) + 1;
                }
                if let Some(record) = crate::api::sampled::inner_record(p) {
                    assert_ne!(start, a, "a sampled block starts a block of its span");
                    return class_of(record.bytes) + 1;
                }
                code
            }
        };
        let small = malloc(5000);
        assert_eq!(code_of(small), class_of(5000) + 1);
        // A cached large block: its first page only, so that no other page passes for a start.
        let mut large = malloc(100_000);
        assert_eq!(code_of(large), class_of(100_000) + 1);
        let second = large as usize + PAGE_SIZE;
        // SAFETY: a page of a live block of ours.
        let second_code = unsafe { Segment::fast_code_at(second) };
        assert_eq!(second_code, 0);
        // Resized in place, the code follows the class; an uncached class has none.
        // SAFETY: live blocks of ours, each freed once.
        unsafe {
            large = realloc(large, 150_000);
            assert_eq!(code_of(large), class_of(150_000) + 1);
            large = realloc(large, 600_000);
            assert_eq!(code_of(large), 0);
            let uncached = malloc(1 << 20);
            assert_eq!(code_of(uncached), 0);
            free(uncached);
            free(large);
            free(small);
        }
    }
}
