//! Half-precision storage formats, converted exactly to `f32` and rounded to nearest-even
//! from it, bit by bit (no target features: every path stores the same bits).
//!
//! - IEEE 754 binary16 (`f16`): 5 exponent and 10 fraction bits, largest finite 65504.
//! - `bf16`: the top 16 bits of an `f32` (8 exponent bits, 7 fraction bits), so widening
//!   is a shift.

/// The IEEE 754 half-precision value with bits `h`, exactly, as `f32` (every half is an
/// `f32`; NaN payloads are kept).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let magnitude = match exp {
        // Zero and subnormals: frac * 2^-24, exact in f32.
        0 => (frac as f32) * f32::from_bits(0x3380_0000),
        // Infinity and NaN.
        0x1f => f32::from_bits(0x7f80_0000 | (frac << 13)),
        // Normal: rebias the exponent from 15 to 127.
        e => f32::from_bits(((e + 112) << 23) | (frac << 13)),
    };
    f32::from_bits(magnitude.to_bits() | sign)
}

/// `x` rounded to the nearest half (ties to even): values beyond 65520 become infinite,
/// values below half the smallest subnormal become (signed) zero, NaN stays NaN.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        let nan = if man != 0 {
            0x200 | (man >> 13) as u16
        } else {
            0
        };
        return sign | 0x7c00 | nan;
    }
    // The half exponent field of a normal result.
    let e = exp - 112;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    let (bits, rem, half) = if e > 0 {
        (((e as u32) << 10) | (man >> 13), man & 0x1fff, 0x1000)
    } else {
        // A subnormal half: the 24-bit significand shifted to units of 2^-24.
        let shift = (14 - e) as u32;
        if shift > 24 {
            return sign;
        }
        let m = man | 0x80_0000;
        (m >> shift, m & ((1 << shift) - 1), 1 << (shift - 1))
    };
    // Rounding up may carry into the exponent; that is the right encoding (up to infinity).
    let up = rem > half || (rem == half && bits & 1 == 1);
    sign | (bits + u32::from(up)) as u16
}

/// The `bf16` with bits `h` as `f32` (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `x` rounded to the nearest `bf16` (ties to even); NaN stays NaN.
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// `x` rounded to the nearest `bf16` and widened back: the value a `bf16` store keeps.
pub fn round_bf16(x: f32) -> f32 {
    bf16_to_f32(f32_to_bf16(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn every_half_round_trips() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_nan() {
                assert!(f16_to_f32(f32_to_f16(x)).is_nan(), "{h:#06x}");
            } else {
                assert_eq!(f32_to_f16(x), h, "{h:#06x}");
            }
        }
        for h in 0..=u16::MAX {
            let x = bf16_to_f32(h);
            if !x.is_nan() {
                assert_eq!(f32_to_bf16(x), h, "{h:#06x}");
            }
        }
    }

    /// The result is a nearest representable value, and at a tie the even one: checked in
    /// f64 against the two neighbours, over magnitudes from subnormal to overflow.
    #[test]
    fn rounding_is_to_nearest_even() {
        let mut rng = StdRng::seed_from_u64(7);
        let check = |x: f32, to: fn(f32) -> u16, from: fn(u16) -> f32| {
            let h = to(x);
            let y = f64::from(from(h));
            if y.is_infinite() {
                // Overflow: only beyond the largest finite value plus half its spacing.
                assert!(f64::from(x).abs() >= f64::from(from(h - 1).abs()), "{x:e}");
                return;
            }
            let err = (f64::from(x) - y).abs();
            for n in [h.wrapping_sub(1), h.wrapping_add(1)] {
                let z = f64::from(from(n));
                if z.is_finite() && (z < 0.0) == (y < 0.0) {
                    let other = (f64::from(x) - z).abs();
                    assert!(err <= other, "{x:e}: {y:e} farther than {z:e}");
                    if err == other {
                        assert_eq!(h & 1, 0, "{x:e}: tie not to even");
                    }
                }
            }
        };
        for _ in 0..200_000 {
            let e: i32 = rng.random_range(-26..17);
            let x = rng.random_range(1.0f32..2.0) * 2f32.powi(e);
            let x = if rng.random::<bool>() { -x } else { x };
            check(x, f32_to_f16, f16_to_f32);
            check(x * 1e20, f32_to_bf16, bf16_to_f32);
        }
        // Exact ties: 1 + 2^-11 lies between 1 and 1 + 2^-10 and goes to the even 1.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(65519.0), 0x7bff);
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0);
        assert_eq!(f32_to_f16(2f32.powi(-25) * 1.5), 1);
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
    }
}
