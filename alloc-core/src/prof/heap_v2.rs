//! Writing heap profiles: the sampled-heap text format that both `jeprof` and Go's `pprof`
//! read, into files created safely under their conventional names.
//!
//! ```text
//! heap profile:    412: 21307392 [  9877: 4202692608] @ heap_v2/524288
//!     40:  1310720 [    40:  1310720] @ 0x55d0c1a2b3c4 0x55d0c1a2b100 0x7f3e12a29d90
//! ...
//!
//! MAPPED_LIBRARIES:
//! <the text of /proc/self/maps>
//! ```
//!
//! Readers scale each row by `1/(1-exp(-(bytes/objects)/R))`, which is biased for a stack that
//! allocates mixed sizes. So, as jemalloc's `prof_unbias` does, each row is written such that
//! the reader's formula yields our unbiased estimate: the object count is the number of live
//! samples `k`, and the byte count is `k·x` where `x` solves `x/(1-exp(-x/R)) = estimate/k`.
//! For a stack of one block size this is exactly the raw sample sum.
//!
//! Nothing here allocates: text goes through one static buffer to a sink (a file descriptor,
//! or the Rust API's vector), under the dump lock; the stack table is read without its lock.
//! File names are built in fixed buffers ([`NameBuf`]).
//!
//! Beside each profile file, a side file `<profile>.mem` records the process's memory at the
//! dump as the kernel and the engine see it (RSS by kind of mapping, live and free bytes by
//! kind). It is a separate file so that `jeprof` and `pprof`, which read everything after
//! `MAPPED_LIBRARIES:` as map lines, open the profile unchanged. It is created with the same
//! rules as the profile ([`create_new`]), and its text is written by the process layer through
//! a hook ([`set_mem_writer`]): the engine's figures are above this layer.
//!
//! With `prof_peek:N` (0, off, by default), a second side file `<profile>.peek`, created the
//! same way, keeps the first `min(N, size)` bytes of each live sampled block, and which stack
//! each belongs to ([`write_peek`]):
//!
//! ```text
//! sampalloc peek 1
//! peek_bytes 64
//! block 0x7f3e1000a000 0x7f3e2c0000c0 4096 4a4e492d4c45414b2d4d41524b45525a5a5a…
//! ...
//! stack 0x7f3e2c0000c0 @ 0x55d0c1a2b3c4 0x55d0c1a2b100 0x7f3e12a29d90
//! ```
//!
//! A `block` line is the block's address, its stack's id, its requested size and its first
//! bytes in hex (none if it could not be read); each stack a block line names is listed once
//! after them, with the frames its profile row has. The bytes are copied under the stack
//! table's lock, which a sampled block's free takes before the block's memory goes back
//! (`table::peek_next`). They are whatever the program keeps there: the file is 0600.

use crate::base::config::PROF_PEEK_MAX;
use crate::base::config::{self, PREFIX_MAX};
use crate::base::fmath;
use crate::platform::lock::Locked;
use crate::platform::os::{self, Line};
use crate::prof::name::{NameBuf, ProfileName, NAME_MAX};
use crate::prof::table::{self, Counts, StackEntry};
use crate::thread::InProfiler;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Where profile text goes.
pub trait Sink {
    /// Writes all of `bytes`; false on failure.
    fn write_all(&mut self, bytes: &[u8]) -> bool;
}

/// A file descriptor sink (raw `write(2)`).
pub struct FdSink(pub i32);

impl Sink for FdSink {
    fn write_all(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            // SAFETY: `bytes` is a valid slice.
            let n = unsafe { libc::write(self.0, bytes.as_ptr().cast(), bytes.len()) };
            if n < 0 && os::errno() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                return false;
            }
            bytes = &bytes[n as usize..];
        }
        true
    }
}

const BUF_LEN: usize = 16 << 10;
static BUF: Locked<[u8; BUF_LEN]> = Locked::new([0; BUF_LEN]);
static SEQ: AtomicU64 = AtomicU64::new(0);

