//! The [`Allocator`] trait a layer-wise sparsity allocator implements, the request it
//! receives, and [`project_to_mean`] to turn raw preferences into a valid answer.
//!
//! An allocator decides how much of each *unit* (a transformer block, or one linear layer) to
//! prune so that the parameter-weighted mean sparsity is the global target. It sees summaries
//! of the dense model (never the weights) and returns one sparsity per unit. The host checks
//! the answer: one finite value per unit, each in `[min_sparsity, max_sparsity]`, with a
//! parameter-weighted mean equal to the target to within one weight per unit.
//!
//! ```
//! use autoprune_sdk::prelude::*;
//!
//! /// Prune blocks with more Wanda outliers less (OWL-like, without the min–max step).
//! struct FewerOutliersMorePruning;
//!
//! impl Allocator for FewerOutliersMorePruning {
//!     fn describe() -> AllocatorInfo {
//!         AllocatorInfo::new("outlier-linear", "0.1.0", "sparsity = S - ratio, projected")
//!     }
//!
//!     fn allocate(req: &Request) -> Result<Vec<f64>> {
//!         let raw: Vec<f64> = req
//!             .units
//!             .iter()
//!             .map(|u| req.target - req.outlier_ratio(&u.wanda, 5.0).unwrap_or(0.0))
//!             .collect();
//!         project_to_mean(&raw, &req.params(), req.target, req.min_sparsity, req.max_sparsity)
//!     }
//! }
//!
//! export_allocator!(FewerOutliersMorePruning);
//!
//! use autoprune_sdk::testing::{run_allocator, unit};
//! let req = Request::new(0.5, vec![unit(0, 100, 0.01), unit(1, 100, 0.03)]);
//! let s = run_allocator::<FewerOutliersMorePruning>(&req).unwrap();
//! assert!((s[0] - 0.51).abs() < 1e-9 && (s[1] - 0.49).abs() < 1e-9);
//! ```

use crate::{Error, LayerKind, Result};

/// A layer-wise sparsity allocator. Both functions are associated functions (no `self`).
/// Export the implementation with [`export_allocator!`](crate::export_allocator).
pub trait Allocator {
    /// Name, version and one-line description.
    fn describe() -> AllocatorInfo;

    /// One sparsity per unit of `req.units`, in the same order; see the module docs for the
    /// rules the host checks. [`project_to_mean`] makes any finite preferences valid.
    fn allocate(req: &Request) -> Result<Vec<f64>>;
}

/// How an allocator describes itself to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatorInfo {
    /// Short name, e.g. `"owl"`.
    pub name: String,
    /// Version of the allocator, free-form, e.g. `"1.0.0"`.
    pub version: String,
    /// One-line description of the rule.
    pub description: String,
}

impl AllocatorInfo {
    /// Name, version and description.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        AllocatorInfo {
            name: name.into(),
            version: version.into(),
            description: description.into(),
        }
    }
}

/// Summary of a distribution of non-negative values (`|W|` or importance scores).
#[derive(Debug, Clone, PartialEq, Default)]
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
    /// Share of values greater than `m × mean`, one entry per `m` in
    /// [`Request::outlier_multiples`], in the same order.
    pub outlier_ratios: Vec<f64>,
}

/// What the host knows about one allocation unit before pruning.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitSummary {
    /// Zero-based block index.
    pub block: u32,
    /// The linear layer, or `None` when the unit is a whole block.
    pub kind: Option<LayerKind>,
    /// Rows of the linear (0 for a block unit).
    pub rows: u64,
    /// Columns of the linear (0 for a block unit).
    pub cols: u64,
    /// Weights in the unit: its weight in the mean sparsity.
    pub params: u64,
    /// Distribution of `|W|`.
    pub weights: Distribution,
    /// Distribution of Wanda scores `|W_ij|·‖X_j‖₂` (dense model's activations).
    pub wanda: Distribution,
    /// Distribution of the chosen metric's scores.
    pub scores: Distribution,
}

/// One allocation problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The parameter-weighted mean sparsity the answer must have.
    pub target: f64,
    /// Lowest sparsity any unit may get.
    pub min_sparsity: f64,
    /// Highest sparsity any unit may get.
    pub max_sparsity: f64,
    /// The multiples `m` of [`Distribution::outlier_ratios`] (the host sends `[3, 5, 7, 10]`).
    pub outlier_multiples: Vec<f64>,
    /// The units, in model order.
    pub units: Vec<UnitSummary>,
}

/// The outlier multiples the host uses.
pub const OUTLIER_MULTIPLES: [f64; 4] = [3.0, 5.0, 7.0, 10.0];

