//! A small reader of heap_v2 profiles for the tests that run programs under `LD_PRELOAD` with
//! `prof:true`: the header and rows parsed strictly, the heap_v2 scaling applied per row (as
//! jeprof and pprof apply it), frames symbolized through `MAPPED_LIBRARIES` and `nm`, the profile
//! files of a run found by name, and the stack checks several tests share. It is independent of
//! `sampalloc::analysis` on purpose: the profiles are checked against a second reader (and
//! against `jeprof` and `go tool pprof`, see [`super::profile_programs`]).

use super::profile_programs::run_tool;
use super::{command, Run};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// One row of a heap_v2 profile.
#[derive(Clone, Debug)]
pub struct Row {
    pub live_objects: u64,
    pub live_bytes: u64,
    pub alloc_objects: u64,
    pub alloc_bytes: u64,
    /// Return addresses, innermost first.
    pub frames: Vec<u64>,
}

/// A line of `MAPPED_LIBRARIES`.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
}

#[derive(Debug)]
pub struct Profile {
    /// The mean sample interval `R` from the header.
    pub r: f64,
    pub header: [u64; 4],
    pub rows: Vec<Row>,
    pub maps: Vec<Mapping>,
}

/// `objects: bytes [objects: bytes]`.
pub fn parse_counts(s: &str) -> Option<[u64; 4]> {
    let (live, alloc) = s.trim().split_once('[')?;
    let alloc = alloc.strip_suffix(']')?;
    let pair = |p: &str| -> Option<(u64, u64)> {
        let (o, b) = p.split_once(':')?;
        Some((o.trim().parse().ok()?, b.trim().parse().ok()?))
    };
    let (lo, lb) = pair(live)?;
    let (ao, ab) = pair(alloc)?;
    Some([lo, lb, ao, ab])
}

/// The heap_v2 reader's estimate for a row: `bytes / (1 - exp(-(bytes/objects)/R))`.
pub fn scaled(objects: u64, bytes: u64, r: f64) -> f64 {
    if objects == 0 || bytes == 0 {
        return 0.0;
    }
    let mean = bytes as f64 / objects as f64;
    bytes as f64 / -(-mean / r).exp_m1()
}

impl Row {
    pub fn live(&self, r: f64) -> f64 {
        scaled(self.live_objects, self.live_bytes, r)
    }
}

impl Profile {
    /// Parses a profile strictly: the header, rows, one blank line, `MAPPED_LIBRARIES:`.
    pub fn parse(text: &str) -> Result<Profile, String> {
        let (body, maps) = text
            .split_once("\n\nMAPPED_LIBRARIES:\n")
            .ok_or("no blank line followed by MAPPED_LIBRARIES:")?;
        let mut lines = body.lines();
        let header = lines.next().ok_or("empty profile")?;
        let rest = header
            .strip_prefix("heap profile:")
            .ok_or_else(|| format!("bad header {header:?}"))?;
        let (counts, rate) = rest
            .split_once(" @ heap_v2/")
            .ok_or_else(|| format!("header without `@ heap_v2/R`: {header:?}"))?;
        let header_counts = parse_counts(counts).ok_or_else(|| format!("bad header {header:?}"))?;
        let r: u64 = rate
            .trim()
            .parse()
            .map_err(|_| format!("bad sampling rate in {header:?}"))?;
        let mut rows = Vec::new();
        for line in lines {
            let (counts, stack) = line
                .split_once(" @ ")
                .ok_or_else(|| format!("bad row {line:?}"))?;
            let c = parse_counts(counts).ok_or_else(|| format!("bad counts in {line:?}"))?;
            let frames = stack
                .split(' ')
                .map(|f| {
                    f.strip_prefix("0x")
                        .and_then(|h| u64::from_str_radix(h, 16).ok())
                        .ok_or_else(|| format!("bad frame {f:?} in {line:?}"))
                })
                .collect::<Result<Vec<u64>, String>>()?;
            if frames.is_empty() {
                return Err(format!("row without frames: {line:?}"));
            }
            if c[0] > c[2] || (c[0] == 0) != (c[1] == 0) {
                return Err(format!("inconsistent counts in {line:?}"));
            }
            rows.push(Row {
                live_objects: c[0],
                live_bytes: c[1],
                alloc_objects: c[2],
                alloc_bytes: c[3],
                frames,
            });
        }
        let mut mappings = Vec::new();
        for line in maps.lines() {
            // start-end perms offset dev inode [path]
            let mut f = line.split_whitespace();
            let (range, _perms, offset) = (f.next(), f.next(), f.next());
            let (Some(range), Some(offset)) = (range, offset) else {
                return Err(format!("bad maps line {line:?}"));
            };
            let (s, e) = range
                .split_once('-')
                .ok_or_else(|| format!("bad maps line {line:?}"))?;
            let hex = |h: &str| u64::from_str_radix(h, 16).map_err(|_| format!("bad {line:?}"));
            let path = f.nth(2).unwrap_or("").to_string();
            mappings.push(Mapping {
                start: hex(s)?,
                end: hex(e)?,
                offset: hex(offset)?,
                path,
            });
        }
        if mappings.is_empty() {
            return Err("MAPPED_LIBRARIES is empty".into());
        }
        Ok(Profile {
            r: r as f64,
            header: header_counts,
            rows,
            maps: mappings,
        })
    }

