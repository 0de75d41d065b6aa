//! Every symbol `libsampalloc.so` exports: one line each, bound to the function of
//! [`semantics`] (glibc's rules) or [`mallinfo`] that implements it.
//!
//! Exported because glibc-linked programs reach them: the C and POSIX allocation functions,
//! glibc's extensions (`cfree`, `malloc_usable_size`, `malloc_trim`, `mallopt`, `mallinfo`,
//! `mallinfo2`, `malloc_stats`) and glibc's internal `__libc_*` names for them, generated as
//! twins of the function they name, and glibc's `__register_atfork` (see [`atfork`]).
//! jemalloc's own API (`mallctl`, `malloc_stats_print`, the `*allocx` family) is exported too,
//! for programs linked against libjemalloc (Redis): see [`jemalloc_api`]. C++ `operator new`
//! and `delete` are in `cxx`: the forms of `new` are naked functions, which this macro does not
//! make.
//!
//! Every export is `#[no_mangle] pub unsafe extern "C"` and only calls its implementation,
//! which never panics and allocates only through the engine. The twins are functions of their
//! own rather than ELF aliases: a symbol that `global_asm!` defines is not in the version
//! script rustc writes for a cdylib, so it would stay local.

use crate::atfork::{self, Handler};
use crate::jemalloc_api::{self, WriteCb};
use crate::mallinfo::{self, Mallinfo, Mallinfo2};
use crate::semantics;
use core::ffi::{c_char, c_int, c_void};

