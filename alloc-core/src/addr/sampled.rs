//! Sampled small blocks: their records by address.
//!
//! A sampled small block is an ordinary block of a larger class, handed out at an offset from
//! its start (its alignment, at least 16 bytes; see `api::sampled`): its `free` fails the fast
//! path's block-start check like an invalid pointer would, and only then, on the checked path,
//! is its address looked up here. Nothing else about its slab changes, so the frees of its
//! neighbours, by any thread, stay on the fast path, and sampling writes nothing that those
//! frees read. The record is found in O(1) (open addressing by address) and the block costs no
//! page of its own.
//!
//! The addresses are spread over [`SHARDS`] shards by page, each a lock and a table
//! (`base::open_table`): with one lock, two threads sampling and freeing contended for it. A
//! shard's table grows by doubling, from a seed of [`SEED_SLOTS`] to a page of slots and up
//! to [`CAPACITY`]` / SHARDS` live blocks; past that, or when memory cannot be mapped,
//! [`insert`] fails and the caller serves the sample from pages of its own, as for large
//! blocks.

use super::segment::SampleRecord;
use crate::base::open_table::{Keyed, OpenTable};
use crate::platform::lock::{Locked, Padded, SpinLock};
use crate::platform::os::PAGE_SHIFT;

/// Live sampled small blocks the table holds at most (8 GiB of small blocks at the default
/// interval of 512 KiB).
pub const CAPACITY: usize = 1 << 14;

/// Shards, each a lock and its table; a page belongs to one.
pub const SHARDS: usize = 16;

/// One block's entry: the address handed out (0: empty) and its record.
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

type Table = OpenTable<BlockSlot, SEED_SLOTS>;

/// A shard's table behind its lock.
struct Shard(Table);

// SAFETY: the table's memory is only touched with the lock held.
unsafe impl Send for Shard {}

static TABLES: [Padded<Locked<Shard, SpinLock>>; SHARDS] =
    [const { Padded(Locked::new(Shard(OpenTable::new()))) }; SHARDS];

/// The shard of address `p`, by its page.
fn shard(p: usize) -> &'static Locked<Shard, SpinLock> {
    &TABLES[(p >> PAGE_SHIFT).wrapping_mul(0x9E37_79B9) >> 7 & (SHARDS - 1)]
}

/// Records `record` for the sampled small block handed out at `p`. False when the table is
/// full or cannot grow: the caller then gives the sample pages of its own instead.
///
/// # Safety
/// `p` must lie inside a live block of a live slab, owned by the caller, and not be recorded.
pub unsafe fn insert(p: *mut u8, record: SampleRecord) -> bool {
    let p = p as usize;
    shard(p)
        .lock()
        .0
        .insert(BlockSlot { addr: p, record }, CAPACITY / SHARDS)
}

/// If a sampled block was handed out at `p`, forgets it and returns its record. For the
/// checked path of `free`, after `p` failed the block-start check.
pub fn take(p: *mut u8) -> Option<SampleRecord> {
    let p = p as usize;
    Some(shard(p).lock().0.remove(p)?.record)
}

/// Whether a sampled block was handed out at `p` and is live.
pub fn contains(p: *mut u8) -> bool {
    let p = p as usize;
    shard(p).lock().0.get(p).is_some()
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
