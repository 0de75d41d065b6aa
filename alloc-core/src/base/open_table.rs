//! An address-keyed hash table for the bookkeeping done under a lock: open addressing with
//! linear probing, at most half full, and backward-shift deletion (no tombstones, so lookups
//! stay short however many entries come and go). Its memory is mapped from the kernel and
//! given back when it grows (a seeded table's first slots come from the metadata allocator),
//! never taken from the allocator. The profiler's peek set is such a table.
//!
//! The table is not synchronised: its owner keeps it behind a lock.

use crate::base::meta;
use crate::platform::os;
use core::ptr;

/// A slot type: its key, an address, with 0 meaning an empty slot.
pub trait Keyed: Copy {
    fn key(&self) -> usize;
}

/// The table. `S` must be valid when all zeroes (fresh mapped memory is empty slots).
///
/// Its first `SEED` slots (a power of two, or 0) come from the metadata allocator, which packs
/// them beside other small metadata instead of mapping a page for each; later, bigger slots
/// are mapped (the seed, a few hundred bytes, is never given back). The sampled-blocks tables
/// are 32 tables, and a small program keeps a few sampled blocks live in each: with a page
/// mapped for each, profiling cost it 32 page faults more.
pub struct OpenTable<S: Keyed, const SEED: usize = 0> {
    slots: *mut S,
    /// A power of two, or 0 before the first insert.
    len: usize,
    live: usize,
}

/// Slots of the first mapping: as many as fill one page (at least 16), since a mapping takes
/// whole pages anyway and only a page's first touch faults it in. A bigger start would touch
/// more pages in every table of every profiled program.
const fn first_slots(slot: usize) -> usize {
    let fit = os::PAGE_SIZE / slot;
    if fit < 16 {
        16
    } else {
        1 << fit.ilog2()
    }
}

impl<S: Keyed, const SEED: usize> OpenTable<S, SEED> {
    /// An empty table; it takes its seed, or maps memory, at its first insert.
    pub const fn new() -> Self {
        const { assert!(SEED == 0 || SEED.is_power_of_two()) };
        OpenTable {
            slots: ptr::null_mut(),
            len: 0,
            live: 0,
        }
    }

    /// Whether the slots are the seed (metadata memory, not mapped): mappings are always
    /// bigger.
    fn seeded(&self) -> bool {
        SEED > 0 && self.len == SEED
    }

    /// Entries held.
    pub fn live(&self) -> usize {
        self.live
    }

    /// The first entry at or after slot `cursor`, and the cursor to go on from; None past the
    /// end. For a walk over every entry while the table does not change.
    pub fn next_from(&self, cursor: usize) -> Option<(usize, S)> {
        (cursor..self.len)
            // SAFETY: `i < len`, the initialised slots.
            .map(|i| (i + 1, unsafe { *self.slots.add(i) }))
            .find(|(_, s)| s.key() != 0)
    }

