//! C++ `operator new` and `operator delete`, every form the Itanium C++ ABI names (x86_64).
//!
//! libstdc++'s own call `malloc` and `free`, so they work without these; exported here, a
//! `new` or `delete` saves that extra call and its PLT jump, and a sized `delete` (the default
//! for C++14 code) hands its size to the engine, which pushes the block on that class's stack
//! once the page code agrees (`free_with_size`) instead of waiting for the page code first.
//!
//! A `new` that finds no memory must call the program's new-handler and throw
//! `std::bad_alloc`, which Rust cannot do: it jumps to the C++ runtime's own `new` of the
//! same form (found with `dlsym(RTLD_NEXT)`), which retries through `malloc` (ours), calls the
//! handler and throws. A jump, not a call: each `new` is a naked function whose frame is gone
//! when the exception leaves, so no Rust frame is ever unwound. Its fast path calls the
//! engine with the registers saved and its own stack pointer as `entry_sp`, so a sampled
//! allocation's stack starts at the program's caller, as it does for `malloc`.
//!
//! Deletes never throw: they are plain exports over the engine's `free_as` and `free_with_size`.

#![allow(non_snake_case)] // the Itanium C++ ABI's names

use crate::semantics;
use core::ffi::{c_void, CStr};
use core::sync::atomic::AtomicUsize;
use sampalloc_core as engine;

/// The C++ runtime's `new` of each form, as found (0: not looked up yet).
#[link_section = ".data.sampalloc_hot"] // see `platform::os` (engine), hot statics
static REAL_NEW: [AtomicUsize; NEW_FORMS] = [const { AtomicUsize::new(0) }; NEW_FORMS];

/// The forms of `new`, by index into [`REAL_NEW`], with their mangled names.
const NEW_FORMS: usize = 8;
const NEW_NAMES: [&CStr; NEW_FORMS] = [
    c"_Znwm",
    c"_Znam",
    c"_ZnwmRKSt9nothrow_t",
    c"_ZnamRKSt9nothrow_t",
    c"_ZnwmSt11align_val_t",
    c"_ZnamSt11align_val_t",
    c"_ZnwmSt11align_val_tRKSt9nothrow_t",
    c"_ZnamSt11align_val_tRKSt9nothrow_t",
];

/// The address of the C++ runtime's `new` of form `form`, for a `new` that found no memory.
/// Without one (no C++ runtime loaded after us: cannot happen for a program that calls `new`
/// through the dynamic linker) nothing can throw `std::bad_alloc`, and the process stops.
extern "C" fn real_new(form: usize) -> usize {
    let f = crate::next_symbol(&REAL_NEW[form], NEW_NAMES[form]);
    if f == 0 {
        engine::fatal("operator new: out of memory, and no C++ runtime to throw bad_alloc");
    }
    f
}

/// `new(size)`: a block, or null for the C++ runtime's `new` to take over. `entry_sp` is the
/// naked caller's stack pointer.
extern "C" fn try_new(size: usize, _: usize, _: usize, entry_sp: usize) -> *mut c_void {
    let p = engine::malloc_fast(size);
    if !p.is_null() {
        return p.cast();
    }
    semantics::malloc_slow(size, entry_sp)
}

/// `new(size, align)`: as [`try_new`], aligned to `align` (a power of two: C++ requires it of
/// `std::align_val_t`; any other value gets null, and the C++ runtime's answer).
extern "C" fn try_new_aligned(size: usize, align: usize, _: usize, entry_sp: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return core::ptr::null_mut();
    }
    let p = engine::aligned_fast(align, size);
    if !p.is_null() {
        return p.cast();
    }
    if size > semantics::MAX_SIZE {
        return core::ptr::null_mut();
    }
    engine::aligned_slow(align, size, false, entry_sp).cast()
}

/// Defines `new` of form `$form` as a naked function: the argument registers it has saved
/// (`rdi` alone for `new(size)`, which keeps the stack 16-byte aligned for the call; `rdi`,
/// `rsi` and `rdx` for the others), `$try(rdi, rsi, rdx, entry_sp)`, and its block returned;
/// or, when that is null, the registers restored and a jump to the C++ runtime's own `new` of
/// that form. The CFI directives let unwinders (the profiler's, a debugger's) step through the
/// pushes.
macro_rules! new_forms {
    (@asm $try:ident, $form:expr, [$($push:literal),*], [$($pop:literal),*], $bytes:literal) => {
        core::arch::naked_asm!(
            ".cfi_startproc",
            $($push, ".cfi_adjust_cfa_offset 8",)*
            "mov rcx, rsp",
            "call {try}",
            "test rax, rax",
            "jz 2f",
            concat!("add rsp, ", $bytes),
            concat!(".cfi_adjust_cfa_offset -", $bytes),
            "ret",
            "2:",
            concat!(".cfi_adjust_cfa_offset ", $bytes),
            "mov edi, {form}",
            "call {real}",
            $($pop, ".cfi_adjust_cfa_offset -8",)*
            "jmp rax",
            ".cfi_endproc",
            try = sym $try,
            real = sym real_new,
            form = const $form,
        )
    };
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) = $try:ident, $form:expr;)*) => {
        $(
            $(#[$doc])*
            ///
            /// # Safety
            /// Called by C++ code as its `operator new`; a naked function, it follows the C
            /// ABI by hand.
            #[unsafe(naked)]
            #[no_mangle]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> *mut c_void {
                new_forms!(@pick $try, $form, $($arg)*)
            }
        )*
    };
    (@pick $try:ident, $form:expr, $one:ident) => {
        new_forms!(@asm $try, $form, ["push rdi"], ["pop rdi"], "8")
    };
    (@pick $try:ident, $form:expr, $($more:ident)*) => {
        new_forms!(@asm $try, $form, ["push rdi", "push rsi", "push rdx"],
            ["pop rdx", "pop rsi", "pop rdi"], "24")
    };
}

