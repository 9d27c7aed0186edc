//! The report's verdicts with their uncertainty: scaling slopes in log-log space with 95%
//! intervals, and comparisons of two variants length by length (paired by round) with the
//! crossover stated only where the intervals separate on both sides.

use crate::stats::{self, Interval};

/// A least-squares fit `log y = slope * log x + intercept`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// The exponent: 1 for linear scaling, 2 for quadratic.
    pub slope: f64,
    /// The intercept of `log y` (natural logarithms).
    pub intercept: f64,
    /// The slope's 95% interval (Student t on the fit's residuals); `None` with two points.
    pub interval: Option<Interval>,
    /// The number of points fitted (lengths times rounds).
    pub points: usize,
    /// The distinct lengths fitted.
    pub lengths: usize,
}

/// Fits `log y` against `log x` over all points with positive coordinates (several per `x`
/// for several rounds); `None` with fewer than two distinct `x`.
pub fn loglog_fit(points: &[(f64, f64)]) -> Option<Fit> {
    let logs: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0 && x.is_finite() && y.is_finite())
        .map(|&(x, y)| (x.ln(), y.ln()))
        .collect();
    let line = stats::least_squares(&logs)?;
    let mut xs: Vec<f64> = logs.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    Some(Fit {
        slope: line.slope,
        intercept: line.intercept,
        interval: line.interval,
        points: line.points,
        lengths: xs.len(),
    })
}

/// The distinct `x` of the larger half of the lengths: the largest `max(2, ceil(k / 2))` of
/// the `k` distinct `x`, where asymptotic behaviour shows.
pub fn upper_half(points: &[(f64, f64)]) -> Vec<f64> {
    let mut xs: Vec<f64> = points.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let keep = xs.len().div_ceil(2).max(2).min(xs.len());
    xs.split_off(xs.len() - keep)
}

/// [`loglog_fit`] over the [`upper_half`] of the lengths.
pub fn upper_half_fit(points: &[(f64, f64)]) -> Option<Fit> {
    let cutoff = *upper_half(points).first()?;
    let upper: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 >= cutoff).collect();
    loglog_fit(&upper)
}

/// How one variant's time compares with a reference's at one length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Faster: the ratio's interval lies below 1.
    Faster,
    /// Slower: the interval lies above 1.
    Slower,
    /// The interval contains 1, or there is no interval (one round).
    Indistinguishable,
}

/// The time ratio of a variant over a reference at one length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// The length.
    pub n: usize,
    /// `time / reference time`: the geometric mean of the per-round ratios, or the ratio of
    /// the medians without rounds.
    pub ratio: f64,
    /// Its 95% interval: Student t on the per-round log ratios, rounds paired (same round,
    /// adjacent in time, so drift shared by both cancels); `None` without two paired rounds.
    pub interval: Option<Interval>,
}

impl Ratio {
    /// The ratio of `times` (per-round medians) over `reference`'s, paired by round when both
    /// have the same number (at least two); else the ratio of the two medians, no interval.
    pub fn paired(n: usize, times: (&[f64], f64), reference: (&[f64], f64)) -> Ratio {
        let (rounds, median) = times;
        let (ref_rounds, ref_median) = reference;
        if rounds.len() >= 2 && rounds.len() == ref_rounds.len() {
            let logs: Vec<f64> = rounds
                .iter()
                .zip(ref_rounds)
                .map(|(a, b)| (a / b).ln())
                .collect();
            if let Some((mean, ci)) = stats::mean_interval(&logs) {
                return Ratio {
                    n,
                    ratio: mean.exp(),
                    interval: Some(ci.exp()),
                };
            }
        }
        Ratio {
            n,
            ratio: median / ref_median,
            interval: None,
        }
    }

