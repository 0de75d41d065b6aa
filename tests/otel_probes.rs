//! OpenTelemetry's memory probes (`otel_memory:alloc(ptr, size, weight)` and
//! `otel_memory:free(ptr)`), read the way a tracer reads them, without root: `gdb -batch` sets
//! breakpoints on the probes (`break -probe-stap`), which raises their USDT semaphores (a probe
//! whose semaphore is down is skipped, so every hit below also shows the semaphore works), and
//! prints their arguments.
//!
//! - `readelf -n` shows one note per probe in `libsampalloc.so` and in a program on `SampAlloc`,
//!   each with a semaphore, and the arguments in the ABI's argument registers (the OTel
//!   profiler's first version reads them from there, not from the notes' descriptors).
//! - Under the preload, a C program with known allocations (`tests/profile/otel_known.c`):
//!   the alloc weights add up to the bytes it asked for, within sampling error; every free names
//!   a block announced before and not yet freed; with the profiler off nothing fires.
//! - The Rust route: this test binary runs on `SampAlloc` and the same holds for it.
//!
//! Sampling error: the mean interval is 32 KiB, so the C program's 91 MB give about 2000
//! samples (its blocks are at most 4 KB: each is sampled with probability about size/32 KiB);
//! one standard deviation of the sum is then about 2.3 %, and the bound of ±10 % is over four.

mod common;

use common::profile_programs::{cc, run_tool};
use common::{command, have, preload_lib, Run, Scratch};
use sampalloc::SampAlloc;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

#[global_allocator]
static GLOBAL: SampAlloc = SampAlloc;

/// The configuration the probe runs use: the profiler on, a sample every 32 KiB on average.
const CONF: &str = "prof:true,lg_prof_sample:15";

/// The argument descriptors the contract's first reader expects.
#[cfg(target_arch = "x86_64")]
const ALLOC_ARGS: &str = "-8@%rdi -8@%rsi -8@%rdx";
#[cfg(target_arch = "x86_64")]
const FREE_ARGS: &str = "-8@%rdi";
#[cfg(target_arch = "aarch64")]
const ALLOC_ARGS: &str = "-8@x0 -8@x1 -8@x2";
#[cfg(target_arch = "aarch64")]
const FREE_ARGS: &str = "-8@x0";

/// One `stapsdt` note as `readelf -n` prints it.
#[derive(Debug)]
struct Note {
    provider: String,
    name: String,
    semaphore: u64,
    args: String,
}

fn notes(object: &Path) -> Vec<Note> {
    let r = run_tool(command("readelf", ["-n".as_ref(), object.as_os_str()]));
    assert!(r.status.success(), "readelf -n failed:\n{}", r.stderr);
    let mut out: Vec<Note> = Vec::new();
    for line in r.stdout.lines().map(str::trim) {
        if let Some(p) = line.strip_prefix("Provider: ") {
            out.push(Note {
                provider: p.to_string(),
                name: String::new(),
                semaphore: 0,
                args: String::new(),
            });
        } else if let Some(note) = out.last_mut() {
            if let Some(n) = line.strip_prefix("Name: ") {
                note.name = n.to_string();
            } else if let Some((_, s)) = line.split_once("Semaphore: ") {
                note.semaphore = u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            } else if let Some(a) = line.strip_prefix("Arguments: ") {
                note.args = a.to_string();
            }
        }
    }
    out
}

/// The object has exactly the contract's two probes, each behind a semaphore.
fn assert_contract_notes(object: &Path) {
    let notes: Vec<Note> = notes(object)
        .into_iter()
        .filter(|n| n.provider == "otel_memory")
        .collect();
    let what = object.display();
    assert_eq!(notes.len(), 2, "{what}: otel_memory notes {notes:?}");
    for (name, args) in [("alloc", ALLOC_ARGS), ("free", FREE_ARGS)] {
        let n = notes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("{what}: no otel_memory:{name} in {notes:?}"));
        assert_ne!(
            n.semaphore, 0,
            "{what}: otel_memory:{name} has no semaphore"
        );
        assert_eq!(n.args, args, "{what}: otel_memory:{name}'s arguments");
    }
}

