//! `sampalloc run -- java …` names Java frames with no JVM flags given: the launcher adds
//! `-XX:+PreserveFramePointer -XX:+UnlockDiagnosticVMOptions -XX:+DumpPerfMapAtExit` to
//! `JAVA_TOOL_OPTIONS` (after which the user's own options still apply), and the final profile
//! is symbolized with the perf map the JVM wrote at exit. `--no-java-flags` leaves the JVM
//! alone, and then no Java frame has a name. A launcher under another name is recognized by
//! resolving it into a JDK.
//!
//! Needs `java` and `javac` (`.ci/run` installs them; missing under CI, the test fails).

mod common;

use common::profile_programs::{run_tool, sources, MIB};
use common::{command, have, run_conf, which, Run, Scratch};
use std::path::{Path, PathBuf};
use std::process::Command;

fn sampalloc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sampalloc"));
    c.env("SAMPALLOC_LIB", common::preload_lib())
        .env_remove("JAVA_TOOL_OPTIONS");
    c
}

fn compile_deflater_leak(classes: &Scratch) {
    let mut c = command("javac", ["-d"]);
    c.arg(&classes.0).arg(sources().join("DeflaterLeak.java"));
    let r = run_tool(c);
    assert!(r.status.success(), "javac failed\n{}", r.describe());
}

/// `sampalloc run [flags] --out DIR -- <java> -cp CLASSES DeflaterLeak leak 400 3000` (3000
/// Deflaters ended first, so that the JIT has compiled `DeflaterLeak.compress` before the 400
/// that leak, however busy the machine is) with the
/// user's `JAVA_TOOL_OPTIONS` set to `user_options`, and the final profile it names.
fn run_leak(
    java: &Path,
    classes: &Scratch,
    out: &Path,
    flags: &[&str],
    user_options: Option<&str>,
) -> (Run, PathBuf) {
    let mut c = sampalloc();
    if let Some(o) = user_options {
        c.env("JAVA_TOOL_OPTIONS", o);
    }
    c.args(["run", "--conf", "lg_prof_sample:16"])
        .args(flags)
        .arg("--out")
        .arg(out)
        .arg("--")
        .arg(java)
        .args(["-Xmx256m", "-XX:+UseSerialGC", "-cp"])
        .arg(&classes.0)
        .args(["DeflaterLeak", "leak", "400", "3000"]);
    let r = run_conf(c, None);
    r.assert_ok("sampalloc run -- java DeflaterLeak", "deflaters 400");
    let profile = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("More: sampalloc top "))
        .and_then(|l| l.split_whitespace().next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no final profile named\n{}", r.describe()));
    (r, profile)
}

/// The stacks of `sampalloc top --stacks -n 0 P`: bytes and frames, leaf first.
fn stacks(profile: &Path) -> Vec<(f64, Vec<String>)> {
    let o = sampalloc()
        .args(["top", "--stacks", "-n", "0"])
        .arg(profile)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut out: Vec<(f64, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(frame) = line.strip_prefix("    ") {
            if let Some(s) = out.last_mut() {
                s.1.push(frame.trim().to_string());
            }
        } else if let Some(head) = line.strip_suffix(':') {
            // "67.7 MiB deflateInit2_:"
            let mut it = head.split_whitespace();
            let (Some(v), Some(unit)) = (it.next(), it.next()) else {
                continue;
            };
            let Ok(v) = v.parse::<f64>() else { continue };
            let scale = match unit {
                "B" => 1.0,
                "KiB" => 1024.0,
                "MiB" => MIB,
                "GiB" => MIB * 1024.0,
                _ => continue,
            };
            out.push((v * scale, Vec::new()));
        }
    }
    assert!(!out.is_empty(), "no stacks in\n{text}");
    out
}

/// Bytes of stacks through `Java_java_util_zip_Deflater_init`, and of those the bytes with a
/// frame of the class `DeflaterLeak` above it (one of its callers).
fn deflater_bytes(stacks: &[(f64, Vec<String>)]) -> (f64, f64) {
    let (mut all, mut named) = (0.0, 0.0);
    for (bytes, frames) in stacks {
        let Some(i) = frames
            .iter()
            .position(|f| f == "Java_java_util_zip_Deflater_init")
        else {
            continue;
        };
        all += bytes;
        if frames[i + 1..].iter().any(|f| f.contains("DeflaterLeak.")) {
            named += bytes;
        }
    }
    (all, named)
}

