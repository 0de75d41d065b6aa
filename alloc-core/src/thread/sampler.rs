//! The per-thread event schedule: when to take the next heap-profile sample, and when to do
//! periodic work ("ticks": decay, profile-interval accounting, pending dumps).
//!
//! Sampling is byte-based and Poisson, as in jemalloc and tcmalloc: each thread counts down the
//! bytes to its next sample point, drawn from an exponential distribution with mean
//! `R = 2^lg_prof_sample`; the allocation that crosses the point is sampled. So an allocation
//! of `s` bytes is sampled with probability `1 - exp(-s/R)`, and a sample stands for
//! `1 / (1 - exp(-s/R))` allocations (the unbiased weight).
//!
//! Both events share one countdown (`ThreadCache::bytes_until_event`), so an allocation that is
//! not sampled pays one subtraction and one predictable branch, and with profiling off the
//! countdown only ever reaches the tick.
//!
//! The countdown, the weight and the recorded size all use the *requested* size. Using one size
//! for all three keeps each sample's estimate `s/(1-exp(-s/R))` at or above `R`, which the
//! profile writer's per-row unbiasing needs (and profiles report what the program asked for).

use crate::base::config;

/// Bytes a thread allocates between two ticks (fewer when `lg_prof_interval` asks for dumps
/// more often): often enough for decay and cache trimming to keep up, rarely enough that a
/// tick's work (a few hundred nanoseconds) is noise even for 256 KiB allocations.
pub const TICK_BYTES: u64 = 4 << 20;

/// The tick interval now.
pub fn tick_bytes() -> u64 {
    match config::lg_prof_interval() {
        lg if lg >= 0 && config::prof() => TICK_BYTES.min(1 << lg.max(12)),
        _ => TICK_BYTES,
    }
}

/// Whether sampling is on now.
#[inline]
pub fn sampling_on() -> bool {
    config::prof() && config::prof_active()
}

/// The mean sample interval `R` in bytes.
pub fn mean_interval() -> f64 {
    crate::base::fmath::pow2(config::lg_prof_sample() as i64)
}

/// The unbiased weight of a sample of `bytes` under mean interval `2^lg_interval` (at most
/// `2^40`): how many allocations of that size it stands for.
pub fn weight(bytes: usize, lg_interval: u32) -> f64 {
    // The constants from lines of their own (see `SamplingConstants`); sizes are below 2^63,
    // and the conversion from i64 takes no constant from memory.
    let c = crate::base::fmath::sampling_constants();
    let lg = lg_interval as i64;
    let bytes = bytes.max(1) as i64 as f64;
    // `bytes / R` by a multiplication, exact since R is a power of two: no division in the
    // chain of the polynomial below.
    let x = bytes * crate::base::fmath::pow2(-lg);
    if x < c.one {
        // 1/(1 - exp(-x)) = 1/x + 1/2 + x/12 - x^3/720 + x^5/30240 - x^7/1209600 + ...
        // (Bernoulli numbers): one division, `R / bytes`, which runs beside a short polynomial
        // in Estrin's form. Below 1 (blocks up to the mean interval) the first term left out is
        // under 1e-11 of the sum.
        let (x2, [b1, b3, b5, b7, b9, b11]) = (x * x, c.bernoulli);
        let x4 = x2 * x2;
        let tail = ((b1 + b3 * x2) + (b5 + b7 * x2) * x4) + (b9 + b11 * x2) * (x4 * x4);
        return crate::base::fmath::pow2(lg) / bytes + c.half + x * tail;
    }
    // 1 - exp(-x), accurate for any x (negated by subtraction from 0: `-x` loads a sign mask).
    c.one / (0.0 - crate::base::fmath::exp_m1(0.0 - x))
}

/// One thread's schedule. Lives in the thread cache.
#[repr(C)]
pub struct Schedule {
    /// Bytes the thread had allocated when the countdown was last set.
    base: u64,
    /// The countdown's value when it was last set.
    span: i64,
    /// Thread-allocated bytes at which the next sample falls (`u64::MAX`: none).
    next_sample: u64,
    /// Thread-allocated bytes at which the next tick falls.
    next_tick: u64,
    /// The sampling generation the sample point was drawn under.
    generation: u32,
    /// xorshift64* state.
    rng: u64,
    /// The next draw of mean 1, made ahead (see [`Schedule::prepare_draw`]); negative when
    /// not made yet.
    next_unit: f64,
}

