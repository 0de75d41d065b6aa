//! The heap profiler's dump triggers under `LD_PRELOAD` (README, "Configuration"): interval dumps
//! (`lg_prof_interval`) at the expected count with cumulative bytes that never go down,
//! high-water dumps (`prof_gdump`) at growing live bytes, one dump per signal (`prof_signal`),
//! one warning and a clean exit when the prefix cannot be written, and the leak summary at exit
//! (`prof_leak`) naming the leaking function.
//!
//! Sources are in `tests/profile/`; the profile reader and the runners are in `tests/common/`
//! (`heap_profile`, `profile_programs`). A tool that is missing (a compiler, java, jeprof, go,
//! zlib's headers) fails the test when `CI` is set (`.ci/run` installs them) and skips it
//! otherwise.

mod common;

use common::heap_profile::{pid_seq, profiles, Profile};
use common::profile_programs::{cc, run_prof, run_tool, LIMIT, MIB};
use common::{collect, command, have, kill_group, spawn_logged, wait_bounded, Run, Scratch};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn triggers(dir: &Scratch) -> PathBuf {
    cc(dir, &["triggers.c"], "triggers", &["-O2", "-rdynamic"])
}

/// Builds triggers.c in `dir`, runs it in `mode` under `conf` and checks it finished.
fn run_triggers(dir: &Scratch, mode: &str, conf: &str) -> Run {
    let exe = triggers(dir);
    let r = run_prof(command(&exe, [mode]), conf);
    r.assert_ok(mode, &format!("triggers {mode} ok"));
    r
}

#[test]
fn interval_dumps() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("trig-interval");
    let conf = format!(
        "prof:true,lg_prof_interval:24,prof_prefix:{}",
        dir.path("iv").display()
    );
    run_triggers(&dir, "churn", &conf);
    // 256 MiB allocated at one dump per 16 MiB.
    let i = profiles(&dir.0, ".i.heap");
    eprintln!("interval dumps: {}", i.len());
    assert!((12..=17).contains(&i.len()), "{} interval dumps", i.len());
    let mut last_alloc = 0;
    for f in &i {
        let p = Profile::read(f);
        p.assert_header_sums("interval dump");
        assert!(p.header[3] >= last_alloc, "cumulative bytes went down");
        last_alloc = p.header[3];
    }
}

#[test]
fn high_water_dumps() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("trig-gdump");
    let conf = format!(
        "prof:true,prof_gdump:true,lg_prof_sample:16,prof_prefix:{}",
        dir.path("hw").display()
    );
    run_triggers(&dir, "grow", &conf);
    let u = profiles(&dir.0, ".u.heap");
    eprintln!("high-water dumps: {}", u.len());
    assert!(u.len() >= 8, "{} high-water dumps", u.len());
    let live: Vec<f64> = u.iter().map(|f| Profile::read(f).live_total()).collect();
    assert!(
        live.windows(2).all(|w| w[1] >= w[0] * 0.95),
        "live bytes at successive high-water marks: {live:?}"
    );
    assert!(
        *live.last().unwrap() > 80.0 * MIB,
        "the last high-water dump holds {:.0} bytes",
        live.last().unwrap()
    );
}

#[test]
fn signal_dump() {
    if !have("cc") || !have("kill") {
        return;
    }
    let dir = Scratch::new("trig-signal");
    let exe = triggers(&dir);
    let out = Scratch::new("trig-signal-out");
    let logs = Scratch::new("trig-signal-logs");
    let conf = format!(
        "prof:true,prof_signal:SIGUSR2,prof_prefix:{}",
        out.path("sig").display()
    );
    let mut cmd = command(&exe, ["signal"]);
    cmd.arg(&out.0);
    let mut child = spawn_logged(cmd, &logs, Some(&conf));
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let text = std::fs::read_to_string(logs.path("stdout")).unwrap_or_default();
        if let Some(pid) = text.lines().find_map(|l| l.strip_prefix("ready ")) {
            break pid.to_string();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited early\n{}", collect(status, &logs).describe());
        }
        if Instant::now() > deadline {
            kill_group(&mut child);
            panic!("the program never got ready");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        profiles(&out.0, ".s.heap").is_empty(),
        "a signal dump before the signal"
    );
    let k = run_tool(command("kill", ["-USR2", &pid]));
    assert!(k.status.success(), "kill -USR2\n{}", k.describe());
    let status = wait_bounded(&mut child, LIMIT, "signal program");
    let r = collect(status, &logs);
    r.assert_ok("signal", "triggers signal ok");
    let s = profiles(&out.0, ".s.heap");
    assert_eq!(s.len(), 1, "signal dumps: {s:?}");
    assert_eq!(pid_seq(&s[0]).0.to_string(), pid);
    Profile::read(&s[0]);
}

#[test]
fn unwritable_prefix_warns_once_and_exits_cleanly() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("trig-unwritable");
    let prefix = dir.path("no-such-dir").join("sub").join("x");
    let conf = format!("prof:true,prof_final:true,prof_prefix:{}", prefix.display());
    let r = run_triggers(&dir, "leak", &conf);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one warning line\n{}",
        r.describe()
    );
    assert!(
        lines[0].starts_with("sampalloc: cannot write heap profile ")
            && lines[0].contains(&prefix.display().to_string()),
        "{}",
        r.describe()
    );
}

#[test]
fn leak_summary_names_the_leaking_function() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("trig-leak");
    let r = run_triggers(&dir, "leak", "prof:true,prof_leak:true,lg_prof_sample:12");
    let lines: Vec<&str> = r.stderr.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("sampalloc: leak summary: about "))
        .unwrap_or_else(|| panic!("no leak summary\n{}", r.describe()));
    // The top site: "sampalloc:   4.0 MiB in 4096 objects at leaky_function (triggers) <- main ..."
    let top = lines.get(at + 1).copied().unwrap_or("");
    eprintln!("leak summary top line: {top}");
    assert!(
        top.contains(" at leaky_function (triggers)"),
        "{}",
        r.describe()
    );
    let mib: f64 = top
        .strip_prefix("sampalloc:")
        .and_then(|t| t.trim_start().split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    // 4 MiB in 1 KiB blocks at R = 4 KiB: about 900 samples, sd 2.9 %.
    assert!(
        top.contains(" MiB in ") && (3.4..4.6).contains(&mib),
        "{top}"
    );
}