    /// The ratio of `times` over `reference` from independent runs (an external baseline
    /// timed in another process after the sweep): Welch's interval on the two sets of log
    /// round medians, unpaired ([`stats::welch_ratio`]); else the ratio of the medians, no
    /// interval.
    pub fn unpaired(n: usize, times: (&[f64], f64), reference: (&[f64], f64)) -> Ratio {
        match stats::welch_ratio(times.0, reference.0) {
            Some((ratio, ci)) => Ratio {
                n,
                ratio,
                interval: Some(ci),
            },
            None => Ratio {
                n,
                ratio: times.1 / reference.1,
                interval: None,
            },
        }
    }

    /// Faster, slower, or indistinguishable at 95%.
    pub fn order(&self) -> Order {
        match self.interval {
            Some(ci) if ci.hi < 1.0 => Order::Faster,
            Some(ci) if ci.lo > 1.0 => Order::Slower,
            _ => Order::Indistinguishable,
        }
    }
}

/// A variant against a reference over their common lengths, and the verdict that follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The ratio at each common length, by increasing `n`.
    pub ratios: Vec<Ratio>,
}

/// What a [`Comparison`] allows one to say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// No common length.
    NoCommonLengths,
    /// Indistinguishable at every common length.
    Indistinguishable,
    /// Faster wherever the two separate (and at least once), never slower.
    Faster {
        /// The first length where it is faster.
        from: usize,
    },
    /// Slower wherever the two separate, never faster.
    Slower,
    /// Slower at shorter lengths, faster at longer ones: the crossover lies between the last
    /// length where it is slower and the first where it is faster.
    CrossesAt {
        /// The last length where it is slower.
        slower_at: usize,
        /// The first length where it is faster.
        faster_at: usize,
        /// Where the ratio crosses 1, interpolated linearly in `log n`.
        n: f64,
    },
    /// Faster at shorter lengths, slower at longer ones.
    FasterBelow {
        /// The last length where it is faster.
        faster_at: usize,
        /// The first length where it is slower.
        slower_at: usize,
        /// Where the ratio crosses 1, interpolated linearly in `log n`.
        n: f64,
    },
    /// The order changes more than once.
    Mixed,
}

/// How a [`Ratio`] is formed from `(n, (rounds, median), (reference rounds, median))`.
type RatioOf = fn(usize, (&[f64], f64), (&[f64], f64)) -> Ratio;

impl Comparison {
    /// Compares `times` with `reference`, each `(n, per-round medians, median)`, at their
    /// common lengths.
    pub fn new(times: &[(usize, &[f64], f64)], reference: &[(usize, &[f64], f64)]) -> Self {
        Self::with(times, reference, Ratio::paired)
    }

    /// Like [`Comparison::new`] for series of independent runs (rounds not paired; see
    /// [`Ratio::unpaired`]).
    pub fn unpaired(times: &[(usize, &[f64], f64)], reference: &[(usize, &[f64], f64)]) -> Self {
        Self::with(times, reference, Ratio::unpaired)
    }

    fn with(
        times: &[(usize, &[f64], f64)],
        reference: &[(usize, &[f64], f64)],
        ratio: RatioOf,
    ) -> Self {
        let mut ratios: Vec<Ratio> = times
            .iter()
            .filter(|t| t.2 > 0.0)
            .filter_map(|&(n, rounds, median)| {
                let r = reference.iter().find(|r| r.0 == n && r.2 > 0.0)?;
                Some(ratio(n, (rounds, median), (r.1, r.2)))
            })
            .collect();
        ratios.sort_by_key(|r| r.n);
        Comparison { ratios }
    }

    /// The lengths where the two are indistinguishable.
    pub fn indistinguishable(&self) -> Vec<usize> {
        self.of(Order::Indistinguishable)
    }

    /// The lengths of order `o`.
    pub fn of(&self, o: Order) -> Vec<usize> {
        self.ratios
            .iter()
            .filter(|r| r.order() == o)
            .map(|r| r.n)
            .collect()
    }

