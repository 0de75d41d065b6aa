//! sampalloc as a Rust program's global allocator, with its statistics.
//!
//! `cargo run --release --example global_allocator`

#[global_allocator]
static GLOBAL: sampalloc::SampAlloc = sampalloc::SampAlloc;

fn main() {
    let words: Vec<String> = (0..100_000).map(|i| format!("word{i}")).collect();
    let total: usize = words.iter().map(String::len).sum();
    let s = sampalloc::stats::snapshot();
    println!("{} words, {total} bytes of text", words.len());
    println!(
        "allocated {} B, active {} B, resident {} B, mapped {} B, metadata {} B",
        s.allocated, s.active, s.resident, s.mapped, s.metadata
    );
    drop(words);
    sampalloc::purge(true);
    println!(
        "after freeing and purging: resident {} B",
        sampalloc::stats::resident()
    );
}
