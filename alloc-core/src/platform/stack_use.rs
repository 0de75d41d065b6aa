//! Test support: how deep below its caller a function writes into the stack.

/// Bytes of stack below the caller that `f` wrote to (at most 64 KiB), found by painting the
/// unused stack below this frame and looking for the deepest overwritten word. The calling
/// thread needs 64 KiB of stack left (a thread with a 1 MiB stack, near its top).
#[inline(never)]
pub fn used_below<R>(f: impl FnOnce() -> R) -> (R, usize) {
    const SPAN: usize = 64 * 1024;
    const PAINT: u64 = 0xa5a5_a5a5_a5a5_a5a5;
    let sp: usize;
    // SAFETY: reads the stack pointer only.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack)) };
    let lo = sp - SPAN;
    // [lo, sp - 512): unused stack of this thread below this frame, which `call` and `f` go on
    // to use (512 bytes are left for the call itself).
    for p in (lo..sp - 512).step_by(8) {
        // SAFETY: mapped, unused stack below our frame (see the contract above).
        unsafe { core::ptr::write_volatile(p as *mut u64, PAINT) };
    }
    let result = call(f);
    // SAFETY: reading back the painted range, still this thread's mapped stack.
    let untouched = (lo..sp)
        .step_by(8)
        .take_while(|&p| unsafe { core::ptr::read_volatile(p as *const u64) } == PAINT)
        .count();
    (result, sp - (lo + 8 * untouched))
}

/// Calls `f` in a frame of its own, below its caller's.
#[inline(never)]
fn call<R>(f: impl FnOnce() -> R) -> R {
    core::hint::black_box(f())
}
