//! Allocator statistics, in the spirit of `jemalloc-ctl`'s `stats` namespace.
//!
//! ```
//! let s = sampalloc::stats::snapshot();
//! assert!(s.mapped >= s.retained);
//! // Dirty memory older than a decay window is memory decay has not given back.
//! assert!(s.dirty_expired <= s.dirty);
//! ```

pub use sampalloc_core::stats::{ClassStats, Snapshot};

/// Reads the engine's statistics: allocated, active, resident, mapped, retained and metadata
/// bytes, and per-size-class counts. Cheap enough to call often; it takes each arena lock
/// briefly.
pub fn snapshot() -> Snapshot {
    sampalloc_core::stats::snapshot()
}

/// Bytes in blocks the program holds.
pub fn allocated() -> usize {
    snapshot().allocated
}

/// Upper bound on the bytes the allocator keeps in RAM.
pub fn resident() -> usize {
    snapshot().resident
}

/// Bytes of free pages not yet given back to the kernel (and of the huge cache).
pub fn dirty() -> usize {
    snapshot().dirty
}

/// Of [`dirty`], the bytes freed more than one decay window (`dirty_decay_ms`) ago: memory held
/// and forgotten rather than held for reuse. Decay keeps it near zero; a figure that grows means
/// pages are not being purged.
pub fn dirty_expired() -> usize {
    snapshot().dirty_expired
}

/// Of [`dirty`], the bytes past their decay window kept on purpose: free pages of well used
/// huge pages, kept whole until the longer subrelease delay (breaking a huge page costs the
/// program its 2 MiB mapping). Not counted in [`dirty_expired`].
pub fn dirty_hugepage() -> usize {
    snapshot().dirty_hugepage
}

/// Bytes held for reuse outside the dirty pages' decay: free blocks in thread caches, empty
/// slabs the bins keep, and the huge cache.
pub fn cached() -> usize {
    snapshot().cached
}

/// Writes the statistics report (as `stats_print:true` does at exit) to stderr.
pub fn print() {
    sampalloc_core::stats::print(2);
}
