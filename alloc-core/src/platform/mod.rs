//! Layer 1, the platform: everything that talks to the kernel (mappings, clock, futex, raw
//! writes, abort) and the initial-exec thread-local blocks. Uses nothing of the engine.

pub mod fork_guard;
pub mod lock;
pub mod os;
pub mod smaps;
#[cfg(all(test, target_arch = "x86_64"))]
pub mod stack_use;
pub mod tls;
