//! jemalloc's non-standard API over the engine: `mallctl` (and its MIB forms),
//! `malloc_stats_print`, and the `*allocx` family.
//!
//! Programs linked against libjemalloc (Redis, for one) keep calling these when `LD_PRELOAD`
//! hands their `malloc` to sampalloc; unanswered, they reach the unused jemalloc and read its
//! empty statistics. Supported `mallctl` names (anything else is `ENOENT`):
//!
//! - `epoch` (`uint64_t`, read/write: a write refreshes, a read returns a counter);
//! - `stats.allocated`, `.active`, `.resident`, `.mapped`, `.retained`, `.metadata` (`size_t`,
//!   from [`engine::stats::snapshot`]);
//! - `arenas.narenas` (`unsigned`), `arenas.page`, `arenas.quantum` (`size_t`);
//! - `arena.<i>.purge` (all dirty pages) and `arena.<i>.decay` (pages past their decay time):
//!   the engine purges all arenas at once, so any valid `<i>` does; `<i>` = `arenas.narenas` or
//!   4096 (`MALLCTL_ARENAS_ALL`) also flushes the calling thread's cache first, as
//!   `malloc_trim` does;
//! - `thread.tcache.flush`;
//! - `opt.narenas` (`unsigned`), `opt.dirty_decay_ms`, `opt.muzzy_decay_ms` (`ssize_t`),
//!   `opt.tcache`, `opt.background_thread` (`bool`);
//! - `background_thread` (`bool`, read/write, no effect: decay runs on allocation ticks);
//! - `version` (`const char *`).
//!
//! Reads and writes follow jemalloc's rules: `*oldlenp` or `newlen` not the value's size is
//! `EINVAL` (a short read still copies what fits), writing a read-only name or reading or
//! writing an action (`purge`, `flush`) is `EPERM`.
//!
//! MIBs: `[name index]`, or `[ARENA, i, op]` for `arena.<i>.*`.
//!
//! `*allocx` flags: `MALLOCX_LG_ALIGN(la)` is `la` in the low 6 bits, `MALLOCX_ZERO` is 0x40;
//! tcache and arena bits are ignored. Nothing here panics or allocates except through the
//! engine.

use core::ffi::{c_char, c_int, c_uint, c_void, CStr};
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use sampalloc_core as engine;
use sampalloc_core::{PAGE_SIZE, QUANTUM};

/// `MALLCTL_ARENAS_ALL`: the arena index meaning every arena.
const ARENAS_ALL: usize = 4096;
/// `MALLOCX_ZERO`.
const MALLOCX_ZERO: c_int = 0x40;
/// Largest size accepted (`PTRDIFF_MAX`).
const MAX_SIZE: usize = isize::MAX as usize;

/// The `version` string (jemalloc's format: `major.minor.bugfix-n-gcommit`).
static VERSION: &CStr = c"5.3.0-0-gsampalloc";

/// `epoch`: bumped by each write.
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// The names without an arena index, in MIB order (the MIB of `NAMES[k]` is `[k]`).
const NAMES: &[&[u8]] = &[
    b"epoch",
    b"stats.allocated",
    b"stats.active",
    b"stats.resident",
    b"stats.mapped",
    b"stats.retained",
    b"stats.metadata",
    b"arenas.narenas",
    b"arenas.page",
    b"arenas.quantum",
    b"thread.tcache.flush",
    b"opt.narenas",
    b"opt.dirty_decay_ms",
    b"opt.muzzy_decay_ms",
    b"opt.tcache",
    b"opt.background_thread",
    b"background_thread",
    b"version",
];
/// MIB component 0 of `arena.<i>.*`.
const ARENA: usize = 1000;
/// MIB component 2 of `arena.<i>.purge` and `arena.<i>.decay`.
const PURGE: usize = 0;
const DECAY: usize = 1;

/// A parsed name.
#[derive(Clone, Copy)]
enum Key {
    /// `NAMES[k]`.
    Named(usize),
    /// `arena.<i>.purge` (`all`) or `.decay`.
    Arena { index: usize, all: bool },
}

impl Key {
    fn parse(name: &[u8]) -> Option<Key> {
        if let Some(k) = NAMES.iter().position(|n| *n == name) {
            return Some(Key::Named(k));
        }
        let rest = name.strip_prefix(b"arena.")?;
        let dot = rest.iter().position(|&b| b == b'.')?;
        let (digits, op) = (&rest[..dot], &rest[dot + 1..]);
        if digits.is_empty() || digits.len() > 6 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let index = digits
            .iter()
            .fold(0usize, |v, d| v * 10 + usize::from(d - b'0'));
        let all = match op {
            b"purge" => true,
            b"decay" => false,
            _ => return None,
        };
        Some(Key::Arena { index, all })
    }

