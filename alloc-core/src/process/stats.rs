//! Statistics: what the engine holds, read on demand.
//!
//! Counters are kept where they are cheap (per thread cache, per bin under its lock, per page
//! heap) and merged when read, so keeping them costs the allocation path nothing measurable.
//!
//! - *allocated*: bytes in blocks the program holds (usable sizes);
//! - *active*: bytes of pages in slabs and large blocks, plus huge blocks;
//! - *resident*: an upper bound on the bytes in RAM (active and dirty pages, headers, metadata);
//! - *mapped*: bytes of address space mapped; *retained*: mapped but purged;
//! - *metadata*: segment headers and the engine's own bookkeeping;
//! - *thp_resident*: bytes of our mappings (segments, huge blocks) the kernel backs with
//!   transparent huge pages, the `AnonHugePages` of those mappings in `/proc/self/smaps`. It is
//!   read only when the report is printed or [`thp_resident`] is called (a walk of smaps, with
//!   raw reads into a stack buffer; the kernel takes the address-space lock for it, so
//!   `snapshot`, which `mallinfo` and the Rust API call freely, leaves it at 0). The kernel reports per mapping (VMA),
//!   and merges neighbouring anonymous mappings with the same flags into one: a VMA is counted
//!   when any 4 MiB chunk of it is one of our segments or holds a huge block's start.
//!
//! What is held for reuse, apart from live blocks:
//! - *dirty*: free pages not yet purged (and the huge cache); of those, *dirty_expired* were
//!   freed more than one `dirty_decay_ms` window ago, which decay should already have given back
//!   ("held and forgotten", as opposed to "held for reuse"), *dirty_hugepage* are past their
//!   window too but kept on purpose, whole in well used huge pages, until the longer subrelease
//!   delay (see `span::page_heap`), and *oldest_dirty_ms* is the age of the oldest of the rest;
//! - *cached*: free blocks held in thread caches and the bins' transfer arrays
//!   (*tcache_cached*), pages of empty slabs the bins keep (*empty_slab*) and freed huge blocks
//!   kept for reuse (*huge_cached*). Cached blocks and kept slabs count as active pages, the
//!   huge cache as dirty.

use crate::addr::registry;
use crate::addr::segment::{HEADER_PAGES, SEGMENT_SIZE};
use crate::base::config;
use crate::base::meta;
use crate::base::size_class::{CLASSES, NUM_CACHED, NUM_CLASSES, NUM_SMALL};
use crate::platform::fork_guard;
use crate::platform::os::{self, Line, PAGE_SIZE};
use crate::platform::smaps;
use crate::pool::arena::{self, NUM_LARGE};
use crate::pool::huge;
use crate::thread::cache;
use core::sync::atomic::Ordering::Relaxed;

/// Figures for one size class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Block size.
    pub size: usize,
    /// Allocation requests served so far.
    pub requests: u64,
    /// Blocks the program holds now.
    pub live: usize,
    /// Free blocks held in thread caches.
    pub cached: usize,
    /// Slabs (small classes).
    pub slabs: usize,
    /// Of those, empty slabs kept for reuse.
    pub empty_slabs: usize,
}

