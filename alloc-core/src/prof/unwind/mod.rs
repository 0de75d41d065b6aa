//! In-process stack capture for the profiler: the return addresses of the calling thread, taken
//! from inside `malloc` without allocating, without locks and without trusting frame pointers.
//!
//! It exists because the stacks that matter to our users run through code built without frame
//! pointers (glibc, zlib, libjvm): a frame-pointer walk stops or lies there, and libgcc's
//! `_Unwind_Backtrace` is an order of magnitude slower and takes the loader's lock. This module
//! walks `.eh_frame` CFI with [framehop] (its allocation-free policy), falling back to frame
//! pointers for code with no unwind information (JIT code), and owns:
//!
//! - the **module list** (`modules`): learnt from `dl_iterate_phdr`, published as an immutable
//!   snapshot behind an atomic pointer, with each library's unwind tables copied so that
//!   `dlclose` can never leave a walk reading unmapped memory; refreshed when a walk meets code
//!   that is not in the snapshot, or a module that `_dl_find_object` says was replaced;
//! - the **rule table** (`rules`): the process's, shared by every thread: each code address's
//!   rule in a form stepped in a few instructions, learnt from framehop;
//! - the **per-thread state** (`stack`): the thread's framehop cache (about 22 KiB, created when
//!   the thread first meets code the rule table lacks, freed at thread exit), the thread's
//!   stack bounds (found without libc calls, once per thread) and a re-entrancy flag.
//!
//! Starting registers come from inline `asm!` in [`capture`]; every stack read is bounded by
//! `[sp, top)` of the stack the caller is running on (the thread's own stack or its alternate
//! signal stack; a walk on a signal stack ends at the signal frame), and a sample is skipped
//! (0 frames) when less than [`MIN_FREE_STACK`] is left below the caller, when the stack is
//! unknown (a user-made coroutine stack), or when the thread is already capturing (a signal
//! handler that re-enters). A walk uses about 3.4 KiB of stack; set-up (the thread's cache,
//! [`init`], refreshes) runs only with 64 KiB free and is otherwise left to a later sample.

//! # Rules for callers (the profiler)
//!
//! - Hold **no allocator lock** when calling [`capture`] or [`init`]: a refresh takes the
//!   loader's lock (`dl_iterate_phdr`) and allocates under it, which is the loader's own order
//!   (`dlopen` allocates under that lock); the reverse order deadlocks.
//! - Keep **allocation sampling off** on this thread during the call (`ThreadState::in_profiler`):
//!   [`init`], refreshes, and a walk that meets code the rule table lacks on a thread without
//!   a framehop cache yet (it builds one, and only with 64 KiB of stack free) allocate
//!   through the global allocator; a walk over known code never does.
//! - Frames: `out[0]` is the return address into the function that called [`capture`], after
//!   dropping `skip` more frames; addresses are raw return addresses (subtract one to
//!   symbolize the call). `capture` is `#[inline(never)]`; the number of allocator frames to
//!   skip depends on what the profiler's own path inlines, so measure it in a test.
//! - A `dlclose` hook should call [`invalidate_modules`] (see `modules` for the one unload
//!   that the walk cannot notice by itself).
//!
//! Only x86-64 Linux (glibc) is supported; elsewhere [`capture`] returns 0.

use core::mem::MaybeUninit;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod modules;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod rules;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod stack;

pub use crate::thread::trace_memo::TraceMemo;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub use stack::{lane, LANES, MIN_FREE_STACK};

/// Stack needed below the caller (elsewhere: nothing is ever captured).
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub const MIN_FREE_STACK: usize = 0;
/// Lanes of the profiler's shared counters (elsewhere: one).
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub const LANES: usize = 1;
/// The calling thread's lane (elsewhere: always the one).
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub fn lane() -> usize {
    0
}

/// The largest useful output: [`capture`] never writes more frames than this.
pub const MAX_FRAMES: usize = 128;

