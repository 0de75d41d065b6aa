//! `libsampalloc.so` under `LD_PRELOAD`: C conformance, misuse, the programs that break
//! preloaded allocators (dlopen, fork from threads, thread churn, C++), and real programs.
//!
//! The test builds the cdylib itself (`cargo build -p sampalloc-preload`, same profile as this
//! test), compiles the C and C++ sources of `tests/preload/` into a scratch directory, and runs
//! everything with `LD_PRELOAD` and `SAMPALLOC_CONF=stats_print:true`: the statistics report on
//! stderr proves that sampalloc served the program. Every run is bounded by a timeout.
//!
//! A tool that is missing (a compiler, java, redis...) fails the test when `CI` is set (`.ci/run`
//! installs them all) and skips it with a note otherwise.

mod common;

use common::{collect, command, have, kill_group, spawn_logged, wait_bounded, Run, Scratch};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const REPORT_HEADER: &str = "___ sampalloc statistics ___";
const STATS: Option<&str> = Some("stats_print:true");

fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/preload")
}

/// Compiles `sources` (relative to `tests/preload`) with `compiler` into `scratch/out`.
fn compile(compiler: &str, scratch: &Scratch, srcs: &[&str], out: &str, flags: &[&str]) -> PathBuf {
    common::compile_in(&sources(), compiler, scratch, srcs, out, flags)
}

/// Runs `cmd` with the preload and `stats_print:true`.
fn run(cmd: Command) -> Run {
    common::run_conf(cmd, STATS)
}

/// Runs `cmd` without the preload (compilers, reference runs).
fn run_plain(cmd: Command) -> Run {
    common::run_conf(cmd, None)
}

// ---------------------------------------------------------------------------------------------
// The statistics report

/// What the `stats_print` reports on a program's stderr add up to.
#[derive(Debug, Default)]
struct Served {
    reports: usize,
    /// Small and large requests in the class tables plus huge requests. Threads that have
    /// exited take their cached request counts with them, so this undercounts.
    requests: u64,
    /// The largest `allocated:` figure of any report (bytes live at exit).
    allocated: u64,
}

fn served(stderr: &str) -> Served {
    let mut s = Served::default();
    for report in stderr.split(REPORT_HEADER).skip(1) {
        s.reports += 1;
        let mut in_table = false;
        for line in report.lines() {
            if let Some(rest) = line.strip_prefix("allocated: ") {
                let n = rest.split(' ').next().and_then(|t| t.parse().ok());
                s.allocated = s.allocated.max(n.unwrap_or(0));
            } else if let Some(rest) = line.split("  huge: ").nth(1) {
                // "<live> live, <cached> cached, <n> requests"
                let n = rest.split(", ").nth(2).and_then(|t| t.split(' ').next());
                s.requests += n.and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
            } else if line.starts_with("class ") {
                in_table = true;
            } else if in_table {
                let cols: Vec<u64> = line
                    .split_whitespace()
                    .map_while(|t| t.parse().ok())
                    .collect();
                if cols.len() != 7 || line.split_whitespace().count() != 7 {
                    in_table = false;
                    continue;
                }
                s.requests += cols[2];
            }
        }
    }
    s
}

/// Asserts that the stats reports show sampalloc served at least `min_requests` allocations.
fn assert_served(r: &Run, what: &str, min_requests: u64) -> Served {
    let s = served(&r.stderr);
    assert!(
        s.reports >= 1,
        "{what}: no `{REPORT_HEADER}` report on stderr: sampalloc did not serve it\n{}",
        r.describe()
    );
    assert!(
        s.requests >= min_requests,
        "{what}: the reports count {} requests, expected at least {min_requests}\n{}",
        s.requests,
        r.describe()
    );
    s
}

