//! Stack capture through native code built here with `cc`: a zlib allocation callback, and a
//! small library opened and closed a hundred times while another thread keeps capturing.
//! Also prints the warm cost per frame (never asserted).
//!
//! Stacks are checked against libgcc's `_Unwind_Backtrace` as in the unit tests: `probe`
//! calls `ours` (capture) and `theirs` (libgcc); from index 2 on — the return address into
//! `probe`'s caller and above — both lists must be identical.

#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use sampalloc_core::unwind::{self, capture, MAX_FRAMES};
use std::ffi::{CStr, CString};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

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
    0
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

/// The frames above `probe`, checked equal in both lists.
fn same_above_probe(a: &[usize], b: &[usize]) -> Vec<usize> {
    let common = common_above_probe(a, b);
    assert!(a.len().abs_diff(b.len()) <= 1, "{a:x?} / {b:x?}");
    common
}

/// Like [`same_above_probe`], but our walk may stop early (never differ): what a walk racing a
/// `dlclose` that swapped in a library of identical layout may do (see `unwind::modules`).
fn common_above_probe(a: &[usize], b: &[usize]) -> Vec<usize> {
    assert!(a.len() > 3 && b.len() > 3, "{a:x?} / {b:x?}");
    let n = a.len().min(b.len());
    assert_eq!(&a[2..n], &b[2..n], "\nours:   {a:x?}\nlibgcc: {b:x?}");
    assert!(a.len() <= b.len() + 1, "{a:x?} / {b:x?}");
    a[2..n].to_vec()
}

fn module_of(pc: usize) -> String {
    // SAFETY: dladdr only fills the out-structure.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr((pc - 1) as *const libc::c_void, &mut info) == 0 || info.dli_fname.is_null()
        {
            return String::new();
        }
        CStr::from_ptr(info.dli_fname)
            .to_string_lossy()
            .into_owned()
    }
}

