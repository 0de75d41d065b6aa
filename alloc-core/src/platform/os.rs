//! The platform layer: the only module that talks to the kernel.
//!
//! Mappings (`mmap`, `munmap`, `mremap`), purging (`madvise`), the clock, the CPU count, raw
//! writes to stderr and the fatal-error path. Nothing here allocates, so every function may be
//! called from inside `malloc`.
//!
//! Hot statics: the small statics every process touches (start-up state, options, counters)
//! are placed in section `.data.sampalloc_hot`. The linker puts it in `.data`, whose last page
//! the loader has already written (it zeroes the start of `.bss` there), so they cost no page
//! fault. The preload library's `.data` is small and starts a page (see its build script), so
//! it and the hot statics share that one page. In `.bss` they were spread over four pages,
//! each first read (mapping the zero page) and then written: seven faults at start-up.

use core::ffi::CStr;
use core::ptr;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// The page size the engine is built for. Checked against the kernel's at start-up (but on
/// x86-64, whose pages are always 4 KiB).
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Bytes the engine has mapped now, process-wide: every mapping goes through this module.
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// Bytes mapped now by the engine (segments, huge blocks, metadata), all of them.
pub fn mapped() -> usize {
    MAPPED.load(Ordering::Relaxed)
}

/// Maps `size` bytes of fresh, zeroed, read-write anonymous memory. Null on failure.
pub fn map(size: usize) -> *mut u8 {
    map_hinted(ptr::null_mut(), size)
}

fn map_hinted(hint: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping touches no existing memory; a hint is only a hint.
    let p = unsafe {
        libc::mmap(
            hint.cast(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        MAPPED.fetch_add(size, Ordering::Relaxed);
        p.cast()
    }
}

/// Maps `size` bytes aligned to `align` (a power of two, a multiple of the page size).
/// Null on failure.
pub fn map_aligned(size: usize, align: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two() && align >= PAGE_SIZE);
    let p = map(size);
    if p.is_null() || (p as usize) & (align - 1) == 0 {
        return p;
    }
    // SAFETY: `p` is our own mapping of `size` bytes.
    unsafe { unmap(p, size) };
    let Some(over) = size.checked_add(align - PAGE_SIZE) else {
        return ptr::null_mut();
    };
    let raw = map(over);
    if raw.is_null() {
        return raw;
    }
    let start = (raw as usize + align - 1) & !(align - 1);
    let lead = start - raw as usize;
    let trail = over - lead - size;
    // SAFETY: both trimmed pieces lie inside the mapping we just made and are not handed out.
    unsafe {
        if lead > 0 {
            unmap(raw, lead);
        }
        if trail > 0 {
            unmap((start + size) as *mut u8, trail);
        }
    }
    start as *mut u8
}

/// What to tell the kernel about huge pages for a new dense mapping (see [`map_dense`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugeAdvice {
    /// Nothing: the kernel's mode decides.
    None,
    /// `MADV_HUGEPAGE` on the mapping (the kernel uses huge pages for its 2 MiB-aligned pages).
    Huge,
    /// `MADV_NOHUGEPAGE` on the whole mapping.
    NoHuge,
}

/// Maps `size` bytes aligned to `align` like [`map_aligned`], for memory that will be densely
/// used (segments, huge blocks), and gives the kernel `advice` about backing it with
/// transparent huge pages. The advice is only a hint: a refused `madvise` changes nothing.
pub fn map_dense(size: usize, align: usize, advice: HugeAdvice) -> *mut u8 {
    let p = map_aligned(size, align);
    if !p.is_null() {
        advise_huge(p, size, advice);
    }
    p
}

