//! Reading heap profiles: sampalloc's sampled-heap text format (the gperftools header with the
//! `heap_v2/R` marker), jemalloc's threaded `heap_v2/R` layout, gperftools' unsampled
//! `heapprofile` and the older `heap[/R]` format, each with its `MAPPED_LIBRARIES:` section.
//!
//! Counts are returned as unbiased estimates: a row `objs: bytes` of a profile sampled every
//! `R` bytes on average stands for `scale·objs` objects and `scale·bytes` bytes with
//! `scale = 1/(1-exp(-(bytes/objs)/R))` (the writer chose the row so that this is exact, see
//! `alloc-core/src/prof/heap_v2.rs`). Unsampled profiles are taken as they are.
//!
//! Malformed input gives a [`ParseError`] naming the line and what was expected; the parser
//! never panics (a fuzz target, `fuzz/fuzz_targets/profile_parse.rs`, keeps it so).

use sampalloc_core::profile::ProfileName;
use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::path::{Path, PathBuf};

/// Estimated live and cumulative objects and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    /// Objects still allocated.
    pub live_objects: f64,
    /// Bytes still allocated.
    pub live_bytes: f64,
    /// Objects allocated since the start.
    pub alloc_objects: f64,
    /// Bytes allocated since the start.
    pub alloc_bytes: f64,
}

impl Add for Counts {
    type Output = Counts;
    fn add(self, o: Counts) -> Counts {
        Counts {
            live_objects: self.live_objects + o.live_objects,
            live_bytes: self.live_bytes + o.live_bytes,
            alloc_objects: self.alloc_objects + o.alloc_objects,
            alloc_bytes: self.alloc_bytes + o.alloc_bytes,
        }
    }
}

impl AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        *self = *self + o;
    }
}

impl Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            live_objects: self.live_objects - o.live_objects,
            live_bytes: self.live_bytes - o.live_bytes,
            alloc_objects: self.alloc_objects - o.alloc_objects,
            alloc_bytes: self.alloc_bytes - o.alloc_bytes,
        }
    }
}

/// Which writer a profile came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `heap profile: … @ heap_v2/R`: sampalloc (and tcmalloc's sampled heap).
    HeapV2,
    /// jemalloc's `heap_v2/R` with `t*:` lines.
    JemallocV2,
    /// gperftools' `@ heapprofile`: every allocation counted, no scaling.
    Unsampled,
    /// The older `@ heap/R` format (gperftools, Go's legacy heap profile): scaled with
    /// `R/2`, as pprof does (the header holds twice the mean interval).
    HeapV1,
}

/// One stack with its counts (already scaled).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The estimates.
    pub counts: Counts,
    /// Return addresses, innermost first.
    pub frames: Vec<u64>,
}

/// One line of `/proc/<pid>/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r-xp` and the like.
    pub perms: String,
    /// Offset in the file of the first mapped byte.
    pub offset: u64,
    /// Inode (0 for anonymous memory).
    pub inode: u64,
    /// The path, or pseudo-name such as `[heap]`; empty for anonymous memory.
    pub path: String,
}

impl Mapping {
    /// Whether the mapping is backed by a file (a path starting with `/`).
    pub fn is_file(&self) -> bool {
        self.path.starts_with('/')
    }

    /// Whether the mapping is executable.
    pub fn is_exec(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }
}

/// A parsed heap profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// The writer's format.
    pub format: Format,
    /// Mean sample interval in bytes (`R`); 0 when unsampled.
    pub sample_period: u64,
    /// The stacks, scaled.
    pub rows: Vec<Row>,
    /// The memory map at dump time.
    pub mappings: Vec<Mapping>,
    /// The file it was read from, if any.
    pub path: Option<PathBuf>,
    /// The process id from the file name (`<prefix>.<pid>.<seq>.<kind>.heap`), if any.
    pub pid: Option<u32>,
}

impl Profile {
    /// Sum of all rows.
    pub fn total(&self) -> Counts {
        let mut c = Counts::default();
        for r in &self.rows {
            c += r.counts;
        }
        c
    }

