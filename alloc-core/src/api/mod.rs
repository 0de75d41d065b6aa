//! Layer 9, the entry points: `malloc`, `free`, `realloc` and their aligned and zeroed kinds,
//! pointer validation, the sampled path and OpenTelemetry's probes on it. May use every layer. The one fatal path for a
//! misused pointer is [`misuse`].

pub mod alloc;
pub mod free;
pub mod realloc;
pub(crate) mod sampled;
mod usdt;

use crate::platform::os;

/// The public function a pointer was handed to, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `free`.
    Free,
    /// `realloc`.
    Realloc,
    /// `malloc_usable_size`.
    UsableSize,
    /// C++ `operator delete`, in every form.
    Delete,
}

impl Op {
    /// The function's C name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Free => "free",
            Op::Realloc => "realloc",
            Op::UsableSize => "malloc_usable_size",
            Op::Delete => "operator delete",
        }
    }
}

/// Aborts with one line naming the function `p` was handed to: the one fatal path for a
/// misused pointer (see `platform::os::fatal_pointer`).
#[cold]
#[inline(never)]
pub(super) fn misuse(op: Op, what: &str, p: *mut u8) -> ! {
    os::fatal_pointer(op.name(), what, p as usize)
}
