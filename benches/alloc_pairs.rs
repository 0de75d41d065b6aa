//! Allocation micro-benchmarks: `sampalloc::SampAlloc` against `std::alloc::System` (glibc
//! malloc), both called through their `GlobalAlloc` methods in the same process. Neither is the
//! global allocator of this binary (criterion's own allocations go to the default, glibc).
//!
//! Rows (one "op" is what the ns figures are divided by):
//! - `pair/N`: one `alloc` + `dealloc` of N bytes (op = the pair).
//! - `batch/N`, `batch/mixed`: 1000 `alloc`s, then the 1000 `dealloc`s in allocation order
//!   (mixed: a fixed pseudo-random set of sizes from 8 B to 4 KiB, freed in shuffled order;
//!   op = one alloc+dealloc, i.e. the batch time / 1000).
//! - `realloc/double`: a buffer grown from 16 B to 1 MiB by doubling, then freed (op = one
//!   `realloc`, 16 per iteration); `realloc/step64`: grown from 16 B to 1 MiB in +64 B steps
//!   (op = one `realloc`, 16 384 per iteration).
//! - `large/N`: one `alloc` + `dealloc` of 32 KiB or 256 KiB (op = the pair).
//!
//! Every block has one byte written (the last byte for realloc rows) through `black_box`, so no
//! allocation can be elided.
//!
//! Two measurements in one run:
//! 1. criterion, with both allocators of a row benchmarked back to back;
//! 2. an interleaved A/B table printed at the end: for each row, 21 rounds that each time the
//!    same fixed amount of work under System and under SampAlloc, alternating which goes first.
//!    Medians of ns/op and the median of the per-round ratios System/SampAlloc are robust to the
//!    noise of a shared machine. Skip it with `SAMPALLOC_AB=0`; `SAMPALLOC_AB_ROUNDS=N` sets
//!    the rounds.
//!
//! For a profiler, `SAMPALLOC_PROFILE=<row>:<allocator>:<iterations>` (e.g.
//! `pair/64:sampalloc:1000000`) runs just that workload and exits, without criterion.

use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use sampalloc::SampAlloc;
use std::alloc::{GlobalAlloc, Layout, System};
use std::time::{Duration, Instant};

const BATCH: usize = 1000;
const SIZES: [usize; 5] = [16, 64, 256, 1024, 4096];
const LARGE_SIZES: [usize; 2] = [32 << 10, 256 << 10];
const REALLOC_START: usize = 16;
const REALLOC_END: usize = 1 << 20;
const REALLOC_STEP: usize = 64;
/// Every layout uses this alignment: at most 16, so both allocators take their plain
/// `malloc`/`realloc` paths.
const ALIGN: usize = 8;

#[derive(Clone, Copy, Debug)]
enum Row {
    Pair(usize),
    Batch(usize),
    BatchMixed,
    ReallocDouble,
    ReallocStep64,
    Large(usize),
}

impl Row {
    fn all() -> Vec<Row> {
        let mut rows: Vec<Row> = SIZES.iter().map(|&s| Row::Pair(s)).collect();
        rows.extend(SIZES.iter().map(|&s| Row::Batch(s)));
        rows.push(Row::BatchMixed);
        rows.push(Row::ReallocDouble);
        rows.push(Row::ReallocStep64);
        rows.extend(LARGE_SIZES.iter().map(|&s| Row::Large(s)));
        rows
    }

    fn group(self) -> &'static str {
        match self {
            Row::Pair(_) => "pair",
            Row::Batch(_) | Row::BatchMixed => "batch",
            Row::ReallocDouble | Row::ReallocStep64 => "realloc",
            Row::Large(_) => "large",
        }
    }

    fn param(self) -> String {
        match self {
            Row::Pair(s) | Row::Batch(s) | Row::Large(s) => s.to_string(),
            Row::BatchMixed => "mixed".into(),
            Row::ReallocDouble => "double".into(),
            Row::ReallocStep64 => "step64".into(),
        }
    }

    fn name(self) -> String {
        format!("{}/{}", self.group(), self.param())
    }

    /// Ops per call of [`Workload::run_once`].
    fn ops(self) -> u64 {
        match self {
            Row::Pair(_) | Row::Large(_) => 1,
            Row::Batch(_) | Row::BatchMixed => BATCH as u64,
            Row::ReallocDouble => (REALLOC_END / REALLOC_START).trailing_zeros() as u64,
            Row::ReallocStep64 => ((REALLOC_END - REALLOC_START) / REALLOC_STEP) as u64,
        }
    }
}

