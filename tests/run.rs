//! `sampalloc run`: the exit code passes through and a missing final profile is explained
//! (without the preload library), and, when the preload crate is in the tree, a leaking C
//! program run under it gets a report naming its leaking functions.
//!
//! The preload library is built into its own target directory (`target/run-test`): the
//! outer `cargo test` holds the lock of the main one.

mod common;

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn sampalloc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sampalloc"))
}

#[test]
fn exit_code_passes_through_and_a_missing_profile_is_explained() {
    let scratch = common::Scratch::new("run-nolib");
    // A new directory: `run` creates it 0700 (the scratch directory itself may be
    // group-writable under a 002 umask, which --out refuses).
    let out = scratch.path("profiles");
    // Not a shared object: the loader ignores it with a warning, so nothing is profiled.
    let not_a_lib = root().join("Cargo.toml");
    let o = sampalloc()
        .env("SAMPALLOC_LIB", &not_a_lib)
        .arg("run")
        .arg("--out")
        .arg(&out)
        .args(["--", "sh", "-c", "exit 3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("no final profile"), "{err}");

    let o = sampalloc()
        .env("SAMPALLOC_LIB", &not_a_lib)
        .args(["run", "--", "sh", "-c", "kill -9 $$"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(128 + 9), "{err}");
    assert!(err.contains("killed by signal 9"), "{err}");
    // The directory `run` made for the profiles stayed empty: it is removed, not left behind.
    let made = err
        .lines()
        .find_map(|l| l.strip_prefix("sampalloc: profiles go to "))
        .unwrap_or_else(|| panic!("no profile directory named: {err}"));
    assert!(!Path::new(made).exists(), "{made} left behind: {err}");
    assert!(err.contains("removed the empty"), "{err}");

    let o = sampalloc()
        .env("SAMPALLOC_LIB", "/nonexistent/libsampalloc.so")
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("SAMPALLOC_LIB"), "{err}");
}

#[test]
fn run_reports_the_leaks_of_a_c_program() {
    let in_ci = std::env::var_os("CI").is_some();
    if !root().join("alloc-preload/Cargo.toml").exists() {
        eprintln!("note: alloc-preload/ is not in this tree; skipping the `sampalloc run` test");
        return;
    }
    let target = root().join("target/run-test");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .args(["build", "-p", "sampalloc-preload", "--target-dir"])
        .arg(&target)
        .current_dir(root())
        .status()
        .expect("run cargo");
    assert!(status.success(), "building sampalloc-preload failed");
    let lib = target.join("debug/libsampalloc.so");
    assert!(lib.is_file(), "{} missing", lib.display());

    let scratch = common::Scratch::new("run-leaky");
    let dir = scratch.0.clone();
    let exe = dir.join("leaky");
    let cc = Command::new("cc")
        .args(["-g", "-O1", "-o"])
        .arg(&exe)
        .arg(root().join("demo/leaky.c"))
        .status();
    match cc {
        Ok(s) if s.success() => {}
        other => {
            assert!(!in_ci, "cc failed: {other:?}");
            eprintln!("note: no working C compiler ({other:?}); skipping");
            return;
        }
    }
    let out = dir.join("profiles");
    let o = sampalloc()
        .env("SAMPALLOC_LIB", &lib)
        .args(["run", "-n", "5", "--conf", "lg_prof_sample:14", "--out"])
        .arg(&out)
        .arg("--")
        .arg(&exe)
        .output()
        .unwrap();
    let (stdout, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    eprintln!("{err}");
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        stdout.contains("leaky: done"),
        "the program's output is kept: {stdout}"
    );
    for f in [
        "leak_request_buffers",
        "leak_session_cache",
        "leak_config_strings",
    ] {
        assert!(err.contains(f), "{f} missing from the report:\n{err}");
    }
}
