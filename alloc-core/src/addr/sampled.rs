//! Sampled small blocks that stay in their slabs: their records by address, and the page marks
//! that send their frees to the checked path.
//!
//! A sampled small block is an ordinary block of its slab. Its page's fast-path code (see
//! `segment`) gets the `MARKED` bit while any sampled block starts on that page, so `free` of
//! any block there leaves the fast path, and asks whether the block is sampled. The record is
//! found in O(1) (open addressing by address), and the block costs no page of its own.
//!
//! Everything about a page happens under one lock, also the lookups of the checked path, and
//! also the page's mark: it is set by the first sample on the page and cleared by the last
//! one's free, so marking and clearing must not interleave. The tables are
//! `base::open_table`s. Pages are spread over [`SHARDS`]
//! shards, each with its own lock and tables: with one lock, two threads sampling and freeing
//! contended for it. A shard's tables grow by doubling, from a seed of [`SEED_SLOTS`] to a page
//! of slots and up to
//! [`CAPACITY`]` / SHARDS` live blocks; past that, or when memory cannot be mapped, [`insert`]
//! fails and the caller serves the sample from pages of its own, as for large blocks.
//!
//! Most frees on a marked page are of its other blocks, which are not sampled, and they were
//! most of a small sample's cost. A count of live sampled blocks by hash of their address
//! ([`FILTER`], see [`counted`]), read without a lock, turns them away: a block whose count is
//! 0 is not sampled, and `free` puts it in the thread cache, its class read from the marked
//! code. The count of a sampled block is raised before the block is handed out, so its own
//! `free` (which the program can only make after it got the block) always sees it.

use super::segment::{SampleRecord, Segment};
use crate::base::open_table::{Keyed, OpenTable};
use crate::base::size_class::MARKED;
use crate::platform::lock::{Locked, Padded, SpinLock};
use crate::platform::os::PAGE_SHIFT;
use core::sync::atomic::{AtomicU16, Ordering};

/// Live sampled small blocks the table holds at most (8 GiB of small blocks at the default
/// interval of 512 KiB).
pub const CAPACITY: usize = 1 << 14;

/// Shards, each a lock and its tables; a page belongs to one.
pub const SHARDS: usize = 16;

/// Slots of the filter's part for one shard: 32 KiB of counts in all. At the default interval
/// a program has a few hundred live sampled small blocks, so a free of an unsampled block
/// rarely meets a count.
const FILTER_SHARD_SLOTS: usize = 1 << 10;

/// Live sampled blocks recorded here, by shard and hash of their address (at most
/// [`CAPACITY`], so a count cannot overflow). A shard's part is written only under its lock,
/// so a plain load and store update a count; frees read them without the lock.
static FILTER: [AtomicU16; FILTER_SHARD_SLOTS * SHARDS] =
    [const { AtomicU16::new(0) }; FILTER_SHARD_SLOTS * SHARDS];

/// The filter's count for block `p`.
fn filter_slot(p: usize) -> &'static AtomicU16 {
    let hash = (p >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 10);
    &FILTER[shard_index(page_start(p)) * FILTER_SHARD_SLOTS + hash]
}

/// Adds `d` (1, or `u16::MAX` to take one away) to `p`'s count, under its shard's lock.
fn filter_add(p: usize, d: u16) {
    let slot = filter_slot(p);
    slot.store(
        slot.load(Ordering::Relaxed).wrapping_add(d),
        Ordering::Relaxed,
    );
}

/// Whether the filter counts a live sampled block at `p`'s hash; false: `p` is not sampled.
/// Without a lock, for `free` of a block on a marked page.
#[inline]
pub fn counted(p: *mut u8) -> bool {
    filter_slot(p as usize).load(Ordering::Relaxed) != 0
}

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

/// Slots of a shard's tables' seeds (see `OpenTable`): half of them may be used, so a program
/// with up to 8 live sampled blocks in a shard maps no memory for it.
const SEED_SLOTS: usize = 16;

struct Tables {
    blocks: OpenTable<BlockSlot, SEED_SLOTS>,
    pages: OpenTable<PageSlot, SEED_SLOTS>,
}

// SAFETY: the tables' memory is only touched with the lock held.
unsafe impl Send for Tables {}

static TABLES: [Padded<Locked<Tables, SpinLock>>; SHARDS] = [const {
    Padded(Locked::new(Tables {
        blocks: OpenTable::new(),
        pages: OpenTable::new(),
    }))
}; SHARDS];

/// The shard of the page starting at `page`.
fn shard_index(page: usize) -> usize {
    (page >> PAGE_SHIFT).wrapping_mul(0x9E37_79B9) >> 7 & (SHARDS - 1)
}

/// The shard of the page starting at `page`.
fn shard(page: usize) -> &'static Locked<Tables, SpinLock> {
    &TABLES[shard_index(page)]
}

/// The address of the page holding `p`.
fn page_start(p: usize) -> usize {
    p & !((1 << PAGE_SHIFT) - 1)
}

/// The page `p` starts on: its segment and index.
fn page_of(p: usize) -> (*mut Segment, usize) {
    (Segment::of(p), Segment::page_index(p))
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
    let page = page_start(p);
    let mut t = shard(page).lock();
    let marked = match t.pages.get_mut(page) {
        Some(s) => {
            s.count += 1;
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
    filter_add(p, 1);
    if !marked {
        let (seg, index) = page_of(p);
        // SAFETY: the page holds a live block of a live slab; marks change under this lock.
        unsafe { Segment::set_fast_class(seg, index, 1, code | MARKED as u8) };
    }
    true
}

/// One sampled block fewer on `page`: its entry goes when it was the last, and the page gets
/// its code back.
fn release_page(t: &mut Tables, page: usize) {
    let Some(s) = t.pages.get_mut(page) else {
        return;
    };
    s.count -= 1;
    if s.count == 0 {
        let code = s.code;
        t.pages.remove(page);
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
    if !counted(p) {
        return None;
    }
    let p = p as usize;
    let page = page_start(p);
    let mut t = shard(page).lock();
    let record = t.blocks.remove(p)?.record;
    filter_add(p, u16::MAX);
    release_page(&mut t, page);
    Some(record)
}

/// The record of `p` if it is a sampled block recorded here.
#[cfg(test)]
pub fn record_of(p: *mut u8) -> Option<SampleRecord> {
    let t = shard(page_start(p as usize)).lock();
    t.blocks.get(p as usize).map(|s| s.record)
}

/// Sampled small blocks recorded now, and pages marked.
#[cfg(test)]
pub fn live() -> (usize, usize) {
    TABLES.iter().fold((0, 0), |(b, p), s| {
        let t = s.lock();
        (b + t.blocks.live(), p + t.pages.live())
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
