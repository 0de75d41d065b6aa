//! Transparent huge pages (`thp:`): what of ours the kernel backs with huge pages.
//!
//! `tests/preload/thp.c` runs under `LD_PRELOAD`: it allocates and touches 64 MiB, half in large
//! blocks (256 KiB, carved from segments) and half in huge blocks (4 MiB, mappings of their own),
//! keeps them live, and reads `/proc/self/smaps` for the VMAs holding its blocks: their
//! `AnonHugePages` (segments, huge blocks, and VMAs the kernel merged from both) and how many
//! carry the `hg`
//! (`MADV_HUGEPAGE`) and `nh` (`MADV_NOHUGEPAGE`) flags. The statistics report at exit gives
//! the engine's own `thp_resident`. What is asserted follows the kernel's mode
//! (`/sys/kernel/mm/transparent_hugepage/enabled`), read here; no mode skips anything:
//!
//! - `thp:never`: nothing of ours is backed by huge pages, in every mode; in `always` mode our
//!   VMAs say `MADV_NOHUGEPAGE`;
//! - the default (`auto`): in `madvise` mode, with a defrag setting that never compacts on
//!   the spot (`defer`, `never`), the huge blocks are backed by huge pages and segments are not
//!   asked for them; with one that does (`madvise`, the usual one) nothing is asked, nor in
//!   `always` or `never` mode;
//! - `thp:always`: segments are backed by huge pages too (`madvise`/`always` mode), and stay
//!   whole where live blocks remain when the thread that allocated them exits;
//! - a bad value warns once and keeps the default.

mod common;

use common::{command, have, Run, Scratch};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Always,
    Madvise,
    Never,
}

/// The kernel's THP mode; no file means no THP support, which is `never`.
fn kernel_mode() -> Mode {
    match std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") {
        Ok(t) if t.contains("[always]") => Mode::Always,
        Ok(t) if t.contains("[madvise]") => Mode::Madvise,
        _ => Mode::Never,
    }
}

/// Whether the kernel's defrag setting makes a fault in an advised mapping compact memory on
/// the spot (`always`, `madvise`, `defer+madvise`; also an unreadable file).
fn advice_may_stall() -> bool {
    match std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/defrag") {
        Ok(t) => !(t.contains("[defer]") || t.contains("[never]")),
        Err(_) => true,
    }
}

/// What thp.c saw, and what the statistics report said.
#[derive(Debug, Default)]
struct Seen {
    vmas: u64,
    seg_kb: u64,
    huge_kb: u64,
    /// In VMAs holding both (neighbours with the same flags, merged by the kernel).
    mixed_kb: u64,
    hg: u64,
    nh: u64,
    /// `thp_resident:` of the statistics report.
    thp_resident: u64,
    stderr: String,
}

fn field(text: &str, key: &str) -> u64 {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"));
    text[at + key.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key} in:\n{text}"))
}

/// Compiles thp.c once per test and runs it under the preload with `conf` and the report on.
fn run(conf: &str) -> Option<Seen> {
    run_with(conf, &[])
}

/// [`run`], with arguments for thp.c.
fn run_with(conf: &str, args: &[&str]) -> Option<Seen> {
    if !have("cc") {
        return None;
    }
    let scratch = Scratch::new("thp");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/preload");
    let exe = common::compile_in(&src, "cc", &scratch, &["thp.c"], "thp", &[]);
    let conf = if conf.is_empty() {
        "stats_print:true".to_string()
    } else {
        format!("{conf},stats_print:true")
    };
    let r: Run = common::run_conf(command(&exe, args), Some(&conf));
    r.assert_ok("thp.c", "vmas=");
    let seen = Seen {
        vmas: field(&r.stdout, "vmas="),
        seg_kb: field(&r.stdout, "seg_kb="),
        huge_kb: field(&r.stdout, "huge_kb="),
        mixed_kb: field(&r.stdout, "mixed_kb="),
        hg: field(&r.stdout, "hg="),
        nh: field(&r.stdout, "nh="),
        thp_resident: field(&r.stderr, "thp_resident:"),
        stderr: r.stderr,
    };
    assert!(seen.vmas > 0, "thp.c found none of its blocks: {seen:?}");
    Some(seen)
}

#[test]
fn never_backs_nothing_of_ours_with_huge_pages() {
    let Some(s) = run("thp:never") else { return };
    assert_eq!((s.seg_kb, s.huge_kb, s.mixed_kb), (0, 0, 0), "{s:?}");
    assert_eq!(s.thp_resident, 0, "{s:?}");
    assert_eq!(s.hg, 0, "thp:never asked for huge pages: {s:?}");
    assert!(s.stderr.contains("thp: never"), "{}", s.stderr);
    if kernel_mode() == Mode::Always {
        assert_eq!(
            s.nh, s.vmas,
            "in always mode every VMA of ours refuses them: {s:?}"
        );
    } else {
        assert_eq!(s.nh, 0, "no advice needed outside always mode: {s:?}");
    }
}

