//! A vectorizable `f32` exponential and the softmax row operations built on it.
//!
//! [`exp`] reduces `x = n ln2 + r` with `|r| <= ln2 / 2` (Cody-Waite, two-part ln2), evaluates
//! a degree-7 Taylor polynomial for `e^r` (Estrin's scheme) (truncation error below 6e-9 relative) and scales by
//! `2^n` through the exponent bits. It has no branches and no calls, so loops over slices
//! vectorize. Its error against the correctly rounded result is at most a few ulp over the
//! whole normal range (the tests pin the bound). Results that would be subnormal (inputs below
//! `ln(2^-126) ~ -87.34`) are flushed to zero, `-inf` gives `0`, and inputs above `88.3` are
//! clamped to give `~2.1e38` rather than infinity. In a softmax the argument is always `<= 0`.

/// Below this the result would be subnormal; it is flushed to zero.
pub(super) const LO: f32 = -87.336_54;
/// Inputs are clamped here, the largest value whose reduction keeps `n <= 127`.
pub(super) const HI: f32 = 88.3;
pub(super) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that `n * LN2_HI` is exact for `|n| < 2^9`.
pub(super) const LN2_HI: f32 = 0.693_145_75;
pub(super) const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding 1.5 * 2^23 rounds a float of magnitude < 2^22 to an integer in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;

/// `e^x` in `f32`; see the [module docs](self) for accuracy and range.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Written as selects (not `clamp`) so they lower to vector min/max and blends. An input
    // below LO (-inf for a masked score, NaN) is computed as 0 and its result zeroed
    // by the last select: clamped to LO it could give a subnormal product, which costs a
    // microcode assist on Intel cores (as the AVX-512 exponential's underflow did; on the
    // AVX2 path no difference was measurable, causal flash 310-313 -> 308-310 ms).
    let xc = if x >= LO { x } else { 0.0 };
    let xc = if xc < HI { xc } else { HI };
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    // The low bits of `t` hold n as a two's-complement integer.
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // Estrin's scheme: a shorter dependency chain than Horner's for the same terms.
    let r2 = r * r;
    let r4 = r2 * r2;
    let p01 = 1.0 + r;
    let p23 = 0.5 + r * (1.0 / 6.0);
    let p45 = 1.0 / 24.0 + r * (1.0 / 120.0);
    let p67 = 1.0 / 720.0 + r * (1.0 / 5040.0);
    let p = (p01 + r2 * p23) + r4 * (p45 + r2 * p67);
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if x >= LO { p * scale } else { 0.0 }
}

const LANES: usize = 16;

/// The maximum of a slice (`-inf` for an empty slice). NaN is not expected.
#[inline]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    for a in acc {
        m = if a > m { a } else { m };
    }
    m
}

/// Replaces every `x` with `e^(x - shift)` and returns the sum of the results.
#[inline]
pub fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
    // Two simple passes vectorize better than one fused loop.
    for x in xs.iter_mut() {
        *x = exp(*x - shift);
    }
    sum(xs)
}

/// The sum of a slice, accumulated in 16 lanes.
#[inline]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    chunks.remainder().iter().sum::<f32>() + acc.iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The distance in units in the last place between two positive floats.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_a_few_ulp_over_the_normal_range() {
        let mut worst = 0;
        let mut worst_x = 0.0;
        let steps = 2_000_000;
        for s in 0..=steps {
            let x = LO + (HI - LO) * s as f32 / steps as f32;
            let want = (x as f64).exp() as f32;
            let got = exp(x);
            if want >= f32::MIN_POSITIVE && want.is_finite() {
                let u = ulps(got, want);
                if u > worst {
                    worst = u;
                    worst_x = x;
                }
            }
        }
        assert!(worst <= 3, "max error {worst} ulp at x = {worst_x}");
    }

    #[test]
    fn exp_is_exact_at_zero_and_handles_the_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(-87.5), 0.0, "subnormal results flush to zero");
        assert!(exp(-87.3) > 0.0);
        assert!(exp(1000.0).is_finite());
        assert!(exp(88.0) > 1e38);
        assert!(ulps(exp(1.0), std::f32::consts::E) <= 1);
    }

    #[test]
    fn softmax_row_operations() {
        let mut xs: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let m = max(&xs);
        assert_eq!(m, xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
        let want: f64 = xs.iter().map(|&x| ((x - m) as f64).exp()).sum();
        let sum = exp_shifted_sum(&mut xs, m);
        assert!(((sum as f64 - want) / want).abs() < 1e-6);
        assert!(xs.iter().all(|&p| (0.0..=1.0).contains(&p)));
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let mut masked = [f32::NEG_INFINITY; 20];
        masked[3] = 2.0;
        assert_eq!(exp_shifted_sum(&mut masked, 2.0), 1.0);
    }
}
