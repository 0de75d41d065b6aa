//! `sampalloc run`: the launcher. Finds `libsampalloc.so`, makes the profile directory (a
//! private temporary one, or a checked `--out`), runs the program with the library preloaded
//! and profiling on, waits for it, and prints the top sites of its final profile.
//!
//! A JVM (see [`jvm`]) gets the flags that let its Java frames be named through
//! `JAVA_TOOL_OPTIONS`, and its perf map refreshed with `jcmd` after each profile it dumps
//! while running.

use crate::{analyse, euid, RunArgs, SymArgs};
use sampalloc::analysis::{
    self,
    report::{self, Measure, TopHeader},
    GroupBy,
};
use sampalloc::profile::{kind, ProfileName};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `libsampalloc.so`: `SAMPALLOC_LIB`, else beside this executable (or in `../lib`).
fn find_library() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SAMPALLOC_LIB") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("SAMPALLOC_LIB={} is not a file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join("libsampalloc.so"),
        dir.join("../lib/libsampalloc.so"),
    ];
    for c in &candidates {
        if c.is_file() {
            return std::fs::canonicalize(c).map_err(|e| format!("{}: {e}", c.display()));
        }
    }
    Err(format!(
        "libsampalloc.so not found beside {} (build it with `cargo build --release -p sampalloc-preload`) and SAMPALLOC_LIB is not set",
        exe.display()
    ))
}

/// `sampalloc run`: the program's exit code (128 + the signal if it was killed), or 2 if it
/// could not be run.
pub(crate) fn run(a: RunArgs) -> ExitCode {
    match run_inner(a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sampalloc: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(a: RunArgs) -> Result<ExitCode, String> {
    use std::os::unix::process::ExitStatusExt;
    let lib = find_library()?;
    let dir = match &a.out {
        Some(d) => out_dir(d, a.allow_shared_out)?,
        None => make_temp_dir()?,
    };
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let prefix = dir.join("sampalloc");
    let prefix = prefix
        .to_str()
        .ok_or_else(|| format!("the profile directory {} is not UTF-8", dir.display()))?;
    if prefix.contains(',') {
        return Err(format!(
            "the profile directory {} contains ',', which SAMPALLOC_CONF cannot carry",
            dir.display()
        ));
    }
    let mut conf = String::new();
    if let Ok(existing) = std::env::var("SAMPALLOC_CONF") {
        if !existing.is_empty() {
            conf.push_str(&existing);
            conf.push(',');
        }
    }
    conf.push_str(&format!("prof:true,prof_final:true,prof_prefix:{prefix}"));
    if let Some(ms) = a.every {
        conf.push_str(&format!(",prof_interval_ms:{ms}"));
    }
    for c in &a.conf {
        if !c.is_empty() {
            conf.push(',');
            conf.push_str(c);
        }
    }
    let mut preload = lib.as_os_str().to_os_string();
    if let Some(old) = std::env::var_os("LD_PRELOAD") {
        if !old.is_empty() {
            preload.push(":");
            preload.push(old);
        }
    }
    let (program, args) = a.program.split_first().ok_or("no program given")?;
    eprintln!("sampalloc: profiles go to {}", dir.display());
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .env("LD_PRELOAD", &preload)
        .env("SAMPALLOC_CONF", &conf);
    let pusher = match &a.push {
        Some(url) => {
            let service = match &a.push_service {
                Some(s) => s.clone(),
                None => service_name(program),
            };
            let cfg = crate::push::Config::new(url, &service, &a.push_labels, true, 32, 5)?;
            crate::push::survive_one_interrupt();
            Some(crate::push::Watcher::start(
                cfg,
                &dir,
                std::time::SystemTime::now(),
            )?)
        }
        None => None,
    };
    let jvm = if a.no_java_flags {
        None
    } else {
        jvm::prepare(&mut command, program)
    };
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            if let Some(p) = pusher {
                let _ = p.finish();
            }
            return Err(format!("cannot run {}: {e}", program.to_string_lossy()));
        }
    };
    let pid = child.id();
    let refresher = jvm.and_then(|j| j.refresh_perf_map(pid, &dir));
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {}: {e}", program.to_string_lossy()));
    if let Some(r) = refresher {
        r.stop();
    }
    // The program is gone and its final profile written: push it and what is still queued.
    if let Some(p) = pusher {
        match p.finish() {
            Ok(t) => {
                if let Err(e) = crate::push::summary(&t) {
                    eprintln!("sampalloc: error: --push: {e}");
                }
            }
            Err(e) => eprintln!("sampalloc: error: --push: {e}"),
        }
    }
    let status = status?;
    let code: u8 = match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => (128 + sig) as u8,
        _ => 1,
    };

    let finals = profiles_of(&dir, Some(pid), Some(kind::FINAL));
    match finals.last() {
        Some(p) => {
            print_top_sites(p, a.n, &dir);
            eprintln!("sampalloc: {}", analysis::explain::verdict_line(p));
        }
        None => {
            let others = profiles_of(&dir, None, None);
            let why = if let Some(sig) = status.signal() {
                format!("the program was killed by signal {sig} before it could write one")
            } else if !others.is_empty() {
                format!(
                    "other profiles are there ({} file(s), e.g. {}): the program may have exec'd another or forked children that exited",
                    others.len(),
                    others[0].display()
                )
            } else {
                "the program may have exited with _exit(), exec'd a statically linked program, or not loaded libsampalloc.so (setuid programs ignore LD_PRELOAD)".to_string()
            };
            eprintln!(
                "sampalloc: no final profile of pid {pid} in {}: {why}",
                dir.display()
            );
            // A directory of our own that nothing was written to is not worth keeping.
            if a.out.is_none() && std::fs::remove_dir(&dir).is_ok() {
                eprintln!("sampalloc: removed the empty {}", dir.display());
            }
        }
    }
    Ok(ExitCode::from(code))
}