/// A consistent-enough picture of the engine (each part is read under its own lock).
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    /// Bytes in blocks the program holds.
    pub allocated: usize,
    /// Bytes of pages in use by blocks (slabs, large and huge).
    pub active: usize,
    /// Upper bound on resident bytes.
    pub resident: usize,
    /// Bytes mapped.
    pub mapped: usize,
    /// Bytes mapped but given back to the kernel.
    pub retained: usize,
    /// Bytes of allocator metadata.
    pub metadata: usize,
    /// Bytes of our mappings backed by transparent huge pages (`AnonHugePages` of the VMAs
    /// holding our segments and huge blocks, from `/proc/self/smaps`): filled by the report
    /// only; 0 in a plain [`snapshot`] (see [`thp_resident`]).
    pub thp_resident: usize,
    /// Free pages not yet purged, in bytes (the huge cache included).
    pub dirty: usize,
    /// Of `dirty`, the bytes of pages freed more than one decay window (`dirty_decay_ms`) ago:
    /// memory held and forgotten rather than held for reuse. Decay keeps this near zero.
    pub dirty_expired: usize,
    /// Bytes of dirty pages past their decay window kept whole in well used huge pages, until
    /// the subrelease delay.
    pub dirty_hugepage: usize,
    /// How long ago the oldest dirty page was freed (ms; 0 when there is none).
    pub oldest_dirty_ms: u64,
    /// The decay window these figures were taken with (`dirty_decay_ms`).
    pub decay_ms: i64,
    /// Bytes of free blocks held in thread caches and in the bins' transfer arrays (on their
    /// way from the thread that freed them to the next refill).
    pub tcache_cached: usize,
    /// Bytes of empty slabs the bins keep for reuse.
    pub empty_slab: usize,
    /// Everything held for reuse outside the page heaps' dirty lists: thread caches, kept empty
    /// slabs and the huge cache (`tcache_cached + empty_slab + huge_cached`).
    pub cached: usize,
    /// Segments mapped.
    pub segments: usize,
    /// Arenas threads are spread over: line arenas, of which the first `shared_arenas` are
    /// shared arenas too (see `pool::arena::ThreadArenas`).
    pub narenas: usize,
    /// Arenas that serve the classes of a cache line and more.
    pub shared_arenas: usize,
    /// Arenas ever given a thread: the only ones that hold memory, and that ticks visit.
    pub arenas_used: usize,
    /// Threads with a cache.
    pub threads: usize,
    /// Pages given back to the kernel so far.
    pub purged_pages: u64,
    /// Bytes in live huge blocks.
    pub huge_allocated: usize,
    /// Bytes of freed huge blocks kept for reuse.
    pub huge_cached: usize,
    /// Bytes mapped for huge blocks, live and cached (a block's mapping may be larger than the
    /// block: whole huge pages, or room left by the cache or by `realloc`).
    pub huge_mapped: usize,
    /// Huge allocation requests.
    pub huge_requests: u64,
    /// Per size class.
    pub classes: [ClassStats; NUM_CLASSES],
}

