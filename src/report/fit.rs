//! Scaling fits and crossover lengths, in log-log space.

/// A least-squares fit `log y = slope * log x + intercept`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// The exponent: 1 for linear scaling, 2 for quadratic.
    pub slope: f64,
    /// The intercept of `log y` (natural logarithms).
    pub intercept: f64,
    /// The number of points fitted.
    pub points: usize,
}

/// Fits `log y` against `log x` over all points with positive coordinates; `None` with fewer
/// than two distinct `x`.
pub fn loglog_fit(points: &[(f64, f64)]) -> Option<Fit> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0 && x.is_finite() && y.is_finite())
        .map(|&(x, y)| (x.ln(), y.ln()))
        .collect();
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return None;
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    Some(Fit {
        slope,
        intercept: my - slope * mx,
        points: pts.len(),
    })
}

/// The fit over the larger half of the lengths: the largest `max(2, ceil(k / 2))` of the `k`
/// distinct `x`, where asymptotic behaviour shows.
pub fn upper_half_fit(points: &[(f64, f64)]) -> Option<Fit> {
    let mut xs: Vec<f64> = points.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let keep = xs.len().div_ceil(2).max(2).min(xs.len());
    let cutoff = *xs.get(xs.len() - keep)?;
    let upper: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 >= cutoff).collect();
    loglog_fit(&upper)
}

/// Where one variant's time curve crosses a reference's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crossover {
    /// Faster at every common length, from the smallest one.
    FasterThroughout {
        /// The smallest common length.
        from: usize,
    },
    /// Becomes faster between two measured lengths, at this interpolated length, and stays
    /// faster up to the largest common length.
    At(f64),
    /// Faster at short lengths only: slower from this interpolated length on.
    FasterBelow(f64),
    /// Not faster at any common length.
    NoneInRange,
    /// Fewer than one common length.
    NoCommonLengths,
}

impl std::fmt::Display for Crossover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Crossover::FasterThroughout { from } => write!(f, "faster from n={from} (all lengths)"),
            Crossover::At(n) => write!(f, "n ~ {:.0}", n),
            Crossover::FasterBelow(n) => write!(f, "only below n ~ {:.0}", n),
            Crossover::NoneInRange => f.write_str("none in range"),
            Crossover::NoCommonLengths => f.write_str("no common lengths"),
        }
    }
}

/// The first length where `times` (`(n, t)`) drops below `reference`, interpolating the time
/// ratio linearly in `log n` between the two measured lengths around the crossing.
pub fn crossover(times: &[(usize, f64)], reference: &[(usize, f64)]) -> Crossover {
    let mut ratios: Vec<(usize, f64)> = times
        .iter()
        .filter_map(|&(n, t)| {
            reference
                .iter()
                .find(|r| r.0 == n)
                .filter(|r| r.1 > 0.0 && t > 0.0)
                .map(|r| (n, t / r.1))
        })
        .collect();
    ratios.sort_by_key(|r| r.0);
    let Some(&(first_n, _)) = ratios.first() else {
        return Crossover::NoCommonLengths;
    };
    let last_faster = ratios.last().is_some_and(|r| r.1 < 1.0);
    // The last change of sign decides: after it, the order no longer changes in range.
    let change = ratios
        .windows(2)
        .rposition(|w| (w[0].1 < 1.0) != (w[1].1 < 1.0));
    match (change, last_faster) {
        (None, true) => Crossover::FasterThroughout { from: first_n },
        (None, false) => Crossover::NoneInRange,
        (Some(i), faster) => {
            let ((n1, r1), (n2, r2)) = (ratios[i], ratios[i + 1]);
            let (l1, l2) = ((n1 as f64).ln(), (n2 as f64).ln());
            let (g1, g2) = (r1.ln(), r2.ln());
            // log r is linear in log n between the points; solve log r = 0.
            let t = if g1 == g2 { 0.0 } else { g1 / (g1 - g2) };
            let n = (l1 + t * (l2 - l1)).exp();
            if faster {
                Crossover::At(n)
            } else {
                Crossover::FasterBelow(n)
            }
        }
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
            assert_eq!(upper.points, 3);
            assert!((upper.slope - slope).abs() < 1e-9);
        }
        assert!(loglog_fit(&[(1.0, 1.0)]).is_none());
        assert!(loglog_fit(&[(2.0, 1.0), (2.0, 3.0)]).is_none());
        assert!(upper_half_fit(&[(5.0, 1.0)]).is_none());
        assert_eq!(upper_half_fit(&[(1.0, 1.0), (2.0, 2.0)]).unwrap().points, 2);
    }

    #[test]
    fn the_upper_half_ignores_small_lengths() {
        // Constant overhead at small n, quadratic beyond.
        let pts = [
            (1.0, 100.0),
            (2.0, 100.0),
            (4.0, 100.0),
            (8.0, 64.0 * 8.0),
            (16.0, 256.0 * 8.0),
            (32.0, 1024.0 * 8.0),
        ];
        let fit = upper_half_fit(&pts).unwrap();
        assert!((fit.slope - 2.0).abs() < 1e-9, "{fit:?}");
    }

    #[test]
    fn crossovers_interpolate_in_log_space() {
        // t = n against reference 16 n^0 ... ratio n / 64: crosses 1 at n = 64.
        let times: Vec<(usize, f64)> = [16, 32, 128, 256]
            .iter()
            .map(|&n| (n, 64.0f64.recip() * n as f64 * 10.0))
            .collect();
        let reference: Vec<(usize, f64)> = [16, 32, 128, 256].iter().map(|&n| (n, 10.0)).collect();
        let quick: Vec<(usize, f64)> = reference.iter().map(|&(n, t)| (n, t / 2.0)).collect();
        assert_eq!(
            crossover(&quick, &reference),
            Crossover::FasterThroughout { from: 16 }
        );
        // Swap them: the flat one becomes faster at n = 64 exactly.
        match crossover(&reference, &times) {
            Crossover::At(n) => assert!((n - 64.0).abs() < 1e-9, "{n}"),
            other => panic!("{other:?}"),
        }
        // Faster first, slower later: the ordering flips back at n = 64.
        match crossover(&times, &reference) {
            Crossover::FasterThroughout { .. } => panic!("times grow past the reference"),
            Crossover::FasterBelow(n) => assert!((n - 64.0).abs() < 1e-9, "{n}"),
            other => panic!("{other:?}"),
        }
        let slower: Vec<(usize, f64)> = reference.iter().map(|&(n, t)| (n, t * 2.0)).collect();
        assert_eq!(crossover(&slower, &reference), Crossover::NoneInRange);
        assert_eq!(crossover(&slower, &[(7, 1.0)]), Crossover::NoCommonLengths);
        assert_eq!(Crossover::NoneInRange.to_string(), "none in range");
    }
}
