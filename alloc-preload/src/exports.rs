//! The C allocation ABI: every symbol `libsampalloc.so` exports, with glibc's semantics.
//!
//! - Every block is at least 16-byte aligned; `malloc(0)` returns a unique pointer.
//! - Out of memory (and `calloc`/`reallocarray` overflow): null with `errno = ENOMEM`.
//!   The engine never sets `errno`; these wrappers do, on the cold path only.
//! - `posix_memalign` returns `EINVAL`/`ENOMEM` and leaves `errno` and `*memptr` alone on error.
//! - `aligned_alloc` rejects an alignment that is not a power of two with `EINVAL` (C17, and
//!   glibc from 2.38); `memalign` rounds it up to one as glibc does, and fails with `EINVAL`
//!   only when no power of two is that large.
//! - `realloc(p, 0)` with `p` non-null frees `p` and returns null (glibc); a failed `realloc`
//!   leaves the block intact. Sizes above `PTRDIFF_MAX` fail with `ENOMEM`, as in glibc.
//! - Pointers that are not live blocks of ours abort with one line naming the function.
//!
//! Also exported because glibc-linked programs reach them: the `__libc_*` aliases, `cfree`,
//! `malloc_trim`, `mallopt`, `mallinfo`, `mallinfo2` and `malloc_stats`. C++ `operator new` and
//! `delete` are not: libstdc++'s call `malloc` and `free`, and the throwing forms need the C++
//! runtime to raise `std::bad_alloc`.

use core::ffi::{c_int, c_void};
use core::ptr;
use sampalloc_core as engine;
use sampalloc_core::PAGE_SIZE;
use sampalloc_core::QUANTUM;

/// Largest size any function accepts (glibc's limit too): `PTRDIFF_MAX`.
const MAX_SIZE: usize = isize::MAX as usize;

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

/// `malloc`. Sizes above [`MAX_SIZE`] are refused here: the engine's event countdown takes
/// the size as an `i64` and overflows on them (a panic in builds with overflow checks).
#[inline(always)]
fn malloc_impl(size: usize) -> *mut c_void {
    let p = engine::malloc_fast(size);
    if !p.is_null() {
        return p.cast();
    }
    malloc_slow(size, engine::current_sp())
}

/// `malloc` past the thread cache: a tail call, so that `malloc` itself needs no stack frame.
#[inline(never)]
fn malloc_slow(size: usize, entry_sp: usize) -> *mut c_void {
    if size > MAX_SIZE {
        return fail(libc::ENOMEM);
    }
    checked(engine::malloc_slow(size, entry_sp))
}

/// `calloc`, with the same limit as [`malloc_impl`].
#[inline]
fn calloc_impl(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) if total <= MAX_SIZE => checked(engine::malloc_zeroed(total)),
        _ => fail(libc::ENOMEM),
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

/// `memalign`'s rules (glibc): an alignment that is not a power of two is rounded up to one.
#[inline]
fn memalign_impl(align: usize, size: usize) -> *mut c_void {
    if align <= QUANTUM {
        return malloc_impl(size);
    }
    if align > MAX_SIZE + 1 {
        return fail(libc::EINVAL);
    }
    // Cannot overflow: `align <= 2^63`.
    aligned(align.next_power_of_two(), size)
}

/// `pvalloc`'s size: whole pages, at least one.
#[inline]
fn pvalloc_impl(size: usize) -> *mut c_void {
    match size.max(1).checked_add(PAGE_SIZE - 1) {
        Some(n) => aligned(PAGE_SIZE, n & !(PAGE_SIZE - 1)),
        None => fail(libc::ENOMEM),
    }
}

/// `realloc` with glibc's rules for null and zero.
///
/// # Safety
/// `p` must be null or a live block of ours (anything else aborts).
#[inline]
unsafe fn realloc_impl(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc_impl(size);
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

/// Allocates `size` bytes (16-byte aligned); null and `ENOMEM` when out of memory.
///
/// # Safety
/// Always safe to call; `unsafe` only for the C ABI.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    malloc_impl(size)
}

