//! The `sampalloc` command: run a program under the preload with profiling on, and read,
//! compare and export its heap profiles (`top`, `diff`, `flamegraph`, `pprof`, `stacks`).
//!
//! Errors print one line and exit with code 2; `run` passes the program's exit code through.
//!
//! This file parses the arguments and dispatches; `run` (the launcher) and `analyse` (the
//! commands that read profiles) do the work.

mod analyse;
mod push;
mod run;
mod serve;

use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const LONG_ABOUT: &str = "\
sampalloc: a malloc replacement with a built-in sampling heap profiler.

Workflow, to find what holds memory in a program:

  1. Run it with the allocator preloaded and profiling on:
       sampalloc run -- ./server --port 8080
     At exit, the final profile's top leak sites are printed; profiles are kept in a
     directory (--out DIR, else a new temporary one) named <prefix>.<pid>.<seq>.<kind>.heap.
     Ask for more profiles with --conf, e.g. --conf lg_prof_interval:30 (one every 1 GiB
     allocated), --every 10s (one every 10 s) or --conf prof_signal:SIGUSR2 (kill -USR2
     <pid> dumps one).

  2. Look at one profile: live bytes by call site, symbolized from the binaries:
       sampalloc top DIR/sampalloc.1234.7.f.heap
     What the leaked blocks hold (run with --conf prof_peek:64 first; the .peek files hold
     raw heap contents, secrets included):
       sampalloc top --peek DIR/sampalloc.1234.7.f.heap

  3. A slow leak: compare an early profile with a late one; what grows comes first:
       sampalloc diff DIR/sampalloc.1234.0.i.heap DIR/sampalloc.1234.9.i.heap

     Or follow every site over all the profiles of the run; growing sites come first, a
     cache that filled early and stays is 'levelled':
       sampalloc trend DIR --svg trend.svg

     Where RSS went (live data, free in the allocator, outside malloc):
       sampalloc explain DIR/sampalloc.1234.7.f.heap [EARLIER]

  4. Export: sampalloc flamegraph P > heap.svg; sampalloc pprof P > heap.pb.gz
     (for go tool pprof, Pyroscope, Parca, Grafana); sampalloc stacks P (collapsed).
     Or serve DIR read-only on loopback: sampalloc serve DIR, then
       go tool pprof http://127.0.0.1:6060/debug/pprof/heap
     Or push to Grafana Pyroscope: sampalloc push --url http://HOST:4040 --watch DIR
     (or sampalloc run --every 10s --push http://HOST:4040 -- ./server).

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
    /// Follow sites over a series of profiles of one run: what keeps growing, what levelled
    Trend(TrendArgs),
    /// Write an SVG flame graph of live (or allocated) bytes to stdout
    Flamegraph(ExportArgs),
    /// Write the profile as pprof's profile.proto, gzipped, to stdout (or -o FILE)
    Pprof(PprofArgs),
    /// Print collapsed stacks (root;...;leaf bytes), for other flame graph tools
    Stacks(ExportArgs),
    /// Break RSS at a dump into live data, free in the allocator, metadata, outside malloc and
    /// file-backed, and say which it is (with EARLIER: what the growth is)
    Explain(ExplainArgs),
    /// Serve a directory of profiles over HTTP, read-only: the newest as pprof at
    /// /debug/pprof/heap and /debug/pprof/allocs (for go tool pprof), an index at /
    Serve(ServeArgs),
    /// Send profiles to Grafana Pyroscope (HTTP ingest, pprof): files given, or each new dump
    /// of a directory with --watch; each push carries its own window's allocations
    Push(PushArgs),
}

