//! The sampalloc engine: a size-class slab allocator with per-thread caches, a bounded set of
//! arenas, and decay-based return of memory to the kernel.
//!
//! This crate is the engine behind both ways in: the Rust global allocator
//! (`sampalloc::SampAlloc`) and the C ABI of `libsampalloc.so`. It allocates nothing from
//! anyone else and uses no std I/O, formatting or lazy statics on the allocation path.
//! See `ARCHITECTURE.md` at the repository root for the layers and which may use which.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod alloc;
pub mod arena;
pub mod backtrace;
pub mod config;
pub mod fmath;
pub mod fork;
pub mod global;
pub mod huge;
pub mod lock;
pub mod meta;
pub mod os;
pub mod pages;
pub mod prof;
pub mod prof_dump;
pub mod registry;
pub mod sampler;
pub mod segment;
pub mod size_class;
pub mod slab;
pub mod stats;
pub mod thread;
pub mod thread_cache;
pub mod unwind;

pub use alloc::{
    alloc_aligned, calloc, flush_thread_cache, free, free_as, free_sized, malloc, malloc_fast,
    malloc_slow, malloc_zeroed, purge, realloc, usable_size, Op,
};
