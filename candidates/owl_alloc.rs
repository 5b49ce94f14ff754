//! OWL (Yin et al., "Outlier Weighed Layerwise Sparsity", ICML 2024) as an allocator plugin:
//! units with more Wanda outliers are pruned less.
//!
//! 1. `D_l` = share of the unit's Wanda scores above `M = 5` times their mean;
//! 2. min–max into `[0, 2λ]` with `λ = 0.08`: `D̃_l = (D_l − min D) / (max D − min D) · 2λ`;
//! 3. density `d_l = D̃_l − mean(D̃) + (1 − S)` (parameter-weighted mean), sparsity `1 − d_l`;
//! 4. projection onto `[S − 2λ, S + 2λ] ∩ [min, max]` with the exact mean (a no-op unless the
//!    range leaves the host's bounds).
//!
//! The same rule as the host's built-in `autoprune::alloc::owl`.

use autoprune_sdk::prelude::*;

/// Outlier threshold as a multiple of the mean Wanda score.
const M: f64 = 5.0;
/// Half the spread of the sparsities.
const LAMBDA: f64 = 0.08;

struct Owl;

impl Allocator for Owl {
    fn describe() -> AllocatorInfo {
        AllocatorInfo::new(
            "owl",
            "1.0.0",
            "OWL: fewer Wanda outliers (>5x mean), more pruning; spread 2*0.08",
        )
    }

    fn allocate(req: &Request) -> Result<Vec<f64>> {
        let d: Vec<f64> = req
            .units
            .iter()
            .map(|u| {
                req.outlier_ratio(&u.wanda, M).ok_or_else(|| {
                    Error::invalid_input(format!("no outlier ratio at M = {M} in the request"))
                })
            })
            .collect::<Result<_>>()?;
        let params = req.params();
        let (min, max) = d
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let norm: Vec<f64> = if max > min {
            d.iter()
                .map(|&x| (x - min) / (max - min) * 2.0 * LAMBDA)
                .collect()
        } else {
            vec![0.0; d.len()]
        };
        let total: f64 = params.iter().map(|&p| p as f64).sum();
        let mean = norm
            .iter()
            .zip(&params)
            .map(|(&x, &p)| x * p as f64)
            .sum::<f64>()
            / total.max(1.0);
        let s = req.target;
        let raw: Vec<f64> = norm.iter().map(|&x| 1.0 - (x - mean + (1.0 - s))).collect();
        let lo = (s - 2.0 * LAMBDA).max(req.min_sparsity);
        let hi = (s + 2.0 * LAMBDA).min(req.max_sparsity);
        project_to_mean(&raw, &params, s, lo, hi)
    }
}

export_allocator!(Owl);

#[cfg(test)]
mod tests {
    use super::*;
    use autoprune_sdk::testing::{run_allocator, unit};

    #[test]
    fn hand_example_matches_the_paper_rule() {
        // Ratios 1 %, 2 %, 3 %, 5 % → D̃ = 0, 0.04, 0.08, 0.16, mean 0.07;
        // density = D̃ − 0.07 + 0.3 → sparsity 0.77, 0.73, 0.69, 0.61.
        let units = [0.01, 0.02, 0.03, 0.05]
            .iter()
            .enumerate()
            .map(|(i, &r)| unit(i as u32, 1000, r))
            .collect();
        let s = run_allocator::<Owl>(&Request::new(0.7, units)).unwrap();
        for (a, b) in s.iter().zip([0.77, 0.73, 0.69, 0.61]) {
            assert!((a - b).abs() < 1e-12, "{s:?}");
        }
    }

    #[test]
    fn equal_ratios_give_the_target_and_bounds_are_kept() {
        let units: Vec<_> = (0..3).map(|i| unit(i, 10 + i as u64, 0.02)).collect();
        let s = run_allocator::<Owl>(&Request::new(0.5, units.clone())).unwrap();
        assert!(s.iter().all(|&x| (x - 0.5).abs() < 1e-12), "{s:?}");
        // Near the host's ceiling the spread is clipped and the mean restored.
        let units: Vec<_> = (0..3).map(|i| unit(i, 100, 0.01 * i as f64)).collect();
        let s = run_allocator::<Owl>(&Request::new(0.95, units)).unwrap();
        assert!(s.iter().all(|&x| x <= 0.99 + 1e-12), "{s:?}");
    }
}