#[derive(Args)]
#[command(after_help = "\
Each profile is sent as pprof to URL/ingest (Pyroscope's HTTP ingest API) with alloc_* counts
for its own window (since the previous dump of the same process; since the process started for
its first) and inuse_* as of the dump: Pyroscope stores what it is sent and computes no deltas.
Only http:// URLs: no TLS, no credentials in the URL (push to a local agent or proxy for that).
Nothing is sent anywhere but URL.")]
struct PushArgs {
    /// The server, http:// only (e.g. http://localhost:4040); profiles are POSTed to URL/ingest
    #[arg(long, value_name = "URL")]
    url: String,
    /// The service name the profiles are filed under
    #[arg(long, value_name = "NAME", default_value = "sampalloc")]
    service: String,
    /// Labels for every profile: KEY=VALUE,... (repeatable)
    #[arg(long, value_name = "K=V,...")]
    labels: Vec<String>,
    /// Watch DIR and push each new profile once it is written, until SIGINT or SIGTERM (then
    /// what is queued is sent); profiles already in DIR are not sent
    #[arg(long, value_name = "DIR", conflicts_with = "profiles")]
    watch: Option<PathBuf>,
    /// Profiles to push (named <prefix>.<pid>.<seq>.<kind>.heap; each process's in order)
    #[arg(value_name = "PROFILE", required_unless_present = "watch")]
    profiles: Vec<PathBuf>,
    /// Send addresses and build IDs only, for the server to symbolize (debuginfod)
    #[arg(long)]
    no_symbolize: bool,
    /// Profiles waiting to be sent at most; when full the oldest is dropped, with a warning
    #[arg(long, value_name = "N", default_value_t = 32)]
    queue: usize,
    /// Tries per profile on connection errors, 429 and 5xx (backoff from 0.5 s, doubling);
    /// other refusals are not retried
    #[arg(long, value_name = "N", default_value_t = 5)]
    attempts: u32,
}

#[derive(Args)]
struct ServeArgs {
    /// The directory of profiles (<prefix>.<pid>.<seq>.<kind>.heap)
    dir: PathBuf,
    /// Address to listen on (port 0: any free port; the bound address is printed)
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:6060")]
    listen: String,
    /// Allow a --listen address that is not loopback (profiles show the program's memory map)
    #[arg(long)]
    public: bool,
}

#[derive(Args)]
struct ExplainArgs {
    /// The profile (its memory map is read from PROFILE.mem beside it)
    profile: PathBuf,
    /// An earlier profile of the same process: break down the growth since
    earlier: Option<PathBuf>,
    /// One JSON object (bytes) instead of a table
    #[arg(long)]
    json: bool,
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
    /// Also dump a profile every so often (e.g. 10s, 500ms; a bare number is seconds), at the
    /// first allocation tick after each period: sets prof_interval_ms
    #[arg(long, value_name = "DURATION", value_parser = run::parse_every)]
    every: Option<u64>,
    /// Sites to show
    #[arg(short = 'n', default_value_t = 10)]
    n: usize,
    /// For a JVM, leave JAVA_TOOL_OPTIONS alone (by default frame pointers and the perf map
    /// dump are added, so Java frames get names) and do not refresh its perf map
    #[arg(long)]
    no_java_flags: bool,
    /// Also push each profile to Pyroscope at URL (http:// only) while the program runs, as
    /// `sampalloc push --watch` does, the final one included; combine with --every
    #[arg(long, value_name = "URL")]
    push: Option<String>,
    /// With --push: the service name (default: the program's file name)
    #[arg(long, value_name = "NAME", requires = "push")]
    push_service: Option<String>,
    /// With --push: labels KEY=VALUE,... (repeatable)
    #[arg(long, value_name = "K=V,...", requires = "push")]
    push_labels: Vec<String>,
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
    /// Show what the sites' live sampled blocks hold, as `strings` would (from PROFILE.peek,
    /// written when the program ran with prof_peek:N)
    #[arg(long, conflicts_with = "base")]
    peek: bool,
    /// With --peek: distinct previews shown per site
    #[arg(long, value_name = "N", default_value_t = 3, requires = "peek")]
    peek_examples: usize,
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
struct TrendArgs {
    /// A directory of profiles (<prefix>.<pid>.<seq>.<kind>.heap), or the profiles themselves
    #[arg(required = true, value_name = "DIR | PROFILES")]
    inputs: Vec<PathBuf>,
    /// The process whose profiles to follow (default: the one with the most profiles)
    #[arg(long)]
    pid: Option<u32>,
    /// Sites to show (0: all)
    #[arg(short = 'n', default_value_t = 20)]
    n: usize,
    /// JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Also write an SVG chart of the top sites over time to FILE
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// One site per source line rather than per function
    #[arg(long)]
    lines: bool,
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
    /// Write addresses only, with each mapping's file and GNU build ID, for the server
    /// (Pyroscope through debuginfod, Parca) to symbolize; the mappings say they have no functions
    #[arg(long)]
    no_symbolize: bool,
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
        Command::Run(a) => return run::run(a),
        Command::Top(a) => analyse::top(a),
        Command::Diff(a) => analyse::diff(a),
        Command::Trend(a) => analyse::trend(a),
        Command::Flamegraph(a) => analyse::flame(a),
        Command::Pprof(a) => analyse::export_pprof(a),
        Command::Stacks(a) => analyse::stacks(a),
        Command::Explain(a) => analyse::explain(a),
        Command::Serve(a) => serve::serve(a),
        Command::Push(a) => push::push(a),
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

/// The effective user id.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