/// What the probes reported in one run.
#[derive(Debug, Default)]
struct Events {
    allocs: usize,
    frees: usize,
    weight: u64,
    /// Announced and not freed: address -> (size, weight).
    live: HashMap<u64, (u64, u64)>,
    /// Sizes of the allocations announced, in order.
    sizes: Vec<u64>,
    /// Frees of an address that was not live.
    unmatched: Vec<u64>,
    /// Allocations announced at an address still live.
    reused: Vec<u64>,
    /// Allocations whose weight is below their size (a sample stands for at least itself).
    light: Vec<(u64, u64)>,
}

/// Reads the `OTEL` lines the gdb script prints.
fn events(out: &str) -> Events {
    let mut e = Events::default();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["OTEL", "alloc", p, size, weight] => {
                let p = u64::from_str_radix(p, 16).unwrap();
                let (size, weight): (u64, u64) = (size.parse().unwrap(), weight.parse().unwrap());
                e.allocs += 1;
                e.weight += weight;
                e.sizes.push(size);
                if weight < size {
                    e.light.push((size, weight));
                }
                if e.live.insert(p, (size, weight)).is_some() {
                    e.reused.push(p);
                }
            }
            ["OTEL", "free", p] => {
                let p = u64::from_str_radix(p, 16).unwrap();
                e.frees += 1;
                if e.live.remove(&p).is_none() {
                    e.unmatched.push(p);
                }
            }
            _ => {}
        }
    }
    e
}

/// The gdb script: both probes print their arguments and go on. `env` is set in the inferior
/// only (gdb itself runs without the preload). gdb's own output goes to `log`: on the
/// inferior's stdout, the test harness's `test rust_child ... `, which ends no line, could
/// prefix one of gdb's event lines, and that event was lost (a free without its alloc, about
/// once in 10 runs).
fn gdb_script(dir: &Scratch, env: &[(&str, &str)], log: &Path) -> std::path::PathBuf {
    let mut s = String::from("set breakpoint pending on\nset pagination off\nset confirm off\n");
    s += "set startup-with-shell off\n";
    s += &format!(
        "set logging file {}\nset logging overwrite on\n",
        log.display()
    );
    s += "set logging redirect on\nset logging enabled on\n";
    for (k, v) in env {
        s += &format!("set environment {k}={v}\n");
    }
    s += "break -probe-stap otel_memory:alloc\ncommands\nsilent\n";
    s += "printf \"OTEL alloc %lx %ld %ld\\n\", $_probe_arg0, $_probe_arg1, $_probe_arg2\n";
    s += "continue\nend\n";
    s += "break -probe-stap otel_memory:free\ncommands\nsilent\n";
    s += "printf \"OTEL free %lx\\n\", $_probe_arg0\ncontinue\nend\n";
    // At `main` the preload is loaded: show where the probes were placed.
    s += "break main\ncommands\nsilent\ninfo probes stap otel_memory\ninfo breakpoints\n";
    s += "continue\nend\nrun\n";
    let path = dir.path("probes.gdb");
    std::fs::write(&path, s).unwrap();
    path
}

/// Runs `program args` under gdb with the probe script, bounded in time. The returned stdout
/// is the program's, then gdb's (its log).
fn under_gdb(dir: &Scratch, env: &[(&str, &str)], program: &Path, args: &[&str]) -> Run {
    let log = dir.path("probes.log");
    let script = gdb_script(dir, env, &log);
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx", "-x"])
        .arg(&script)
        .arg("--args")
        .arg(program)
        .args(args);
    let mut r = run_tool(cmd);
    r.stdout += &std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        r.status.success() && r.stdout.contains("exited normally"),
        "gdb run of {} failed:\n{}{}",
        program.display(),
        common::tail(&r.stdout),
        common::tail(&r.stderr)
    );
    r
}

/// The bytes the program said it asked for (`allocated N`; in the Rust route, after the test
/// harness's `test rust_child ... `, which ends no line).
fn allocated(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.split_once("allocated ").map(|(_, n)| n))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `allocated` line in:\n{}", common::tail(out)))
}

