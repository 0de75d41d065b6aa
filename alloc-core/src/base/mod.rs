//! Layer 2, the support every layer above shares: the size-class table, the options, metadata
//! memory and fast float maths. Uses only `platform`.

pub mod config;
pub mod fmath;
pub mod meta;
pub mod size_class;
