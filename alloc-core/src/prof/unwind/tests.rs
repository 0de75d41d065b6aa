//! Stacks from `capture` compared with libgcc's `_Unwind_Backtrace`, through Rust frames and
//! through glibc's `qsort` (built without frame pointers); stack use of a walk.
//!
//! What is compared: `probe` calls `ours` (which calls `capture`) and `theirs` (which calls
//! `_Unwind_Backtrace`). Both lists start with a return address into their own helper, then one
//! into `probe` (at two different call sites); from index 2 on — the return address into
//! `probe`'s caller and everything above it — the two lists must be identical.

use super::*;
use crate::platform::os;
use std::hint::black_box;
use std::sync::Mutex;

type TraceFn = extern "C" fn(ctx: *mut libc::c_void, arg: *mut libc::c_void) -> libc::c_int;

extern "C" {
    fn _Unwind_Backtrace(trace: TraceFn, arg: *mut libc::c_void) -> libc::c_int;
    fn _Unwind_GetIP(ctx: *mut libc::c_void) -> usize;
}

extern "C" fn collect(ctx: *mut libc::c_void, arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the Vec passed by `theirs`; `ctx` is libgcc's live context.
    unsafe {
        let v = &mut *arg.cast::<Vec<usize>>();
        let ip = _Unwind_GetIP(ctx);
        if ip != 0 && v.len() < MAX_FRAMES {
            v.push(ip);
        }
    }
    0 // _URC_NO_REASON: keep going
}

#[inline(never)]
fn ours() -> Vec<usize> {
    let mut buf = [0usize; MAX_FRAMES];
    let n = capture(&mut buf, 0);
    black_box(buf[..n].to_vec())
}

#[inline(never)]
fn theirs() -> Vec<usize> {
    let mut v: Vec<usize> = Vec::with_capacity(MAX_FRAMES);
    // SAFETY: `collect` matches the callback type; `v` outlives the call.
    unsafe { _Unwind_Backtrace(collect, (&mut v as *mut Vec<usize>).cast()) };
    black_box(v)
}

#[inline(never)]
fn probe() -> (Vec<usize>, Vec<usize>) {
    let a = ours();
    let b = theirs();
    black_box((a, b))
}

/// Checks the two stacks agree from index 2 on and returns that common part.
fn assert_same_above_probe(a: &[usize], b: &[usize], at_least: usize) -> Vec<usize> {
    let probe_addr = probe as *const () as usize;
    assert!(a.len() >= 2 + at_least, "ours too short: {a:x?}");
    assert!(b.len() >= 2 + at_least, "libgcc's too short: {b:x?}");
    for v in [a[1], b[1]] {
        assert!(
            v > probe_addr && v < probe_addr + 4096,
            "frame 1 should return into probe ({probe_addr:#x}): {a:x?} / {b:x?}"
        );
    }
    let n = a.len().min(b.len());
    assert_eq!(
        &a[2..n],
        &b[2..n],
        "stacks differ above probe\nours:   {a:x?}\nlibgcc: {b:x?}"
    );
    // framehop may stop one frame earlier or later at the very root (thread start).
    assert!(a.len().abs_diff(b.len()) <= 1, "lengths: {a:x?} / {b:x?}");
    a[2..n].to_vec()
}

#[inline(never)]
fn chain_a(d: u32) -> (Vec<usize>, Vec<usize>) {
    if d == 0 {
        probe()
    } else {
        black_box(chain_b(black_box(d - 1)))
    }
}

#[inline(never)]
fn chain_b(d: u32) -> (Vec<usize>, Vec<usize>) {
    let r = chain_a(black_box(d));
    black_box(r)
}

#[test]
fn matches_libgcc_through_rust_frames() {
    assert!(init());
    let (a, b) = chain_a(black_box(6));
    // probe's caller chain: 7 chain_a + 6 chain_b frames at least.
    let common = assert_same_above_probe(&a, &b, 13);
    let ca = chain_a as *const () as usize;
    assert!(common[0] > ca && common[0] < ca + 4096, "{common:x?}");
}