/// Gives `advice` for the whole of `[p, p + size)`, a mapping of ours. The kernel backs only
/// the 2 MiB-aligned pages inside it with huge pages, but the advice covers it all: advising
/// part of a mapping splits it into two VMAs, and `mremap` (a huge block's `realloc`) refuses a
/// range that spans more than one.
pub fn advise_huge(p: *mut u8, size: usize, advice: HugeAdvice) {
    let how = match advice {
        HugeAdvice::None => return,
        HugeAdvice::Huge => libc::MADV_HUGEPAGE,
        HugeAdvice::NoHuge => libc::MADV_NOHUGEPAGE,
    };
    // SAFETY: the range is a mapping of ours; these two advices only set how the kernel may
    // back it and never change its contents.
    unsafe { libc::madvise(p.cast(), size, how) };
}

/// The kernel's transparent huge page mode, `/sys/kernel/mm/transparent_hugepage/enabled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThpMode {
    /// Every anonymous mapping may get huge pages.
    Always,
    /// Only mappings given `MADV_HUGEPAGE`.
    Madvise,
    /// None (also when the file is missing or unreadable: no THP support).
    Never,
}

const THP_MODES: [&[u8]; 3] = [b"always", b"madvise", b"never"];
const THP_DEFRAGS: [&[u8]; 5] = [b"always", b"defer", b"defer+madvise", b"madvise", b"never"];
/// The kernel's THP settings: 0 until read, else `1 + mode | (1 + defrag) << 2`.
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static THP_STATE: AtomicU8 = AtomicU8::new(0);

fn thp_state() -> u8 {
    let s = THP_STATE.load(Ordering::Relaxed);
    if s != 0 {
        return s;
    }
    // Read once, at the first mapping (start-up); two threads racing read the same files.
    let mode =
        read_bracketed(c"/sys/kernel/mm/transparent_hugepage/enabled", &THP_MODES).unwrap_or(2);
    let defrag = read_bracketed(c"/sys/kernel/mm/transparent_hugepage/defrag", &THP_DEFRAGS)
        .map_or(0, |d| d + 1);
    let s = (1 + mode as u8) | (defrag as u8) << 2;
    THP_STATE.store(s, Ordering::Relaxed);
    s
}

/// The kernel's THP mode, read on first use (without allocating) and remembered.
pub fn thp_mode() -> ThpMode {
    match thp_state() & 3 {
        1 => ThpMode::Always,
        2 => ThpMode::Madvise,
        _ => ThpMode::Never,
    }
}

/// The kernel's THP mode as its file names it.
pub fn thp_mode_name() -> &'static str {
    match thp_mode() {
        ThpMode::Always => "always",
        ThpMode::Madvise => "madvise",
        ThpMode::Never => "never",
    }
}

/// Whether a fault in a mapping given `MADV_HUGEPAGE` may reclaim and compact memory on the
/// spot when no huge page is free: the kernel's defrag setting is `always`, `madvise` or
/// `defer+madvise` (or unreadable). With `defer` or `never` it takes a huge page only if one
/// is free and leaves compaction to the kernel's threads.
pub fn thp_advice_may_stall() -> bool {
    !matches!(thp_defrag_name(), "defer" | "never")
}

/// The kernel's THP defrag setting as its file names it (`?` if unreadable).
pub fn thp_defrag_name() -> &'static str {
    match (thp_state() >> 2) as usize {
        0 => "?",
        d => core::str::from_utf8(THP_DEFRAGS[d - 1]).unwrap_or("?"),
    }
}

/// Reads a sysfs choice file (`always [madvise] never`) into a stack buffer and returns the
/// index in `names` of the bracketed choice.
fn read_bracketed(path: &CStr, names: &[&[u8]]) -> Option<usize> {
    let mut buf = [0u8; 128];
    let mut len = 0;
    for_each_line(path, |line| {
        if len == 0 {
            len = line.len().min(buf.len());
            buf[..len].copy_from_slice(&line[..len]);
        }
    });
    let text = &buf[..len];
    let open = text.iter().position(|&b| b == b'[')?;
    let close = open + text[open..].iter().position(|&b| b == b']')?;
    let chosen = &text[open + 1..close];
    names.iter().position(|&n| n == chosen)
}