/// Reads the statistics.
pub fn snapshot() -> Snapshot {
    arena::ensure_sized();
    let mut s = Snapshot {
        allocated: 0,
        active: 0,
        resident: 0,
        mapped: 0,
        retained: 0,
        metadata: 0,
        thp_resident: 0,
        dirty: 0,
        dirty_expired: 0,
        dirty_hugepage: 0,
        oldest_dirty_ms: 0,
        decay_ms: config::decay_ms(),
        tcache_cached: 0,
        empty_slab: 0,
        cached: 0,
        segments: 0,
        narenas: arena::narenas(),
        shared_arenas: arena::shared_arenas(),
        arenas_used: arena::arenas_used(),
        threads: 0,
        purged_pages: 0,
        huge_allocated: huge::ALLOCATED.load(Relaxed),
        huge_cached: huge::CACHED.load(Relaxed),
        huge_mapped: huge::MAPPED.load(Relaxed),
        huge_requests: huge::REQUESTS.load(Relaxed),
        classes: [ClassStats::default(); NUM_CLASSES],
    };
    let mut out = [0usize; NUM_CLASSES]; // blocks out of arenas
    let (mut active_pages, mut dirty_pages, mut clean_pages) = (0, 0, 0);
    let mut hugepage_pages = 0;
    let (mut expired_pages, mut empty_pages) = (0, 0);
    let now = os::now_ms();
    // Pages freed at or before this are past their decay window.
    let expired_before = now.checked_sub(s.decay_ms.max(0) as u64 + 1);
    let mut oldest = u64::MAX;
    for a in arena::in_use() {
        for (c, o) in out.iter_mut().enumerate().take(NUM_SMALL) {
            let bin = a.bin(c).lock();
            *o += bin.objects_out;
            s.classes[c].cached += bin.parked();
            s.classes[c].slabs += bin.slabs as usize;
            let empty_slabs = bin.empty_slabs();
            s.classes[c].empty_slabs += empty_slabs;
            empty_pages += empty_slabs * CLASSES[c].pages as usize;
            s.classes[c].requests += a.direct_requests(c);
        }
        let p = a.pages().lock();
        active_pages += p.heap.counts.active;
        dirty_pages += p.heap.counts.dirty;
        hugepage_pages += p.heap.counts.subrelease;
        clean_pages += p.heap.counts.clean;
        s.segments += p.heap.counts.segments;
        s.purged_pages += p.heap.counts.purged;
        if let Some(before) = expired_before {
            expired_pages += p.heap.dirty_freed_before(before);
        }
        if let Some(t) = p.heap.oldest_dirty() {
            oldest = oldest.min(t);
        }
        for l in 0..NUM_LARGE {
            out[NUM_SMALL + l] += p.large[l].live;
            if NUM_SMALL + l >= NUM_CACHED {
                s.classes[NUM_SMALL + l].requests += p.large[l].requests;
            }
        }
    }
    cache::for_each_live(|tc| {
        s.threads += 1;
        for c in 0..NUM_CACHED {
            s.classes[c].cached += tc.cached_seen(c);
            s.classes[c].requests += tc.bins[c].requests.load(Relaxed);
        }
        cache::for_each_remote(tc, |c| s.classes[c].cached += 1);
    });
    for (c, cs) in s.classes.iter_mut().enumerate() {
        if c < NUM_CACHED {
            cs.requests += cache::retired_requests(c);
        }
        cs.size = CLASSES[c].size as usize;
        cs.live = out[c].saturating_sub(cs.cached);
        s.allocated += cs.live * cs.size;
        s.tcache_cached += cs.cached * cs.size;
    }
    let headers = s.segments * HEADER_PAGES * PAGE_SIZE;
    let huge_mapped = huge::MAPPED.load(Relaxed);
    s.allocated += s.huge_allocated;
    s.active = active_pages * PAGE_SIZE + s.huge_allocated;
    s.dirty = dirty_pages * PAGE_SIZE + s.huge_cached;
    s.dirty_expired = expired_pages * PAGE_SIZE;
    s.dirty_hugepage = hugepage_pages * PAGE_SIZE;
    s.oldest_dirty_ms = if oldest == u64::MAX {
        0
    } else {
        now.saturating_sub(oldest)
    };
    s.empty_slab = empty_pages * PAGE_SIZE;
    s.cached = s.tcache_cached + s.empty_slab + s.huge_cached;
    s.metadata = headers + meta::mapped();
    s.mapped = s.segments * SEGMENT_SIZE + meta::mapped() + huge_mapped;
    s.retained = clean_pages * PAGE_SIZE;
    s.resident = (active_pages + dirty_pages) * PAGE_SIZE + s.metadata + huge_mapped;
    s
}

/// Bytes of our mappings the kernel backs with transparent huge pages: the `AnonHugePages` of
/// every VMA in `/proc/self/smaps` that holds one of our segments or the start of one of our
/// huge blocks. Reads the file with raw reads into a stack buffer; allocates nothing.
pub fn thp_resident() -> usize {
    let mut total = 0usize;
    let mut range = (0usize, 0usize);
    os::for_each_line(c"/proc/self/smaps", |line| {
        // A VMA's first line, `start-end perms ...`: its fields follow.
        if let Some(h) = smaps::header(line) {
            range = (h.start, h.end);
        } else if let Some(bytes) = smaps::field(line, b"AnonHugePages") {
            // Which VMAs are ours is only asked of those with huge pages.
            if bytes > 0 && is_ours(range.0, range.1) {
                total += bytes as usize;
            }
        }
    });
    total
}

/// Whether `[from, to)` overlaps one of our segments or holds a huge block's start.
fn is_ours(from: usize, to: usize) -> bool {
    if from >= to {
        return false;
    }
    let mut chunk = from & !(SEGMENT_SIZE - 1);
    while chunk < to {
        if registry::is_segment(chunk) {
            return true;
        }
        // A huge block's mapping starts at the chunk registered for it.
        if chunk >= from && !registry::lookup(chunk).is_null() {
            return true;
        }
        chunk += SEGMENT_SIZE;
    }
    false
}