#[test]
fn matches_libgcc_through_glibc_qsort() {
    static SEEN: Mutex<Option<(Vec<usize>, Vec<usize>)>> = Mutex::new(None);
    extern "C" fn cmp(x: *const libc::c_void, y: *const libc::c_void) -> libc::c_int {
        let mut seen = SEEN.lock().unwrap();
        if seen.is_none() {
            *seen = Some(probe());
        }
        // SAFETY: qsort passes pointers to two elements of our u32 array.
        unsafe { (*x.cast::<u32>()).cmp(&*y.cast::<u32>()) as libc::c_int }
    }
    assert!(init());
    let mut v: Vec<u32> = (0..64u32).rev().collect();
    // SAFETY: a valid array of u32 with a comparator for u32.
    unsafe { libc::qsort(v.as_mut_ptr().cast(), v.len(), 4, Some(cmp)) };
    assert!(v.windows(2).all(|w| w[0] <= w[1]));
    let (a, b) = SEEN.lock().unwrap().take().unwrap();
    // The frames above probe: cmp, glibc's sort internals, qsort's caller.
    let common = assert_same_above_probe(&a, &b, 3);
    let in_libc = common
        .iter()
        .filter(|&&pc| module_of(pc).contains("libc.so"))
        .count();
    assert!(in_libc >= 2, "expected glibc frames in {common:x?}");
}

/// The walk's own rule table (`rules`) against libgcc, on a fresh thread (an empty table) and
/// at every comparison of a sort (many call sites and depths in glibc, each met again after it
/// was learnt), then through Rust frames at several depths, twice each.
#[test]
fn the_rule_table_walks_as_libgcc_does() {
    extern "C" fn cmp(x: *const libc::c_void, y: *const libc::c_void) -> libc::c_int {
        let (a, b) = probe();
        assert_same_above_probe(&a, &b, 3);
        // SAFETY: qsort passes pointers to two elements of our u32 array.
        unsafe { (*x.cast::<u32>()).cmp(&*y.cast::<u32>()) as libc::c_int }
    }
    assert!(init());
    std::thread::spawn(|| {
        let mut v: Vec<u32> = (0..200u32)
            .map(|i| i.wrapping_mul(2_654_435_761) % 997)
            .collect();
        // SAFETY: a valid array of u32 with a comparator for u32.
        unsafe { libc::qsort(v.as_mut_ptr().cast(), v.len(), 4, Some(cmp)) };
        assert!(v.windows(2).all(|w| w[0] <= w[1]));
        for depth in [1, 6, 2, 6, 1] {
            let (a, b) = chain_a(black_box(depth));
            assert_same_above_probe(&a, &b, 2 * depth as usize + 1);
        }
    })
    .join()
    .unwrap();
}

/// The rule table is the process's: a thread whose walk meets only code another thread's walk
/// met finds every rule there and never builds its own framehop cache, and walks the same.
#[test]
fn a_new_thread_walks_known_code_without_its_own_cache() {
    assert!(init());
    #[inline(never)]
    fn walk_here() -> (Vec<usize>, bool) {
        let frames = ours();
        // SAFETY: this thread's own block, read after its walk ended.
        let built = unsafe { !(*stack::state()).cache.is_null() };
        (frames, built)
    }
    let run = || std::thread::spawn(walk_here).join().unwrap();
    let (first, _) = run();
    let (second, built) = run();
    assert!(!built, "the second thread built its own framehop cache");
    assert!(first.len() >= 4, "{first:x?}");
    assert_eq!(first[1..], second[1..]);
}

