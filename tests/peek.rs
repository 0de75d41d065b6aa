//! `prof_peek`: a JVM whose JNI library leaks 4 KiB blocks that start with a marker string
//! (`tests/profile/JniLeak.java`, `jni_leak.c`), run under the preload with `prof_peek:64`. The
//! final profile gets a private side file `<profile>.peek` (mode 0600) and still reads as a
//! heap profile (in `jeprof` too); `sampalloc top --peek` shows the marker under the JNI
//! library's leaking function, and with `--stacks --json` under the stack through
//! `Java_JniLeak_leak`. Run without `prof_peek` (or with a value it refuses, which warns), no
//! peek data is written and `top --peek` says so. And threads that free, grow and move
//! (`realloc` of huge blocks, `mremap`) marked blocks while dumps peek at them
//! (`tests/profile/peek_churn.c`) run to the end, every block peeked reading as one of theirs.
//! Java, javac and a C compiler are required under CI.

mod common;

use common::heap_profile::final_profile;
use common::profile_programs::{cc, have_jeprof, jeprof_text, run_prof, run_tool, sources};
use common::{command, have, missing, which, Scratch};
use sampalloc::analysis::peek;
use std::path::{Path, PathBuf};
use std::process::Command;

const MARKER: &str = "JNI-LEAK-MARKER";

fn sampalloc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sampalloc"))
}

fn java_home() -> Option<PathBuf> {
    let javac = std::fs::canonicalize(which("javac")?).ok()?;
    Some(javac.parent()?.parent()?.to_path_buf())
}

/// Compiles `JniLeak` and its library into `dir`; None (after `missing`) without the tools.
fn build(dir: &Scratch) -> Option<()> {
    if !have("java") || !have("javac") || !have("cc") {
        return None;
    }
    let Some(home) = java_home() else {
        missing("no JAVA_HOME (javac's directory)");
        return None;
    };
    let mut c = command("javac", ["-d"]);
    c.arg(&dir.0).arg(sources().join("JniLeak.java"));
    let r = run_tool(c);
    assert!(r.status.success(), "javac failed\n{}", r.describe());
    let include = home.join("include");
    common::compile_in(
        &sources(),
        "cc",
        dir,
        &["jni_leak.c"],
        "libjnileak.so",
        &[
            "-O2",
            "-shared",
            "-fPIC",
            &format!("-I{}", include.display()),
            &format!("-I{}", include.join("linux").display()),
        ],
    );
    Some(())
}

/// Runs `JniLeak calls` with `conf` added; returns the final profile and the run's stderr.
fn run(dir: &Scratch, out: &Scratch, calls: u32, conf: &str) -> (PathBuf, String) {
    let conf = format!(
        "prof:true,prof_final:true,lg_prof_sample:14,prof_prefix:{}{conf}",
        out.path("jni").display()
    );
    let mut c = command("java", ["-Xmx256m", "-XX:+UseSerialGC"]);
    c.arg(format!("-Djava.library.path={}", dir.0.display()))
        .arg("-cp")
        .arg(&dir.0)
        .args(["JniLeak", &calls.to_string()]);
    let r = run_prof(c, &conf);
    r.assert_ok("java JniLeak", &format!("jni calls {calls}"));
    (final_profile(&out.0, &r), r.stderr)
}

fn top(args: &[&str], profile: &Path) -> std::process::Output {
    sampalloc()
        .arg("top")
        .args(args)
        .arg(profile)
        .output()
        .unwrap()
}

fn peek_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".peek"))
        .collect()
}

