//! sampalloc: a fast memory allocator with a built-in sampling heap profiler.
//!
//! Use it as the global allocator of a Rust program:
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: sampalloc::SampAlloc = sampalloc::SampAlloc;
//!
//! fn main() {
//!     let v: Vec<u64> = (0..1000).collect();
//!     assert_eq!(v.len(), 1000);
//!     let s = sampalloc::stats::snapshot();
//!     assert!(s.allocated >= 8000);
//! }
//! ```
//!
//! Configuration comes from the `SAMPALLOC_CONF` environment variable
//! (`SAMPALLOC_CONF=narenas:4,dirty_decay_ms:500`) or from [`configure`].
//! The same engine serves C programs through `libsampalloc.so` and `LD_PRELOAD`.
//!
//! With the `pprof` feature, [`profile::pprof`] returns the live heap as gzipped pprof, what a
//! service's `/debug/pprof/heap` route serves (see `examples/pprof_http.rs`).
//!
//! With the `cli` feature, [`analysis`] reads, symbolizes and reports heap profiles, and the
//! `sampalloc` command (`sampalloc run -- program`, `top`, `diff`, `flamegraph`, `pprof`) is built.

#![deny(missing_docs)]

use core::alloc::{GlobalAlloc, Layout};
use sampalloc_core as engine;

#[cfg(feature = "cli")]
pub mod analysis;
#[cfg(feature = "pprof")]
pub mod pprof;
pub mod profile;
pub mod stats;

/// The sampalloc allocator, for `#[global_allocator]`.
///
/// Blocks are at least 16-byte aligned; larger alignments up to any power of two are served
/// from page-aligned runs or dedicated mappings.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampAlloc;

/// Alignment every block has without asking.
const MIN_ALIGN: usize = engine::QUANTUM;

// SAFETY: the engine returns blocks of at least the requested size and alignment that stay
// valid until freed, never hands one block out twice, and `realloc` keeps the contents.
//
// The methods are never inlined: each is the profiler's entry point, whose frame is dropped
// from sampled stacks so that they start at the caller. (Peers' methods are FFI calls, so this
// costs nothing relative to them.)
unsafe impl GlobalAlloc for SampAlloc {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MIN_ALIGN {
            engine::malloc(layout.size())
        } else {
            engine::alloc_aligned(layout.align(), layout.size(), false)
        }
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MIN_ALIGN {
            engine::malloc_zeroed(layout.size())
        } else {
            engine::alloc_aligned(layout.align(), layout.size(), true)
        }
    }

    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.align() <= MIN_ALIGN {
            // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc`/`realloc` with `layout`.
            unsafe { engine::free_sized(ptr, layout.size()) }
        } else {
            // SAFETY: as above.
            unsafe { engine::free(ptr) }
        }
    }

    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MIN_ALIGN {
            // SAFETY: GlobalAlloc's contract: `ptr` is a live block of ours. Exact: `dealloc`
            // frees by the layout's size.
            return unsafe { engine::realloc_exact(ptr, new_size) };
        }
        // Over-aligned: keep the block if it still fits well, else move it.
        // SAFETY: as above.
        let usable = unsafe { engine::usable_size(ptr) };
        if new_size <= usable && new_size >= usable / 2 {
            return ptr;
        }
        let q = engine::alloc_aligned(layout.align(), new_size, false);
        if !q.is_null() {
            // SAFETY: both blocks are live and at least the copied length long.
            unsafe { core::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size)) };
            // SAFETY: `ptr` is live and now copied; it is freed once.
            unsafe { engine::free(ptr) };
        }
        q
    }
}

/// A configuration entry that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The entry as given.
    pub entry: String,
    /// Why it was refused.
    pub reason: &'static str,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: '{}'", self.reason, self.entry)
    }
}

impl std::error::Error for ConfigError {}

/// Applies options in `SAMPALLOC_CONF` syntax (`key:value,key:value`), the same keys as the
/// environment variable. Every option may change at run time; `narenas` affects threads that
/// start afterwards. Valid entries take effect even when others are refused.
pub fn configure(conf: &str) -> Result<(), Vec<ConfigError>> {
    let mut errors = Vec::new();
    engine::config::apply(conf.as_bytes(), |entry, e| {
        errors.push(ConfigError {
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: e.message(),
        })
    });
    // Allocating the errors above is fine: the engine is not inside a call of its own.
    engine::ensure_ready();
    engine::set_narenas(engine::config::narenas_or_default());
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Gives memory back to the kernel: dirty pages past their decay time, or all of them if
/// `all`. The calling thread's cache is flushed first when `all` is set.
pub fn purge(all: bool) {
    if all {
        engine::flush_thread_cache();
    }
    engine::purge(all);
}

/// Returns the calling thread's cached free blocks to the shared arenas.
pub fn flush_thread_cache() {
    engine::flush_thread_cache();
}

/// Usable size of a block allocated by sampalloc (at least what was asked for).
///
/// # Safety
/// `ptr` must be a live block allocated by [`SampAlloc`].
pub unsafe fn usable_size(ptr: *const u8) -> usize {
    // SAFETY: forwarded contract.
    unsafe { engine::usable_size(ptr as *mut u8) }
}
