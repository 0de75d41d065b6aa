//! Layer 2, the support every layer above shares: the size-class table, the options, metadata
//! memory, fast float maths, guessed values, and the address-keyed table for bookkeeping under a
//! lock. Uses only `platform`.

pub mod config;
pub mod fmath;
pub mod guess;
pub mod meta;
pub mod open_table;
pub mod size_class;
