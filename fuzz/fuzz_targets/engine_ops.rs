//! Drives the engine's entry points with a sequence of decoded actions and checks, for every
//! live block: its alignment, `usable_size >= size`, that no two blocks overlap, that its
//! contents (a fill byte per block, over the whole usable size) survive until `realloc`/`free`,
//! that `realloc` keeps the old contents, and that zeroed allocations are zero.
//!
//! Sizes are mostly small, sometimes around the class boundaries, rarely up to a few MiB; the
//! live set is capped in count and bytes so each input runs fast. Sampling can be switched on
//! (down to every allocation), so sampled blocks (inside larger ones, with their stand-ins, or
//! on pages of their own) meet `realloc`, `free` and each other. Every input frees what it
//! allocated and switches sampling off, so inputs are independent.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sampalloc_core as engine;
use std::collections::BTreeMap;

const MAX_LIVE: usize = 256;
const MAX_LIVE_BYTES: usize = 48 << 20;
const MIN_ALIGN: usize = 16;

/// Sizes where the engine changes path (alloc-core/src/base/size_class.rs): the quantum, a
/// cache line, a page; the largest small class and the first large one (`SMALL_MAX`: 16 KiB,
/// 20 KiB); `CACHED_LARGE_MIN` and the class after it (32 KiB, 40 KiB: above it a thread cache
/// holds one or two blocks of a class); the largest cached class and the first uncached one
/// (`class_size(NUM_CACHED - 1)`: 256 KiB, 320 KiB); 1 MiB; the largest class, above which
/// blocks are huge (`LARGE_MAX`: 2 MiB); a registry chunk (4 MiB) and a page past it.
const BOUNDARIES: [usize; 14] = [
    0,
    16,
    64,
    4096,
    16 << 10,
    20 << 10,
    32 << 10,
    40 << 10,
    256 << 10,
    320 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
    (4 << 20) + 4096,
];

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    /// 0..=255 bytes.
    Tiny(u8),
    /// 0..=4095 bytes.
    Small(u16),
    /// 0..=65535 bytes.
    Medium(u16),
    /// A boundary plus or minus a little.
    Boundary(u8, i8),
    /// Up to about 5 MiB.
    Big(u32),
}

