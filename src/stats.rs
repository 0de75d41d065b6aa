//! Allocator statistics, in the spirit of `jemalloc-ctl`'s `stats` namespace.
//!
//! ```
//! let s = sampalloc::stats::snapshot();
//! assert!(s.mapped >= s.retained);
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

/// Writes the statistics report (as `stats_print:true` does at exit) to stderr.
pub fn print() {
    sampalloc_core::stats::print(2);
}