/// Which frames a walk keeps.
#[derive(Clone, Copy, Debug)]
enum Keep {
    /// All but the first `n` frames above the caller of `capture`.
    After(usize),
    /// The frames whose stack pointer (at their call to the next frame) lies above this
    /// address: those of the callers of a function that read its stack pointer there.
    Above(usize),
}

/// Counters of the unwinder's work, for stats and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindStats {
    /// Walks that returned frames (a stack a `TraceMemo` gave back is not walked).
    pub captures: u64,
    /// Captures skipped: stack unknown or too short, re-entered, cache not yet creatable.
    pub skipped: u64,
    /// Module-list refreshes (`dl_iterate_phdr` walks).
    pub refreshes: u64,
    /// Old module snapshots freed.
    pub snapshots_freed: u64,
    /// Modules in the current snapshot.
    pub modules: usize,
    /// Bytes of unwind tables the current snapshot holds as copies (see `modules`).
    pub copied_bytes: usize,
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use super::modules::{self, Hold, Snapshot};
    use super::rules::{self, Learn, Step};
    use super::stack::{self, UnwindTls};
    use super::{FrameRegs as Regs, Keep};
    use super::{UnwindStats, MAX_FRAMES};
    use crate::thread::trace_memo::TraceMemo;
    use core::mem::MaybeUninit;
    use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
    use framehop::FrameAddress;

    /// 0: not started; 1: running; 2: ready; 3: failed.
    static INIT: AtomicU8 = AtomicU8::new(0);
    static SKIPPED: AtomicU64 = AtomicU64::new(0);

    /// Sets up once. When another thread is setting up, waits if `wait`, else returns false.
    pub(super) fn init(wait: bool) -> bool {
        loop {
            match INIT.load(Ordering::Acquire) {
                2 => return true,
                3 => return false,
                1 if !wait => return false,
                // SAFETY: sched_yield is a plain system call.
                1 => unsafe {
                    libc::sched_yield();
                },
                _ => {
                    if INIT
                        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        break;
                    }
                }
            }
        }
        modules::resolve_dl_find_object();
        let ok = stack::create_key() && modules::refresh();
        INIT.store(if ok { 2 } else { 3 }, Ordering::Release);
        ok
    }

    /// Everything after the registers were read in `capture` (whose frame stays live, so the
    /// registers stay valid for as long as this runs).
    #[inline(never)]
    pub(super) fn capture_from(
        regs: Regs,
        start: Option<Regs>,
        out: &mut [MaybeUninit<usize>],
        keep: Keep,
        memo: Option<&mut TraceMemo>,
    ) -> (usize, bool) {
        let st = stack::state();
        // SAFETY: the block belongs to the calling thread; the busy flag keeps a signal
        // handler that re-enters from taking a second reference while this one is live.
        let st: &mut UnwindTls = unsafe {
            if (*st).busy != 0 || (*st).dead != 0 {
                SKIPPED.fetch_add(1, Ordering::Relaxed);
                return (0, false);
            }
            (*st).busy = 1;
            &mut *st
        };
        let shard = stack::lane_of(st);
        let (n, recalled) = capture_locked(st, regs, start, out, keep, memo);
        st.busy = 0;
        if n == 0 {
            SKIPPED.fetch_add(1, Ordering::Relaxed);
        } else if !recalled {
            modules::count_capture(shard);
        }
        (n, recalled)
    }

    fn capture_locked(
        st: &mut UnwindTls,
        regs: Regs,
        start: Option<Regs>,
        out: &mut [MaybeUninit<usize>],
        keep: Keep,
        mut memo: Option<&mut TraceMemo>,
    ) -> (usize, bool) {
        let sp = regs.sp as usize;
        let Some(hi) = stack::top(st, sp) else {
            return (0, false);
        };
        // A live frame further up this same stack, if the caller named one: the frames between
        // it and here are the allocator's own, dropped anyway, and need not be walked.
        let regs = match start {
            Some(s) if s.sp >= regs.sp && (s.sp as usize) < hi => s,
            _ => regs,
        };
        if !stack::has_free(st, sp, stack::MIN_FREE_STACK) {
            return (0, false);
        }
        let len = out.len().min(MAX_FRAMES);
        let out = &mut out[..len];
        // The epoch before the snapshot is taken: a walk kept under it is given back only
        // while no refresh or invalidation followed. (A kept walk also means set-up was done.)
        let epoch = modules::EPOCH.load(Ordering::Acquire);
        if let (Some(m), Keep::Above(entry_sp)) = (memo.as_deref(), keep) {
            if let Some(n) = recall(m, regs, entry_sp, epoch, hi as u64, out) {
                return (n, true);
            }
        }
        // Set-up and refreshes run libc and allocator code: only on a roomy stack.
        let mut roomy = stack::Roomy::at(sp);
        if INIT.load(Ordering::Acquire) != 2 && !(roomy.get(st) && init(false)) {
            return (0, false);
        }
        let stale_list = modules::STALE.load(Ordering::Relaxed);
        if stale_list && roomy.get(st) {
            // Wait for a refresh another thread is making: it may have read the module list
            // before the change that made it stale.
            modules::refresh_waiting();
        }
        if let Some(m) = memo.as_deref_mut() {
            m.begin(epoch);
        }
        let mut n = 0;
        for attempt in 0..2 {
            let Some(hold) = Hold::acquire(stack::lane_of(st)) else {
                return (0, false);
            };
            let (got, stale) = walk(
                hold.snapshot(),
                st,
                &mut roomy,
                regs,
                regs.sp,
                hi as u64,
                out,
                keep,
                attempt == 0,
                memo.as_deref_mut(),
            );
            n = got;
            drop(hold);
            if !stale || !roomy.get(st) || !modules::refresh_waiting() {
                break;
            }
        }
        (n, false)
    }

    /// The frames `memo` gives back for a walk from `regs` keeping those above `entry_sp` on
    /// the stack below `hi`, in `epoch`, copied into `out`; `None` when it must be walked. Out
    /// of line: its frame is not on the stack during walks.
    #[inline(never)]
    fn recall(
        memo: &TraceMemo,
        regs: Regs,
        entry_sp: usize,
        epoch: u64,
        hi: u64,
        out: &mut [MaybeUninit<usize>],
    ) -> Option<usize> {
        let r = (regs.pc, regs.sp, regs.bp);
        let frames = memo.recall(r, entry_sp, epoch, regs.sp, hi)?;
        let n = frames.len().min(out.len());
        for (o, &f) in out.iter_mut().zip(&frames[..n]) {
            o.write(f);
        }
        Some(n)
    }

    /// One walk over `snap`. Returns the frame count and whether the snapshot was found stale
    /// (then `check` is switched off for the rest of the walk).
    #[allow(clippy::too_many_arguments)]
    fn walk(
        snap: &Snapshot,
        st: &mut UnwindTls,
        roomy: &mut stack::Roomy,
        regs: Regs,
        lo: u64,
        hi: u64,
        out: &mut [MaybeUninit<usize>],
        keep: Keep,
        mut check: bool,
        mut memo: Option<&mut TraceMemo>,
    ) -> (usize, bool) {
        // A walk keeping frames above an entry point may be kept for the next (`TraceMemo`):
        // every stack word it reads is logged; `keepable` goes false when it cannot be.
        let mut keepable = matches!(keep, Keep::Above(_));
        if let Some(m) = memo.as_deref_mut() {
            m.start();
        }
        let mut read = |tagged: u64| -> Result<u64, ()> {
            let addr = tagged & !rules::SAVED_BP;
            if addr >= lo && addr <= hi - 8 {
                // SAFETY: [addr, addr + 8) lies in [sp, top) of the stack this thread runs on,
                // which is mapped (it is this thread's live stack above its stack pointer).
                let value = unsafe { (addr as *const u64).read_unaligned() };
                if let Some(m) = memo.as_deref_mut() {
                    m.log_read(addr, value, tagged & rules::SAVED_BP != 0);
                }
                Ok(value)
            } else {
                Err(())
            }
        };
        // Which values of `rbp` a rule used (a frame-pointer rule, or a frame framehop
        // steps): the starting register's (`needs_bp`), or the k-th loaded from the stack
        // (bit k of `saved_bp_used`; the others' values did not matter).
        let (mut needs_bp, mut saved_bp_loads, mut saved_bp_used) = (false, 0u32, 0u32);
        // Walked by hand rather than with framehop's iterator, because `Keep::Above` needs each
        // frame's stack pointer: `frame_regs` holds the registers of the frame `next` names.
        let mut frame_regs = regs;
        let mut learn = Learn { snap, st, roomy };
        let mut depth = 0;
        let mut next = Some(FrameAddress::InstructionPointer(regs.pc));
        let have_dlfo = modules::have_find_object();
        // The first frame is the program counter inside `capture` itself.
        let mut to_skip = match keep {
            Keep::After(skip) => skip.saturating_add(1),
            Keep::Above(_) => 0,
        };
        let mut n = 0;
        // Modules validated in this walk (indexes past 255 are validated at every entry).
        let mut validated = [0u64; 4];
        let mut stale = false;
        let mut unknown = false;
        while n < out.len() {
            let Some(f) = next else { break };
            let frame_sp = frame_regs.sp;
            let look = f.address_for_lookup();
            // The rule table knows each address's module too: no search of the snapshot.
            let Some(found) = rules::find(&mut learn, f, depth) else {
                // Unknown code and no room to learn it: skip the sample rather than keep a
                // stack cut short.
                return (0, false);
            };
            // A module that is never unloaded (the program, libc, ...) needs no check: most frames.
            let never_unloaded = matches!(found.module(), Ok(Some(_))) && !found.validate();
            let (uses_bp, loads_bp) = found.bp_use();
            if uses_bp {
                match saved_bp_loads {
                    0 => needs_bp = true,
                    k => saved_bp_used |= 1u32.checked_shl(k - 1).unwrap_or(0),
                }
            }
            saved_bp_loads += u32::from(loads_bp);
            // A walk through a module that may be unloaded is checked every time.
            keepable &= never_unloaded;
            if check && !never_unloaded {
                let module = found.module().unwrap_or_else(|()| snap.find(look));
                match module {
                    Some(i) => {
                        let (word, bit) = (i / 64, 1u64 << (i % 64));
                        let seen = validated.get(word).is_some_and(|w| w & bit != 0);
                        if found.validate() && !seen && have_dlfo {
                            if let Some(w) = validated.get_mut(word) {
                                *w |= bit;
                            }
                            if !snap.still_loaded(i, look) {
                                stale = true;
                                check = false;
                            }
                        }
                    }
                    None if have_dlfo => {
                        if modules::find_object(look).is_some() {
                            stale = true;
                            check = false;
                        }
                    }
                    None => unknown = true,
                }
            }
            let kept = match keep {
                Keep::Above(entry_sp) => frame_sp > entry_sp as u64,
                Keep::After(_) if to_skip > 0 => {
                    to_skip -= 1;
                    false
                }
                Keep::After(_) => true,
            };
            if kept {
                out[n].write(f.address() as usize);
                n += 1;
            }
            depth += 1;
            next = match rules::step(found, &mut learn, f, &mut frame_regs, &mut read) {
                Step::Caller(ra) => FrameAddress::from_return_address(ra),
                Step::End => None,
                Step::Unknown => return (0, false),
            };
        }
        if unknown && !stale && modules::blind_refresh_due() {
            stale = true;
        }
        if let (Some(m), Keep::Above(entry_sp)) = (memo, keep) {
            if keepable && !stale && !unknown {
                // SAFETY: the walk initialised the first `n` entries of `out`.
                let frames = unsafe { out.get_unchecked(..n) };
                let bp = (needs_bp, saved_bp_used);
                keep_walk(m, regs, bp, entry_sp, frames);
            } else {
                m.start();
            }
        }
        (n, stale)
    }

    /// Keeps the walk just made in `memo` (see `TraceMemo::keep`): out of line, so that the
    /// walk's frame stays small.
    #[inline(never)]
    fn keep_walk(
        memo: &mut TraceMemo,
        regs: Regs,
        (needs_bp, saved_bp_used): (bool, u32),
        entry_sp: usize,
        frames: &[MaybeUninit<usize>],
    ) {
        // SAFETY: the caller passes initialised entries only.
        let frames =
            unsafe { core::slice::from_raw_parts(frames.as_ptr().cast::<usize>(), frames.len()) };
        memo.drop_saved_bp_reads(saved_bp_used);
        memo.keep((regs.pc, regs.sp, regs.bp), needs_bp, entry_sp, frames);
    }

    pub(super) fn invalidate() {
        modules::STALE.store(true, Ordering::Relaxed);
        modules::EPOCH.fetch_add(1, Ordering::Release);
    }

    pub(super) fn stats() -> UnwindStats {
        let (modules, copied_bytes) = Hold::acquire(0).map_or((0, 0), |h| {
            let snap = h.snapshot();
            (snap.mods.len(), snap.copied_bytes())
        });
        UnwindStats {
            captures: modules::captures(),
            skipped: SKIPPED.load(Ordering::Relaxed),
            refreshes: modules::REFRESHES.load(Ordering::Relaxed),
            snapshots_freed: modules::FREED.load(Ordering::Relaxed),
            modules,
            copied_bytes,
        }
    }
}

