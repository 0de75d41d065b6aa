//! Symbolization: from a profile's `MAPPED_LIBRARIES` to function names, source lines and
//! inlined frames.
//!
//! An address is mapped to the line of the memory map that contains it. For a file-backed
//! mapping, the load bias follows from the mapping's start and file offset and the ELF program
//! header (`PT_LOAD`) that covers that offset; the file's own virtual address is then looked
//! up in its DWARF (with the `addr2line` crate, inlined frames included), falling back to the
//! ELF symbol tables (`.symtab`, `.dynsym`). Separate debug files are found by build-id under
//! `/usr/lib/debug/.build-id/` or by `.gnu_debuglink`. Addresses in no file (JIT code,
//! anonymous memory) are resolved through a perf map (`/tmp/perf-<pid>.map`: `START SIZE name`
//! in hex, with or without `0x`) when there is one, else shown as `0x…`. HotSpot's map names
//! its bytecode interpreter `Interpreter`: such frames are shown as [`INTERPRETED`].
//!
//! A file that vanished or changed since the profile was written gives one warning naming it,
//! never an error. Modules and addresses are cached.
//!
//! ELF and debug files are mapped, not read: the DWARF sections are borrowed from the mapping,
//! and only compressed ones (`SHF_COMPRESSED`, `.zdebug_*`) are inflated into memory of their
//! own. Location lists and macro sections, which `addr2line` never reads, are not loaded at all.

use super::parse::{Mapping, Profile};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};
use std::collections::HashMap;
use std::fmt;
use std::io::IsTerminal;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Instant, SystemTime};

/// One (possibly inlined) frame of a symbolized address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct SymFrame {
    /// Demangled function name, or `0x…` when unknown.
    pub function: String,
    /// Source file, if known (shortened when under the current directory).
    pub file: Option<String>,
    /// Source line, if known.
    pub line: Option<u32>,
    /// The module's file name (e.g. `libc.so.6`), if the address is in a file.
    pub module: Option<String>,
    /// Whether this frame was inlined into the next one.
    pub inlined: bool,
}

impl SymFrame {
    /// `file:line`, `file` or empty.
    pub fn location(&self) -> String {
        match (&self.file, self.line) {
            (Some(f), Some(l)) => format!("{f}:{l}"),
            (Some(f), None) => f.clone(),
            _ => String::new(),
        }
    }
}

/// The bytes of a loaded file: mapped, or in memory of our own (a decompressed section, or a file
/// that could not be mapped).
///
/// The mapping is `memmap2::Mmap::map`: shared and read-only. A file truncated underneath it
/// would raise SIGBUS at the next touch of a page past the new end; a private (copy-on-write)
/// mapping would not help, since its untouched pages still come from the file. That is
/// acceptable for an offline analysis: the files are installed libraries, executables and debug
/// files, which package managers and linkers replace by renaming a new file into place (our
/// mapping keeps the old inode), not by rewriting them in place; a file changed since the
/// profile was written is already warned about. The worst case ends one `sampalloc` command
/// (for `sampalloc serve`, the server, which its supervisor restarts).
enum Backing {
    /// The mapping, and the open file behind it (compressed sections are inflated from the
    /// file, not the mapping; see [`section_bytes`]).
    Map(memmap2::Mmap, std::fs::File),
    Owned(Vec<u8>),
}

impl Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m, _) => m,
            Backing::Owned(v) => v,
        }
    }
}

impl Backing {
    /// Maps `path`, or reads it if it is empty or cannot be mapped. Only a regular file: a
    /// device or a FIFO named in a memory map is neither opened nor read.
    fn open(path: &Path) -> std::io::Result<Backing> {
        if !std::fs::metadata(path)?.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let f = std::fs::File::open(path)?;
        if f.metadata()?.len() > 0 {
            // SAFETY: a shared read-only mapping of a file we only read; see the type's comment
            // for why a change of the file underneath is an acceptable risk here.
            if let Ok(m) = unsafe { memmap2::Mmap::map(&f) } {
                return Ok(Backing::Map(m, f));
            }
        }
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut &f, &mut v)?;
        Ok(Backing::Owned(v))
    }
}