/// Calls `f` with every line of the file at `path` (without its newline), read with raw
/// `read(2)` into a 4 KiB stack buffer: nothing is allocated. A line longer than the buffer is
/// cut to its first 4 KiB. False if the file could not be opened.
pub fn for_each_line(path: &CStr, mut f: impl FnMut(&[u8])) -> bool {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; 4096];
    let mut have = 0; // bytes of an unfinished line at the start of `buf`
    let mut skipping = false; // inside the cut-off rest of an over-long line
    loop {
        // SAFETY: reading into the free part of a local buffer.
        let n = unsafe { libc::read(fd, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        let end = have + n as usize;
        let mut start = 0;
        while let Some(i) = buf[start..end].iter().position(|&b| b == b'\n') {
            if !skipping {
                f(&buf[start..start + i]);
            }
            skipping = false;
            start += i + 1;
        }
        if start == 0 && end == buf.len() {
            // A line fills the buffer: hand over its first part, drop the rest.
            if !skipping {
                f(&buf[..end]);
            }
            skipping = true;
            have = 0;
        } else {
            buf.copy_within(start..end, 0);
            have = end - start;
        }
    }
    if have > 0 && !skipping {
        f(&buf[..have]);
    }
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    true
}

/// Returns a mapping (or part of one) to the kernel.
///
/// # Safety
/// `[p, p + size)` must be memory this process mapped and no longer uses.
pub unsafe fn unmap(p: *mut u8, size: usize) {
    // SAFETY: the caller owns the range.
    if unsafe { libc::munmap(p.cast(), size) } == 0 {
        MAPPED.fetch_sub(size, Ordering::Relaxed);
    }
}

/// Drops the physical pages behind `[p, p + size)`; the range stays mapped and reads back as
/// zeroes. This is how freed memory leaves the resident set.
///
/// # Safety
/// The range must be page-aligned memory of ours whose contents are no longer needed.
pub unsafe fn purge(p: *mut u8, size: usize) {
    // SAFETY: the caller owns the range and gives up its contents.
    unsafe { libc::madvise(p.cast(), size, libc::MADV_DONTNEED) };
}

/// Grows or shrinks the mapping at `p` without moving it. True on success.
///
/// # Safety
/// `p` must start a mapping of ours of `old_size` bytes.
pub unsafe fn remap_in_place(p: *mut u8, old_size: usize, new_size: usize) -> bool {
    // SAFETY: without MREMAP_MAYMOVE the kernel either resizes in place or fails.
    let q = unsafe { libc::mremap(p.cast(), old_size, new_size, 0) };
    if q == libc::MAP_FAILED {
        return false;
    }
    if new_size >= old_size {
        MAPPED.fetch_add(new_size - old_size, Ordering::Relaxed);
    } else {
        MAPPED.fetch_sub(old_size - new_size, Ordering::Relaxed);
    }
    true
}

/// Moves the mapping at `p` to `to` (which must be a mapping of ours of `new_size` bytes that is
/// replaced), resizing it. True on success.
///
/// # Safety
/// `p` must start a mapping of ours of `old_size` bytes and `[to, to + new_size)` must be ours.
pub unsafe fn remap_to(p: *mut u8, old_size: usize, new_size: usize, to: *mut u8) -> bool {
    // SAFETY: MREMAP_FIXED replaces our own reservation at `to`; the old range is released.
    let q = unsafe {
        libc::mremap(
            p.cast(),
            old_size,
            new_size,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to.cast::<libc::c_void>(),
        )
    };
    if q == libc::MAP_FAILED {
        return false;
    }
    // The mapping at `to` (counted) is replaced; the old range is gone.
    MAPPED.fetch_sub(old_size, Ordering::Relaxed);
    true
}

/// The alternate signal stack `[lo, hi)` if the thread is running on it and `sp` lies in it.
pub fn alt_stack(sp: usize) -> Option<(usize, usize)> {
    // SAFETY: a zeroed stack_t is a valid out-parameter; a null new stack only queries.
    let mut ss: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: as above; sigaltstack is a plain system call.
    if unsafe { libc::sigaltstack(core::ptr::null(), &mut ss) } == 0
        && ss.ss_flags & libc::SS_ONSTACK != 0
    {
        let lo = ss.ss_sp as usize;
        let hi = lo.saturating_add(ss.ss_size);
        if sp > lo && sp < hi {
            return Some((lo, hi));
        }
    }
    None
}

/// Whether `[from, to)` is readable memory, asking the kernel for one byte of every page
/// (`process_vm_readv` on our own process: it fails on a guard page instead of faulting).
/// `None` if the kernel would not say (the call is filtered, e.g. by seccomp).
pub fn readable(from: usize, to: usize) -> Option<bool> {
    const MAX_PAGES: usize = 32;
    let page = PAGE_SIZE;
    let mut remote = [libc::iovec {
        iov_base: core::ptr::null_mut(),
        iov_len: 0,
    }; MAX_PAGES];
    let mut n = 0;
    let mut addr = from;
    while addr < to && n < MAX_PAGES {
        remote[n] = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: 1,
        };
        n += 1;
        addr = (addr & !(page - 1)) + page;
    }
    let mut sink = [0u8; MAX_PAGES];
    let local = libc::iovec {
        iov_base: sink.as_mut_ptr().cast(),
        iov_len: n,
    };
    // SAFETY: reads at most `n` bytes of our own memory into `sink`, through the kernel, which
    // checks every remote address; nothing is written to the remote side.
    let got = unsafe {
        libc::process_vm_readv(
            libc::getpid(),
            &local,
            1,
            remote.as_ptr(),
            n as libc::c_ulong,
            0,
        )
    };
    if got == n as isize {
        Some(true)
    } else if got >= 0 || errno() == libc::EFAULT {
        Some(false)
    } else {
        None
    }
}

