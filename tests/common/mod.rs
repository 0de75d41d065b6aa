//! Helpers shared by the integration tests. For the engine's tests: a small deterministic PRNG
//! (splitmix64), block contents derived from (address, size, seed) so that overlapping or
//! corrupted blocks are caught, and the process's resident set size from `/proc/self/statm`.
//! For the tests that run programs under `libsampalloc.so`: building the library with cargo,
//! scratch directories, compiling C, and running programs with timeouts.
//!
//! For the profiler's tests: a reader of heap_v2 profiles ([`heap_profile`]) and the running of
//! the programs of `tests/profile/` with jeprof and pprof beside it ([`profile_programs`]).
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod heap_profile;
#[cfg(feature = "pprof")]
pub mod pprof;
pub mod profile_programs;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// splitmix64: tiny, fast, deterministic, good enough to pick sizes and operations.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// Roughly log-uniform in `lo..=hi` (`lo >= 1`): as many small sizes as large ones per
    /// doubling, which spreads requests over the size classes.
    pub fn log_range(&mut self, lo: usize, hi: usize) -> usize {
        let lo_bits = usize::BITS - lo.leading_zeros() - 1;
        let hi_bits = usize::BITS - hi.leading_zeros() - 1;
        let bits = self.range(lo_bits as usize, hi_bits as usize);
        let base = 1usize << bits;
        self.range(base, (base * 2 - 1).min(hi)).max(lo)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// The splitmix64 finaliser: a bijective 64-bit mixer.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The pattern key of a block: depends on where it is, how long it is and a per-block seed, so
/// a block handed out twice or overlapping another is detected by either owner.
pub fn key(addr: usize, size: usize, seed: u64) -> u64 {
    mix(addr as u64 ^ mix(size as u64 ^ seed.rotate_left(29)))
}

/// The pattern's word number `i` for `key`.
#[inline]
fn word(key: u64, i: usize) -> u64 {
    mix(key.wrapping_add(i as u64))
}

/// Fills `len` bytes at `p` with the pattern of `key`.
///
/// # Safety
/// `[p, p + len)` must be writable memory the caller owns.
pub unsafe fn fill(p: *mut u8, len: usize, key: u64) {
    // SAFETY: the caller owns the range.
    let bytes = unsafe { std::slice::from_raw_parts_mut(p, len) };
    let mut chunks = bytes.chunks_exact_mut(8);
    let mut i = 0;
    for c in &mut chunks {
        c.copy_from_slice(&word(key, i).to_le_bytes());
        i += 1;
    }
    let rest = chunks.into_remainder();
    let last = word(key, i).to_le_bytes();
    rest.copy_from_slice(&last[..rest.len()]);
}

/// The offset of the first byte in `[p, p + len)` that differs from the pattern of `key`.
///
/// # Safety
/// `[p, p + len)` must be readable memory the caller owns.
pub unsafe fn mismatch(p: *const u8, len: usize, key: u64) -> Option<usize> {
    // SAFETY: the caller owns the range.
    let bytes = unsafe { std::slice::from_raw_parts(p, len) };
    let mut chunks = bytes.chunks_exact(8);
    let mut i = 0;
    for c in &mut chunks {
        let want = word(key, i).to_le_bytes();
        if c != want {
            let j = c.iter().zip(want).position(|(a, b)| *a != b).unwrap_or(0);
            return Some(i * 8 + j);
        }
        i += 1;
    }
    let rest = chunks.remainder();
    let last = word(key, i).to_le_bytes();
    rest.iter()
        .zip(last)
        .position(|(a, b)| *a != b)
        .map(|j| i * 8 + j)
}

/// The offset of the first non-zero byte in `[p, p + len)`.
///
/// # Safety
/// `[p, p + len)` must be readable memory the caller owns.
pub unsafe fn nonzero(p: *const u8, len: usize) -> Option<usize> {
    // SAFETY: the caller owns the range.
    let bytes = unsafe { std::slice::from_raw_parts(p, len) };
    bytes.iter().position(|&b| b != 0)
}

/// The process's resident set size in bytes, from `/proc/self/statm`.
pub fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm has a resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

/// Bytes as MiB, for messages.
pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Signed difference `a - b` in MiB, for messages.
pub fn diff_mib(a: usize, b: usize) -> f64 {
    (a as f64 - b as f64) / (1 << 20) as f64
}

/// No run may take longer than this by default; a hung program is killed and the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The cargo profile this test was built with, from where its executable lives
/// (`<target>/<profile dir>/deps/<test>-<hash>`).
pub fn profile() -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(OsStr::to_str)
        .expect("test executable under <target>/<profile>/deps");
    match dir {
        "debug" => "dev".to_string(),
        other => other.to_string(),
    }
}

/// Builds `libsampalloc.so` once and returns its path, as cargo reports it.
pub fn preload_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let out = Command::new(cargo)
            .args(["build", "-p", "sampalloc-preload", "--message-format=json"])
            .args(["--profile", &profile()])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .stdin(Stdio::null())
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "cargo build -p sampalloc-preload failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = String::from_utf8_lossy(&out.stdout);
        let lib = json
            .lines()
            .filter(|l| l.contains("\"compiler-artifact\"") && l.contains("sampalloc-preload"))
            .flat_map(|l| l.split('"'))
            .find(|s| s.ends_with("/libsampalloc.so"))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no libsampalloc.so in cargo's output:\n{json}"));
        assert!(lib.is_file(), "{} does not exist", lib.display());
        lib
    })
}

/// A scratch directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sampalloc-test-{}-{}-{name}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A scratch directory for a fixture kept in a static, which is never dropped: removed
    /// when the test process exits instead.
    pub fn for_process(name: &str) -> &'static Scratch {
        let scratch = Box::leak(Box::new(Scratch::new(name)));
        remove_at_exit(scratch.0.clone());
        scratch
    }
}

