//! glibc's rules for the C allocation functions, over the engine. [`crate::exports`] binds
//! each exported symbol to one function here; nothing here is exported itself.
//!
//! - Every block is at least 16-byte aligned; `malloc(0)` returns a unique pointer.
//! - Out of memory (and `calloc`/`reallocarray` overflow): null with `errno = ENOMEM`.
//!   The engine never sets `errno`; these functions do, on the cold path only.
//! - Sizes above `PTRDIFF_MAX` fail with `ENOMEM`, as in glibc.
//! - `posix_memalign` returns `EINVAL`/`ENOMEM` and leaves `errno` and `*memptr` alone on error.
//! - `aligned_alloc` rejects an alignment that is not a power of two with `EINVAL` (C17, and
//!   glibc from 2.38); `memalign` rounds it up to one as glibc does, and fails with `EINVAL`
//!   only when no power of two is that large.
//! - `realloc(p, 0)` with `p` non-null frees `p` and returns null (glibc); a failed `realloc`
//!   leaves the block intact.
//! - Pointers that are not live blocks of ours abort with one line naming the function.
//!
//! None of these functions panics or allocates other than through the engine.

use core::ffi::{c_int, c_void};
use core::ptr;
use sampalloc_core as engine;
use sampalloc_core::PAGE_SIZE;
use sampalloc_core::QUANTUM;

/// Largest size any function accepts (glibc's limit too): `PTRDIFF_MAX`.
pub(crate) const MAX_SIZE: usize = isize::MAX as usize;

/// Sets `errno` and returns null: every failure ends here.
#[cold]
#[inline(never)]
fn fail(errno: c_int) -> *mut c_void {
    engine::set_errno(errno);
    ptr::null_mut()
}

/// The engine's answer, with `errno = ENOMEM` when it is null.
#[inline(always)]
fn checked(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        return fail(libc::ENOMEM);
    }
    p.cast()
}

/// `malloc`: `size` bytes, 16-byte aligned. Sizes above [`MAX_SIZE`] are refused (on the slow
/// path): the engine's event countdown takes the size as an `i64` and overflows on them (a
/// panic in builds with overflow checks).
#[inline(always)]
pub fn malloc(size: usize) -> *mut c_void {
    let p = engine::malloc_fast(size);
    if !p.is_null() {
        return p.cast();
    }
    malloc_slow(size, engine::current_sp())
}

/// `malloc` past the thread cache: a tail call, so that `malloc` itself needs no stack frame.
#[inline(never)]
pub(crate) fn malloc_slow(size: usize, entry_sp: usize) -> *mut c_void {
    if size > MAX_SIZE {
        return fail(libc::ENOMEM);
    }
    checked(engine::malloc_slow(size, entry_sp))
}

/// `free`: null is ignored.
///
/// # Safety
/// `p` must be null or a live block of ours no longer in use (invalid pointers abort).
#[inline(always)]
pub unsafe fn free(p: *mut c_void) {
    // SAFETY: the caller's contract; the engine validates the pointer and aborts on misuse.
    unsafe { engine::free(p.cast()) }
}

/// `calloc`: `n * size` zeroed bytes; `ENOMEM` when the product overflows or exceeds
/// [`MAX_SIZE`].
#[inline]
pub fn calloc(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) if total <= MAX_SIZE => checked(engine::malloc_zeroed(total)),
        _ => fail(libc::ENOMEM),
    }
}

/// `realloc`: null is `malloc`; size 0 frees and returns null; a failure leaves the block
/// intact.
///
/// # Safety
/// `p` must be null or a live block of ours (anything else aborts).
#[inline]
pub unsafe fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: the caller hands over a live block of ours; invalid pointers abort, naming
        // realloc.
        unsafe { engine::free_as(p.cast(), engine::Op::Realloc) };
        return ptr::null_mut();
    }
    if size > MAX_SIZE {
        return fail(libc::ENOMEM);
    }
    // SAFETY: as above; a null result leaves the block intact.
    checked(unsafe { engine::realloc(p.cast(), size) })
}

/// `reallocarray`: `realloc(p, n * size)`, failing with `ENOMEM` (block intact) when the
/// product overflows.
///
/// # Safety
/// As [`realloc`].
#[inline]
pub unsafe fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: the caller's contract.
        Some(total) => unsafe { realloc(p, total) },
        None => fail(libc::ENOMEM),
    }
}

