//! `mallinfo2` and `mallinfo`: the engine's statistics in glibc's shapes.

use core::ffi::c_int;
use sampalloc_core as engine;

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

/// Allocator statistics now, in glibc's `mallinfo2` shape.
pub fn mallinfo2() -> Mallinfo2 {
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

/// Allocator statistics now, in glibc's deprecated `mallinfo` shape (saturated at `INT_MAX`).
pub fn mallinfo() -> Mallinfo {
    let m = mallinfo2();
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