struct Writer<'a> {
    sink: &'a mut dyn Sink,
    buf: &'a mut [u8; BUF_LEN],
    len: usize,
    ok: bool,
}

impl<'a> Writer<'a> {
    /// A writer into `sink` through the dump buffer `buf`.
    fn new(sink: &'a mut dyn Sink, buf: &'a mut [u8; BUF_LEN]) -> Self {
        Writer {
            sink,
            buf,
            len: 0,
            ok: true,
        }
    }

    fn bytes(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.len == BUF_LEN {
                self.flush();
            }
            let n = b.len().min(BUF_LEN - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
            self.len += n;
            b = &b[n..];
        }
    }

    fn flush(&mut self) {
        if self.ok && self.len > 0 {
            self.ok = self.sink.write_all(&self.buf[..self.len]);
        }
        self.len = 0;
    }

    fn dec(&mut self, v: u64, width: usize) {
        let mut l = Line::new();
        l.dec(v);
        for _ in l.as_bytes().len()..width {
            self.bytes(b" ");
        }
        self.bytes(l.as_bytes());
    }

    fn hex(&mut self, v: usize) {
        let mut l = Line::new();
        l.hex(v);
        self.bytes(l.as_bytes());
    }
}

/// `x / (1 - exp(-x/r))`: the expected bytes one sample of an `x`-byte block stands for.
fn per_sample(x: f64, r: f64) -> f64 {
    if x <= 0.0 {
        return r;
    }
    x / -crate::base::fmath::exp_m1(-x / r)
}

/// The row `(objects, bytes)` for `samples` samples whose estimate is `estimate` bytes, such
/// that a reader applying the heap_v2 scaling gets `estimate` back (see the module docs).
pub fn unbiased_row(samples: u64, estimate: f64, r: f64) -> (u64, u64) {
    if samples == 0 || estimate <= 0.0 {
        return (0, 0);
    }
    let target = estimate / samples as f64;
    // per_sample is increasing, with x + r/2 ≥ per_sample(x) ≥ max(x, r): bracket and bisect.
    // Every sample's estimate is at least r, so target ≥ r; the 1-byte floor only guards the
    // object count a reader derives (bytes / x) against a degenerate row.
    let (mut lo, mut hi) = ((target - r).max(1.0), target.max(1.0));
    for _ in 0..64 {
        let mid = 0.5 * (lo + hi);
        if per_sample(mid, r) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let bytes = fmath::round(samples as f64 * 0.5 * (lo + hi)) as u64;
    (samples, bytes.max(1))
}

fn rows(c: &Counts, r: f64) -> [u64; 4] {
    let (lo, lb) = unbiased_row(c.live_samples, c.live_bytes, r);
    let (to, tb) = unbiased_row(c.total_samples, c.total_bytes, r);
    [lo, lb, to, tb]
}

/// The stacks a profile lists: those with frames (a sample whose capture was skipped has none,
/// and a row without addresses is not valid for readers).
pub fn entries() -> impl Iterator<Item = &'static StackEntry> {
    table::entries().filter(|entry| entry.depth > 0)
}

/// Writes the current heap profile to `sink`. False if the sink failed.
pub fn write_profile(sink: &mut dyn Sink) -> bool {
    let _reentry = InProfiler::enter();
    let r_int = 1u64 << config::lg_prof_sample();
    let r = r_int as f64;
    let mut buf = BUF.lock();
    let mut w = Writer::new(sink, &mut buf);
    let mut total = [0u64; 4];
    for e in entries() {
        for (t, v) in total.iter_mut().zip(rows(&e.counts(), r)) {
            *t += v;
        }
    }
    w.bytes(b"heap profile: ");
    write_counts(&mut w, &total);
    w.bytes(b" @ heap_v2/");
    w.dec(r_int, 0);
    w.bytes(b"\n");
    for e in entries() {
        let row = rows(&e.counts(), r);
        if row == [0; 4] {
            continue;
        }
        write_counts(&mut w, &row);
        w.bytes(b" @");
        for &pc in e.frames() {
            w.bytes(b" ");
            w.hex(pc);
        }
        w.bytes(b"\n");
    }
    w.bytes(b"\nMAPPED_LIBRARIES:\n");
    copy_maps(&mut w);
    w.flush();
    w.ok
}