    /// Whether the first frame of each stack is a return address (looked up at `pc - 1`) rather
    /// than a program counter inside the allocator. sampalloc's stacks start at the return
    /// address into the caller of the allocation function, so every frame is a return address.
    pub fn first_frame_is_return_address(&self) -> bool {
        self.format == Format::HeapV2
    }
}

/// A malformed profile: the line (1-based) and what was expected there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        line,
        message: message.into(),
    })
}

/// Reads and parses the profile at `path`, remembering the pid found in its name.
pub fn read(path: &Path) -> Result<Profile, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut p = parse(&data).map_err(|e| format!("{}: {e}", path.display()))?;
    p.pid = pid_from_name(path);
    p.path = Some(path.to_path_buf());
    Ok(p)
}

/// A profile's side file `<profile>.mem`: the process's memory at the dump, as the kernel and
/// the engine saw it (`alloc-core/src/process/memory.rs` writes it). Keys as written there
/// (`kernel.rss`, `map.allocator.rss`, `engine.allocated`, …), values in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// The `key value` pairs.
    pub values: std::collections::BTreeMap<String, u64>,
}

impl Memory {
    /// The value of `key`, 0 if absent.
    pub fn get(&self, key: &str) -> u64 {
        self.values.get(key).copied().unwrap_or(0)
    }
}

/// The first line of a side file.
pub const MEMORY_HEADER: &str = "sampalloc memory 1";

/// Parses a side file's text.
pub fn parse_memory(data: &[u8]) -> Result<Memory, ParseError> {
    let text = std::str::from_utf8(data).map_err(|_| ParseError {
        line: 1,
        message: "not text: expected a sampalloc memory map".into(),
    })?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, l)) if l.trim() == MEMORY_HEADER => {}
        _ => return err(1, format!("expected '{MEMORY_HEADER}'")),
    }
    let mut m = Memory::default();
    for (i, l) in lines {
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let parsed = t
            .split_once(' ')
            .and_then(|(k, v)| Some((k, v.trim().parse::<u64>().ok()?)));
        match parsed {
            Some((k, v)) => {
                m.values.insert(k.to_string(), v);
            }
            None => return err(i + 1, format!("expected '<key> <bytes>', found '{t}'")),
        }
    }
    Ok(m)
}

/// The side file of the profile at `path` (`<path>.mem`).
pub fn memory_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_os_string();
    p.push(".mem");
    PathBuf::from(p)
}

/// Reads the side file of the profile at `path`.
pub fn read_memory(path: &Path) -> Result<Memory, String> {
    let side = memory_path(path);
    let data = std::fs::read(&side).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "no memory map beside {} ({} is missing): sampalloc writes one with every profile; jemalloc's and gperftools' profiles have none",
                path.display(),
                side.display()
            )
        } else {
            format!("cannot read {}: {e}", side.display())
        }
    })?;
    parse_memory(&data).map_err(|e| format!("{}: {e}", side.display()))
}

/// The pid in a profile name `<prefix>.<pid>.<seq>.<kind>.heap` (a [`ProfileName`]).
pub fn pid_from_name(path: &Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt;
    ProfileName::parse(path.file_name()?.as_bytes()).map(|n| n.pid)
}

const COUNTS_SYNTAX: &str = "'<objects>: <bytes> [<objects>: <bytes>]'";

/// A tiny cursor over one line.
struct Cur<'a> {
    s: &'a str,
}

