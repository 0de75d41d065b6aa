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

/// Through the C ABI's `realloc` (the engine's, which the preload exports), a small block
/// built up by steps of about 1/8 (a string builder) gets headroom from its second growth on,
/// so it moves about once per doubling (8 B to 16 KiB: 11 doublings), not once per size class
/// (about 30 here). Its contents survive every move. Shrinking a small block to no less than
/// half its size keeps it in place.
#[test]
fn c_realloc_gives_a_growing_block_headroom() {
    // SAFETY: each step passes a live pointer; blocks are freed once.
    unsafe {
        let mut n = 8usize;
        let mut p = sampalloc_core::malloc(n);
        p.write_bytes(0x5a, n);
        let mut moves = 0;
        while n < 16 << 10 {
            let old = n;
            n += n / 8 + 1;
            let q = sampalloc_core::realloc(p, n);
            assert!(!q.is_null());
            assert!(
                (0..old).all(|i| *q.add(i) == 0x5a),
                "contents lost growing {old} -> {n}"
            );
            q.add(old).write_bytes(0x5a, n - old);
            moves += usize::from(q != p);
            p = q;
        }
        assert!(
            moves <= 14,
            "a block grown by 1/8 steps moved {moves} times on its way to 16 KiB"
        );
        sampalloc_core::free(p);
        let p = sampalloc_core::malloc(4000);
        let q = sampalloc_core::realloc(p, 3000);
        assert_eq!(q, p, "shrinking a small block to 3/4 moved it");
        sampalloc_core::free(q);
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
