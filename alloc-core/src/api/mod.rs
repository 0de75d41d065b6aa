//! Layer 9, the entry points: `malloc`, `free`, `realloc` and their aligned and zeroed kinds,
//! pointer validation and the sampled path. May use every layer.

pub mod alloc;