fn write_counts(w: &mut Writer, c: &[u64; 4]) {
    w.dec(c[0], 6);
    w.bytes(b": ");
    w.dec(c[1], 8);
    w.bytes(b" [");
    w.dec(c[2], 6);
    w.bytes(b": ");
    w.dec(c[3], 8);
    w.bytes(b"]");
}

fn copy_maps(w: &mut Writer) {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return;
    }
    let mut chunk = [0u8; 1024];
    loop {
        // SAFETY: reading into a local buffer of its length.
        let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if n < 0 && os::errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        w.bytes(&chunk[..n as usize]);
    }
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
}

/// Creates the file `path` (no NUL inside) for writing, as every file the engine writes is
/// created: `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC`, mode 0600. A name that is taken (a file, or
/// a symlink even to nowhere) is never opened, followed or truncated: `Err(EEXIST)` (or
/// `ELOOP`). Returns the descriptor; Err carries `errno`.
pub fn create_new(path: &[u8]) -> Result<i32, i32> {
    let mut cpath: NameBuf = [0u8; NAME_MAX];
    if path.is_empty() || path.len() >= cpath.len() || path.contains(&0) {
        return Err(libc::ENAMETOOLONG);
    }
    cpath[..path.len()].copy_from_slice(path);
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    loop {
        // SAFETY: `cpath` is NUL-terminated; the mode argument is read because of O_CREAT.
        let fd = unsafe { libc::open(cpath.as_ptr().cast(), flags, 0o600 as libc::c_uint) };
        if fd >= 0 {
            return Ok(fd);
        }
        let e = os::errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Writes the text of a profile's side file (`<profile>.mem`) to a sink; false on failure.
pub type MemWriter = fn(&mut dyn Sink) -> bool;

/// The side file's writer, a [`MemWriter`] (null: none, no side file).
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static MEM_WRITER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// The suffix of a profile's side file.
pub const MEM_SUFFIX: &[u8] = b".mem";

/// Registers the writer of the side files (the process layer does, at start-up).
pub fn set_mem_writer(f: MemWriter) {
    MEM_WRITER.store(f as *mut (), Ordering::Release);
}

fn mem_writer() -> Option<MemWriter> {
    let p = MEM_WRITER.load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: only `set_mem_writer` stores here, and it stores a `MemWriter`.
    Some(unsafe { core::mem::transmute::<*mut (), MemWriter>(p) })
}

/// The suffix of a profile's peek side file (`prof_peek`).
pub const PEEK_SUFFIX: &[u8] = b".peek";

/// Numbers the peek dumps, to list each stack once per dump ([`StackEntry::mark`]).
static PEEK_DUMP: AtomicU64 = AtomicU64::new(0);

/// Writes the text of a profile's peek side file (see the module docs) with the first `n`
/// bytes (at most [`PROF_PEEK_MAX`]) of each live sampled block. False if the sink failed.
pub fn write_peek(sink: &mut dyn Sink, n: usize) -> bool {
    let _reentry = InProfiler::enter();
    let n = n.min(PROF_PEEK_MAX);
    let dump = PEEK_DUMP.fetch_add(1, Ordering::Relaxed) + 1;
    let mut buf = BUF.lock();
    let mut w = Writer::new(sink, &mut buf);
    w.bytes(b"sampalloc peek 1\npeek_bytes ");
    w.dec(n as u64, 0);
    w.bytes(b"\n");
    let mut data = [0u8; PROF_PEEK_MAX];
    let mut hex = [0u8; 2 * PROF_PEEK_MAX];
    let mut cursor = 0;
    while let Some(b) = table::peek_next(cursor, &mut data[..n]) {
        cursor = b.next;
        b.entry.mark(dump);
        w.bytes(b"block ");
        w.hex(b.addr);
        w.bytes(b" ");
        w.hex(b.entry as *const StackEntry as usize);
        w.bytes(b" ");
        w.dec(b.bytes as u64, 0);
        w.bytes(b" ");
        for (i, &byte) in data[..b.copied].iter().enumerate() {
            hex[2 * i] = b"0123456789abcdef"[(byte >> 4) as usize];
            hex[2 * i + 1] = b"0123456789abcdef"[(byte & 15) as usize];
        }
        w.bytes(&hex[..2 * b.copied]);
        w.bytes(b"\n");
    }
    for e in table::entries().filter(|e| e.marked() == dump) {
        w.bytes(b"stack ");
        w.hex(e as *const StackEntry as usize);
        w.bytes(b" @");
        for &pc in e.frames() {
            w.bytes(b" ");
            w.hex(pc);
        }
        w.bytes(b"\n");
    }
    w.flush();
    w.ok
}

/// Creates the side file `<path><suffix>` (see [`create_new`]) and writes it with `write`.
/// Best effort: the profile is complete without it, and a taken name is left alone like any
/// other.
fn write_side_file(path: &[u8], suffix: &[u8], write: impl FnOnce(&mut dyn Sink) -> bool) {
    let mut name: NameBuf = [0u8; NAME_MAX];
    let len = path.len() + suffix.len();
    if len >= name.len() {
        return;
    }
    name[..path.len()].copy_from_slice(path);
    name[path.len()..len].copy_from_slice(suffix);
    let Ok(fd) = create_new(&name[..len]) else {
        return;
    };
    let _reentry = InProfiler::enter();
    write(&mut FdSink(fd));
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
}

/// Writes the side files of the profile `path`: `<path>.mem` if a writer is registered, and
/// `<path>.peek` if `prof_peek` is on.
fn write_side_files(path: &[u8]) {
    if let Some(write) = mem_writer() {
        write_side_file(path, MEM_SUFFIX, write);
    }
    let n = config::prof_peek();
    if n > 0 {
        write_side_file(path, PEEK_SUFFIX, |sink| write_peek(sink, n));
    }
}

/// Writes the profile to the new file `path` (see [`create_new`]: an existing name is an
/// error, `EEXIST`, and is left alone), and its side files `<path>.mem` and, with `prof_peek`,
/// `<path>.peek` (best effort). Err carries `errno`.
pub fn dump_to_path(path: &[u8]) -> Result<(), i32> {
    let fd = create_new(path)?;
    let ok = write_profile(&mut FdSink(fd));
    let err = os::errno();
    // SAFETY: our descriptor.
    let closed = unsafe { libc::close(fd) } == 0;
    if ok && closed {
        write_side_files(path);
        Ok(())
    } else {
        Err(if ok { os::errno() } else { err })
    }
}

/// The file name for a dump of kind `kind` (a [`ProfileName`]:
/// `<prof_prefix>.<pid>.<seq>.<kind>.heap`), taking the next sequence number (never handed out
/// twice in a process). Returns the length written into `out`.
pub fn profile_name(kind: u8, out: &mut NameBuf) -> usize {
    let mut prefix = [0u8; PREFIX_MAX];
    let n = config::prof_prefix(&mut prefix);
    ProfileName {
        prefix: &prefix[..n],
        // SAFETY: getpid has no preconditions (and returns a positive pid).
        pid: unsafe { libc::getpid() } as u32,
        seq: SEQ.fetch_add(1, Ordering::Relaxed),
        kind,
    }
    .write(out)
}

/// Sequence numbers a dump tries when its name is taken, before it gives up.
pub const NAME_TRIES: usize = 8;

/// Dumps the profile to its conventional name, into `name`. A taken name (`EEXIST`, or `ELOOP`
/// for a symlink) is left alone and the next sequence number tried, up to [`NAME_TRIES`]
/// names. Ok: the length of the name written; Err: `errno` and the length of the last name
/// tried (`EEXIST` when every name tried was taken).
pub fn dump_named(kind: u8, name: &mut NameBuf) -> Result<usize, (i32, usize)> {
    let mut len = 0;
    for _ in 0..NAME_TRIES {
        len = profile_name(kind, name);
        match dump_to_path(&name[..len]) {
            Err(libc::EEXIST | libc::ELOOP) => continue,
            Err(e) => return Err((e, len)),
            Ok(()) => return Ok(len),
        }
    }
    Err((libc::EEXIST, len))
}

/// Dumps the profile to its conventional name (see [`dump_named`]), for the triggers: on
/// failure prints one warning line and skips the dump. Returns whether the file was written.
pub fn dump_named_or_warn(kind: u8) -> bool {
    let mut name: NameBuf = [0u8; NAME_MAX];
    match dump_named(kind, &mut name) {
        Ok(_) => true,
        Err((libc::EEXIST, len)) => {
            Line::new()
                .str("sampalloc: heap profile skipped: ")
                .dec(NAME_TRIES as u64)
                .str(" names in a row are taken (never followed or overwritten); last tried ")
                .bytes(&name[..len])
                .emit();
            false
        }
        Err((e, len)) => {
            Line::new()
                .str("sampalloc: cannot write heap profile ")
                .bytes(&name[..len])
                .str(": ")
                .str(errno_text(e))
                .emit();
            false
        }
    }
}

fn errno_text(e: i32) -> &'static str {
    match e {
        libc::EACCES => "permission denied",
        libc::ENOENT => "no such directory",
        libc::ENOSPC => "no space left on device",
        libc::EROFS => "read-only file system",
        libc::ENOTDIR => "a path component is not a directory",
        libc::ENAMETOOLONG => "file name too long",
        libc::EDQUOT => "disk quota exceeded",
        libc::EMFILE | libc::ENFILE => "too many open files",
        _ => "write failed",
    }
}

/// Fork: hold the dump buffer across `fork` (a dump in progress finishes first).
pub fn prefork() {
    BUF.raw_lock();
}

/// Fork: release in the parent.
pub fn postfork_parent() {
    // SAFETY: taken in `prefork` by this thread.
    unsafe { BUF.raw_unlock() };
}

/// Fork: reset in the child.
pub fn postfork_child() {
    BUF.reset_after_fork();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbiased_rows_invert_the_readers_scaling() {
        let r = 524288.0;
        for (samples, sizes) in [
            (10u64, vec![64.0; 10]),
            (3, vec![100.0, 100_000.0, 2_000_000.0]),
            (1, vec![16.0]),
            (7, vec![4096.0; 7]),
        ] {
            let estimate: f64 = sizes.iter().map(|&s| per_sample(s, r)).sum();
            let (n, b) = unbiased_row(samples, estimate, r);
            assert_eq!(n, samples);
            let scale = 1.0 / -(-(b as f64 / n as f64) / r).exp_m1();
            let read_back = b as f64 * scale;
            assert!(
                (read_back - estimate).abs() / estimate < 1e-3,
                "sizes {sizes:?}: wrote {n}:{b}, reader gets {read_back}, estimate {estimate}"
            );
            if sizes.iter().all(|&s| s == sizes[0]) {
                assert_eq!(
                    b,
                    (sizes[0] * samples as f64) as u64,
                    "uniform rows are raw sums"
                );
            }
        }
        assert_eq!(unbiased_row(0, 0.0, r), (0, 0));
    }

    #[test]
    fn small_blocks_read_back_with_sane_object_counts() {
        // 270 samples of 48-byte blocks at R = 512 KiB: a reader must get back about the
        // estimated objects, not billions.
        let r = 524288.0;
        let objects = 270.0 * (1.0 / -(-48.0f64 / r).exp_m1());
        let (n, b) = unbiased_row(270, objects * 48.0, r);
        let read_objects = n as f64 / -(-(b as f64 / n as f64) / r).exp_m1();
        assert!(
            (read_objects - objects).abs() / objects < 0.01,
            "{n}:{b} -> {read_objects}"
        );
    }

    struct VecSink(Vec<u8>);
    impl Sink for VecSink {
        fn write_all(&mut self, b: &[u8]) -> bool {
            self.0.extend_from_slice(b);
            true
        }
    }

    #[test]
    fn profile_text_has_header_rows_and_maps() {
        table::record_alloc(core::ptr::null_mut(), &[0x1111, 0x2222], 4096, 128.5, 0);
        let mut sink = VecSink(Vec::new());
        assert!(write_profile(&mut sink));
        let text = String::from_utf8(sink.0).unwrap();
        let header = text.lines().next().unwrap();
        assert!(header.starts_with("heap profile: "), "{header}");
        assert!(header.contains("] @ heap_v2/"), "{header}");
        assert!(text.contains(" @ 0x1111 0x2222\n"), "{text}");
        assert!(text.contains("\nMAPPED_LIBRARIES:\n"));
        assert!(text.contains("[stack]") || text.contains("r-xp"));
    }

    #[test]
    fn unwritable_directory_is_an_error_not_a_crash() {
        assert_eq!(
            dump_to_path(b"/nonexistent-dir-for-sampalloc/x.heap"),
            Err(libc::ENOENT)
        );
    }

    /// A fresh directory of this test process.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sampalloc-core-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    fn bytes(p: &std::path::Path) -> &[u8] {
        use std::os::unix::ffi::OsStrExt;
        p.as_os_str().as_bytes()
    }

    #[test]
    fn taken_names_are_neither_followed_nor_truncated() {
        use std::os::unix::fs::symlink;
        let dir = scratch("create-new");
        let target = dir.join("precious");
        std::fs::write(&target, "precious").unwrap();
        let link = dir.join("link.heap");
        symlink(&target, &link).unwrap();
        let dangling = dir.join("dangling.heap");
        symlink(dir.join("made-through-link"), &dangling).unwrap();
        let existing = dir.join("existing.heap");
        std::fs::write(&existing, "existing").unwrap();

        assert_eq!(dump_to_path(bytes(&link)), Err(libc::EEXIST));
        assert_eq!(dump_to_path(bytes(&dangling)), Err(libc::EEXIST));
        assert_eq!(dump_to_path(bytes(&existing)), Err(libc::EEXIST));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&existing).unwrap(), "existing");
        assert!(!dir.join("made-through-link").exists());

        let fresh = dir.join("fresh.heap");
        dump_to_path(bytes(&fresh)).unwrap();
        assert_private_file(&fresh);
        assert!(std::fs::read_to_string(&fresh)
            .unwrap()
            .starts_with("heap profile: "));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `path` is a regular file (not a link) with no permission bits for group or others:
    /// 0600 before the umask, which can only take bits away.
    fn assert_private_file(path: &std::path::Path) {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(path).unwrap();
        assert!(meta.is_file());
        let mode = meta.permissions().mode();
        assert_eq!(mode & 0o7077, 0, "{mode:o}");
    }

    #[test]
    fn peek_side_file_only_when_asked_private_and_of_live_blocks_only() {
        let _options = crate::base::config::hold_options();
        let dir = scratch("peek");
        let marker = b"PEEK-UNIT-MARKER\x01\x02 tail of the block";
        let mut block = vec![0u8; 300];
        block[..marker.len()].copy_from_slice(marker);
        let addr = block.as_ptr() as usize;
        let frames = [0x5151usize, 0x5252, 0x5353];

        // Off (the default): the block is not kept and no side file is written.
        assert_eq!(config::prof_peek(), 0);
        let off = table::record_alloc(core::ptr::null_mut(), &frames, block.len(), 1.0, addr);
        // SAFETY: recorded above with these figures.
        unsafe { table::record_free(off, block.len(), 1.0, addr) };
        let p0 = dir.join("off.heap");
        dump_to_path(bytes(&p0)).unwrap();
        assert!(p0.is_file());
        assert!(!dir.join("off.heap.peek").exists());

        assert_eq!(
            config::set(b"prof_peek", b"257"),
            Err(config::ConfError::BadValue)
        );
        config::set(b"prof_peek", b"256").unwrap();
        assert_eq!(config::prof_peek(), PROF_PEEK_MAX);
        config::set(b"prof_peek", b"24").unwrap();
        let e = table::record_alloc(core::ptr::null_mut(), &frames, block.len(), 1.0, addr);
        let p1 = dir.join("on.heap");
        dump_to_path(bytes(&p1)).unwrap();
        let side = dir.join("on.heap.peek");
        assert_private_file(&side);
        let text = std::fs::read_to_string(&side).unwrap();
        assert!(
            text.starts_with("sampalloc peek 1\npeek_bytes 24\n"),
            "{text}"
        );
        let hex: String = marker[..24].iter().map(|b| format!("{b:02x}")).collect();
        let id = format!("{:#x}", e as usize);
        let line = format!("block {addr:#x} {id} 300 {hex}\n");
        assert!(text.contains(&line), "no {line:?} in\n{text}");
        assert!(
            text.contains(&format!("stack {id} @ 0x5151 0x5252 0x5353\n")),
            "{text}"
        );
        // The profile itself is unchanged by it.
        let profile = std::fs::read_to_string(&p1).unwrap();
        assert!(!profile.contains("peek") && !profile.contains(&hex));

        // Freed: no longer peeked.
        // SAFETY: recorded above with these figures.
        unsafe { table::record_free(e, block.len(), 1.0, addr) };
        let p2 = dir.join("freed.heap");
        dump_to_path(bytes(&p2)).unwrap();
        let text = std::fs::read_to_string(dir.join("freed.heap.peek")).unwrap();
        assert!(!text.contains(&format!("block {addr:#x} ")), "{text}");
        config::set(b"prof_peek", b"0").unwrap();
        drop(block);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_taken_name_moves_the_dump_to_the_next_sequence_number() {
        let _options = crate::base::config::hold_options();
        use std::os::unix::fs::symlink;
        let dir = scratch("next-name");
        let prefix = dir.join("p");
        config::set(b"prof_prefix", bytes(&prefix)).unwrap();
        let pid = std::process::id();
        let name = |seq: u64| dir.join(format!("p.{pid}.{seq}.m.heap"));
        let target = dir.join("precious");
        std::fs::write(&target, "precious").unwrap();

        // The next two names are taken: a symlink and a regular file.
        let first = SEQ.load(Ordering::Relaxed);
        symlink(&target, name(first)).unwrap();
        std::fs::write(name(first + 1), "existing").unwrap();
        let mut out: NameBuf = [0u8; NAME_MAX];
        let len = dump_named(b'm', &mut out).unwrap();
        let written = std::str::from_utf8(&out[..len]).unwrap().to_string();
        assert_eq!(written, name(first + 2).to_str().unwrap());
        assert!(std::fs::symlink_metadata(&written).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(
            std::fs::read_to_string(name(first + 1)).unwrap(),
            "existing"
        );

        // Every name tried is taken: the dump is skipped, and the names it passed over are not
        // handed out again.
        let next = SEQ.load(Ordering::Relaxed);
        for seq in next..next + 2 * NAME_TRIES as u64 {
            symlink(&target, name(seq)).unwrap();
        }
        let (e, _) = dump_named(b'm', &mut out).unwrap_err();
        assert_eq!(e, libc::EEXIST);
        assert!(!dump_named_or_warn(b'm'));
        assert!(SEQ.load(Ordering::Relaxed) >= next + 2 * NAME_TRIES as u64);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        let len = dump_named(b'm', &mut out).unwrap();
        let written = ProfileName::parse(&out[..len]).unwrap();
        assert_eq!(written.prefix, bytes(&prefix));
        assert_eq!(written.pid, pid);
        assert!(written.seq >= next + 2 * NAME_TRIES as u64);

        config::set(b"prof_prefix", b"sampalloc").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
