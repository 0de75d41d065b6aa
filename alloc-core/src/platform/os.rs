//! The platform layer: the only module that talks to the kernel.
//!
//! Mappings (`mmap`, `munmap`, `mremap`), purging (`madvise`), the clock, the CPU count, raw
//! writes to stderr and the fatal-error path. Nothing here allocates, so every function may be
//! called from inside `malloc`.

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

/// The page size the engine is built for. Checked against the kernel's at start-up.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Bytes the engine has mapped now, process-wide: every mapping goes through this module.
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
        if libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let n = libc::CPU_COUNT(&set);
            if n > 0 {
                return n as usize;
            }
        }
    }
    1
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

/// Writes `sampalloc: <what>` to stderr and aborts.
#[cold]
#[inline(never)]
pub fn fatal(what: &str) -> ! {
    Line::new().str("sampalloc: ").str(what).emit();
    // SAFETY: abort has no preconditions and never returns.
    unsafe { libc::abort() }
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
    fn page_size_matches_kernel() {
        assert_eq!(kernel_page_size(), PAGE_SIZE);
        assert!(cpu_count() >= 1);
    }
}
