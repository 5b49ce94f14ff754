//! Allocation units on the ground floor: their summaries, the bounds of their sparsities, and
//! the host's validation of an allocation, shared by the built-in rules ([`crate::alloc`]) and
//! the sandbox's allocator world.

use crate::layer::LayerKind;
use serde::{Deserialize, Serialize};

/// Multiples of a unit's mean score at which outlier ratios are reported (OWL uses M = 5).
pub const OUTLIER_MULTIPLES: [f64; 4] = [3.0, 5.0, 7.0, 10.0];

/// Summary of a distribution of non-negative values (`|W|` or importance scores).
///
/// Moments are computed in f64 in two passes (mean, then central moments), so they are exact
/// to rounding even for millions of values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Distribution {
    /// Number of values.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Population variance.
    pub variance: f64,
    /// Skewness `E[(x−μ)³]/σ³` (0 when σ = 0).
    pub skewness: f64,
    /// Excess kurtosis `E[(x−μ)⁴]/σ⁴ − 3` (0 when σ = 0).
    pub kurtosis: f64,
    /// Largest value.
    pub max: f64,
    /// Share of values greater than `m × mean`, for each `m` in [`OUTLIER_MULTIPLES`].
    pub outlier_ratios: Vec<f64>,
}

impl Distribution {
    /// Summarise the concatenation of `parts`.
    pub fn of(parts: &[&[f32]]) -> Distribution {
        let count: usize = parts.iter().map(|p| p.len()).sum();
        if count == 0 {
            return Distribution {
                outlier_ratios: vec![0.0; OUTLIER_MULTIPLES.len()],
                ..Distribution::default()
            };
        }
        let n = count as f64;
        let mut sum = 0.0f64;
        let mut max = f64::NEG_INFINITY;
        for p in parts {
            for &x in *p {
                sum += x as f64;
                max = max.max(x as f64);
            }
        }
        let mean = sum / n;
        let (mut m2, mut m3, mut m4) = (0.0f64, 0.0f64, 0.0f64);
        let mut over = [0u64; OUTLIER_MULTIPLES.len()];
        for p in parts {
            for &x in *p {
                let x = x as f64;
                let d = x - mean;
                let d2 = d * d;
                m2 += d2;
                m3 += d2 * d;
                m4 += d2 * d2;
                for (c, m) in over.iter_mut().zip(OUTLIER_MULTIPLES) {
                    *c += u64::from(x > m * mean);
                }
            }
        }
        let (m2, m3, m4) = (m2 / n, m3 / n, m4 / n);
        let (skewness, kurtosis) = if m2 > 0.0 {
            (m3 / m2.powf(1.5), m4 / (m2 * m2) - 3.0)
        } else {
            (0.0, 0.0)
        };
        Distribution {
            count: count as u64,
            mean,
            variance: m2,
            skewness,
            kurtosis,
            max,
            outlier_ratios: over.iter().map(|&c| c as f64 / n).collect(),
        }
    }

    /// The outlier ratio at multiple `m` (must be one of [`OUTLIER_MULTIPLES`]).
    pub fn outlier_ratio(&self, m: f64) -> Option<f64> {
        OUTLIER_MULTIPLES
            .iter()
            .position(|&x| x == m)
            .and_then(|i| self.outlier_ratios.get(i).copied())
    }
}

/// What the host knows about one allocation unit before pruning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitSummary {
    /// Block index.
    pub block: u32,
    /// The linear, or `None` when the unit is a whole block.
    pub kind: Option<LayerKind>,
    /// Rows of the linear (0 for a block unit).
    pub rows: u64,
    /// Columns of the linear (0 for a block unit).
    pub cols: u64,
    /// Weights in the unit.
    pub params: u64,
    /// `|W|`.
    pub weights: Distribution,
    /// Wanda scores `|W_ij|·‖X_j‖₂` from the dense model's activations.
    pub wanda: Distribution,
    /// The chosen metric's scores (Wanda's for built-in methods).
    pub scores: Distribution,
}

/// The range every unit's sparsity must lie in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Lowest allowed sparsity.
    pub min: f64,
    /// Highest allowed sparsity.
    pub max: f64,
}

impl Bounds {
    /// The widest bounds the host accepts from any allocator: `[0, 0.99]` (a fully pruned
    /// layer cuts the residual stream's contribution of that layer to nothing).
    pub const HOST: Bounds = Bounds {
        min: 0.0,
        max: 0.99,
    };

    /// `[target − radius, target + radius] ∩ HOST`.
    pub fn around(target: f64, radius: f64) -> Bounds {
        Bounds {
            min: (target - radius).max(Self::HOST.min),
            max: (target + radius).min(Self::HOST.max),
        }
    }
}

/// Why an allocation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum AllocError {
    /// The request itself makes no sense.
    #[error("allocation request: {0}")]
    Request(String),
    /// The allocator returned the wrong number of sparsities.
    #[error("the allocator returned {got} sparsities for {expected} units")]
    WrongLength {
        /// Returned.
        got: usize,
        /// Units.
        expected: usize,
    },
    /// A sparsity is NaN or infinite.
    #[error("unit {unit}: sparsity {value} is not finite")]
    NonFinite {
        /// Unit index.
        unit: usize,
        /// The value (as text: JSON has no NaN).
        value: String,
    },
    /// A sparsity lies outside the bounds.
    #[error("unit {unit}: sparsity {value} outside [{min}, {max}]")]
    OutOfRange {
        /// Unit index.
        unit: usize,
        /// The value.
        value: f64,
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
    /// The parameter-weighted mean misses the target by more than one weight per unit.
    #[error("parameter-weighted mean sparsity {mean} misses the target {target} by {excess_weights:.1} weights (at most {allowed} allowed)")]
    WrongMean {
        /// Achieved mean.
        mean: f64,
        /// Target.
        target: f64,
        /// `|Σ p·s − S·Σ p|`, in weights.
        excess_weights: f64,
        /// One weight per unit.
        allowed: usize,
    },
}

/// Check an allocation: one finite sparsity per unit, each within `bounds` (to 1e-9), and a
/// parameter-weighted mean equal to `target` to within one weight per unit.
pub fn validate(
    s: &[f64],
    target: f64,
    bounds: Bounds,
    units: &[UnitSummary],
) -> Result<(), AllocError> {
    if s.len() != units.len() {
        return Err(AllocError::WrongLength {
            got: s.len(),
            expected: units.len(),
        });
    }
    const EPS: f64 = 1e-9;
    for (unit, &v) in s.iter().enumerate() {
        if !v.is_finite() {
            return Err(AllocError::NonFinite {
                unit,
                value: v.to_string(),
            });
        }
        if v < bounds.min - EPS || v > bounds.max + EPS {
            return Err(AllocError::OutOfRange {
                unit,
                value: v,
                min: bounds.min,
                max: bounds.max,
            });
        }
    }
    let total: f64 = units.iter().map(|u| u.params as f64).sum();
    let pruned: f64 = s.iter().zip(units).map(|(v, u)| v * u.params as f64).sum();
    let excess = (pruned - target * total).abs();
    if excess > units.len() as f64 {
        return Err(AllocError::WrongMean {
            mean: pruned / total.max(1.0),
            target,
            excess_weights: excess,
            allowed: units.len(),
        });
    }
    Ok(())
}
