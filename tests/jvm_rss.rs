//! Issue 20: a JVM whose native memory churns must not see its RSS creep up under
//! `libsampalloc.so`, nor sampalloc keep more freed memory resident than its decay allows.
//!
//! `tests/preload/NativeChurn.java` runs 16 threads (on whatever cores there are) looping GZIP
//! round trips and `Unsafe.allocateMemory`/`freeMemory` of 16 B–1 MiB blocks in a window of 64 a
//! thread, in a JVM whose heap is fixed and pre-touched (`-Xms512m -Xmx512m -XX:+AlwaysPreTouch`)
//! so that the Java heap adds nothing to RSS once started. It runs under the preload with
//! `SAMPALLOC_CONF=stats_print:true` for [`BUSY_SECS`] while this test samples its `VmRSS`
//! (`/proc/<pid>/status`) every second. The test asserts:
//!
//! - RSS over the second half of the run grows by at most [`MAX_GROWTH`] (the largest of the
//!   first three samples of the half against the median of its last three, so that one noisy
//!   sample decides nothing; the workload suite's jvm-churn row measures the 60 s run against
//!   the other allocators);
//! - decay keeps up while every arena is busy: of sampalloc's dirty pages at exit (statistics
//!   report, `held:` line), those freed more than one decay window ago (`dirty_expired`) are at
//!   most [`MAX_EXPIRED_SHARE`] of the dirty bytes plus [`EXPIRED_SLACK`] (the decay list is only
//!   nearly ordered, so a few spans wait up to a window behind younger ones). The dirty bytes
//!   themselves are mostly the program's windows, freed a moment before exit.
//!
//! Java missing: the test fails under CI (`CI` set, `.ci/run` installs it) and skips elsewhere.

mod common;

use common::{collect, command, have, kill_group, mib, spawn_logged, Scratch};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Seconds the Java threads loop.
const BUSY_SECS: u64 = 20;
/// Java threads.
const THREADS: usize = 16;
/// Largest growth of RSS over the second half of the run, as a fraction. The JVM's own RSS
/// moves by about 1 % in 20 s on a busy 2-core machine (JIT code cache, compiler arenas): a
/// run under CI's neighbours measured +1.17 % with sampalloc's dirty pages all younger than a
/// window. 2 % (about 15 MiB here) still fails on a creep of the size reported (+15 MiB in 30 s).
const MAX_GROWTH: f64 = 0.02;
/// Share of the dirty bytes at exit that may be older than one decay window.
const MAX_EXPIRED_SHARE: f64 = 0.10;
/// Older-than-a-window dirty bytes allowed on top of that share.
const EXPIRED_SLACK: u64 = 4 << 20;
/// The whole run (JVM start, pre-touching, the loops, exit) is killed after this.
const LIMIT: Duration = Duration::from_secs(120);
const REPORT_HEADER: &str = "___ sampalloc statistics ___";