/// A section's bytes: a range of a shared [`Backing`]; cloning shares it.
#[derive(Clone)]
struct Bytes {
    backing: Rc<Backing>,
    range: Range<usize>,
}

impl Bytes {
    fn owned(v: Vec<u8>) -> Bytes {
        let range = 0..v.len();
        Bytes {
            backing: Rc::new(Backing::Owned(v)),
            range,
        }
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.backing[self.range.clone()]
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({:?})", self.range)
    }
}

// SAFETY: the bytes live in a mapping or a heap buffer owned by the `Rc`, never in the `Bytes`
// value itself: moving a `Bytes` does not move them, and they are never written or freed while
// any clone holds the `Rc`. A clone derefs to the same bytes.
unsafe impl gimli::StableDeref for Bytes {}
// SAFETY: as above; `Clone` only clones the `Rc` and the range.
unsafe impl gimli::CloneStableDeref for Bytes {}

type Reader = gimli::EndianReader<gimli::RunTimeEndian, Bytes>;

/// One loaded ELF file.
struct Module {
    ctx: Option<addr2line::Context<Reader>>,
    symbols: Symbols,
    /// `PT_LOAD` segments: virtual address, file offset, file size.
    segments: Vec<(u64, u64, u64)>,
}

/// The function shown for a frame in a JVM's bytecode interpreter (a perf map's
/// `Interpreter` entry): a Java method that was not compiled, which the map cannot name.
pub const INTERPRETED: &str = "[interpreted Java]";

/// A perf map: `START SIZE name` lines in hex, written by JIT runtimes.
#[derive(Clone, Debug, Default)]
pub struct PerfMap {
    entries: Vec<(u64, u64, String)>,
}

impl PerfMap {
    /// Parses perf map text: `START SIZE name`, the numbers in hex with or without `0x`
    /// (HotSpot writes `0x`, V8 and perf-map-agent do not), separated by spaces or tabs; the
    /// name may contain spaces. Malformed lines are skipped.
    pub fn parse(text: &str) -> PerfMap {
        fn field(s: &str) -> Option<(&str, &str)> {
            let s = s.trim_start();
            let end = s.find(char::is_whitespace)?;
            Some((&s[..end], &s[end..]))
        }
        fn hex(t: &str) -> Option<u64> {
            let t = t
                .strip_prefix("0x")
                .or_else(|| t.strip_prefix("0X"))
                .unwrap_or(t);
            u64::from_str_radix(t, 16).ok()
        }
        let mut entries = Vec::new();
        for line in text.lines() {
            let Some((a, rest)) = field(line) else {
                continue;
            };
            let Some((s, name)) = field(rest) else {
                continue;
            };
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            if let (Some(a), Some(s)) = (hex(a), hex(s)) {
                entries.push((a, s, name.to_string()));
            }
        }
        entries.sort_by_key(|e| e.0);
        PerfMap { entries }
    }

    /// The name of the code containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let i = self.entries.partition_point(|e| e.0 <= addr);
        let e = self.entries.get(i.checked_sub(1)?)?;
        (addr < e.0.saturating_add(e.1.max(1))).then_some(e.2.as_str())
    }
}

/// Demangles a Rust or C++ symbol name; other names come back unchanged.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            if let Ok(s) = sym.demangle(&cpp_demangle::DemangleOptions::default()) {
                return s;
            }
        }
    }
    name.to_string()
}

/// Resolves addresses of one profile, caching modules and addresses.
pub struct Symbolizer {
    mappings: Vec<Mapping>,
    perf_map: Option<PerfMap>,
    modules: HashMap<String, Option<Rc<Module>>>,
    cache: HashMap<(u64, bool), Rc<Vec<SymFrame>>>,
    warnings: Vec<String>,
    profile_time: Option<SystemTime>,
    started: Instant,
    progress: bool,
    cwd: Option<String>,
    debug_root: PathBuf,
}

