//! `sampalloc trend` and timed dumps on a real run: `tests/profile/cache_and_leak.c` fills a
//! 48 MiB cache in the first quarter of its run and then only replaces entries, beside a leak
//! that grows linearly to 16 MiB. `top` and `diff` of the first and last profiles put the
//! cache first (it holds and gained the most); `trend` must put the leak first as growing and
//! call the cache levelled, over interval dumps (`lg_prof_interval`) and over timed dumps
//! (`prof_interval_ms`, also through `sampalloc run --every`).
//!
//! A mean sample interval of 64 KiB keeps the cache's estimate within a few per cent at each
//! dump (about 750 samples), so its late growth stays far below the levelled threshold.

mod common;

use common::heap_profile::profiles;
use common::profile_programs::{cc, run_prof};
use common::{command, have, preload_lib, Scratch};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const STEPS: &str = "400";
/// Sleep per step in slow runs: about 1.5 s in all.
const SLOW_PAUSE_US: &str = "3750";

fn sampalloc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sampalloc"))
}

fn output(mut c: Command) -> (Output, String, String) {
    let o = c.output().expect("run sampalloc");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (o, out, err)
}

fn program(dir: &Scratch) -> PathBuf {
    cc(dir, &["cache_and_leak.c"], "cache_and_leak", &["-O2", "-g"])
}