impl<'a> Cur<'a> {
    fn ws(&mut self) {
        self.s = self.s.trim_start();
    }
    fn eat(&mut self, p: &str) -> bool {
        self.ws();
        match self.s.strip_prefix(p) {
            Some(r) => {
                self.s = r;
                true
            }
            None => false,
        }
    }
    fn num(&mut self) -> Option<u64> {
        self.ws();
        let end = self
            .s
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(self.s.len());
        let v = self.s[..end].parse().ok()?;
        self.s = &self.s[end..];
        Some(v)
    }
    /// `lo: lb [ao: ab]`
    fn counts(&mut self) -> Option<[u64; 4]> {
        let lo = self.num()?;
        if !self.eat(":") {
            return None;
        }
        let lb = self.num()?;
        if !self.eat("[") {
            return None;
        }
        let ao = self.num()?;
        if !self.eat(":") {
            return None;
        }
        let ab = self.num()?;
        if !self.eat("]") {
            return None;
        }
        Some([lo, lb, ao, ab])
    }
}

/// The heap_v2 scaling of one `(objects, bytes)` pair under mean interval `r` (0: none).
pub fn scale_pair(objs: u64, bytes: u64, r: f64) -> (f64, f64) {
    if objs == 0 || bytes == 0 {
        return (0.0, 0.0);
    }
    let (o, b) = (objs as f64, bytes as f64);
    if r <= 1.0 {
        return (o, b);
    }
    let scale = 1.0 / -(-(b / o) / r).exp_m1();
    (o * scale, b * scale)
}

fn scaled(c: [u64; 4], r: f64) -> Counts {
    let (lo, lb) = scale_pair(c[0], c[1], r);
    let (ao, ab) = scale_pair(c[2], c[3], r);
    Counts {
        live_objects: lo,
        live_bytes: lb,
        alloc_objects: ao,
        alloc_bytes: ab,
    }
}

fn parse_addrs(s: &str, line: usize) -> Result<Vec<u64>, ParseError> {
    let mut out = Vec::new();
    for tok in s.split_ascii_whitespace() {
        let hex = tok
            .strip_prefix("0x")
            .or_else(|| tok.strip_prefix("0X"))
            .unwrap_or(tok);
        match u64::from_str_radix(hex, 16) {
            Ok(v) => out.push(v),
            Err(_) => {
                return err(
                    line,
                    format!("expected a hexadecimal address like 0x7f12ab00, found '{tok}'"),
                )
            }
        }
    }
    Ok(out)
}

fn is_maps_marker(l: &str) -> bool {
    let t = l.trim();
    t == "MAPPED_LIBRARIES:" || t == "--- Memory map: ---"
}