/// The service name `--push` uses by default: the program's file name, with characters a
/// Pyroscope application name cannot hold replaced by `_`.
fn service_name(program: &std::ffi::OsStr) -> String {
    let name = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "sampalloc".to_string()
    } else {
        clean
    }
}

/// `--every`: `10s`, `500ms` or a bare number of seconds, in milliseconds (1 ms to a day).
pub(crate) fn parse_every(s: &str) -> Result<u64, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        (s, 1000)
    };
    let ms = num
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|ms| (1..=86_400_000).contains(ms));
    ms.ok_or_else(|| format!("'{s}' is not a duration from 1ms to 86400s (e.g. 10s, 500ms)"))
}

/// Prints, on stderr, the top `n` call sites of the final profile `p` (in the directory `dir`).
fn print_top_sites(p: &Path, n: usize, dir: &Path) {
    let sym = SymArgs { perf_map: None };
    match analyse::load(p, &sym) {
        Ok((profile, rows)) => {
            let mut sites = analysis::sites(&rows, GroupBy::Function);
            report::rank(&mut sites, Measure::Inuse);
            let shown = p.display().to_string();
            let header = TopHeader {
                profile: &shown,
                base: None,
                sample_period: profile.sample_period,
            };
            eprintln!("\nsampalloc: memory still allocated at exit, by call site:");
            eprint!("{}", report::top_text(&sites, Measure::Inuse, n, &header));
            eprintln!(
                "\nMore: sampalloc top {shown} --stacks | flamegraph | pprof; all profiles in {}",
                dir.display()
            );
        }
        Err(e) => eprintln!("sampalloc: error: {e}"),
    }
}

/// The profiles in `dir` (files named as [`ProfileName`]s, whatever their prefix) of process
/// `pid` and of kind `kind` (None: any), in sequence order.
fn profiles_of(dir: &Path, pid: Option<u32>, kind: Option<u8>) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(name) = ProfileName::parse(file_name.as_bytes()) else {
            continue;
        };
        if pid.is_none_or(|p| p == name.pid) && kind.is_none_or(|k| k == name.kind) {
            found.push((name.seq, e.path()));
        }
    }
    found.sort();
    found.into_iter().map(|f| f.1).collect()
}

