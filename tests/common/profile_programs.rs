//! Running the programs of `tests/profile/` for the profiler tests: compiling them, running them
//! under the preload with a `SAMPALLOC_CONF`, and the two outside readers of their profiles,
//! `jeprof --text` and `go tool pprof -top`.

use super::{command, have, run_bounded, Run, Scratch};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Bound on any one program run here.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Where the profiler tests' programs are.
pub fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/profile")
}

/// Compiles C sources of `tests/profile` with `cc` and `flags` (after the defaults).
pub fn cc(scratch: &Scratch, srcs: &[&str], out: &str, flags: &[&str]) -> PathBuf {
    super::compile_in(&sources(), "cc", scratch, srcs, out, flags)
}

/// The leak programs are built as the issue asks: optimized, no frame pointers, with debug
/// information for jeprof and pprof.
pub const NO_FP: &[&str] = &["-O2", "-fomit-frame-pointer", "-g"];

/// Runs `cmd` under the preload with `conf`, bounded by [`LIMIT`].
pub fn run_prof(cmd: Command, conf: &str) -> Run {
    run_bounded(cmd, Some(conf), LIMIT)
}

/// Runs a tool (no preload), bounded by [`LIMIT`].
pub fn run_tool(cmd: Command) -> Run {
    run_bounded(cmd, None, LIMIT)
}

/// A mebibyte, for estimates in bytes.
pub const MIB: f64 = 1048576.0;

/// Whether the tools for jeprof are there (perl script plus binutils).
pub fn have_jeprof() -> bool {
    ["jeprof", "perl", "addr2line", "nm", "objdump"]
        .iter()
        .all(|t| have(t))
}

/// `jeprof --text --inuse_space exe profile`: (flat MiB, cum MiB, name) per line.
pub fn jeprof_text(exe: &Path, profile: &Path) -> Vec<(f64, f64, String)> {
    let mut c = command("jeprof", ["--text", "--inuse_space"]);
    c.arg(exe).arg(profile);
    let r = run_tool(c);
    assert!(r.status.success(), "jeprof failed\n{}", r.describe());
    let top: Vec<(f64, f64, String)> = r
        .stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || !f[1].ends_with('%') {
                return None;
            }
            Some((f[0].parse().ok()?, f[3].parse().ok()?, f[5..].join(" ")))
        })
        .collect();
    assert!(!top.is_empty(), "no lines from jeprof\n{}", r.describe());
    eprintln!(
        "jeprof --text top:\n{}",
        r.stdout.lines().take(12).collect::<Vec<_>>().join("\n")
    );
    top
}

/// `go tool pprof ARGS` with a private Go home, offline; fails the test if pprof fails.
/// Callers check `have("go")` first (a failure under CI, a skip with a note elsewhere); a
/// caller that did not fails here rather than skipping.
pub fn go_pprof<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    assert!(
        super::which("go").is_some(),
        "go tool pprof: `go` is not installed (callers check have(\"go\") first)"
    );
    let home = Scratch::new("gohome");
    let mut c = command("go", ["tool", "pprof"]);
    c.args(args)
        .env("HOME", &home.0)
        .env("GOCACHE", home.path("cache"))
        .env("GOPATH", home.path("gopath"))
        .env("PPROF_TMPDIR", home.path("pprof"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "");
    let r = run_tool(c);
    assert!(r.status.success(), "go tool pprof failed\n{}", r.describe());
    r
}

/// The rows of `go tool pprof -top` output: (flat MiB, name).
pub fn pprof_top_rows(stdout: &str) -> Vec<(f64, String)> {
    let mib = |s: &str| -> Option<f64> {
        let units = [
            ("GB", 1024.0),
            ("MB", 1.0),
            ("kB", 1.0 / 1024.0),
            ("B", 1.0 / 1048576.0),
        ];
        if s == "0" {
            return Some(0.0);
        }
        units.iter().find_map(|(u, m)| {
            s.strip_suffix(u)
                .and_then(|n| n.parse::<f64>().ok())
                .map(|n| n * m)
        })
    };
    stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || !f[1].ends_with('%') {
                return None;
            }
            Some((mib(f[0])?, f[5..].join(" ")))
        })
        .collect()
}

/// `go tool pprof -top -sample_index=inuse_space exe profile`: (flat MiB, name) per line.
pub fn pprof_top(exe: &Path, profile: &Path) -> Vec<(f64, String)> {
    let r = go_pprof([
        std::ffi::OsStr::new("-top"),
        std::ffi::OsStr::new("-sample_index=inuse_space"),
        exe.as_os_str(),
        profile.as_os_str(),
    ]);
    eprintln!(
        "go tool pprof -top:\n{}",
        r.stdout.lines().take(10).collect::<Vec<_>>().join("\n")
    );
    let top = pprof_top_rows(&r.stdout);
    assert!(!top.is_empty(), "no lines from pprof\n{}", r.describe());
    top
}