/// Prints the statistics to file descriptor `fd` (for `stats_print:true` at exit).
pub fn print(fd: i32) {
    let s = Snapshot {
        thp_resident: thp_resident(),
        ..snapshot()
    };
    let emit = |l: &mut Line| {
        l.str("\n");
        crate::platform::os::write_fd(fd, l.as_bytes());
    };
    emit(Line::new().str("___ sampalloc statistics ___"));
    emit(
        Line::new()
            .field("allocated", s.allocated as u64)
            .field("active", s.active as u64)
            .field("resident", s.resident as u64)
            .field("mapped", s.mapped as u64)
            .field("retained", s.retained as u64)
            .field("metadata", s.metadata as u64)
            .field("thp_resident", s.thp_resident as u64),
    );
    emit(
        Line::new()
            .str("thp: ")
            .str(config::thp_name())
            .str("  kernel: ")
            .str(os::thp_mode_name())
            .str("  defrag: ")
            .str(os::thp_defrag_name())
            .str("  fork handlers: ")
            .str(if fork_guard::registered() {
                "registered"
            } else {
                "waiting for a second thread"
            }),
    );
    emit(
        Line::new()
            .field("arenas", s.narenas as u64)
            .field("shared arenas", s.shared_arenas as u64)
            .field("arenas used", s.arenas_used as u64)
            .field("threads", s.threads as u64)
            .field("segments", s.segments as u64)
            .field("dirty", s.dirty as u64)
            .field("purged pages", s.purged_pages)
            .str("  huge: ")
            .dec(s.huge_allocated as u64)
            .str(" live, ")
            .dec(s.huge_cached as u64)
            .str(" cached, ")
            .dec(s.huge_requests)
            .str(" requests"),
    );
    // One `key: value` pair per field (bytes unless named otherwise), for people and scripts.
    emit(
        Line::new()
            .str("held: dirty: ")
            .dec(s.dirty as u64)
            .field("dirty_expired", s.dirty_expired as u64)
            .field("dirty_hugepage", s.dirty_hugepage as u64)
            .field("oldest_dirty_ms", s.oldest_dirty_ms)
            .field("cached", s.cached as u64)
            .field("tcache_cached", s.tcache_cached as u64)
            .field("empty_slab", s.empty_slab as u64)
            .field("huge_cached", s.huge_cached as u64)
            .str("  decay_ms: ")
            .str(if s.decay_ms < 0 { "-" } else { "" })
            .dec(s.decay_ms.unsigned_abs()),
    );
    emit(Line::new().str("class      size     requests         live     cached    slabs    empty"));
    for (c, cs) in s.classes.iter().enumerate() {
        if cs.requests == 0 && cs.live == 0 {
            continue;
        }
        let mut l = Line::new();
        pad(&mut l, c as u64, 5);
        pad(&mut l, cs.size as u64, 10);
        pad(&mut l, cs.requests, 13);
        pad(&mut l, cs.live as u64, 13);
        pad(&mut l, cs.cached as u64, 11);
        pad(&mut l, cs.slabs as u64, 9);
        pad(&mut l, cs.empty_slabs as u64, 9);
        emit(&mut l);
    }
}

fn pad(l: &mut Line, v: u64, width: usize) {
    let mut digits = Line::new();
    digits.dec(v);
    for _ in digits.as_bytes().len()..width {
        l.str(" ");
    }
    l.bytes(digits.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_ranges_are_not_ours() {
        // A range nothing of ours was ever placed in (see the registry's tests).
        let a = 0x5c5c_0000_0000usize;
        assert!(!is_ours(a, a + (64 << 20)));
        assert!(!is_ours(a, a));
        registry::mark_segment(a + (8 << 20), 3);
        assert!(is_ours(a, a + (16 << 20)));
        assert!(!is_ours(a, a + (8 << 20)));
        registry::unmark_segment(a + (8 << 20));
    }
}
