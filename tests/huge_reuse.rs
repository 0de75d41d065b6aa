//! Freed huge blocks serve later requests of other sizes without new mappings: a smaller
//! request takes the front of a larger cached mapping (the rest stays cached), a larger one
//! grows a smaller cached mapping. A loop over multi-MiB buffers of random sizes otherwise
//! faults every buffer in again (issue 13).
//!
//! The engine's counters tell: `mapped` (bytes mapped, all kinds) must not rise when a request
//! is served from the cache, and `huge_cached` must fall by what the request took. The tests
//! take a static lock so that one's frees do not feed another's requests.

mod common;

use common::Rng;
use sampalloc::stats::snapshot;
use sampalloc::SampAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: SampAlloc = SampAlloc;

const MIB: usize = 1 << 20;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 16).expect("layout")
}

/// Allocates `size` bytes and writes every page (so the pages are resident).
fn alloc(size: usize, tag: u8) -> *mut u8 {
    // SAFETY: a non-zero size.
    let p = unsafe { GLOBAL.alloc(layout(size)) };
    assert!(!p.is_null());
    for k in (0..size).step_by(4096) {
        // SAFETY: inside the block.
        unsafe { p.add(k).write(tag) };
    }
    p
}

fn check_and_free(p: *mut u8, size: usize, tag: u8) {
    for k in (0..size).step_by(4096) {
        // SAFETY: inside the block.
        let got = unsafe { p.add(k).read() };
        assert_eq!(got, tag, "block {p:p} overwritten at {k}");
    }
    // SAFETY: allocated by `alloc` with this size.
    unsafe { GLOBAL.dealloc(p, layout(size)) };
}

/// Leaves a cached mapping of `size` bytes, its pages resident: a block allocated, written
/// whole and freed.
fn cache_a_mapping(size: usize, tag: u8) {
    let p = alloc(size, tag);
    check_and_free(p, size, tag);
}

/// Frees everything cached and returns the engine's counters then.
fn clean() -> sampalloc::stats::Snapshot {
    sampalloc::purge(true);
    let s = snapshot();
    assert_eq!(s.huge_cached, 0, "purge left huge blocks cached: {s:?}");
    s
}

#[test]
fn smaller_request_takes_part_of_a_larger_cached_block() {
    let _serial = serial();
    let base = clean();
    cache_a_mapping(24 * MIB, 1);
    let freed = snapshot();
    assert!(
        freed.huge_cached >= 24 * MIB,
        "the freed block was not cached: {freed:?}"
    );
    let b = alloc(10 * MIB, 2);
    let reused = snapshot();
    assert!(
        reused.mapped <= freed.mapped,
        "a 10 MiB request after freeing 24 MiB mapped {} bytes more",
        reused.mapped - freed.mapped
    );
    assert_eq!(reused.huge_requests, freed.huge_requests + 1);
    // The block took the front (10 MiB, rounded up to 4 MiB chunks); the rest
    // is still cached, for the next request.
    assert_eq!(
        freed.huge_cached - reused.huge_cached,
        12 * MIB,
        "{freed:?} -> {reused:?}"
    );
    // A second request fits in the rest.
    let c = alloc(8 * MIB, 3);
    let again = snapshot();
    assert!(again.mapped <= freed.mapped, "{freed:?} -> {again:?}");
    check_and_free(b, 10 * MIB, 2);
    check_and_free(c, 8 * MIB, 3);
    let end = clean();
    assert_eq!(end.huge_allocated, base.huge_allocated);
}

#[test]
fn larger_request_grows_a_smaller_cached_block() {
    let _serial = serial();
    clean();
    cache_a_mapping(6 * MIB, 4);
    let freed = snapshot();
    let b = alloc(20 * MIB, 5);
    let grown = snapshot();
    // The cached 6 MiB mapping was grown to 20 MiB: nothing left cached, and
    // 14 MiB more mapped, not 20 MiB (`mapped` counts all kinds: allow a fresh 4 MiB segment
    // for the test thread's small blocks).
    assert_eq!(grown.huge_cached, 0, "{grown:?}");
    assert!(
        grown.mapped <= freed.mapped + 18 * MIB,
        "a 20 MiB request after freeing 6 MiB mapped {} MiB more",
        (grown.mapped - freed.mapped) / MIB
    );
    check_and_free(b, 20 * MIB, 5);
    clean();
}