/// `VmRSS` of process `pid` in KiB, while it runs.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Samples the child's RSS every second until it exits: `(seconds since start, KiB)`.
fn sample_until_exit(
    child: &mut Child,
    start: Instant,
) -> (std::process::ExitStatus, Vec<(f64, u64)>) {
    let mut samples = Vec::new();
    let mut next = start + Duration::from_secs(1);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status, samples);
        }
        let now = Instant::now();
        if now >= start + LIMIT {
            kill_group(child);
            panic!("java NativeChurn did not finish within {LIMIT:?}; killed. RSS samples: {samples:?}");
        }
        if now >= next {
            if let Some(kib) = vm_rss_kib(child.id()) {
                samples.push(((now - start).as_secs_f64(), kib));
            }
            next += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The figures of one statistics report.
#[derive(Debug, Default)]
struct Report {
    /// `name: number` fields of the lines before the class table, in order; see [`parse_report`].
    fields: Vec<(String, u64)>,
    /// Free blocks held in thread caches, in bytes (the class table's `cached` × `size`).
    cached_bytes: u64,
}

impl Report {
    fn get(&self, name: &str) -> Option<u64> {
        self.fields.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }

    /// Bytes sampalloc keeps resident that no block uses: dirty pages (cached huge blocks
    /// included) and the free blocks in thread caches.
    fn resident_free(&self) -> u64 {
        self.get("dirty").expect("the report has a dirty: figure") + self.cached_bytes
    }

    fn describe(&self) -> String {
        let f: Vec<String> = self
            .fields
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        format!("{}; thread-cached bytes={}", f.join(" "), self.cached_bytes)
    }
}

/// Reads the last statistics report on `stderr` (`alloc-core/src/stats.rs`, `print`).
///
/// Every line between the header and the class table is read as fields separated by two
/// spaces, each `name: number[ word][, number word]...`: `dirty: 123` gives `dirty`, and
/// `huge: 0 live, 5 cached, 2 requests` gives `huge` (0), `huge live`, `huge cached` and
/// `huge requests`. Lines or fields of any other shape are skipped, so added lines (such as
/// figures on how old the dirty pages are) are read if they follow the pattern and harmless if
/// not. The class table's columns are found by their names in its header line.
fn parse_report(stderr: &str) -> Option<Report> {
    let (_, text) = stderr.rsplit_once(REPORT_HEADER)?;
    let mut r = Report::default();
    let mut columns: Option<(usize, usize, usize)> = None; // (size, cached, count)
    for line in text.lines() {
        if let Some((size, cached, count)) = columns {
            let cols: Vec<u64> = line
                .split_whitespace()
                .map_while(|t| t.parse().ok())
                .collect();
            if cols.len() != count || line.split_whitespace().count() != count {
                columns = None;
                continue;
            }
            r.cached_bytes += cols[size] * cols[cached];
        } else if line.starts_with("class ") {
            let names: Vec<&str> = line.split_whitespace().collect();
            let at = |n: &str| names.iter().position(|&c| c == n);
            columns = at("size")
                .zip(at("cached"))
                .map(|(s, c)| (s, c, names.len()));
        } else {
            for field in line.split("  ") {
                let Some((name, rest)) = field.trim().split_once(": ") else {
                    continue;
                };
                for (i, item) in rest.split(", ").enumerate() {
                    let mut words = item.split_whitespace();
                    let Some(v) = words.next().and_then(|w| w.parse::<u64>().ok()) else {
                        break;
                    };
                    if i == 0 {
                        r.fields.push((name.to_string(), v));
                    }
                    if let Some(word) = words.next() {
                        r.fields.push((format!("{name} {word}"), v));
                    }
                }
            }
        }
    }
    Some(r)
}

#[test]
fn jvm_native_churn_keeps_rss_flat() {
    if !have("java") || !have("javac") {
        return;
    }
    let dir = Scratch::new("jvm-rss");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/preload/NativeChurn.java");
    let mut javac = command("javac", ["-nowarn", "-d"]);
    javac.arg(&dir.0).arg(&src);
    let r = common::run_conf(javac, None);
    assert!(r.status.success(), "javac failed\n{}", r.describe());

    let mut java = command(
        "java",
        ["-Xms512m", "-Xmx512m", "-XX:+AlwaysPreTouch", "-cp"],
    );
    java.arg(&dir.0)
        .arg("NativeChurn")
        .arg(BUSY_SECS.to_string())
        .arg(THREADS.to_string());
    let logs = Scratch::new("jvm-rss-logs");
    common::preload_lib(); // built (if need be) before the clock starts
    let start = Instant::now();
    let mut child = spawn_logged(java, &logs, Some("stats_print:true"));
    let (status, samples) = sample_until_exit(&mut child, start);
    let run = collect(status, &logs);
    assert!(
        run.status.success(),
        "java NativeChurn failed under the preload\n{}",
        run.describe()
    );
    let report = parse_report(&run.stderr).unwrap_or_else(|| {
        panic!(
            "no sampalloc statistics on stderr: was the JVM served by the preload?\n{}",
            run.describe()
        )
    });
    let shown: Vec<String> = samples
        .iter()
        .map(|&(t, kib)| format!("{t:.0}s:{:.0}", kib as f64 / 1024.0))
        .collect();
    let shown = format!("RSS (MiB) by time since start: {}", shown.join(" "));
    let result = run
        .stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or("");
    eprintln!(
        "{result}\n{shown}\nstatistics at exit: {}",
        report.describe()
    );

    // RSS over the second half of the loops. The Java clock starts after the JVM has started,
    // so every sample up to BUSY_SECS after the spawn is taken while the threads loop.
    let half: Vec<u64> = samples
        .iter()
        .filter(|&&(t, _)| t >= BUSY_SECS as f64 / 2.0 && t <= BUSY_SECS as f64)
        .map(|&(_, kib)| kib)
        .collect();
    assert!(
        half.len() >= 6,
        "too few RSS samples in the second half\n{shown}"
    );
    let first = *half[..3].iter().max().unwrap();
    let mut last = half[half.len() - 3..].to_vec();
    last.sort_unstable();
    let last = last[1];
    let growth = (last as f64 - first as f64) / first as f64;
    eprintln!(
        "second half: {:.1} -> {:.1} MiB ({:+.2} %, at most {:+.2} %)",
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        100.0 * growth,
        100.0 * MAX_GROWTH
    );

    // Dirty pages older than a decay window at exit.
    let dirty = report.get("dirty").expect("dirty in the report");
    let expired = report
        .get("dirty_expired")
        .expect("dirty_expired in the report's held: line");
    let allowed = (MAX_EXPIRED_SHARE * dirty as f64) as u64 + EXPIRED_SLACK;
    eprintln!(
        "at exit: dirty {:.1} MiB, of which freed over a decay window ago {:.1} MiB (at most \
         {:.1} MiB)",
        mib(dirty as usize),
        mib(expired as usize),
        mib(allowed as usize)
    );

    assert!(
        growth <= MAX_GROWTH,
        "RSS grew by {:.2} % over the second half ({:.1} -> {:.1} MiB; at most {:.0} %)\n{shown}\n{}",
        100.0 * growth,
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        100.0 * MAX_GROWTH,
        report.describe()
    );
    assert!(
        expired <= allowed,
        "{:.1} MiB of sampalloc's dirty pages were freed over a decay window ago, more than \
         {:.1} MiB: decay falls behind in busy arenas\n{}",
        mib(expired as usize),
        mib(allowed as usize),
        report.describe()
    );
}

#[test]
fn report_parser_reads_the_held_line() {
    let stderr = "noise\n___ sampalloc statistics ___\n\
        allocated: 9074192  active: 28127232  resident: 217378816  mapped: 262144000  retained: 44765184  metadata: 10539008\n\
        arenas: 8  threads: 13  segments: 61  dirty: 178712576  purged pages: 7987  huge: 0 live, 4096 cached, 1 requests\n\
        held: dirty: 178712576  dirty_expired: 49152  oldest_dirty_ms: 889  cached: 12370960\n\
        class      size     requests         live     cached    slabs    empty\n\
            0        16         1000           10          5        1        0\n\
            3        64          500            2          3        1        0\n\
        trailing text\n";
    let r = parse_report(stderr).expect("a report");
    assert_eq!(r.get("allocated"), Some(9_074_192));
    assert_eq!(r.get("dirty"), Some(178_712_576));
    assert_eq!(r.get("purged pages"), Some(7987));
    assert_eq!(r.get("huge"), Some(0));
    assert_eq!(r.get("huge cached"), Some(4096));
    assert_eq!(r.get("huge requests"), Some(1));
    assert_eq!(r.get("dirty_expired"), Some(49_152));
    assert_eq!(r.get("oldest_dirty_ms"), Some(889));
    assert_eq!(r.cached_bytes, 16 * 5 + 64 * 3);
    assert_eq!(r.resident_free(), 178_712_576 + 16 * 5 + 64 * 3);
    assert!(parse_report("no report here").is_none());
}
