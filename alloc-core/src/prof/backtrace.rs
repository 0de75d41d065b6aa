//! Stack capture for sampled allocations, and the rule that drops the allocator's own frames.
//!
//! Every public allocation entry point reads its stack pointer (`entry_sp`) before it calls a
//! slow path. When the stack is walked, the frames whose stack pointer (at their call to the
//! next frame) is at or below `entry_sp` belong to the allocator; the first frame above it is
//! the entry point's caller, where the profile starts (ARCHITECTURE.md), however much of the engine
//! was inlined and whether or not the entry point tail-calls.
//!
//! [`capture`] walks with the in-process unwinder (`unwind`, framehop over `.eh_frame`, about
//! 10 ns a frame). The tests check it frame for frame against libgcc's `_Unwind_Backtrace` under the same
//! rule (about ten times slower, never compiled into the allocator).

use crate::prof::table::MAX_FRAMES;
use crate::prof::unwind;
pub use crate::prof::unwind::{FrameRegs, TraceMemo};
use core::mem::MaybeUninit;

/// The stack pointer of the calling function (inlined into it).
#[inline(always)]
pub fn current_sp() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let sp: usize;
        // SAFETY: reads a register; no memory access.
        unsafe {
            core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        sp
    }
    #[cfg(target_arch = "aarch64")]
    {
        let sp: usize;
        // SAFETY: reads a register; no memory access.
        unsafe {
            core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        sp
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let local = 0u8;
        &local as *const u8 as usize
    }
}

/// Fills `out` with the return addresses of the frames above the allocation entry point whose
/// stack pointer was `entry_sp`, innermost first; returns how many (0 when the sample had to
/// be skipped: too little stack left, or the unwinder still starting up on another thread).
/// With `entry_sp == 0` every frame above this function's caller is kept.
///
/// `start` is [`FrameRegs::here`] taken by the caller (a profiler function between the entry
/// point and this call, live until this returns): the walk starts there, so the frames of the
/// capture itself are not walked.
///
/// No engine lock may be held (a module refresh takes the loader's lock), and the thread must
/// be marked as inside the profiler (a refresh allocates).
///
/// With `memo` (the sampling thread's own), the walk is kept there, and a stack that did not
/// change since is given back without walking (`unwind::TraceMemo`); the flag says so.
#[inline(never)]
pub fn capture<'a>(
    out: &'a mut [MaybeUninit<usize>; MAX_FRAMES],
    entry_sp: usize,
    start: FrameRegs,
    memo: Option<&mut TraceMemo>,
) -> (&'a [usize], bool) {
    let entry_sp = if entry_sp == 0 {
        current_sp()
    } else {
        entry_sp
    };
    let (n, recalled) = core::hint::black_box(match memo {
        Some(m) => unwind::capture_above_memo(out, entry_sp, start, m),
        None => (unwind::capture_above_from(out, entry_sp, start), false),
    });
    // SAFETY: the walk initialised the first `n` (at most `out.len()`) entries.
    let frames =
        unsafe { core::slice::from_raw_parts(out.as_ptr().cast::<usize>(), n.min(MAX_FRAMES)) };
    (frames, recalled)
}

/// libgcc's `_Unwind_Backtrace` under the same rule: the reference [`capture`] is tested
/// against (about ten times slower; never on the allocation path).
#[cfg(test)]
mod libgcc {
    use super::current_sp;
    use core::ffi::{c_int, c_void};

    type TraceFn = extern "C" fn(ctx: *mut c_void, arg: *mut c_void) -> c_int;

    extern "C" {
        fn _Unwind_Backtrace(trace: TraceFn, arg: *mut c_void) -> c_int;
        fn _Unwind_GetIP(ctx: *mut c_void) -> usize;
        fn _Unwind_GetCFA(ctx: *mut c_void) -> usize;
    }

    const URC_NO_REASON: c_int = 0;
    const URC_END_OF_STACK: c_int = 5;

    struct Walk<'a> {
        out: &'a mut [usize],
        len: usize,
        entry_sp: usize,
        in_caller: bool,
    }

    extern "C" fn on_frame(ctx: *mut c_void, arg: *mut c_void) -> c_int {
        // SAFETY: `arg` is the `Walk` passed to `_Unwind_Backtrace` below; `ctx` is libgcc's.
        unsafe {
            let walk = &mut *(arg as *mut Walk);
            // libgcc pairs a frame's IP with the CFA of the frame it called, i.e. the stack pointer
            // this frame had at its call. The first frame whose stack pointer is above the entry
            // point's is the entry point's caller.
            if !walk.in_caller {
                if _Unwind_GetCFA(ctx) <= walk.entry_sp {
                    return URC_NO_REASON;
                }
                walk.in_caller = true;
            }
            let ip = _Unwind_GetIP(ctx);
            if ip == 0 || walk.len == walk.out.len() {
                return URC_END_OF_STACK;
            }
            walk.out[walk.len] = ip;
            walk.len += 1;
            URC_NO_REASON
        }
    }

    /// [`capture`] with libgcc's unwinder: the reference for tests.
    #[inline(never)]
    pub fn capture_libgcc(out: &mut [usize], entry_sp: usize) -> usize {
        let mut walk = Walk {
            out,
            len: 0,
            entry_sp: if entry_sp == 0 {
                current_sp()
            } else {
                entry_sp
            },
            in_caller: false,
        };
        // SAFETY: `on_frame` only touches `walk`, which outlives the call.
        unsafe { _Unwind_Backtrace(on_frame, &mut walk as *mut Walk as *mut c_void) };
        walk.len
    }
}