#[test]
fn stats_report_parser() {
    let text = "noise\n___ sampalloc statistics ___\n\
        allocated: 1  active: 2  resident: 3  mapped: 4  retained: 5  metadata: 6\n\
        arenas: 8  threads: 1  segments: 1  dirty: 0  purged pages: 0  huge: 0 live, 0 cached, 7 requests\n\
        class      size     requests         live     cached    slabs    empty\n\
        \x20   0        16           46            0          0        1        0\n\
        \x20  19      1024          112            3          0        1        1\n\
        program output 1 2 3 4 5 6 7\n";
    let s = served(text);
    assert_eq!(s.reports, 1);
    assert_eq!(s.requests, 7 + 46 + 112);
    assert_eq!(s.allocated, 1);
    assert_eq!(served("no report").reports, 0);
}

// ---------------------------------------------------------------------------------------------
// C programs

#[test]
fn c_api_conformance() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("conformance");
    let exe = compile(
        "cc",
        &dir,
        &["conformance.c"],
        "conformance",
        &["-fno-builtin", "-Wno-deprecated-declarations", "-ldl"],
    );
    let r = run(Command::new(&exe));
    r.assert_ok("conformance", "conformance ok");
    let s = assert_served(&r, "conformance", 1000);
    assert!(
        s.reports >= 2,
        "malloc_stats() should print a report besides the one at exit\n{}",
        r.describe()
    );
}

/// Every function `libsampalloc.so` exports (`alloc-preload/src/exports.rs`).
const EXPORTS: &[&str] = &[
    // glibc's function behind `pthread_atfork`: the engine's fork handlers go first.
    "__register_atfork",
    "aligned_alloc",
    "calloc",
    "cfree",
    "dallocx",
    "free",
    "mallctl",
    "mallctlbymib",
    "mallctlnametomib",
    "mallinfo",
    "mallinfo2",
    "malloc",
    "malloc_stats",
    "malloc_stats_print",
    "malloc_trim",
    "malloc_usable_size",
    "mallocx",
    "mallopt",
    "memalign",
    "nallocx",
    "posix_memalign",
    "pvalloc",
    "rallocx",
    "realloc",
    "reallocarray",
    "sallocx",
    "sdallocx",
    "valloc",
    "xallocx",
    // C++ operator new and delete, every form (x86_64).
    "_ZdaPv",
    "_ZdaPvRKSt9nothrow_t",
    "_ZdaPvSt11align_val_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvm",
    "_ZdaPvmSt11align_val_t",
    "_ZdlPv",
    "_ZdlPvRKSt9nothrow_t",
    "_ZdlPvSt11align_val_t",
    "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdlPvm",
    "_ZdlPvmSt11align_val_t",
    "_Znam",
    "_ZnamRKSt9nothrow_t",
    "_ZnamSt11align_val_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t",
    "_Znwm",
    "_ZnwmRKSt9nothrow_t",
    "_ZnwmSt11align_val_t",
    "_ZnwmSt11align_val_tRKSt9nothrow_t",
];

/// glibc's internal names that glibc-linked programs reach, each a twin of the function it
/// names after `__libc_`.
const LIBC_TWINS: &[&str] = &[
    "__libc_calloc",
    "__libc_free",
    "__libc_malloc",
    "__libc_memalign",
    "__libc_pvalloc",
    "__libc_realloc",
    "__libc_valloc",
];

/// The library's writable segments each start a page (`alloc-preload/build.rs`): packed, the
/// relocated pointers and `.data` each straddled two pages, and the loader wrote all four in
/// every process.
#[test]
fn writable_segments_start_on_pages_of_their_own() {
    if !have("readelf") {
        return;
    }
    let out = Command::new("readelf")
        .arg("-lW")
        .arg(common::preload_lib())
        .output()
        .expect("run readelf");
    let headers = String::from_utf8_lossy(&out.stdout);
    // LOAD  offset  virtual-address  physical-address  file-size  memory-size  flags  align
    let writable: Vec<u64> = headers
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.first() == Some(&"LOAD") && f.get(6) == Some(&"RW"))
        .map(|f| u64::from_str_radix(f[2].trim_start_matches("0x"), 16).expect("an address"))
        .collect();
    assert!(writable.len() >= 2, "{headers}");
    for start in writable {
        assert_eq!(
            start % 4096,
            0,
            "a writable segment at {start:#x}:\n{headers}"
        );
    }
}