    pub fn read(path: &Path) -> Profile {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Profile::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Asserts that the header is the sum of the rows (true of a dump no other thread
    /// allocated during).
    pub fn assert_header_sums(&self, what: &str) {
        let mut sum = [0u64; 4];
        for r in &self.rows {
            for (s, v) in
                sum.iter_mut()
                    .zip([r.live_objects, r.live_bytes, r.alloc_objects, r.alloc_bytes])
            {
                *s += v;
            }
        }
        assert_eq!(
            self.header, sum,
            "{what}: header is not the sum of the rows"
        );
    }

    /// Live bytes as a heap_v2 reader estimates them.
    pub fn live_total(&self) -> f64 {
        self.rows.iter().map(|r| r.live(self.r)).sum()
    }

    /// The mapping holding `pc`.
    pub fn mapping(&self, pc: u64) -> Option<&Mapping> {
        self.maps.iter().find(|m| m.start <= pc && pc < m.end)
    }

    /// The module `pc` is in and its address in that module's ELF (`p_vaddr` space).
    pub fn module_address(&self, pc: u64) -> Option<(&str, u64)> {
        let m = self.mapping(pc)?;
        if !m.path.starts_with('/') {
            return None;
        }
        // Position-independent objects (shared libraries, PIE) are linked at 0: the load bias
        // is where their first page (file offset 0) is mapped. Fixed executables are not moved.
        let base = if elf_is_fixed(&m.path) {
            0
        } else {
            self.maps
                .iter()
                .find(|x| x.path == m.path && x.offset == 0)
                .map_or(m.start - m.offset, |x| x.start)
        };
        Some((m.path.as_str(), pc - base))
    }

    /// The module (file name) and the function names (aliases) a return address falls in.
    pub fn symbolize(&self, pc: u64) -> Option<(String, Vec<String>)> {
        // A return address points after its call: look up the call instruction's last byte.
        let (path, addr) = self.module_address(pc.checked_sub(1)?)?;
        let names = symbols(path)
            .iter()
            .filter(|s| s.start <= addr && addr < s.start + s.size.max(1))
            .map(|s| s.name.clone())
            .collect();
        let file = path.rsplit('/').next().unwrap_or(path).to_string();
        Some((file, names))
    }

    /// A short description of a stack for messages.
    pub fn describe(&self, frames: &[u64]) -> String {
        frames
            .iter()
            .take(8)
            .map(|&pc| match self.symbolize(pc) {
                Some((file, names)) if !names.is_empty() => format!("{}({file})", names[0]),
                Some((file, _)) => format!("{pc:#x}({file})"),
                None => format!("{pc:#x}"),
            })
            .collect::<Vec<_>>()
            .join(" <- ")
    }
}

/// Whether an ELF file is a fixed-address executable (`ET_EXEC`).
pub fn elf_is_fixed(path: &str) -> bool {
    let Ok(bytes) = std::fs::read(path).map(|b| b.get(..18).map(<[u8]>::to_vec)) else {
        return false;
    };
    bytes.is_some_and(|b| b.starts_with(b"\x7fELF") && u16::from_le_bytes([b[16], b[17]]) == 2)
}

#[derive(Clone, Debug)]
pub struct Symbol {
    pub start: u64,
    pub size: u64,
    pub name: String,
}

/// The function symbols of an ELF file with their sizes (`nm -S`, both the symbol table and
/// the dynamic one: stripped system libraries only have the latter). Cached per file.
pub fn symbols(path: &str) -> Vec<Symbol> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<Symbol>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(s) = cache.lock().unwrap().get(path) {
        return s.clone();
    }
    let mut out = Vec::new();
    for dynamic in [false, true] {
        let mut c = command("nm", ["-S", "--defined-only"]);
        if dynamic {
            c.arg("-D");
        }
        c.arg(path);
        let r = run_tool(c);
        for line in r.stdout.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 4 || !matches!(f[2], "T" | "t" | "W" | "w" | "i") {
                continue;
            }
            let (Ok(start), Ok(size)) =
                (u64::from_str_radix(f[0], 16), u64::from_str_radix(f[1], 16))
            else {
                continue;
            };
            let name = f[3].split('@').next().unwrap_or(f[3]).to_string();
            out.push(Symbol { start, size, name });
        }
    }
    cache.lock().unwrap().insert(path.to_string(), out.clone());
    out
}