#[test]
fn zeroed_request_from_the_cache_reads_zero() {
    let _serial = serial();
    clean();
    cache_a_mapping(16 * MIB, 0xa5);
    let l = layout(12 * MIB);
    // SAFETY: a non-zero size.
    let p = unsafe { GLOBAL.alloc_zeroed(l) };
    assert!(!p.is_null());
    // SAFETY: a live block of `l.size()` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(p, l.size()) };
    assert!(
        bytes.iter().all(|&b| b == 0),
        "a zeroed block held old data"
    );
    // SAFETY: allocated above with `l`.
    unsafe { GLOBAL.dealloc(p, l) };
    clean();
}

/// A block freed next to the cached rest of the mapping it was cut from makes that mapping
/// whole again: a request larger than either piece is then served without new pages.
#[test]
fn a_block_freed_beside_the_rest_of_its_mapping_is_merged_with_it() {
    let _serial = serial();
    clean();
    cache_a_mapping(24 * MIB, 8);
    // The front 8 MiB (6 MiB rounded up to a chunk) for `b`; 16 MiB stay cached.
    cache_a_mapping(6 * MIB, 9);
    let freed = snapshot();
    assert_eq!(freed.huge_cached, 24 * MIB, "{freed:?}");
    // Neither 8 nor 16 MiB holds 20 MiB: without the merge, the 16 MiB piece would grow.
    let c = alloc(20 * MIB, 10);
    let reused = snapshot();
    assert_eq!(
        reused.huge_mapped, freed.huge_mapped,
        "a 20 MiB request mapped more after 24 MiB were freed in two pieces: {freed:?} -> \
         {reused:?}"
    );
    // The merged 24 MiB were cut after the block's 20 MiB.
    assert_eq!(reused.huge_cached, 4 * MIB, "{reused:?}");
    check_and_free(c, 20 * MIB, 10);
    clean();
}

/// A block cut from the front of a cached mapping grows in place into the cached rest: no new
/// mapping, no move, and its pages stay where they are.
#[test]
fn a_block_grows_in_place_into_the_cached_rest_of_its_mapping() {
    let _serial = serial();
    clean();
    cache_a_mapping(24 * MIB, 13);
    let b = alloc(4 * MIB, 14);
    let cut = snapshot();
    assert_eq!(cut.huge_cached, 20 * MIB, "{cut:?}");
    // SAFETY: `b` was allocated by `alloc` with this layout; a non-zero size.
    let c = unsafe { GLOBAL.realloc(b, layout(4 * MIB), 14 * MIB) };
    let grown = snapshot();
    assert_eq!(
        c, b,
        "the block moved instead of growing into the cached rest"
    );
    assert_eq!(grown.huge_mapped, cut.huge_mapped, "{cut:?} -> {grown:?}");
    // 10 MiB more, taken in whole 4 MiB chunks: 12 MiB of the 20.
    assert_eq!(grown.huge_cached, 8 * MIB, "{grown:?}");
    for k in (0..4 * MIB).step_by(4096) {
        // SAFETY: inside the block.
        assert_eq!(unsafe { c.add(k).read() }, 14, "lost at {k}");
    }
    // SAFETY: as above, now 14 MiB long.
    unsafe { GLOBAL.dealloc(c, layout(14 * MIB)) };
    clean();
}

/// Whether the kernel gives transparent huge pages at all (`never` mode: no).
fn kernel_thp() -> bool {
    let mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    !mode.is_empty() && !mode.contains("[never]")
}

/// A huge block's header lives in metadata memory, so a block of whole huge pages maps nothing
/// more (a 4 MiB block takes two huge pages, not a third for a header page), and where huge
/// pages are asked for (`thp:always` here, unless the kernel's mode is `never`) a block that
/// ends partway into one is mapped to its end: that tail is not faulted in 4 KiB at a time.
#[test]
fn huge_blocks_map_whole_huge_pages_and_no_header_page() {
    let _serial = serial();
    sampalloc::configure("thp:always").expect("thp:always");
    let base = clean();
    let a = alloc(4 * MIB, 11);
    let one = snapshot();
    assert_eq!(one.huge_mapped - base.huge_mapped, 4 * MIB, "{one:?}");
    let b = alloc(5 * MIB, 12);
    let two = snapshot();
    let mapped = if kernel_thp() { 6 * MIB } else { 5 * MIB };
    assert_eq!(two.huge_mapped - one.huge_mapped, mapped, "{two:?}");
    check_and_free(a, 4 * MIB, 11);
    check_and_free(b, 5 * MIB, 12);
    clean();
    sampalloc::configure("thp:auto").expect("thp:auto");
}

