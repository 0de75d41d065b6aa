//! Layer 4, spans: the page heap (page runs inside segments, free-span bins, decay) and the
//! slab bitmap. Uses `addr` and below.

pub mod page_heap;
pub mod slab;