#[test]
fn the_jni_leaks_marker_shows_under_its_function_and_the_side_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("peek-jni");
    if build(&dir).is_none() {
        return;
    }
    let out = Scratch::new("peek-jni-out");
    let (profile, _) = run(&dir, &out, 3000, ",prof_peek:64");
    let side = PathBuf::from(format!("{}.peek", profile.display()));
    let meta = std::fs::symlink_metadata(&side)
        .unwrap_or_else(|e| panic!("no side file {}: {e}", side.display()));
    assert!(meta.is_file());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{:o}",
        meta.permissions().mode()
    );
    let text = std::fs::read_to_string(&side).unwrap();
    assert!(
        text.starts_with("sampalloc peek 1\npeek_bytes 64\n"),
        "{text:.200}"
    );
    let profile_text = std::fs::read_to_string(&profile).unwrap();
    assert!(profile_text.starts_with("heap profile: "));
    let marker_hex: String = MARKER.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(!profile_text.contains("sampalloc peek") && !profile_text.contains(&marker_hex));

    // The table, then the peek section: the marker under jni_leak_helper.
    let o = top(&["--peek", "-n", "5"], &profile);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("{stdout}");
    let section = stdout
        .split("\nPeek: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no Peek section:\n{stdout}"));
    let mut site = None;
    let mut marked = Vec::new();
    for line in section.lines().skip(1) {
        if !line.starts_with(' ') {
            site = line.split(':').next().map(str::to_string);
        } else if line.contains(MARKER) {
            marked.push(site.clone().unwrap_or_default());
        }
    }
    assert!(
        marked.iter().any(|s| s.starts_with("jni_leak_helper")),
        "the marker should show under jni_leak_helper; it shows under {marked:?}\n{stdout}"
    );
    // Most of that site's blocks show it (about 3000 * 4096 / 16384 = 750 samples).
    let helper = section
        .lines()
        .find(|l| l.starts_with("jni_leak_helper"))
        .unwrap();
    let blocks: usize = helper
        .split(": ")
        .nth(1)
        .and_then(|b| b.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no block count in {helper:?}"));
    assert!(blocks > 300, "{helper}");

    // By whole stack, in JSON: the site whose stack goes through the JNI entry point.
    let o = top(&["--peek", "--stacks", "--json", "-n", "0"], &profile);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let jni = v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["stack"].as_array().is_some_and(|st| {
                st.iter()
                    .any(|f| f.as_str().unwrap_or("").starts_with("Java_JniLeak_leak"))
            })
        })
        .collect::<Vec<_>>();
    assert!(!jni.is_empty(), "no stack through Java_JniLeak_leak");
    assert!(
        jni.iter().any(|s| s["peek"]["previews"]
            .as_array()
            .is_some_and(|p| p
                .iter()
                .any(|x| x["text"].as_str().unwrap_or("").starts_with(MARKER)))),
        "no marker under Java_JniLeak_leak: {jni:?}"
    );

    if have_jeprof() {
        let java = std::fs::canonicalize(which("java").unwrap()).unwrap();
        let top = jeprof_text(&java, &profile);
        assert_eq!(top[0].2, "jni_leak_helper", "jeprof's top: {top:?}");
    }
}

#[test]
fn without_prof_peek_nothing_is_kept_and_a_bad_value_warns() {
    let dir = Scratch::new("peek-off");
    if build(&dir).is_none() {
        return;
    }
    let out = Scratch::new("peek-off-out");
    let (profile, _) = run(&dir, &out, 500, "");
    assert!(peek_files(&out.0).is_empty(), "{:?}", peek_files(&out.0));
    let o = top(&["--peek"], &profile);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("prof_peek"), "{err}");

    let out = Scratch::new("peek-bad-out");
    let (_, stderr) = run(&dir, &out, 500, ",prof_peek:257");
    assert!(
        stderr.contains("invalid value in 'prof_peek:257'; keeping the default"),
        "{stderr}"
    );
    assert!(peek_files(&out.0).is_empty(), "{:?}", peek_files(&out.0));
}

#[test]
fn dumps_peek_safely_at_blocks_that_other_threads_free_and_move() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("peek-churn");
    let exe = cc(&dir, &["peek_churn.c"], "peek_churn", &["-O2"]);
    let out = Scratch::new("peek-churn-out");
    let conf = format!(
        "prof:true,prof_final:true,lg_prof_sample:12,lg_prof_interval:27,prof_peek:256,prof_prefix:{}",
        out.path("pc").display()
    );
    let mut c = Command::new(&exe);
    c.arg("2");
    let r = run_prof(c, &conf);
    r.assert_ok("peek_churn", "peek churn done");
    let files = peek_files(&out.0);
    assert!(
        files.len() >= 5,
        "{} peek files\n{}",
        files.len(),
        r.describe()
    );
    let (mut blocks, mut marked, mut huge) = (0, 0, 0);
    for f in &files {
        let p = peek::parse(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(p.peek_bytes, 256);
        for b in &p.blocks {
            assert!(
                p.stacks.contains_key(&b.stack),
                "{}: no stack for {b:?}",
                f.display()
            );
            assert_eq!(b.data.len() as u64, b.size.min(256));
            blocks += 1;
            marked += usize::from(b.data.starts_with(b"PEEK-CHURN\0"));
            huge += usize::from(b.size >= 2 << 20);
        }
    }
    eprintln!(
        "{} peek files: {blocks} blocks, {marked} with the marker, {huge} huge",
        files.len()
    );
    // Blocks are marked right after malloc returns: a dump between the two sees one unmarked.
    assert!(
        marked as f64 >= 0.95 * blocks as f64 && huge > 0,
        "{marked} of {blocks} blocks marked, {huge} huge"
    );
}