/// A thread that meets only known code needs no set-up, so its first walk does not prove
/// 64 KiB of room below it (`stack::Roomy`): that probe faulted in up to sixteen pages of
/// every new thread's stack (a program of short-lived threads took three times the faults with
/// the profiler on).
#[test]
fn a_walk_of_known_code_does_not_probe_the_stack_for_set_up() {
    assert!(init());
    #[inline(never)]
    fn walk_here() -> (usize, i64) {
        let mut frames = [0usize; 32];
        let before = os::thread_minor_faults();
        let n = capture(&mut frames, 0);
        (n, os::thread_minor_faults() - before)
    }
    let run = || {
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(walk_here)
            .unwrap()
            .join()
            .unwrap()
    };
    run();
    let (frames, faults) = run();
    assert!(frames >= 3, "{frames} frames");
    assert!(
        faults < 8,
        "{faults} page faults in a thread's first walk of known code"
    );
}

/// The file name of the object holding `pc` (test-only: dladdr may allocate).
pub(crate) fn module_of(pc: usize) -> String {
    // SAFETY: dladdr only fills the out-structure.
    unsafe {
        let mut info: libc::Dl_info = core::mem::zeroed();
        if libc::dladdr((pc - 1) as *const libc::c_void, &mut info) == 0 || info.dli_fname.is_null()
        {
            return String::new();
        }
        std::ffi::CStr::from_ptr(info.dli_fname)
            .to_string_lossy()
            .into_owned()
    }
}

#[test]
fn skip_drops_frames() {
    #[inline(never)]
    fn two(skip: usize) -> Vec<usize> {
        let mut buf = [0usize; 16];
        let n = capture(&mut buf, skip);
        black_box(buf[..n].to_vec())
    }
    assert!(init());
    let full = two(0);
    let skipped = two(2);
    assert!(full.len() >= 4);
    assert_eq!(&full[3..], &skipped[1..]);
    // out[0] returns into `two`.
    let t = two as *const () as usize;
    assert!(full[0] > t && full[0] < t + 4096);
    let mut tiny = [0usize; 3];
    assert_eq!(capture(&mut tiny, 0), 3);
}

/// The deepest stack a warm and a cold walk touch below the caller, measured by painting the
/// unused stack and looking for the highest overwritten byte. Asserts only the safety margin.
#[test]
fn stack_use() {
    fn measure() -> usize {
        let mut buf = [0usize; MAX_FRAMES];
        let (n, used) = crate::platform::stack_use::used_below(|| capture(&mut buf, 0));
        assert!(n > 0);
        used
    }
    let used = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(|| {
            assert!(init());
            let mut warm = [0usize; 4];
            capture(&mut warm, 0); // creates this thread's cache
            let cold = measure(); // first walk from these call sites: rules not cached
            let warm = measure();
            (cold, warm)
        })
        .unwrap()
        .join()
        .unwrap();
    eprintln!(
        "unwind stack use below the caller: cold {} B, warm {} B",
        used.0, used.1
    );
    assert!(used.0.max(used.1) + 2048 <= MIN_FREE_STACK, "{used:?}");
}

