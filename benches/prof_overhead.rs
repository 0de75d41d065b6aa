//! Profiling overhead: the same allocation-heavy workload with sampling off (`prof:false`),
//! on at the default interval (`prof:true`, 512 KiB mean), and set up but inactive
//! (`prof:true,prof_active:false`), interleaved in one process, reported as medians and
//! ratios to `prof:false`.
//!
//! `cargo bench --bench prof_overhead` (set `ROUNDS=N` for more repetitions).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

#[global_allocator]
static GLOBAL: sampalloc::SampAlloc = sampalloc::SampAlloc;

/// Allocation-heavy work: short-lived vectors of mixed sizes, strings in a map that churns, and
/// some medium buffers; about 1.5 GB allocated per call.
fn workload(seed: u64) -> u64 {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut checksum = 0u64;
    let mut map: HashMap<u64, Vec<u8>> = HashMap::new();
    for round in 0..400 {
        let batch: Vec<Box<[u8]>> = (0..2000)
            .map(|_| vec![1u8; 16 + (next() % 1024) as usize].into_boxed_slice())
            .collect();
        checksum += batch.iter().map(|b| b.len() as u64).sum::<u64>();
        for _ in 0..500 {
            let k = next() % 5000;
            map.insert(k, vec![2u8; 32 + (next() % 256) as usize]);
        }
        if round % 8 == 0 {
            let big = vec![3u8; 64 << 10 | (next() % 4096) as usize];
            checksum += black_box(&big).len() as u64;
        }
        black_box(&batch);
    }
    checksum + map.len() as u64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let modes = [
        ("prof:false", "prof:false"),
        (
            "prof:true (lg_prof_sample:19)",
            "prof:true,prof_active:true,lg_prof_sample:19",
        ),
        ("prof:true,prof_active:false", "prof:true,prof_active:false"),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    workload(1); // warm-up
    for r in 0..rounds {
        for (i, (_, conf)) in modes.iter().enumerate() {
            sampalloc::configure(conf).unwrap();
            workload(99); // lets every thread's schedule pick up the setting, and warms up
            let t = Instant::now();
            black_box(workload(r as u64 + 7));
            times[i].push(t.elapsed().as_secs_f64());
        }
    }
    let base = median(&mut times[0].clone());
    println!("{:<34} {:>10} {:>10}", "mode", "median s", "ratio");
    for (i, (name, _)) in modes.iter().enumerate() {
        let m = median(&mut times[i]);
        println!("{name:<34} {m:>10.4} {:>10.4}", m / base);
    }
    let (live, total) = sampalloc_core::profile::sample_counts();
    println!("samples taken: {total} (live {live})");
}
