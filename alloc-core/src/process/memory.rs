//! The memory map at each dump: the text of a profile's side file `<profile>.mem` (see
//! `prof::heap_v2`), registered as its writer at start-up.
//!
//! It records the process's memory as the kernel sees it, from `/proc/self/smaps_rollup`
//! (totals) and `/proc/self/smaps` (per mapping), and the engine's own figures
//! ([`stats::snapshot`]). One `key value` line each, bytes:
//!
//! ```text
//! sampalloc memory 1
//! kernel.rss 87654400            smaps_rollup: Rss, Pss, Anonymous, Swap
//! map.allocator.rss 71303168     the engine's segments (resident pages, by mincore), plus
//!                                its huge mappings and metadata (counted as mapped)
//! map.anon.rss 2097152           other anonymous mappings ([heap], [anon:…], unnamed)
//! map.stack.rss 135168           [stack], mappings named as stacks, and anonymous mappings
//!                                just above a small PROT_NONE guard (thread stacks)
//! map.file.rss 12345678          file-backed mappings (and the kernel's [vdso] and such)
//! engine.allocated 67108864      … and the other `engine.*` fields of the snapshot
//! ```
//!
//! `kernel.anon_huge` is the process's anonymous memory in transparent huge pages
//! (smaps_rollup's AnonHugePages) and `map.allocator.anon_huge` the part of it in the engine's
//! own mappings (segments and huge blocks, as `stats::thp_resident` reads it).
//!
//! Each `map.*.rss` has a `map.*.pss` beside it (for the allocator, the PSS of the mappings
//! that hold its segments, shared out by their resident pages). Nothing here allocates: the
//! files are read with raw calls into fixed buffers and parsed line by line as they stream.

use crate::addr::registry;
use crate::addr::segment::SEGMENT_SIZE;
use crate::base::meta;
use crate::platform::os::{self, Line, PAGE_SIZE};
use crate::platform::smaps::{field, header};
use crate::pool::huge;
use crate::process::stats;
use crate::prof::heap_v2::{self, Sink};
use core::sync::atomic::Ordering::Relaxed;

/// Registers [`write`] as the writer of profiles' side files.
pub fn install() {
    heap_v2::set_mem_writer(write);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Anon,
    Stack,
    File,
}

/// RSS and PSS per kind of mapping (bytes).
#[derive(Default)]
struct Totals {
    allocator: [u64; 2],
    anon: [u64; 2],
    stack: [u64; 2],
    file: [u64; 2],
}

/// The mapping being read, and what is known of the one before it.
struct Vma {
    start: usize,
    end: usize,
    kind: Kind,
    writable: bool,
    rss: u64,
    pss: u64,
    /// The previous mapping was an anonymous `---p` one ending at `start`, at most 1 MiB long:
    /// a stack guard.
    after_guard: bool,
}

/// Resident bytes of the engine's segments within `[start, end)` (mincore; a segment unmapped
/// meanwhile counts nothing).
fn segment_resident(start: usize, end: usize) -> u64 {
    let mut vec = [0u8; SEGMENT_SIZE / PAGE_SIZE];
    let mut chunk = start & !(SEGMENT_SIZE - 1);
    let mut resident = 0u64;
    while chunk < end {
        if registry::is_segment(chunk) {
            let lo = chunk.max(start);
            let hi = (chunk + SEGMENT_SIZE).min(end);
            // SAFETY: `vec` holds one byte per page of at most one segment; mincore only
            // reads the page tables (an unmapped range is ENOMEM, not a fault).
            let r = unsafe { libc::mincore(lo as *mut libc::c_void, hi - lo, vec.as_mut_ptr()) };
            if r == 0 {
                let pages = (hi - lo).div_ceil(PAGE_SIZE);
                resident +=
                    vec[..pages].iter().filter(|b| **b & 1 != 0).count() as u64 * PAGE_SIZE as u64;
            }
        }
        chunk += SEGMENT_SIZE;
    }
    resident
}

