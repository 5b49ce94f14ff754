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
pub mod summary;

use crate::layer::LayerKind;
use serde::{Deserialize, Serialize};

/// Multiples of a unit's mean score at which outlier ratios are reported (OWL uses M = 5).
pub const OUTLIER_MULTIPLES: [f64; 4] = [3.0, 5.0, 7.0, 10.0];

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

/// OWL's hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OwlParams {
    /// Outlier threshold as a multiple of the unit's mean Wanda score (paper: M = 5).
    pub m: f64,
    /// Sparsities are spread over a range of width 2λ (paper: λ = 0.08 at 70 %).
    pub lambda: f64,
}

impl Default for OwlParams {
    fn default() -> Self {
        OwlParams {
            m: 5.0,
            lambda: 0.08,
        }
    }
}

/// Which distribution SDSA reads its skewness from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SkewSource {
    /// The chosen metric's importance scores.
    Scores,
    /// Wanda scores, whatever the metric.
    Wanda,
    /// `|W|` (default: best on the validation split; needs no calibration data in principle).
    #[default]
    Weights,
}

impl std::str::FromStr for SkewSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "scores" => Ok(SkewSource::Scores),
            "wanda" => Ok(SkewSource::Wanda),
            "weights" => Ok(SkewSource::Weights),
            other => Err(format!(
                "unknown SDSA source `{other}` (scores, wanda or weights)"
            )),
        }
    }
}

/// SDSA's hyperparameters (see [`sdsa`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SdsaParams {
    /// Softmax temperature `T` on the standardised skewness; small = sharp, large = uniform.
    pub temperature: f64,
    /// Largest deviation `δ` of a unit's sparsity from the target.
    pub delta: f64,
    /// Which distribution's skewness is read.
    pub source: SkewSource,
}

