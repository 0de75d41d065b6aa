//! `sampalloc explain` on programs whose RSS is mostly one known kind (`tests/profile/
//! rss_parts.c`), each run under the preload with `prof:true,prof_final:true` and its profiles
//! in a scratch directory: 64-byte blocks all kept are live data (a leak candidate, live within
//! 10 % of the truth); the same blocks with 15 of every 16 freed, so that every page keeps live
//! ones, are fragmentation (free in the allocator within 15 % of what was freed); a touched
//! anonymous mapping of the program's own is outside malloc (within 10 %). The final profile
//! still reads as a heap profile, its memory map is the private side file `<profile>.mem`, and
//! `sampalloc run`'s report ends with the verdict. A C compiler is required under CI.

mod common;

use common::profile_programs::{cc, run_prof};
use common::{have, missing, preload_lib, Scratch};
use std::path::{Path, PathBuf};
use std::process::Command;

fn sampalloc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sampalloc"))
}

/// The program, or None (after `missing`) without a C compiler.
fn program(scratch: &Scratch) -> Option<PathBuf> {
    if !have("cc") {
        missing("no C compiler (cc)");
        return None;
    }
    Some(cc(scratch, &["rss_parts.c"], "rss_parts", &[]))
}

/// The figure `key` the program printed.
fn truth(stdout: &str, key: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no '{key}' in the program's output:\n{stdout}"))
}

/// Runs `exe mode mib` under the preload; returns its output and its final profile.
fn run(exe: &Path, scratch: &Scratch, mode: &str, mib: u32) -> (String, PathBuf) {
    let dir = scratch.path(&format!("{mode}-{mib}"));
    std::fs::create_dir(&dir).unwrap();
    let conf = format!(
        "prof:true,prof_final:true,prof_prefix:{}",
        dir.join("p").display()
    );
    let mut cmd = Command::new(exe);
    cmd.args([mode, &mib.to_string()]);
    let r = run_prof(cmd, &conf);
    assert!(r.status.success(), "{mode}: {}", r.describe());
    let finals: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".f.heap"))
        .collect();
    assert_eq!(finals.len(), 1, "{mode}: one final profile in {dir:?}");
    (r.stdout, finals[0].clone())
}

fn explain_json(profile: &Path) -> serde_json::Value {
    let o = sampalloc()
        .args(["explain", "--json"])
        .arg(profile)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "explain failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    for k in [
        "rss",
        "live",
        "allocator_free",
        "metadata",
        "outside_malloc",
        "file_backed",
    ] {
        assert!(v[k].is_i64(), "{k} missing: {out}");
    }
    // The parts add up to RSS (the kernel's two files are read one after the other).
    let parts: i64 = [
        "live",
        "allocator_free",
        "metadata",
        "outside_malloc",
        "file_backed",
    ]
    .iter()
    .map(|k| v[*k].as_i64().unwrap())
    .sum();
    let rss = v["rss"].as_i64().unwrap();
    assert!(
        (parts - rss).abs() < 4 << 20,
        "parts {parts} vs rss {rss}: {out}"
    );
    v
}

fn within(what: &str, got: f64, want: f64, tolerance: f64, v: &serde_json::Value) {
    assert!(
        (got - want).abs() <= tolerance * want,
        "{what}: {got} vs the truth {want} (more than {:.0} % off)\n{v:#}",
        tolerance * 100.0
    );
}

#[test]
fn the_verdict_names_the_kind_of_memory_that_fills_rss() {
    let scratch = Scratch::new("explain");
    let Some(exe) = program(&scratch) else {
        return;
    };

    let (out, profile) = run(&exe, &scratch, "keep", 64);
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(text.starts_with("heap profile: ") && !text.contains("sampalloc memory"));
    let side = PathBuf::from(format!("{}.mem", profile.display()));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::symlink_metadata(&side)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7077, 0, "side file mode {mode:o}");
    }
    let v = explain_json(&profile);
    assert_eq!(v["verdict"], "leak", "{v:#}");
    within(
        "live",
        v["live"].as_f64().unwrap(),
        truth(&out, "live"),
        0.10,
        &v,
    );
    assert!(v["message"]
        .as_str()
        .unwrap()
        .starts_with("live data: a leak candidate, see top"));

    let (out, profile) = run(&exe, &scratch, "fragment", 64);
    let v = explain_json(&profile);
    assert_eq!(v["verdict"], "fragmentation", "{v:#}");
    let freed = truth(&out, "freed");
    within(
        "allocator_free",
        v["allocator_free"].as_f64().unwrap(),
        freed,
        0.15,
        &v,
    );
    let partial = v["allocator_free_by_kind"]["partial_pages"]
        .as_f64()
        .unwrap();
    within(
        "free inside pages with live blocks",
        partial,
        freed,
        0.15,
        &v,
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("free inside pages that still hold live blocks"),
        "{v:#}"
    );

    let (out, profile) = run(&exe, &scratch, "mmap", 96);
    let v = explain_json(&profile);
    assert_eq!(v["verdict"], "outside", "{v:#}");
    within(
        "outside_malloc",
        v["outside_malloc"].as_f64().unwrap(),
        truth(&out, "mapped"),
        0.10,
        &v,
    );
    assert!(v["message"]
        .as_str()
        .unwrap()
        .starts_with("most of RSS is outside malloc"));

    let text = sampalloc().arg("explain").arg(&profile).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("outside malloc (anonymous)"), "{text}");
    assert!(
        text.contains("Verdict: most of RSS is outside malloc"),
        "{text}"
    );
}

#[test]
fn growth_between_two_profiles_is_broken_down() {
    let scratch = Scratch::new("explain-growth");
    let Some(exe) = program(&scratch) else {
        return;
    };
    // Two runs stand in for two dumps of one process: from a small leak to a large one, what
    // grew is live data.
    let (small, early) = run(&exe, &scratch, "keep", 8);
    let (large, late) = run(&exe, &scratch, "keep", 48);
    let o = sampalloc()
        .args(["explain", "--json"])
        .arg(&late)
        .arg(&early)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(v["verdict"], "leak", "{v:#}");
    assert_eq!(v["growth"]["verdict"], "leak", "{v:#}");
    let grew = truth(&large, "live") - truth(&small, "live");
    within(
        "live growth",
        v["growth"]["live"].as_f64().unwrap(),
        grew,
        0.10,
        &v,
    );
    assert!(
        v["message"].as_str().unwrap().starts_with("RSS grew +"),
        "{v:#}"
    );
}

#[test]
fn sampalloc_run_ends_with_the_verdict() {
    let scratch = Scratch::new("explain-run");
    let Some(exe) = program(&scratch) else {
        return;
    };
    let o = sampalloc()
        .env("SAMPALLOC_LIB", preload_lib())
        .arg("run")
        .arg("--out")
        .arg(scratch.path("profiles"))
        .arg("--")
        .arg(&exe)
        .args(["fragment", "32"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.starts_with("sampalloc: verdict: fragmentation: "),
        "the report's last line is {last:?}:\n{err}"
    );
}
