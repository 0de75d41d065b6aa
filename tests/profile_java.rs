//! The heap profiler in a JVM under `LD_PRELOAD`: `java.util.zip.Deflater`s that are never
//! ended put zlib's `deflateInit2_` on top of the profile (and interval dumps show it along the
//! way) while ending them leaves nothing there; a JNI library's leak is the top site with the
//! right size. `jeprof --text` agrees on the top site.
//!
//! Sources are in `tests/profile/`; the profile reader and the runners are in `tests/common/`
//! (`heap_profile`, `profile_programs`). A tool that is missing (a compiler, java, jeprof, go,
//! zlib's headers) fails the test when `CI` is set (`.ci/run` installs them) and skips it
//! otherwise.

mod common;

use common::heap_profile::{
    assert_stacks_start_at_callers, final_profile, live_by_first_function, profiles, rows_with,
    Profile,
};
use common::profile_programs::{have_jeprof, jeprof_text, run_prof, run_tool, sources, MIB};
use common::{command, have, missing, which, Scratch};
use std::path::PathBuf;

fn java_home() -> Option<PathBuf> {
    let javac = std::fs::canonicalize(which("javac")?).ok()?;
    Some(javac.parent()?.parent()?.to_path_buf())
}

fn javac(scratch: &Scratch, srcs: &[&str]) {
    let mut c = command("javac", ["-d"]);
    c.arg(&scratch.0);
    for s in srcs {
        c.arg(sources().join(s));
    }
    let r = run_tool(c);
    assert!(r.status.success(), "javac failed\n{}", r.describe());
}

/// The real `java` executable (for jeprof, which reads symbols of the main program).
fn java_exe() -> PathBuf {
    std::fs::canonicalize(which("java").unwrap()).unwrap()
}

/// The share of live bytes in rows that pass through `deflateInit2_` or
/// `Java_java_util_zip_Deflater_init` near their top, and those bytes.
fn deflater_share(p: &Profile) -> (f64, f64) {
    let mut rows = rows_with(p, "deflateInit2_", 3);
    for r in rows_with(p, "Java_java_util_zip_Deflater_init", 3) {
        if !rows.iter().any(|x| std::ptr::eq(*x, r)) {
            rows.push(r);
        }
    }
    let bytes: f64 = rows.iter().map(|r| r.live(p.r)).sum();
    (bytes / p.live_total().max(1.0), bytes)
}

fn run_deflaters(classes: &Scratch, mode: &str) -> (Profile, PathBuf, Vec<PathBuf>, Scratch) {
    let out = Scratch::new("java-out");
    let conf = format!(
        "prof:true,prof_final:true,lg_prof_sample:16,lg_prof_interval:26,prof_prefix:{}",
        out.path("java").display()
    );
    let mut c = command("java", ["-Xmx256m", "-XX:+UseSerialGC", "-cp"]);
    c.arg(&classes.0).args(["DeflaterLeak", mode, "400"]);
    let r = run_prof(c, &conf);
    r.assert_ok("java DeflaterLeak", "deflaters 400");
    let f = final_profile(&out.0, &r);
    let intervals = profiles(&out.0, ".i.heap");
    (Profile::read(&f), f, intervals, out)
}