/// Deterministic sizes and free order for the mixed batch (a fixed LCG, no dependencies).
struct Mixed {
    sizes: Vec<usize>,
    free_order: Vec<usize>,
}

impl Mixed {
    fn new() -> Self {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        // Mostly small: 3/4 from 8..=256 B, the rest from 257 B..=4 KiB.
        let sizes = (0..BATCH)
            .map(|_| {
                if next() % 4 != 0 {
                    8 + next() % 249
                } else {
                    257 + next() % (4096 - 256)
                }
            })
            .collect();
        let mut free_order: Vec<usize> = (0..BATCH).collect();
        for i in (1..BATCH).rev() {
            free_order.swap(i, next() % (i + 1));
        }
        Mixed { sizes, free_order }
    }
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, ALIGN).expect("valid layout")
}

/// Writes one byte of a fresh block so the allocation cannot be optimised away.
#[inline(always)]
fn touch(p: *mut u8, at: usize) {
    assert!(!p.is_null(), "out of memory");
    // SAFETY: `p` is a live block of more than `at` bytes.
    unsafe { black_box(p.add(at)).write(at as u8) };
}

/// One allocator and the scratch space a row needs.
struct Workload<'a, A: GlobalAlloc> {
    alloc: &'a A,
    ptrs: Vec<*mut u8>,
    mixed: &'a Mixed,
}

impl<'a, A: GlobalAlloc> Workload<'a, A> {
    fn new(alloc: &'a A, mixed: &'a Mixed) -> Self {
        Workload {
            alloc,
            ptrs: Vec::with_capacity(BATCH),
            mixed,
        }
    }

    #[inline(always)]
    fn pair(&self, size: usize) {
        let l = layout(size);
        // SAFETY: a non-zero-size layout; the block is freed with the same layout.
        unsafe {
            let p = self.alloc.alloc(black_box(l));
            touch(p, 0);
            self.alloc.dealloc(black_box(p), l);
        }
    }

    fn batch(&mut self, size: usize) {
        let l = layout(size);
        // SAFETY: non-zero-size layouts; each block is freed once with its own layout.
        unsafe {
            for _ in 0..BATCH {
                let p = self.alloc.alloc(black_box(l));
                touch(p, 0);
                self.ptrs.push(p);
            }
            for &p in &self.ptrs {
                self.alloc.dealloc(black_box(p), l);
            }
        }
        self.ptrs.clear();
    }

    fn batch_mixed(&mut self) {
        let m = self.mixed;
        // SAFETY: non-zero-size layouts; each block is freed once with its own layout.
        unsafe {
            for &s in &m.sizes {
                let p = self.alloc.alloc(black_box(layout(s)));
                touch(p, 0);
                self.ptrs.push(p);
            }
            for &i in &m.free_order {
                self.alloc
                    .dealloc(black_box(self.ptrs[i]), layout(m.sizes[i]));
            }
        }
        self.ptrs.clear();
    }

    fn realloc_growth(&self, step: Option<usize>) {
        // SAFETY: every realloc passes the block's current layout and a non-zero new size;
        // the final block is freed with its final layout.
        unsafe {
            let mut size = REALLOC_START;
            let mut p = self.alloc.alloc(layout(size));
            touch(p, size - 1);
            while size < REALLOC_END {
                let new_size = match step {
                    Some(s) => size + s,
                    None => size * 2,
                }
                .min(REALLOC_END);
                p = self.alloc.realloc(black_box(p), layout(size), new_size);
                touch(p, new_size - 1);
                size = new_size;
            }
            self.alloc.dealloc(black_box(p), layout(size));
        }
    }

    #[inline(always)]
    fn run_once(&mut self, row: Row) {
        match row {
            Row::Pair(s) | Row::Large(s) => self.pair(s),
            Row::Batch(s) => self.batch(s),
            Row::BatchMixed => self.batch_mixed(),
            Row::ReallocDouble => self.realloc_growth(None),
            Row::ReallocStep64 => self.realloc_growth(Some(REALLOC_STEP)),
        }
    }