/// Removes `dir` when the process exits (`atexit`: after the test harness's last test, whether
/// it passed or not).
fn remove_at_exit(dir: PathBuf) {
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static REGISTER: Once = Once::new();
    extern "C" fn remove_all() {
        if let Ok(dirs) = DIRS.lock() {
            for d in dirs.iter() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    // SAFETY: `remove_all` is an `extern "C"` function that neither unwinds nor returns a
    // value; registering it has no other precondition.
    REGISTER.call_once(|| assert_eq!(unsafe { libc::atexit(remove_all) }, 0));
    DIRS.lock().unwrap().push(dir);
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where `tool` is on `PATH`, if it is.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| {
            p.is_file() && std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether `tool` is on `PATH`. Missing: a failure under CI, a skip with a note elsewhere.
pub fn have(tool: &str) -> bool {
    let found = which(tool).is_some();
    if !found {
        missing(&format!("`{tool}` is not installed"));
    }
    found
}

/// Reports a missing prerequisite: fails the test when `CI` is set (`.ci/run` installs
/// everything), prints a note otherwise (the caller then skips).
pub fn missing(what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what}, and CI is set: .ci/run should have installed it"
    );
    eprintln!("note: skipping, {what} (it is required when CI is set)");
}

/// Compiles `srcs` (relative to `src_dir`) with `compiler` into `scratch/out`. `flags` come
/// after the defaults (`-O1 -g -pthread -Wall`, so an `-O` in them wins) and the sources.
pub fn compile_in(
    src_dir: &Path,
    compiler: &str,
    scratch: &Scratch,
    srcs: &[&str],
    out: &str,
    flags: &[&str],
) -> PathBuf {
    let exe = scratch.path(out);
    let mut cmd = Command::new(compiler);
    cmd.args(["-O1", "-g", "-pthread", "-Wall"])
        .args(srcs.iter().map(|s| src_dir.join(s)))
        .arg("-o")
        .arg(&exe)
        .args(flags);
    let r = run_conf(cmd, None);
    assert!(
        r.status.success(),
        "{compiler} {srcs:?} failed:\n{}{}",
        r.stdout,
        r.stderr
    );
    exe
}

// ---------------------------------------------------------------------------------------------
// Running

pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn describe(&self) -> String {
        format!(
            "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }

    /// Asserts a clean exit with `needle` on stdout (or stderr, for programs like
    /// `java -version`).
    pub fn assert_ok(&self, what: &str, needle: &str) {
        assert!(
            self.status.success(),
            "{what} failed under the preload\n{}",
            self.describe()
        );
        assert!(
            self.stdout.contains(needle) || self.stderr.contains(needle),
            "{what}: expected {needle:?} in its output\n{}",
            self.describe()
        );
    }
}

pub fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(6000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Puts `cmd` in its own process group with stdout and stderr going to files in `logs`. With
/// `conf`, the program runs under the preload with `SAMPALLOC_CONF=conf`; without, with no
/// preload at all.
pub fn spawn_logged(mut cmd: Command, logs: &Scratch, conf: Option<&str>) -> Child {
    match conf {
        Some(conf) => {
            cmd.env("LD_PRELOAD", preload_lib())
                .env("SAMPALLOC_CONF", conf);
        }
        None => {
            cmd.env_remove("LD_PRELOAD").env_remove("SAMPALLOC_CONF");
        }
    }
    let out = std::fs::File::create(logs.path("stdout")).expect("stdout file");
    let err = std::fs::File::create(logs.path("stderr")).expect("stderr file");
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Kills the child's whole process group (it may have started others).
pub fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for the child for at most `limit`; kills it and fails the test on timeout.
pub fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() >= deadline {
            kill_group(child);
            panic!("{what} did not finish within {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn collect(status: ExitStatus, logs: &Scratch) -> Run {
    let read =
        |n| String::from_utf8_lossy(&std::fs::read(logs.path(n)).unwrap_or_default()).into_owned();
    Run {
        status,
        stdout: read("stdout"),
        stderr: read("stderr"),
    }
}

/// Runs `cmd` (see [`spawn_logged`] for `conf`), bounded by `limit`.
pub fn run_bounded(cmd: Command, conf: Option<&str>, limit: Duration) -> Run {
    let logs = Scratch::new("logs");
    let what = format!("{cmd:?}");
    let mut child = spawn_logged(cmd, &logs, conf);
    let status = wait_bounded(&mut child, limit, &what);
    collect(status, &logs)
}

/// Runs `cmd` (see [`spawn_logged`] for `conf`), bounded by [`TIMEOUT`].
pub fn run_conf(cmd: Command, conf: Option<&str>) -> Run {
    run_bounded(cmd, conf, TIMEOUT)
}

pub fn command<I, S>(program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Allocates and frees blocks of mixed sizes (16 B to 5 KB, 64 at a time), `rounds` times: heavy
/// allocation that leaves nothing live, for profiles to tell from the leaks beside it. Not
/// inlined, so its samples name it (`common::churn`).
#[inline(never)]
pub fn churn(rounds: usize) {
    let layout = |size: usize| std::alloc::Layout::from_size_align(size, 8).unwrap();
    let mut held = [std::ptr::null_mut::<u8>(); 64];
    for i in 0..rounds {
        for (j, slot) in held.iter_mut().enumerate() {
            let size = 16 + (i * 7 + j * 131) % 5000;
            // SAFETY: non-zero layout, freed right below with the same layout.
            unsafe {
                *slot = std::alloc::alloc(layout(size));
                std::hint::black_box(*slot);
                std::alloc::dealloc(*slot, layout(size));
            }
        }
    }
}