/// Copies `out.len()` bytes of our own memory at `from` into `out` through the kernel
/// (`process_vm_readv`): an address that is not mapped is an error, not a fault, and a
/// concurrent write by another thread is no data race of ours. `Some(false)`: not readable
/// (whole or in part); `None`: the kernel would not say (the call is filtered).
pub fn copy_own(from: usize, out: &mut [u8]) -> Option<bool> {
    if out.is_empty() {
        return Some(true);
    }
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: out.len(),
    };
    let remote = libc::iovec {
        iov_base: from as *mut libc::c_void,
        iov_len: out.len(),
    };
    // SAFETY: writes at most `out.len()` bytes into `out`; the kernel checks the remote
    // range, of which it only reads.
    let got = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if got == out.len() as isize {
        Some(true)
    } else if got >= 0 || errno() == libc::EFAULT {
        Some(false)
    } else {
        None
    }
}

/// Installs `handler` for signal `sig` (`SA_RESTART`, empty mask). False if refused.
pub fn install_signal_handler(sig: i32, handler: extern "C" fn(libc::c_int)) -> bool {
    // SAFETY: a zeroed sigaction is valid; the handler is a plain extern "C" function, which
    // the caller promises is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, ptr::null_mut()) == 0
    }
}

/// Milliseconds of a coarse monotonic clock (a vDSO read, no system call).
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The number of CPUs this process may run on (at least 1).
pub fn cpu_count() -> usize {
    // SAFETY: `set` is a plain bit set the kernel fills in; zeroed is a valid value.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        if affinity(&mut set) {
            let n = libc::CPU_COUNT(&set);
            if n > 0 {
                return n as usize;
            }
        }
    }
    1
}

