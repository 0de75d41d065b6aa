//! The heap profiler from Rust: switch sampling on and off, dump profiles, read the live call
//! sites in-process.
//!
//! ```no_run
//! sampalloc::configure("prof:true,lg_prof_sample:19").unwrap();
//! // ... run the workload ...
//! let path = sampalloc::profile::dump_named().unwrap(); // a new file, 0600; jeprof / pprof read it
//! for site in sampalloc::profile::sites().iter().take(5) {
//!     println!("{:>12.0} bytes live at {:x?}", site.live_bytes, &site.frames[..3.min(site.frames.len())]);
//! }
//! ```
//!
//! Profiles use the sampled-heap text format (`heap profile: … @ heap_v2/R`) that `jeprof`
//! and `go tool pprof` read; see `alloc-core/src/prof/heap_v2.rs`.

use sampalloc_core::profile::{self, Sink};
use std::io;
use std::path::{Path, PathBuf};

/// Profile file names, `<prof_prefix>.<pid>.<seq>.<kind>.heap`: writing and parsing (from the
/// right, so prefixes may contain dots).
pub use sampalloc_core::profile::{kind, ProfileName};

/// Whether the profiler is set up (`prof:true`) and sampling now (`prof_active:true`).
pub fn is_active() -> bool {
    sampalloc_core::config::prof() && sampalloc_core::config::prof_active()
}

/// Switches sampling on or off at run time (`prof_active`). Has no effect unless `prof:true`
/// was configured; threads notice within about a megabyte of their next allocations.
pub fn set_active(active: bool) {
    let v: &[u8] = if active { b"true" } else { b"false" };
    // Cannot fail: a known key with a valid value.
    let _ = sampalloc_core::config::set(b"prof_active", v);
}

/// Writes the current heap profile to the new file `path`, created with mode 0600. An
/// existing `path` (a file, or a symlink even to nowhere) is never followed nor truncated: the
/// dump fails with [`io::ErrorKind::AlreadyExists`].
pub fn dump(path: impl AsRef<Path>) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    profile::dump_to_path(path.as_ref().as_os_str().as_bytes())
        .map_err(io::Error::from_raw_os_error)
}

/// Writes the heap profile to its conventional name, `<prof_prefix>.<pid>.<seq>.m.heap`, and
/// returns that name. A taken name is left alone and the next sequence number used (a few
/// tries, then [`io::ErrorKind::AlreadyExists`]). The engine's `profile::dump_named`, with
/// the name as a path and the error as an [`io::Error`].
pub fn dump_named() -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut name = [0u8; profile::NAME_MAX];
    match profile::dump_named(profile::kind::MANUAL, &mut name) {
        Ok(len) => Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&name[..len]))),
        Err((e, _)) => Err(io::Error::from_raw_os_error(e)),
    }
}

struct VecSink(Vec<u8>);

impl Sink for VecSink {
    fn write_all(&mut self, bytes: &[u8]) -> bool {
        self.0.extend_from_slice(bytes);
        true
    }
}

/// The current heap profile as bytes, without touching the file system.
pub fn to_bytes() -> Vec<u8> {
    let mut sink = VecSink(Vec::with_capacity(64 << 10));
    profile::write_profile(&mut sink);
    sink.0
}

/// One call site of sampled allocations, with unbiased estimates.
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    /// Return addresses, innermost first (starting at the allocating function).
    pub frames: Vec<usize>,
    /// Estimated bytes still allocated.
    pub live_bytes: f64,
    /// Estimated objects still allocated.
    pub live_objects: f64,
    /// Estimated bytes allocated since the start.
    pub total_bytes: f64,
    /// Estimated objects allocated since the start.
    pub total_objects: f64,
    /// Sampled blocks still allocated.
    pub live_samples: u64,
}