impl Size {
    fn bytes(self) -> usize {
        match self {
            Size::Tiny(n) => n as usize,
            Size::Small(n) => n as usize % 4096,
            Size::Medium(n) => n as usize,
            Size::Boundary(i, d) => {
                let b = BOUNDARIES[i as usize % BOUNDARIES.len()];
                b.saturating_add_signed(d as isize)
            }
            Size::Big(n) => n as usize % (5 << 20),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Action {
    Alloc {
        size: Size,
        align_log: u8,
    },
    AllocZeroed {
        size: Size,
        align_log: u8,
    },
    Free {
        idx: u16,
    },
    /// A free that states the block's size, as C++ sized `delete` does: its own size, or
    /// (`wrong`) any other, which must do no harm.
    FreeWithSize {
        idx: u16,
        wrong: Option<Size>,
    },
    Realloc {
        idx: u16,
        new_size: Size,
    },
    UsableSize {
        idx: u16,
    },
    Purge {
        all: bool,
    },
    FlushCache,
    /// Sampling on, one sample per `2^(lg % 20)` bytes on average (0: every allocation), or off.
    Sampling {
        on: bool,
        lg: u8,
    },
}

/// Switches the profiler's sampling on (one sample per `2^lg` bytes on average) or off.
fn set_sampling(on: bool, lg: u8) {
    let lg = (lg % 20).to_string();
    engine::config::set(b"lg_prof_sample", lg.as_bytes()).expect("lg_prof_sample");
    engine::config::set(b"prof", if on { b"true" } else { b"false" }).expect("prof");
}

/// The alignment an action asks for: usually none (plain `malloc`), else up to 4 MiB.
fn alignment(align_log: u8) -> Option<usize> {
    if align_log < 160 {
        None
    } else {
        Some(1 << ((align_log - 160) % 23))
    }
}

/// The offset of the first byte of `bytes` that is not `value`. Compares 4 KiB chunks with
/// `==` (a `memcmp`, which the sanitizer checks in bulk) so multi-MiB blocks stay cheap.
fn first_not(bytes: &[u8], value: u8) -> Option<usize> {
    let pattern = [value; 4096];
    for (n, chunk) in bytes.chunks(pattern.len()).enumerate() {
        if chunk != &pattern[..chunk.len()] {
            let i = chunk
                .iter()
                .position(|&x| x != value)
                .expect("a differing byte");
            return Some(n * pattern.len() + i);
        }
    }
    None
}

struct Block {
    ptr: *mut u8,
    size: usize,
    usable: usize,
    fill: u8,
}

struct State {
    live: Vec<Block>,
    /// start -> end of every live block's usable range, to catch overlaps.
    ranges: BTreeMap<usize, usize>,
    bytes: usize,
    next_fill: u8,
}

impl State {
    fn fill_byte(&mut self) -> u8 {
        self.next_fill = self.next_fill % 254 + 1; // 1..=254: never 0, never the same twice in a row
        self.next_fill
    }

    /// Records a fresh block after checking alignment, usable size and overlap, and fills it.
    fn add(&mut self, ptr: *mut u8, size: usize, align: usize, zeroed: bool) {
        assert!(!ptr.is_null(), "allocation of {size} bytes failed");
        assert_eq!(
            ptr as usize % align,
            0,
            "{ptr:p} ({size} B) not aligned to {align}"
        );
        // SAFETY: a live block of the engine.
        let usable = unsafe { engine::usable_size(ptr) };
        assert!(
            usable >= size,
            "usable_size {usable} < size {size} at {ptr:p}"
        );
        let start = ptr as usize;
        let end = start + usable;
        if let Some((&s, &e)) = self.ranges.range(..end).next_back() {
            assert!(
                e <= start,
                "{ptr:p}+{usable} overlaps live block {s:#x}..{e:#x}"
            );
        }
        if zeroed {
            // SAFETY: `size` bytes of a live block.
            let bytes = unsafe { std::slice::from_raw_parts(ptr, size) };
            if let Some(i) = first_not(bytes, 0) {
                panic!(
                    "zeroed block {ptr:p} ({size} B) has {:#x} at offset {i}",
                    bytes[i]
                );
            }
        }
        let fill = self.fill_byte();
        // SAFETY: the whole usable size of a live block may be written.
        unsafe { std::ptr::write_bytes(ptr, fill, usable) };
        self.ranges.insert(start, end);
        self.bytes += usable;
        self.live.push(Block {
            ptr,
            size,
            usable,
            fill,
        });
    }

    /// Checks the first `len` bytes of a block hold its fill byte.
    fn check(b: &Block, len: usize, when: &str) {
        // SAFETY: `len` is at most the usable size of the live block.
        let bytes = unsafe { std::slice::from_raw_parts(b.ptr, len) };
        if let Some(i) = first_not(bytes, b.fill) {
            panic!(
                "{when}: block {:p} ({} B, usable {}) has {:#x} at offset {i}, expected {:#x}",
                b.ptr, b.size, b.usable, bytes[i], b.fill
            );
        }
    }

    fn remove(&mut self, i: usize) -> Block {
        let b = self.live.swap_remove(i);
        self.ranges.remove(&(b.ptr as usize));
        self.bytes -= b.usable;
        b
    }

    fn room_for(&self, size: usize) -> bool {
        self.live.len() < MAX_LIVE && self.bytes + size <= MAX_LIVE_BYTES
    }

    fn alloc(&mut self, size: Size, align_log: u8, zero: bool) {
        let size = size.bytes();
        if !self.room_for(size) {
            return;
        }
        let (ptr, align) = match alignment(align_log) {
            None if zero => (engine::malloc_zeroed(size), MIN_ALIGN),
            None => (engine::malloc(size), MIN_ALIGN),
            Some(a) => (engine::alloc_aligned(a, size, zero), a.max(MIN_ALIGN)),
        };
        self.add(ptr, size, align, zero);
    }

    fn free(&mut self, idx: u16) {
        if self.live.is_empty() {
            return;
        }
        let b = self.remove(idx as usize % self.live.len());
        Self::check(&b, b.usable, "free");
        // SAFETY: a live block of the engine, dropped from the table.
        unsafe { engine::free(b.ptr) };
    }

    fn free_with_size(&mut self, idx: u16, wrong: Option<Size>) {
        if self.live.is_empty() {
            return;
        }
        let b = self.remove(idx as usize % self.live.len());
        Self::check(&b, b.usable, "free_with_size");
        let stated = wrong.map_or(b.size, Size::bytes);
        // SAFETY: a live block of the engine, dropped from the table.
        unsafe { engine::free_with_size(b.ptr, stated, engine::Op::Delete) };
    }

    fn realloc(&mut self, idx: u16, new_size: Size) {
        if self.live.is_empty() {
            return;
        }
        let new_size = new_size.bytes();
        let i = idx as usize % self.live.len();
        if !self.room_for(new_size) && new_size > self.live[i].usable {
            return;
        }
        let old = self.remove(i);
        Self::check(&old, old.usable, "realloc (before)");
        // SAFETY: a live block of the engine; on success it is not used again.
        let q = unsafe { engine::realloc(old.ptr, new_size) };
        assert!(
            !q.is_null(),
            "realloc of {:p} to {new_size} B failed",
            old.ptr
        );
        // The engine copies the old usable bytes that fit; C only promises the requested ones.
        let kept = old.usable.min(new_size);
        let moved = Block {
            ptr: q,
            size: new_size,
            usable: kept,
            fill: old.fill,
        };
        Self::check(&moved, kept, "realloc (after)");
        // realloc promises only the default alignment, whatever the block had before.
        self.add(q, new_size, MIN_ALIGN, false);
    }

    fn usable_size(&mut self, idx: u16) {
        if self.live.is_empty() {
            return;
        }
        let b = &self.live[idx as usize % self.live.len()];
        // SAFETY: a live block of the engine.
        let usable = unsafe { engine::usable_size(b.ptr) };
        assert_eq!(usable, b.usable, "usable_size of {:p} changed", b.ptr);
        Self::check(b, b.usable, "usable_size");
    }
}

fuzz_target!(|actions: Vec<Action>| {
    let mut st = State {
        live: Vec::new(),
        ranges: BTreeMap::new(),
        bytes: 0,
        next_fill: 0,
    };
    for a in actions {
        match a {
            Action::Alloc { size, align_log } => st.alloc(size, align_log, false),
            Action::AllocZeroed { size, align_log } => st.alloc(size, align_log, true),
            Action::Free { idx } => st.free(idx),
            Action::FreeWithSize { idx, wrong } => st.free_with_size(idx, wrong),
            Action::Realloc { idx, new_size } => st.realloc(idx, new_size),
            Action::UsableSize { idx } => st.usable_size(idx),
            Action::Purge { all } => {
                engine::purge(all);
            }
            Action::FlushCache => engine::flush_thread_cache(),
            Action::Sampling { on, lg } => set_sampling(on, lg),
        }
    }
    while !st.live.is_empty() {
        st.free(0);
    }
    set_sampling(false, 19);
});