/// Fills `set` with the CPUs this process may run on; false on failure. On x86-64 Linux, the
/// system call itself: glibc's wrapper lies on a page of its code that nothing else a
/// threaded program runs touches (a page fault at the second thread's set-up, which is when
/// the arenas are counted).
///
/// # Safety
/// `set` must be valid for writes.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
unsafe fn affinity(set: *mut libc::cpu_set_t) -> bool {
    let ret: isize;
    // SAFETY: sched_getaffinity(0, size, set) writes at most `size` bytes to `set`, valid per
    // the contract; the `syscall` instruction clobbers only rcx and r11 (and rax, the result).
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") libc::SYS_sched_getaffinity as isize => ret,
            in("rdi") 0,
            in("rsi") core::mem::size_of::<libc::cpu_set_t>(),
            in("rdx") set,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    // The raw call returns the bytes it wrote (glibc's wrapper returns 0).
    ret > 0
}

/// Fills `set` with the CPUs this process may run on; false on failure.
///
/// # Safety
/// `set` must be valid for writes.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
unsafe fn affinity(set: *mut libc::cpu_set_t) -> bool {
    // SAFETY: `set` is valid for writes of its own size, per the contract.
    unsafe { libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), set) == 0 }
}

/// Faults in every page that `[p, p + len)` overlaps with a write, changing nothing: a page
/// of `.bss` first read maps the zero page, and the write after it faults a second time.
///
/// # Safety
/// The range must be mapped, writable memory that no other thread reads or writes
/// non-atomically meanwhile.
pub unsafe fn fault_in_for_write(p: *const u8, len: usize) {
    let end = p as usize + len;
    // The first 8-aligned word of the range in each page it overlaps.
    let mut word = (p as usize).next_multiple_of(8);
    while word + 8 <= end {
        // SAFETY: an aligned word of the range; a compare-exchange of 0 with 0 leaves any
        // value as it was, but it is a locked write (it faults as one) that no compiler
        // removes, unlike an atomic add of 0, which becomes a load.
        let w = unsafe { AtomicUsize::from_ptr(word as *mut usize) };
        let _ = w.compare_exchange(0, 0, Ordering::Relaxed, Ordering::Relaxed);
        word = (word | (PAGE_SIZE - 1)) + 1;
    }
}

/// The kernel's page size.
pub fn kernel_page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        PAGE_SIZE
    }
}

/// Writes all of `bytes` to file descriptor `fd` with raw `write(2)`, ignoring errors.
pub fn write_fd(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid readable slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    // SAFETY: glibc's errno location is always valid for the calling thread.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub fn set_errno(value: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value };
}

/// A line of text built on the stack, for messages written from inside the allocator.
pub struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }

    /// Appends text (truncated at the line's capacity).
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Appends raw bytes (truncated at the line's capacity).
    pub fn bytes(&mut self, s: &[u8]) -> &mut Self {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }

    /// Appends `0x` and the value in hexadecimal.
    pub fn hex(&mut self, v: usize) -> &mut Self {
        let mut digits = [0u8; 18];
        digits[0] = b'0';
        digits[1] = b'x';
        let mut n = 2;
        let mut started = false;
        for shift in (0..16).rev() {
            let d = (v >> (shift * 4)) & 0xf;
            if d != 0 || started || shift == 0 {
                started = true;
                digits[n] = b"0123456789abcdef"[d];
                n += 1;
            }
        }
        self.bytes(&digits[..n])
    }

    /// Appends `key: v`, after two spaces unless the line is empty: one field of a
    /// `key: value` line.
    pub fn field(&mut self, key: &str, v: u64) -> &mut Self {
        if self.len != 0 {
            self.str("  ");
        }
        self.str(key).str(": ").dec(v)
    }

    /// Appends the value in decimal.
    pub fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = digits.len();
        loop {
            n -= 1;
            digits[n] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let s = digits;
        self.bytes(&s[n..])
    }

    /// The text so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes the line and a newline to stderr.
    pub fn emit(&mut self) {
        self.str("\n");
        write_fd(2, self.as_bytes());
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.str(s);
        Ok(())
    }
}