#[test]
fn exports_every_function_and_libc_twin() {
    if !have("nm") {
        return;
    }
    let lib = common::preload_lib();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(lib)
        .output()
        .expect("run nm");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nm -D --defined-only {} failed:\n{}",
        lib.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // "<address> <kind> <name>": the functions (text symbols, weak or not).
    let mut functions: Vec<&str> = text
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [_, "T" | "W", name] => Some(name),
                _ => None,
            },
        )
        .collect();
    functions.sort_unstable();
    functions.dedup();
    let twins: Vec<&str> = functions
        .iter()
        .copied()
        .filter(|f| f.starts_with("__libc_"))
        .collect();
    assert_eq!(twins, LIBC_TWINS, "the __libc_* twins exported\n{text}");
    for twin in LIBC_TWINS {
        let named = &twin["__libc_".len()..];
        assert!(
            EXPORTS.contains(&named),
            "{twin} names {named}, which is not exported"
        );
    }
    let mut expected: Vec<&str> = EXPORTS.iter().chain(LIBC_TWINS).copied().collect();
    expected.sort_unstable();
    assert_eq!(functions, expected, "the functions exported\n{text}");
}

#[test]
fn misuse_aborts_with_one_line() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("misuse");
    let exe = compile(
        "cc",
        &dir,
        &["misuse.c"],
        "misuse",
        &["-O0", "-fno-builtin", "-pthread"],
    );
    let cases = [
        ("free-stack", "free", "invalid pointer"),
        ("free-interior", "free", "invalid pointer"),
        ("free-interior-large", "free", "invalid pointer"),
        ("free-interior-huge", "free", "invalid pointer"),
        ("free-large-second-page", "free", "invalid pointer"),
        ("free-segment-header", "free", "invalid pointer"),
        // Its pages merged into a larger free span: no block starts there any more.
        ("double-free-released-slab", "free", "invalid pointer"),
        ("double-free", "free", "double free of"),
        ("double-free-later", "free", "double free of"),
        ("double-free-large", "free", "double free of"),
        ("double-free-huge", "free", "double free of"),
        // Freed by a thread of another arena: caught in its remote buffer, then in its slab.
        ("double-free-remote", "free", "double free of"),
        ("double-free-remote-later", "free", "double free of"),
        // Sent home by the freeing thread's cache, waiting in its bin's transfer array.
        ("double-free-parked", "free", "double free of"),
        ("realloc-invalid", "realloc", "invalid pointer"),
        ("realloc-stack", "realloc", "invalid pointer"),
        ("realloc-zero-invalid", "realloc", "invalid pointer"),
        ("realloc-zero-double-free", "realloc", "double free of"),
        ("realloc-zero-double-free-huge", "realloc", "double free of"),
        (
            "usable-size-invalid",
            "malloc_usable_size",
            "invalid pointer",
        ),
    ];
    // The remote cases need the second thread on another arena, whatever the CPU count.
    let plain = cases.map(|(mode, func, what)| (mode, func, what, "stats_print:true,narenas:4"));
    // Every block sampled: a sampled block lies inside a larger one, and its address is
    // recorded until its free, so a second free (or one of an address inside it) finds no
    // record and no block start: an invalid pointer.
    let every = "prof:true,lg_prof_sample:0";
    let sampled = [
        ("double-free", "free", "invalid pointer", every),
        ("double-free-later", "free", "invalid pointer", every),
        ("free-interior", "free", "invalid pointer", every),
        ("free-interior-large", "free", "invalid pointer", every),
        ("double-free-huge", "free", "double free of", every),
        (
            "realloc-zero-double-free",
            "realloc",
            "invalid pointer",
            every,
        ),
    ];
    for (mode, func, what, conf) in plain.into_iter().chain(sampled) {
        let r = common::run_conf(command(&exe, [mode]), Some(conf));
        assert_eq!(
            r.status.signal(),
            Some(6),
            "{mode}: expected SIGABRT\n{}",
            r.describe()
        );
        let ptr = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("ptr "))
            .unwrap_or_else(|| panic!("{mode}: no pointer printed\n{}", r.describe()));
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(
            lines,
            [format!("sampalloc: {func}(): {what} {ptr}")],
            "{mode}: expected exactly one line on stderr\n{}",
            r.describe()
        );
        assert!(!r.stdout.contains("survived"), "{mode}: {}", r.describe());
    }
}

