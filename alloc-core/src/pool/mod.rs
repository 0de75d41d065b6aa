//! Layer 5, the shared pools: arenas (small-class bins and large blocks) and the huge blocks
//! with their reuse cache. Uses `span` and below.

pub mod arena;
pub mod huge;
