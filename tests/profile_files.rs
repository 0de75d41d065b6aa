//! Profile files cannot be turned against the user who writes them: a C program
//! (`tests/profile/plant_names.c`) run under the preload plants symlinks and a regular file at
//! the names its own final profile would take, and the engine must leave them alone, write the
//! profile to the next free name with mode 0600, or skip it with one warning line. With the
//! `cli` feature: `sampalloc run` keeps profiles in a 0700 directory, refuses an `--out` that
//! is a symlink or writable by others, `pprof -o` does not write through a symlink or hard
//! link, and the readers leave the profile they read untouched.
//!
//! A missing C compiler fails the test when `CI` is set and skips it otherwise.

mod common;

use common::{collect, have, spawn_logged, wait_bounded, Run, Scratch};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `plant_names`, compiled once (None: no C compiler, outside CI).
fn planter() -> Option<&'static Path> {
    static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
    EXE.get_or_init(|| {
        if !have("cc") {
            return None;
        }
        let scratch = Scratch::for_process("plant-names-build");
        let exe = common::compile_in(
            &root().join("tests/profile"),
            "cc",
            scratch,
            &["plant_names.c"],
            "plant_names",
            &[],
        );
        Some(exe)
    })
    .as_deref()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Runs `plant_names` under the preload with `prof_final` and the prefix `dir/prof`, planting
/// `count` names. Returns the run and the program's pid.
fn run_planter(exe: &Path, dir: &Path, target: &Path, count: usize) -> (Run, u32) {
    let prefix = dir.join("prof");
    let mut cmd = Command::new(exe);
    cmd.arg(&prefix).arg(target).arg(count.to_string());
    let conf = format!(
        "prof:true,prof_final:true,lg_prof_sample:10,prof_prefix:{}",
        prefix.display()
    );
    let logs = Scratch::new("plant-logs");
    let mut child = spawn_logged(cmd, &logs, Some(&conf));
    let pid = child.id();
    let status = wait_bounded(&mut child, LIMIT, "plant_names");
    let run = collect(status, &logs);
    assert!(
        run.status.success(),
        "plant_names failed\n{}",
        run.describe()
    );
    assert!(
        run.stdout.contains(&format!("pid {pid} planted {count}")),
        "{}",
        run.describe()
    );
    (run, pid)
}

/// Asserts that `path` still holds `want` (the start of what is there otherwise).
fn unchanged(path: &Path, want: &str) {
    let got = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        got == want,
        "{} was written: it holds {:?}",
        path.display(),
        &got[..got.len().min(80)]
    );
}

/// The files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_planted_symlink_or_file_is_left_alone_and_the_profile_takes_the_next_name() {
    let Some(exe) = planter() else { return };
    let scratch = Scratch::new("planted");
    let target = scratch.path("precious");
    std::fs::write(&target, "precious\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (run, pid) = run_planter(exe, &scratch.0, &target, 3);
    let name = |seq: u32| scratch.path(&format!("prof.{pid}.{seq}.f.heap"));

    // The symlink's target is neither truncated nor written, nor its mode changed.
    unchanged(
        &target,
        "precious
",
    );
    assert_eq!(mode(&target), 0o644);
    assert!(std::fs::symlink_metadata(name(0))
        .unwrap()
        .file_type()
        .is_symlink());
    // The existing regular file is not truncated.
    unchanged(&name(1), "existing\n");
    // The dangling symlink did not create its target.
    assert!(!scratch.path("precious.through-link").exists());
    assert!(std::fs::symlink_metadata(name(2))
        .unwrap()
        .file_type()
        .is_symlink());
    // The profile went to the next free name, as a regular file of mode 0600 (the program's
    // umask is 0, so this is the mode the engine asked for).
    let profile = name(3);
    let meta = std::fs::symlink_metadata(&profile).unwrap_or_else(|e| {
        panic!(
            "no profile at {}: {e}\n{}",
            profile.display(),
            run.describe()
        )
    });
    assert!(meta.is_file());
    assert_eq!(mode(&profile), 0o600);
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(text.starts_with("heap profile: "), "{text}");
    assert!(text.contains("\nMAPPED_LIBRARIES:\n"), "{text}");
    assert!(
        !run.stderr.contains("sampalloc:"),
        "no warning expected\n{}",
        run.describe()
    );
    // Nothing else was written but the profile's memory map beside it, as private.
    assert_eq!(
        mode(&scratch.path(&format!("prof.{pid}.3.f.heap.mem"))),
        0o600
    );
    assert_eq!(
        listing(&scratch.0),
        [
            "precious".to_string(),
            format!("prof.{pid}.0.f.heap"),
            format!("prof.{pid}.1.f.heap"),
            format!("prof.{pid}.2.f.heap"),
            format!("prof.{pid}.3.f.heap"),
            format!("prof.{pid}.3.f.heap.mem"),
        ]
    );
}