    /// Runs `row` `iters` times and returns the elapsed time.
    fn time(&mut self, row: Row, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            self.run_once(row);
        }
        start.elapsed()
    }
}

fn criterion_benches(c: &mut Criterion, mixed: &Mixed) {
    for row in Row::all() {
        let mut g = c.benchmark_group(row.group());
        g.throughput(Throughput::Elements(row.ops()));
        g.bench_function(BenchmarkId::new("system", row.param()), |b| {
            let mut w = Workload::new(&System, mixed);
            b.iter(|| w.run_once(row));
        });
        g.bench_function(BenchmarkId::new("sampalloc", row.param()), |b| {
            let mut w = Workload::new(&SampAlloc, mixed);
            b.iter(|| w.run_once(row));
        });
        g.finish();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The interleaved A/B table (see the module docs).
fn ab_table(mixed: &Mixed, rounds: usize, filter: Option<&str>) {
    const TARGET: Duration = Duration::from_millis(4);
    println!();
    println!(
        "Interleaved A/B: {rounds} rounds per row, ns per op (median), ratio System/SampAlloc"
    );
    println!(
        "{:<16} {:>12} {:>12} {:>14} {:>14}",
        "row", "system", "sampalloc", "ratio(med/med)", "ratio(med rnd)"
    );
    for row in Row::all() {
        let name = row.name();
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let mut sys = Workload::new(&System, mixed);
        let mut samp = Workload::new(&SampAlloc, mixed);
        // Warm both up, then pick an iteration count that takes about TARGET under System.
        sys.time(row, 16);
        samp.time(row, 16);
        let mut iters = 1u64;
        while sys.time(row, iters) < TARGET && iters < 1 << 30 {
            iters *= 2;
        }
        let ops = (iters * row.ops()) as f64;
        let (mut ts, mut tp, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            let (s, p) = if r % 2 == 0 {
                let s = sys.time(row, iters);
                (s, samp.time(row, iters))
            } else {
                let p = samp.time(row, iters);
                (sys.time(row, iters), p)
            };
            let (s, p) = (s.as_nanos() as f64 / ops, p.as_nanos() as f64 / ops);
            ts.push(s);
            tp.push(p);
            ratios.push(s / p);
        }
        let (ms, mp) = (median(&mut ts), median(&mut tp));
        println!(
            "{:<16} {:>12.2} {:>12.2} {:>14.2} {:>14.2}",
            name,
            ms,
            mp,
            ms / mp,
            median(&mut ratios)
        );
    }
}

/// `SAMPALLOC_PROFILE=<row>:<allocator>:<iterations>`: one workload alone, for a profiler.
fn profile(spec: &str, mixed: &Mixed) {
    let parts: Vec<&str> = spec.split(':').collect();
    let [row_name, which, iters] = parts[..] else {
        panic!("SAMPALLOC_PROFILE=<row>:<system|sampalloc>:<iterations>, got {spec}");
    };
    let row = Row::all()
        .into_iter()
        .find(|r| r.name() == row_name)
        .unwrap_or_else(|| panic!("unknown row {row_name}"));
    let iters: u64 = iters.parse().expect("iterations");
    let t = match which {
        "system" => Workload::new(&System, mixed).time(row, iters),
        "sampalloc" => Workload::new(&SampAlloc, mixed).time(row, iters),
        other => panic!("unknown allocator {other}"),
    };
    let ns = t.as_nanos() as f64 / (iters * row.ops()) as f64;
    println!("{row_name} {which}: {iters} iterations, {ns:.2} ns/op");
}

fn main() {
    let mixed = Mixed::new();
    if let Ok(spec) = std::env::var("SAMPALLOC_PROFILE") {
        profile(&spec, &mixed);
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs each benchmark once in `--test` mode: skip the A/B table.
    let test_mode = args.iter().any(|a| a == "--test" || a == "--list");
    // A bare positional argument is criterion's filter; the A/B table honours it too.
    let filter = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(String::as_str);

    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    criterion_benches(&mut c, &mixed);
    c.final_summary();

    let ab = std::env::var("SAMPALLOC_AB").map_or(true, |v| v != "0");
    if ab && !test_mode {
        let rounds = std::env::var("SAMPALLOC_AB_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(21);
        ab_table(&mixed, rounds, filter);
    }
}
