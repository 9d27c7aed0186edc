//! The statistics behind every verdict: medians, 95% Student-t intervals of means (on log
//! times, so intervals are multiplicative), and least-squares slopes with their interval.
//!
//! Why Student-t rather than a bootstrap: a cell has a handful of rounds (3 by default), and a
//! percentile bootstrap over 3 values can only return intervals spanned by those values, far
//! too narrow for a 95% claim. The t interval widens honestly with few rounds (its 97.5%
//! quantile is 4.30 at 2 degrees of freedom). The quantile comes from `statrs`.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// The confidence level of every interval attnbench reports.
pub const LEVEL: f64 = 0.95;

/// A closed interval `[lo, hi]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Lower end.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
}

impl Interval {
    /// Whether `x` lies in the interval.
    pub fn contains(&self, x: f64) -> bool {
        self.lo <= x && x <= self.hi
    }

    /// `exp` of both ends.
    pub fn exp(self) -> Interval {
        Interval {
            lo: self.lo.exp(),
            hi: self.hi.exp(),
        }
    }
}

/// The two-sided [`LEVEL`] quantile of Student's t with `df` degrees of freedom
/// (`t_{0.975, df}`); `None` for `df = 0`.
pub fn t_quantile(df: usize) -> Option<f64> {
    if df == 0 {
        return None;
    }
    let t = StudentsT::new(0.0, 1.0, df as f64).ok()?;
    Some(t.inverse_cdf(0.5 + LEVEL / 2.0))
}

/// The median of `xs` (the mean of the middle two for an even count); `None` when empty or
/// when any value is NaN.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}

/// The mean of `xs` and its [`LEVEL`] Student-t interval; `None` with fewer than two finite
/// values.
pub fn mean_interval(xs: &[f64]) -> Option<(f64, Interval)> {
    if xs.len() < 2 || xs.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let half = t_quantile(xs.len() - 1)? * (var / n).sqrt();
    Some((
        mean,
        Interval {
            lo: mean - half,
            hi: mean + half,
        },
    ))
}

/// The geometric mean of positive `xs` and its [`LEVEL`] interval: [`mean_interval`] of the
/// logarithms, exponentiated. `None` with fewer than two values or any value `<= 0`.
pub fn geometric_interval(xs: &[f64]) -> Option<(f64, Interval)> {
    if xs.iter().any(|&x| x.is_nan() || x <= 0.0) {
        return None;
    }
    let logs: Vec<f64> = xs.iter().map(|x| x.ln()).collect();
    mean_interval(&logs).map(|(m, i)| (m.exp(), i.exp()))
}

/// The ratio of the geometric means of two independent samples of positive values (`a` over
/// `b`, e.g. the round medians of one cell in two runs) and its [`LEVEL`] interval: Welch's
/// t interval of the difference of the mean logarithms (unequal variances,
/// Welch-Satterthwaite degrees of freedom), exponentiated. `None` unless both samples have
/// at least two values, all positive and finite.
pub fn welch_ratio(a: &[f64], b: &[f64]) -> Option<(f64, Interval)> {
    let logs = |xs: &[f64]| -> Option<Vec<f64>> {
        (xs.len() >= 2 && xs.iter().all(|&x| x.is_finite() && x > 0.0))
            .then(|| xs.iter().map(|x| x.ln()).collect())
    };
    let (la, lb) = (logs(a)?, logs(b)?);
    let moments = |v: &[f64]| {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var / n, n)
    };
    let ((ma, sa, na), (mb, sb, nb)) = (moments(&la), moments(&lb));
    let diff = ma - mb;
    let se2 = sa + sb;
    if se2 == 0.0 {
        return Some((diff.exp(), Interval { lo: diff, hi: diff }.exp()));
    }
    let df = se2 * se2 / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
    let t = StudentsT::new(0.0, 1.0, df)
        .ok()?
        .inverse_cdf(0.5 + LEVEL / 2.0);
    let half = t * se2.sqrt();
    Some((
        diff.exp(),
        Interval {
            lo: diff - half,
            hi: diff + half,
        }
        .exp(),
    ))
}

/// A least-squares line `y = slope x + intercept`, with the [`LEVEL`] interval of the slope
/// from its standard error (residual variance, `points - 2` degrees of freedom).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    /// The slope.
    pub slope: f64,
    /// The intercept.
    pub intercept: f64,
    /// The slope's interval; `None` with no residual degrees of freedom (two points).
    pub interval: Option<Interval>,
    /// Points fitted.
    pub points: usize,
}

