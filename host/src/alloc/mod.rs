//! Layer-wise sparsity allocation: how much of each layer (or block) to prune so that the
//! parameter-weighted mean sparsity equals the global target.
//!
//! Allocation runs before any mask is built. A dense pre-pass ([`summary::summarize`])
//! describes every allocation *unit* (a block, or one linear layer) by distribution summaries
//! of `|W|`, of Wanda scores `|W_ij|·‖X_j‖₂` and of the chosen metric's scores; an allocator
//! maps the summaries to one sparsity per unit; the host validates the result
//! ([`validate`]) and expands it to one sparsity per linear layer ([`expand`]).
//!
//! Allocators:
//! - [`Allocation::Uniform`]: every unit gets the target.
//! - [`Allocation::Owl`]: OWL (Yin et al., 2024) as published — see [`owl`].
//! - [`Allocation::Sdsa`]: our skew-aware allocation — see [`sdsa`].
//! - allocator plugins: sandboxed components of the WIT `allocator` world; they receive the
//!   same summaries and are validated by the same [`validate`].
//!
//! Every allocation obeys the same contract: the parameter-weighted mean of the unit
//! sparsities equals the target to within one weight per unit, and every unit's sparsity lies
//! in the [`Bounds`] the host set.

pub mod plan;
mod project;
mod rules;
pub mod summary;

pub use crate::units::{
    validate, AllocError, Bounds, Distribution, UnitSummary, OUTLIER_MULTIPLES,
};
pub use project::project_to_mean;
pub use rules::{owl, sdsa, sdsa_weights, OwlParams, SdsaParams, SkewSource};

use crate::layer::LayerKind;
use serde::{Deserialize, Serialize};

/// What one sparsity is allocated to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// All linears of a transformer block share one sparsity (OWL's choice).
    #[default]
    Block,
    /// Every linear layer gets its own sparsity.
    Layer,
}

impl std::str::FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "block" => Ok(Granularity::Block),
            "layer" => Ok(Granularity::Layer),
            other => Err(format!("unknown granularity `{other}` (block or layer)")),
        }
    }
}

/// A built-in allocation rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "allocation", rename_all = "snake_case")]
pub enum Allocation {
    /// Every unit at the target.
    Uniform,
    /// OWL.
    Owl(OwlParams),
    /// Skew-aware dynamic sparsity allocation.
    Sdsa(SdsaParams),
}

impl Allocation {
    /// Short name for tables: `uniform`, `owl`, `sdsa`.
    pub fn name(&self) -> &'static str {
        match self {
            Allocation::Uniform => "uniform",
            Allocation::Owl(_) => "owl",
            Allocation::Sdsa(_) => "sdsa",
        }
    }

    /// The bounds this rule promises to respect at `target`.
    pub fn bounds(&self, target: f64) -> Bounds {
        match self {
            Allocation::Uniform => Bounds::around(target, 0.0),
            Allocation::Owl(p) => Bounds::around(target, 2.0 * p.lambda),
            Allocation::Sdsa(p) => Bounds::around(target, p.delta),
        }
    }

    /// One sparsity per unit of `units`, validated.
    pub fn allocate(&self, target: f64, units: &[UnitSummary]) -> Result<Vec<f64>, AllocError> {
        check_target(target)?;
        let bounds = self.bounds(target);
        let s = match self {
            Allocation::Uniform => vec![target; units.len()],
            Allocation::Owl(p) => owl(target, units, *p)?,
            Allocation::Sdsa(p) => sdsa(target, units, *p)?,
        };
        validate(&s, target, bounds, units)?;
        Ok(s)
    }
}

fn check_target(target: f64) -> Result<(), AllocError> {
    if !(Bounds::HOST.min..=Bounds::HOST.max).contains(&target) {
        return Err(AllocError::Request(format!(
            "target sparsity {target} outside [{}, {}]",
            Bounds::HOST.min,
            Bounds::HOST.max
        )));
    }
    Ok(())
}

