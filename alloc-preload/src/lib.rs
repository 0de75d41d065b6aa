//! `libsampalloc.so`: the sampalloc engine behind the C allocation ABI, for `LD_PRELOAD`.
//!
//! ```sh
//! cargo build --release -p sampalloc-preload
//! SAMPALLOC_CONF=stats_print:true LD_PRELOAD=$PWD/target/release/libsampalloc.so program
//! ```
//!
//! Every export is one line of [`exports`], bound to glibc's rules in `semantics` or to the
//! statistics of `mallinfo`. Start-up (configuration from `SAMPALLOC_CONF`, the
//! thread-exit key, fork and exit hooks) happens lazily inside the engine on the first call,
//! which the dynamic loader may make before any constructor runs; nothing here allocates,
//! formats or panics.

// No std (see `runtime`) where the engine needs none: on x86_64 Linux, whose thread-local
// blocks are reached with inline assembly (elsewhere the engine uses std's `thread_local!`). A
// test build (`clippy --all-targets`) links std for the harness.
#![cfg_attr(all(not(test), target_arch = "x86_64", target_os = "linux"), no_std)]

// C++ `operator new` forms are naked functions in x86_64 assembly; elsewhere the C++
// runtime's own call `malloc` and `free`.
pub mod atfork;
#[cfg(target_arch = "x86_64")]
pub mod cxx;
pub mod exports;
pub mod jemalloc_api;
pub mod mallinfo;
#[cfg(all(not(test), target_arch = "x86_64", target_os = "linux"))]
mod runtime;
mod semantics;

/// The address of the next definition of `name` after this library's (`dlsym(RTLD_NEXT)`):
/// the C++ runtime's `new`, glibc's `__register_atfork`. Looked up once into `slot`; 0 if
/// there is none. `dlsym` may allocate, through our `malloc`: callers hold no engine lock.
fn next_symbol(slot: &core::sync::atomic::AtomicUsize, name: &core::ffi::CStr) -> usize {
    use core::sync::atomic::Ordering;
    let mut f = slot.load(Ordering::Acquire);
    if f == 0 {
        // SAFETY: a NUL-terminated name; see above for the allocation.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
        slot.store(f, Ordering::Release);
    }
    f
}