/// Writes `sampalloc: <op>(): <what> <ptr>` to stderr and aborts the process, `op` naming the
/// public function the pointer was handed to (`free`, `realloc`…). This is the one way the
/// allocator reports misuse it cannot survive (invalid or double free).
#[cold]
#[inline(never)]
pub fn fatal_pointer(op: &str, what: &str, p: usize) -> ! {
    Line::new()
        .str("sampalloc: ")
        .str(op)
        .str("(): ")
        .str(what)
        .str(" ")
        .hex(p)
        .emit();
    // SAFETY: abort has no preconditions and never returns.
    unsafe { libc::abort() }
}

/// Writes `sampalloc: internal error: panic at <file>:<line>` to stderr and aborts: the panic
/// handler of `libsampalloc.so`, which has no std, and must neither unwind nor allocate.
#[cold]
#[inline(never)]
pub fn fatal_panic(file: &str, line: u32) -> ! {
    Line::new()
        .str("sampalloc: internal error: panic at ")
        .str(file)
        .str(":")
        .dec(line as u64)
        .emit();
    // SAFETY: abort has no preconditions and never returns.
    unsafe { libc::abort() }
}

/// Writes `sampalloc: <what>` to stderr and aborts.
#[cold]
#[inline(never)]
pub fn fatal(what: &str) -> ! {
    Line::new().str("sampalloc: ").str(what).emit();
    // SAFETY: abort has no preconditions and never returns.
    unsafe { libc::abort() }
}