impl Default for SdsaParams {
    /// Chosen on the calibration-side validation split (README, "Layer-wise allocation"),
    /// never on the evaluation windows: Wanda at 70 % and 80 % on SmolLM2, 16 held-out
    /// calibration windows; `|W|` skewness beat the scores' skewness at every temperature
    /// tried, T = 2 beat 1 and 4, and δ = 0.2 beat 0.05, 0.1 and 0.15.
    fn default() -> Self {
        SdsaParams {
            temperature: 2.0,
            delta: 0.2,
            source: SkewSource::Weights,
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

/// Shift `raw` by one common offset `τ` and clip to `bounds` so that the parameter-weighted
/// mean of `clamp(raw + τ)` equals `target` (bisection on `τ`; the map is monotone).
///
/// This is the Euclidean projection (in the parameter-weighted norm) of `raw` onto the set of
/// allocations with the right mean and bounds. Fails only if `target` is outside `bounds`.
pub fn project_to_mean(
    raw: &[f64],
    params: &[u64],
    target: f64,
    bounds: Bounds,
) -> Result<Vec<f64>, AllocError> {
    if target < bounds.min - 1e-12 || target > bounds.max + 1e-12 {
        return Err(AllocError::Request(format!(
            "target {target} outside the bounds [{}, {}]",
            bounds.min, bounds.max
        )));
    }
    if raw.iter().any(|v| !v.is_finite()) {
        return Err(AllocError::Request("non-finite raw allocation".to_string()));
    }
    let total: f64 = params.iter().map(|&p| p as f64).sum();
    let mean_at = |tau: f64| -> f64 {
        raw.iter()
            .zip(params)
            .map(|(&r, &p)| (r + tau).clamp(bounds.min, bounds.max) * p as f64)
            .sum::<f64>()
            / total
    };
    let lo_raw = raw.iter().copied().fold(f64::INFINITY, f64::min);
    let hi_raw = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    // At τ = lo the mean is bounds.min, at τ = hi it is bounds.max.
    let (mut lo, mut hi) = (bounds.min - hi_raw - 1.0, bounds.max - lo_raw + 1.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mean_at(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-15 {
            break;
        }
    }
    let tau = 0.5 * (lo + hi);
    Ok(raw
        .iter()
        .map(|&r| (r + tau).clamp(bounds.min, bounds.max))
        .collect())
}

/// OWL (Yin et al., "Outlier Weighed Layerwise Sparsity", ICML 2024), as published in
/// `luuyin/OWL`:
///
/// 1. `D_l` = share of the unit's Wanda scores greater than `M ×` their mean;
/// 2. min–max normalise into `[0, 2λ]`: `D̃_l = (D_l − min D) / (max D − min D) · 2λ`;
/// 3. density `d_l = D̃_l − mean(D̃) + (1 − S)`, sparsity `s_l = 1 − d_l`.
///
/// Units with more outliers are pruned less. Because step 3 centres on the mean of `D̃` (not on
/// the midpoint λ), every `s_l` lies in `[S − 2λ, S + 2λ]`, and the spread is exactly 2λ. The mean in
/// step 3 is parameter-weighted (the published code averages over blocks, which are all the
/// same size, so the two agree for block granularity). If all `D_l` are equal the result is
/// uniform. Values are finally clipped to [`Bounds::HOST`] and re-centred with
/// [`project_to_mean`] (a no-op unless `S ± λ` leaves `[0, 0.99]`).
pub fn owl(target: f64, units: &[UnitSummary], p: OwlParams) -> Result<Vec<f64>, AllocError> {
    if !(p.m > 0.0 && p.lambda >= 0.0 && p.m.is_finite() && p.lambda.is_finite()) {
        return Err(AllocError::Request(format!(
            "OWL needs M > 0 and λ ≥ 0 (got M = {}, λ = {})",
            p.m, p.lambda
        )));
    }
    let d: Vec<f64> = units
        .iter()
        .map(|u| {
            u.wanda.outlier_ratio(p.m).ok_or_else(|| {
                AllocError::Request(format!(
                    "OWL's M must be one of {OUTLIER_MULTIPLES:?} (got {})",
                    p.m
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    let params: Vec<u64> = units.iter().map(|u| u.params).collect();
    let (min, max) = d
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let norm: Vec<f64> = if max > min {
        d.iter()
            .map(|&x| (x - min) / (max - min) * 2.0 * p.lambda)
            .collect()
    } else {
        vec![0.0; d.len()]
    };
    let mean = weighted_mean(&norm, &params);
    let raw: Vec<f64> = norm
        .iter()
        .map(|&x| 1.0 - (x - mean + (1.0 - target)))
        .collect();
    project_to_mean(
        &raw,
        &params,
        target,
        Bounds::around(target, 2.0 * p.lambda),
    )
}

/// SDSA — skew-aware dynamic sparsity allocation, as defined by autoprune.
///
/// The idea (AutoPrune, arXiv 2511.15390): a unit whose importance distribution is more
/// right-skewed carries a heavier tail of outlier weights, and pruning it hard destroys them;
/// give it a larger share of the kept weights. Our definition:
///
/// 1. `γ_l` = skewness of the unit's importance scores ([`SkewSource`]: the metric's scores by
///    default; skewness is scale-free, so any metric's scores work);
/// 2. compress and standardise across units, parameter-weighted: `g_l = sign(γ_l)·ln(1 + |γ_l|)`,
///    `z_l = (g_l − mean g) / std g` (`z = 0` if all are equal), so one temperature fits every
///    model. The logarithm matters: the skewness of activation-weighted scores spans orders of
///    magnitude across blocks (SmolLM2's Wanda scores: 9 to 1600, driven by a few massive
///    activation channels), and standardising it raw would hand the whole budget to two or
///    three blocks;
/// 3. softmax-style reweighting with temperature `T`, renormalised to a parameter-weighted
///    mean of one: `w_l = exp(z_l / T) / Σ_k (p_k/P) exp(z_k / T)`;
/// 4. the kept-weight budget is shared in proportion to `w`: density `d_l = (1 − S)·w_l`,
///    sparsity `s_l = 1 − d_l` — the parameter-weighted mean is `S` exactly;
/// 5. bounds: `s_l` is clipped to `[S − δ, S + δ] ∩ [0, 0.99]` and the whole vector shifted
///    by one offset to restore the mean ([`project_to_mean`]).
///
/// Why a softmax and not OWL's min–max: min–max lets the single most extreme unit set the
/// scale for all others; the standardised softmax keeps the allocation smooth in `γ`, lets `T`
/// trade sharpness against uniformity (`T → ∞` is uniform), and multiplies *density*, so
/// units already near full sparsity are not pushed below zero density.
pub fn sdsa(target: f64, units: &[UnitSummary], p: SdsaParams) -> Result<Vec<f64>, AllocError> {
    if !(p.temperature > 0.0 && p.temperature.is_finite() && (0.0..=1.0).contains(&p.delta)) {
        return Err(AllocError::Request(format!(
            "SDSA needs T > 0 and 0 ≤ δ ≤ 1 (got T = {}, δ = {})",
            p.temperature, p.delta
        )));
    }
    let gamma: Vec<f64> = units
        .iter()
        .map(|u| match p.source {
            SkewSource::Scores => u.scores.skewness,
            SkewSource::Wanda => u.wanda.skewness,
            SkewSource::Weights => u.weights.skewness,
        })
        .map(|g| g.signum() * g.abs().ln_1p())
        .collect();
    let params: Vec<u64> = units.iter().map(|u| u.params).collect();
    let w = sdsa_weights(&gamma, &params, p.temperature);
    let raw: Vec<f64> = w.iter().map(|&w| 1.0 - (1.0 - target) * w).collect();
    project_to_mean(&raw, &params, target, Bounds::around(target, p.delta))
}

/// Steps 2–3 of [`sdsa`]: the softmax weights with parameter-weighted mean one.
pub fn sdsa_weights(gamma: &[f64], params: &[u64], temperature: f64) -> Vec<f64> {
    let mean = weighted_mean(gamma, params);
    let var = weighted_mean(
        &gamma
            .iter()
            .map(|g| (g - mean) * (g - mean))
            .collect::<Vec<_>>(),
        params,
    );
    let std = var.sqrt();
    let z: Vec<f64> = gamma
        .iter()
        .map(|g| if std > 0.0 { (g - mean) / std } else { 0.0 })
        .collect();
    // Subtract the max before exponentiating (the usual softmax stabilisation).
    let zmax = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|z| ((z - zmax) / temperature).exp()).collect();
    let norm = weighted_mean(&e, params);
    e.iter().map(|x| x / norm).collect()
}

fn weighted_mean(x: &[f64], params: &[u64]) -> f64 {
    let total: f64 = params.iter().map(|&p| p as f64).sum();
    x.iter()
        .zip(params)
        .map(|(&x, &p)| x * p as f64)
        .sum::<f64>()
        / total.max(1.0)
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