/// Fits a [`Line`] to finite points; `None` with fewer than two points or a single `x`.
pub fn least_squares(points: &[(f64, f64)]) -> Option<Line> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let df = pts.len() - 2;
    let interval = t_quantile(df).map(|t| {
        let rss: f64 = pts
            .iter()
            .map(|p| (p.1 - intercept - slope * p.0).powi(2))
            .sum();
        let half = t * (rss / df as f64 / sxx).sqrt();
        Interval {
            lo: slope - half,
            hi: slope + half,
        }
    });
    Some(Line {
        slope,
        intercept,
        interval,
        points: pts.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welch_ratio_matches_a_hand_computation() {
        // Logs 0, .1, .2 against .5, .6, .7: difference -0.5, each variance .01 / 3, so
        // se = sqrt(.02 / 3) and the Welch-Satterthwaite df is exactly 4 (t = 2.7764).
        let a: Vec<f64> = [0.0f64, 0.1, 0.2].iter().map(|x| x.exp()).collect();
        let b: Vec<f64> = [0.5f64, 0.6, 0.7].iter().map(|x| x.exp()).collect();
        let (ratio, ci) = welch_ratio(&a, &b).unwrap();
        let half = 2.776445 * (0.02f64 / 3.0).sqrt();
        assert!((ratio - (-0.5f64).exp()).abs() < 1e-12);
        assert!((ci.lo - (-0.5 - half).exp()).abs() < 1e-5, "{ci:?}");
        assert!((ci.hi - (-0.5 + half).exp()).abs() < 1e-5, "{ci:?}");
        // One value, a zero or a NaN: no interval.
        assert!(welch_ratio(&a[..1], &b).is_none());
        assert!(welch_ratio(&[1.0, 0.0], &b).is_none());
        assert!(welch_ratio(&[1.0, f64::NAN], &b).is_none());
        // Identical constant samples: ratio 1, a point interval.
        let (r, ci) = welch_ratio(&[2.0, 2.0], &[2.0, 2.0, 2.0]).unwrap();
        assert_eq!((r, ci.lo, ci.hi), (1.0, 1.0, 1.0));
    }

    #[test]
    fn t_quantiles_match_the_tables() {
        // Standard table values of t_{0.975, df}.
        for (df, t) in [
            (1, 12.706),
            (2, 4.303),
            (4, 2.776),
            (10, 2.228),
            (1000, 1.962),
        ] {
            let got = t_quantile(df).unwrap();
            assert!((got - t).abs() < 1e-3, "df {df}: {got}");
        }
        assert_eq!(t_quantile(0), None);
    }

    #[test]
    fn intervals_by_hand() {
        // Mean 2, sample sd 1, n = 3: half-width 4.303 / sqrt(3).
        let (m, i) = mean_interval(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(m, 2.0);
        let half = 4.302_652_7 / 3f64.sqrt();
        assert!((i.hi - 2.0 - half).abs() < 1e-6 && (2.0 - i.lo - half).abs() < 1e-6);
        assert!(mean_interval(&[1.0]).is_none());
        assert!(mean_interval(&[1.0, f64::NAN]).is_none());
        let (g, gi) = geometric_interval(&[1.0, 4.0]).unwrap();
        assert!((g - 2.0).abs() < 1e-12);
        assert!(gi.lo < 1.0 && gi.hi > 4.0, "{gi:?}");
        assert!(geometric_interval(&[1.0, 0.0]).is_none());
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn slope_intervals_cover_the_truth() {
        // Exact points: the slope is recovered and its interval has zero width.
        let exact: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, 3.0 * i as f64 + 1.0)).collect();
        let l = least_squares(&exact).unwrap();
        assert!((l.slope - 3.0).abs() < 1e-12 && (l.intercept - 1.0).abs() < 1e-12);
        let i = l.interval.unwrap();
        assert!(i.hi - i.lo < 1e-9);
        // Residuals +-e alternate: hand-computed standard error.
        let noisy: Vec<(f64, f64)> = [(0.0, 0.1), (1.0, 0.9), (2.0, 2.1), (3.0, 2.9)].to_vec();
        let l = least_squares(&noisy).unwrap();
        let i = l.interval.unwrap();
        assert!(i.contains(1.0) && i.contains(l.slope), "{l:?}");
        // Two points: a slope but no interval.
        let two = least_squares(&[(0.0, 0.0), (1.0, 2.0)]).unwrap();
        assert_eq!((two.slope, two.interval), (2.0, None));
        assert!(least_squares(&[(1.0, 0.0), (1.0, 2.0)]).is_none());
    }
}