/// Prepares the unwinder: looks up `_dl_find_object`, creates the thread-exit key and takes the
/// first module snapshot. Called lazily by the first [`capture`] (which skips its sample,
/// rather than wait, while another thread is initialising); the profiler should call it at its
/// own start-up instead, outside the allocation path. Waits for a concurrent initialisation;
/// returns whether stacks can be captured. Not for signal handlers.
///
/// Allocates and takes the loader's lock: hold no allocator lock, keep sampling off.
pub fn init() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        imp::init(true)
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// Fills `out` with the calling thread's return addresses, innermost first, and returns how
/// many it wrote (at most `min(out.len(), MAX_FRAMES)`). `out[0]` is the return address into
/// the caller of `capture`, unless `skip` drops that many more frames. Returns 0 when the
/// sample must be skipped (see the module docs).
///
/// The walk allocates nothing and takes no lock. Building the thread's framehop cache and
/// module refreshes do both: see the rules in the module docs.
#[inline(never)]
pub fn capture(out: &mut [usize], skip: usize) -> usize {
    // One more frame to drop: this function's own. Using the result afterwards keeps the call
    // from being a tail call, so that frame always exists.
    core::hint::black_box(
        capture_with(
            as_uninit(out),
            Keep::After(skip.saturating_add(1)),
            None,
            None,
        )
        .0,
    )
}

