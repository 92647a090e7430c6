//! Descriptive statistics and Student-t confidence intervals, computed here (no statistics
//! crate): the t quantile is found by inverting the t CDF, itself the regularised incomplete
//! beta function evaluated by its continued fraction (Numerical Recipes §6.4).

use serde::{Deserialize, Serialize};

/// Summary of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median (mean of the two middle values for even n).
    pub median: f64,
    /// Sample standard deviation (n − 1 in the denominator); `None` for n < 2.
    pub std_dev: Option<f64>,
    /// Lower end of the two-sided confidence interval of the mean; `None` for n < 2.
    pub ci_low: Option<f64>,
    /// Upper end of the confidence interval.
    pub ci_high: Option<f64>,
}

impl Summary {
    /// Half width of the confidence interval.
    pub fn ci_half_width(&self) -> Option<f64> {
        Some((self.ci_high? - self.ci_low?) / 2.0)
    }
}

/// Mean, median, sample standard deviation and the `confidence` (e.g. 0.95) t-interval of the
/// mean. `None` for an empty sample or one with a non-finite value.
pub fn summarize(values: &[f64], confidence: f64) -> Option<Summary> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let median = median(values)?;
    let (std_dev, ci_low, ci_high) = if n >= 2 {
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let sd = var.sqrt();
        let t = t_quantile(0.5 + confidence / 2.0, (n - 1) as f64);
        let half = t * sd / (n as f64).sqrt();
        (Some(sd), Some(mean - half), Some(mean + half))
    } else {
        (None, None, None)
    };
    Some(Summary {
        n,
        mean,
        median,
        std_dev,
        ci_low,
        ci_high,
    })
}

/// A sample sorted once, for order statistics: extremes, median and nearest-rank percentiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Sorted(Vec<f64>);

impl Sorted {
    /// `values` in ascending (total) order; `None` for an empty sample.
    pub fn new(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Self(v))
    }

    /// The values, ascending.
    pub fn values(&self) -> &[f64] {
        &self.0
    }

    /// Number of values (at least 1).
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// Smallest value.
    pub fn min(&self) -> f64 {
        self.0[0]
    }

    /// Largest value.
    pub fn max(&self) -> f64 {
        self.0[self.0.len() - 1]
    }

    /// Arithmetic mean (summed in ascending order).
    pub fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }

    /// Median (mean of the two middle values for an even count).
    pub fn median(&self) -> f64 {
        let (v, n) = (&self.0, self.0.len());
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    /// Nearest-rank percentile: the smallest value with at least `p` % (0–100) of the sample at
    /// or below it.
    pub fn percentile(&self, p: f64) -> f64 {
        let v = &self.0;
        let r = (p / 100.0 * v.len() as f64).ceil() as usize;
        v[r.clamp(1, v.len()) - 1]
    }
}

/// Median of `values` (mean of the two middle values for even n); `None` for an empty sample.
pub fn median(values: &[f64]) -> Option<f64> {
    Sorted::new(values).map(|s| s.median())
}

/// The mean of `values` after the warm-up ([`drop_warmup`]; 0 when none is left).
pub fn mean_after_warmup(values: &[f64], skip: usize) -> f64 {
    let kept = drop_warmup(values, skip);
    if kept.is_empty() {
        0.0
    } else {
        kept.iter().sum::<f64>() / kept.len() as f64
    }
}

/// The values after the first `skip` (warm-up intervals of an iperf3 run).
pub fn drop_warmup(values: &[f64], skip: usize) -> &[f64] {
    &values[skip.min(values.len())..]
}

/// Order of measurements when every case is measured `rounds` times: round by round, every case
/// once per round (A B C … A B C …), so slow drift of a noisy machine hits all cases alike.
pub fn interleaved(cases: usize, rounds: usize) -> Vec<(usize, usize)> {
    (0..rounds)
        .flat_map(|r| (0..cases).map(move |c| (r, c)))
        .collect()
}