/// The calling thread's minor page faults so far (for tests that count them).
#[cfg(test)]
pub fn thread_minor_faults() -> i64 {
    // SAFETY: getrusage only fills the out-structure.
    unsafe {
        let mut u: libc::rusage = core::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
        u.ru_minflt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_formats_numbers() {
        let mut l = Line::new();
        l.str("p=")
            .hex(0xdead_beef)
            .str(" n=")
            .dec(0)
            .str(",")
            .dec(1234567);
        assert_eq!(l.as_bytes(), b"p=0xdeadbeef n=0,1234567");
        let mut z = Line::new();
        z.hex(0);
        assert_eq!(z.as_bytes(), b"0x0");
    }

    /// Reads then writes each of `pages` pages at `p`, counting this thread's faults.
    ///
    /// # Safety
    /// `p` must be `pages` mapped, writable pages.
    unsafe fn read_then_write(p: *mut u8, pages: usize) -> i64 {
        let before = thread_minor_faults();
        for i in 0..pages {
            // SAFETY: inside the mapping.
            unsafe {
                let q = p.add(i * PAGE_SIZE + 64);
                // The value passes through `black_box`, else the optimizer folds the two
                // accesses into one increment of memory, which faults once, as a write.
                let v = core::hint::black_box(q.read_volatile());
                q.write_volatile(v.wrapping_add(1));
            }
        }
        thread_minor_faults() - before
    }

    #[test]
    fn faulting_in_for_write_takes_one_fault_a_page_and_changes_nothing() {
        let pages = 8;
        let fresh = map(pages * PAGE_SIZE);
        let warmed = map(pages * PAGE_SIZE);
        assert!(!fresh.is_null() && !warmed.is_null());
        // SAFETY: both are `pages` fresh pages, used by this thread alone.
        unsafe {
            // Fresh pages fault twice each: the read maps the zero page, the write copies it.
            assert_eq!(read_then_write(fresh, pages), 2 * pages as i64);
            warmed.add(3 * PAGE_SIZE).write(9);
            let before = thread_minor_faults();
            // From inside the first page to inside the last: each page it overlaps faults once,
            // but for the fourth, already written.
            fault_in_for_write(warmed.add(100), (pages - 1) * PAGE_SIZE);
            assert_eq!(
                thread_minor_faults() - before,
                pages as i64 - 1,
                "one fault a page"
            );
            assert_eq!(
                read_then_write(warmed, pages),
                0,
                "the pages are writable now"
            );
            assert_eq!(*warmed.add(3 * PAGE_SIZE), 9, "values are kept");
            assert_eq!(*warmed.add(5 * PAGE_SIZE + 64), 1);
            unmap(fresh, pages * PAGE_SIZE);
            unmap(warmed, pages * PAGE_SIZE);
        }
    }

    #[test]
    fn aligned_mappings_are_aligned_and_zeroed() {
        for align in [PAGE_SIZE, 1 << 16, 1 << 22] {
            let p = map_aligned(3 * PAGE_SIZE, align);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0);
            // SAFETY: freshly mapped, 3 pages long.
            unsafe {
                assert_eq!(*p.add(2 * PAGE_SIZE + 5), 0);
                *p = 7;
                purge(p, PAGE_SIZE);
                assert_eq!(*p, 0, "purged pages read back as zero");
                unmap(p, 3 * PAGE_SIZE);
            }
        }
    }

    #[test]
    fn lines_are_read_whole_and_long_ones_cut() {
        let path = std::env::temp_dir().join(format!("sampalloc-lines-{}", std::process::id()));
        let long = "x".repeat(10_000);
        std::fs::write(&path, format!("one\n\n{long}\nlast")).unwrap();
        let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let mut lines = Vec::new();
        assert!(for_each_line(&cpath, |l| lines.push(l.to_vec())));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            lines.len(),
            4,
            "{:?}",
            lines.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        assert_eq!(lines[0], b"one");
        assert!(lines[1].is_empty());
        assert_eq!(lines[2], vec![b'x'; 4096], "cut to the buffer");
        assert_eq!(lines[3], b"last");
        assert!(!for_each_line(c"/nonexistent/sampalloc", |_| ()));
    }

    #[test]
    fn thp_mode_matches_the_kernel_file() {
        let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        let expected = match text {
            Ok(t) if t.contains("[always]") => ThpMode::Always,
            Ok(t) if t.contains("[madvise]") => ThpMode::Madvise,
            _ => ThpMode::Never,
        };
        assert_eq!(thp_mode(), expected);
        let defrag = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/defrag");
        match defrag {
            Ok(t) => assert!(t.contains(&format!("[{}]", thp_defrag_name())), "{t}"),
            Err(_) => assert_eq!(thp_defrag_name(), "?"),
        }
    }

    #[test]
    fn huge_advice_keeps_a_mapping_one_vma_that_mremap_can_grow() {
        const HUGE_PAGE_SIZE: usize = 2 << 20;
        // Not a multiple of 2 MiB: advice on the aligned part alone would split the mapping.
        let size = 2 * HUGE_PAGE_SIZE + 5 * PAGE_SIZE;
        for advice in [HugeAdvice::Huge, HugeAdvice::NoHuge, HugeAdvice::None] {
            let p = map_dense(size, 2 * HUGE_PAGE_SIZE, advice);
            assert!(!p.is_null());
            // SAFETY: our fresh mapping; a failed remap leaves it as it was.
            unsafe {
                *p.add(size - 1) = 1;
                let q = libc::mremap(p.cast(), size, 2 * size, libc::MREMAP_MAYMOVE);
                assert_ne!(
                    q,
                    libc::MAP_FAILED,
                    "{advice:?}: mremap refused the mapping"
                );
                assert_eq!(*q.cast::<u8>().add(size - 1), 1);
                MAPPED.fetch_add(size, Ordering::Relaxed);
                unmap(q.cast(), 2 * size);
            }
        }
    }

    #[test]
    fn page_size_matches_kernel() {
        assert_eq!(kernel_page_size(), PAGE_SIZE);
    }

    #[test]
    fn cpu_count_is_what_glibc_says() {
        // SAFETY: a zeroed bit set is valid; the wrapper writes within it.
        let glibc = unsafe {
            let mut set: libc::cpu_set_t = core::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            libc::CPU_COUNT(&set) as usize
        };
        assert!(glibc >= 1);
        assert_eq!(cpu_count(), glibc);
    }
}
