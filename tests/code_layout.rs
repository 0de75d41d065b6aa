//! The code every process runs is gathered at the start of `libsampalloc.so`'s code, in the
//! section `.text.sampalloc_hot` that `alloc-preload/hot.ld` makes just after `.init`: the
//! C entry points, start-up, the first refill and span, exit, and the PLT that glibc's start-up
//! and exit code calls through. Spread over the library's code, they cost a small program four
//! or five page faults of code; gathered, one or two.
//!
//! The same script puts arena 0's state (and crt's `completed.0`) first in `.bss`, on the page
//! that `.data` ends on, which the loader has written already.
//!
//! The script names functions by their paths; a function renamed or moved to another module
//! falls out of the list silently. This test names the start-up path's functions the same way
//! and fails if one is missing from the library or lies outside the section.

mod common;

use common::profile_programs::run_tool;
use common::{command, preload_lib};

/// Addresses of the defined symbols of `nm --defined-only`'s listing whose kind is one of
/// `kinds` and whose name `matches`.
fn addresses(listing: &str, kinds: &str, matches: impl Fn(&str) -> bool) -> Vec<u64> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let addr = u64::from_str_radix(fields.next()?, 16).ok()?;
            let kind = fields.next()?;
            let name = fields.next()?;
            (kinds.contains(kind) && matches(name)).then_some(addr)
        })
        .collect()
}

/// `(address, size)` of section `name` in `readelf -SW`'s listing.
fn section(listing: &str, name: &str) -> Option<(u64, u64)> {
    listing.lines().find_map(|line| {
        let rest = line.split_once(']')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() != Some(&name) {
            return None;
        }
        let hex = |s: &str| u64::from_str_radix(s, 16).ok();
        Some((hex(fields.get(2)?)?, hex(fields.get(4)?)?))
    })
}

/// Symbols of the start-up path, as a substring of their mangled names (legacy Rust mangling,
/// `<len><name>` per path segment) or an exact C name.
const START_UP: &[&str] = &[
    "malloc",
    "free",
    "calloc",
    "realloc",
    "pthread_atfork",
    "frame_dummy",
    "14sampalloc_core7process4init9init_slow17h",
    "14sampalloc_core7process4init7at_exit17h",
    "14sampalloc_core6thread4init17h",
    "14sampalloc_core3api5alloc10alloc_slow17h",
    "14sampalloc_core3api5alloc11alloc_class17h",
    "14sampalloc_core4pool5arena5Arena10fill_small17h",
    "14sampalloc_core4span9page_heap8PageHeap15alloc_with_room17h",
    "14sampalloc_core4base4meta5alloc17h",
    "14sampalloc_core8platform10fork_guard16before_lock_slow17h",
    "9sampalloc6atfork15note_interposer17h",
];

#[test]
fn start_up_code_and_arena_0_lie_where_the_script_puts_them() {
    let lib = preload_lib();
    let sections = run_tool(command("readelf", ["-SW".as_ref(), lib.as_os_str()]));
    assert!(
        sections.status.success(),
        "readelf -SW failed:\n{}",
        sections.stderr
    );
    let (hot, hot_size) = section(&sections.stdout, ".text.sampalloc_hot")
        .unwrap_or_else(|| panic!("no .text.sampalloc_hot in:\n{}", sections.stdout));
    assert!(
        section(&sections.stdout, ".plt").is_none(),
        "the PLT is a section of its own, outside the hot code:\n{}",
        sections.stdout
    );
    // Two 64 KiB windows of code at most (the first starts at `.init`, a page before).
    assert!(
        hot_size <= 124 << 10,
        "the hot section has grown to {hot_size} bytes"
    );

    let symbols = run_tool(command("nm", ["--defined-only".as_ref(), lib.as_os_str()]));
    assert!(symbols.status.success(), "nm failed:\n{}", symbols.stderr);
    for wanted in START_UP {
        let exact = !wanted.contains("17h");
        let found = addresses(&symbols.stdout, "tT", |name| {
            if exact {
                name == *wanted
            } else {
                name.contains(wanted)
            }
        });
        assert!(
            !found.is_empty(),
            "{wanted}: no such function in {}",
            lib.display()
        );
        for addr in found {
            assert!(
                (hot..hot + hot_size).contains(&addr),
                "{wanted} at {addr:#x} lies outside .text.sampalloc_hot ({hot:#x}, {hot_size} \
                 bytes): update alloc-preload/hot.ld"
            );
        }
    }

    // Arena 0's counters, bins, page heap and mini slabs' page (its first `ARENA_HOT_BYTES`)
    // and crt's flag lie on the page `.data` ends on.
    let (data, data_size) = section(&sections.stdout, ".data")
        .unwrap_or_else(|| panic!("no .data in:\n{}", sections.stdout));
    let data_page = (data + data_size - 1) >> 12;
    let arenas = addresses(&symbols.stdout, "bB", |name| {
        name.contains("14sampalloc_core4pool5arena6ARENAS17h")
    });
    let flag = addresses(&symbols.stdout, "bB", |name| name == "completed.0");
    assert_eq!(arenas.len(), 1, "the arenas' table: {arenas:x?}");
    assert!(
        (arenas[0] + sampalloc_core::ARENA_HOT_BYTES as u64 - 1) >> 12 == data_page
            && flag.iter().all(|a| a >> 12 == data_page),
        "arena 0 ({:#x}) or completed.0 ({flag:x?}) is off .data's last page ({data_page:#x}): \
         update alloc-preload/hot.ld",
        arenas[0]
    );
}
