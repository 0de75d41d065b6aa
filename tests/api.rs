//! The Rust API: `SampAlloc` as the global allocator of this test binary, so every allocation
//! of the test harness itself goes through the engine too.

use sampalloc::SampAlloc;
use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static GLOBAL: SampAlloc = SampAlloc;

#[test]
fn collections_work() {
    let mut v: Vec<String> = Vec::new();
    for i in 0..10_000 {
        v.push(format!("item {i}"));
    }
    let total: usize = v.iter().map(|s| s.len()).sum();
    assert!(total > 60_000);
    let mut m = std::collections::HashMap::new();
    for (i, s) in v.iter().enumerate() {
        m.insert(s.clone(), i);
    }
    assert_eq!(m["item 777"], 777);
}

#[test]
fn blocks_are_sized_aligned_and_distinct() {
    let mut seen = std::collections::HashSet::new();
    let mut blocks = Vec::new();
    for size in [
        0usize, 1, 15, 16, 17, 100, 1000, 5000, 20_000, 40_000, 300_000, 3_000_000,
    ] {
        for _ in 0..3 {
            let layout = Layout::from_size_align(size.max(1), 16).unwrap();
            // SAFETY: non-zero layout.
            let p = unsafe { GLOBAL.alloc(layout) };
            assert!(!p.is_null());
            assert_eq!(p as usize % 16, 0);
            // SAFETY: live block of ours.
            assert!(unsafe { sampalloc::usable_size(p) } >= size);
            assert!(seen.insert(p as usize));
            // SAFETY: the block is at least `size` bytes.
            unsafe { std::ptr::write_bytes(p, 0xab, size.max(1)) };
            blocks.push((p, layout));
        }
    }
    for (p, layout) in blocks {
        // SAFETY: allocated above with this layout.
        unsafe { GLOBAL.dealloc(p, layout) };
    }
}

/// A block freed with any first byte goes back to the cache: one whose byte is the free key's
/// (the fast path's double-free test) through the checked path, which reads the whole word.
/// (Aligned beyond the minimum, `dealloc` takes `free`'s path, with its checks.)
#[test]
fn blocks_with_any_first_byte_are_freed_and_reused() {
    let layout = Layout::from_size_align(64, 64).unwrap();
    // SAFETY: a non-zero layout; each block is written within its 64 bytes and freed once.
    let blocks: Vec<usize> = (0..512)
        .map(|i| unsafe {
            let p = GLOBAL.alloc(layout);
            assert!(!p.is_null());
            p.write_bytes(0x5a, 64);
            p.write((i % 256) as u8);
            p as usize
        })
        .collect();
    for &p in &blocks {
        // SAFETY: a live block of this layout.
        unsafe { GLOBAL.dealloc(p as *mut u8, layout) };
    }
    // SAFETY: as above.
    let again: std::collections::HashSet<usize> = (0..512)
        .map(|_| unsafe { GLOBAL.alloc(layout) } as usize)
        .collect();
    let back = blocks.iter().filter(|p| again.contains(p)).count();
    assert_eq!(back, 512, "every freed block came back from the cache");
    for p in again {
        // SAFETY: live blocks of this layout.
        unsafe { GLOBAL.dealloc(p as *mut u8, layout) };
    }
}

#[test]
fn alignments_up_to_a_segment() {
    let mut a = 32;
    while a <= 8 << 20 {
        for size in [1usize, a / 2 + 1, a, 3 * a + 5, 100_000] {
            let layout = Layout::from_size_align(size, a).unwrap();
            // SAFETY: non-zero layout.
            unsafe {
                let p = GLOBAL.alloc(layout);
                assert!(!p.is_null(), "size {size} align {a}");
                assert_eq!(p as usize % a, 0, "size {size} align {a}");
                std::ptr::write_bytes(p, 1, size);
                let z = GLOBAL.alloc_zeroed(layout);
                assert_eq!(z as usize % a, 0);
                assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                GLOBAL.dealloc(p, layout);
                GLOBAL.dealloc(z, layout);
            }
        }
        a *= 2;
    }
}

#[test]
fn impossible_request_returns_null() {
    let layout = Layout::from_size_align(isize::MAX as usize - 15, 16).unwrap();
    // SAFETY: a valid layout; null is an allowed answer.
    let p = unsafe { GLOBAL.alloc(layout) };
    assert!(p.is_null());
    let layout = Layout::from_size_align(isize::MAX as usize - 4095, 4096).unwrap();
    // SAFETY: as above.
    assert!(unsafe { GLOBAL.alloc(layout) }.is_null());
    // SAFETY: as above.
    assert!(unsafe { GLOBAL.alloc_zeroed(layout) }.is_null());
}

#[test]
fn realloc_keeps_contents_through_every_kind() {
    let layout = Layout::from_size_align(8, 8).unwrap();
    // SAFETY: each step passes the current size and a live pointer.
    unsafe {
        let mut p = GLOBAL.alloc(layout);
        let mut size = 8;
        *p = 42;
        for new_size in [
            24usize, 200, 4000, 30_000, 100_000, 2_500_000, 9_000_000, 50_000, 10,
        ] {
            let q = GLOBAL.realloc(p, Layout::from_size_align(size, 8).unwrap(), new_size);
            assert!(!q.is_null());
            assert_eq!(*q, 42, "contents lost growing to {new_size}");
            if new_size > 1 {
                *q.add(new_size - 1) = 7;
            }
            p = q;
            size = new_size;
        }
        GLOBAL.dealloc(p, Layout::from_size_align(size, 8).unwrap());
    }
}