/// `sampalloc trend --json` over `dir`: (function, status, late growth) per site, in order.
fn trend_json(dir: &Path, svg: Option<&Path>) -> Vec<(String, String, f64)> {
    let mut c = sampalloc();
    c.arg("trend").arg(dir).arg("--json");
    if let Some(s) = svg {
        c.arg("--svg").arg(s);
    }
    let (o, out, err) = output(c);
    assert!(o.status.success(), "trend failed: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["function"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
                s["late_growth"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn assert_leak_first(sites: &[(String, String, f64)]) {
    assert!(sites.len() >= 2, "{sites:?}");
    assert_eq!(
        (sites[0].0.as_str(), sites[0].1.as_str()),
        ("leak_record", "growing"),
        "{sites:?}"
    );
    let cache = sites
        .iter()
        .find(|s| s.0 == "cache_insert")
        .unwrap_or_else(|| panic!("no cache_insert: {sites:?}"));
    assert_eq!(cache.1, "levelled", "{sites:?}");
}

#[test]
fn trend_puts_the_leak_first_and_the_cache_levels() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("trend-interval");
    let exe = program(&dir);
    let out = Scratch::new("trend-interval-out");
    let conf = format!(
        "prof:true,lg_prof_sample:16,lg_prof_interval:23,prof_final:true,prof_prefix:{}",
        out.path("ci").display()
    );
    let r = run_prof(command(&exe, [STEPS]), &conf);
    r.assert_ok("cache_and_leak", "cache_and_leak done");
    let dumps = profiles(&out.0, ".i.heap");
    // About 215 MiB allocated at one dump per 8 MiB.
    assert!(dumps.len() >= 20, "{} interval dumps", dumps.len());

    // What the two-profile views say: the cache holds and gained the most.
    let finals = profiles(&out.0, ".f.heap");
    let mut c = sampalloc();
    c.args(["diff", "--json"]).arg(&dumps[0]).arg(&finals[0]);
    let (o, text, err) = output(c);
    assert!(o.status.success(), "{err}");
    let d: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["sites"][0]["function"], "cache_insert", "{text}");

    let svg = dir.path("trend.svg");
    let sites = trend_json(&out.0, Some(&svg));
    eprintln!("trend: {sites:?}");
    assert_leak_first(&sites);
    let mib = 1048576.0;
    // Linear to 16 MiB: about 8 MiB over the last half.
    assert!(
        (5.0 * mib..11.0 * mib).contains(&sites[0].2),
        "late growth of the leak: {}",
        sites[0].2
    );

    // The chart: well-formed SVG with one line per site, the leak's first.
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&svg_text).unwrap_or_else(|e| panic!("{e}: {svg_text}"));
    let lines: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .collect();
    assert_eq!(lines.len(), sites.len().min(8), "{svg_text}");
    let first_title = lines[0]
        .children()
        .find(|n| n.has_tag_name("title"))
        .and_then(|t| t.text());
    assert_eq!(first_title, Some("leak_record"));

    // The table: the leak's row first, with a rising sparkline.
    let mut c = sampalloc();
    c.arg("trend").arg(&out.0);
    let (o, table, err) = output(c);
    assert!(o.status.success(), "{err}");
    let rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("status"))
        .skip(1)
        .collect();
    assert!(
        rows[0].starts_with("growing") && rows[0].contains("leak_record"),
        "{table}"
    );
    // Rising from the bottom: the leak's first profile holds about a twentieth of its last,
    // which sampling noise puts in the lowest or the next level (the next one in about one
    // run in a hundred).
    let spark: Vec<char> = rows[0]
        .chars()
        .filter(|c| ('▁'..='█').contains(c))
        .collect();
    assert!(
        matches!(spark.first(), Some('▁' | '▂')) && spark.last() == Some(&'█'),
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("levelled") && r.contains("cache_insert")),
        "{table}"
    );

    // Profiles named one by one, in any order, give the same ranking.
    let mut c = sampalloc();
    c.arg("trend").arg("--json");
    c.args(dumps.iter().rev());
    let (o, text, err) = output(c);
    assert!(o.status.success(), "{err}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["sites"][0]["function"], "leak_record", "{text}");
    let seqs: Vec<u64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

/// Counts `.i.heap` files in `dir` and checks that there are several and at most one per
/// 200 ms of the run (plus slack for the first tick's rounding).
fn assert_timed_dumps(dir: &Path, elapsed_ms: u128) -> usize {
    let n = profiles(dir, ".i.heap").len();
    eprintln!("{n} timed dumps in {elapsed_ms} ms");
    assert!(n >= 4, "{n} timed dumps in {elapsed_ms} ms");
    assert!(
        n as u128 <= elapsed_ms / 200 + 1,
        "{n} timed dumps in {elapsed_ms} ms: more than one per 200 ms"
    );
    n
}

#[test]
fn timed_dumps_of_a_slow_program() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("trend-timed");
    let exe = program(&dir);
    let out = Scratch::new("trend-timed-out");
    let conf = format!(
        "prof:true,lg_prof_sample:16,prof_interval_ms:200,prof_prefix:{}",
        out.path("tm").display()
    );
    preload_lib(); // built before the clock starts
    let start = Instant::now();
    let r = run_prof(command(&exe, [STEPS, SLOW_PAUSE_US]), &conf);
    let elapsed = start.elapsed().as_millis();
    r.assert_ok("cache_and_leak slow", "cache_and_leak done");
    assert!(!r.stderr.contains("SAMPALLOC_CONF"), "{}", r.stderr);
    assert_timed_dumps(&out.0, elapsed);
    assert_leak_first(&trend_json(&out.0, None));
}

#[test]
fn run_every_sets_timed_dumps() {
    if !have("cc") {
        return;
    }
    let dir = Scratch::new("trend-every");
    let exe = program(&dir);
    let out = dir.path("profiles");
    let mut c = sampalloc();
    c.env("SAMPALLOC_LIB", preload_lib())
        .env("SAMPALLOC_CONF", "lg_prof_sample:16")
        .args(["run", "--every", "200ms", "--out"])
        .arg(&out)
        .arg("--")
        .arg(&exe)
        .args([STEPS, SLOW_PAUSE_US]);
    let start = Instant::now();
    let (o, _, err) = output(c);
    let elapsed = start.elapsed().as_millis();
    assert!(o.status.success(), "{err}");
    assert_timed_dumps(&out, elapsed);

    for bad in ["10x", "0s", "ms", "-1s"] {
        let (o, _, err) = output({
            let mut c = sampalloc();
            c.args(["run", "--every", bad, "--", "true"]);
            c
        });
        assert_eq!(o.status.code(), Some(2), "--every {bad}: {err}");
        assert!(err.contains("--every"), "--every {bad}: {err}");
    }
}
