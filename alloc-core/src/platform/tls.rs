//! Per-thread blocks reached without `__tls_get_addr`.
//!
//! A malloc replacement loaded with `LD_PRELOAD` must not use the dynamic TLS model: its
//! `__tls_get_addr` may call malloc. [`initial_exec_block!`] declares a zero-initialised block
//! with no destructor in `.tbss` and reads its address with the initial-exec model written out
//! in assembly (the thread pointer plus a GOT offset the linker fills in). The symbol is
//! hidden, so a second copy of the engine in the process (a Rust program using `SampAlloc` run
//! with the preload) keeps its own block. Elsewhere than x86-64 Linux a const-initialised
//! `thread_local!` stands in.

/// `initial_exec_block!(fn state -> State, "symbol_name")` defines `fn state() -> *mut State`,
/// the calling thread's block (all zeroes at thread start; `State` must be valid as zeroes),
/// ([`initial_exec_first_word!`] adds a reader of its first word).
macro_rules! initial_exec_block {
    ($vis:vis fn $name:ident -> $ty:ty, $symbol:literal) => {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        core::arch::global_asm!(
            ".pushsection .tbss,\"awT\",@nobits",
            ".p2align 4",
            concat!(".globl ", $symbol),
            concat!(".hidden ", $symbol),
            concat!(".type ", $symbol, ",@object"),
            concat!(".size ", $symbol, ", {size}"),
            concat!($symbol, ":"),
            ".zero {size}",
            ".popsection",
            size = const core::mem::size_of::<$ty>(),
        );

        /// The calling thread's block: the thread pointer plus the initial-exec offset.
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        #[inline(always)]
        $vis fn $name() -> *mut $ty {
            let p: usize;
            // SAFETY: reads the thread pointer (%fs:0 holds it on x86-64 glibc) and the GOT
            // entry the linker fills with the block's offset; both are constant for the thread.
            unsafe {
                core::arch::asm!(
                    "mov {p}, qword ptr fs:[0]",
                    concat!("add {p}, qword ptr [rip + ", $symbol, "@GOTTPOFF]"),
                    p = out(reg) p,
                    options(pure, readonly, nostack),
                );
            }
            p as *mut $ty
        }

        /// The calling thread's block.
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        #[inline(always)]
        $vis fn $name() -> *mut $ty {
            std::thread_local! {
                static BLOCK: core::cell::UnsafeCell<core::mem::MaybeUninit<$ty>> =
                    const { core::cell::UnsafeCell::new(core::mem::MaybeUninit::zeroed()) };
            }
            BLOCK.with(|b| b.get().cast())
        }
    };
}

/// Reads the first word of a block declared by [`initial_exec_block!`] with `symbol`, through
/// the thread pointer in one instruction fewer than going through the block's address.
macro_rules! initial_exec_first_word {
    ($vis:vis fn $name:ident, $state:ident, $symbol:literal) => {
        /// The first word of the calling thread's block.
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        #[inline(always)]
        $vis fn $name() -> usize {
            let p: usize;
            // SAFETY: as in the block's accessor; the first word is at offset 0.
            unsafe {
                core::arch::asm!(
                    concat!("mov {p}, qword ptr [rip + ", $symbol, "@GOTTPOFF]"),
                    "mov {p}, qword ptr fs:[{p}]",
                    p = out(reg) p,
                    options(pure, readonly, nostack, preserves_flags),
                );
            }
            p
        }

        /// The first word of the calling thread's block.
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        #[inline(always)]
        $vis fn $name() -> usize {
            // SAFETY: the block is valid for the calling thread and starts with a word.
            unsafe { $state().cast::<usize>().read() }
        }
    };
}

pub(crate) use initial_exec_block;
pub(crate) use initial_exec_first_word;
