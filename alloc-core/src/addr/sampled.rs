//! Sampled blocks served inside a larger block of a cached class: their records by the
//! address the program was given.
//!
//! A sampled block of a cached class is placed a little way into a block of a larger class
//! (see `api::sampled`), so the address the program holds starts no block of its span, and its
//! `free` fails the fast path's block-start check and reaches the checked path, which finds the
//! record here in O(1) (open addressing by address). Nothing else about the span changes: the
//! pages keep their fast-path codes, which every `free` reads. (Marking the page instead wrote
//! a line of codes that the other threads' frees read, twice a sample.)
//!
//! Blocks are spread over [`SHARDS`] shards by page, each with its own lock and table: with one
//! lock, two threads sampling and freeing contended for it. A shard's table grows by doubling,
//! from a seed of [`SEED_SLOTS`] to a page of slots and up to [`CAPACITY`]` / SHARDS` live
//! blocks; past that, or when memory cannot be mapped, [`insert`] fails and the caller serves
//! the sample from pages of its own.

use super::segment::SampleRecord;
use crate::base::open_table::{Keyed, OpenTable};
use crate::platform::lock::{Locked, Padded, SpinLock};
use crate::platform::os::PAGE_SHIFT;

/// Live sampled blocks the table holds at most (8 GiB of blocks at the default interval of
/// 512 KiB).
pub const CAPACITY: usize = 1 << 14;

/// Shards, each a lock and its table; a page belongs to one.
pub const SHARDS: usize = 16;

/// One block's entry: the address the program holds (0: empty) and its record.
#[derive(Clone, Copy)]
#[repr(C)]
struct BlockSlot {
    addr: usize,
    record: SampleRecord,
}

impl Keyed for BlockSlot {
    fn key(&self) -> usize {
        self.addr
    }
}

/// Slots of a shard's table's seed (see `OpenTable`): half of them may be used, so a program
/// with up to 8 live sampled blocks in a shard maps no memory for it.
const SEED_SLOTS: usize = 16;

/// A shard's table.
struct Blocks(OpenTable<BlockSlot, SEED_SLOTS>);

// SAFETY: the table's memory is only touched with its shard's lock held.
unsafe impl Send for Blocks {}

static TABLES: [Padded<Locked<Blocks, SpinLock>>; SHARDS] =
    [const { Padded(Locked::new(Blocks(OpenTable::new()))) }; SHARDS];

/// The shard of block `p`, by its page.
fn shard(p: usize) -> &'static Locked<Blocks, SpinLock> {
    let index = (p >> PAGE_SHIFT).wrapping_mul(0x9E37_79B9) >> 7 & (SHARDS - 1);
    &TABLES[index]
}

/// Records `record` for the sampled block at `p`. False when the table is full or cannot grow:
/// the caller then frees the block it took and serves the sample from pages of its own.
pub fn insert(p: *mut u8, record: SampleRecord) -> bool {
    let p = p as usize;
    shard(p)
        .lock()
        .0
        .insert(BlockSlot { addr: p, record }, CAPACITY / SHARDS)
}

/// Whether a sampled block recorded here starts at `p`.
pub fn holds(p: *mut u8) -> bool {
    shard(p as usize).lock().0.get(p as usize).is_some()
}

/// If `p` is a sampled block recorded here, forgets it and returns its record (once: a second
/// call for the same block finds nothing).
pub fn take(p: *mut u8) -> Option<SampleRecord> {
    let p = p as usize;
    shard(p).lock().0.remove(p).map(|s| s.record)
}

/// The record of `p` if it is a sampled block recorded here.
#[cfg(test)]
pub fn record_of(p: *mut u8) -> Option<SampleRecord> {
    shard(p as usize).lock().0.get(p as usize).map(|s| s.record)
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