/// Frees `p`; null is ignored.
///
/// # Safety
/// `p` must be null or a live block of ours no longer in use (invalid pointers abort).
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: the caller's contract; the engine validates the pointer and aborts on misuse.
    unsafe { engine::free(p.cast()) }
}

/// `free` under its old SunOS name, still exported by glibc.
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: as in `free`.
    unsafe { engine::free(p.cast()) }
}

/// `n * size` zeroed bytes; null and `ENOMEM` on overflow or when out of memory.
///
/// # Safety
/// Always safe to call; `unsafe` only for the C ABI.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    calloc_impl(n, size)
}

/// Resizes `p`, keeping its contents; see the module docs for null, zero and failure.
///
/// # Safety
/// `p` must be null or a live block of ours (invalid pointers abort).
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the caller's contract.
    unsafe { realloc_impl(p, size) }
}

/// `realloc(p, n * size)`, failing with `ENOMEM` (block intact) when the product overflows.
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: the caller's contract.
        Some(total) => unsafe { realloc_impl(p, total) },
        None => fail(libc::ENOMEM),
    }
}

/// Stores a block of `size` bytes aligned to `align` in `*memptr`. Returns 0, `EINVAL` (the
/// alignment is not a power of two multiple of `sizeof(void *)`) or `ENOMEM`; on error
/// `*memptr` and `errno` are left alone.
///
/// # Safety
/// `memptr` must be valid for a pointer-sized write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    memptr: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
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
///
/// # Safety
/// Always safe to call; `unsafe` only for the C ABI.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return fail(libc::EINVAL);
    }
    aligned(align, size)
}

/// A block aligned to `align` rounded up to a power of two (glibc); null and `EINVAL` if that
/// power of two does not exist, `ENOMEM` when out of memory.
///
/// # Safety
/// Always safe to call; `unsafe` only for the C ABI.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    memalign_impl(align, size)
}

/// A page-aligned block.
///
/// # Safety
/// Always safe to call; `unsafe` only for the C ABI.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    aligned(PAGE_SIZE, size)
}

/// A page-aligned block of `size` rounded up to whole pages (at least one).
///
/// # Safety
/// Always safe to call; `unsafe` only for the C ABI.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    pvalloc_impl(size)
}

/// Usable bytes of `p` (0 for null).
///
/// # Safety
/// `p` must be null or a live block of ours (anything else aborts).
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    // SAFETY: the caller's contract; the engine validates the pointer and aborts on misuse.
    unsafe { engine::usable_size(p.cast()) }
}

/// glibc's internal name for [`malloc`].
///
/// # Safety
/// As [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    malloc_impl(size)
}

/// glibc's internal name for [`free`].
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
    // SAFETY: as in `free`.
    unsafe { engine::free(p.cast()) }
}

/// glibc's internal name for [`calloc`].
///
/// # Safety
/// As [`calloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_calloc(n: usize, size: usize) -> *mut c_void {
    calloc_impl(n, size)
}

/// glibc's internal name for [`realloc`].
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the caller's contract.
    unsafe { realloc_impl(p, size) }
}

/// glibc's internal name for [`memalign`].
///
/// # Safety
/// As [`memalign`].
#[no_mangle]
pub unsafe extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    memalign_impl(align, size)
}

/// glibc's internal name for [`valloc`].
///
/// # Safety
/// As [`valloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    aligned(PAGE_SIZE, size)
}

/// glibc's internal name for [`pvalloc`].
///
/// # Safety
/// As [`pvalloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    pvalloc_impl(size)
}

/// Returns the calling thread's cached blocks and every free page to the kernel. 1 if memory
/// was released, else 0. `pad` is ignored.
///
/// # Safety
/// Always safe to call; `unsafe` only for the C ABI.
#[no_mangle]
pub unsafe extern "C" fn malloc_trim(_pad: usize) -> c_int {
    let before = engine::stats::snapshot();
    engine::flush_thread_cache();
    engine::purge(true);
    let after = engine::stats::snapshot();
    c_int::from(after.purged_pages > before.purged_pages || after.huge_cached < before.huge_cached)
}