/// Compiles `src` into a shared library in the test's scratch directory.
fn build_so(name: &str, src: &str, libs: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("unwind_native");
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join(format!("{name}.c"));
    let so = dir.join(format!("lib{name}.so"));
    std::fs::write(&c, src).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-O2", "-fomit-frame-pointer", "-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&c)
        .args(libs)
        .output()
        .unwrap_or_else(|e| panic!("running {cc}: {e} (a C compiler is needed)"));
    assert!(
        out.status.success(),
        "{cc} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

struct Lib(*mut libc::c_void);

impl Lib {
    fn open(path: &Path) -> Lib {
        let p = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid path; our test libraries have no constructors.
        let h = unsafe { libc::dlopen(p.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!h.is_null(), "dlopen {path:?} failed");
        Lib(h)
    }

    fn sym(&self, name: &CStr) -> *mut libc::c_void {
        // SAFETY: a live handle and a NUL-terminated name.
        let s = unsafe { libc::dlsym(self.0, name.as_ptr()) };
        assert!(!s.is_null(), "no {name:?}");
        s
    }
}

impl Drop for Lib {
    fn drop(&mut self) {
        // SAFETY: the handle came from dlopen and nothing of the library is in use any more.
        assert_eq!(unsafe { libc::dlclose(self.0) }, 0);
    }
}

const ZLIB_SHIM: &str = r#"
#include <string.h>
#include <zlib.h>

/* Runs deflateInit2_ (which calls zalloc for its state) with the caller's allocator. */
int shim_deflate_init(alloc_func za, free_func zf) {
    z_stream s;
    memset(&s, 0, sizeof s);
    s.zalloc = za;
    s.zfree = zf;
    int rc = deflateInit2(&s, 6, Z_DEFLATED, 15, 8, Z_DEFAULT_STRATEGY);
    if (rc == Z_OK) deflateEnd(&s);
    return rc;
}
"#;

static ZSEEN: Mutex<Option<(Vec<usize>, Vec<usize>)>> = Mutex::new(None);

extern "C" fn rust_zalloc(_opaque: *mut libc::c_void, items: u32, size: u32) -> *mut libc::c_void {
    let mut seen = ZSEEN.lock().unwrap();
    if seen.is_none() {
        *seen = Some(probe());
    }
    // SAFETY: plain calloc.
    unsafe { libc::calloc(items as usize, size as usize) }
}

extern "C" fn rust_zfree(_opaque: *mut libc::c_void, p: *mut libc::c_void) {
    // SAFETY: `p` came from rust_zalloc's calloc.
    unsafe { libc::free(p) }
}

#[test]
fn matches_libgcc_through_zlib() {
    assert!(unwind::init());
    let so = build_so("zshim", ZLIB_SHIM, &["-lz"]);
    let lib = Lib::open(&so);
    type Init = unsafe extern "C" fn(
        extern "C" fn(*mut libc::c_void, u32, u32) -> *mut libc::c_void,
        extern "C" fn(*mut libc::c_void, *mut libc::c_void),
    ) -> libc::c_int;
    // SAFETY: the symbol has this C signature (see ZLIB_SHIM).
    let f: Init = unsafe { std::mem::transmute(lib.sym(c"shim_deflate_init")) };
    // SAFETY: calling the shim with valid callbacks.
    assert_eq!(unsafe { f(rust_zalloc, rust_zfree) }, 0);
    let (a, b) = ZSEEN.lock().unwrap().take().unwrap();
    let common = same_above_probe(&a, &b);
    let names: Vec<String> = common.iter().map(|&pc| module_of(pc)).collect();
    assert!(
        names.iter().any(|n| n.contains("libz.so")),
        "no zlib frame: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("libzshim.so")),
        "no shim frame: {names:?}"
    );
    drop(lib);
}

/// Two libraries with different layouts, so that one loaded where the other was is told apart.
fn plugin_src(pad_functions: usize) -> String {
    let mut s = String::from("typedef void (*cb_t)(void);\n");
    for i in 0..pad_functions {
        s += &format!(
            "__attribute__((noinline)) int pad{i}(int x) {{ volatile int a[{n}]; for (int j = 0; j < {n}; j++) a[j] = x * j; return a[x % {n}]; }}\n",
            n = 4 + i
        );
    }
    s += r#"
__attribute__((noinline)) static int inner(cb_t cb, int x) {
    volatile char pad[64];
    pad[0] = (char)x;
    cb();
    return pad[0] + x;
}
int run_cb(cb_t cb, int x) { return inner(cb, x) * 3 + 1; }
"#;
    s
}

static PSEEN: Mutex<Option<(Vec<usize>, Vec<usize>)>> = Mutex::new(None);

extern "C" fn plugin_cb() {
    *PSEEN.lock().unwrap() = Some(probe());
}

/// A hundred dlopen / capture inside / dlclose rounds while another thread keeps capturing.
///
/// Rounds 0–49 alternate two libraries of different layouts with no hint: the walk sees that
/// the object at the old address is no longer the one it knew (`_dl_find_object`) and
/// refreshes. Rounds 50–99 alternate two libraries of *identical* layout (same mapping size,
/// same `.eh_frame_hdr` offset, same functions' addresses), which `_dl_find_object` cannot
/// tell apart once the loader reuses the link map: there the test calls
/// `invalidate_modules()` after each `dlclose`, as the preload's `dlclose` hook does.
#[test]
fn dlopen_dlclose_loop_while_capturing() {
    assert!(unwind::init());
    let a = build_so("plugin_a", &plugin_src(0), &[]);
    let b = build_so("plugin_b", &plugin_src(40), &[]); // same layout as a
    let c = build_so("plugin_c", &plugin_src(300), &[]); // larger: tables elsewhere
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    let other = AtomicU64::new(0);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let mut buf = [0usize; 64];
                if capture(&mut buf, 0) > 0 {
                    other.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // The rounds race the other thread's walks only once it walks: on a busy machine (the
        // other tests of this binary run meanwhile) it once had not started by their end.
        while other.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        let mut truncated = 0;
        for i in 0..100 {
            let hinted = i >= 50;
            let path = match (hinted, i % 2) {
                (_, 0) => &a,
                (false, _) => &c,
                (true, _) => &b,
            };
            let lib = Lib::open(path);
            type Run = unsafe extern "C" fn(extern "C" fn(), libc::c_int) -> libc::c_int;
            // SAFETY: `run_cb` has this C signature (see plugin_src).
            let run: Run = unsafe { std::mem::transmute(lib.sym(c"run_cb")) };
            // SAFETY: calls the plugin with a valid callback.
            let r = unsafe { run(plugin_cb, 2) };
            assert_eq!(r, (2 + 2) * 3 + 1);
            let (ours, gcc) = PSEEN.lock().unwrap().take().unwrap();
            // A walk that races the other thread's module refresh around the swap may end early,
            // and must still be right as far as it goes.
            let common = common_above_probe(&ours, &gcc);
            if ours.len() + 1 < gcc.len() {
                truncated += 1;
            }
            let lib_name = path.file_name().unwrap().to_str().unwrap();
            let in_plugin = common
                .iter()
                .filter(|&&pc| module_of(pc).ends_with(lib_name))
                .count();
            assert!(
                in_plugin >= 2,
                "round {i}: {in_plugin} frames in {lib_name}"
            );
            drop(lib);
            if hinted {
                unwind::invalidate_modules();
            }
        }
        assert!(truncated <= 10, "{truncated} of 100 walks ended early");
    });
    let st = unwind::stats();
    eprintln!(
        "dlopen loop: other thread captured {} stacks; {:?}",
        other.load(Ordering::Relaxed),
        st
    );
    assert!(other.load(Ordering::Relaxed) > 0);
    assert!(st.refreshes >= 100, "{st:?}");
}

/// Recurses `depth` frames, then runs `f` there.
#[inline(never)]
fn at_depth(depth: u32, f: &mut dyn FnMut()) {
    if depth == 0 {
        f();
    } else {
        at_depth(black_box(depth - 1), f);
    }
    black_box(());
}

/// Prints the warm cost per frame of `capture` and of `_Unwind_Backtrace` (never asserted:
/// the machine may be shared). Each figure is the best of five rounds.
#[test]
fn report_cost_per_frame() {
    assert!(unwind::init());
    const ROUNDS: u32 = 5;
    const ITERS: u32 = 4_000;
    for depth in [10u32, 40] {
        let mut line = String::new();
        at_depth(depth, &mut || {
            let mut buf = [0usize; MAX_FRAMES];
            let frames = capture(&mut buf, 0);
            for _ in 0..1000 {
                black_box(capture(&mut buf, 0)); // warm the rule cache
            }
            let mut ours = f64::MAX;
            let mut gcc = f64::MAX;
            let mut v: Vec<usize> = Vec::with_capacity(MAX_FRAMES);
            for _ in 0..ROUNDS {
                let t = Instant::now();
                for _ in 0..ITERS {
                    black_box(capture(black_box(&mut buf), 0));
                }
                ours = ours.min(t.elapsed().as_nanos() as f64 / f64::from(ITERS));
                let t = Instant::now();
                for _ in 0..ITERS / 10 {
                    v.clear();
                    // SAFETY: as in `theirs`.
                    unsafe { _Unwind_Backtrace(collect, (&mut v as *mut Vec<usize>).cast()) };
                }
                gcc = gcc.min(t.elapsed().as_nanos() as f64 / f64::from(ITERS / 10));
            }
            line = format!(
                "capture: {frames} frames, {ours:.0} ns/stack, {:.1} ns/frame; \
                 _Unwind_Backtrace: {} frames, {gcc:.0} ns/stack, {:.1} ns/frame",
                ours / frames as f64,
                v.len(),
                gcc / v.len() as f64
            );
        });
        eprintln!("warm cost at depth {depth}: {line}");
    }
}