    /// Writes the MIB into `mib` (room for `*len` entries); the number used, or `None` when
    /// it does not fit.
    fn to_mib(self, mib: &mut [usize]) -> Option<usize> {
        let parts: &[usize] = match self {
            Key::Named(k) => &[k],
            Key::Arena { index, all } => &[ARENA, index, if all { PURGE } else { DECAY }],
        };
        mib.get_mut(..parts.len())?.copy_from_slice(parts);
        Some(parts.len())
    }

    fn from_mib(mib: &[usize]) -> Option<Key> {
        match *mib {
            [k] if k < NAMES.len() => Some(Key::Named(k)),
            [ARENA, index, PURGE] => Some(Key::Arena { index, all: true }),
            [ARENA, index, DECAY] => Some(Key::Arena { index, all: false }),
            _ => None,
        }
    }
}

/// The arguments of one `mallctl` call.
struct Call {
    oldp: *mut c_void,
    oldlenp: *mut usize,
    newp: *mut c_void,
    newlen: usize,
}

impl Call {
    fn read_only(&self) -> Result<(), c_int> {
        if !self.newp.is_null() || self.newlen != 0 {
            return Err(libc::EPERM);
        }
        Ok(())
    }

    /// A read-only value: jemalloc's `READONLY` then `READ`.
    ///
    /// # Safety
    /// As for [`Call::read`].
    unsafe fn read_only_value<T: Copy>(&self, v: T) -> Result<(), c_int> {
        self.read_only()?;
        // SAFETY: forwarded contract.
        unsafe { self.read(v) }
    }

    fn action(&self) -> Result<(), c_int> {
        if !self.oldp.is_null() || !self.oldlenp.is_null() {
            return Err(libc::EPERM);
        }
        self.read_only()
    }

    /// jemalloc's `READ`: copies `v` out when asked; a wrong `*oldlenp` copies what fits, stores
    /// the length copied and fails with `EINVAL`.
    ///
    /// # Safety
    /// `oldp` and `oldlenp`, when non-null, must be valid as `mallctl` requires (`*oldlenp`
    /// writable bytes at `oldp`).
    unsafe fn read<T: Copy>(&self, v: T) -> Result<(), c_int> {
        if self.oldp.is_null() || self.oldlenp.is_null() {
            return Ok(());
        }
        let size = core::mem::size_of::<T>();
        // SAFETY: the caller's contract: `oldlenp` is a valid `size_t`.
        let len = unsafe { *self.oldlenp };
        let copy = size.min(len);
        // SAFETY: `copy` bytes of `v` are readable, and at most `*oldlenp` bytes at `oldp` are
        // writable (the caller's contract); the two do not overlap (`v` is ours).
        unsafe { ptr::copy_nonoverlapping((&v as *const T).cast::<u8>(), self.oldp.cast(), copy) };
        if len != size {
            // SAFETY: as above.
            unsafe { *self.oldlenp = copy };
            return Err(libc::EINVAL);
        }
        Ok(())
    }

    /// jemalloc's `WRITE`: the value written, if any; `EINVAL` when `newlen` is not its size.
    ///
    /// # Safety
    /// `newp`, when non-null, must point to `newlen` readable bytes.
    unsafe fn write<T: Copy>(&self) -> Result<Option<T>, c_int> {
        if self.newp.is_null() {
            return Ok(None);
        }
        if self.newlen != core::mem::size_of::<T>() {
            return Err(libc::EINVAL);
        }
        // SAFETY: `newp` points to `size_of::<T>()` readable bytes (the caller's contract);
        // every `T` used here is valid for any bit pattern except `bool`, read as `u8` below.
        Ok(Some(unsafe { self.newp.cast::<T>().read_unaligned() }))
    }
}

fn narenas() -> c_uint {
    c_uint::try_from(engine::stats::snapshot().narenas).unwrap_or(c_uint::MAX)
}