    /// The verdict: a crossover only where the order is established (intervals separate)
    /// on both sides of it.
    pub fn verdict(&self) -> Verdict {
        if self.ratios.is_empty() {
            return Verdict::NoCommonLengths;
        }
        let separated: Vec<&Ratio> = self
            .ratios
            .iter()
            .filter(|r| r.order() != Order::Indistinguishable)
            .collect();
        let Some(first) = separated.first() else {
            return Verdict::Indistinguishable;
        };
        let changes: Vec<usize> = (1..separated.len())
            .filter(|&i| separated[i].order() != separated[i - 1].order())
            .collect();
        match changes.as_slice() {
            [] if first.order() == Order::Faster => Verdict::Faster { from: first.n },
            [] => Verdict::Slower,
            &[i] => {
                let (a, b) = (separated[i - 1], separated[i]);
                let (la, lb) = ((a.n as f64).ln(), (b.n as f64).ln());
                let (ga, gb) = (a.ratio.ln(), b.ratio.ln());
                // log ratio linear in log n between the two: solve log ratio = 0.
                let t: f64 = if ga == gb { 0.5 } else { ga / (ga - gb) };
                let n = (la + t.clamp(0.0, 1.0) * (lb - la)).exp();
                if b.order() == Order::Faster {
                    Verdict::CrossesAt {
                        slower_at: a.n,
                        faster_at: b.n,
                        n,
                    }
                } else {
                    Verdict::FasterBelow {
                        faster_at: a.n,
                        slower_at: b.n,
                        n,
                    }
                }
            }
            _ => Verdict::Mixed,
        }
    }
}

