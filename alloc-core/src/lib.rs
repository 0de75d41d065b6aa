//! The sampalloc engine: a size-class slab allocator with per-thread caches, a bounded set of
//! arenas, and decay-based return of memory to the kernel.
//!
//! This crate is the engine behind both ways in: the Rust global allocator
//! (`sampalloc::SampAlloc`) and the C ABI of `libsampalloc.so`. It allocates nothing from
//! anyone else and uses no std I/O, formatting or lazy statics on the allocation path.
//! See `ARCHITECTURE.md` at the repository root for the layers and which may use which.

#![deny(missing_docs)]
// No std: the engine needs none (on x86_64 Linux; elsewhere `platform::tls` takes std's
// `thread_local!`), and `libsampalloc.so` then links none of std's panic and backtrace
// machinery (half of its code) nor libgcc_s. Tests use std.
#![cfg_attr(not(test), no_std)]

// The unwinder's module list and per-thread caches (`prof::unwind`) are boxes and vectors,
// allocated through the global allocator: `malloc`, that is, this engine, under the profiler's
// recursion guard.
extern crate alloc;
#[cfg(any(test, not(all(target_arch = "x86_64", target_os = "linux"))))]
extern crate std;

// The layers, bottom first: each folder uses only the folders above it in this list
// (ARCHITECTURE.md; checked by tests/layers.rs).
pub(crate) mod platform;
pub(crate) mod base;
pub(crate) mod addr;
pub(crate) mod span;
pub(crate) mod pool;
pub(crate) mod thread;
pub(crate) mod prof;
pub(crate) mod process;
pub(crate) mod api;

pub use api::alloc::{
    aligned_fast, aligned_slow, alloc_aligned, flush_thread_cache, malloc, malloc_fast,
    malloc_slow, malloc_zeroed, purge,
};
pub use api::free::{free, free_as, free_sized, free_with_size, usable_size};
pub use api::realloc::{realloc, realloc_exact};
pub use api::Op;

// The facade: what `sampalloc` (the Rust API and CLI) and `libsampalloc.so` use. Everything
// else is crate-private, so the dead-code lint sees the whole engine.
pub use addr::segment::USABLE_PAGES;
pub use base::config;
pub use base::size_class::{class_of, class_size, LARGE_MAX, NUM_SMALL, QUANTUM, SMALL_MAX};
pub use platform::fork_guard::{
    interposed as atfork_interposed, register_now as register_fork_handlers_now,
};
pub use platform::os::{errno, fatal, fatal_panic, set_errno, PAGE_SIZE};
pub use pool::arena::{set_narenas, ARENA_HOT_BYTES};
pub use process::init::ensure_ready;
pub use process::stats;
pub use prof::backtrace::current_sp;
pub use prof::unwind;

/// The heap profiler: dumps, the stack table and the profile file names.
pub mod profile {
    pub use crate::prof::heap_v2::{dump_named, dump_to_path, write_profile, Sink};
    pub use crate::prof::name::{kind, NameBuf, ProfileName, NAME_MAX};
    pub use crate::prof::table::{entries, sample_counts, Counts, StackEntry};
}
