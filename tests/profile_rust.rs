//! The profiler through the Rust API: a program on `SampAlloc` leaks in three known functions
//! among heavy churn that it frees; the live sites found in-process and in the written profile
//! must be those functions, with estimates within ±10 % of the truth.
//!
//! Sampling noise per site is about 1/sqrt(samples): with a 4 KiB mean interval and 8 MiB per
//! site (about 2000 samples) one standard deviation is about 2.2 %, so ±10 % is over four.

mod common;

use common::churn;
use sampalloc::SampAlloc;
use std::alloc::Layout;

#[global_allocator]
static GLOBAL: SampAlloc = SampAlloc;

const SITE_BYTES: usize = 8 << 20;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

// Each leaking function allocates directly, so the first frame of its samples is inside it.
#[inline(never)]
fn leak_small(out: &mut Vec<(*mut u8, usize)>) {
    for _ in 0..SITE_BYTES / 256 {
        // SAFETY: non-zero layout; the block is kept (leaked) by the caller.
        out.push((unsafe { std::alloc::alloc(layout(256)) }, 256));
    }
}

#[inline(never)]
fn leak_medium(out: &mut Vec<(*mut u8, usize)>) {
    for _ in 0..SITE_BYTES / 3000 {
        // SAFETY: as above.
        out.push((unsafe { std::alloc::alloc(layout(3000)) }, 3000));
    }
}

#[inline(never)]
fn leak_large(out: &mut Vec<(*mut u8, usize)>) {
    for _ in 0..SITE_BYTES / 100_000 {
        // SAFETY: as above.
        out.push((unsafe { std::alloc::alloc(layout(100_000)) }, 100_000));
    }
}

/// The test function a return address belongs to: the known function with the highest start
/// at or below it (these functions are small and their code is contiguous).
fn owner(pc: usize, known: &[(&'static str, usize)]) -> Option<&'static str> {
    known
        .iter()
        .filter(|(_, f)| *f < pc && pc - *f < 4096)
        .max_by_key(|(_, f)| *f)
        .map(|(n, _)| *n)
}

/// Live bytes per known function, attributing each site to the function its first frame is in.
fn live_by_function(known: &[(&'static str, usize)]) -> Vec<(&'static str, f64, u64, f64)> {
    let mut out: Vec<(&'static str, f64, u64, f64)> =
        known.iter().map(|k| (k.0, 0.0, 0, 0.0)).collect();
    for site in sampalloc::profile::sites() {
        if let Some(name) = site.frames.first().and_then(|&pc| owner(pc, known)) {
            let e = out.iter_mut().find(|e| e.0 == name).unwrap();
            e.1 += site.live_bytes;
            e.2 += site.live_samples;
            e.3 += site.total_bytes;
        }
    }
    out
}

#[test]
fn finds_the_leaking_functions_with_unbiased_estimates() {
    sampalloc::configure("prof:true,prof_active:true,lg_prof_sample:12").unwrap();
    // Let this thread's schedule pick up the new setting (it is read at the next tick).
    churn(200);
    let mut kept = Vec::with_capacity(SITE_BYTES / 256 + SITE_BYTES / 3000 + SITE_BYTES / 100_000);
    leak_small(&mut kept);
    leak_medium(&mut kept);
    leak_large(&mut kept);
    churn(3000);
    let known = [
        ("leak_small", leak_small as *const () as usize),
        ("leak_medium", leak_medium as *const () as usize),
        ("leak_large", leak_large as *const () as usize),
        ("churn", churn as *const () as usize),
    ];
    let truth = [
        ("leak_small", SITE_BYTES / 256 * 256),
        ("leak_medium", SITE_BYTES / 3000 * 3000),
        ("leak_large", SITE_BYTES / 100_000 * 100_000),
    ];
    let found = live_by_function(&known);

    for (name, bytes) in truth {
        let (_, live, samples, _) = found.iter().find(|e| e.0 == name).copied().unwrap();
        let err = (live - bytes as f64) / bytes as f64;
        assert!(
            err.abs() < 0.10,
            "{name}: estimated {live:.0} live bytes, truth {bytes} ({:+.1} %, {samples} samples)",
            err * 100.0
        );
    }
    // Churn was freed: nothing of it is live, but it counts cumulatively.
    let (_, churn_live, _, churn_total) = found.iter().find(|e| e.0 == "churn").copied().unwrap();
    assert!(churn_live < 1e6, "churn still live: {churn_live}");
    assert!(
        churn_total > 1e8,
        "churn counted cumulatively: {churn_total}"
    );

    // The written profile says the same to a reader applying the heap_v2 scaling.
    let text = String::from_utf8(sampalloc::profile::to_bytes()).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("heap profile:") && header.ends_with("@ heap_v2/4096"),
        "{header}"
    );
    let r = 4096.0f64;
    let mut read_back = 0.0;
    for line in lines.take_while(|l| !l.is_empty()) {
        let (counts, _) = line.split_once(" @ ").unwrap();
        let nums: Vec<f64> = counts
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let (objs, bytes) = (nums[0], nums[1]);
        if objs > 0.0 {
            read_back += bytes / (1.0 - (-(bytes / objs) / r).exp());
        }
    }
    let truth_total: usize = truth.iter().map(|t| t.1).sum();
    assert!(
        (read_back - truth_total as f64).abs() / (truth_total as f64) < 0.10,
        "a reader gets {read_back:.0} live bytes, truth about {truth_total}"
    );
    assert!(text.contains("\nMAPPED_LIBRARIES:\n"));

    let dir = std::env::temp_dir().join(format!("sampalloc-prof-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // profiles are never written over a file
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("manual.heap");
    sampalloc::profile::dump(&path).unwrap();
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .starts_with("heap profile:"));
    assert_eq!(
        sampalloc::profile::dump(&path).unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists
    );
    assert!(sampalloc::profile::dump("/nonexistent-sampalloc-dir/x.heap").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
    for (p, size) in kept {
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(p, layout(size)) };
    }
    sampalloc::profile::set_active(false);
}