impl std::fmt::Display for Comparison {
    /// The verdict, and the lengths where the two are indistinguishable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ties = self.indistinguishable();
        let list = |ns: &[usize]| {
            ns.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self.verdict() {
            Verdict::NoCommonLengths => return f.write_str("no common lengths"),
            Verdict::Indistinguishable => {
                return write!(f, "indistinguishable at every n ({})", list(&ties));
            }
            Verdict::Faster { .. } => write!(f, "faster at n = {}", list(&self.of(Order::Faster)))?,
            Verdict::Slower => write!(f, "slower at n = {}", list(&self.of(Order::Slower)))?,
            Verdict::CrossesAt {
                slower_at,
                faster_at,
                n,
            } => write!(
                f,
                "crosses at n ~ {n:.0} (between {slower_at} and {faster_at})"
            )?,
            Verdict::FasterBelow {
                faster_at,
                slower_at,
                n,
            } => write!(
                f,
                "faster only below n ~ {n:.0} (between {faster_at} and {slower_at})"
            )?,
            Verdict::Mixed => write!(
                f,
                "order changes more than once: faster at n = {}; slower at n = {}",
                list(&self.of(Order::Faster)),
                list(&self.of(Order::Slower))
            )?,
        }
        if !ties.is_empty() {
            write!(f, "; indistinguishable at n = {}", list(&ties))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_laws_are_recovered_exactly() {
        for (slope, c) in [(1.0, 3.0), (2.0, 1e-6), (1.5, 42.0)] {
            let pts: Vec<(f64, f64)> = [256.0, 512.0, 1024.0, 2048.0, 4096.0]
                .iter()
                .map(|&n: &f64| (n, c * n.powf(slope)))
                .collect();
            let fit = loglog_fit(&pts).unwrap();
            assert!((fit.slope - slope).abs() < 1e-9, "{fit:?}");
            assert!((fit.intercept - c.ln()).abs() < 1e-6);
            let upper = upper_half_fit(&pts).unwrap();
            assert_eq!((upper.points, upper.lengths), (3, 3));
            assert!((upper.slope - slope).abs() < 1e-9);
        }
        assert!(loglog_fit(&[(1.0, 1.0)]).is_none());
        assert!(loglog_fit(&[(2.0, 1.0), (2.0, 3.0)]).is_none());
        assert!(upper_half_fit(&[(5.0, 1.0)]).is_none());
        assert_eq!(upper_half_fit(&[(1.0, 1.0), (2.0, 2.0)]).unwrap().points, 2);
    }

    #[test]
    fn the_upper_half_ignores_small_lengths() {
        // Constant overhead at small n, quadratic beyond; three rounds per length.
        let mut pts = Vec::new();
        for (n, t) in [
            (1.0, 100.0),
            (2.0, 100.0),
            (4.0, 100.0),
            (8.0, 64.0 * 8.0),
            (16.0, 256.0 * 8.0),
            (32.0, 1024.0 * 8.0),
        ] {
            for e in [0.98, 1.0, 1.02] {
                pts.push((n, t * e));
            }
        }
        let fit = upper_half_fit(&pts).unwrap();
        assert_eq!((fit.points, fit.lengths), (9, 3));
        assert!((fit.slope - 2.0).abs() < 1e-9, "{fit:?}");
        let ci = fit.interval.unwrap();
        assert!(ci.contains(2.0) && ci.hi - ci.lo < 0.1, "{ci:?}");
    }

    fn rounds(n: usize, t: f64, noise: &[f64]) -> (usize, Vec<f64>, f64) {
        let r: Vec<f64> = noise.iter().map(|e| t * e).collect();
        let median = stats::median(&r).unwrap();
        (n, r, median)
    }

    fn compare(a: &[(usize, Vec<f64>, f64)], b: &[(usize, Vec<f64>, f64)]) -> Comparison {
        let view = |v: &[(usize, Vec<f64>, f64)]| -> Vec<(usize, Vec<f64>, f64)> { v.to_vec() };
        let (a, b) = (view(a), view(b));
        let a: Vec<(usize, &[f64], f64)> = a.iter().map(|x| (x.0, &x.1[..], x.2)).collect();
        let b: Vec<(usize, &[f64], f64)> = b.iter().map(|x| (x.0, &x.1[..], x.2)).collect();
        Comparison::new(&a, &b)
    }

    #[test]
    fn crossovers_need_separated_intervals_on_both_sides() {
        let ns = [256, 512, 1024, 2048, 4096];
        let noise = [0.99, 1.0, 1.01];
        let reference: Vec<_> = ns.iter().map(|&n| rounds(n, 10.0, &noise)).collect();
        // t / ref = n / 1024: slower below 1024, equal there, faster above.
        let linear: Vec<_> = ns
            .iter()
            .map(|&n| rounds(n, 10.0 * 1024.0 / n as f64, &[1.0, 1.01, 0.99]))
            .collect();
        let c = compare(&linear, &reference);
        assert_eq!(c.indistinguishable(), vec![1024]);
        match c.verdict() {
            Verdict::CrossesAt {
                slower_at: 512,
                faster_at: 2048,
                n,
            } => assert!((n - 1024.0).abs() < 1e-6, "{n}"),
            v => panic!("{v:?}"),
        }
        assert_eq!(
            c.to_string(),
            "crosses at n ~ 1024 (between 512 and 2048); indistinguishable at n = 1024"
        );
        // ... and the other way round.
        let c = compare(&reference, &linear);
        assert!(
            matches!(
                c.verdict(),
                Verdict::FasterBelow {
                    faster_at: 512,
                    slower_at: 2048,
                    ..
                }
            ),
            "{c}"
        );
        // A 2% difference under +-1% round noise is established; a 0.5% one is not.
        let faster: Vec<_> = ns
            .iter()
            .map(|&n| rounds(n, 9.8, &[0.995, 1.0, 1.005]))
            .collect();
        let tied: Vec<_> = ns
            .iter()
            .map(|&n| rounds(n, 9.95, &[1.01, 0.99, 1.0]))
            .collect();
        assert_eq!(
            compare(&faster, &reference).verdict(),
            Verdict::Faster { from: 256 }
        );
        assert_eq!(
            compare(&tied, &reference).verdict(),
            Verdict::Indistinguishable
        );
        // One round: no intervals, so no verdict beyond "indistinguishable".
        let one: Vec<_> = ns.iter().map(|&n| rounds(n, 1.0, &[1.0])).collect();
        let one_ref: Vec<_> = ns.iter().map(|&n| rounds(n, 10.0, &[1.0])).collect();
        assert_eq!(
            compare(&one, &one_ref).verdict(),
            Verdict::Indistinguishable
        );
        assert_eq!(compare(&one, &[]).verdict(), Verdict::NoCommonLengths);
    }
}