impl Request {
    /// A request with the host's widest bounds `[0, 0.99]` and [`OUTLIER_MULTIPLES`].
    pub fn new(target: f64, units: Vec<UnitSummary>) -> Self {
        Request {
            target,
            min_sparsity: 0.0,
            max_sparsity: 0.99,
            outlier_multiples: OUTLIER_MULTIPLES.to_vec(),
            units,
        }
    }

    /// Set the bounds.
    pub fn with_bounds(mut self, min_sparsity: f64, max_sparsity: f64) -> Self {
        self.min_sparsity = min_sparsity;
        self.max_sparsity = max_sparsity;
        self
    }

    /// `d`'s outlier ratio at multiple `m`, if `m` is one of [`Request::outlier_multiples`].
    pub fn outlier_ratio(&self, d: &Distribution, m: f64) -> Option<f64> {
        self.outlier_multiples
            .iter()
            .position(|&x| x == m)
            .and_then(|i| d.outlier_ratios.get(i).copied())
    }

    /// The units' parameter counts, in order (the weights of the mean).
    pub fn params(&self) -> Vec<u64> {
        self.units.iter().map(|u| u.params).collect()
    }
}

/// Shift `raw` by one common offset `τ` and clamp to `[min, max]` so that the
/// parameter-weighted mean of `clamp(raw + τ)` equals `target` (bisection on `τ`; the mean is
/// monotone in `τ`). The same algorithm as the host's `autoprune::alloc::project_to_mean`.
///
/// This is the Euclidean projection (parameter-weighted) of `raw` onto the allocations with
/// the right mean and bounds, so an allocator can compute raw preferences and let this make
/// them valid. Fails when `target` is outside `[min, max]`, a raw value is not finite, or the
/// lengths differ.
///
/// ```
/// use autoprune_sdk::project_to_mean;
///
/// let s = project_to_mean(&[0.9, 0.5, 0.1], &[1, 1, 2], 0.5, 0.2, 0.8).unwrap();
/// let mean = (s[0] + s[1] + 2.0 * s[2]) / 4.0;
/// assert!((mean - 0.5).abs() < 1e-12 && s.iter().all(|&x| (0.2..=0.8).contains(&x)));
/// ```
pub fn project_to_mean(
    raw: &[f64],
    params: &[u64],
    target: f64,
    min: f64,
    max: f64,
) -> Result<Vec<f64>> {
    if raw.len() != params.len() {
        return Err(Error::invalid_input(format!(
            "{} raw values for {} units",
            raw.len(),
            params.len()
        )));
    }
    if !(target >= min - 1e-12 && target <= max + 1e-12) {
        return Err(Error::invalid_input(format!(
            "target {target} outside the bounds [{min}, {max}]"
        )));
    }
    if raw.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid_input("non-finite raw allocation"));
    }
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let total: f64 = params.iter().map(|&p| p as f64).sum();
    let mean_at = |tau: f64| -> f64 {
        raw.iter()
            .zip(params)
            .map(|(&r, &p)| (r + tau).clamp(min, max) * p as f64)
            .sum::<f64>()
            / total
    };
    let lo_raw = raw.iter().copied().fold(f64::INFINITY, f64::min);
    let hi_raw = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // At τ = lo the mean is `min`, at τ = hi it is `max`.
    let (mut lo, mut hi) = (min - hi_raw - 1.0, max - lo_raw + 1.0);
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
    Ok(raw.iter().map(|&r| (r + tau).clamp(min, max)).collect())
}

/// Check an allocation the way the host does: one finite sparsity per unit, each within the
/// request's bounds (to 1e-9), and a parameter-weighted mean equal to the target to within one
/// weight per unit. Returns the first problem as [`Error::Failed`].
pub fn check_allocation(req: &Request, s: &[f64]) -> Result<()> {
    if s.len() != req.units.len() {
        return Err(Error::failed(format!(
            "the allocator returned {} sparsities for {} units",
            s.len(),
            req.units.len()
        )));
    }
    const EPS: f64 = 1e-9;
    for (unit, &v) in s.iter().enumerate() {
        if !v.is_finite() {
            return Err(Error::failed(format!(
                "unit {unit}: sparsity {v} is not finite"
            )));
        }
        if v < req.min_sparsity - EPS || v > req.max_sparsity + EPS {
            return Err(Error::failed(format!(
                "unit {unit}: sparsity {v} outside [{}, {}]",
                req.min_sparsity, req.max_sparsity
            )));
        }
    }
    let total: f64 = req.units.iter().map(|u| u.params as f64).sum();
    let pruned: f64 = s
        .iter()
        .zip(&req.units)
        .map(|(v, u)| v * u.params as f64)
        .sum();
    let excess = (pruned - req.target * total).abs();
    if excess > req.units.len() as f64 {
        return Err(Error::failed(format!(
            "parameter-weighted mean sparsity {} misses the target {} by {excess:.1} weights",
            pruned / total.max(1.0),
            req.target
        )));
    }
    Ok(())
}
