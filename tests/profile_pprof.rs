//! `sampalloc::profile::pprof()`, the Rust route: this test binary runs on `SampAlloc` with
//! the profiler on, leaks a known amount in one function among churn that it frees, and reads
//! the gzipped pprof the function returns with the prost types of the encoder: Go's sample
//! types, the leak's bytes within sampling error, mappings with the loaded files' names and
//! GNU build IDs that say they have no functions (for the server to symbolize), no frame of the
//! allocator or the profiler in any stack; and `go tool pprof -top` reads the bytes.
//!
//! Sampling error: at a 4 KiB mean interval 8 MiB is about 2000 samples, one standard deviation
//! about 2.2 %, so ±10 % is over four.

mod common;

use common::pprof::{check_shape, decode, is_sampalloc_function, mapping_at, s};
use common::{churn, command, have, Scratch};
use sampalloc::SampAlloc;
use std::alloc::Layout;
use std::path::Path;

#[global_allocator]
static GLOBAL: SampAlloc = SampAlloc;

const LEAK_BYTES: usize = 8 << 20;
const BLOCK: usize = 4000;

fn layout() -> Layout {
    Layout::from_size_align(BLOCK, 8).unwrap()
}

#[inline(never)]
fn leak(out: &mut Vec<*mut u8>) {
    for _ in 0..LEAK_BYTES / BLOCK {
        // SAFETY: non-zero layout; the block is kept by the caller and freed at the end.
        out.push(unsafe { std::alloc::alloc(layout()) });
    }
}

/// The functions of this binary (`nm -C -S`): (start, size, demangled name).
fn functions(exe: &Path) -> Vec<(u64, u64, String)> {
    let mut c = command("nm", ["-C", "-S", "--defined-only"]);
    c.arg(exe);
    let r = common::profile_programs::run_tool(c);
    assert!(r.status.success(), "nm failed\n{}", r.describe());
    r.stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, ' ');
            let start = u64::from_str_radix(f.next()?, 16).ok()?;
            let size = u64::from_str_radix(f.next()?, 16).ok()?;
            let kind = f.next()?;
            let name = f.next()?.to_string();
            (kind == "t" || kind == "T").then_some((start, size, name))
        })
        .collect()
}

