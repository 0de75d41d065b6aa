//! Layer 8, the process: start-up, fork safety, statistics and the memory map beside each
//! profile, which reach into every layer below. Used only by `api`.

pub mod fork;
pub mod init;
pub mod memory;
pub mod stats;
pub mod tick;