#[test]
fn java_deflater_leak_is_on_top_and_end_shows_none() {
    if !have("java") || !have("javac") || !have("nm") {
        return;
    }
    let classes = Scratch::new("java-deflater");
    javac(&classes, &["DeflaterLeak.java"]);

    let (leak, leak_path, intervals, _out) = run_deflaters(&classes, "leak");
    assert_stacks_start_at_callers(&leak, "java DeflaterLeak leak");
    let sites = live_by_first_function(&leak);
    eprintln!(
        "Deflater leak, top sites: {:?}",
        sites
            .iter()
            .take(5)
            .map(|(n, b)| format!("{n} {:.1} MiB", b / MIB))
            .collect::<Vec<_>>()
    );
    let (share, bytes) = deflater_share(&leak);
    eprintln!(
        "Deflater leak: {:.1} MiB ({:.1} % of live) under deflateInit2_/Deflater_init",
        bytes / MIB,
        share * 100.0
    );
    // 400 deflate states of about 256 KiB.
    assert!(
        bytes > 400.0 * 200e3 && share > 0.7,
        "Deflater leak: {bytes:.0} bytes, {:.1} % of live",
        share * 100.0
    );
    assert_eq!(
        sites[0].0, "deflateInit2_",
        "the top leak site should be zlib's deflateInit2_: {sites:?}"
    );
    // Interval dumps were taken along the way; the latest already shows the leak.
    assert!(!intervals.is_empty(), "no interval dumps");
    for i in &intervals {
        Profile::read(i);
    }
    let last = Profile::read(intervals.last().unwrap());
    let (share_i, _) = deflater_share(&last);
    assert!(
        share_i > 0.5,
        "latest interval dump: Deflater share {:.1} %",
        share_i * 100.0
    );

    let (ended, _, _, _out2) = run_deflaters(&classes, "end");
    let (share_e, bytes_e) = deflater_share(&ended);
    eprintln!(
        "Deflater with end(): {:.3} MiB ({:.2} % of live) under deflateInit2_/Deflater_init",
        bytes_e / MIB,
        share_e * 100.0
    );
    assert!(
        bytes_e < 0.01 * bytes && share_e < 0.05,
        "with end() the Deflaters still hold {bytes_e:.0} bytes ({:.1} %)",
        share_e * 100.0
    );

    if have_jeprof() {
        let top = jeprof_text(&java_exe(), &leak_path);
        assert_eq!(top[0].2, "deflateInit2_", "jeprof's top flat site: {top:?}");
        let init = top
            .iter()
            .find(|t| t.2 == "Java_java_util_zip_Deflater_init")
            .unwrap_or_else(|| panic!("jeprof does not list Deflater_init: {top:?}"));
        assert!(init.1 > 0.7 * bytes / MIB, "Deflater_init cum {}", init.1);
    }
}

#[test]
fn jni_library_leak_is_on_top() {
    if !have("java") || !have("javac") || !have("cc") || !have("nm") {
        return;
    }
    let Some(home) = java_home() else {
        missing("no JAVA_HOME (javac's directory)");
        return;
    };
    let dir = Scratch::new("jni");
    javac(&dir, &["JniLeak.java"]);
    let include = home.join("include");
    let lib = common::compile_in(
        &sources(),
        "cc",
        &dir,
        &["jni_leak.c"],
        "libjnileak.so",
        &[
            "-O2",
            "-fomit-frame-pointer",
            "-shared",
            "-fPIC",
            &format!("-I{}", include.display()),
            &format!("-I{}", include.join("linux").display()),
        ],
    );
    assert!(lib.is_file());
    let out = Scratch::new("jni-out");
    let conf = format!(
        "prof:true,prof_final:true,lg_prof_sample:14,prof_prefix:{}",
        out.path("jni").display()
    );
    const CALLS: f64 = 5000.0;
    let mut c = command("java", ["-Xmx256m", "-XX:+UseSerialGC"]);
    c.arg(format!("-Djava.library.path={}", dir.0.display()))
        .arg("-cp")
        .arg(&dir.0)
        .args(["JniLeak", "5000"]);
    let r = run_prof(c, &conf);
    r.assert_ok("java JniLeak", "jni calls 5000");
    let path = final_profile(&out.0, &r);
    let p = Profile::read(&path);
    assert_stacks_start_at_callers(&p, "java JniLeak");
    let sites = live_by_first_function(&p);
    eprintln!(
        "JNI leak, top sites: {:?}",
        sites
            .iter()
            .take(4)
            .map(|(n, b)| format!("{n} {:.2} MiB", b / MIB))
            .collect::<Vec<_>>()
    );
    assert_eq!(sites[0].0, "jni_leak_helper", "top site: {sites:?}");
    let truth = CALLS * 4096.0;
    let err = (sites[0].1 - truth) / truth;
    eprintln!("jni_leak_helper: {:+.1} % off the truth", err * 100.0);
    // About 1100 samples: one standard deviation 2.7 %.
    assert!(
        err.abs() < 0.15,
        "jni_leak_helper: {:.0} of {truth}",
        sites[0].1
    );
    if have_jeprof() {
        let top = jeprof_text(&java_exe(), &path);
        assert_eq!(top[0].2, "jni_leak_helper", "jeprof's top: {top:?}");
    }
}