/// The profile files in `dir` whose names end in `suffix` (e.g. `.f.heap`), by sequence number.
pub fn profiles(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .map(|p| (seq_of(&p), p))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// `<prefix>.<pid>.<seq>.<kind>.heap` → pid and seq, read by the engine's own name type.
pub fn pid_seq(p: &Path) -> (u32, u64) {
    use std::os::unix::ffi::OsStrExt;
    let name = p.file_name().unwrap();
    match sampalloc_core::profile::ProfileName::parse(name.as_bytes()) {
        Some(n) => (n.pid, n.seq),
        None => panic!("profile name {name:?} is not <prefix>.<pid>.<seq>.<kind>.heap"),
    }
}

pub fn seq_of(p: &Path) -> u64 {
    pid_seq(p).1
}

/// Exactly one final profile in `dir`.
pub fn final_profile(dir: &Path, r: &Run) -> PathBuf {
    let f = profiles(dir, ".f.heap");
    assert_eq!(
        f.len(),
        1,
        "expected one final profile in {}: {f:?}\n{}",
        dir.display(),
        r.describe()
    );
    f.into_iter().next().unwrap()
}

/// Live bytes per site, a site being the first function name of a row's first frame (or
/// `module+?` when the frame has no symbol).
pub fn live_by_first_function(p: &Profile) -> Vec<(String, f64)> {
    let mut by: HashMap<String, f64> = HashMap::new();
    for row in &p.rows {
        let name = match p.symbolize(row.frames[0]) {
            Some((_, names)) if !names.is_empty() => names[0].clone(),
            Some((file, _)) => format!("{file}+?"),
            None => format!("{:#x}", row.frames[0]),
        };
        *by.entry(name).or_default() += row.live(p.r);
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// Asserts that no stack starts inside the allocator: the first frame is never in
/// libsampalloc.so nor in a function named like an allocation entry point.
pub fn assert_stacks_start_at_callers(p: &Profile, what: &str) {
    const ENTRY_POINTS: &[&str] = &[
        "malloc",
        "calloc",
        "realloc",
        "free",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "__libc_malloc",
        "__libc_calloc",
        "__libc_realloc",
    ];
    for row in &p.rows {
        let pc = row.frames[0];
        if let Some(m) = p.mapping(pc) {
            assert!(
                !m.path.ends_with("/libsampalloc.so"),
                "{what}: a stack starts inside libsampalloc.so: {}",
                p.describe(&row.frames)
            );
        }
        if let Some((file, names)) = p.symbolize(pc) {
            assert!(
                !names.iter().any(|n| ENTRY_POINTS.contains(&n.as_str())),
                "{what}: a stack starts in an allocation entry point ({names:?} in {file}): {}",
                p.describe(&row.frames)
            );
        }
    }
}

/// The rows whose frames (innermost first) contain a frame named `name` within the first
/// `within` frames.
pub fn rows_with<'a>(p: &'a Profile, name: &str, within: usize) -> Vec<&'a Row> {
    p.rows
        .iter()
        .filter(|r| {
            r.frames.iter().take(within).any(|&pc| {
                p.symbolize(pc)
                    .is_some_and(|(_, names)| names.iter().any(|n| n == name))
            })
        })
        .collect()
}

/// The module and function names of frame `i` of `row` (empty when it has none).
pub fn first_names(p: &Profile, row: &Row, i: usize) -> (String, Vec<String>) {
    row.frames
        .get(i)
        .and_then(|&pc| p.symbolize(pc))
        .unwrap_or_default()
}
