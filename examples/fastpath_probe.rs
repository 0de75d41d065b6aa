#[global_allocator]
static G: sampalloc::SampAlloc = sampalloc::SampAlloc;
fn main() {
    let mut v = Vec::new();
    for i in 0..1000u64 { v.push(Box::new(i)); }
    println!("{}", v.iter().map(|b| **b).sum::<u64>());
}