/// The `--out` directory, created with mode 0700 if missing. Unless `allow_shared`, refused
/// if it is a symlink, not the user's own, or writable by group or others: anyone who can
/// write there could plant names or read the profiles.
fn out_dir(d: &Path, allow_shared: bool) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let shown = d.display();
    let meta = match std::fs::symlink_metadata(d) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(|e| format!("cannot create {shown}: {e}"))?;
            std::fs::symlink_metadata(d)
        }
        other => other,
    }
    .map_err(|e| format!("cannot use --out {shown}: {e}"))?;
    let flag = "pass --allow-shared-out to use it anyway";
    if meta.file_type().is_symlink() {
        if !allow_shared {
            return Err(format!(
                "refusing --out {shown}: it is a symlink (give the directory itself, or {flag})"
            ));
        }
        if !std::fs::metadata(d).is_ok_and(|m| m.is_dir()) {
            return Err(format!("--out {shown} is not a directory"));
        }
        return Ok(d.to_path_buf());
    }
    if !meta.is_dir() {
        return Err(format!("--out {shown} is not a directory"));
    }
    if allow_shared {
        return Ok(d.to_path_buf());
    }
    if meta.uid() != euid() {
        return Err(format!(
            "refusing --out {shown}: it belongs to uid {}, not to you ({flag})",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "refusing --out {shown}: it is writable by group or others (mode {mode:o}; {flag})"
        ));
    }
    Ok(d.to_path_buf())
}

/// A new directory `sampalloc-<16 random hex digits>` in the temporary directory, made with
/// `mkdir` mode 0700 (which fails if anything, a symlink included, has the name).
fn make_temp_dir() -> Result<PathBuf, String> {
    use std::io::Read;
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    let mut urandom = std::fs::File::open("/dev/urandom")
        .map_err(|e| format!("cannot open /dev/urandom to name a temporary directory: {e}"))?;
    for _ in 0..16 {
        let mut r = [0u8; 8];
        urandom
            .read_exact(&mut r)
            .map_err(|e| format!("cannot read /dev/urandom to name a temporary directory: {e}"))?;
        let d = base.join(format!("sampalloc-{:016x}", u64::from_ne_bytes(r)));
        match std::fs::DirBuilder::new().mode(0o700).create(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", d.display())),
        }
    }
    Err(format!(
        "cannot create a temporary directory in {}: every name tried exists",
        base.display()
    ))
}

