//! Paired comparison of two pruned models on the same windows, and rank agreement.
//!
//! Per-window losses of two pruned versions of one model are highly correlated (a hard window
//! is hard for both), so their *difference* per window varies far less than either loss: a
//! paired comparison resolves a 1 % perplexity difference on a few dozen windows where
//! comparing two means would need hundreds. Everything here is in mean NLL per predicted
//! token (nats); a perplexity ratio is `exp(Δ)`.

use serde::{Deserialize, Serialize};

/// Bootstrap resamples behind every interval (the CI's last digit moves by about
/// 1/√2000 ≈ 2 % of its width between seeds, which is below what we report).
pub const BOOTSTRAP: usize = 2000;

/// A candidate against a baseline on the same windows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    /// Windows compared.
    pub windows: usize,
    /// Mean over windows of `nll(candidate) − nll(baseline)`, nats per token.
    pub delta: f64,
    /// 2.5 % quantile of the bootstrap distribution of `delta` (resampling windows).
    pub lo: f64,
    /// 97.5 % quantile.
    pub hi: f64,
    /// Standard deviation of the per-window differences.
    pub sd: f64,
}

impl Paired {
    /// Perplexity ratio candidate / baseline (`< 1`: the candidate is better).
    pub fn ratio(&self) -> f64 {
        self.delta.exp()
    }

    /// The 95 % interval of the ratio.
    pub fn ratio_ci(&self) -> (f64, f64) {
        (self.lo.exp(), self.hi.exp())
    }

    /// Whether the interval excludes "no difference" in favour of the candidate.
    pub fn surely_better(&self) -> bool {
        self.hi < 0.0
    }
}

/// Compare per-window mean NLLs `cand` and `base` (same windows, same order). Non-finite
/// candidate losses (a destroyed model) count as `f64::MAX / 4` so the comparison stays
/// defined and hopeless. The bootstrap is seeded, so the interval is reproducible.
pub fn paired(cand: &[f64], base: &[f64], seed: u64) -> Paired {
    let d: Vec<f64> = cand
        .iter()
        .zip(base)
        .map(|(&c, &b)| {
            let c = if c.is_finite() { c } else { f64::MAX / 4.0 };
            c - b
        })
        .collect();
    paired_diffs(&d, seed)
}

/// [`paired`] on precomputed per-window differences (e.g. summed over several settings).
pub fn paired_diffs(d: &[f64], seed: u64) -> Paired {
    let n = d.len();
    if n == 0 {
        return Paired {
            windows: 0,
            delta: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
            sd: f64::NAN,
        };
    }
    let mean = d.iter().sum::<f64>() / n as f64;
    let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64).sqrt();
    let mut rng = crate::search::gp::Rng::new(seed ^ 0x5eed_ba1d);
    let mut means: Vec<f64> = (0..BOOTSTRAP)
        .map(|_| (0..n).map(|_| d[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let q = |p: f64| means[((p * (BOOTSTRAP - 1) as f64).round() as usize).min(BOOTSTRAP - 1)];
    Paired {
        windows: n,
        delta: mean,
        lo: q(0.025),
        hi: q(0.975),
        sd,
    }
}

/// Windows a paired comparison needs so that its 95 % interval has half-width `resolve`
/// (in nats; a 1 % perplexity difference is `ln 1.01 ≈ 0.00995`) when the per-window
/// differences have standard deviation `sd`: `(1.96 · sd / resolve)²`.
pub fn windows_to_resolve(sd: f64, resolve: f64) -> usize {
    ((1.96 * sd / resolve).powi(2)).ceil() as usize
}

/// Kendall's τ-b between two score lists (ties handled; pairs with a NaN are skipped).
/// 1: same order, −1: reversed, 0: unrelated.
pub fn kendall_tau(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (mut concordant, mut discordant, mut ties_a, mut ties_b) = (0f64, 0f64, 0f64, 0f64);
    for i in 0..n {
        for j in i + 1..n {
            let (da, db) = (a[i] - a[j], b[i] - b[j]);
            if da.is_nan() || db.is_nan() {
                continue;
            }
            if da == 0.0 && db == 0.0 {
                continue;
            } else if da == 0.0 {
                ties_a += 1.0;
            } else if db == 0.0 {
                ties_b += 1.0;
            } else if (da > 0.0) == (db > 0.0) {
                concordant += 1.0;
            } else {
                discordant += 1.0;
            }
        }
    }
    let denom = ((concordant + discordant + ties_a) * (concordant + discordant + ties_b)).sqrt();
    if denom == 0.0 {
        f64::NAN
    } else {
        (concordant - discordant) / denom
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_difference_and_interval() {
        // Differences 0.01 ± 0.002 alternating: mean 0.01, the interval tight around it.
        let base: Vec<f64> = (0..40).map(|i| 3.0 + (i as f64) * 0.1).collect();
        let cand: Vec<f64> = base
            .iter()
            .enumerate()
            .map(|(i, b)| b + 0.01 + if i % 2 == 0 { 0.002 } else { -0.002 })
            .collect();
        let p = paired(&cand, &base, 1);
        assert_eq!(p.windows, 40);
        assert!((p.delta - 0.01).abs() < 1e-12);
        assert!(p.lo < 0.01 && p.hi > 0.01 && p.hi - p.lo < 0.002, "{p:?}");
        assert!((p.ratio() - 0.01f64.exp()).abs() < 1e-12);
        assert!(!p.surely_better());
        // The same inputs give the same interval (seeded).
        assert_eq!(p, paired(&cand, &base, 1));
        // Unpaired, the windows' spread (0.1 per step) would swamp a 0.01 difference; paired,
        // the sd is that of the differences only.
        assert!(p.sd < 0.0021);
    }

    #[test]
    fn destroyed_models_stay_comparable() {
        let p = paired(&[f64::INFINITY, f64::NAN], &[3.0, 3.0], 0);
        assert!(p.delta > 1e300 && p.ratio().is_infinite());
    }

    #[test]
    fn windows_needed_for_one_percent() {
        // sd 0.02 nats per window: (1.96 · 0.02 / ln 1.01)² ≈ 15.5 → 16 windows.
        assert_eq!(windows_to_resolve(0.02, 1.01f64.ln()), 16);
    }

    #[test]
    fn kendall_tau_b() {
        assert_eq!(kendall_tau(&[1., 2., 3., 4.], &[10., 20., 30., 40.]), 1.0);
        assert_eq!(kendall_tau(&[1., 2., 3., 4.], &[4., 3., 2., 1.]), -1.0);
        // One swapped pair of 6: (5 − 1)/6.
        let t = kendall_tau(&[1., 2., 3., 4.], &[1., 3., 2., 4.]);
        assert!((t - 4.0 / 6.0).abs() < 1e-12);
        // Ties: scipy.stats.kendalltau([1,2,2,3],[1,2,3,3]) = 0.8.
        let t = kendall_tau(&[1., 2., 2., 3.], &[1., 2., 3., 3.]);
        assert!((t - 0.8).abs() < 1e-12, "{t}");
    }
}