#[test]
fn dlopen_dlclose_loop() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("dlopen");
    let plugin = compile(
        "cc",
        &dir,
        &["plugin.c"],
        "libplugin.so",
        &["-shared", "-fPIC"],
    );
    let exe = compile("cc", &dir, &["dlopen_loop.c"], "dlopen_loop", &["-ldl"]);
    let r = run(command(&exe, [&plugin]));
    r.assert_ok("dlopen loop", "dlopen ok");
    assert_served(&r, "dlopen loop", 1000);
}

#[test]
fn fork_from_threaded_process() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("fork");
    let exe = compile("cc", &dir, &["fork_threads.c"], "fork_threads", &[]);
    let r = run(Command::new(&exe));
    r.assert_ok("fork from threads", "fork ok");
    let s = assert_served(&r, "fork from threads", 1000);
    // The parent and the child that leaves through exit() both report.
    assert!(s.reports >= 2, "{}", r.describe());
}

/// A process that forks while it has one thread, then while a second thread allocates: the
/// fork handlers wait for the second thread (the statistics say so at each stage), and every
/// child allocates and exits cleanly.
#[test]
fn fork_handlers_wait_for_a_second_thread() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("fork-single");
    let exe = compile("cc", &dir, &["fork_single.c"], "fork_single", &["-pthread"]);
    let r = run(Command::new(&exe));
    r.assert_ok("fork with one thread, then two", "fork handlers ok");
}

/// A program whose own fork handlers allocate, registered before the engine started or
/// after it but before a second thread: the engine's handlers are registered before the
/// program's (glibc runs prepare handlers last-registered first, the others in order), so no
/// handler of the program's allocates while the engine's locks are held for the fork.
#[test]
fn the_engines_fork_handlers_come_before_the_programs() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("fork-order");
    let exe = compile("cc", &dir, &["fork_order.c"], "fork_order", &["-pthread"]);
    for order in ["first", "later"] {
        let mut cmd = Command::new(&exe);
        cmd.arg(order);
        run(cmd).assert_ok(order, &format!("fork order ok ({order})"));
    }
}

/// The profiler's own memory (its unwinder's module list, set up at start-up) comes from an
/// arena of its own: with the profiler on, every block of the program lands where it lands
/// with the profiler off (sampling paused, so that no sample moves a block).
#[test]
fn the_profiler_leaves_the_programs_blocks_where_they_were() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("layout");
    let exe = compile("cc", &dir, &["layout.c"], "layout", &[]);
    let off = common::run_conf(Command::new(&exe), Some("prof:false"));
    off.assert_ok("layout, profiler off", "layout ok");
    let conf = "prof:true,prof_active:false,prof_final:false";
    let on = common::run_conf(Command::new(&exe), Some(conf));
    on.assert_ok("layout, profiler on", "layout ok");
    assert_eq!(on.stdout, off.stdout, "blocks moved with the profiler on");
}

#[test]
fn threads_come_and_go() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("threads");
    let exe = compile("cc", &dir, &["threads.c"], "threads", &[]);
    let r = run(Command::new(&exe));
    r.assert_ok("thread churn", "threads ok");
    assert_served(&r, "thread churn", 100);
}