/// A JVM under `run`: detection, `JAVA_TOOL_OPTIONS`, and refreshing its perf map.
///
/// Without frame pointers HotSpot's compiled Java code breaks the frame-pointer chain the
/// profiler walks, and without a perf map (`/tmp/perf-<pid>.map`) the JIT code's addresses have
/// no names. `-XX:+PreserveFramePointer` keeps the chain; `-XX:+UnlockDiagnosticVMOptions
/// -XX:+DumpPerfMapAtExit` (JDK 17 and later) writes the map when the JVM exits, which the final
/// profile is symbolized with. A running JVM writes it on request: `jcmd <pid>
/// Compiler.perfmap`, which `run` does after each interval or signal profile.
mod jvm {
    use std::ffi::{OsStr, OsString};
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    /// The flags `run` adds for a JVM of this major version (None: unknown, taken as recent).
    pub(super) fn flags(major: Option<u32>) -> Vec<&'static str> {
        let mut f = vec!["-XX:+PreserveFramePointer"];
        // DumpPerfMapAtExit and Compiler.perfmap came with JDK 17; an unknown -XX flag stops
        // the JVM from starting.
        if major.is_none_or(|m| m >= 17) {
            f.extend(["-XX:+UnlockDiagnosticVMOptions", "-XX:+DumpPerfMapAtExit"]);
        }
        f
    }

    /// `JAVA_TOOL_OPTIONS` for the child: `ours` first, then the user's `existing` options so
    /// that theirs win; a flag of ours whose option the user already sets (e.g.
    /// `-XX:-PreserveFramePointer`) is left out. None: nothing to add.
    pub(super) fn merge_options(existing: Option<&OsStr>, ours: &[&str]) -> Option<OsString> {
        let existing = existing.filter(|e| !e.is_empty());
        let user = existing.map(|e| e.to_string_lossy().into_owned());
        let option = |f: &str| {
            f.trim_start_matches("-XX:")
                .trim_start_matches(['+', '-'])
                .to_string()
        };
        let added: Vec<&str> = ours
            .iter()
            .copied()
            .filter(|f| {
                user.as_ref().is_none_or(|u| {
                    !u.split_whitespace()
                        .any(|w| w.starts_with("-XX:") && option(w) == option(f))
                })
            })
            .collect();
        if added.is_empty() {
            return None;
        }
        let mut out = OsString::from(added.join(" "));
        if let Some(e) = existing {
            out.push(" ");
            out.push(e);
        }
        Some(out)
    }

    /// `program` as the child will find it: a path as given, else the first match in `PATH`;
    /// symlinks resolved.
    fn resolve(program: &OsStr) -> Option<PathBuf> {
        let p = Path::new(program);
        if program.as_bytes().contains(&b'/') {
            return std::fs::canonicalize(p).ok();
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(p))
            .find(|c| std::fs::metadata(c).is_ok_and(|m| m.is_file()))
            .and_then(|c| std::fs::canonicalize(c).ok())
    }

    /// The Java home of a launcher at `<home>/bin/<exe>` (or `<home>/jre/bin/<exe>`): the
    /// directory with `lib/server/libjvm.so` (or JDK 8's `lib/amd64/server/libjvm.so`).
    fn home_of(exe: &Path) -> Option<PathBuf> {
        let home = exe.parent()?.parent()?;
        let has_jvm = ["lib/server/libjvm.so", "lib/amd64/server/libjvm.so"]
            .iter()
            .any(|l| home.join(l).is_file());
        has_jvm.then(|| home.to_path_buf())
    }

    /// The major version from `<home>/release` (`JAVA_VERSION="17.0.15"`, `"1.8.0_402"`).
    fn major_version(home: &Path) -> Option<u32> {
        let text = [home.join("release"), home.join("../release")]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())?;
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("JAVA_VERSION="))?
            .trim()
            .trim_matches('"');
        let mut parts = v.split(['.', '_', '-', '+']);
        let first: u32 = parts.next()?.parse().ok()?;
        if first == 1 {
            parts.next()?.parse().ok()
        } else {
            Some(first)
        }
    }

    /// A JVM launcher about to be run.
    pub(super) struct Jvm {
        /// `jcmd` beside the launcher, else on `PATH`; None: not found or a JDK before 17.
        jcmd: Option<PathBuf>,
    }

    /// If `program` is a JVM launcher — named `java`, or resolving (through symlinks and
    /// `PATH`) to `java` or to a program in a Java home's `bin/` — adds the flags to the
    /// child's `JAVA_TOOL_OPTIONS` and says so on stderr.
    pub(super) fn prepare(command: &mut Command, program: &OsStr) -> Option<Jvm> {
        let named_java = Path::new(program).file_name() == Some(OsStr::new("java"));
        let exe = resolve(program);
        let home = exe.as_deref().and_then(home_of);
        let resolved_java = exe
            .as_deref()
            .is_some_and(|e| e.file_name() == Some(OsStr::new("java")));
        if !(named_java || resolved_java || home.is_some()) {
            return None;
        }
        let major = home.as_deref().and_then(major_version);
        let ours = flags(major);
        let existing = std::env::var_os("JAVA_TOOL_OPTIONS");
        if let Some(opts) = merge_options(existing.as_deref(), &ours) {
            eprintln!(
                "sampalloc: a JVM: JAVA_TOOL_OPTIONS={} (frame pointers and a perf map name the Java frames; --no-java-flags leaves it alone)",
                opts.to_string_lossy()
            );
            command.env("JAVA_TOOL_OPTIONS", opts);
        }
        if major.is_some_and(|m| m < 17) {
            eprintln!(
                "sampalloc: JDK {} writes no perf map (JDK 17 does): its compiled Java frames stay unnamed unless an agent writes /tmp/perf-<pid>.map",
                major.unwrap_or(0)
            );
            return Some(Jvm { jcmd: None });
        }
        let beside = exe
            .as_deref()
            .and_then(Path::parent)
            .map(|d| d.join("jcmd"))
            .filter(|j| j.is_file());
        let jcmd = beside.or_else(|| resolve(OsStr::new("jcmd")));
        Some(Jvm { jcmd })
    }

    /// Stops the thread that refreshes a JVM's perf map.
    pub(super) struct Refresher {
        stop: Arc<AtomicBool>,
        thread: JoinHandle<()>,
    }

    impl Refresher {
        /// Stops the thread (killing a `jcmd` still running) and waits for it.
        pub(super) fn stop(self) {
            self.stop.store(true, Ordering::Relaxed);
            let _ = self.thread.join();
        }
    }

    impl Jvm {
        /// While the JVM (process `pid`) runs: after each new non-final profile of it in `dir`
        /// (interval or signal dumps), `jcmd <pid> Compiler.perfmap` rewrites
        /// `/tmp/perf-<pid>.map`, at most once every 2 s, so that those profiles can be read
        /// with Java names before the JVM exits.
        pub(super) fn refresh_perf_map(self, pid: u32, dir: &Path) -> Option<Refresher> {
            let Some(jcmd) = self.jcmd else {
                eprintln!(
                    "sampalloc: no jcmd found: the JVM's perf map is written only when it exits (for profiles read before that, run `jcmd {pid} Compiler.perfmap`)"
                );
                return None;
            };
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let dir = dir.to_path_buf();
            let thread = std::thread::Builder::new()
                .name("perf-map".into())
                .spawn(move || refresh_loop(&jcmd, pid, &dir, &flag))
                .ok()?;
            Some(Refresher { stop, thread })
        }
    }

    fn refresh_loop(jcmd: &Path, pid: u32, dir: &Path, stop: &AtomicBool) {
        use sampalloc::profile::kind;
        let mut seen = 0;
        let mut last: Option<Instant> = None;
        let mut told = false;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let n = super::profiles_of(dir, Some(pid), None)
                .iter()
                .filter(|p| {
                    let name = p.file_name().map(OsStr::as_bytes).unwrap_or_default();
                    sampalloc::profile::ProfileName::parse(name)
                        .is_some_and(|n| n.kind != kind::FINAL)
                })
                .count();
            if n <= seen || last.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
                continue;
            }
            seen = n;
            last = Some(Instant::now());
            if !told {
                eprintln!(
                    "sampalloc: refreshing /tmp/perf-{pid}.map (jcmd {pid} Compiler.perfmap) after the JVM's interval and signal profiles"
                );
                told = true;
            }
            let Ok(mut child) = Command::new(jcmd)
                .args([pid.to_string().as_str(), "Compiler.perfmap"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            else {
                eprintln!("sampalloc: cannot run {}", jcmd.display());
                return;
            };
            // jcmd attaches within its own timeout; stop waiting when the JVM is gone.
            let started = Instant::now();
            loop {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn options_merge_with_the_users_which_win() {
            let ours = flags(Some(17));
            assert_eq!(
                merge_options(None, &ours).unwrap(),
                "-XX:+PreserveFramePointer -XX:+UnlockDiagnosticVMOptions -XX:+DumpPerfMapAtExit"
            );
            assert_eq!(
                merge_options(Some(OsStr::new("-Xss2m")), &ours).unwrap(),
                "-XX:+PreserveFramePointer -XX:+UnlockDiagnosticVMOptions -XX:+DumpPerfMapAtExit -Xss2m"
            );
            assert_eq!(
                merge_options(Some(OsStr::new("-XX:-PreserveFramePointer")), &ours).unwrap(),
                "-XX:+UnlockDiagnosticVMOptions -XX:+DumpPerfMapAtExit -XX:-PreserveFramePointer"
            );
            let all =
                "-XX:+UnlockDiagnosticVMOptions -XX:+PreserveFramePointer -XX:+DumpPerfMapAtExit";
            assert_eq!(merge_options(Some(OsStr::new(all)), &ours), None);
            assert_eq!(flags(Some(11)), ["-XX:+PreserveFramePointer"]);
            assert_eq!(flags(None).len(), 3);
        }

        #[test]
        fn version_from_the_release_file() {
            let d = std::env::temp_dir().join(format!("sampalloc-jvm-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            for (text, want) in [
                ("IMPLEMENTOR=\"x\"\nJAVA_VERSION=\"17.0.15\"\n", Some(17)),
                ("JAVA_VERSION=\"1.8.0_402\"\n", Some(8)),
                ("JAVA_VERSION=\"21\"\n", Some(21)),
                ("nothing\n", None),
            ] {
                std::fs::write(d.join("release"), text).unwrap();
                assert_eq!(major_version(&d), want, "{text}");
            }
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}