/// Every call site seen so far, largest live bytes first.
pub fn sites() -> Vec<Site> {
    let mut out = Vec::new();
    for entry in profile::entries() {
        let c = entry.counts();
        out.push(Site {
            frames: entry.frames().to_vec(),
            live_bytes: c.live_bytes,
            live_objects: c.live_objects,
            total_bytes: c.total_bytes,
            total_objects: c.total_objects,
            live_samples: c.live_samples,
        });
    }
    out.sort_by(|a, b| b.live_bytes.total_cmp(&a.live_bytes));
    out
}

/// The live heap of this process as gzipped pprof (`profile.proto`): what a
/// `/debug/pprof/heap` route returns, for `go tool pprof http://…/debug/pprof/heap`, Pyroscope,
/// Parca or Grafana Alloy to pull (feature `pprof`).
///
/// Sample types `alloc_objects`, `alloc_space` (cumulative since the start), `inuse_objects`,
/// `inuse_space` (the default), period `space/bytes`. Stacks are addresses, not names: the
/// mappings carry each loaded file's name and GNU build ID (read from the loaded images in
/// memory) and say they have no functions, so the server, or `go tool pprof` with the binaries
/// at hand, symbolizes them. Return addresses are written as the call's address (`ret - 1`), as
/// Go writes them. The allocator's and the profiler's own frames are never in a stack: a
/// sampled stack starts at the caller of `SampAlloc`'s methods.
///
/// The stack table is read without a lock and copied before anything is encoded, so the
/// encoder's own allocations (which may be sampled) neither block nor disturb it. Without
/// `prof:true` the profile has no samples.
///
/// ```no_run
/// use std::io::Write;
/// # fn handle(mut stream: std::net::TcpStream) -> std::io::Result<()> {
/// let body = sampalloc::profile::pprof()?;
/// write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n")?;
/// write!(stream, "Content-Length: {}\r\n\r\n", body.len())?;
/// stream.write_all(&body)
/// # }
/// ```
#[cfg(feature = "pprof")]
pub fn pprof() -> io::Result<Vec<u8>> {
    use crate::pprof::{self as pb, Builder, Values};
    let sites = sites();
    let mappings = pb::notes::loaded();
    let period = 1u64 << sampalloc_core::config::lg_prof_sample();
    let mut b = Builder::new(period, &mappings, false);
    let mut ids = Vec::new();
    for site in &sites {
        ids.clear();
        for &pc in &site.frames {
            // Every frame is a return address: name the call instruction.
            ids.push(b.location((pc as u64).saturating_sub(1), &[]));
        }
        b.sample(
            ids.clone(),
            Values {
                alloc_objects: site.total_objects,
                alloc_bytes: site.total_bytes,
                inuse_objects: site.live_objects,
                inuse_bytes: site.live_bytes,
            },
        );
    }
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        b.time_nanos(d.as_nanos() as i64);
    }
    pb::gzip(&b.finish())
}

/// The answer of Go's `/debug/pprof/symbol` route, which `go tool pprof` asks when it pulls a
/// profile over HTTP whose mappings have no functions and it cannot symbolize from local
/// files (feature `pprof`). `query` is the request's body (or query string) of addresses,
/// `0x…+0x…`; an empty one is the probe, answered `num_symbols: 1`. Each address that lies
/// inside a symbol of the loader's dynamic symbol tables (`dladdr1`, its size checked) is
/// answered `0x… name` with the raw (mangled) name, which pprof demangles; the others are left
/// out. Functions that are not exported (most of a Rust program's) have no such name: pprof
/// then shows their addresses, and servers symbolize them from the build IDs.
#[cfg(feature = "pprof")]
pub fn pprof_symbol(query: &str) -> String {
    use std::fmt::Write;
    let mut out = String::from("num_symbols: 1\n");
    for a in query.trim().split('+') {
        let Some(addr) = a
            .strip_prefix("0x")
            .and_then(|h| usize::from_str_radix(h, 16).ok())
        else {
            continue;
        };
        if let Some(name) = crate::pprof::notes::symbol_at(addr) {
            let _ = writeln!(out, "{a} {name}");
        }
    }
    out
}
