//! Stacks in heap profiles under `LD_PRELOAD` through code the program did not build: a comparator
//! called by glibc's `qsort`, glibc's `strdup`, zlib's `deflateInit2_` (all built without frame
//! pointers). Each stack starts at the allocating function, never inside the allocator, passes
//! through the library into its caller, and the live bytes under each are estimated within 15 %
//! of the truth; `addr2line` and `jeprof --text` agree.
//!
//! Sources are in `tests/profile/`; the profile reader and the runners are in `tests/common/`
//! (`heap_profile`, `profile_programs`). A tool that is missing (a compiler, java, jeprof, go,
//! zlib's headers) fails the test when `CI` is set (`.ci/run` installs them) and skips it
//! otherwise.

mod common;

use common::heap_profile::{
    assert_stacks_start_at_callers, final_profile, first_names, rows_with, Profile, Row,
};
use common::profile_programs::{cc, have_jeprof, jeprof_text, run_prof, run_tool, MIB, NO_FP};
use common::{command, have, missing, Scratch};
use std::path::Path;
use std::process::Command;

fn have_zlib_headers() -> bool {
    let found = Path::new("/usr/include/zlib.h").exists();
    if !found {
        missing("zlib's headers (zlib1g-dev) are not installed");
    }
    found
}

#[test]
fn stacks_through_glibc_and_zlib() {
    if !have("cc") || !have("nm") || !have("addr2line") || !have_zlib_headers() {
        return;
    }
    let build = Scratch::new("libs");
    let exe = cc(
        &build,
        &["through_libs.c"],
        "through_libs",
        &[NO_FP, &["-lz"]].concat(),
    );
    let out = Scratch::new("libs-out");
    let conf = format!(
        "prof:true,prof_final:true,lg_prof_sample:12,prof_prefix:{}",
        out.path("libs").display()
    );
    let r = run_prof(Command::new(&exe), &conf);
    r.assert_ok("through_libs", "libs ok");
    let compares: f64 = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("compares "))
        .and_then(|n| n.parse().ok())
        .expect("compares printed");
    let path = final_profile(&out.0, &r);
    let p = Profile::read(&path);
    p.assert_header_sums("through_libs");
    assert_stacks_start_at_callers(&p, "through_libs");

    // The comparator, called from inside glibc's qsort: it is the first frame, qsort (or
    // qsort_r, which qsort tail-calls) is further out, then the function that called qsort.
    let cmp: Vec<&Row> = p
        .rows
        .iter()
        .filter(|r| first_names(&p, r, 0).1.iter().any(|n| n == "leaky_compare"))
        .collect();
    assert!(!cmp.is_empty(), "no stack starts in leaky_compare");
    for row in &cmp {
        let names: Vec<Vec<String>> = (0..row.frames.len())
            .map(|i| first_names(&p, row, i).1)
            .collect();
        let q = names
            .iter()
            .position(|n| n.iter().any(|n| n == "qsort" || n == "qsort_r"));
        let caller = names
            .iter()
            .position(|n| n.iter().any(|n| n == "sort_with_leaky_comparator"));
        // Stacks deeper than the recorded maximum lose their outer frames.
        if row.frames.len() < 60 {
            assert!(
                matches!((q, caller), (Some(q), Some(c)) if q > 0 && c == q + 1),
                "leaky_compare's stack should pass through qsort into its caller: {}",
                p.describe(&row.frames)
            );
        }
    }
    let cmp_live: f64 = cmp.iter().map(|r| r.live(p.r)).sum();
    let cmp_truth = compares * 64.0;
    eprintln!(
        "leaky_compare (under qsort): {:.2} MiB estimated, {:.2} MiB true ({:+.1} %)",
        cmp_live / MIB,
        cmp_truth / MIB,
        (cmp_live - cmp_truth) / cmp_truth * 100.0
    );
    assert!(
        (cmp_live - cmp_truth).abs() < 0.15 * cmp_truth,
        "leaky_compare: {cmp_live:.0} estimated, {cmp_truth} true"
    );
    // addr2line agrees on the first frame.
    let (_, vaddr) = p.module_address(cmp[0].frames[0] - 1).unwrap();
    let mut a2l = command("addr2line", ["-f", "-e"]);
    a2l.arg(&exe).arg(format!("{vaddr:#x}"));
    let a = run_tool(a2l);
    assert_eq!(
        a.stdout.lines().next(),
        Some("leaky_compare"),
        "addr2line\n{}",
        a.describe()
    );

    // strdup: glibc's strdup called malloc; its frame comes first, then the caller.
    let dup: Vec<&Row> = p
        .rows
        .iter()
        .filter(|r| {
            first_names(&p, r, 1)
                .1
                .iter()
                .any(|n| n == "duplicate_strings")
        })
        .collect();
    assert!(!dup.is_empty(), "no stack with duplicate_strings second");
    for row in &dup {
        let (file, names) = first_names(&p, row, 0);
        assert!(
            file.starts_with("libc.so") && names.iter().any(|n| n.contains("strdup")),
            "strdup's stack should start in libc's strdup: {}",
            p.describe(&row.frames)
        );
    }
    let dup_live: f64 = dup.iter().map(|r| r.live(p.r)).sum();
    let dup_truth = 50000.0 * 128.0;
    eprintln!(
        "strdup: {:.2} MiB estimated, {:.2} MiB true",
        dup_live / MIB,
        dup_truth / MIB
    );
    assert!(
        (dup_live - dup_truth).abs() < 0.15 * dup_truth,
        "strdup: {dup_live:.0} estimated, {dup_truth} true"
    );

    // zlib: deflateInit2_ allocates through zalloc; the stack starts in libz with
    // deflateInit2_ among its first frames and start_deflaters further out.
    let z = rows_with(&p, "deflateInit2_", 2);
    assert!(!z.is_empty(), "no stack through deflateInit2_");
    for row in &z {
        let (file, _) = first_names(&p, row, 0);
        assert!(
            file.starts_with("libz.so"),
            "a deflateInit2_ stack starts outside libz: {}",
            p.describe(&row.frames)
        );
        assert!(
            (1..4).any(|i| first_names(&p, row, i)
                .1
                .iter()
                .any(|n| n == "start_deflaters")),
            "deflateInit2_'s caller is missing: {}",
            p.describe(&row.frames)
        );
    }
    let z_live: f64 = z.iter().map(|r| r.live(p.r)).sum();
    eprintln!("deflateInit2_: {:.2} MiB live", z_live / MIB);
    // 100 deflate states of window, prev, head and pending buffers (64 KiB each) at least.
    assert!(z_live > 100.0 * 4.0 * 65536.0 * 0.95, "zlib: {z_live:.0}");

    if have_jeprof() {
        let top = jeprof_text(&exe, &path);
        for name in ["deflateInit2_", "leaky_compare", "strdup"] {
            assert!(
                top.iter().take(4).any(|t| t.2.contains(name)),
                "jeprof's top lines should include {name}: {top:?}"
            );
        }
    }
}