/// Quantile of Student's t distribution: the `t` with P(T ≤ t) = `p` for `df` degrees of freedom
/// (`df` > 0, 0 < `p` < 1). Accurate to about 1e-9.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    // Written so that NaN inputs fail the check too.
    let valid = p > 0.0 && p < 1.0 && df > 0.0;
    if !valid {
        return f64::NAN;
    }
    if p == 0.5 {
        return 0.0;
    }
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    // Bisection on the CDF: monotone and cheap enough for the few quantiles a report needs.
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    while t_cdf(hi, df) < p {
        hi *= 2.0;
        if hi > 1e12 {
            return f64::INFINITY;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-13 * hi.max(1.0) {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// CDF of Student's t: P(T ≤ t) = 1 − ½·I_{ν/(ν+t²)}(ν/2, ½) for t ≥ 0.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let x = df / (df + t * t);
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, x);
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// Regularised incomplete beta function I_x(a, b).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    // The continued fraction converges fast for x < (a+1)/(a+b+2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..1000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error below 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        return std::f64::consts::PI.ln()
            - (std::f64::consts::PI * x).sin().abs().ln()
            - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = COEF[0];
    let t = x + G + 0.5;
    for (i, c) in COEF.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn t_quantiles_match_published_tables() {
        // Two-sided 95 % critical values (p = 0.975), from standard t tables.
        let table = [
            (1.0, 12.706_204_736),
            (2.0, 4.302_652_730),
            (3.0, 3.182_446_305),
            (4.0, 2.776_445_105),
            (5.0, 2.570_581_836),
            (9.0, 2.262_157_163),
            (10.0, 2.228_138_852),
            (29.0, 2.045_229_642),
            (30.0, 2.042_272_456),
            (99.0, 1.984_216_952),
        ];
        for (df, want) in table {
            let got = t_quantile(0.975, df);
            assert!(close(got, want, 1e-6), "df {df}: got {got}, want {want}");
        }
        // Other levels: 99 % two-sided with 10 df, 90 % with 5 df; and symmetry.
        assert!(close(t_quantile(0.995, 10.0), 3.169_272_673, 1e-6));
        assert!(close(t_quantile(0.95, 5.0), 2.015_048_373, 1e-6));
        assert!(close(t_quantile(0.025, 10.0), -2.228_138_852, 1e-6));
        // Cornish-Fisher: z + (z³+z)/(4ν) for ν = 5999.
        assert!(close(t_quantile(0.975, 5999.0), 1.960_359, 2e-6));
        // Large df tends to the normal quantile.
        assert!(close(t_quantile(0.975, 1e9), 1.959_963_985, 1e-6));
    }

    #[test]
    fn ln_gamma_of_known_values() {
        assert!(close(ln_gamma(1.0), 0.0, 1e-13));
        assert!(close(ln_gamma(5.0), 24f64.ln(), 1e-12));
        assert!(close(
            ln_gamma(0.5),
            std::f64::consts::PI.sqrt().ln(),
            1e-12
        ));
    }

    #[test]
    fn summary_of_a_known_sample() {
        // Computed independently (by hand / R: t.test(c(2,4,4,4,5,5,7,9)))
        // mean 5, sd 2.138090, t(0.975, 7) = 2.364624, 95 % CI 3.212512 .. 6.787488.
        let s = summarize(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], 0.95).expect("summary");
        assert_eq!(s.n, 8);
        assert!(close(s.mean, 5.0, 1e-12));
        assert!(close(s.median, 4.5, 1e-12));
        assert!(close(s.std_dev.unwrap_or(0.0), 2.138_089_935, 1e-8));
        assert!(close(s.ci_low.unwrap_or(0.0), 3.212_512, 1e-5));
        assert!(close(s.ci_high.unwrap_or(0.0), 6.787_488, 1e-5));
        assert!(close(s.ci_half_width().unwrap_or(0.0), 1.787_488, 1e-5));
    }

    #[test]
    fn degenerate_samples() {
        assert!(summarize(&[], 0.95).is_none());
        assert!(summarize(&[1.0, f64::NAN], 0.95).is_none());
        let one = summarize(&[3.0], 0.95).expect("one value");
        assert_eq!(
            (one.mean, one.median, one.std_dev, one.ci_low),
            (3.0, 3.0, None, None)
        );
        let flat = summarize(&[2.0; 5], 0.95).expect("flat");
        assert_eq!((flat.ci_low, flat.ci_high), (Some(2.0), Some(2.0)));
    }

    #[test]
    fn order_statistics() {
        assert!(Sorted::new(&[]).is_none());
        assert!(median(&[]).is_none());
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = Sorted::new(&v).expect("sample");
        assert_eq!(
            (s.count(), s.min(), s.max(), s.mean()),
            (100, 1.0, 100.0, 50.5)
        );
        // Nearest rank: p % of 100 values is the p-th smallest.
        assert_eq!(
            [0.0, 1.0, 50.0, 90.0, 99.0, 100.0].map(|p| s.percentile(p)),
            [1.0, 1.0, 50.0, 90.0, 99.0, 100.0]
        );
        let small = Sorted::new(&[5.0, 1.0, 3.0]).expect("sample");
        assert_eq!(small.values(), &[1.0, 3.0, 5.0]);
        assert_eq!(
            [50.0, 90.0, 99.0].map(|p| small.percentile(p)),
            [3.0, 5.0, 5.0]
        );
    }

    #[test]
    fn warmup_and_interleaving() {
        assert_eq!(drop_warmup(&[1.0, 2.0, 3.0], 1), &[2.0, 3.0]);
        assert!(drop_warmup(&[1.0], 5).is_empty());
        assert_eq!(
            interleaved(3, 2),
            vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
        );
    }
}