/// Accepts and ignores glibc's tuning parameters (configure with `SAMPALLOC_CONF`). Returns 1.
///
/// # Safety
/// Always safe to call; `unsafe` only for the C ABI.
#[no_mangle]
pub unsafe extern "C" fn mallopt(_param: c_int, _value: c_int) -> c_int {
    1
}

/// glibc's `struct mallinfo2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Mallinfo2 {
    /// Bytes of pages held for small and large blocks (in use or free, not yet purged).
    pub arena: usize,
    /// Free blocks held in thread caches.
    pub ordblks: usize,
    /// Unused (0).
    pub smblks: usize,
    /// Unused (0).
    pub hblks: usize,
    /// Bytes of live huge blocks (glibc: mmapped chunks).
    pub hblkhd: usize,
    /// Unused (0).
    pub usmblks: usize,
    /// Bytes of free blocks held in thread caches.
    pub fsmblks: usize,
    /// Bytes the program holds outside huge blocks.
    pub uordblks: usize,
    /// Bytes held but free: `arena - uordblks`, plus cached huge blocks.
    pub fordblks: usize,
    /// Bytes that `malloc_trim` could release (dirty pages).
    pub keepcost: usize,
}

/// glibc's older `struct mallinfo`, with `int` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Mallinfo {
    /// See [`Mallinfo2`], saturated at `INT_MAX`.
    pub arena: c_int,
    /// See [`Mallinfo2`].
    pub ordblks: c_int,
    /// See [`Mallinfo2`].
    pub smblks: c_int,
    /// See [`Mallinfo2`].
    pub hblks: c_int,
    /// See [`Mallinfo2`].
    pub hblkhd: c_int,
    /// See [`Mallinfo2`].
    pub usmblks: c_int,
    /// See [`Mallinfo2`].
    pub fsmblks: c_int,
    /// See [`Mallinfo2`].
    pub uordblks: c_int,
    /// See [`Mallinfo2`].
    pub fordblks: c_int,
    /// See [`Mallinfo2`].
    pub keepcost: c_int,
}

fn mallinfo_now() -> Mallinfo2 {
    let s = engine::stats::snapshot();
    let (mut cached, mut cached_bytes) = (0, 0);
    for c in s.classes.iter() {
        cached += c.cached;
        cached_bytes += c.cached * c.size;
    }
    let arena = s.active.saturating_sub(s.huge_allocated) + s.dirty.saturating_sub(s.huge_cached);
    let uordblks = s.allocated.saturating_sub(s.huge_allocated);
    Mallinfo2 {
        arena,
        ordblks: cached,
        smblks: 0,
        hblks: 0,
        hblkhd: s.huge_allocated,
        usmblks: 0,
        fsmblks: cached_bytes,
        uordblks,
        fordblks: arena.saturating_sub(uordblks) + s.huge_cached,
        keepcost: s.dirty,
    }
}

/// Allocator statistics in glibc's `mallinfo2` shape.
///
/// # Safety
/// Always safe to call; `unsafe` only for the C ABI.
#[no_mangle]
pub unsafe extern "C" fn mallinfo2() -> Mallinfo2 {
    mallinfo_now()
}

/// Allocator statistics in glibc's deprecated `mallinfo` shape (saturated at `INT_MAX`).
///
/// # Safety
/// Always safe to call; `unsafe` only for the C ABI.
#[no_mangle]
pub unsafe extern "C" fn mallinfo() -> Mallinfo {
    let m = mallinfo_now();
    let int = |v: usize| c_int::try_from(v).unwrap_or(c_int::MAX);
    Mallinfo {
        arena: int(m.arena),
        ordblks: int(m.ordblks),
        smblks: int(m.smblks),
        hblks: int(m.hblks),
        hblkhd: int(m.hblkhd),
        usmblks: int(m.usmblks),
        fsmblks: int(m.fsmblks),
        uordblks: int(m.uordblks),
        fordblks: int(m.fordblks),
        keepcost: int(m.keepcost),
    }
}

/// Prints the statistics report (as `stats_print:true` does at exit) to stderr.
///
/// # Safety
/// Always safe to call; `unsafe` only for the C ABI.
#[no_mangle]
pub unsafe extern "C" fn malloc_stats() {
    engine::stats::print(2);
}
