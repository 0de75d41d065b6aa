//! The two transcendental functions the profiler needs, `-ln` of a uniform draw and `exp_m1`,
//! without libm.
//!
//! Calling `f64::ln` makes the library depend on `libm.so.6`, and loading it (its IFUNC
//! resolvers run at relocation time) costs every process about 280 KiB of resident memory
//! before the first allocation. `exp_m1` is accurate to a few units in the last place over the
//! range the sampler uses, spending only as many terms as its argument needs; the draw,
//! [`neg_ln_uniform`], is a polynomial accurate to 3e-9. (With full series for both, a
//! sample's draw and weight were a sixth of its cost.)

const LN_2: f64 = core::f64::consts::LN_2;

/// `1 / k!` for `k` in `0..18`.
const INVERSE_FACTORIALS: [f64; 18] = {
    let mut t = [1.0; 18];
    let mut k = 1;
    while k < 18 {
        t[k] = t[k - 1] / k as f64;
        k += 1;
    }
    t
};

/// The constants of the sampler's arithmetic, on three cache lines: [`neg_ln_uniform`]'s on
/// the first two, the sample weight's (`thread::sampler`) on the third. Read through
/// [`sampling_constants`], an opaque reference, so that the compiler loads them from here
/// rather than from its constant pool, where they lay on six lines among others: samples are
/// far apart, and each line was a cache miss.
#[repr(C, align(64))]
pub struct SamplingConstants {
    /// `ln(m) / (m - 1)` for `m` in `[1, 2]`: a polynomial in `m - 1.5`, by powers from 0
    /// (interpolated at the ten Chebyshev nodes).
    pub ln_ratio: [f64; 10],
    pub one_and_half: f64,
    pub ln_2: f64,
    /// The largest sample interval drawn, `2^62` bytes.
    pub max_draw: f64,
    _pad: [f64; 3],
    pub half: f64,
    pub one: f64,
    /// `1/12, -1/720, 1/30240, -1/1209600, 1/47900160, -691/1307674368000`: the series of
    /// `1/(1 - exp(-x)) - 1/x - 1/2`, by odd powers of `x` from the first.
    pub bernoulli: [f64; 6],
}

static SAMPLING_CONSTANTS: SamplingConstants = SamplingConstants {
    ln_ratio: [
        0.810_930_219_913_242_7,
        -0.288_527_101_371_979_34,
        0.132_609_015_777_187_14,
        -0.067_688_189_653_995_73,
        0.036_635_234_166_339_38,
        -0.020_563_182_432_163_537,
        0.011_577_685_182_382_747,
        -0.006_788_016_951_938_559,
        0.005_250_270_678_070_283,
        -0.003_176_057_018_431_96,
    ],
    one_and_half: 1.5,
    ln_2: LN_2,
    max_draw: (1u64 << 62) as f64,
    _pad: [0.0; 3],
    half: 0.5,
    one: 1.0,
    bernoulli: [
        1.0 / 12.0,
        -1.0 / 720.0,
        1.0 / 30240.0,
        -1.0 / 1_209_600.0,
        1.0 / 47_900_160.0,
        -691.0 / 1_307_674_368_000.0,
    ],
};

/// [`SamplingConstants`], through a reference the compiler cannot see through.
#[inline(always)]
pub fn sampling_constants() -> &'static SamplingConstants {
    core::hint::black_box(&SAMPLING_CONSTANTS)
}

/// `-ln(u)` for `u = (r + 1) / 2^53`, `r < 2^53`: an exponential draw of mean 1 from 53 random
/// bits, for the sampler's every sample. Accurate to 3e-9 absolute (a bias far below the
/// sampling error), and exactly 0 for `u = 1`. `r + 1 = 2^k * m` with `m` in `[1, 2)`; then
/// `-ln u = (53 - k) ln 2 - ln m`, and `ln m = (m - 1) g(m)` with `g` a polynomial of degree 9
/// evaluated in Estrin's form. No table (a table's line had always left the cache by the next
/// sample), no division and no branch: the atanh series this replaced waited on a division,
/// a chain of nine dependent steps and a branch taken half the time, and the lock a sample
/// takes next waited for all of it.
#[inline]
pub fn neg_ln_uniform(r: u64) -> f64 {
    debug_assert!(r < 1 << 53);
    let c = sampling_constants();
    let v = r + 1;
    let lz = v.leading_zeros();
    // The bits below the leading one, left-aligned: m = 1.frac.
    let frac = v << lz << 1;
    let m = f64::from_bits((1023u64 << 52) | (frac >> 12));
    let k = 63 - lz as i64;
    let t = m - c.one_and_half;
    let (t2, [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9]) = (t * t, c.ln_ratio);
    let (t4, low) = (t2 * t2, (c0 + c1 * t) + (c2 + c3 * t) * t2);
    let high = (c4 + c5 * t) + (c6 + c7 * t) * t2;
    let g = (low + high * t4) + (c8 + c9 * t) * (t4 * t4);
    (53 - k) as f64 * c.ln_2 - (m - c.one) * g
}