/// `out` as storage that the walk only ever writes initialised values into.
fn as_uninit(out: &mut [usize]) -> &mut [MaybeUninit<usize>] {
    // SAFETY: same layout; the walk writes only initialised `usize`s, so `out` stays
    // initialised.
    unsafe { &mut *(out as *mut [usize] as *mut [MaybeUninit<usize>]) }
}

/// The registers a walk starts from: a program counter inside a frame, and that frame's stack
/// pointer and `rbp` at that point.
#[derive(Clone, Copy, Debug)]
pub struct FrameRegs {
    pc: u64,
    sp: u64,
    bp: u64,
}

impl FrameRegs {
    /// The calling function's registers here (inlined into it). A walk may start from them for
    /// as long as that function has not returned: see [`capture_above_from`].
    #[inline(always)]
    pub fn here() -> FrameRegs {
        #[cfg(target_arch = "x86_64")]
        {
            let (pc, sp, bp): (u64, u64, u64);
            // SAFETY: reads the instruction pointer (of the next instruction, inside the
            // calling function), the stack pointer and rbp; touches no memory and no flags.
            unsafe {
                core::arch::asm!(
                    "lea {pc}, [rip]",
                    "mov {sp}, rsp",
                    "mov {bp}, rbp",
                    pc = out(reg) pc,
                    sp = out(reg) sp,
                    bp = out(reg) bp,
                    options(nomem, nostack, preserves_flags),
                );
            }
            FrameRegs { pc, sp, bp }
        }
        #[cfg(not(target_arch = "x86_64"))]
        FrameRegs {
            pc: 0,
            sp: 0,
            bp: 0,
        }
    }
}