/// Parses profile text.
pub fn parse(data: &[u8]) -> Result<Profile, ParseError> {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .peekable();
    let first = loop {
        match lines.next() {
            None => return err(1, "empty file: expected a heap profile header ('heap profile: …' or 'heap_v2/<interval>')"),
            Some((n, l)) => {
                let s = std::str::from_utf8(l)
                    .map_err(|_| ParseError { line: n, message: "not text: expected a heap profile header".into() })?;
                if !s.trim().is_empty() {
                    break (n, s.trim());
                }
            }
        }
    };
    let (n, header) = first;
    let mut profile = Profile {
        format: Format::HeapV2,
        sample_period: 0,
        rows: Vec::new(),
        mappings: Vec::new(),
        path: None,
        pid: None,
    };
    let text_line = |n: usize, l: &[u8]| -> Result<String, ParseError> {
        match std::str::from_utf8(l) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => err(n, "invalid UTF-8 in a profile row"),
        }
    };

    if let Some(rest) = header.strip_prefix("heap_v2/") {
        // jemalloc's threaded layout.
        profile.format = Format::JemallocV2;
        profile.sample_period = rest.trim().parse().map_err(|_| ParseError {
            line: n,
            message: format!("expected 'heap_v2/<sample interval>', found '{header}'"),
        })?;
        let r = profile.sample_period as f64;
        let mut pending: Option<(usize, Vec<u64>)> = None;
        while let Some(&(n, l)) = lines.peek() {
            let s = text_line(n, l)?;
            let t = s.trim();
            if is_maps_marker(t) {
                break;
            }
            lines.next();
            if t.is_empty() {
                continue;
            }
            if let Some(addrs) = t.strip_prefix('@') {
                if let Some((pn, _)) = pending {
                    return err(pn + 1, "expected '  t*: <objects>: <bytes> [<objects>: <bytes>]' after the stack line");
                }
                pending = Some((n, parse_addrs(addrs, n)?));
            } else if let Some(c) = t.strip_prefix("t*:") {
                let counts = Cur { s: c }.counts().ok_or_else(|| ParseError {
                    line: n,
                    message: format!("expected 't*: ' followed by {COUNTS_SYNTAX}"),
                })?;
                if let Some((_, frames)) = pending.take() {
                    profile.rows.push(Row {
                        counts: scaled(counts, r),
                        frames,
                    });
                }
            } else if t.starts_with('t') && t.contains(':') {
                // Per-thread lines: the t* line already sums them.
            } else {
                return err(
                    n,
                    format!("expected '@ <addresses>', 't*: …' or 't<thread>: …', found '{t}'"),
                );
            }
        }
        if let Some((pn, _)) = pending {
            return err(
                pn + 1,
                "expected '  t*: <objects>: <bytes> [<objects>: <bytes>]' after the stack line",
            );
        }
    } else if let Some(rest) = header.strip_prefix("heap profile:") {
        let mut c = Cur { s: rest };
        if c.counts().is_none() {
            return err(
                n,
                format!(
                    "expected 'heap profile: ' followed by {COUNTS_SYNTAX} '@ heap_v2/<interval>'"
                ),
            );
        }
        if !c.eat("@") {
            return err(
                n,
                "expected '@ heap_v2/<interval>' at the end of the header",
            );
        }
        let kind = c.s.trim();
        let (name, rate) = match kind.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (kind, None),
        };
        let rate = match rate {
            None => None,
            Some(r) => Some(r.trim().parse::<u64>().map_err(|_| ParseError {
                line: n,
                message: format!("expected a sample interval after '{name}/', found '{r}'"),
            })?),
        };
        match (name, rate) {
            ("heap_v2" | "heapz_v2", Some(r)) => {
                profile.format = Format::HeapV2;
                profile.sample_period = r;
            }
            ("heapprofile", _) | ("heap", None) => {
                profile.format = Format::Unsampled;
            }
            ("heap", Some(r)) => {
                profile.format = Format::HeapV1;
                profile.sample_period = r / 2;
            }
            _ => {
                return err(
                    n,
                    format!("unknown profile kind '{kind}': expected heap_v2/<interval>, heapprofile or heap[/<interval>]"),
                )
            }
        }
        let r = profile.sample_period as f64;
        while let Some(&(n, l)) = lines.peek() {
            let s = text_line(n, l)?;
            let t = s.trim();
            if is_maps_marker(t) {
                break;
            }
            lines.next();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let mut c = Cur { s: t };
            let counts = c.counts().ok_or_else(|| ParseError {
                line: n,
                message: format!("expected a row {COUNTS_SYNTAX} '@ 0x<pc> …'"),
            })?;
            if !c.eat("@") {
                return err(n, "expected '@' and the stack's addresses after the counts");
            }
            profile.rows.push(Row {
                counts: scaled(counts, r),
                frames: parse_addrs(c.s, n)?,
            });
        }
    } else {
        let shown: String = header.chars().take(60).collect();
        return err(
            n,
            format!("expected a heap profile header ('heap profile: …' or 'heap_v2/<interval>'), found '{shown}'"),
        );
    }

    // The memory map.
    if lines.next().is_some() {
        for (n, l) in lines {
            let s = String::from_utf8_lossy(l);
            let t = s.trim();
            if t.is_empty() {
                continue;
            }
            profile.mappings.push(parse_map_line(t, n)?);
        }
    }
    Ok(profile)
}

