//! The `sampalloc` command: run a program under the preload with profiling on, and read,
//! compare and export its heap profiles (`top`, `diff`, `flamegraph`, `pprof`, `stacks`).
//!
//! Errors print one line and exit with code 2; `run` passes the program's exit code through.

use clap::{Args, Parser, Subcommand};
use sampalloc::analysis::{
    self, flamegraph, parse, pprof,
    report::{self, Measure, TopHeader},
    symbolize::Symbolizer,
    GroupBy, ResolvedRow,
};
use sampalloc::profile::{kind, ProfileName};
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const LONG_ABOUT: &str = "\
sampalloc: a malloc replacement with a built-in sampling heap profiler.

Workflow, to find what holds memory in a program:

  1. Run it with the allocator preloaded and profiling on:
       sampalloc run -- ./server --port 8080
     At exit, the final profile's top leak sites are printed; profiles are kept in a
     directory (--out DIR, else a new temporary one) named <prefix>.<pid>.<seq>.<kind>.heap.
     Ask for more profiles with --conf, e.g. --conf lg_prof_interval:30 (one every 1 GiB
     allocated) or --conf prof_signal:SIGUSR2 (kill -USR2 <pid> dumps one).

  2. Look at one profile: live bytes by call site, symbolized from the binaries:
       sampalloc top DIR/sampalloc.1234.7.f.heap

  3. A slow leak: compare an early profile with a late one; what grows comes first:
       sampalloc diff DIR/sampalloc.1234.0.i.heap DIR/sampalloc.1234.9.i.heap

  4. Export: sampalloc flamegraph P > heap.svg; sampalloc pprof P > heap.pb.gz
     (for go tool pprof, Pyroscope, Parca, Grafana); sampalloc stacks P (collapsed).

Profiles from jemalloc (heap_v2 with t*: lines) and gperftools are read too.";

#[derive(Parser)]
#[command(name = "sampalloc", version, about = "Run programs under sampalloc and analyse their heap profiles", long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a program with libsampalloc.so preloaded and profiling on; print its leak sites
    Run(RunArgs),
    /// Show the call sites holding the most memory in a profile
    Top(TopArgs),
    /// Compare two profiles of one process: what grew, shrank, is new or gone
    Diff(DiffArgs),
    /// Write an SVG flame graph of live (or allocated) bytes to stdout
    Flamegraph(ExportArgs),
    /// Write the profile as pprof's profile.proto, gzipped, to stdout (or -o FILE)
    Pprof(PprofArgs),
    /// Print collapsed stacks (root;...;leaf bytes), for other flame graph tools
    Stacks(ExportArgs),
}

#[derive(Args)]
struct SymArgs {
    /// Perf map resolving JIT code (default: /tmp/perf-<pid>.map, pid from the profile's name)
    #[arg(long, value_name = "FILE")]
    perf_map: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Extra SAMPALLOC_CONF entries (K:V,...), applied after sampalloc's own so they win
    #[arg(long, value_name = "K:V,...")]
    conf: Vec<String>,
    /// Directory for the profiles (default: a new private temporary directory); created with
    /// mode 0700 if missing. Refused if it is a symlink, not yours, or writable by group or others
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Accept an --out directory that is a symlink, not yours, or writable by group or others
    #[arg(long, requires = "out")]
    allow_shared_out: bool,
    /// Sites to show
    #[arg(short = 'n', default_value_t = 10)]
    n: usize,
    /// The program and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    program: Vec<OsString>,
}

#[derive(Args)]
struct TopArgs {
    /// The profile
    profile: PathBuf,
    /// Subtract this earlier profile of the same process
    #[arg(long, value_name = "EARLIER")]
    base: Option<PathBuf>,
    /// Sites to show (0: all)
    #[arg(short = 'n', default_value_t = 20)]
    n: usize,
    /// JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Rank by live bytes (the default)
    #[arg(long, conflicts_with = "alloc")]
    inuse: bool,
    /// Rank by bytes allocated since the start, freed or not
    #[arg(long)]
    alloc: bool,
    /// One site per source line rather than per function
    #[arg(long, conflicts_with = "stacks")]
    lines: bool,
    /// One site per whole call stack, printed below the table
    #[arg(long)]
    stacks: bool,
    #[command(flatten)]
    sym: SymArgs,
}

#[derive(Args)]
struct DiffArgs {
    /// The earlier profile
    earlier: PathBuf,
    /// The later profile
    later: PathBuf,
    /// Sites to show (0: all)
    #[arg(short = 'n', default_value_t = 20)]
    n: usize,
    /// JSON instead of a table
    #[arg(long)]
    json: bool,
    /// One site per source line rather than per function
    #[arg(long, conflicts_with = "stacks")]
    lines: bool,
    /// One site per whole call stack
    #[arg(long)]
    stacks: bool,
    #[command(flatten)]
    sym: SymArgs,
}

#[derive(Args)]
struct ExportArgs {
    /// The profile
    profile: PathBuf,
    /// Bytes allocated since the start instead of live bytes
    #[arg(long)]
    alloc: bool,
    #[command(flatten)]
    sym: SymArgs,
}

#[derive(Args)]
struct PprofArgs {
    /// The profile
    profile: PathBuf,
    /// Write here instead of stdout (never through a symlink; a new file gets mode 0600)
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    sym: SymArgs,
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("sampalloc: internal error: {info}");
        std::process::exit(2);
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => return run(a),
        Command::Top(a) => top(a),
        Command::Diff(a) => diff(a),
        Command::Flamegraph(a) => flame(a),
        Command::Pprof(a) => export_pprof(a),
        Command::Stacks(a) => stacks(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sampalloc: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn emit(bytes: &[u8]) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("cannot write to stdout: {e}")),
    }
}