impl Symbolizer {
    /// A symbolizer for `profile`. The perf map is `perf_map` if given, else
    /// `/tmp/perf-<pid>.map` when the profile's name carries a pid and that file exists.
    pub fn new(profile: &Profile, perf_map: Option<&Path>) -> Symbolizer {
        let mut warnings = Vec::new();
        let map_path = perf_map.map(Path::to_path_buf).or_else(|| {
            profile
                .pid
                .map(|p| PathBuf::from(format!("/tmp/perf-{p}.map")))
        });
        let perf_map = match map_path {
            Some(p) => match std::fs::read_to_string(&p) {
                Ok(t) => Some(PerfMap::parse(&t)),
                Err(e) => {
                    if perf_map.is_some() {
                        warnings.push(format!("cannot read perf map {}: {e}", p.display()));
                    }
                    None
                }
            },
            None => None,
        };
        let mut mappings = profile.mappings.clone();
        mappings.sort_by_key(|m| m.start);
        Symbolizer {
            mappings,
            perf_map,
            modules: HashMap::new(),
            cache: HashMap::new(),
            warnings,
            profile_time: profile
                .path
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .and_then(|m| m.modified().ok()),
            started: Instant::now(),
            progress: std::io::stderr().is_terminal(),
            cwd: std::env::current_dir()
                .ok()
                .and_then(|p| p.to_str().map(|s| format!("{s}/"))),
            debug_root: PathBuf::from("/usr/lib/debug"),
        }
    }

    /// Warnings so far (vanished or changed files, unreadable perf map), each once.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    fn mapping_of(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    /// The frames of `addr`, innermost (inlined) first. A return address is looked up at
    /// `addr - 1`, inside the call instruction.
    pub fn symbolize(&mut self, addr: u64, return_address: bool) -> Rc<Vec<SymFrame>> {
        if let Some(v) = self.cache.get(&(addr, return_address)) {
            return v.clone();
        }
        let probe = if return_address {
            addr.saturating_sub(1)
        } else {
            addr
        };
        let frames = Rc::new(self.resolve(addr, probe));
        self.cache.insert((addr, return_address), frames.clone());
        frames
    }

    fn resolve(&mut self, addr: u64, probe: u64) -> Vec<SymFrame> {
        let unknown = |module: Option<String>| {
            vec![SymFrame {
                function: format!("0x{addr:x}"),
                file: None,
                line: None,
                module,
                inlined: false,
            }]
        };
        let Some(m) = self.mapping_of(probe).cloned() else {
            return self.perf_map_frames(probe).unwrap_or_else(|| unknown(None));
        };
        if !m.is_file() {
            let pseudo = (!m.path.is_empty()).then(|| m.path.clone());
            return self
                .perf_map_frames(probe)
                .unwrap_or_else(|| unknown(pseudo));
        }
        let base = m.path.rsplit('/').next().unwrap_or(&m.path).to_string();
        let Some(module) = self.module(&m) else {
            return unknown(Some(base));
        };
        let bias = bias_of(&module.segments, &m);
        let svma = probe.wrapping_sub(bias);
        let mut out = Vec::new();
        if let Some(ctx) = &module.ctx {
            if let Ok(mut it) = ctx.find_frames(svma).skip_all_loads() {
                while let Ok(Some(f)) = it.next() {
                    let function = f
                        .function
                        .as_ref()
                        .and_then(|n| n.raw_name().ok())
                        .map(|n| demangle(&n));
                    let (file, line) = match &f.location {
                        Some(l) => (l.file.map(|p: &str| self.short_path(p)), l.line),
                        None => (None, None),
                    };
                    out.push(SymFrame {
                        function: function.unwrap_or_default(),
                        file,
                        line,
                        module: Some(base.clone()),
                        inlined: true,
                    });
                }
            }
        }
        let symbol = module.symbols.lookup(svma);
        if out.is_empty() {
            out.push(SymFrame {
                function: symbol.unwrap_or_else(|| format!("0x{addr:x}")),
                file: None,
                line: None,
                module: Some(base),
                inlined: false,
            });
        } else {
            if let Some(last) = out.last_mut() {
                last.inlined = false;
            }
            let n = out.len();
            let mut symbol = symbol;
            for (i, f) in out.iter_mut().enumerate() {
                if f.function.is_empty() {
                    f.function = if i + 1 == n { symbol.take() } else { None }
                        .unwrap_or_else(|| format!("0x{addr:x}"));
                }
            }
        }
        out
    }