/// Grows a block from 8 B to `max` by steps of about 1/8 through the C ABI's `realloc` (a
/// string builder), checking its contents at every step. Returns the block, its requested
/// size, and how many times it moved at sizes up to 2 KiB and above.
///
/// # Safety
/// The caller frees the block.
unsafe fn build_up(max: usize) -> (*mut u8, usize, usize, usize) {
    // SAFETY: each step passes a live pointer.
    unsafe {
        let mut n = 8usize;
        let mut p = sampalloc_core::malloc(n);
        p.write_bytes(0x5a, n);
        let (mut small_moves, mut big_moves) = (0, 0);
        while n < max {
            let old = n;
            n = (n + n / 8 + 1).min(max);
            let q = sampalloc_core::realloc(p, n);
            assert!(!q.is_null());
            assert!(
                (0..old).all(|i| *q.add(i) == 0x5a),
                "contents lost growing {old} -> {n}"
            );
            q.add(old).write_bytes(0x5a, n - old);
            if q != p {
                if n <= 2 << 10 {
                    small_moves += 1;
                } else {
                    big_moves += 1;
                }
            }
            p = q;
        }
        (p, n, small_moves, big_moves)
    }
}

/// Through the C ABI's `realloc` (the engine's, which the preload exports), a block built up
/// by steps of about 1/8 (a string builder) gets headroom from its second growth on, so it
/// moves about once per doubling up to 2 KiB (8 doublings), not once per size class (about
/// 30); past 2 KiB it moves once more, into a page run where it grows in place (before:
/// once per doubling up to 16 KiB, then into a page run: 4 moves). Shrinking a small block
/// to no less than half its size keeps it in place.
#[test]
fn c_realloc_gives_a_growing_block_headroom() {
    // SAFETY: blocks are freed once.
    unsafe {
        let (p, _, small_moves, big_moves) = build_up(64 << 10);
        assert!(
            small_moves <= 10,
            "a block grown by 1/8 steps moved {small_moves} times on its way to 2 KiB"
        );
        // Another thread may take the pages after the block; then it moves once more.
        assert!(
            big_moves <= 2,
            "a block grown by 1/8 steps moved {big_moves} times from 2 KiB to 64 KiB"
        );
        sampalloc_core::free(p);
        let p = sampalloc_core::malloc(4000);
        let q = sampalloc_core::realloc(p, 3000);
        assert_eq!(q, p, "shrinking a small block to 3/4 moved it");
        sampalloc_core::free(q);
    }
}

/// A block built up by small steps past 2 KiB keeps its headroom only while it grows:
/// trimmed to fit, even by a little, it gets the class of its size, so a built-up block that
/// is kept does not hold the headroom's pages.
#[test]
fn c_realloc_trims_a_built_up_block_to_its_class() {
    // SAFETY: each step passes a live pointer; blocks are freed once.
    unsafe {
        for (max, trimmed) in [(3000usize, 2900usize), (40_000, 30_000)] {
            let (p, n, _, _) = build_up(max);
            assert!(n == max && sampalloc_core::usable_size(p) > max);
            let q = sampalloc_core::realloc(p, trimmed);
            assert!((0..trimmed).all(|i| *q.add(i) == 0x5a));
            assert_eq!(
                sampalloc_core::usable_size(q),
                sampalloc_core::class_size(sampalloc_core::class_of(trimmed)),
                "a block built up to {max} and trimmed to {trimmed}"
            );
            sampalloc_core::free(q);
        }
    }
}

/// `SampAlloc::dealloc` frees by the layout's size (no metadata lookup), so its `realloc`
/// must leave a small block in exactly the class of the new size: no headroom, no shrinking
/// in place across classes.
#[test]
fn rust_realloc_keeps_the_class_of_the_new_size() {
    let layout = |n| Layout::from_size_align(n, 8).unwrap();
    // SAFETY: each step passes the current size and a live pointer.
    unsafe {
        let mut n = 8usize;
        let mut p = GLOBAL.alloc(layout(n));
        while n < 16 << 10 {
            let old = n;
            n += n / 8 + 1;
            p = GLOBAL.realloc(p, layout(old), n);
            assert!(!p.is_null());
            let class = sampalloc_core::class_of(n);
            assert_eq!(
                sampalloc_core::usable_size(p),
                sampalloc_core::class_size(class),
                "growing to {n}"
            );
        }
        let q = GLOBAL.realloc(p, layout(n), n * 3 / 4);
        assert_eq!(
            sampalloc_core::usable_size(q),
            sampalloc_core::class_size(sampalloc_core::class_of(n * 3 / 4))
        );
        GLOBAL.dealloc(q, layout(n * 3 / 4));
    }
}

#[test]
fn cross_thread_free_and_stats() {
    let blocks: Vec<Box<[u8; 64]>> = (0..10_000).map(|i| Box::new([i as u8; 64])).collect();
    std::thread::spawn(move || {
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(b[63], i as u8);
        }
        drop(blocks);
    })
    .join()
    .unwrap();
    let s = sampalloc::stats::snapshot();
    assert!(s.mapped > 0 && s.resident > 0 && s.metadata > 0);
    assert!(s
        .classes
        .iter()
        .any(|c| c.size == 64 && c.requests >= 10_000));
}

#[test]
fn configure_reports_bad_entries() {
    let err = sampalloc::configure("dirty_decay_ms:1000,bogus:3").unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].entry, "bogus:3");
    assert!(sampalloc::configure("dirty_decay_ms:1000").is_ok());
}