/// The weights of a run against the bytes the program asked for, and the pairing of frees.
fn assert_accounts(e: &Events, truth: u64, stray: usize) {
    assert!(e.allocs >= 1000, "too few samples for the check: {e:?}");
    let ratio = e.weight as f64 / truth as f64;
    eprintln!(
        "{} allocs, {} frees: weights {} B for {truth} B asked ({ratio:.4})",
        e.allocs, e.frees, e.weight
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "weights {} B for {truth} B allocated ({ratio:.3})",
        e.weight
    );
    assert!(
        e.unmatched.is_empty(),
        "frees of unannounced blocks: {:x?}",
        e.unmatched
    );
    assert!(
        e.reused.is_empty(),
        "live addresses announced again: {:x?}",
        e.reused
    );
    assert!(e.light.is_empty(), "weights below sizes: {:?}", e.light);
    // The program frees what it allocates; what is left is the C library's or the harness's.
    assert!(
        e.live.len() <= stray,
        "{} sampled blocks never freed: {:?}",
        e.live.len(),
        e.live
    );
}

#[test]
fn notes_have_semaphores_and_register_arguments() {
    if !have("readelf") {
        return;
    }
    assert_contract_notes(preload_lib());
    // The Rust route: this test binary runs on `SampAlloc`.
    assert_contract_notes(&std::env::current_exe().unwrap());
}

#[test]
fn preload_weights_add_up_and_frees_match() {
    if !have("gdb") || !have("cc") {
        return;
    }
    let dir = Scratch::new("otel-probes");
    let exe = cc(&dir, &["otel_known.c"], "otel_known", &["-O2"]);
    let lib = preload_lib().to_str().unwrap();
    let r = under_gdb(
        &dir,
        &[("LD_PRELOAD", lib), ("SAMPALLOC_CONF", CONF)],
        &exe,
        &[],
    );
    let e = events(&r.stdout);
    assert_accounts(&e, allocated(&r.stdout), 4);
    // The huge blocks (their own mappings, always sampled at this interval) came and went.
    for mib in 3..=6u64 {
        assert!(
            e.sizes.contains(&(mib << 20)),
            "no {mib} MiB block: {:?}",
            e.sizes
        );
    }
}

#[test]
fn nothing_fires_when_the_profiler_is_off() {
    if !have("gdb") || !have("cc") {
        return;
    }
    let dir = Scratch::new("otel-probes-off");
    let exe = cc(&dir, &["otel_known.c"], "otel_known", &["-O2"]);
    let lib = preload_lib().to_str().unwrap();
    let env = [("LD_PRELOAD", lib), ("SAMPALLOC_CONF", "prof:false")];
    let r = under_gdb(&dir, &env, &exe, &[]);
    // The breakpoints were placed in the library (`info breakpoints` at `main` lists them at
    // an address, not pending) and nothing hit them.
    let placed = |n: &str| {
        r.stdout.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 5 && f[0] == n && f[1] == "breakpoint" && f[4].starts_with("0x")
        })
    };
    assert!(
        placed("1") && placed("2"),
        "gdb did not place the probe breakpoints:\n{}",
        common::tail(&r.stdout)
    );
    let e = events(&r.stdout);
    assert_eq!(
        (e.allocs, e.frees),
        (0, 0),
        "probes fired with the profiler off"
    );
    allocated(&r.stdout);
}

/// Child of [`rust_route_weights_add_up`]: known allocations through `SampAlloc`, run only
/// under gdb (the variable set).
#[test]
fn rust_child() {
    if std::env::var_os("SAMPALLOC_OTEL_CHILD").is_none() {
        return;
    }
    let mut total = 0u64;
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(4096);
    for r in 0..8usize {
        for i in 0..4096usize {
            let size = 16 + (i * 7919 + r * 104_729) % 4000;
            held.push(vec![r as u8; size]);
            total += size as u64;
        }
        held.clear();
    }
    println!("allocated {total}");
}

#[test]
fn rust_route_weights_add_up() {
    if !have("gdb") {
        return;
    }
    let dir = Scratch::new("otel-probes-rust");
    let exe = std::env::current_exe().unwrap();
    let env = [("SAMPALLOC_OTEL_CHILD", "1"), ("SAMPALLOC_CONF", CONF)];
    let args = ["--exact", "rust_child", "--nocapture", "--test-threads=1"];
    let r = under_gdb(&dir, &env, &exe, &args);
    let e = events(&r.stdout);
    // The harness's own allocations are a few KiB beside the child's 65 MB.
    assert_accounts(&e, allocated(&r.stdout), 16);
}