/// Runs `key` for `call`.
///
/// # Safety
/// The pointers of `call` are as `mallctl` requires.
unsafe fn control(key: Key, call: &Call) -> Result<(), c_int> {
    let name = match key {
        Key::Arena { index, all } => {
            let n = narenas() as usize;
            if index > n && index != ARENAS_ALL {
                return Err(libc::ENOENT);
            }
            call.action()?;
            if all && (index == n || index == ARENAS_ALL) {
                engine::flush_thread_cache();
            }
            engine::purge(all);
            return Ok(());
        }
        Key::Named(k) => NAMES[k],
    };
    let stat = |f: fn(&engine::stats::Snapshot) -> usize| -> Result<(), c_int> {
        // SAFETY: `control`'s contract.
        unsafe { call.read_only_value(f(&engine::stats::snapshot())) }
    };
    match name {
        b"epoch" => {
            // SAFETY: `control`'s contract.
            let written = unsafe { call.write::<u64>() }?;
            if written.is_some() {
                EPOCH.fetch_add(1, Relaxed);
            }
            // SAFETY: `control`'s contract.
            unsafe { call.read(EPOCH.load(Relaxed)) }
        }
        b"stats.allocated" => stat(|s| s.allocated),
        b"stats.active" => stat(|s| s.active),
        b"stats.resident" => stat(|s| s.resident),
        b"stats.mapped" => stat(|s| s.mapped),
        b"stats.retained" => stat(|s| s.retained),
        b"stats.metadata" => stat(|s| s.metadata),
        b"arenas.narenas" => {
            // SAFETY: `control`'s contract.
            unsafe { call.read_only_value(narenas()) }
        }
        b"arenas.page" => {
            // SAFETY: `control`'s contract.
            unsafe { call.read_only_value(PAGE_SIZE) }
        }
        b"arenas.quantum" => {
            // SAFETY: `control`'s contract.
            unsafe { call.read_only_value(QUANTUM) }
        }
        b"thread.tcache.flush" => {
            call.action()?;
            engine::flush_thread_cache();
            Ok(())
        }
        b"opt.narenas" => {
            let n = engine::config::narenas_or_default();
            // SAFETY: `control`'s contract.
            unsafe { call.read_only_value(c_uint::try_from(n).unwrap_or(c_uint::MAX)) }
        }
        b"opt.dirty_decay_ms" => {
            // SAFETY: `control`'s contract.
            unsafe { call.read_only_value(engine::config::decay_ms() as isize) }
        }
        b"opt.muzzy_decay_ms" => {
            // SAFETY: `control`'s contract.
            unsafe { call.read_only_value(0isize) }
        }
        b"opt.tcache" => {
            // SAFETY: `control`'s contract.
            unsafe { call.read_only_value(true) }
        }
        b"opt.background_thread" => {
            // SAFETY: `control`'s contract.
            unsafe { call.read_only_value(false) }
        }
        b"background_thread" => {
            // Read as a byte: any value written is accepted and has no effect.
            // SAFETY: `control`'s contract.
            let _ = unsafe { call.write::<u8>() }?;
            // SAFETY: `control`'s contract.
            unsafe { call.read(false) }
        }
        b"version" => {
            // SAFETY: `control`'s contract.
            unsafe { call.read_only_value(VERSION.as_ptr()) }
        }
        _ => Err(libc::ENOENT),
    }
}

/// The key a mallctl name (a C string) names, if any.
///
/// # Safety
/// `name` is a C string.
unsafe fn key_of_name(name: *const c_char) -> Option<Key> {
    // SAFETY: the caller's contract.
    Key::parse(unsafe { CStr::from_ptr(name) }.to_bytes())
}

/// Reads or writes `key` for `mallctl`/`mallctlbymib`: 0 or an error number.
///
/// # Safety
/// `oldp`/`oldlenp`/`newp`/`newlen` as jemalloc's `mallctl`.
unsafe fn control_status(
    key: Key,
    oldp: *mut c_void,
    oldlenp: *mut usize,
    newp: *mut c_void,
    newlen: usize,
) -> c_int {
    let call = Call {
        oldp,
        oldlenp,
        newp,
        newlen,
    };
    // SAFETY: the caller's contract.
    match unsafe { control(key, &call) } {
        Ok(()) => 0,
        Err(e) => e,
    }
}

