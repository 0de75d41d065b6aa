//! Layer 3, the address space: 4 MiB aligned segments with out-of-band descriptors, and the
//! registry that maps any address to its owner in O(1), and the sealed headers of sampled
//! blocks served inside larger ones. Uses `base` and `platform`.

pub mod registry;
pub mod sampled;
pub mod segment;
