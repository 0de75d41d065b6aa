//! Layer 7, the profiler: the stack table and its dump triggers, profile names, the heap_v2
//! writer, the leak summary, and stack capture (`unwind`, `backtrace`). Uses `thread` and below.

pub mod backtrace;
pub mod heap_v2;
pub mod leak;
pub mod name;
pub mod table;
pub mod trigger;
pub mod unwind;
