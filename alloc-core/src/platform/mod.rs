//! Layer 1, the platform: everything that talks to the kernel (mappings, clock, futex, raw
//! writes, abort). Uses nothing of the engine.

pub mod lock;
pub mod os;