/// The default asks for huge pages for huge blocks where asking cannot stall a fault; in
/// `always` mode the kernel gives them unasked, and nothing of ours asks.
#[test]
fn the_default_backs_huge_blocks_with_huge_pages() {
    let Some(s) = run("") else { return };
    assert!(s.stderr.contains("thp: auto"), "{}", s.stderr);
    match kernel_mode() {
        Mode::Madvise if advice_may_stall() => {
            assert_eq!(
                s.hg + s.nh,
                0,
                "the default asked, though a fault may compact on the spot: {s:?}"
            );
            assert_eq!((s.seg_kb, s.huge_kb, s.mixed_kb), (0, 0, 0), "{s:?}");
        }
        Mode::Always => {
            assert_eq!(
                s.hg + s.nh,
                0,
                "nothing is to be asked in always mode: {s:?}"
            );
        }
        Mode::Madvise => {
            assert!(s.hg > 0, "the default asked for nothing: {s:?}");
            assert!(
                s.huge_kb > 0,
                "no huge block is backed by huge pages: {s:?}"
            );
            assert!(
                s.thp_resident >= s.huge_kb * 1024,
                "the report's thp_resident misses the huge blocks: {s:?}"
            );
            // Segments are not asked (see config::Thp); in madvise mode that means none, and
            // their VMAs' flags differ from the huge blocks' (nothing merged).
            assert_eq!((s.seg_kb, s.mixed_kb), (0, 0), "{s:?}");
        }
        Mode::Never => {
            assert_eq!(
                s.hg + s.nh,
                0,
                "nothing is to be asked in never mode: {s:?}"
            );
            assert_eq!((s.seg_kb, s.huge_kb, s.thp_resident), (0, 0, 0), "{s:?}");
        }
    }
}

#[test]
fn always_backs_segments_too() {
    let Some(s) = run("thp:always") else { return };
    match kernel_mode() {
        Mode::Madvise | Mode::Always => {
            // 32 MiB of huge blocks and 32 MiB of large blocks: both kinds asked, and more than
            // the huge blocks alone backed.
            let all = s.seg_kb + s.huge_kb + s.mixed_kb;
            assert!(
                s.seg_kb + s.mixed_kb > 0 && s.huge_kb + s.mixed_kb > 0,
                "{s:?}"
            );
            assert!(all > 32 << 10, "{s:?}");
            assert!(s.thp_resident >= all * 1024, "{s:?}");
        }
        Mode::Never => {
            assert_eq!(
                s.hg + s.nh,
                0,
                "nothing is to be asked in never mode: {s:?}"
            );
            assert_eq!((s.seg_kb, s.huge_kb, s.mixed_kb), (0, 0, 0), "{s:?}");
        }
    }
}

/// An arena's only segment leaves the huge page holding its header out of the advice: a small
/// program's heap (1 MiB of large blocks), which fits there, costs no huge page even with
/// `thp:always`.
#[test]
fn always_leaves_a_small_heap_in_small_pages() {
    let Some(s) = run_with("thp:always", &["small"]) else {
        return;
    };
    match kernel_mode() {
        Mode::Madvise => {
            assert_eq!((s.hg, s.seg_kb), (0, 0), "{s:?}");
        }
        // The kernel backs unadvised memory as it likes; we only must not have asked.
        Mode::Always => assert_eq!(s.hg, 0, "{s:?}"),
        Mode::Never => assert_eq!((s.seg_kb, s.hg + s.nh), (0, 0), "{s:?}"),
    }
}

/// A thread that exits leaves its arena's huge pages whole where live blocks remain: its exit
/// gives back free pages at once, but purging those in huge pages still in use would split
/// them, and the next round of threads would fault them in 4 KiB at a time. Half the large
/// blocks stay live, one in two: every huge page of theirs is half used.
#[test]
fn an_exiting_thread_leaves_huge_pages_in_use_whole() {
    let Some(s) = run_with("thp:always", &["exit"]) else {
        return;
    };
    match kernel_mode() {
        Mode::Madvise | Mode::Always => {
            // 16 MiB live, one block in two, over 32 MiB of segments.
            assert!(
                s.seg_kb >= 16 << 10,
                "the exit split the huge pages holding live blocks: {s:?}"
            );
        }
        Mode::Never => assert_eq!((s.seg_kb, s.hg + s.nh), (0, 0), "{s:?}"),
    }
}

#[test]
fn a_bad_value_warns_once_and_keeps_the_default() {
    let Some(s) = run("thp:sometimes") else {
        return;
    };
    let warning = "invalid value in 'thp:sometimes'; keeping the default";
    assert_eq!(s.stderr.matches(warning).count(), 1, "{}", s.stderr);
    assert!(s.stderr.contains("thp: auto"), "{}", s.stderr);
    // The default's advice, as in `the_default_backs_huge_blocks_with_huge_pages`.
    if kernel_mode() == Mode::Madvise && !advice_may_stall() {
        assert!(s.hg > 0 && s.huge_kb > 0, "{s:?}");
    } else {
        assert_eq!(s.hg, 0, "{s:?}");
    }
}
