//! `sampalloc run`: the launcher. Finds `libsampalloc.so`, makes the profile directory (a
//! private temporary one, or a checked `--out`), runs the program with the library preloaded
//! and profiling on, waits for it, and prints the top sites of its final profile.

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
    let mut child = std::process::Command::new(program)
        .args(args)
        .env("LD_PRELOAD", &preload)
        .env("SAMPALLOC_CONF", &conf)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
    let pid = child.id();
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {}: {e}", program.to_string_lossy()))?;
    let code: u8 = match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => (128 + sig) as u8,
        _ => 1,
    };

    let finals = profiles_of(&dir, Some(pid), Some(kind::FINAL));
    match finals.last() {
        Some(p) => print_top_sites(p, a.n, &dir),
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
