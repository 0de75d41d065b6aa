//! The two transcendental functions the profiler needs, `ln` and `exp_m1`, without libm.
//!
//! Calling `f64::ln` makes the library depend on `libm.so.6`, and loading it (its IFUNC
//! resolvers run at relocation time) costs every process about 280 KiB of resident memory
//! before the first allocation. Both functions here are accurate to a few units in the last
//! place over the ranges the sampler uses, far below the statistical error of sampling.

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

/// The natural logarithm of `x`, for finite `x > 0` (the sampler's uniform draws and sizes).
/// Returns negative infinity for 0 and NaN for negative or NaN input.
pub fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return x;
    }
    // x = m * 2^e with m in [sqrt(1/2), sqrt(2)); subnormals are scaled up first.
    let (mut bits, mut e) = (x.to_bits(), 0i64);
    if bits >> 52 == 0 {
        bits = (x * (1u64 << 54) as f64).to_bits();
        e -= 54;
    }
    e += ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m > core::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172: 2 (s + s^3/3 + s^5/5 + ...),
    // whose terms shrink by s^2 <= 0.0295 each; twelve reach 1e-18. Horner form, no division.
    const ODD_RECIPROCALS: [f64; 12] = {
        let mut t = [0.0; 12];
        let mut k = 0;
        while k < 12 {
            t[k] = 1.0 / (2 * k + 1) as f64;
            k += 1;
        }
        t
    };
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut poly = 0.0;
    for c in ODD_RECIPROCALS.iter().rev() {
        poly = poly * s2 + c;
    }
    let sum = s * poly;
    2.0 * sum + e as f64 * LN_2
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
    if x.abs() < 0.5 {
        // Taylor series x + x^2/2! + ... in Horner form; the term after the last is below
        // 0.5^16 / 16! relative to x.
        let mut poly = 0.0;
        for c in INVERSE_FACTORIALS[1..=16].iter().rev() {
            poly = poly * x + c;
        }
        return poly * x;
    }
    exp(x) - 1.0
}

/// `exp(x)` for `-745 <= x <= 700`: `x = k ln 2 + r` with `|r| <= ln 2 / 2`, a series for
/// `exp(r)`, and `2^k` built from its bits (in two steps, so that subnormal results work).
fn exp(x: f64) -> f64 {
    // ln 2 in two parts (Cody and Waite): `k * LN_2_HI` is exact, so `r` keeps full precision.
    const LN_2_HI: f64 = 0.693_147_180_369_123_8;
    const LN_2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let k = (x / LN_2).round();
    let r = (x - k * LN_2_HI) - k * LN_2_LO;
    // |r| <= 0.347: the series to r^17 / 17! is exact to 1e-17.
    let mut sum = 0.0;
    for c in INVERSE_FACTORIALS[..=17].iter().rev() {
        sum = sum * r + c;
    }
    let k = k as i64;
    let half = k / 2;
    let pow2 = |e: i64| f64::from_bits(((e + 1023) as u64) << 52);
    sum * pow2(half) * pow2(k - half)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        a == b || ((a - b) / b).abs() <= rel
    }

    #[test]
    fn ln_matches_libm() {
        let mut x = 1e-300;
        while x < 1e300 {
            for f in [1.0, 1.1, 1.41, 1.5, 1.999] {
                let v = x * f;
                assert!(
                    close(ln(v), v.ln(), 1e-14),
                    "ln({v}) = {} vs {}",
                    ln(v),
                    v.ln()
                );
            }
            x *= 7.3;
        }
        // The sampler's draws: uniform in (0, 1].
        for i in 1..=100_000u64 {
            let u = i as f64 / 100_000.0;
            assert!(
                (ln(u) - u.ln()).abs() <= 1e-15 * u.ln().abs().max(1.0),
                "ln({u})"
            );
        }
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert!(ln(-1.0).is_nan());
        assert!(close(ln(5e-324), (5e-324f64).ln(), 1e-14));
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
            assert!(close(exp_m1(x), x.exp_m1(), 1e-15), "exp_m1({x})");
            x *= 1.37;
        }
        for x in [0.0, 0.25, 1.0, 10.0, 300.0] {
            assert!(close(exp_m1(x), x.exp_m1(), 1e-14), "exp_m1({x})");
        }
        assert_eq!(exp_m1(-1000.0), -1.0);
    }
}