    fn perf_map_frames(&self, probe: u64) -> Option<Vec<SymFrame>> {
        let name = self.perf_map.as_ref()?.lookup(probe)?;
        let (function, module) = if name == "Interpreter" {
            (INTERPRETED, "[interpreter]")
        } else {
            (name, "[jit]")
        };
        Some(vec![SymFrame {
            function: function.to_string(),
            file: None,
            line: None,
            module: Some(module.to_string()),
            inlined: false,
        }])
    }

    fn short_path(&self, p: &str) -> String {
        if let Some(cwd) = &self.cwd {
            if let Some(rest) = p.strip_prefix(cwd.as_str()) {
                return rest.to_string();
            }
        }
        // Rust's standard library: /rustc/<hash>/library/… → library/…
        if let Some(rest) = p.strip_prefix("/rustc/") {
            if let Some((_, tail)) = rest.split_once('/') {
                return tail.to_string();
            }
        }
        p.to_string()
    }

    fn module(&mut self, m: &Mapping) -> Option<Rc<Module>> {
        if let Some(v) = self.modules.get(&m.path) {
            return v.clone();
        }
        if self.progress && self.started.elapsed().as_secs_f64() > 1.0 {
            eprintln!("sampalloc: reading symbols of {}", m.path);
        }
        let loaded = self.load(m).map(Rc::new);
        self.modules.insert(m.path.clone(), loaded.clone());
        loaded
    }

    fn load(&mut self, m: &Mapping) -> Option<Module> {
        let path = m.path.as_str();
        if let Some(p) = path.strip_suffix(" (deleted)") {
            self.warnings.push(format!(
                "{p} was deleted while the program ran; its frames are shown as addresses"
            ));
            return None;
        }
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                self.warnings.push(format!(
                    "cannot open {path} ({e}); its frames are shown as addresses"
                ));
                return None;
            }
        };
        let newer = match (meta.modified().ok(), self.profile_time) {
            (Some(f), Some(p)) => f > p,
            _ => false,
        };
        if newer || m.offset > meta.len() {
            self.warnings.push(format!(
                "{path} changed after the profile was written; its symbols may be wrong"
            ));
        }
        let data = match Backing::open(Path::new(path)) {
            Ok(d) => Rc::new(d),
            Err(e) => {
                self.warnings.push(format!(
                    "cannot read {path} ({e}); its frames are shown as addresses"
                ));
                return None;
            }
        };
        let file = match object::File::parse(&**data) {
            Ok(f) => f,
            Err(e) => {
                self.warnings.push(format!(
                    "{path} is not an ELF file we can read ({e}); its frames are shown as addresses"
                ));
                return None;
            }
        };
        let segments = file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (s.address(), off, size)
            })
            .collect();
        let mut symbols = Symbols::of(&file, &data);
        let mut ctx = if has_dwarf(&file) {
            dwarf_context(&file, &data)
        } else {
            None
        };
        if ctx.is_none() {
            if let Some(debug) = self.debug_file(Path::new(path), &file) {
                let debug = Rc::new(debug);
                if let Ok(df) = object::File::parse(&**debug) {
                    ctx = dwarf_context(&df, &debug);
                    if symbols.entries.is_empty() {
                        symbols = Symbols::of(&df, &debug);
                    }
                }
            }
        }
        Some(Module {
            ctx,
            symbols,
            segments,
        })
    }

    /// A separate debug file: by build-id, then by `.gnu_debuglink`.
    fn debug_file(&self, path: &Path, file: &object::File) -> Option<Backing> {
        let mut candidates = Vec::new();
        if let Ok(Some(id)) = file.build_id() {
            if id.len() > 1 {
                let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
                candidates.push(
                    self.debug_root
                        .join(".build-id")
                        .join(&hex[..2])
                        .join(format!("{}.debug", &hex[2..])),
                );
            }
        }
        if let Ok(Some((link, _crc))) = file.gnu_debuglink() {
            if let (Ok(link), Some(dir)) = (std::str::from_utf8(link), path.parent()) {
                candidates.push(dir.join(link));
                candidates.push(dir.join(".debug").join(link));
                let rel = dir.strip_prefix("/").unwrap_or(dir);
                candidates.push(self.debug_root.join(rel).join(link));
            }
        }
        candidates
            .into_iter()
            .filter(|c| c != path)
            .find_map(|c| Backing::open(&c).ok())
    }
}