#[test]
fn too_little_stack_is_skipped() {
    fn sp() -> usize {
        let sp: usize;
        // SAFETY: reads the stack pointer only.
        unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack)) };
        sp
    }
    fn stack_lo() -> usize {
        // SAFETY: standard pthread attribute queries on the calling thread.
        unsafe {
            let mut attr: libc::pthread_attr_t = core::mem::zeroed();
            assert_eq!(libc::pthread_getattr_np(libc::pthread_self(), &mut attr), 0);
            let mut addr = core::ptr::null_mut();
            let mut size = 0;
            libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
            libc::pthread_attr_destroy(&mut attr);
            addr as usize
        }
    }
    /// Recurses until less than `left` bytes of stack remain, then captures.
    #[inline(never)]
    fn dig(lo: usize, left: usize) -> usize {
        let pad = black_box([0u8; 256]);
        let n = if sp() - lo < left {
            let mut buf = [0usize; 8];
            capture(&mut buf, 0)
        } else {
            dig(lo, left)
        };
        black_box(pad);
        n
    }
    let r = std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(|| {
            assert!(init());
            let mut b = [0usize; 4];
            assert!(capture(&mut b, 0) > 0); // creates the cache while the stack is roomy
            let lo = stack_lo();
            let roomy = dig(lo, MIN_FREE_STACK + 4096);
            let short = dig(lo, MIN_FREE_STACK - 1024);
            (roomy, short)
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(r.0 > 0, "{r:?}");
    assert_eq!(r.1, 0, "{r:?}");
}

/// Code with no unwind information (as JIT code is) is walked by its frame pointer: a
/// hand-written `push rbp; mov rbp, rsp; call rdi; pop rbp; ret` in an anonymous executable
/// page, called from Rust, calling back into Rust, which captures.
#[test]
fn jit_code_is_walked_by_frame_pointer() {
    static SEEN: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    extern "C" fn callback() {
        *SEEN.lock().unwrap() = ours();
    }
    #[inline(never)]
    fn run_jit(code: usize) {
        // SAFETY: `code` is the page written below: a function taking one callback pointer.
        let f: extern "C" fn(extern "C" fn()) = unsafe { core::mem::transmute(code) };
        f(callback);
        black_box(());
    }
    const CODE: [u8; 8] = [0x55, 0x48, 0x89, 0xe5, 0xff, 0xd7, 0x5d, 0xc3];
    assert!(init());
    // SAFETY: a fresh anonymous page, written while writable, then made executable.
    let page = unsafe {
        let p = libc::mmap(
            core::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        core::ptr::copy_nonoverlapping(CODE.as_ptr(), p.cast::<u8>(), CODE.len());
        assert_eq!(
            libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC),
            0
        );
        p as usize
    };
    run_jit(page);
    let frames = core::mem::take(&mut *SEEN.lock().unwrap());
    // ours -> callback -> [page + 6] -> run_jit -> this test
    let at = frames.iter().position(|&pc| pc == page + 6);
    let Some(at) = at else {
        panic!("no JIT frame ({:#x}) in {frames:x?}", page + 6)
    };
    let rj = run_jit as *const () as usize;
    assert!(
        frames
            .get(at + 1)
            .is_some_and(|&pc| pc > rj && pc < rj + 4096),
        "the frame above the JIT code should return into run_jit: {frames:x?}"
    );
    assert!(
        frames.len() > at + 3,
        "walk stopped after the JIT frame: {frames:x?}"
    );
    // SAFETY: our own page, no longer used.
    unsafe { libc::munmap(page as *mut libc::c_void, 4096) };
}

/// Captures from a signal handler running on an alternate signal stack: a roomy one gives the
/// handler's frames; an 8 KiB one (SIGSTKSZ) must not overflow (the sample may be skipped).
#[test]
fn capture_on_alternate_signal_stack() {
    static RESULT: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    extern "C" fn handler(_sig: libc::c_int) {
        let mut buf = [0usize; 32];
        let n = capture(&mut buf, 0);
        if let Ok(mut r) = RESULT.try_lock() {
            *r = buf[..n].to_vec();
        }
    }
    fn run_with_altstack(size: usize) -> Vec<usize> {
        let mut mem = vec![0u8; size];
        // SAFETY: the alternate stack is our buffer, removed again before it is freed; the
        // handler only captures and stores.
        unsafe {
            let ss = libc::stack_t {
                ss_sp: mem.as_mut_ptr().cast(),
                ss_flags: 0,
                ss_size: size,
            };
            assert_eq!(libc::sigaltstack(&ss, core::ptr::null_mut()), 0);
            let mut sa: libc::sigaction = core::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            sa.sa_flags = libc::SA_ONSTACK;
            assert_eq!(
                libc::sigaction(libc::SIGUSR2, &sa, core::ptr::null_mut()),
                0
            );
            assert_eq!(libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2), 0);
            let off = libc::stack_t {
                ss_sp: core::ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            assert_eq!(libc::sigaltstack(&off, core::ptr::null_mut()), 0);
        }
        drop(mem);
        core::mem::take(&mut *RESULT.lock().unwrap())
    }
    let (roomy, small) = std::thread::spawn(|| {
        assert!(init());
        let mut b = [0usize; 4];
        assert!(capture(&mut b, 0) > 0); // the thread's cache, made on its own stack
        (run_with_altstack(128 * 1024), run_with_altstack(8 * 1024))
    })
    .join()
    .unwrap();
    let h = handler as *const () as usize;
    assert!(
        roomy.first().is_some_and(|&pc| pc > h && pc < h + 4096),
        "first frame should return into the handler: {roomy:x?}"
    );
    eprintln!(
        "altstack capture: 128 KiB: {} frames, 8 KiB: {} frames",
        roomy.len(),
        small.len()
    );
}

/// A walk that starts from a live caller's registers (`FrameRegs::here`) keeps the same frames
/// above the entry point as one that starts inside the capture; a start that does not lie on
/// this stack above the capture is ignored.
#[test]
fn a_walk_from_a_live_frame_keeps_the_same_frames() {
    assert!(init());
    #[inline(never)]
    fn entry_point() -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        let entry_sp = crate::prof::backtrace::current_sp();
        black_box(sampler(entry_sp))
    }
    #[inline(never)]
    fn sampler(entry_sp: usize) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        let start = FrameRegs::here();
        let mut from_start = [MaybeUninit::uninit(); MAX_FRAMES];
        let n = capture_above_from(&mut from_start, entry_sp, start);
        // SAFETY: the walk initialised the first `n` entries.
        let from_start: Vec<usize> = from_start[..n]
            .iter()
            .map(|f| unsafe { f.assume_init() })
            .collect();
        let mut plain = [0usize; MAX_FRAMES];
        let m = capture_above(&mut plain, entry_sp);
        let bogus = FrameRegs {
            pc: 1,
            sp: 8,
            bp: 0,
        };
        let mut ignored = [MaybeUninit::uninit(); MAX_FRAMES];
        let k = capture_above_from(&mut ignored, entry_sp, bogus);
        // SAFETY: as above.
        let ignored = ignored[..k]
            .iter()
            .map(|f| unsafe { f.assume_init() })
            .collect();
        black_box((from_start, plain[..m].to_vec(), ignored))
    }
    let (from_start, plain, ignored) = chain_to(black_box(4), entry_point);
    assert!(plain.len() >= 6, "{plain:x?}");
    assert_eq!(from_start, plain);
    assert_eq!(ignored, plain);
}

