//! The built-in allocation rules that shape sparsities from unit summaries: OWL as published
//! and autoprune's skew-aware SDSA, with their hyperparameters.

use super::project_to_mean;
use crate::units::{AllocError, Bounds, UnitSummary, OUTLIER_MULTIPLES};
use serde::{Deserialize, Serialize};

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

pub(super) fn weighted_mean(x: &[f64], params: &[u64]) -> f64 {
    let total: f64 = params.iter().map(|&p| p as f64).sum();
    x.iter()
        .zip(params)
        .map(|(&x, &p)| x * p as f64)
        .sum::<f64>()
        / total.max(1.0)
}
