//! OpenTelemetry's memory probes: the USDT contract of the OTel eBPF profiler's memory-profiling
//! design (`design-docs/00003-memory-profiling`). `otel_memory:alloc(ptr, size, weight)` fires on
//! each sampled allocation and `otel_memory:free(ptr)` on the free of a sampled block; nothing
//! else fires them. The notes (`.note.stapsdt`) are written by the `probe` crate's `probe_lazy!`,
//! which guards each probe with a USDT semaphore that a tracer raises when it attaches.
//!
//! Each probe sits alone in a non-inlined C-ABI function, so that at the probe its arguments are
//! in the ABI's first argument registers (`%rdi`, `%rsi`, `%rdx` on x86-64; `x0`–`x2` on arm64):
//! the profiler's first version reads them from there instead of decoding the notes' argument
//! descriptors (`tests/otel_probes.rs` checks the descriptors). With no tracer attached, a
//! sampled event costs the call, one load of the semaphore and a return; unsampled allocations
//! and frees never reach this module.

/// `otel_memory:alloc(ptr, size, weight)`: `ptr` the block handed out, `size` the bytes asked
/// for, `weight` the bytes this sample stands for (the unbiased estimate the profile adds for it,
/// `size / (1 - exp(-size/R))`, rounded).
#[inline(never)]
pub(super) extern "C" fn alloc(ptr: *mut u8, size: u64, weight: u64) {
    probe::probe_lazy!(otel_memory, alloc, ptr, size, weight);
}

/// `otel_memory:free(ptr)`: `ptr`, a sampled block, is being freed (fired before its memory
/// goes back, so a tracer never sees the address handed out again before its free).
#[inline(never)]
pub(super) extern "C" fn free(ptr: *mut u8) {
    probe::probe_lazy!(otel_memory, free, ptr);
}

/// The contract's weight of a sample: the bytes it stands for, `weight` allocations of `bytes`
/// (a block that exists), rounded. One conversion instruction: an `as` cast would add the
/// saturating checks.
#[inline(always)]
pub(super) fn weight_bytes(bytes: usize, weight: f64) -> u64 {
    // The half from the sampler's line of constants and the size through i64: no constant
    // from the compiler's pool, whose lines have left the cache between two samples.
    let half = crate::base::fmath::sampling_constants().half;
    // SAFETY: finite and in range: `weight` is `1 / (1 - exp(-bytes/R))` with `R <= 2^40`, so
    // `weight * bytes <= bytes + R`, and a block that was handed out is smaller than the
    // address space (2^57 bytes).
    unsafe { (weight * bytes as i64 as f64 + half).to_int_unchecked::<i64>() as u64 }
}