/// A live block of the stress test: every page's first byte and the last byte carry its tag.
struct Tagged {
    p: *mut u8,
    size: usize,
    align: usize,
    tag: u8,
}

impl Tagged {
    fn new(rng: &mut Rng, tag: u8) -> Tagged {
        let size = rng.range((2 << 20) + 1, 30 << 20);
        let align = if rng.below(8) == 0 { 8 << 20 } else { 16 };
        let l = Layout::from_size_align(size, align).expect("layout");
        // SAFETY: a non-zero size.
        let p = unsafe { GLOBAL.alloc(l) };
        assert!(
            !p.is_null() && (p as usize).is_multiple_of(align),
            "{p:p} for {l:?}"
        );
        let b = Tagged {
            p,
            size,
            align,
            tag,
        };
        b.write(0, size);
        b
    }

    /// The tagged offsets of the block's first `size` bytes past `from`: page starts, and the
    /// last byte.
    fn offsets(from: usize, size: usize) -> impl Iterator<Item = usize> {
        (from.next_multiple_of(4096)..size)
            .step_by(4096)
            .chain((size > from).then(|| size - 1))
    }

    fn write(&self, from: usize, size: usize) {
        for k in Tagged::offsets(from, size) {
            // SAFETY: inside the block.
            unsafe { self.p.add(k).write(self.tag) };
        }
    }

    /// Checks the tags the block had at `size` bytes, up to `to` bytes.
    fn check(&self, size: usize, to: usize) {
        for k in Tagged::offsets(0, size).filter(|&k| k < to) {
            // SAFETY: inside the block.
            let got = unsafe { self.p.add(k).read() };
            assert_eq!(
                got, self.tag,
                "block {:p} of {size} B changed at {k}",
                self.p
            );
        }
    }

    fn realloc(&mut self, rng: &mut Rng) {
        let size = rng.range((2 << 20) + 1, 30 << 20);
        let l = Layout::from_size_align(self.size, self.align).expect("layout");
        // SAFETY: allocated with `l`; a non-zero size.
        let q = unsafe { GLOBAL.realloc(self.p, l, size) };
        assert!(!q.is_null());
        self.p = q;
        self.check(self.size, size);
        self.size = size;
        self.align = 16;
        // Every tag again: the block's last byte moved.
        self.write(0, size);
    }

    fn free(self) {
        self.check(self.size, self.size);
        let l = Layout::from_size_align(self.size, self.align).expect("layout");
        // SAFETY: allocated with `l`.
        unsafe { GLOBAL.dealloc(self.p, l) };
    }
}

/// Two threads allocate, reallocate and free huge blocks of random sizes (some aligned to
/// 8 MiB) through the shared cache, so that cached mappings are cut, merged, grown and moved
/// under one another: no block's contents change, and everything cached goes back at the end.
#[test]
fn threads_share_the_cache_without_losing_contents() {
    let _serial = serial();
    let base = clean();
    let stop_at = Instant::now() + Duration::from_secs(2);
    let rounds: Vec<usize> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2u8)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = Rng::new(0x5eed + t as u64);
                    let mut live: Vec<Tagged> = Vec::new();
                    let mut steps = 0;
                    while steps < 1000 && Instant::now() < stop_at {
                        let tag = (steps % 251) as u8 + 1;
                        match rng.below(4) {
                            0 if !live.is_empty() => {
                                let i = rng.below(live.len());
                                live[i].realloc(&mut rng);
                            }
                            1 | 2 if live.len() > 3 => {
                                let i = rng.below(live.len());
                                live.swap_remove(i).free();
                            }
                            _ => live.push(Tagged::new(&mut rng, tag)),
                        }
                        steps += 1;
                    }
                    for b in live {
                        b.free();
                    }
                    steps
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    assert!(
        rounds.iter().all(|&n| n >= 20),
        "too few steps ran: {rounds:?}"
    );
    let end = clean();
    assert_eq!(end.huge_allocated, base.huge_allocated, "{end:?}");
    assert_eq!(end.huge_mapped, base.huge_mapped, "{end:?}");
}