/// One `/proc/self/maps` line: `start-end perms offset dev inode [path]`.
fn parse_map_line(t: &str, n: usize) -> Result<Mapping, ParseError> {
    let bad = |what: &str| ParseError {
        line: n,
        message: format!(
            "expected a memory map line 'start-end perms offset dev inode path' ({what})"
        ),
    };
    let mut it = t.splitn(6, [' ', '\t']);
    let range = it.next().ok_or_else(|| bad("no address range"))?;
    let (a, b) = range
        .split_once('-')
        .ok_or_else(|| bad("no '-' in the address range"))?;
    let start = u64::from_str_radix(a, 16).map_err(|_| bad("bad start address"))?;
    let end = u64::from_str_radix(b, 16).map_err(|_| bad("bad end address"))?;
    if end < start {
        return Err(bad("end below start"));
    }
    let perms = it.next().unwrap_or("").to_string();
    let offset = it
        .next()
        .map(|o| u64::from_str_radix(o, 16))
        .transpose()
        .map_err(|_| bad("bad file offset"))?
        .unwrap_or(0);
    let _dev = it.next();
    let inode = it
        .next()
        .map(|i| i.parse::<u64>())
        .transpose()
        .map_err(|_| bad("bad inode"))?
        .unwrap_or(0);
    let path = it.next().unwrap_or("").trim().to_string();
    Ok(Mapping {
        start,
        end,
        perms,
        offset,
        inode,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "heap profile:      2:     8192 [     4:    16384] @ heap_v2/4096\n     2:     8192 [     4:    16384] @ 0x1000 0x2000\n\nMAPPED_LIBRARIES:\n00001000-00003000 r-xp 00000000 08:01 1234   /usr/bin/prog\n7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n";

    #[test]
    fn reads_our_format_with_scaling() {
        let p = parse(OURS.as_bytes()).unwrap();
        assert_eq!(p.format, Format::HeapV2);
        assert_eq!(p.sample_period, 4096);
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rows[0].frames, vec![0x1000, 0x2000]);
        let scale = 1.0 / (1.0 - (-1.0f64).exp());
        assert!((p.rows[0].counts.live_bytes - 8192.0 * scale).abs() < 1e-6);
        assert!((p.rows[0].counts.live_objects - 2.0 * scale).abs() < 1e-9);
        assert_eq!(p.mappings.len(), 2);
        assert_eq!(p.mappings[0].path, "/usr/bin/prog");
        assert!(p.mappings[0].is_exec() && p.mappings[0].is_file());
        assert!(!p.mappings[1].is_file());
    }

    #[test]
    fn errors_name_the_line() {
        let bad =
            "heap profile: 1: 2 [3: 4] @ heap_v2/4096\n1: 2 [3: 4] @ 0x10\n1: x [3: 4] @ 0x10\n";
        let e = parse(bad.as_bytes()).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let e = parse(b"hello").unwrap_err();
        assert_eq!(e.line, 1);
        let e =
            parse(b"heap profile: 1: 2 [3: 4] @ heap_v2/4096\n1: 2 [3: 4] @ 0xzz\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("0xzz"));
        assert!(parse(b"").is_err());
    }

    #[test]
    fn pid_from_the_file_name() {
        assert_eq!(
            pid_from_name(Path::new("/tmp/x/sampalloc.1234.0.f.heap")),
            Some(1234)
        );
        assert_eq!(pid_from_name(Path::new("a.b.1234.17.m.heap")), Some(1234));
        assert_eq!(pid_from_name(Path::new("/v1.2/my.app.7.0.f.heap")), Some(7));
        assert_eq!(pid_from_name(Path::new("profile.heap")), None);
        assert_eq!(pid_from_name(Path::new("app.1234.x.f.heap")), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap stand-in for the fuzz target: mutate a valid profile many ways.
        let base = OURS.as_bytes();
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut v = base.to_vec();
            let pos = (x as usize) % v.len();
            match x % 4 {
                0 => v[pos] = (x >> 8) as u8,
                1 => v.truncate(pos),
                2 => v.insert(pos, b"0123456789:[]@ x\n-"[(x >> 16) as usize % 18]),
                _ => {
                    v.remove(pos);
                }
            }
            let _ = parse(&v);
        }
    }
}