#[cfg(test)]
mod tests {
    use super::libgcc::capture_libgcc;
    use super::*;

    #[inline(never)]
    fn entry_point(out: &mut [usize]) -> usize {
        let sp = current_sp();
        inner(out, sp)
    }

    #[inline(never)]
    fn inner(out: &mut [usize], sp: usize) -> usize {
        let mut reference = [0usize; 64];
        let n = capture_libgcc(&mut reference, sp);
        let mut frames = [MaybeUninit::uninit(); MAX_FRAMES];
        let (got, _) = capture(&mut frames, sp, FrameRegs::here(), None);
        let m = got.len().min(out.len());
        out[..m].copy_from_slice(&got[..m]);
        // Both walkers agree frame for frame (the outermost may differ: the walks end
        // differently at the thread's root).
        assert!(n >= 2 && m >= 2, "{n} and {m} frames");
        assert_eq!(&out[..m.min(n) - 1], &reference[..m.min(n) - 1]);
        m
    }

    #[inline(never)]
    fn caller(out: &mut [usize]) -> (usize, usize) {
        // Through an opaque pointer, so the entry point keeps a frame of its own.
        let entry: fn(&mut [usize]) -> usize = core::hint::black_box(entry_point);
        let n = entry(out);
        // Work after the call keeps it from being a tail call: the return address (right after
        // the call) is inside this function.
        core::hint::black_box(&n);
        (n, caller as *const () as usize)
    }

    /// One capture with a memo, from one place: its frames, and whether they came from the
    /// memo.
    #[inline(never)]
    fn once_with_memo(memo: &mut TraceMemo, sp: usize) -> (std::vec::Vec<usize>, bool) {
        let mut frames = [MaybeUninit::uninit(); MAX_FRAMES];
        let (got, recalled) = capture(&mut frames, sp, FrameRegs::here(), Some(memo));
        (got.to_vec(), recalled)
    }

    /// Captures twice from one call site with a memo: returns both walks and whether each
    /// came from the memo.
    #[inline(never)]
    fn twice_with_memo(memo: &mut TraceMemo) -> [(std::vec::Vec<usize>, bool); 2] {
        let sp = current_sp();
        let mut got = std::vec::Vec::new();
        // A loop of unknown length: one call site, so one return address in the stack.
        for _ in 0..core::hint::black_box(2) {
            got.push(once_with_memo(memo, sp));
        }
        let second = got.pop().unwrap();
        [got.pop().unwrap(), second]
    }

    /// The second walk from the same place, over the same stack, comes from the memo and finds
    /// what the first found; after a word it read changed (here: the stack moved, the same
    /// call made from one frame deeper), the walk is made again.
    #[test]
    fn a_memo_gives_back_an_unchanged_stack() {
        // A thread of its own: its stack is short enough to be kept (see `TraceMemo`).
        // Set up first: a walk made while another thread sets the unwinder up is skipped.
        assert!(unwind::init());
        std::thread::spawn(|| {
            let mut memo = TraceMemo::EMPTY;
            let [(first, r1), (second, r2)] = twice_with_memo(&mut memo);
            assert!(first.len() >= 2, "{} frames", first.len());
            assert!(!r1 && r2, "recalled: {r1} then {r2}");
            assert_eq!(first, second);
            #[inline(never)]
            fn deeper(memo: &mut TraceMemo) -> [(std::vec::Vec<usize>, bool); 2] {
                let got = twice_with_memo(memo);
                core::hint::black_box(&got);
                got
            }
            let [(third, r3), (fourth, r4)] = deeper(&mut memo);
            assert!(!r3 && r4, "recalled one frame deeper: {r3} then {r4}");
            assert_eq!(third, fourth);
            assert_eq!(third.len(), first.len() + 1);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn starts_at_the_entry_points_caller() {
        assert!(unwind::init());
        let mut frames = [0usize; 64];
        let (n, caller_fn) = caller(&mut frames);
        assert!(n >= 2, "{n} frames");
        // The first frame returns into `caller`: within a few hundred bytes of its start.
        assert!(
            frames[0] > caller_fn && frames[0] < caller_fn + 512,
            "first frame {:#x}, caller at {caller_fn:#x}",
            frames[0]
        );
    }
}
