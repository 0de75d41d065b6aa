//! Layer 8, the process: start-up, fork safety and statistics, which reach into every layer
//! below. Used only by `api`.

pub mod fork;
pub mod init;
pub mod stats;
pub mod tick;