#[test]
fn pprof_of_the_live_heap_has_the_leak_build_ids_and_no_allocator_frames() {
    sampalloc::configure("prof:true,prof_active:true,lg_prof_sample:12").unwrap();
    churn(200);
    let mut kept = Vec::with_capacity(LEAK_BYTES / BLOCK);
    leak(&mut kept);
    churn(2000);

    let bytes = sampalloc::profile::pprof().unwrap();
    let prof = decode(&bytes);
    check_shape(&prof, 4096);
    assert!(prof.time_nanos > 0);
    assert!(prof.function.is_empty(), "not symbolized in-process");

    // The mappings: the loaded files, with build IDs, saying they have no functions.
    let exe = std::env::current_exe().unwrap();
    assert!(!prof.mapping.is_empty());
    for m in &prof.mapping {
        assert!(
            !m.has_functions && !m.has_filenames && !m.has_line_numbers && !m.has_inline_frames,
            "{m:?}"
        );
    }
    let libc = prof
        .mapping
        .iter()
        .find(|m| s(&prof, m.filename).contains("libc.so"))
        .expect("libc's mapping");
    assert!(s(&prof, libc.build_id).len() >= 16, "{libc:?}");

    // The leak: samples whose first frame is a call inside `leak`, in this binary's mapping.
    let f = leak as *const () as u64;
    let mut leaked = 0i64;
    let mut n = 0;
    for sample in &prof.sample {
        let first = prof
            .location
            .iter()
            .find(|l| l.id == sample.location_id[0])
            .unwrap();
        if first.address > f && first.address - f < 2048 {
            leaked += sample.value[3];
            n += 1;
            let m = mapping_at(&prof, first.address).expect("the binary's mapping");
            assert_eq!(first.mapping_id, m.id);
            assert_eq!(Path::new(s(&prof, m.filename)), exe, "{m:?}");
            let id = s(&prof, m.build_id);
            assert!(
                id.len() >= 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id:?}"
            );
        }
    }
    let err = (leaked as f64 - LEAK_BYTES as f64) / LEAK_BYTES as f64;
    assert!(
        n > 0 && err.abs() < 0.10,
        "leak: {leaked} inuse bytes in {n} stacks, truth {LEAK_BYTES} ({:+.1} %)",
        err * 100.0
    );

    // No location lies in a function of the allocator or the profiler (sampalloc's engine,
    // `SampAlloc`'s methods, Rust's allocation shims, `profile::pprof` itself). Rust's own
    // container code above them (`RawVec` growth) is the program's and stays: unlike the CLI,
    // which drops it by name, the process has no names to go by.
    if have("nm") {
        let own: Vec<(u64, u64, String)> = functions(&exe)
            .into_iter()
            .filter(|(_, size, name)| *size > 0 && is_sampalloc_function(name))
            .collect();
        assert!(
            own.iter().any(|f| f.2.contains("SampAlloc")),
            "nm finds SampAlloc's methods: {own:?}"
        );
        let m = mapping_at(&prof, f).unwrap();
        // Addresses in the file: the mapping's start is the page at its offset.
        let bias = m.memory_start - m.file_offset;
        let text_skew = text_vaddr_minus_offset(&exe);
        for l in &prof.location {
            if l.mapping_id != m.id {
                continue;
            }
            let vaddr = l.address - bias + text_skew;
            if let Some(hit) = own
                .iter()
                .find(|(a, size, _)| *a <= vaddr && vaddr < a + size)
            {
                panic!("{:#x} is in {}", l.address, hit.2);
            }
        }
        // The check can fail: `leak`'s own address is found in the list of functions.
        let leak_vaddr = f - bias + text_skew;
        assert!(functions(&exe)
            .iter()
            .any(|(a, size, name)| *a <= leak_vaddr
                && leak_vaddr < a + size
                && name.ends_with("profile_pprof::leak")));
    }

    // go tool pprof reads the bytes (a failure under CI when go is missing).
    if have("go") {
        let dir = Scratch::new("rust-pprof");
        let file = dir.path("heap.pb.gz");
        std::fs::write(&file, &bytes).unwrap();
        let r =
            common::profile_programs::go_pprof([std::ffi::OsStr::new("-top"), file.as_os_str()]);
        eprintln!("go tool pprof -top:\n{}", r.stdout);
        assert!(r.stdout.contains("Type: inuse_space"), "{}", r.stdout);
        assert!(r.stdout.contains("Showing nodes"), "{}", r.stdout);
    }

    // Go's /debug/pprof/symbol protocol: the probe, then names for exported code only.
    assert_eq!(sampalloc::profile::pprof_symbol(""), "num_symbols: 1\n");
    let libc_addr = libc::getpid as *const () as usize + 1;
    let answer = sampalloc::profile::pprof_symbol(&format!("{libc_addr:#x}+0x10"));
    let lines: Vec<&str> = answer.lines().collect();
    assert_eq!(lines.len(), 2, "the probe line and getpid only: {answer}");
    assert_eq!(lines[0], "num_symbols: 1");
    let (addr, name) = lines[1].split_once(' ').unwrap();
    assert_eq!(addr, format!("{libc_addr:#x}"));
    assert!(name.ends_with("getpid"), "{answer}"); // getpid or its alias __getpid

    for p in kept {
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(p, layout()) };
    }
    sampalloc::profile::set_active(false);
}

/// `p_vaddr - p_offset` of the executable's text segment (`readelf -lW`): what turns a file
/// offset in it into a link-time address.
fn text_vaddr_minus_offset(exe: &Path) -> u64 {
    let mut c = command("readelf", ["-lW"]);
    c.arg(exe);
    let r = common::profile_programs::run_tool(c);
    assert!(r.status.success(), "{}", r.describe());
    r.stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"LOAD") && f.len() >= 8 && f[6] == "R" && f[7] == "E")
        .map(|f| {
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            hex(f[2]) - hex(f[1])
        })
        .expect("an R E LOAD segment")
}