/// What an event asks the caller to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Due {
    /// Sample the allocation that triggered the event.
    pub sample: bool,
    /// Run the periodic tick.
    pub tick: bool,
}

impl Schedule {
    /// A new thread's schedule: its first sample point is drawn now (so allocations from the
    /// thread's very first byte can be sampled), its first tick follows after
    /// [`tick_bytes`]. `seed` makes each thread's random sequence its own. Returns it with the
    /// countdown to store.
    pub fn new(seed: u64) -> (Schedule, i64) {
        let mut s = Schedule {
            base: 0,
            span: 0,
            next_sample: u64::MAX,
            next_tick: tick_bytes(),
            generation: config::sampling_generation(),
            rng: seed | 1,
            next_unit: 0.0,
        };
        s.next_unit = s.unit_draw();
        if sampling_on() {
            s.next_sample = s.draw(mean_interval());
        }
        s.span = s.next_sample.min(s.next_tick).min(i64::MAX as u64 / 2) as i64;
        let countdown = s.span;
        (s, countdown)
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// An exponential draw of mean 1.
    fn unit_draw(&mut self) -> f64 {
        // -ln(u) for u uniform in (0, 1]: never zero, so the logarithm is finite. At u near 1
        // the polynomial's error may take it a hair below 0.
        crate::base::fmath::neg_ln_uniform(self.next_random() >> 11).max(0.0)
    }

    /// An exponentially distributed number of bytes with mean `mean` (at least 1). Uses the
    /// draw [`Schedule::prepare_draw`] made after the last sample, if any.
    fn draw(&mut self, mean: f64) -> u64 {
        let unit = if self.next_unit >= 0.0 {
            self.next_unit
        } else {
            self.unit_draw()
        };
        self.next_unit = -1.0;
        let bytes = unit * mean;
        if bytes < crate::base::fmath::sampling_constants().max_draw {
            // Below 2^62: through i64, whose conversion takes no constant from memory.
            (bytes as i64 as u64).max(1)
        } else {
            1 << 62
        }
    }

    /// Makes the next draw now, for the next sample point: called once a sample is recorded.
    /// The logarithm's chain of about forty cycles then runs beside the program's work. Made
    /// when the sample point is set, it was paid in full: the sample's first locked
    /// instruction waits for every instruction before it to retire (a sample every 16 KiB ran
    /// 2.7 % faster with the draw made one sample ahead).
    pub fn prepare_draw(&mut self) {
        if self.next_unit < 0.0 {
            self.next_unit = self.unit_draw();
        }
    }

    /// Handles an event: the countdown went negative (`countdown` is its current value, the
    /// triggering allocation already subtracted). Returns what is due and the new countdown.
    pub fn on_event(&mut self, countdown: i64) -> (Due, i64) {
        // Saturating: one allocation may be absurdly large (a request that will fail).
        let consumed = (self.span as i128 - countdown as i128).clamp(0, u64::MAX as i128) as u64;
        let mut allocated = self.base.saturating_add(consumed);
        if allocated > u64::MAX / 4 {
            // Only requests of absurd sizes (which fail, but count) take the count this far:
            // it starts again from 0, the next sample and tick as far ahead as they were.
            let back = |point: u64| match point {
                u64::MAX => u64::MAX,
                p => p.saturating_sub(allocated),
            };
            self.next_sample = back(self.next_sample);
            self.next_tick = back(self.next_tick);
            allocated = 0;
        }
        let mut due = Due::default();
        let generation = config::sampling_generation();
        if generation != self.generation {
            self.generation = generation;
            self.next_sample = if sampling_on() {
                allocated.saturating_add(self.draw(mean_interval()))
            } else {
                u64::MAX
            };
        } else if allocated >= self.next_sample {
            due.sample = true;
            self.next_sample = allocated.saturating_add(self.draw(mean_interval()));
        }
        if allocated >= self.next_tick {
            due.tick = true;
            self.next_tick = allocated + tick_bytes();
        }
        let next = self.next_sample.min(self.next_tick);
        let span = next.saturating_sub(allocated).min(i64::MAX as u64 / 2) as i64;
        self.base = allocated;
        self.span = span;
        (due, span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights() {
        let r = 512.0 * 1024.0;
        assert!((weight(512 * 1024, 19) - 1.0 / (1.0 - (-1.0f64).exp())).abs() < 1e-9);
        assert!((weight(16, 19) - r / 16.0).abs() / (r / 16.0) < 1e-4);
        assert!((weight(1 << 30, 19) - 1.0).abs() < 1e-9);
        // Against std's exp_m1 over the whole range, both sides of the series' bound, for
        // intervals from 1 KiB to 1 TiB.
        for lg in [10, 14, 19, 30, 40] {
            let r = (1u64 << lg) as f64;
            assert_eq!(crate::base::fmath::pow2(lg as i64), r);
            let mut bytes = 1usize;
            while bytes < 1 << 44 {
                let reference = -1.0 / (-(bytes as f64) / r).exp_m1();
                let rel = (weight(bytes, lg) - reference).abs() / reference;
                assert!(rel < 1e-10, "{bytes} bytes at 2^{lg}: {rel:e}");
                bytes = bytes * 9 / 8 + 1;
            }
        }
    }

    /// Requests of 2^62 bytes (which fail, but count) take the count of bytes allocated past
    /// any real one: the schedule neither overflows nor starts ticking at every allocation.
    #[test]
    fn absurd_requests_leave_the_schedule_sound() {
        let (mut s, mut countdown) = Schedule::new(7);
        for _ in 0..8 {
            let (due, next) = s.on_event(countdown - (1 << 62));
            assert!(due.tick);
            countdown = next;
        }
        let (due, _) = s.on_event(countdown - 16);
        assert!(
            !due.tick,
            "a tick at every allocation after absurd requests"
        );
    }

    #[test]
    fn a_new_thread_samples_from_its_first_byte() {
        let _options = crate::base::config::hold_options();
        config::set(b"prof", b"true").unwrap();
        config::set(b"lg_prof_sample", b"10").unwrap();
        let firsts: Vec<i64> = (0..2000)
            .map(|seed| Schedule::new(seed * 7919 + 1).1)
            .collect();
        config::set(b"prof", b"false").unwrap();
        config::set(b"lg_prof_sample", b"19").unwrap();
        let mean = firsts.iter().sum::<i64>() as f64 / firsts.len() as f64;
        assert!(
            (mean - 1024.0).abs() < 1024.0 * 0.1,
            "first countdowns average {mean}"
        );
    }

    #[test]
    fn draws_have_the_right_mean() {
        let (mut s, _) = Schedule::new(12345);
        let mean = 4096.0;
        let n = 200_000;
        // Draws made ahead (as after a sample), made when needed, and a mix of both.
        for ahead in [
            |_: usize| true,
            |_: usize| false,
            |i: usize| i.is_multiple_of(3),
        ] {
            let sum: f64 = (0..n)
                .map(|i| {
                    if ahead(i) {
                        s.prepare_draw();
                    }
                    s.draw(mean) as f64
                })
                .sum();
            let got = sum / n as f64;
            assert!((got - mean).abs() / mean < 0.02, "mean {got}");
        }
    }

    /// Drives the schedule as the allocator does: allocations of one size, sampled when the
    /// countdown goes negative. The fraction sampled must match 1 - exp(-s/R).
    #[test]
    fn sampling_probability_matches_the_model() {
        let _options = crate::base::config::hold_options();
        config::set(b"prof", b"true").unwrap();
        config::set(b"lg_prof_sample", b"12").unwrap();
        let (mut s, mut countdown) = Schedule::new(99);
        let size = 1000i64;
        let n = 400_000;
        let mut samples = 0u64;
        for _ in 0..n {
            countdown -= size;
            if countdown < 0 {
                let (due, c) = s.on_event(countdown);
                countdown = c;
                samples += due.sample as u64;
            }
        }
        config::set(b"prof", b"false").unwrap();
        config::set(b"lg_prof_sample", b"19").unwrap();
        let expected = n as f64 * (1.0 - (-(size as f64) / 4096.0).exp());
        let got = samples as f64;
        assert!(
            (got - expected).abs() / expected < 0.02,
            "{got} samples, expected {expected}"
        );
    }
}
