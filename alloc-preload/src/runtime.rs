//! What a `no_std` library must supply: where a panic goes, and which allocator `Box` and
//! `Vec` use (the profiler's unwinder keeps its module list and per-thread caches in them).
//!
//! Without std, the library links none of std's panic and backtrace machinery (gimli, addr2line,
//! miniz, the demangler: half of its code) and not libgcc_s, so a small program maps less.

use core::alloc::{GlobalAlloc, Layout};
use core::panic::PanicInfo;

/// The engine never panics on purpose; if it does, the process must stop without unwinding
/// through a C caller or allocating: one line names where, then `abort`.
#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let (file, line) = info
        .location()
        .map_or(("?", 0), |at| (at.file(), at.line()));
    sampalloc_core::fatal_panic(file, line)
}

/// `Box` and `Vec` allocate with `malloc` as std's `System` does on Unix: the exported
/// `malloc` (this engine, or whatever the process interposes before it), so that the engine's
/// recursion guards see these allocations as before.
struct ViaMalloc;

/// The alignment `malloc` gives every block (glibc's and ours).
const MALLOC_ALIGN: usize = 16;

// SAFETY: every method forwards to the C allocator, which honours the size and alignment asked
// for (alignment above malloc's through `posix_memalign`).
unsafe impl GlobalAlloc for ViaMalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MALLOC_ALIGN {
            // SAFETY: plain C allocation.
            return unsafe { libc::malloc(layout.size()).cast() };
        }
        let mut p = core::ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer; the alignment is a power of two above 16.
        let rc = unsafe { libc::posix_memalign(&mut p, layout.align(), layout.size()) };
        if rc == 0 {
            p.cast()
        } else {
            core::ptr::null_mut()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MALLOC_ALIGN {
            // SAFETY: plain C allocation.
            return unsafe { libc::calloc(1, layout.size()).cast() };
        }
        // SAFETY: forwarded; the block is zeroed below.
        let p = unsafe { self.alloc(layout) };
        if !p.is_null() {
            // SAFETY: a fresh block of `layout.size()` bytes.
            unsafe { core::ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, so from the C allocator.
        unsafe { libc::free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MALLOC_ALIGN {
            // SAFETY: `ptr` came from `malloc` or `calloc` above.
            return unsafe { libc::realloc(ptr.cast(), new_size).cast() };
        }
        // SAFETY: the new layout is valid (the trait's contract), and both blocks are live for
        // the copy.
        unsafe {
            let new = Layout::from_size_align_unchecked(new_size, layout.align());
            let q = self.alloc(new);
            if !q.is_null() {
                core::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            q
        }
    }
}

#[global_allocator]
static GLOBAL: ViaMalloc = ViaMalloc;

// Without LTO (the dev profile), core's prebuilt code names `rust_eh_personality` in its unwind
// tables, and the loader must resolve it. Defined here hidden, so that it is never exported: a
// program with a dynamic std (rustc itself) must keep finding its own. It answers "no handler in
// this frame, keep unwinding" (`_URC_CONTINUE_UNWIND`), and is never called in practice: no
// panic unwinds here (the handler above aborts), and no exception is thrown through the C ABI.
core::arch::global_asm!(
    ".globl rust_eh_personality",
    ".hidden rust_eh_personality",
    ".type rust_eh_personality, @function",
    "rust_eh_personality:",
    "mov eax, 8",
    "ret",
);
