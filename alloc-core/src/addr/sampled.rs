//! Sampled small blocks that stay in their slabs: their records by address, and the page marks
//! that send their frees to the checked path.
//!
//! A sampled small block is an ordinary block of its slab. Its page's fast-path code (see
//! `segment`) is set to 0 while any sampled block starts on that page, so `free` of any block
//! there takes the checked path, which asks this table whether the block is sampled. The
//! record is found in O(1) (open addressing by address), and the block costs no page of its own.
//! A sampled page's other blocks pay the checked path while the sample lives; at the default
//! interval that is a few pages in thousands.
//!
//! Everything about a page happens under one lock, also the lookups of the checked path, and
//! also the page's mark: it is set by the first sample on the page and cleared by the last
//! one's free, so marking and clearing must not interleave. Pages are spread over [`SHARDS`]
//! shards, each with its own lock and tables: with one lock, two threads sampling and freeing
//! contended for it. A shard's tables grow by doubling, from 256 slots up to
//! [`CAPACITY`]` / SHARDS` live blocks; past that, or when memory cannot be mapped, [`insert`]
//! fails and the caller serves the sample from pages of its own, as for large blocks.

use super::segment::{SampleRecord, Segment, PAGES_PER_SEGMENT};
use crate::platform::lock::Locked;
use crate::platform::os::{self, PAGE_SHIFT};
use core::ptr;

/// Live sampled small blocks the table holds at most (8 GiB of small blocks at the default
/// interval of 512 KiB).
pub const CAPACITY: usize = 1 << 14;

/// Slots of a table when it is first needed.
const FIRST_SLOTS: usize = 256;

/// Shards, each a lock and its tables; a page belongs to one.
pub const SHARDS: usize = 16;

/// One block's entry: its address (0: empty) and its record.
#[derive(Clone, Copy)]
#[repr(C)]
struct BlockSlot {
    addr: usize,
    record: SampleRecord,
}

/// One marked page's entry: its address (0: empty), how many sampled blocks start on it, and
/// the fast-path code to give it back when the last one is freed.
#[derive(Clone, Copy)]
#[repr(C)]
struct PageSlot {
    page: usize,
    count: u32,
    code: u8,
}

/// An open-addressing table with linear probing and backward-shift deletion (no tombstones:
/// every access holds the lock), in memory mapped from the kernel.
struct Open<S: Copy> {
    slots: *mut S,
    /// A power of two, or 0 before the first insert.
    len: usize,
    live: usize,
}

/// What a slot type tells the table: its key (0: empty).
trait Keyed: Copy {
    fn key(&self) -> usize;
}

impl Keyed for BlockSlot {
    fn key(&self) -> usize {
        self.addr
    }
}

impl Keyed for PageSlot {
    fn key(&self) -> usize {
        self.page
    }
}

impl<S: Keyed> Open<S> {
    const fn new() -> Self {
        Open {
            slots: ptr::null_mut(),
            len: 0,
            live: 0,
        }
    }

    fn home(&self, key: usize) -> usize {
        // Fibonacci hashing of the address without its always-zero low bits.
        ((key >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) & (self.len - 1)
    }

    /// The slot holding `key`, if any.
    fn find(&self, key: usize) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mut i = self.home(key);
        loop {
            // SAFETY: `i < len`, the mapped length; slots are initialised (zero is empty).
            let k = unsafe { (*self.slots.add(i)).key() };
            if k == key {
                return Some(i);
            }
            if k == 0 {
                return None;
            }
            i = (i + 1) & (self.len - 1);
        }
    }

    /// A pointer to the entry for `key`.
    fn get(&mut self, key: usize) -> Option<*mut S> {
        // SAFETY: `find` returns an index in bounds.
        self.find(key).map(|i| unsafe { self.slots.add(i) })
    }

    /// Inserts `slot` (its key not present). False when the table is at `max` live entries or
    /// cannot grow.
    fn insert(&mut self, slot: S, max: usize) -> bool {
        if self.live >= max || (self.live + 1) * 2 > self.len && !self.grow() {
            return false;
        }
        let mut i = self.home(slot.key());
        // SAFETY: the table is at most half full, so an empty slot exists; indexes in bounds.
        unsafe {
            while (*self.slots.add(i)).key() != 0 {
                i = (i + 1) & (self.len - 1);
            }
            self.slots.add(i).write(slot);
        }
        self.live += 1;
        true
    }