/// `runtime address - file virtual address` for addresses in mapping `m`.
fn bias_of(segments: &[(u64, u64, u64)], m: &Mapping) -> u64 {
    let page = |x: u64| x & !0xfff;
    // Segments share pages at their edges: take the last one starting at or before the
    // mapping's offset that still covers it.
    let seg = segments
        .iter()
        .filter(|&&(_, off, size)| page(off) <= m.offset && m.offset < off + size.max(1))
        .max_by_key(|&&(_, off, _)| off);
    match seg {
        // The mapping's first byte is file offset m.offset, i.e. vaddr + (m.offset - off).
        Some(&(vaddr, off, _)) => m
            .start
            .wrapping_sub(vaddr.wrapping_add(m.offset).wrapping_sub(off)),
        None => m.start.wrapping_sub(m.offset),
    }
}

fn has_dwarf(file: &object::File) -> bool {
    file.section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0)
}

/// The DWARF of `file` (parsed from `data`): uncompressed sections are borrowed from `data`,
/// compressed ones inflated.
fn dwarf_context(file: &object::File, data: &Rc<Backing>) -> Option<addr2line::Context<Reader>> {
    if !has_dwarf(file) {
        return None;
    }
    let endian = if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let load = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
        let bytes = match id {
            // addr2line reads neither location lists nor macros; for libjvm the location lists
            // alone are over 100 MiB once inflated.
            gimli::SectionId::DebugLoc
            | gimli::SectionId::DebugLocLists
            | gimli::SectionId::DebugMacinfo
            | gimli::SectionId::DebugMacro => None,
            _ => file
                .section_by_name(id.name())
                .and_then(|s| section_bytes(&s, data)),
        };
        Ok(gimli::EndianReader::new(
            bytes.unwrap_or_else(|| Bytes::owned(Vec::new())),
            endian,
        ))
    };
    let dwarf = gimli::Dwarf::load(load).ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}

/// A section's contents: a range of `data` when stored uncompressed, else inflated into memory
/// of its own. A zlib section of a mapped file is inflated from the file through a small buffer,
/// so that its compressed pages never become part of our resident set (libjvm's debug file has
/// 145 MiB of them); other formats are inflated from the mapping.
fn section_bytes(s: &object::Section, data: &Rc<Backing>) -> Option<Bytes> {
    let c = s.compressed_file_range().ok()?;
    if c.format == object::CompressionFormat::None {
        let start = usize::try_from(c.offset).ok()?;
        let end = start.checked_add(usize::try_from(c.uncompressed_size).ok()?)?;
        data.get(start..end)?;
        return Some(Bytes {
            backing: data.clone(),
            range: start..end,
        });
    }
    if let (object::CompressionFormat::Zlib, Backing::Map(_, file)) = (c.format, &**data) {
        return inflate_zlib(file, &c).map(Bytes::owned);
    }
    Some(Bytes::owned(s.uncompressed_data().ok()?.into_owned()))
}

/// The zlib stream at `c` in `file`, inflated; `None` unless it inflates to exactly the size
/// its header announced.
fn inflate_zlib(mut file: &std::fs::File, c: &object::CompressedFileRange) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let size = usize::try_from(c.uncompressed_size).ok()?;
    let mut out = Vec::new();
    out.try_reserve_exact(size).ok()?;
    file.seek(SeekFrom::Start(c.offset)).ok()?;
    let input = std::io::BufReader::with_capacity(1 << 16, file.take(c.compressed_size));
    flate2::bufread::ZlibDecoder::new(input)
        .take(c.uncompressed_size)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() == size).then_some(out)
}

/// A file's text symbols (`.symtab` and `.dynsym`), sorted by start. Names stay in the file's
/// bytes and are demangled when looked up: libjvm has 58 000 symbols, of which a profile names a
/// few dozen.
struct Symbols {
    data: Rc<Backing>,
    /// Start, size, and the name's place in `data`.
    entries: Vec<(u64, u64, Range<usize>)>,
}