/// Expand unit sparsities to one per linear layer, in model order (block-major, then
/// [`LayerKind::BLOCK`] order).
pub fn expand(units: &[UnitSummary], s: &[f64], num_blocks: usize) -> Vec<f64> {
    let per_block = LayerKind::BLOCK.len();
    let mut out = vec![0.0; num_blocks * per_block];
    for (u, &v) in units.iter().zip(s) {
        let b = u.block as usize;
        match u.kind {
            None => out[b * per_block..(b + 1) * per_block].fill(v),
            Some(k) => {
                if let Some(i) = LayerKind::BLOCK.iter().position(|&x| x == k) {
                    out[b * per_block + i] = v;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::rules::weighted_mean;
    use super::*;

    fn unit(block: u32, params: u64, wanda_ratio5: f64, skew: f64) -> UnitSummary {
        let d = Distribution {
            count: params,
            mean: 1.0,
            variance: 1.0,
            skewness: skew,
            kurtosis: 0.0,
            max: 10.0,
            outlier_ratios: vec![0.0, wanda_ratio5, 0.0, 0.0],
        };
        UnitSummary {
            block,
            kind: None,
            rows: 0,
            cols: 0,
            params,
            weights: d.clone(),
            wanda: d.clone(),
            scores: d,
        }
    }

    #[test]
    fn distribution_moments_by_hand() {
        // Values 1, 2, 3, 10: mean 4, central deviations -3, -2, -1, 6.
        let d = Distribution::of(&[&[1.0, 2.0], &[3.0, 10.0]]);
        assert_eq!(d.count, 4);
        assert!((d.mean - 4.0).abs() < 1e-12);
        let m2 = (9.0 + 4.0 + 1.0 + 36.0) / 4.0; // 12.5
        let m3 = (-27.0 - 8.0 - 1.0 + 216.0) / 4.0; // 45
        let m4 = (81.0 + 16.0 + 1.0 + 1296.0) / 4.0; // 348.5
        assert!((d.variance - m2).abs() < 1e-12);
        assert!((d.skewness - m3 / f64::powf(m2, 1.5)).abs() < 1e-12);
        assert!((d.kurtosis - (m4 / (m2 * m2) - 3.0)).abs() < 1e-12);
        assert_eq!(d.max, 10.0);
        // > 3·4 = 12: none; > 5·4: none.
        assert_eq!(d.outlier_ratios, vec![0.0, 0.0, 0.0, 0.0]);
        let e = Distribution::of(&[&[0.0; 9], &[1.0]]); // mean 0.1: 1.0 > 0.3, 0.5, 0.7, 1.0? no
        assert_eq!(e.outlier_ratios, vec![0.1, 0.1, 0.1, 0.0]);
        assert_eq!(Distribution::of(&[]).count, 0);
        let c = Distribution::of(&[&[2.0; 5]]);
        assert_eq!((c.skewness, c.kurtosis), (0.0, 0.0));
    }

    #[test]
    fn owl_hand_example() {
        // Four equal blocks with outlier ratios 1 %, 2 %, 3 %, 5 %; S = 0.7, λ = 0.08.
        // Min–max into [0, 0.16]: 0, 0.04, 0.08, 0.16; mean 0.07;
        // density = D̃ − 0.07 + 0.3: 0.23, 0.27, 0.31, 0.39 → sparsity 0.77, 0.73, 0.69, 0.61.
        let units: Vec<_> = [0.01, 0.02, 0.03, 0.05]
            .iter()
            .enumerate()
            .map(|(i, &r)| unit(i as u32, 1000, r, 0.0))
            .collect();
        let s = Allocation::Owl(OwlParams::default())
            .allocate(0.7, &units)
            .unwrap();
        let want = [0.77, 0.73, 0.69, 0.61];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{s:?}");
        }
    }

    #[test]
    fn owl_equal_ratios_is_uniform_and_other_m_is_refused() {
        let units: Vec<_> = (0..3).map(|i| unit(i, 10, 0.02, 0.0)).collect();
        let s = owl(0.5, &units, OwlParams::default()).unwrap();
        assert!(s.iter().all(|&x| (x - 0.5).abs() < 1e-12));
        assert!(owl(
            0.5,
            &units,
            OwlParams {
                m: 4.0,
                lambda: 0.1
            }
        )
        .is_err());
    }

    #[test]
    fn sdsa_protects_skewed_units_and_hits_the_mean() {
        let params = [100u64, 300, 200, 400, 250];
        let skews = [1.0, 4.0, 2.0, 0.5, 8.0];
        let units: Vec<_> = params
            .iter()
            .zip(skews)
            .enumerate()
            .map(|(i, (&p, g))| unit(i as u32, p, 0.0, g))
            .collect();
        for target in [0.5, 0.7, 0.8, 0.95] {
            for t in [0.25, 1.0, 4.0] {
                let p = SdsaParams {
                    temperature: t,
                    delta: 0.1,
                    source: SkewSource::Scores,
                };
                let s = Allocation::Sdsa(p).allocate(target, &units).unwrap();
                let b = Bounds::around(target, 0.1);
                assert!(s.iter().all(|&x| x >= b.min - 1e-12 && x <= b.max + 1e-12));
                let mean = weighted_mean(&s, &params);
                assert!((mean - target).abs() < 1e-9, "{target} {t}: {mean}");
                // More skew, less (or equal) sparsity.
                let mut order: Vec<usize> = (0..5).collect();
                order.sort_by(|&a, &b| skews[a].total_cmp(&skews[b]));
                for w in order.windows(2) {
                    assert!(s[w[0]] >= s[w[1]] - 1e-12, "{s:?}");
                }
                // Deterministic.
                assert_eq!(s, Allocation::Sdsa(p).allocate(target, &units).unwrap());
            }
        }
        // High temperature → nearly uniform.
        let p = SdsaParams {
            temperature: 1e6,
            delta: 0.1,
            source: SkewSource::Scores,
        };
        let s = sdsa(0.7, &units, p).unwrap();
        assert!(s.iter().all(|&x| (x - 0.7).abs() < 1e-5));
    }

    #[test]
    fn sdsa_weights_have_unit_mean() {
        let params = [1u64, 2, 3];
        let w = sdsa_weights(&[0.0, 1.0, 5.0], &params, 0.7);
        assert!((weighted_mean(&w, &params) - 1.0).abs() < 1e-12);
        assert!(w[0] < w[1] && w[1] < w[2]);
        let flat = sdsa_weights(&[2.0, 2.0, 2.0], &params, 0.7);
        assert!(flat.iter().all(|&x| (x - 1.0).abs() < 1e-12));
    }

    #[test]
    fn projection_respects_bounds_and_mean() {
        let params = [10u64, 10, 10, 70];
        let raw = [0.0, 0.9, 1.5, 0.6];
        let b = Bounds { min: 0.4, max: 0.8 };
        let s = project_to_mean(&raw, &params, 0.6, b).unwrap();
        assert!(s.iter().all(|&x| (0.4..=0.8).contains(&x)));
        assert!((weighted_mean(&s, &params) - 0.6).abs() < 1e-12);
        assert!(project_to_mean(&raw, &params, 0.9, b).is_err());
    }

    #[test]
    fn validation_verdicts() {
        let units: Vec<_> = (0..4).map(|i| unit(i, 1000, 0.0, 0.0)).collect();
        let b = Bounds::around(0.5, 0.2);
        assert!(validate(&[0.5; 4], 0.5, b, &units).is_ok());
        // One weight per unit of slack: 4 weights over 4000.
        assert!(validate(&[0.5, 0.5, 0.5, 0.5 + 3.9 / 1000.0], 0.5, b, &units).is_ok());
        assert!(matches!(
            validate(&[0.5, 0.5, 0.5, 0.5 + 4.5 / 1000.0], 0.5, b, &units),
            Err(AllocError::WrongMean { .. })
        ));
        assert!(matches!(
            validate(&[0.5; 3], 0.5, b, &units),
            Err(AllocError::WrongLength {
                got: 3,
                expected: 4
            })
        ));
        assert!(matches!(
            validate(&[0.5, 0.5, f64::NAN, 0.5], 0.5, b, &units),
            Err(AllocError::NonFinite { unit: 2, .. })
        ));
        assert!(matches!(
            validate(&[0.2, 0.8, 0.5, 0.5], 0.5, b, &units),
            Err(AllocError::OutOfRange { unit: 0, .. })
        ));
    }

    #[test]
    fn expand_blocks_and_layers() {
        let mut a = unit(1, 10, 0.0, 0.0);
        let s = expand(&[unit(0, 10, 0.0, 0.0), a.clone()], &[0.3, 0.6], 2);
        assert_eq!(&s[..7], &[0.3; 7]);
        assert_eq!(&s[7..], &[0.6; 7]);
        a.kind = Some(LayerKind::Up);
        let s = expand(&[a], &[0.9], 2);
        assert_eq!(s[7 + 5], 0.9);
        assert_eq!(s.iter().filter(|&&x| x != 0.0).count(), 1);
    }
}