    /// Removes the entry at slot `i`, moving back the entries of its probe run that may no
    /// longer be reached past the hole.
    fn remove_at(&mut self, mut i: usize) {
        let mask = self.len - 1;
        let mut j = i;
        // SAFETY: every index is masked into bounds.
        unsafe {
            loop {
                j = (j + 1) & mask;
                let s = *self.slots.add(j);
                if s.key() == 0 {
                    break;
                }
                let home = self.home(s.key());
                // `s` stays if its home lies cyclically in (i, j].
                let stays = if i <= j {
                    i < home && home <= j
                } else {
                    i < home || home <= j
                };
                if !stays {
                    self.slots.add(i).write(s);
                    i = j;
                }
            }
            ptr::write_bytes(self.slots.add(i), 0, 1);
        }
        self.live -= 1;
    }

    /// Doubles the table (or maps its first slots). False when memory cannot be mapped.
    fn grow(&mut self) -> bool {
        let new_len = if self.len == 0 {
            FIRST_SLOTS
        } else {
            self.len * 2
        };
        let fresh = os::map(new_len * core::mem::size_of::<S>()).cast::<S>();
        if fresh.is_null() {
            return false;
        }
        let (old, old_len) = (self.slots, self.len);
        self.slots = fresh;
        self.len = new_len;
        self.live = 0;
        for i in 0..old_len {
            // SAFETY: `old` held `old_len` initialised slots; fresh memory reads as empty.
            let s = unsafe { *old.add(i) };
            if s.key() != 0 {
                self.insert(s, usize::MAX);
            }
        }
        if !old.is_null() {
            // SAFETY: the old slots were mapped with this size and are no longer referenced.
            unsafe { os::unmap(old.cast(), old_len * core::mem::size_of::<S>()) };
        }
        true
    }
}

struct Tables {
    blocks: Open<BlockSlot>,
    pages: Open<PageSlot>,
}

// SAFETY: the tables' memory is only touched with the lock held.
unsafe impl Send for Tables {}

static TABLES: [Locked<Tables>; SHARDS] = [const {
    Locked::new(Tables {
        blocks: Open::new(),
        pages: Open::new(),
    })
}; SHARDS];

/// The shard of the page starting at `page`.
fn shard(page: usize) -> &'static Locked<Tables> {
    &TABLES[(page >> PAGE_SHIFT).wrapping_mul(0x9E37_79B9) >> 7 & (SHARDS - 1)]
}

/// The page `p` starts on: its segment and index.
fn page_of(p: usize) -> (*mut Segment, usize) {
    (Segment::of(p), (p >> PAGE_SHIFT) & (PAGES_PER_SEGMENT - 1))
}

/// Records `record` for the sampled small block `p`, a live block of a slab whose pages have
/// fast-path code `code`, and marks `p`'s page. False when the table is full or cannot grow:
/// the block is then an ordinary unsampled block, and the caller gives the sample a page of
/// its own instead.
///
/// # Safety
/// `p` must be a live block of a live slab, owned by the caller, and not recorded here.
pub unsafe fn insert(p: *mut u8, record: SampleRecord, code: u8) -> bool {
    let p = p as usize;
    let page = p & !((1 << PAGE_SHIFT) - 1);
    let mut t = shard(page).lock();
    let marked = match t.pages.get(page) {
        Some(s) => {
            // SAFETY: a slot of the table, under its lock.
            unsafe { (*s).count += 1 };
            true
        }
        None => false,
    };
    if !marked
        && !t.pages.insert(
            PageSlot {
                page,
                count: 1,
                code,
            },
            CAPACITY / SHARDS,
        )
    {
        return false;
    }
    if !t
        .blocks
        .insert(BlockSlot { addr: p, record }, CAPACITY / SHARDS)
    {
        release_page(&mut t, page);
        return false;
    }
    if !marked {
        let (seg, index) = page_of(p);
        // SAFETY: the page holds a live block of a live slab; marks change under this lock.
        unsafe { Segment::set_fast_class(seg, index, 1, 0) };
    }
    true
}