/// A program with one thread never asks for the CPU count, whose call faults in libc pages a
/// small program does not otherwise touch; one whose second thread finds arena 0 taken does,
/// to size the arena set.
#[test]
fn only_a_second_thread_asks_for_the_cpu_count() {
    if !have("cc") || !have("strace") {
        return;
    }
    let dir = Scratch::new("cpu-count");
    let calls = |src: &str, name: &str, expect: &str| {
        let exe = compile("cc", &dir, &[src], name, &[]);
        let log = dir.path(&format!("{name}.strace"));
        let mut strace = command(
            "strace",
            ["-f", "-qq", "-e", "trace=sched_getaffinity", "-o"],
        );
        strace.arg(&log).arg(&exe);
        // The preload without options: `stats_print` would size the arena set at exit.
        let r = common::run_conf(strace, Some(""));
        r.assert_ok(name, expect);
        let trace = std::fs::read_to_string(&log).expect("strace's log");
        trace.matches("sched_getaffinity(").count()
    };
    assert_eq!(calls("hello.c", "hello", "hello 5050"), 0, "one thread");
    assert!(calls("threads.c", "threads", "threads ok") > 0, "threads");
}

#[test]
fn cxx_exceptions_and_thread_destructors() {
    if !have("c++") {
        return;
    }
    let dir = Scratch::new("cxx");
    let exe = compile("c++", &dir, &["cxx.cpp"], "cxx", &["-std=c++17"]);
    let r = run(Command::new(&exe));
    r.assert_ok("C++ program", "c++ ok");
    assert_served(&r, "C++ program", 10_000);
}