#[test]
fn run_names_java_frames_with_no_jvm_flags_given() {
    if !have("java") || !have("javac") {
        return;
    }
    let classes = Scratch::new("run-java-classes");
    compile_deflater_leak(&classes);
    let scratch = Scratch::new("run-java");

    // Flags added, the user's JAVA_TOOL_OPTIONS kept after them.
    let java = PathBuf::from("java");
    let out = scratch.path("flags");
    let (r, profile) = run_leak(&java, &classes, &out, &[], Some("-Xss2m"));
    let picked = r
        .stderr
        .lines()
        .find(|l| l.starts_with("Picked up JAVA_TOOL_OPTIONS:"))
        .unwrap_or_else(|| panic!("the JVM got no JAVA_TOOL_OPTIONS\n{}", r.describe()));
    for f in [
        "-XX:+PreserveFramePointer",
        "-XX:+UnlockDiagnosticVMOptions",
        "-XX:+DumpPerfMapAtExit",
        "-Xss2m",
    ] {
        assert!(picked.contains(f), "{f} missing: {picked}");
    }
    let pid = profile
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').nth(1))
        .unwrap()
        .to_string();
    let map = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    assert!(map.is_file(), "the JVM wrote no {}", map.display());
    let s = stacks(&profile);
    let _ = std::fs::remove_file(&map);
    let (all, named) = deflater_bytes(&s);
    eprintln!(
        "with the flags: {:.1} MiB through Deflater_init, {:.1} MiB ({:.1} %) under a DeflaterLeak frame",
        all / MIB,
        named / MIB,
        100.0 * named / all.max(1.0)
    );
    assert!(
        all > 400.0 * 200e3,
        "only {all:.0} bytes under Deflater_init"
    );
    // Compiled, DeflaterLeak.compress is named; main stays interpreted.
    assert!(
        named > 0.5 * all,
        "no DeflaterLeak frame above Java_java_util_zip_Deflater_init in most stacks: {s:#?}"
    );
    assert!(
        s.iter()
            .flat_map(|x| &x.1)
            .any(|f| f == "[interpreted Java]"),
        "interpreted frames are marked: {s:#?}"
    );

    // --no-java-flags: the JVM runs as given, and its Java frames have no names.
    let out = scratch.path("none");
    let (r, profile) = run_leak(&java, &classes, &out, &["--no-java-flags"], None);
    assert!(
        !r.stderr.contains("Picked up JAVA_TOOL_OPTIONS"),
        "{}",
        r.describe()
    );
    let (all, named) = deflater_bytes(&stacks(&profile));
    eprintln!(
        "--no-java-flags: {:.1} MiB through Deflater_init, {:.1} MiB under a DeflaterLeak frame",
        all / MIB,
        named / MIB
    );
    assert!(
        all > 400.0 * 200e3,
        "only {all:.0} bytes under Deflater_init"
    );
    assert_eq!(named, 0.0, "named without the flags?");
}

#[test]
fn a_java_launcher_under_another_name_is_recognized() {
    if !have("java") {
        return;
    }
    let real = std::fs::canonicalize(which("java").unwrap()).unwrap();
    let scratch = Scratch::new("run-java-link");
    let link = scratch.path("my-jvm");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut c = sampalloc();
    c.args(["run", "--out"])
        .arg(scratch.path("out"))
        .arg("--")
        .arg(&link)
        .arg("-version");
    let r = run_conf(c, None);
    assert!(r.status.success(), "{}", r.describe());
    assert!(
        r.stderr
            .contains("Picked up JAVA_TOOL_OPTIONS: -XX:+PreserveFramePointer"),
        "{}",
        r.describe()
    );
    // Not a JVM: nothing added.
    let mut c = sampalloc();
    c.args(["run", "--out"]).arg(scratch.path("out2")).args([
        "--",
        "sh",
        "-c",
        "echo \"JTO=[$JAVA_TOOL_OPTIONS]\"",
    ]);
    let r = run_conf(c, None);
    assert!(r.stdout.contains("JTO=[]"), "{}", r.describe());
}