/// The walk shared by [`capture`], [`capture_above`] and [`capture_above_from`]; its own frame
/// is the first one seen, unless `start` names a live frame further up.
/// With `memo`, a walk that keeps frames above an entry point may be repeated from it (see
/// `thread::trace_memo`); the flag says whether it was.
#[inline(never)]
fn capture_with(
    out: &mut [MaybeUninit<usize>],
    keep: Keep,
    start: Option<FrameRegs>,
    memo: Option<&mut TraceMemo>,
) -> (usize, bool) {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let regs = FrameRegs::here();
        let got = imp::capture_from(regs, start, out, keep, memo);
        // Using the result after the call keeps it from being a tail call, which would
        // release this frame (whose registers the walk starts from) while the walk runs.
        core::hint::black_box(got)
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = (out, keep, start, memo);
        (0, false)
    }
}

/// Captures the stack of the callers of an allocation entry point that read its stack pointer
/// as `entry_sp` (see `backtrace`): the frames whose stack pointer lies above it, innermost
/// first, into `out`. Returns how many (0: the sample is skipped). Same rules as [`capture`].
#[inline(never)]
pub fn capture_above(out: &mut [usize], entry_sp: usize) -> usize {
    capture_with(as_uninit(out), Keep::Above(entry_sp), None, None).0
}