#[test]
fn a_profile_whose_names_are_all_taken_is_skipped_with_one_warning() {
    let Some(exe) = planter() else { return };
    let scratch = Scratch::new("all-taken");
    let target = scratch.path("precious");
    std::fs::write(&target, "precious\n").unwrap();
    // The engine tries 8 names; plant them all.
    let (run, pid) = run_planter(exe, &scratch.0, &target, 8);
    unchanged(
        &target,
        "precious
",
    );
    unchanged(&scratch.path(&format!("prof.{pid}.1.f.heap")), "existing\n");
    for seq in 0..8 {
        let p = scratch.path(&format!("prof.{pid}.{seq}.f.heap"));
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(meta.file_type().is_symlink(), seq != 1, "{}", p.display());
    }
    // No profile anywhere, and one warning line.
    assert_eq!(listing(&scratch.0).len(), 9, "{:?}", listing(&scratch.0));
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("sampalloc:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.describe());
    assert!(
        warnings[0].contains("heap profile skipped") && warnings[0].contains("taken"),
        "{}",
        warnings[0]
    );
}

#[test]
fn a_profile_on_a_free_name_is_private() {
    let Some(exe) = planter() else { return };
    let scratch = Scratch::new("free-name");
    let target = scratch.path("unused");
    let (run, pid) = run_planter(exe, &scratch.0, &target, 0);
    let profile = scratch.path(&format!("prof.{pid}.0.f.heap"));
    assert_eq!(mode(&profile), 0o600, "{}", run.describe());
    assert!(std::fs::read_to_string(&profile)
        .unwrap()
        .starts_with("heap profile: "));
}

/// The `sampalloc` command (built with the `cli` feature).
#[cfg(feature = "cli")]
mod cli {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::process::Output;

    fn sampalloc() -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sampalloc"));
        c.env_remove("SAMPALLOC_CONF").env_remove("LD_PRELOAD");
        c
    }

    fn stderr(o: &Output) -> String {
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// `sampalloc run --out <out> [extra] -- sh -c 'touch <marker>'` without a usable preload
    /// library (the refusals come before the program would run).
    fn run_out(out: &Path, extra: &[&str], marker: &Path) -> Output {
        sampalloc()
            .env("SAMPALLOC_LIB", root().join("Cargo.toml"))
            .arg("run")
            .arg("--out")
            .arg(out)
            .args(extra)
            .args(["--", "sh", "-c", "touch \"$0\""])
            .arg(marker)
            .output()
            .unwrap()
    }

    fn assert_refused(o: &Output, marker: &Path, why: &str) {
        let err = stderr(o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "one line expected: {err}");
        assert!(err.starts_with("sampalloc: error: refusing --out"), "{err}");
        assert!(err.contains(why), "{why:?} expected: {err}");
        assert!(err.contains("--allow-shared-out"), "{err}");
        assert!(!marker.exists(), "the program ran: {err}");
    }

    #[test]
    fn run_keeps_profiles_in_a_private_directory_with_private_files() {
        let Some(exe) = planter() else { return };
        let scratch = Scratch::new("run-private");
        let o = sampalloc()
            .env("SAMPALLOC_LIB", common::preload_lib())
            .args(["run", "--"])
            .arg(exe)
            .arg("unused-prefix")
            .arg(scratch.path("unused"))
            .arg("0")
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(0), "{err}");
        let dir = PathBuf::from(
            err.lines()
                .find_map(|l| l.strip_prefix("sampalloc: profiles go to "))
                .unwrap_or_else(|| panic!("no profile directory named: {err}")),
        );
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert!(meta.is_dir());
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        // An unguessable name: 16 random hex digits.
        let name = dir.file_name().unwrap().to_str().unwrap();
        let suffix = name
            .strip_prefix("sampalloc-")
            .unwrap_or_else(|| panic!("{name}"));
        assert!(
            suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
        let files = listing(&dir);
        assert!(!files.is_empty(), "{err}");
        for f in &files {
            assert!(f.ends_with(".f.heap") || f.ends_with(".f.heap.mem"), "{f}");
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_refuses_an_out_that_is_a_symlink_or_writable_by_others() {
        let scratch = Scratch::new("run-out");
        let marker = scratch.path("ran");

        let real = scratch.path("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = scratch.path("link");
        symlink(&real, &link).unwrap();
        assert_refused(&run_out(&link, &[], &marker), &marker, "symlink");
        assert!(listing(&real).is_empty());

        for m in [0o777, 0o1777, 0o770, 0o702] {
            let shared = scratch.path(&format!("shared-{m:o}"));
            std::fs::create_dir(&shared).unwrap();
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(m)).unwrap();
            assert_refused(
                &run_out(&shared, &[], &marker),
                &marker,
                "writable by group or others",
            );
            assert!(listing(&shared).is_empty());
        }

        // The explicit flag accepts a shared directory (the program runs).
        let shared = scratch.path("shared-777");
        let o = run_out(&shared, &["--allow-shared-out"], &marker);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(marker.exists(), "{}", stderr(&o));
        std::fs::remove_file(&marker).unwrap();

        // A private directory of one's own is accepted; a new one is created 0700.
        let o = run_out(&real, &[], &marker);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(marker.exists());
        std::fs::remove_file(&marker).unwrap();
        let fresh = scratch.path("new/profiles");
        let o = run_out(&fresh, &[], &marker);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&scratch.path("new")), 0o700);
    }

    #[test]
    fn readers_do_not_write_and_pprof_out_does_not_follow_links() {
        let scratch = Scratch::new("readers");
        let profile = scratch.path("sampalloc.4242.0.f.heap");
        std::fs::copy(root().join("tests/data/jemalloc.heap"), &profile).unwrap();
        std::fs::set_permissions(&profile, std::fs::Permissions::from_mode(0o600)).unwrap();
        let before = std::fs::read(&profile).unwrap();
        let mtime = std::fs::metadata(&profile).unwrap().modified().unwrap();
        let ok = |args: &[&str]| {
            let o = sampalloc()
                .args(args)
                .current_dir(&scratch.0)
                .output()
                .unwrap();
            assert!(o.status.success(), "{args:?}: {}", stderr(&o));
            o
        };
        let p = profile.to_str().unwrap();
        ok(&["top", p]);
        ok(&["top", p, "--base", p, "--json"]);
        ok(&["diff", p, p]);
        ok(&["flamegraph", p]);
        ok(&["stacks", p]);
        ok(&["pprof", p]); // stdout is a pipe here
        assert_eq!(std::fs::read(&profile).unwrap(), before);
        assert_eq!(
            std::fs::metadata(&profile).unwrap().modified().unwrap(),
            mtime
        );
        assert_eq!(listing(&scratch.0), ["sampalloc.4242.0.f.heap"]);

        // pprof -o: a new file is 0600 and gzip.
        let out = scratch.path("heap.pb.gz");
        ok(&["pprof", "-o", out.to_str().unwrap(), p]);
        assert_eq!(mode(&out) & 0o077, 0, "{:o}", mode(&out));
        assert_eq!(&std::fs::read(&out).unwrap()[..2], &[0x1f, 0x8b]);
        // Its own earlier output is replaced.
        std::fs::write(&out, "old output, longer than nothing").unwrap();
        ok(&["pprof", "-o", out.to_str().unwrap(), p]);
        assert_eq!(&std::fs::read(&out).unwrap()[..2], &[0x1f, 0x8b]);

        // A symlink is not followed: the target is untouched.
        let target = scratch.path("precious");
        std::fs::write(&target, "precious\n").unwrap();
        let link = scratch.path("link.pb.gz");
        symlink(&target, &link).unwrap();
        let dangling = scratch.path("dangling.pb.gz");
        symlink(scratch.path("made-through-link"), &dangling).unwrap();
        // A hard link to another file is not written through either.
        let hard = scratch.path("hard.pb.gz");
        std::fs::hard_link(&target, &hard).unwrap();
        for (o, why) in [
            (&link, "symlink"),
            (&dangling, "symlink"),
            (&hard, "hard link"),
        ] {
            let r = sampalloc()
                .args(["pprof", "-o", o.to_str().unwrap(), p])
                .output()
                .unwrap();
            let err = stderr(&r);
            assert_eq!(r.status.code(), Some(2), "{}: {err}", o.display());
            assert!(
                err.contains("refusing to write") && err.contains(why),
                "{err}"
            );
        }
        unchanged(
            &target,
            "precious
",
        );
        assert!(!scratch.path("made-through-link").exists());
    }
}