/// `mallctl(name, oldp, oldlenp, newp, newlen)`: 0 or an error number.
///
/// # Safety
/// `name` is null or a C string; `oldp`/`oldlenp`/`newp`/`newlen` as jemalloc's `mallctl`.
pub unsafe fn mallctl(
    name: *const c_char,
    oldp: *mut c_void,
    oldlenp: *mut usize,
    newp: *mut c_void,
    newlen: usize,
) -> c_int {
    if name.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: `name` is a C string (the caller's contract).
    let Some(key) = (unsafe { key_of_name(name) }) else {
        return libc::ENOENT;
    };
    // SAFETY: the caller's contract.
    unsafe { control_status(key, oldp, oldlenp, newp, newlen) }
}

/// `mallctlnametomib(name, mibp, miblenp)`: stores the MIB of `name` and its length.
///
/// # Safety
/// `name` is null or a C string; `mibp` has room for `*miblenp` entries.
pub unsafe fn mallctlnametomib(
    name: *const c_char,
    mibp: *mut usize,
    miblenp: *mut usize,
) -> c_int {
    if name.is_null() || mibp.is_null() || miblenp.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: `name` is a C string (the caller's contract).
    let Some(key) = (unsafe { key_of_name(name) }) else {
        return libc::ENOENT;
    };
    // SAFETY: `mibp` has room for `*miblenp` entries (the caller's contract).
    let mib = unsafe { core::slice::from_raw_parts_mut(mibp, *miblenp) };
    match key.to_mib(mib) {
        Some(n) => {
            // SAFETY: `miblenp` is valid (checked non-null; the caller's contract).
            unsafe { *miblenp = n };
            0
        }
        None => libc::ENOENT,
    }
}

/// `mallctlbymib(mib, miblen, oldp, oldlenp, newp, newlen)`.
///
/// # Safety
/// `mib` has `miblen` entries; the rest as [`mallctl`].
pub unsafe fn mallctlbymib(
    mib: *const usize,
    miblen: usize,
    oldp: *mut c_void,
    oldlenp: *mut usize,
    newp: *mut c_void,
    newlen: usize,
) -> c_int {
    if mib.is_null() {
        return libc::ENOENT;
    }
    // SAFETY: `mib` has `miblen` entries (the caller's contract).
    let Some(key) = Key::from_mib(unsafe { core::slice::from_raw_parts(mib, miblen) }) else {
        return libc::ENOENT;
    };
    // SAFETY: the caller's contract.
    unsafe { control_status(key, oldp, oldlenp, newp, newlen) }
}

/// jemalloc's `write_cb`.
pub type WriteCb = Option<unsafe extern "C" fn(*mut c_void, *const c_char)>;

/// `malloc_stats_print(write_cb, cbopaque, opts)`: the engine's report, through `write_cb`
/// (in NUL-terminated pieces) or to stderr when it is null. `opts` is ignored.
///
/// The report is written to a memory file first (the engine writes to a file descriptor),
/// then read back through a stack buffer; without one, it goes to stderr.
///
/// # Safety
/// `write_cb`, if set, must be callable with `cbopaque` and a C string.
pub unsafe fn malloc_stats_print(write_cb: WriteCb, cbopaque: *mut c_void, _opts: *const c_char) {
    let Some(cb) = write_cb else {
        engine::stats::print(2);
        return;
    };
    // SAFETY: a C string literal; no allocation.
    let fd = unsafe { libc::memfd_create(c"sampalloc-stats".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        engine::stats::print(2);
        return;
    }
    engine::stats::print(fd);
    let mut buf = [0u8; 1024];
    // SAFETY: `fd` is our memory file.
    if unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } == 0 {
        loop {
            // SAFETY: reads at most `len - 1` bytes into our buffer, leaving room for the NUL.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len() - 1) };
            if n <= 0 {
                break;
            }
            buf[n as usize] = 0;
            // SAFETY: the caller's contract; `buf` is NUL-terminated.
            unsafe { cb(cbopaque, buf.as_ptr().cast()) };
        }
    }
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
}

/// The alignment `flags` ask for (at least [`QUANTUM`]), or `None` beyond `PTRDIFF_MAX`.
fn align_of(flags: c_int) -> Option<usize> {
    let la = (flags & 0x3f) as u32;
    if la == 0 {
        return Some(QUANTUM);
    }
    1usize
        .checked_shl(la)
        .filter(|&a| a <= MAX_SIZE)
        .map(|a| a.max(QUANTUM))
}

fn round_page(n: usize) -> Option<usize> {
    n.checked_add(PAGE_SIZE - 1).map(|v| v & !(PAGE_SIZE - 1))
}

/// The usable size a block of `size` bytes aligned to `align` gets (the engine's rules in
/// `alloc_aligned` and the huge allocator), or `None` when it cannot be served.
fn usable_for(size: usize, align: usize) -> Option<usize> {
    if size > MAX_SIZE {
        return None;
    }
    let size = size.max(1);
    if align <= QUANTUM {
        if size <= engine::LARGE_MAX {
            return Some(engine::class_size(engine::class_of(size)));
        }
        return round_page(size);
    }
    let rounded = size.checked_add(align - 1)? & !(align - 1);
    if rounded <= engine::SMALL_MAX && align <= PAGE_SIZE {
        return Some(engine::class_size(engine::class_of(rounded)));
    }
    if rounded <= engine::LARGE_MAX {
        let class = engine::class_of(rounded).max(engine::NUM_SMALL);
        let pages = engine::class_size(class).div_ceil(PAGE_SIZE);
        if pages + (align / PAGE_SIZE).max(1) - 1 <= engine::USABLE_PAGES {
            return Some(engine::class_size(class));
        }
    }
    round_page(size)
}

/// `nallocx(size, flags)`: the usable size `mallocx(size, flags)` would return; 0 if none.
pub fn nallocx(size: usize, flags: c_int) -> usize {
    align_of(flags)
        .and_then(|a| usable_for(size, a))
        .unwrap_or(0)
}

/// `mallocx(size, flags)`: a block aligned and zeroed as `flags` ask; null when out of memory.
pub fn mallocx(size: usize, flags: c_int) -> *mut c_void {
    let zero = flags & MALLOCX_ZERO != 0;
    let Some(align) = align_of(flags) else {
        return ptr::null_mut();
    };
    if size > MAX_SIZE {
        return ptr::null_mut();
    }
    let p = if align <= QUANTUM {
        if zero {
            engine::malloc_zeroed(size)
        } else {
            engine::malloc(size)
        }
    } else {
        engine::alloc_aligned(align, size, zero)
    };
    p.cast()
}

/// `rallocx(p, size, flags)`: resizes `p` (moving it if need be) to `size` bytes aligned as
/// `flags` ask; with `MALLOCX_ZERO` the bytes past the old usable size are zeroed. Null (and
/// `p` intact) when out of memory.
///
/// # Safety
/// `p` must be a live block of ours (anything else aborts).
pub unsafe fn rallocx(p: *mut c_void, size: usize, flags: c_int) -> *mut c_void {
    let Some(align) = align_of(flags) else {
        return ptr::null_mut();
    };
    if size > MAX_SIZE {
        return ptr::null_mut();
    }
    // SAFETY: the caller's contract; invalid pointers abort.
    let old = unsafe { engine::usable_size(p.cast()) };
    let q: *mut u8 = if align <= QUANTUM {
        // SAFETY: the caller's contract; null leaves the block intact.
        unsafe { engine::realloc(p.cast(), size.max(1)) }
    } else {
        let q = engine::alloc_aligned(align, size, false);
        if !q.is_null() {
            // SAFETY: both blocks are live and distinct; `min(old, size)` bytes fit in each.
            unsafe {
                ptr::copy_nonoverlapping(p.cast::<u8>(), q, old.min(size));
                engine::free(p.cast());
            }
        }
        q
    };
    if q.is_null() {
        return ptr::null_mut();
    }
    if flags & MALLOCX_ZERO != 0 {
        // SAFETY: `q` is a live block of ours.
        let new = unsafe { engine::usable_size(q) };
        if new > old {
            // SAFETY: bytes `old..new` lie inside `q`.
            unsafe { ptr::write_bytes(q.add(old), 0, new - old) };
        }
    }
    q.cast()
}

/// `xallocx(p, size, extra, flags)`: resizes in place if it can, and returns the usable size
/// after. The engine never resizes in place through this call, so it is `p`'s usable size.
///
/// # Safety
/// `p` must be a live block of ours (anything else aborts).
pub unsafe fn xallocx(p: *mut c_void, _size: usize, _extra: usize, _flags: c_int) -> usize {
    // SAFETY: the caller's contract.
    unsafe { engine::usable_size(p.cast()) }
}

/// `sallocx(p, flags)`: the usable size of `p`.
///
/// # Safety
/// `p` must be a live block of ours (anything else aborts).
pub unsafe fn sallocx(p: *const c_void, _flags: c_int) -> usize {
    // SAFETY: the caller's contract.
    unsafe { engine::usable_size(p.cast_mut().cast()) }
}

/// `dallocx(p, flags)`: frees `p`.
///
/// # Safety
/// `p` must be a live block of ours no longer in use (anything else aborts).
pub unsafe fn dallocx(p: *mut c_void, _flags: c_int) {
    // SAFETY: the caller's contract.
    unsafe { engine::free(p.cast()) }
}

/// `sdallocx(p, size, flags)`: frees `p` (the size is not trusted: the block is validated as
/// `free` does).
///
/// # Safety
/// As [`dallocx`].
pub unsafe fn sdallocx(p: *mut c_void, _size: usize, _flags: c_int) {
    // SAFETY: the caller's contract.
    unsafe { engine::free(p.cast()) }
}