/// A block aligned to `align`, which must be a power of two.
#[inline]
fn aligned(align: usize, size: usize) -> *mut c_void {
    if size > MAX_SIZE {
        return fail(libc::ENOMEM);
    }
    if align <= QUANTUM {
        return checked(engine::malloc(size));
    }
    checked(engine::alloc_aligned(align, size, false))
}

/// `posix_memalign`: stores a block of `size` bytes aligned to `align` in `*memptr`. Returns
/// 0, `EINVAL` (the alignment is not a power of two multiple of `sizeof(void *)`) or `ENOMEM`;
/// on error `*memptr` and `errno` are left alone.
///
/// # Safety
/// `memptr` must be valid for a pointer-sized write.
#[inline]
pub unsafe fn posix_memalign(memptr: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    // The fast path makes no system call, so `errno` needs saving only past it.
    let p = engine::aligned_fast(align, size);
    if !p.is_null() {
        // SAFETY: the caller provides a writable `memptr`.
        unsafe { memptr.write(p.cast()) };
        return 0;
    }
    // SAFETY: forwarded contract.
    unsafe { posix_memalign_slow(memptr, align, size) }
}

/// [`posix_memalign`] past the engine's fast path.
///
/// # Safety
/// As for [`posix_memalign`].
#[cold]
#[inline(never)]
unsafe fn posix_memalign_slow(memptr: *mut *mut c_void, align: usize, size: usize) -> c_int {
    let saved = engine::errno();
    let p = aligned(align, size);
    if p.is_null() {
        engine::set_errno(saved);
        return libc::ENOMEM;
    }
    // SAFETY: the caller provides a writable `memptr`.
    unsafe { memptr.write(p) };
    0
}

/// C11 `aligned_alloc`: `align` must be a power of two (else null and `EINVAL`).
#[inline]
pub fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return fail(libc::EINVAL);
    }
    aligned(align, size)
}

/// `memalign` (glibc): an alignment that is not a power of two is rounded up to one; null and
/// `EINVAL` if that power of two does not exist, `ENOMEM` when out of memory.
#[inline]
pub fn memalign(align: usize, size: usize) -> *mut c_void {
    if align <= QUANTUM {
        return malloc(size);
    }
    if align > MAX_SIZE + 1 {
        return fail(libc::EINVAL);
    }
    // Cannot overflow: `align <= 2^63`.
    aligned(align.next_power_of_two(), size)
}

/// `valloc`: a page-aligned block.
#[inline]
pub fn valloc(size: usize) -> *mut c_void {
    aligned(PAGE_SIZE, size)
}

/// `pvalloc`: a page-aligned block of `size` rounded up to whole pages (at least one).
#[inline]
pub fn pvalloc(size: usize) -> *mut c_void {
    match size.max(1).checked_add(PAGE_SIZE - 1) {
        Some(n) => aligned(PAGE_SIZE, n & !(PAGE_SIZE - 1)),
        None => fail(libc::ENOMEM),
    }
}

/// `malloc_usable_size`: usable bytes of `p` (0 for null).
///
/// # Safety
/// `p` must be null or a live block of ours (anything else aborts).
#[inline]
pub unsafe fn usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    // SAFETY: the caller's contract; the engine validates the pointer and aborts on misuse.
    unsafe { engine::usable_size(p.cast()) }
}

/// `malloc_trim`: returns the calling thread's cached blocks to their arenas, then every free
/// page and cached huge block to the kernel. 1 if the purge released memory, else 0: the
/// engine's purge counts what it releases, so no statistics are gathered. `pad` is ignored.
///
/// Pages the flush itself purges at once (with `dirty_decay_ms:0`) are not counted: freeing
/// them released them, as `free` would have.
pub fn malloc_trim(_pad: usize) -> c_int {
    engine::flush_thread_cache();
    c_int::from(engine::purge(true) > 0)
}

/// `mallopt`: accepts and ignores glibc's tuning parameters (configure with
/// `SAMPALLOC_CONF`). Returns 1.
pub fn mallopt(_param: c_int, _value: c_int) -> c_int {
    1
}

/// `malloc_stats`: prints the statistics report (as `stats_print:true` does at exit) to
/// stderr.
pub fn malloc_stats() {
    engine::stats::print(2);
}