/// C++ `operator new` and `delete` are the preload's own, in every form: aligned as asked, a
/// sized delete with a wrong size harmless, out of memory the new-handler then `bad_alloc`
/// (thrown by the C++ runtime's own `new`, which ours jumps to), nothrow forms null; also with
/// every allocation sampled. A bad pointer to `delete` aborts with one line naming it.
#[test]
fn cxx_operator_new_and_delete() {
    if !have("c++") {
        return;
    }
    let dir = Scratch::new("cxx_new");
    for (out, opt) in [("cxx_new", "-O2"), ("cxx_new_O0", "-O0")] {
        let exe = compile("c++", &dir, &["cxx_new.cpp"], out, &["-std=c++17", opt]);
        let r = run(Command::new(&exe));
        r.assert_ok("C++ new and delete", "new ok");
        assert_served(&r, "C++ new and delete", 1_000);
        let every = common::run_conf(Command::new(&exe), Some("prof:true,lg_prof_sample:0"));
        every.assert_ok("C++ new and delete, every allocation sampled", "new ok");
        // Under glibc's allocator the forms are libstdc++'s: the program says so.
        let plain = run_plain(Command::new(&exe));
        assert!(
            !plain.status.success() && plain.stderr.contains("FAILED"),
            "the program cannot tell whose new it calls\n{}",
            plain.describe()
        );
        for (mode, what) in [
            ("delete-interior", "invalid pointer"),
            ("delete-twice", "double free of"),
        ] {
            let r = run(command(&exe, [mode]));
            assert_eq!(r.status.signal(), Some(6), "{mode}: {}", r.describe());
            let ptr = r
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("ptr "))
                .unwrap_or_else(|| panic!("{mode}: no pointer printed\n{}", r.describe()));
            assert_eq!(
                r.stderr.lines().collect::<Vec<_>>(),
                [format!("sampalloc: operator delete(): {what} {ptr}")],
                "{mode}\n{}",
                r.describe()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real programs

#[test]
fn java_version() {
    if !have("java") {
        return;
    }
    let r = run(command("java", ["-version"]));
    r.assert_ok("java -version", "version");
    // The JVM's start-up threads have exited (taking their request counts with them), but
    // megabytes of its native memory are live in sampalloc at exit.
    let s = assert_served(&r, "java -version", 200);
    assert!(s.allocated >= 1 << 20, "{}", r.describe());
}

#[test]
fn java_zip_workload() {
    if !have("java") || !have("javac") {
        return;
    }
    let dir = Scratch::new("java");
    let mut javac = command("javac", ["-d"]);
    javac.arg(&dir.0).arg(sources().join("Zip.java"));
    let r = run(javac);
    assert!(r.status.success(), "javac failed\n{}", r.describe());
    assert_served(&r, "javac", 1000);
    let mut java = command("java", ["-cp"]);
    java.arg(&dir.0).arg("Zip");
    let r = run(java);
    r.assert_ok("java Zip", "zip ok");
    assert_served(&r, "java Zip", 1000);
}

#[test]
fn python3_json_re_sqlite() {
    if !have("python3") {
        return;
    }
    let r = run(command("python3", [sources().join("work.py")]));
    r.assert_ok("python3", "python ok");
    assert_served(&r, "python3", 10_000);
}

#[test]
fn gcc_compiles_a_program() {
    if !have("gcc") {
        return;
    }
    let dir = Scratch::new("gcc");
    let exe = dir.path("hello");
    let mut gcc = command("gcc", ["-O2", "-Wall", "-o"]);
    gcc.arg(&exe).arg(sources().join("hello.c"));
    let r = run(gcc);
    assert!(r.status.success(), "gcc failed\n{}", r.describe());
    // The driver, cc1, as and ld each report.
    let s = assert_served(&r, "gcc", 10_000);
    assert!(s.reports >= 3, "{}", r.describe());
    let out = run_plain(Command::new(&exe));
    out.assert_ok("the program gcc built", "hello 5050");
}

#[test]
fn git_init_add_commit() {
    if !have("git") {
        return;
    }
    let dir = Scratch::new("git");
    let repo = dir.path("repo");
    std::fs::create_dir(&repo).unwrap();
    for i in 0..50 {
        let text: String = (0..200)
            .map(|j| format!("line {j} of file {i}\n"))
            .collect();
        std::fs::write(repo.join(format!("file{i}.txt")), text).unwrap();
    }
    let git = |args: &[&str]| {
        let mut c = command("git", ["-c", "user.name=Sampalloc Test"]);
        c.args([
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(&repo)
        .env("HOME", &dir.0)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null");
        let r = run(c);
        assert!(r.status.success(), "git {args:?} failed\n{}", r.describe());
        assert_served(&r, "git", 100);
        r
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first commit under sampalloc"]);
    let log = git(&["log", "--oneline"]);
    assert!(
        log.stdout.contains("first commit under sampalloc"),
        "{}",
        log.describe()
    );
    let status = git(&["status", "--porcelain"]);
    assert_eq!(status.stdout.trim(), "", "{}", status.describe());
    let fsck = git(&["fsck", "--strict"]);
    assert!(fsck.status.success());
}

#[test]
fn sqlite3_script() {
    if !have("sqlite3") {
        return;
    }
    let dir = Scratch::new("sqlite");
    assert_sqlite3_script_ran(&run(sqlite3_script_in(&dir)), "sqlite3");
}

/// sqlite3 reading `script.sql` into a database in `dir`.
fn sqlite3_script_in(dir: &Scratch) -> Command {
    let mut c = command("sqlite3", [dir.path("test.db")]);
    c.arg(format!(".read {}", sources().join("script.sql").display()));
    c
}

/// Checks that `r`, a run of [`sqlite3_script_in`], printed the script's results.
fn assert_sqlite3_script_ran(r: &Run, what: &str) {
    r.assert_ok(what, "11111|");
    assert!(
        r.stdout.contains("name20000,name19999,name19998"),
        "{}",
        r.describe()
    );
    assert_served(r, "sqlite3", 10_000);
}

#[test]
fn node_script() {
    if !have("node") {
        return;
    }
    let r = run(command("node", ["-e", include_str!("preload/work.js")]));
    r.assert_ok("node", "node ok");
    assert_served(&r, "node", 10_000);
}

/// python3, sqlite3, node and java (multi-threaded zip work) with every allocation sampled:
/// each small block then lies inside a larger one and holds a stand-in of its class, and
/// `realloc` keeps it in place while it fits. Their output must not change.
#[test]
fn real_programs_with_every_allocation_sampled() {
    const EVERY: &str = "stats_print:true,prof:true,lg_prof_sample:0";
    if !have("python3") || !have("sqlite3") || !have("node") || !have("java") || !have("javac") {
        return;
    }
    let r = common::run_conf(command("python3", [sources().join("work.py")]), Some(EVERY));
    r.assert_ok("python3, every allocation sampled", "python ok");
    assert_served(&r, "python3", 10_000);
    let dir = Scratch::new("sqlite-sampled");
    let r = common::run_conf(sqlite3_script_in(&dir), Some(EVERY));
    assert_sqlite3_script_ran(&r, "sqlite3, every allocation sampled");
    let r = common::run_conf(
        command("node", ["-e", include_str!("preload/work.js")]),
        Some(EVERY),
    );
    r.assert_ok("node, every allocation sampled", "node ok");
    assert_served(&r, "node", 10_000);
    let classes = Scratch::new("java-sampled");
    let mut javac = command("javac", ["-d"]);
    javac.arg(&classes.0).arg(sources().join("Zip.java"));
    let r = run_plain(javac);
    assert!(r.status.success(), "javac failed\n{}", r.describe());
    let mut java = command("java", ["-cp"]);
    java.arg(&classes.0).arg("Zip");
    let r = common::run_conf(java, Some(EVERY));
    r.assert_ok("java Zip, every allocation sampled", "zip ok");
    assert_served(&r, "java Zip", 1000);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Sends one inline command to redis and returns the first reply line.
fn redis_command(port: u16, cmd: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{cmd}\r\n").as_bytes())?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
}

#[test]
fn redis_server_with_benchmark() {
    if !have("redis-server") || !have("redis-benchmark") {
        return;
    }
    let dir = Scratch::new("redis");
    let logs = Scratch::new("redis-logs");
    let port = free_port();
    let mut cmd = command(
        "redis-server",
        ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    );
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--dir")
        .arg(&dir.0)
        .current_dir(&dir.0);
    let mut server = spawn_logged(cmd, &logs, STATS);
    // Kill the server whatever happens below.
    struct Guard<'a>(&'a mut Child, bool);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            if !self.1 {
                kill_group(self.0);
            }
        }
    }
    let guard = Guard(&mut server, false);
    let start = Instant::now();
    loop {
        if redis_command(port, "PING").is_ok_and(|r| r == "+PONG") {
            break;
        }
        if let Some(status) = guard.0.try_wait().unwrap() {
            panic!(
                "redis-server exited early\n{}",
                collect(status, &logs).describe()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "redis-server did not answer PING within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut bench = command(
        "redis-benchmark",
        ["-h", "127.0.0.1", "-n", "20000", "-c", "10", "-q"],
    );
    bench
        .args(["-t", "set,get,incr,lpush,lpop,sadd,hset,mset"])
        .arg("-p")
        .arg(port.to_string());
    let b = run(bench);
    assert!(
        b.status.success(),
        "redis-benchmark failed\n{}",
        b.describe()
    );
    assert!(b.stdout.contains("requests per second"), "{}", b.describe());
    assert_eq!(
        redis_command(port, "SET sampalloc works").unwrap_or_default(),
        "+OK"
    );
    assert!(redis_command(port, "DBSIZE").is_ok_and(|r| r.starts_with(':')));
    // SHUTDOWN closes the connection without a reply.
    let _ = redis_command(port, "SHUTDOWN NOSAVE");
    let mut guard = guard;
    let status = wait_bounded(guard.0, Duration::from_secs(30), "redis-server shutdown");
    guard.1 = true;
    let r = collect(status, &logs);
    assert!(r.status.success(), "redis-server failed\n{}", r.describe());
    assert_served(&r, "redis-server", 10_000);
}