new_forms! {
    /// `operator new(size_t)`.
    fn _Znwm(size: usize) = try_new, 0;
    /// `operator new[](size_t)`.
    fn _Znam(size: usize) = try_new, 1;
    /// `operator new(size_t, const std::nothrow_t&)`: null rather than `bad_alloc`.
    fn _ZnwmRKSt9nothrow_t(size: usize, nothrow: *const c_void) = try_new, 2;
    /// `operator new[](size_t, const std::nothrow_t&)`.
    fn _ZnamRKSt9nothrow_t(size: usize, nothrow: *const c_void) = try_new, 3;
    /// `operator new(size_t, std::align_val_t)`.
    fn _ZnwmSt11align_val_t(size: usize, align: usize) = try_new_aligned, 4;
    /// `operator new[](size_t, std::align_val_t)`.
    fn _ZnamSt11align_val_t(size: usize, align: usize) = try_new_aligned, 5;
    /// `operator new(size_t, std::align_val_t, const std::nothrow_t&)`.
    fn _ZnwmSt11align_val_tRKSt9nothrow_t(size: usize, align: usize, nothrow: *const c_void)
        = try_new_aligned, 6;
    /// `operator new[](size_t, std::align_val_t, const std::nothrow_t&)`.
    fn _ZnamSt11align_val_tRKSt9nothrow_t(size: usize, align: usize, nothrow: *const c_void)
        = try_new_aligned, 7;
}

/// Defines `delete` forms: each frees its pointer as `free` does, or with `free_with_size`
/// when it is given the size (`sized`), and names `operator delete` if the pointer is not a
/// live block; the other arguments (alignment, `nothrow`) change nothing.
macro_rules! delete_forms {
    ($($(#[$doc:meta])* fn $name:ident($p:ident $(, $arg:ident: $ty:ty)*) = $how:ident;)*) => {
        $(
            $(#[$doc])*
            ///
            /// # Safety
            /// `p` must be null or a live block of ours no longer in use (invalid pointers
            /// abort), as C++ requires of the `delete` that matches its `new`.
            #[no_mangle]
            pub unsafe extern "C" fn $name($p: *mut c_void $(, $arg: $ty)*) {
                // SAFETY: the caller's contract.
                unsafe { delete_forms!(@free $how $p $(, $arg)*) }
            }
        )*
    };
    (@free plain $p:ident $(, $arg:ident)*) => {{
        $(let _ = $arg;)*
        engine::free_as($p.cast(), engine::Op::Delete)
    }};
    (@free sized $p:ident, $size:ident $(, $arg:ident)*) => {{
        $(let _ = $arg;)*
        engine::free_with_size($p.cast(), $size, engine::Op::Delete)
    }};
}

delete_forms! {
    /// `operator delete(void*)`.
    fn _ZdlPv(p) = plain;
    /// `operator delete[](void*)`.
    fn _ZdaPv(p) = plain;
    /// `operator delete(void*, size_t)`.
    fn _ZdlPvm(p, size: usize) = sized;
    /// `operator delete[](void*, size_t)`.
    fn _ZdaPvm(p, size: usize) = sized;
    /// `operator delete(void*, const std::nothrow_t&)`.
    fn _ZdlPvRKSt9nothrow_t(p, nothrow: *const c_void) = plain;
    /// `operator delete[](void*, const std::nothrow_t&)`.
    fn _ZdaPvRKSt9nothrow_t(p, nothrow: *const c_void) = plain;
    /// `operator delete(void*, std::align_val_t)`.
    fn _ZdlPvSt11align_val_t(p, align: usize) = plain;
    /// `operator delete[](void*, std::align_val_t)`.
    fn _ZdaPvSt11align_val_t(p, align: usize) = plain;
    /// `operator delete(void*, size_t, std::align_val_t)`: an over-aligned block's class is
    /// not its size's, so the size is not used.
    fn _ZdlPvmSt11align_val_t(p, size: usize, align: usize) = plain;
    /// `operator delete[](void*, size_t, std::align_val_t)`.
    fn _ZdaPvmSt11align_val_t(p, size: usize, align: usize) = plain;
    /// `operator delete(void*, std::align_val_t, const std::nothrow_t&)`.
    fn _ZdlPvSt11align_val_tRKSt9nothrow_t(p, align: usize, nothrow: *const c_void) = plain;
    /// `operator delete[](void*, std::align_val_t, const std::nothrow_t&)`.
    fn _ZdaPvSt11align_val_tRKSt9nothrow_t(p, align: usize, nothrow: *const c_void) = plain;
}