/// Defines the exports. Each item reads
/// `[unsafe] fn name(args) [-> ret] = module::function [, twin __libc_name]*;` and becomes
/// `#[no_mangle] pub unsafe extern "C" fn name(args) -> ret { module::function(args) }`, plus
/// one such function per twin. `unsafe` marks an implementation with a contract of its own,
/// which the export's `# Safety` section refers to.
macro_rules! exports {
    // One exported function.
    (@symbol [$($doc:tt)*] safe $name:ident ($($arg:ident: $ty:ty),*) [$($ret:tt)*]
        $module:ident $function:ident) => {
        $($doc)*
        ///
        /// # Safety
        /// Always safe to call; `unsafe` only for the C ABI.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) $($ret)* {
            $module::$function($($arg),*)
        }
    };
    (@symbol [$($doc:tt)*] unsafe $name:ident ($($arg:ident: $ty:ty),*) [$($ret:tt)*]
        $module:ident $function:ident) => {
        $($doc)*
        ///
        /// # Safety
        #[doc = concat!(
            "The contract of [`", stringify!($module), "::", stringify!($function), "`]."
        )]
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) $($ret)* {
            // SAFETY: this function's contract is its implementation's (see `# Safety`), and
            // the caller keeps it.
            unsafe { $module::$function($($arg),*) }
        }
    };
    // A function and its twins.
    (@symbols $doc:tt $safety:ident $name:ident $params:tt $ret:tt $module:ident
        $function:ident [$($twin:ident)*]) => {
        exports!(@symbol $doc $safety $name $params $ret $module $function);
        $(
            exports!(
                @symbol [#[doc = concat!("glibc's internal name for [`", stringify!($name), "`].")]]
                $safety $twin $params $ret $module $function
            );
        )*
    };
    () => {};
    (
        $(#[doc = $doc:literal])*
        fn $name:ident $params:tt $(-> $ret:ty)? = $module:ident::$function:ident
            $(, twin $twin:ident)*;
        $($rest:tt)*
    ) => {
        exports!(@symbols [$(#[doc = $doc])*] safe $name $params [$(-> $ret)?] $module
            $function [$($twin)*]);
        exports!($($rest)*);
    };
    (
        $(#[doc = $doc:literal])*
        unsafe fn $name:ident $params:tt $(-> $ret:ty)? = $module:ident::$function:ident
            $(, twin $twin:ident)*;
        $($rest:tt)*
    ) => {
        exports!(@symbols [$(#[doc = $doc])*] unsafe $name $params [$(-> $ret)?] $module
            $function [$($twin)*]);
        exports!($($rest)*);
    };
}

exports! {
    /// Allocates `size` bytes (16-byte aligned); null and `ENOMEM` when out of memory.
    fn malloc(size: usize) -> *mut c_void = semantics::malloc, twin __libc_malloc;
    /// Frees `p`; null is ignored.
    unsafe fn free(p: *mut c_void) = semantics::free, twin __libc_free;
    /// `free` under its old SunOS name, still exported by glibc.
    unsafe fn cfree(p: *mut c_void) = semantics::free;
    /// `n * size` zeroed bytes; null and `ENOMEM` on overflow or when out of memory.
    fn calloc(n: usize, size: usize) -> *mut c_void = semantics::calloc, twin __libc_calloc;
    /// Resizes `p`, keeping its contents; null is `malloc`, size 0 frees.
    unsafe fn realloc(p: *mut c_void, size: usize) -> *mut c_void = semantics::realloc,
        twin __libc_realloc;
    /// `realloc(p, n * size)`, failing with `ENOMEM` (block intact) when the product overflows.
    unsafe fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void =
        semantics::reallocarray;
    /// Stores a block aligned to `align` in `*memptr`; returns 0, `EINVAL` or `ENOMEM`.
    unsafe fn posix_memalign(memptr: *mut *mut c_void, align: usize, size: usize) -> c_int =
        semantics::posix_memalign;
    /// C11 `aligned_alloc`: `align` must be a power of two (else null and `EINVAL`).
    fn aligned_alloc(align: usize, size: usize) -> *mut c_void = semantics::aligned_alloc;
    /// A block aligned to `align` rounded up to a power of two (glibc).
    fn memalign(align: usize, size: usize) -> *mut c_void = semantics::memalign,
        twin __libc_memalign;
    /// A page-aligned block.
    fn valloc(size: usize) -> *mut c_void = semantics::valloc, twin __libc_valloc;
    /// A page-aligned block of `size` rounded up to whole pages (at least one).
    fn pvalloc(size: usize) -> *mut c_void = semantics::pvalloc, twin __libc_pvalloc;
    /// Usable bytes of `p` (0 for null).
    unsafe fn malloc_usable_size(p: *mut c_void) -> usize = semantics::usable_size;
    /// Gives free memory back to the kernel: 1 if any was released, else 0.
    fn malloc_trim(pad: usize) -> c_int = semantics::malloc_trim;
    /// Accepts and ignores glibc's tuning parameters. Returns 1.
    fn mallopt(param: c_int, value: c_int) -> c_int = semantics::mallopt;
    /// Allocator statistics in glibc's `mallinfo2` shape.
    fn mallinfo2() -> Mallinfo2 = mallinfo::mallinfo2;
    /// Allocator statistics in glibc's deprecated `mallinfo` shape (saturated at `INT_MAX`).
    fn mallinfo() -> Mallinfo = mallinfo::mallinfo;
    /// Prints the statistics report to stderr.
    fn malloc_stats() = semantics::malloc_stats;
    /// jemalloc's `mallctl`: the engine's statistics and controls under jemalloc's names.
    unsafe fn mallctl(name: *const c_char, oldp: *mut c_void, oldlenp: *mut usize,
        newp: *mut c_void, newlen: usize) -> c_int = jemalloc_api::mallctl;
    /// jemalloc's `mallctlnametomib`.
    unsafe fn mallctlnametomib(name: *const c_char, mibp: *mut usize, miblenp: *mut usize)
        -> c_int = jemalloc_api::mallctlnametomib;
    /// jemalloc's `mallctlbymib`.
    unsafe fn mallctlbymib(mib: *const usize, miblen: usize, oldp: *mut c_void,
        oldlenp: *mut usize, newp: *mut c_void, newlen: usize) -> c_int =
        jemalloc_api::mallctlbymib;
    /// jemalloc's `malloc_stats_print`: the statistics report through `write_cb` (or stderr).
    unsafe fn malloc_stats_print(write_cb: WriteCb, cbopaque: *mut c_void, opts: *const c_char)
        = jemalloc_api::malloc_stats_print;
    /// jemalloc's `nallocx`: the usable size `mallocx(size, flags)` would give; 0 if none.
    fn nallocx(size: usize, flags: c_int) -> usize = jemalloc_api::nallocx;
    /// jemalloc's `mallocx`: `size` bytes aligned and zeroed as `flags` ask.
    fn mallocx(size: usize, flags: c_int) -> *mut c_void = jemalloc_api::mallocx;
    /// jemalloc's `rallocx`: resizes `p`, moving it if need be.
    unsafe fn rallocx(p: *mut c_void, size: usize, flags: c_int) -> *mut c_void =
        jemalloc_api::rallocx;
    /// jemalloc's `xallocx`: the usable size of `p` (never resized in place).
    unsafe fn xallocx(p: *mut c_void, size: usize, extra: usize, flags: c_int) -> usize =
        jemalloc_api::xallocx;
    /// jemalloc's `sallocx`: the usable size of `p`.
    unsafe fn sallocx(p: *const c_void, flags: c_int) -> usize = jemalloc_api::sallocx;
    /// jemalloc's `dallocx`: frees `p`.
    unsafe fn dallocx(p: *mut c_void, flags: c_int) = jemalloc_api::dallocx;
    /// jemalloc's `sdallocx`: frees `p`.
    unsafe fn sdallocx(p: *mut c_void, size: usize, flags: c_int) = jemalloc_api::sdallocx;
    /// glibc's function behind `pthread_atfork`: the engine's fork handlers go first.
    unsafe fn __register_atfork(prepare: Handler, parent: Handler, child: Handler,
        dso: *mut c_void) -> c_int = atfork::register;
}