/// Calls `f` under `depth` more frames of its own.
#[inline(never)]
fn chain_to<T>(depth: u32, f: fn() -> T) -> T {
    if depth == 0 {
        f()
    } else {
        black_box(chain_to(black_box(depth - 1), f))
    }
}

/// The unwind tables of code that is never unmapped (libc, the dynamic loader, the module
/// holding the allocator) are read in place; those of other libraries (libgcc_s here) are
/// copied, and the stats count the copies.
#[test]
fn unwind_tables_of_code_never_unmapped_are_read_in_place() {
    assert!(init());
    let hold = modules::Hold::acquire(0).expect("a module snapshot");
    let snap = hold.snapshot();
    let libc = libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize as u64;
    let own = capture as fn(&mut [usize], usize) -> usize as usize as u64;
    // SAFETY: getauxval only reads the auxiliary vector.
    let loader = unsafe { libc::getauxval(libc::AT_BASE) } as u64;
    assert_ne!(loader, 0, "a dynamically linked test binary has a loader");
    assert_eq!(snap.copied_for(libc), Some(0), "libc's tables were copied");
    assert_eq!(snap.copied_for(own), Some(0), "the allocator's were copied");
    assert_eq!(snap.copied_for(loader), Some(0), "the loader's were copied");
    let gcc = _Unwind_Backtrace as unsafe extern "C" fn(TraceFn, *mut libc::c_void) -> libc::c_int
        as usize as u64;
    let copied = snap.copied_for(gcc).expect("libgcc_s is a module");
    assert!(copied > 1024, "libgcc_s's tables: {copied} bytes copied");
    assert!(stats().copied_bytes >= copied);
}