fn finish(v: &Vma, t: &mut Totals) {
    let slot = match v.kind {
        Kind::File => &mut t.file,
        Kind::Stack => &mut t.stack,
        Kind::Anon => {
            let ours = segment_resident(v.start, v.end).min(v.rss);
            if ours > 0 {
                let pss = if v.rss == 0 {
                    0
                } else {
                    (v.pss as u128 * ours as u128 / v.rss as u128) as u64
                };
                t.allocator[0] += ours;
                t.allocator[1] += pss;
                t.anon[0] += v.rss - ours;
                t.anon[1] += v.pss.saturating_sub(pss);
                return;
            }
            if v.after_guard && v.writable {
                &mut t.stack
            } else {
                &mut t.anon
            }
        }
    };
    slot[0] += v.rss;
    slot[1] += v.pss;
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn kind_of(name: &[u8]) -> Kind {
    if name.is_empty() || name == b"[heap]" || name.starts_with(b"[anon") {
        if contains(name, b"stack") {
            Kind::Stack
        } else {
            Kind::Anon
        }
    } else if name.starts_with(b"[stack") {
        Kind::Stack
    } else {
        // Files, and the kernel's own pages ([vdso], [vvar], [vsyscall]).
        Kind::File
    }
}

fn read_smaps() -> Totals {
    let mut t = Totals::default();
    let mut cur: Option<Vma> = None;
    // (end, is a small anonymous ---p mapping) of the last mapping.
    let mut prev_guard: (usize, bool) = (0, false);
    os::for_each_line(c"/proc/self/smaps", |line| {
        if let Some(h) = header(line) {
            if let Some(v) = cur.take() {
                finish(&v, &mut t);
            }
            let kind = kind_of(h.name);
            cur = Some(Vma {
                start: h.start,
                end: h.end,
                kind,
                writable: h.perms.get(1) == Some(&b'w'),
                rss: 0,
                pss: 0,
                after_guard: prev_guard.1 && prev_guard.0 == h.start,
            });
            let guard =
                h.name.is_empty() && h.perms.starts_with(b"---") && h.end - h.start <= 1 << 20;
            prev_guard = (h.end, guard);
        } else if let Some(v) = cur.as_mut() {
            if let Some(b) = field(line, b"Rss") {
                v.rss = b;
            } else if let Some(b) = field(line, b"Pss") {
                v.pss = b;
            }
        }
    });
    if let Some(v) = cur.take() {
        finish(&v, &mut t);
    }
    // Huge blocks and metadata live in their own anonymous mappings: counted as the engine's
    // (as mapped, an upper bound), and taken out of the other anonymous memory.
    let extra = (huge::MAPPED.load(Relaxed) + meta::mapped()) as u64;
    let moved = extra.min(t.anon[0]);
    t.anon[0] -= moved;
    t.allocator[0] += moved;
    let pss_moved = moved.min(t.anon[1]);
    t.anon[1] -= pss_moved;
    t.allocator[1] += pss_moved;
    t
}

/// Writes the side file's text (see the module docs) to `sink`.
pub fn write(sink: &mut dyn Sink) -> bool {
    let s = stats::snapshot();
    let mut rollup = [0u64; 5];
    os::for_each_line(c"/proc/self/smaps_rollup", |line| {
        for (v, key) in
            rollup
                .iter_mut()
                .zip([&b"Rss"[..], b"Pss", b"Anonymous", b"Swap", b"AnonHugePages"])
        {
            if let Some(b) = field(line, key) {
                *v = b;
            }
        }
    });
    let t = read_smaps();
    let mut ok = sink.write_all(b"sampalloc memory 1\n");
    let mut put = |key: &str, v: u64| {
        let mut l = Line::new();
        l.str(key).str(" ").dec(v).str("\n");
        ok &= sink.write_all(l.as_bytes());
    };
    put("kernel.rss", rollup[0]);
    put("kernel.pss", rollup[1]);
    put("kernel.anonymous", rollup[2]);
    put("kernel.swap", rollup[3]);
    put("kernel.anon_huge", rollup[4]);
    put("map.allocator.anon_huge", stats::thp_resident() as u64);
    for (name, v) in [
        ("allocator", t.allocator),
        ("anon", t.anon),
        ("stack", t.stack),
        ("file", t.file),
    ] {
        let mut key = Line::new();
        key.str("map.").str(name).str(".rss");
        put(core::str::from_utf8(key.as_bytes()).unwrap_or("map"), v[0]);
        let mut key = Line::new();
        key.str("map.").str(name).str(".pss");
        put(core::str::from_utf8(key.as_bytes()).unwrap_or("map"), v[1]);
    }
    for (key, v) in [
        ("engine.allocated", s.allocated),
        ("engine.active", s.active),
        ("engine.resident", s.resident),
        ("engine.mapped", s.mapped),
        ("engine.metadata", s.metadata),
        ("engine.dirty", s.dirty),
        ("engine.tcache_cached", s.tcache_cached),
        ("engine.empty_slab", s.empty_slab),
        ("engine.huge_allocated", s.huge_allocated),
        ("engine.huge_cached", s.huge_cached),
        ("engine.huge_mapped", huge::MAPPED.load(Relaxed)),
    ] {
        put(key, v as u64);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    struct VecSink(Vec<u8>);
    impl Sink for VecSink {
        fn write_all(&mut self, b: &[u8]) -> bool {
            self.0.extend_from_slice(b);
            true
        }
    }

    fn value(text: &str, key: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
    }

    #[test]
    fn parses_fields_and_headers() {
        assert_eq!(
            field(b"Rss:                 132 kB", b"Rss"),
            Some(132 * 1024)
        );
        assert_eq!(field(b"Pss_Dirty:  4 kB", b"Pss"), None);
        let h = header(b"7f00a000-7f00b000 rw-p 00000000 00:00 0          [stack]").unwrap();
        assert_eq!((h.start, h.end), (0x7f00a000, 0x7f00b000));
        assert_eq!(h.name, b"[stack]");
        assert!(header(b"AnonHugePages:         0 kB").is_none());
        assert!(header(b"VmFlags: rd wr mr mw me ac sd").is_none());
        assert!(kind_of(b"") == Kind::Anon && kind_of(b"/usr/lib/libc.so.6") == Kind::File);
        assert!(kind_of(b"[anon: glibc: pthread stack: 12]") == Kind::Stack);
    }

    #[test]
    fn a_touched_anonymous_mapping_is_outside_and_the_parts_add_up() {
        const LEN: usize = 32 << 20;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: the mapping is LEN bytes long and writable.
        unsafe { core::ptr::write_bytes(p.cast::<u8>(), 1, LEN) };
        let mut sink = VecSink(Vec::new());
        assert!(write(&mut sink));
        // SAFETY: mapped above.
        unsafe { libc::munmap(p, LEN) };
        let text = String::from_utf8(sink.0).unwrap();
        assert!(text.starts_with("sampalloc memory 1\n"), "{text}");
        let rss = value(&text, "kernel.rss");
        let anon = value(&text, "map.anon.rss");
        // Other tests of this binary mark chunks in the segment map (some at made-up
        // addresses), so part of the mapping may be counted as the allocator's: together they
        // hold it all.
        let ours = value(&text, "map.allocator.rss");
        assert!(anon + ours >= LEN as u64, "{text}");
        let parts: u64 = ["allocator", "anon", "stack", "file"]
            .iter()
            .map(|k| value(&text, &format!("map.{k}.rss")))
            .sum();
        // The two files are read one after the other: allow for some drift.
        let drift = parts.abs_diff(rss);
        assert!(drift < 4 << 20, "parts {parts} vs rss {rss}\n{text}");
    }

    #[test]
    fn every_dump_gets_a_private_side_file_and_the_profile_is_unchanged() {
        use std::os::unix::fs::PermissionsExt;
        install();
        let dir = std::env::temp_dir().join(format!("sampalloc-core-{}-mem", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let profile = dir.join("p.heap");
        heap_v2::dump_to_path(profile.to_str().unwrap().as_bytes()).unwrap();
        let text = std::fs::read_to_string(&profile).unwrap();
        assert!(text.starts_with("heap profile: ") && !text.contains("sampalloc memory"));
        let side = dir.join("p.heap.mem");
        let meta = std::fs::symlink_metadata(&side).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o7077, 0);
        let mem = std::fs::read_to_string(&side).unwrap();
        assert!(mem.starts_with("sampalloc memory 1\n"), "{mem}");
        assert!(value(&mem, "kernel.rss") > 0);
        assert!(value(&mem, "map.allocator.anon_huge") <= value(&mem, "kernel.anon_huge"));
        // A taken side-file name is left alone; the profile is still written.
        let second = dir.join("q.heap");
        std::fs::write(dir.join("q.heap.mem"), "mine").unwrap();
        heap_v2::dump_to_path(second.to_str().unwrap().as_bytes()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("q.heap.mem")).unwrap(),
            "mine"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