/// [`capture_above`], walking from `start` ([`FrameRegs::here`] in a caller between the entry
/// point and this call) instead of from here: the frames below it are the allocator's own and
/// would be dropped anyway, and each one walked costs about 10 ns. The function that took
/// `start` must not have returned (it is live on the stack, its saved registers in place); a
/// `start` not on this stack above this call is ignored. `out` need not be initialised (the
/// profiler's 1 KiB of frames is not cleared for every sample): the first `n` returned are.
#[inline(never)]
pub fn capture_above_from(
    out: &mut [MaybeUninit<usize>],
    entry_sp: usize,
    start: FrameRegs,
) -> usize {
    capture_with(out, Keep::Above(entry_sp), Some(start), None).0
}

/// [`capture_above_from`] for a thread that samples: the walk is kept in `memo` (the thread's
/// own), and when nothing it depended on changed since, its frames are given back without
/// walking (see `thread::trace_memo`). Returns the frame count and whether they came from
/// `memo`, for the caller to reuse what it noted of them last time.
#[inline(never)]
pub fn capture_above_memo(
    out: &mut [MaybeUninit<usize>],
    entry_sp: usize,
    start: FrameRegs,
    memo: &mut TraceMemo,
) -> (usize, bool) {
    capture_with(out, Keep::Above(entry_sp), Some(start), Some(memo))
}

/// Marks the module list stale so that the next [`capture`] refreshes it first. For a
/// `dlclose` hook: unloads are otherwise noticed when a walk meets the replaced module.
/// Allocation-free and lock-free.
pub fn invalidate_modules() {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    imp::invalidate();
}

/// The unwinder's counters.
pub fn stats() -> UnwindStats {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        imp::stats()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        UnwindStats::default()
    }
}

#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod tests;