impl Symbols {
    /// The text symbols of `file`, parsed from `data`.
    fn of(file: &object::File, data: &Rc<Backing>) -> Symbols {
        let base = data.as_ptr() as usize;
        // Where `name` lies in `data` (a symbol's name is a slice of its string table).
        let place = |name: &[u8]| {
            let start = (name.as_ptr() as usize).checked_sub(base)?;
            let range = start..start.checked_add(name.len())?;
            data.get(range.clone())?;
            Some(range)
        };
        let mut entries: Vec<(u64, u64, Range<usize>)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
            .filter_map(|s| {
                let name = s.name_bytes().ok()?;
                if name.is_empty() || std::str::from_utf8(name).is_err() {
                    return None;
                }
                Some((s.address(), s.size(), place(name)?))
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        entries.dedup_by_key(|s| s.0);
        Symbols {
            data: data.clone(),
            entries,
        }
    }

    /// The demangled name of the symbol containing `svma`.
    fn lookup(&self, svma: u64) -> Option<String> {
        let i = self.entries.partition_point(|s| s.0 <= svma);
        let s = self.entries.get(i.checked_sub(1)?)?;
        // Size 0: unknown extent; accept within 64 KiB.
        let end = if s.1 == 0 {
            s.0.saturating_add(1 << 16)
        } else {
            s.0.saturating_add(s.1)
        };
        if svma >= end {
            return None;
        }
        let name = std::str::from_utf8(self.data.get(s.2.clone())?).ok()?;
        Some(demangle(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_map_lookup() {
        let m = PerfMap::parse("1000 100 LFoo;bar\n0x2000 0x10 Interpreter\nbad line\n");
        assert_eq!(m.lookup(0x1000), Some("LFoo;bar"));
        assert_eq!(m.lookup(0x10ff), Some("LFoo;bar"));
        assert_eq!(m.lookup(0x1100), None);
        assert_eq!(m.lookup(0x200f), Some("Interpreter"));
        assert_eq!(m.lookup(0xfff), None);
    }

    #[test]
    fn perf_map_lines_with_and_without_0x_and_names_with_spaces() {
        // As HotSpot (DumpPerfMapAtExit, jcmd Compiler.perfmap) and V8 write them.
        let m = PerfMap::parse(
            "0x00007f1470c189a0 0x0000000000000680 java.util.zip.Deflater DeflaterLeak.compress(byte[], byte[])\n\
             7f1470d00000\t40\tLazyCompile:*handler app.js:12\n\
             0X7F1470E00000 0X10 Upper\n\
             0x7f1470f00000 0x10\n\
             zz 10 not hex\n\
             \n",
        );
        assert_eq!(
            m.lookup(0x7f14_70c1_8a00),
            Some("java.util.zip.Deflater DeflaterLeak.compress(byte[], byte[])")
        );
        assert_eq!(m.lookup(0x7f14_70c1_9020), None);
        assert_eq!(
            m.lookup(0x7f14_70d0_003f),
            Some("LazyCompile:*handler app.js:12")
        );
        assert_eq!(m.lookup(0x7f14_70e0_0000), Some("Upper"));
        // A line without a name is skipped.
        assert_eq!(m.lookup(0x7f14_70f0_0000), None);
        assert_eq!(m.entries.len(), 3);
    }

    #[test]
    fn interpreter_frames_are_marked_interpreted() {
        let profile = crate::analysis::parse::parse(
            b"heap profile:      1:     4096 [     1:     4096] @ heap_v2/4096\n\
              \x20    1:     4096 [     1:     4096] @ 0x7f0000001010 0x7f0000002020\n\
              \n\
              MAPPED_LIBRARIES:\n\
              7f0000000000-7f0000100000 rwxp 00000000 00:00 0 \n",
        )
        .unwrap();
        let mut s = Symbolizer::new(&profile, None);
        s.perf_map = Some(PerfMap::parse(
            "0x7f0000001000 0x100 void App.main(java.lang.String[])\n\
             0x7f0000002000 0x100 Interpreter\n",
        ));
        let jit = s.symbolize(0x7f00_0000_1010, true);
        assert_eq!(jit[0].function, "void App.main(java.lang.String[])");
        assert_eq!(jit[0].module.as_deref(), Some("[jit]"));
        let interp = s.symbolize(0x7f00_0000_2020, true);
        assert_eq!(interp[0].function, INTERPRETED);
        assert_eq!(interp[0].module.as_deref(), Some("[interpreter]"));
    }

    #[test]
    fn demangles_rust_and_cpp() {
        assert_eq!(
            demangle("_ZN3foo3bar17h0123456789abcdefE"),
            "foo::bar".to_string()
        );
        assert_eq!(demangle("_Z3fooi"), "foo(int)");
        assert_eq!(demangle("malloc"), "malloc");
    }

    #[test]
    fn bias_from_segments() {
        let m = Mapping {
            start: 0x5555_5555_6000,
            end: 0x5555_5555_9000,
            perms: "r-xp".into(),
            offset: 0x1000,
            inode: 1,
            path: "/x".into(),
        };
        // PIE text segment at vaddr 0x1000, offset 0x1000.
        let segs = [(0, 0, 0x800), (0x1000, 0x1000, 0x3000)];
        assert_eq!(bias_of(&segs, &m), 0x5555_5555_5000);
        // Non-PIE: vaddr 0x401000 at offset 0x1000 mapped at 0x401000: bias 0.
        let m2 = Mapping {
            start: 0x401000,
            ..m.clone()
        };
        assert_eq!(bias_of(&[(0x401000, 0x1000, 0x3000)], &m2), 0);
        // A read-only first segment whose file size runs into the text's first page.
        let m3 = Mapping {
            start: 0x562a78a18000,
            offset: 0x6b000,
            ..m.clone()
        };
        let segs = [(0, 0, 0x6b5ec), (0x6c5f0, 0x6b5f0, 0xd82d0)];
        assert_eq!(bias_of(&segs, &m3), 0x562a789ac000);
    }

    /// A C program built with `gcc -g` and `extra` flags in a fresh directory; returns the
    /// directory and the binary.
    fn build_c(name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("sampalloc-symb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("leaf.c");
        std::fs::write(
            &src,
            "#include <stdlib.h>\n\
             __attribute__((noinline)) void *leaf(int n) {\n\
             \x20 return malloc(n);\n\
             }\n\
             int main(void) { return leaf(3) == 0; }\n",
        )
        .unwrap();
        let bin = dir.join(name);
        let status = std::process::Command::new("gcc")
            .args(["-g", "-O0", "-Wl,--build-id"])
            .args(extra)
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .status()
            .expect("gcc (installed by .ci/run) runs");
        assert!(status.success(), "gcc failed");
        (dir, bin)
    }

    /// Symbolizes `leaf`'s first instruction in `bin`, loaded at a made-up base.
    fn symbolize_leaf(bin: &Path, debug_root: Option<&Path>) -> Vec<SymFrame> {
        let data = std::fs::read(bin).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let leaf = file
            .symbols()
            .find(|s| s.name() == Ok("leaf"))
            .map(|s| s.address())
            .or_else(|| {
                file.dynamic_symbols()
                    .find(|s| s.name() == Ok("leaf"))
                    .map(|s| s.address())
            });
        let leaf = match leaf {
            Some(a) => a,
            // Stripped: the symbol is in the debug file.
            None => {
                let dbg = std::fs::read(bin.with_extension("debug")).unwrap();
                let df = object::File::parse(&*dbg).unwrap();
                df.symbols()
                    .find(|s| s.name() == Ok("leaf"))
                    .unwrap()
                    .address()
            }
        };
        let (vaddr, off) = file
            .segments()
            .find(|s| s.address() <= leaf && leaf < s.address() + s.size())
            .map(|s| (s.address(), s.file_range().0))
            .expect("a PT_LOAD covers leaf");
        let base = 0x5555_0000_0000u64;
        let start = base + (vaddr & !0xfff);
        let text = format!(
            "heap profile:      1:     4096 [     1:     4096] @ heap_v2/4096\n\
             \x20    1:     4096 [     1:     4096] @ 0x{:x}\n\
             \n\
             MAPPED_LIBRARIES:\n\
             {start:x}-{:x} r-xp {:08x} 08:01 1 {}\n",
            base + leaf,
            start + 0x10_0000,
            off & !0xfff,
            bin.display()
        );
        let profile = crate::analysis::parse::parse(text.as_bytes()).unwrap();
        let mut s = Symbolizer::new(&profile, None);
        if let Some(r) = debug_root {
            s.debug_root = r.to_path_buf();
        }
        let frames = s.symbolize(base + leaf, false).to_vec();
        assert!(s.take_warnings().is_empty());
        frames
    }

    fn compressed_debug_info(path: &Path) -> bool {
        let data = std::fs::read(path).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let s = file.section_by_name(".debug_info").unwrap();
        s.compressed_file_range().unwrap().format != object::CompressionFormat::None
    }

    #[test]
    fn compressed_debug_sections_resolve_file_and_line() {
        let (dir, bin) = build_c("gz", &["-gz=zlib"]);
        assert!(
            compressed_debug_info(&bin),
            "gcc -gz=zlib compressed .debug_info"
        );
        let frames = symbolize_leaf(&bin, None);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].function, "leaf");
        let src = dir.join("leaf.c");
        assert_eq!(frames[0].file.as_deref(), src.to_str());
        assert_eq!(frames[0].line, Some(2));
        // Uncompressed sections are borrowed from the mapping: the same answer.
        let (plain_dir, plain) = build_c("plain", &[]);
        assert!(!compressed_debug_info(&plain));
        let frames = symbolize_leaf(&plain, None);
        assert_eq!(frames[0].function, "leaf");
        assert_eq!(frames[0].line, Some(2));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&plain_dir);
    }

    #[test]
    fn compressed_separate_debug_file_found_by_build_id() {
        let (dir, bin) = build_c("split", &[]);
        let dbg = bin.with_extension("debug");
        let objcopy = |args: &[&std::ffi::OsStr]| {
            let st = std::process::Command::new("objcopy")
                .args(args)
                .status()
                .expect("objcopy (binutils, installed with gcc) runs");
            assert!(st.success(), "objcopy {args:?}");
        };
        objcopy(&[
            "--only-keep-debug".as_ref(),
            "--compress-debug-sections=zlib".as_ref(),
            bin.as_os_str(),
            dbg.as_os_str(),
        ]);
        objcopy(&["--strip-all".as_ref(), bin.as_os_str()]);
        assert!(compressed_debug_info(&dbg));
        let data = std::fs::read(&bin).unwrap();
        let id = object::File::parse(&*data)
            .unwrap()
            .build_id()
            .unwrap()
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let root = dir.join("debug");
        let at = root.join(".build-id").join(&id[..2]);
        std::fs::create_dir_all(&at).unwrap();
        std::fs::copy(&dbg, at.join(format!("{}.debug", &id[2..]))).unwrap();
        // Not by debuglink: the stripped binary names none.
        let frames = symbolize_leaf(&bin, Some(&root));
        assert_eq!(frames[0].function, "leaf", "{frames:?}");
        assert_eq!(frames[0].line, Some(2), "{frames:?}");
        assert!(frames[0].file.as_deref().unwrap().ends_with("leaf.c"));
        // Without the debug root the stripped binary has neither lines nor names.
        let bare = symbolize_leaf(&bin, Some(&dir.join("none")));
        assert_eq!(bare[0].line, None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn device_mappings_are_not_read() {
        let profile = crate::analysis::parse::parse(
            b"heap profile:      1:     4096 [     1:     4096] @ heap_v2/4096\n\
              \x20    1:     4096 [     1:     4096] @ 0x7f0000001010\n\
              \n\
              MAPPED_LIBRARIES:\n\
              7f0000000000-7f0000100000 r-xp 00000000 00:05 4 /dev/zero\n",
        )
        .unwrap();
        let mut s = Symbolizer::new(&profile, None);
        let frames = s.symbolize(0x7f00_0000_1010, false);
        assert_eq!(frames[0].function, "0x7f0000001010");
        assert_eq!(frames[0].module.as_deref(), Some("zero"));
        let w = s.take_warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("/dev/zero") && w[0].contains("not a regular file"),
            "{w:?}"
        );
    }
}