/// Reads and symbolizes a profile, printing the symbolizer's warnings.
fn load(path: &Path, sym: &SymArgs) -> Result<(parse::Profile, Vec<ResolvedRow>), String> {
    let profile = parse::read(path)?;
    let mut s = Symbolizer::new(&profile, sym.perf_map.as_deref());
    let rows = analysis::resolve(&profile, &mut s);
    for w in s.take_warnings() {
        eprintln!("sampalloc: warning: {w}");
    }
    Ok((profile, rows))
}

fn group(lines: bool, stacks: bool) -> GroupBy {
    if stacks {
        GroupBy::Stack
    } else if lines {
        GroupBy::Line
    } else {
        GroupBy::Function
    }
}

fn top(a: TopArgs) -> Result<(), String> {
    let by = group(a.lines, a.stacks);
    let measure = if a.alloc {
        Measure::Alloc
    } else {
        Measure::Inuse
    };
    let (profile, rows) = load(&a.profile, &a.sym)?;
    let mut sites = analysis::sites(&rows, by);
    if let Some(base) = &a.base {
        let (_, base_rows) = load(base, &a.sym)?;
        sites = report::subtract(&sites, &analysis::sites(&base_rows, by));
    }
    report::rank(&mut sites, measure);
    let shown = a.profile.display().to_string();
    let base = a.base.as_ref().map(|b| b.display().to_string());
    let header = TopHeader {
        profile: &shown,
        base: base.as_deref(),
        sample_period: profile.sample_period,
    };
    let text = if a.json {
        report::top_json(&sites, measure, a.n, &header)
    } else {
        report::top_text(&sites, measure, a.n, &header)
    };
    emit(text.as_bytes())
}

fn diff(a: DiffArgs) -> Result<(), String> {
    let by = group(a.lines, a.stacks);
    let (_, early) = load(&a.earlier, &a.sym)?;
    let (_, late) = load(&a.later, &a.sym)?;
    let entries = report::diff(&analysis::sites(&early, by), &analysis::sites(&late, by));
    let (e, l) = (
        a.earlier.display().to_string(),
        a.later.display().to_string(),
    );
    let text = if a.json {
        report::diff_json(&entries, a.n, &e, &l)
    } else {
        report::diff_text(&entries, a.n, &e, &l)
    };
    emit(text.as_bytes())
}

fn flame(a: ExportArgs) -> Result<(), String> {
    let (_, rows) = load(&a.profile, &a.sym)?;
    let name = a
        .profile
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let title = format!(
        "{} bytes: {name}",
        if a.alloc { "Allocated" } else { "Live" }
    );
    let mut svg = Vec::new();
    flamegraph::write_svg(&rows, a.alloc, &title, &mut svg)?;
    emit(&svg)
}

fn export_pprof(a: PprofArgs) -> Result<(), String> {
    if a.output.is_none() && std::io::stdout().is_terminal() {
        return Err(
            "refusing to write binary data to a terminal: redirect (> heap.pb.gz) or use -o FILE"
                .to_string(),
        );
    }
    let (profile, rows) = load(&a.profile, &a.sym)?;
    let data = pprof::encode_gzip(&profile, &rows)?;
    match &a.output {
        Some(p) => write_output(p, &data),
        None => emit(&data),
    }
}

/// Writes `pprof -o`'s file: never through a symlink (`O_NOFOLLOW`), and only into a regular
/// file of the user's own with no other hard link, so that a name planted in a shared
/// directory cannot redirect the write; a new file is created with mode 0600 (the export holds
/// the process's memory map). The user's own earlier output is replaced.
fn write_output(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let shown = path.display();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        // O_NONBLOCK: a FIFO without a reader fails instead of blocking (it is refused below).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => format!("refusing to write {shown}: it is a symlink"),
            _ => format!("cannot write {shown}: {e}"),
        })?;
    let m = f
        .metadata()
        .map_err(|e| format!("cannot write {shown}: {e}"))?;
    if !m.file_type().is_file() {
        return Err(format!("refusing to write {shown}: not a regular file"));
    }
    if m.uid() != euid() {
        return Err(format!(
            "refusing to write {shown}: owned by uid {}, not by you",
            m.uid()
        ));
    }
    if m.nlink() != 1 {
        return Err(format!(
            "refusing to write {shown}: it has other hard links"
        ));
    }
    f.set_len(0)
        .and_then(|_| f.write_all(data))
        .map_err(|e| format!("cannot write {shown}: {e}"))
}

/// The effective user id.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn stacks(a: ExportArgs) -> Result<(), String> {
    let (_, rows) = load(&a.profile, &a.sym)?;
    let mut out = String::new();
    for (stack, v) in analysis::collapsed(&rows, a.alloc) {
        out.push_str(&stack);
        out.push(' ');
        out.push_str(&v.to_string());
        out.push('\n');
    }
    emit(out.as_bytes())
}

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

fn run(a: RunArgs) -> ExitCode {
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
        Some(p) => {
            let sym = SymArgs { perf_map: None };
            match load(p, &sym) {
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
                    eprint!("{}", report::top_text(&sites, Measure::Inuse, a.n, &header));
                    eprintln!(
                        "\nMore: sampalloc top {shown} --stacks | flamegraph | pprof; all profiles in {}",
                        dir.display()
                    );
                }
                Err(e) => eprintln!("sampalloc: error: {e}"),
            }
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