/// One sampled block fewer on `page`: its entry goes when it was the last, and the page gets
/// its code back.
fn release_page(t: &mut Tables, page: usize) {
    let Some(i) = t.pages.find(page) else { return };
    // SAFETY: `i` is a slot of the table, under its lock.
    let s = unsafe { &mut *t.pages.slots.add(i) };
    s.count -= 1;
    if s.count == 0 {
        let code = s.code;
        t.pages.remove_at(i);
        let (seg, index) = page_of(page);
        // SAFETY: the caller still owns a live block on this page, so its slab is live.
        unsafe { Segment::set_fast_class(seg, index, 1, code) };
    }
}

/// If `p` is a sampled block recorded here, forgets it (unmarking its page when it was the
/// page's last) and returns its record. For the checked path of `free` on a marked page.
///
/// # Safety
/// `p` must be a live block of a slab, owned by the caller (being freed).
pub unsafe fn take(p: *mut u8) -> Option<SampleRecord> {
    let p = p as usize;
    let page = p & !((1 << PAGE_SHIFT) - 1);
    let mut t = shard(page).lock();
    let i = t.blocks.find(p)?;
    // SAFETY: `i` is a slot of the table, under its lock.
    let record = unsafe { (*t.blocks.slots.add(i)).record };
    t.blocks.remove_at(i);
    release_page(&mut t, page);
    Some(record)
}

/// The record of `p` if it is a sampled block recorded here.
#[cfg(test)]
pub fn record_of(p: *mut u8) -> Option<SampleRecord> {
    let mut t = shard(p as usize & !((1 << PAGE_SHIFT) - 1)).lock();
    // SAFETY: a slot of the table, under its lock.
    t.blocks.get(p as usize).map(|s| unsafe { (*s).record })
}

/// Sampled small blocks recorded now, and pages marked.
#[cfg(test)]
pub fn live() -> (usize, usize) {
    TABLES.iter().fold((0, 0), |(b, p), s| {
        let t = s.lock();
        (b + t.blocks.live, p + t.pages.live)
    })
}

/// Fork: take the locks (in shard order) before `fork`.
pub fn prefork() {
    TABLES.iter().for_each(|s| s.raw_lock());
}

/// Fork: release in the parent.
pub fn postfork_parent() {
    // SAFETY: taken in `prefork` by this thread.
    TABLES.iter().rev().for_each(|s| unsafe { s.raw_unlock() });
}

/// Fork: reset in the child.
pub fn postfork_child() {
    TABLES.iter().for_each(|s| s.reset_after_fork());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy)]
    #[repr(C)]
    struct Key(usize);
    impl Keyed for Key {
        fn key(&self) -> usize {
            self.0
        }
    }

    /// Inserts and removes many keys in a pattern that makes long probe runs (keys that share
    /// their home slot), and checks after each removal that every remaining key is found.
    #[test]
    fn backward_shift_keeps_every_key_reachable() {
        let mut t: Open<Key> = Open::new();
        let keys: Vec<usize> = (1..=600usize).map(|k| k << 12 | 16).collect();
        for &k in &keys {
            assert!(t.insert(Key(k), usize::MAX));
        }
        assert!(t.len >= 1024 && t.live == keys.len());
        for (n, &k) in keys.iter().enumerate().filter(|(n, _)| n % 3 != 1) {
            let i = t.find(k).expect("present");
            t.remove_at(i);
            assert!(t.find(k).is_none(), "key {n} still found");
            for &other in keys.iter().skip(n + 1) {
                assert!(
                    t.find(other).is_some(),
                    "key {other:#x} lost after removing {k:#x}"
                );
            }
        }
        assert_eq!(t.live, keys.len() / 3);
        // SAFETY: mapped by `grow` with this size.
        unsafe { os::unmap(t.slots.cast(), t.len * core::mem::size_of::<Key>()) };
    }

    #[test]
    fn insert_stops_at_the_limit() {
        let mut t: Open<Key> = Open::new();
        for k in 1..=10usize {
            assert!(t.insert(Key(k << 4), 10));
        }
        assert!(!t.insert(Key(11 << 4), 10));
        // SAFETY: as above.
        unsafe { os::unmap(t.slots.cast(), t.len * core::mem::size_of::<Key>()) };
    }
}