    fn home(&self, key: usize) -> usize {
        // Fibonacci hashing of the address without its always-zero low bits.
        ((key >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) & (self.len - 1)
    }

    /// The index of the slot holding `key`, if any (always below `len`).
    fn find(&self, key: usize) -> Option<usize> {
        if self.len == 0 || key == 0 {
            return None;
        }
        let mut i = self.home(key);
        loop {
            // SAFETY: `i < len`, the slots' length; they are initialised (zero is empty).
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

    /// The entry with key `key`, if any.
    #[cfg(test)]
    pub fn get(&self, key: usize) -> Option<S> {
        // SAFETY: `find` returns an index below `len`.
        self.find(key).map(|i| unsafe { *self.slots.add(i) })
    }

    /// The entry with key `key`, if any, to change in place (not its key).
    pub fn get_mut(&mut self, key: usize) -> Option<&mut S> {
        // SAFETY: as above; the table is borrowed mutably.
        self.find(key).map(|i| unsafe { &mut *self.slots.add(i) })
    }

    /// Inserts `slot`, replacing the entry with the same key if there is one. False when the
    /// table already holds `max` entries or cannot grow (then nothing changed).
    pub fn insert(&mut self, slot: S, max: usize) -> bool {
        if let Some(old) = self.get_mut(slot.key()) {
            *old = slot;
            return true;
        }
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

    /// Removes the entry with key `key` and returns it, if there is one.
    pub fn remove(&mut self, key: usize) -> Option<S> {
        let i = self.find(key)?;
        // SAFETY: `find` returns an index below `len`.
        let found = unsafe { *self.slots.add(i) };
        self.remove_at(i);
        Some(found)
    }

    /// Removes the entry at index `i < len`, moving back the entries of its probe run that
    /// could no longer be reached past the hole.
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

    /// Doubles the table (or takes its first slots: the seed, else a mapping). False when
    /// memory cannot be had.
    fn grow(&mut self) -> bool {
        let size = core::mem::size_of::<S>();
        if self.len == 0 && SEED > 0 {
            let seed = meta::alloc(SEED * size, core::mem::align_of::<S>()).cast::<S>();
            if !seed.is_null() {
                (self.slots, self.len) = (seed, SEED);
                return true;
            }
        }
        let new_len = (self.len * 2).max(first_slots(size)).max(2 * SEED);
        let fresh = os::map(new_len * size).cast::<S>();
        if fresh.is_null() {
            return false;
        }
        let (old, old_len, old_seeded) = (self.slots, self.len, self.seeded());
        (self.slots, self.len, self.live) = (fresh, new_len, 0);
        for i in 0..old_len {
            // SAFETY: `old` held `old_len` initialised slots; fresh memory reads as empty.
            let s = unsafe { *old.add(i) };
            if s.key() != 0 {
                self.insert(s, usize::MAX);
            }
        }
        if !old.is_null() && !old_seeded {
            // SAFETY: the old slots were mapped with this size and are no longer referenced.
            unsafe { os::unmap(old.cast(), old_len * size) };
        }
        true
    }
}

impl<S: Keyed, const SEED: usize> Drop for OpenTable<S, SEED> {
    fn drop(&mut self) {
        if !self.slots.is_null() && !self.seeded() {
            // SAFETY: mapped by `grow` with this size; nothing refers to it any more.
            unsafe { os::unmap(self.slots.cast(), self.len * core::mem::size_of::<S>()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy)]
    struct Key(usize, usize);
    impl Keyed for Key {
        fn key(&self) -> usize {
            self.0
        }
    }

    /// Keys that share their home slots make long probe runs; after every removal each
    /// remaining key is still found, with its value.
    #[test]
    fn backward_shift_keeps_every_key_reachable() {
        let mut t: OpenTable<Key> = OpenTable::new();
        let keys: Vec<usize> = (1..=600usize).map(|k| k << 12 | 16).collect();
        for (v, &k) in keys.iter().enumerate() {
            assert!(t.insert(Key(k, v), usize::MAX));
        }
        assert!(t.len >= 1024 && t.live() == keys.len());
        for (n, &k) in keys.iter().enumerate().filter(|(n, _)| n % 3 != 1) {
            assert_eq!(t.remove(k).map(|s| s.1), Some(n));
            assert!(t.get(k).is_none(), "key {n} still found");
            for (m, &other) in keys.iter().enumerate().skip(n + 1) {
                let found = t.get(other).unwrap_or_else(|| panic!("{other:#x} lost"));
                assert_eq!(found.1, m);
            }
        }
        assert_eq!(t.live(), keys.len() / 3);
        assert!(t.remove(keys[0]).is_none(), "removed once");
    }

    #[test]
    fn the_first_slots_fill_one_page() {
        assert_eq!(first_slots(16), 256);
        assert_eq!(first_slots(32), 128);
        assert_eq!(first_slots(24), 128);
        assert_eq!(first_slots(4096), 16);
        let mut t: OpenTable<Key> = OpenTable::new();
        assert!(t.insert(Key(1 << 4, 1), usize::MAX));
        assert_eq!(t.len * core::mem::size_of::<Key>(), os::PAGE_SIZE);
    }

    /// A seeded table keeps its first entries in its seed, maps nothing until it outgrows
    /// them, and then keeps every entry.
    #[test]
    fn a_seeded_table_maps_memory_only_past_its_seed() {
        let mut t: OpenTable<Key, 16> = OpenTable::new();
        for k in 1..=8usize {
            assert!(t.insert(Key(k << 12, k), usize::MAX));
        }
        assert!(t.seeded() && t.len == 16, "8 entries fit the seed");
        assert_eq!(t.remove(3 << 12).map(|s| s.1), Some(3));
        assert!(t.insert(Key(3 << 12, 33), usize::MAX));
        assert!(t.insert(Key(9 << 12, 9), usize::MAX));
        assert!(
            !t.seeded() && t.len == 256,
            "the ninth maps a page of slots"
        );
        for k in 1..=9usize {
            let want = if k == 3 { 33 } else { k };
            assert_eq!(t.get(k << 12).map(|s| s.1), Some(want), "key {k}");
        }
        assert_eq!(t.live(), 9);
    }

    #[test]
    fn insert_replaces_and_stops_at_the_limit() {
        let mut t: OpenTable<Key> = OpenTable::new();
        for k in 1..=10usize {
            assert!(t.insert(Key(k << 4, k), 10));
        }
        assert!(!t.insert(Key(11 << 4, 0), 10));
        assert!(
            t.insert(Key(3 << 4, 99), 10),
            "a key already there is replaced"
        );
        assert_eq!(t.remove(3 << 4).map(|s| s.1), Some(99));
        assert!(t.get(0).is_none());
        // A walk sees every entry once.
        let mut seen = Vec::new();
        let mut cursor = 0;
        while let Some((next, s)) = t.next_from(cursor) {
            seen.push(s.1);
            cursor = next;
        }
        seen.sort_unstable();
        assert_eq!(seen, [1, 2, 4, 5, 6, 7, 8, 9, 10]);
    }
}