/// `2^e` for `-1022 <= e <= 1023`, built from its bits (no conversion, no constant from
/// memory).
#[inline(always)]
pub fn pow2(e: i64) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// `exp(x) - 1`, accurate also for `x` near 0, for finite `x <= 0` (the sampler's
/// `-size / R`). Positive `x` up to about 700 works too.
pub fn exp_m1(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x < -745.0 {
        return -1.0;
    }
    // Taylor series x + x^2/2! + ... in Horner form, with as many terms as |x| needs: the
    // sampler's `-size / R` is tiny for all but the largest blocks. The first term left out is
    // below 1e-15 relative to x in each case.
    let terms = if x.abs() < 1.0 / 256.0 {
        5
    } else if x.abs() < 1.0 / 16.0 {
        9
    } else if x.abs() < 0.5 {
        16
    } else {
        return exp(x) - 1.0;
    };
    let mut poly = 0.0;
    for c in INVERSE_FACTORIALS[1..=terms].iter().rev() {
        poly = poly * x + c;
    }
    poly * x
}

/// `x` rounded to the nearest integer, halves away from zero (`f64::round`, which needs std),
/// for `|x| < 2^63`.
pub fn round(x: f64) -> f64 {
    let t = x as i64 as f64;
    if x - t >= 0.5 {
        t + 1.0
    } else if t - x >= 0.5 {
        t - 1.0
    } else {
        t
    }
}

/// `exp(x)` for `-745 <= x <= 700`: `x = k ln 2 + r` with `|r| <= ln 2 / 2`, a series for
/// `exp(r)`, and `2^k` built from its bits (in two steps, so that subnormal results work).
fn exp(x: f64) -> f64 {
    // ln 2 in two parts (Cody and Waite): `k * LN_2_HI` is exact, so `r` keeps full precision.
    const LN_2_HI: f64 = 0.693_147_180_369_123_8;
    const LN_2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let k = round(x / LN_2);
    let r = (x - k * LN_2_HI) - k * LN_2_LO;
    // |r| <= 0.347: the series to r^17 / 17! is exact to 1e-17.
    let mut sum = 0.0;
    for c in INVERSE_FACTORIALS[..=17].iter().rev() {
        sum = sum * r + c;
    }
    let k = k as i64;
    let half = k / 2;
    sum * pow2(half) * pow2(k - half)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        a == b || ((a - b) / b).abs() <= rel
    }

    #[test]
    fn round_matches_std() {
        for x in [
            0.0,
            0.49999999999999994,
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.4,
            1e15 + 0.5,
            123.456,
            -745.0 / core::f64::consts::LN_2,
        ] {
            assert_eq!(round(x), x.round(), "{x}");
        }
    }

    #[test]
    fn neg_ln_uniform_matches_libm() {
        let mut r: u64 = 0;
        let check = |r: u64| {
            let u = (r + 1) as f64 / (1u64 << 53) as f64;
            let (got, want) = (neg_ln_uniform(r), -u.ln());
            assert!((got - want).abs() <= 2e-8, "-ln({u}) = {got}, want {want}");
        };
        // Every octave, at both ends and at 256 points inside.
        for k in 0..53 {
            for j in 0..256u64 {
                let v = (1u64 << k) + (j << k >> 8);
                check(v - 1);
                check((v - 1).max(1) - 1);
            }
        }
        for _ in 0..100_000 {
            r = r
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            check(r >> 11);
        }
        check((1 << 53) - 1);
        assert_eq!(neg_ln_uniform((1 << 53) - 1), 0.0);
    }

    #[test]
    fn exp_m1_matches_libm() {
        let mut x = -744.0;
        while x < 0.0 {
            assert!(close(exp_m1(x), x.exp_m1(), 1e-14), "exp_m1({x})");
            x += 0.37;
        }
        let mut x = -1e-12;
        while x > -1.0 {
            assert!(close(exp_m1(x), x.exp_m1(), 1e-14), "exp_m1({x})");
            x *= 1.37;
        }
        for x in [0.0, 0.25, 1.0, 10.0, 300.0] {
            assert!(close(exp_m1(x), x.exp_m1(), 1e-14), "exp_m1({x})");
        }
        assert_eq!(exp_m1(-1000.0), -1.0);
    }
}
