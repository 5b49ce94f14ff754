//! The validation suite behind `autoprune check`: run a plugin on synthetic layers of
//! realistic shapes and report speed, fuel, memory, determinism and validity. Allocator
//! plugins run on synthetic allocation requests instead ([`run_allocator`]).

use crate::alloc::{Bounds, Distribution, UnitSummary, OUTLIER_MULTIPLES};
use crate::layer::{ChannelStats, LayerData, LayerId, LayerKind, RowStats};
use crate::rng::SplitMix64;
use crate::sandbox::{AllocatorInfo, AllocatorPlugin, Failure, MetricInfo, Plugin};
use crate::term::line;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Layer shapes (rows × cols) the suite runs by default: SmolLM2's attention and MLP shapes
/// and LLaMA-7B's square and MLP shapes.
pub const DEFAULT_SHAPES: &[(usize, usize, LayerKind)] = &[
    (576, 576, LayerKind::Q),
    (1536, 576, LayerKind::Up),
    (4096, 4096, LayerKind::O),
    (11008, 4096, LayerKind::Gate),
];

/// A synthetic layer: heavy-tailed weights, a few outlier input channels, matching statistics.
#[derive(Debug, Clone)]
pub struct SyntheticLayer {
    /// Which layer it pretends to be.
    pub id: LayerId,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row-major weights.
    pub weights: Vec<f32>,
    /// Input statistics.
    pub stats: ChannelStats,
    /// A gradient-like statistic (non-negative, heavy-tailed).
    pub gradient: Vec<f32>,
    /// `[(H + λI)⁻¹]_jj` as if the channels were uncorrelated (`H` diagonal, `H_jj` the mean
    /// square of channel `j`, `λ = 0.01·mean(diag H)`): what the WIT 0.2.0 input would be then.
    pub hessian_inverse_diagonal: Vec<f32>,
    /// Output statistics under the same assumption (`w_iᵀ(XᵀX)w_i = Σ_j w_ij²·Σx_j²`).
    pub output_stats: RowStats,
}

impl SyntheticLayer {
    /// Generate a layer deterministically from `seed`. Four input channels are outliers:
    /// their activations are ~50× larger and their weights ~4× larger, as in LLMs.
    pub fn generate(rows: usize, cols: usize, kind: LayerKind, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ ((rows as u64) << 32) ^ cols as u64);
        let outliers: Vec<usize> = (0..4.min(cols))
            .map(|_| (rng.next_u64() % cols as u64) as usize)
            .collect();
        let tokens = 16_384u64;
        let mut stats = ChannelStats::new(cols);
        stats.tokens = tokens;
        for j in 0..cols {
            let scale = if outliers.contains(&j) { 50.0 } else { 1.0 };
            let rms = (0.3 * rng.laplace_f32()).exp() * scale; // log-Laplace spread of channel scales
            stats.sum_sq[j] = (rms as f64).powi(2) * tokens as f64;
            stats.sum[j] = 0.1 * rng.laplace_f32() as f64 * rms as f64 * tokens as f64 / 8.0;
            stats.max_abs[j] = rms * (6.0 + rng.unit_f32_nonzero() * 4.0);
        }
        let col_scale: Vec<f32> = (0..cols)
            .map(|j| if outliers.contains(&j) { 4.0 } else { 1.0 })
            .collect();
        let gen_row = |r: usize, out: &mut [f32], grad: &mut [f32]| {
            let mut g = SplitMix64::new(seed.wrapping_mul(31).wrapping_add(r as u64));
            for (j, (w, gr)) in out.iter_mut().zip(grad.iter_mut()).enumerate() {
                *w = 0.02 * g.laplace_f32() * col_scale[j];
                *gr = (1e-3 * g.laplace_f32()).abs();
            }
        };
        let mut weights = vec![0f32; rows * cols];
        let mut gradient = vec![0f32; rows * cols];
        weights
            .par_chunks_mut(cols)
            .zip(gradient.par_chunks_mut(cols))
            .enumerate()
            .for_each(|(r, (w, g))| gen_row(r, w, g));
        let (hessian_inverse_diagonal, output_stats) = uncorrelated_inputs(&weights, cols, &stats);
        Self {
            id: LayerId {
                block: 0,
                num_blocks: 1,
                kind,
            },
            rows,
            cols,
            weights,
            stats,
            gradient,
            hessian_inverse_diagonal,
            output_stats,
        }
    }

    /// Borrow as the host's layer view.
    pub fn data(&self, sparsity: f32) -> LayerData<'_> {
        LayerData {
            id: self.id,
            rows: self.rows,
            cols: self.cols,
            weights: &self.weights,
            stats: &self.stats,
            gradient: Some(&self.gradient),
            hessian_inverse_diagonal: Some(&self.hessian_inverse_diagonal),
            output_stats: Some(&self.output_stats),
            sparsity,
        }
    }
}

/// The Hessian-derived inputs of a layer whose input channels are uncorrelated (see
/// [`SyntheticLayer::hessian_inverse_diagonal`]), in f64.
fn uncorrelated_inputs(weights: &[f32], cols: usize, stats: &ChannelStats) -> (Vec<f32>, RowStats) {
    let n = stats.tokens.max(1) as f64;
    let h: Vec<f64> = stats.sum_sq.iter().map(|&s| s / n).collect();
    let lambda = crate::calib::hessian::PERCDAMP * h.iter().sum::<f64>() / h.len().max(1) as f64;
    let hinv = h.iter().map(|&d| (1.0 / (d + lambda)) as f32).collect();
    let rows: Vec<(f32, f32, f32)> = weights
        .par_chunks(cols.max(1))
        .map(|w| {
            let (mut q, mut m) = (0.0f64, 0.0f64);
            for ((&w, &sq), &s) in w.iter().zip(&stats.sum_sq).zip(&stats.sum) {
                let w = w as f64;
                q += w * w * sq;
                m += w * s / n;
            }
            (q.sqrt() as f32, m as f32, (q / n - m * m).max(0.0) as f32)
        })
        .collect();
    let out = RowStats {
        tokens: stats.tokens,
        l2_norm: rows.iter().map(|r| r.0).collect(),
        mean: rows.iter().map(|r| r.1).collect(),
        variance: rows.iter().map(|r| r.2).collect(),
    };
    (hinv, out)
}

/// Results for one synthetic layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerCheck {
    /// `rows×cols`.
    pub shape: String,
    /// Layer kind given to the plugin.
    pub kind: LayerKind,
    /// Wall time of the first run, seconds (instantiation included).
    pub seconds: f64,
    /// Nanoseconds per weight.
    pub ns_per_weight: f64,
    /// Fuel used.
    pub fuel: u64,
    /// Fuel per weight.
    pub fuel_per_weight: f64,
    /// Share of the fuel limit used.
    pub fuel_budget_used: f64,
    /// Share of the time limit used.
    pub time_budget_used: f64,
    /// Largest guest memory, bytes.
    pub peak_memory_bytes: u64,
    /// Two runs gave bit-identical scores.
    pub deterministic: bool,
    /// The failure, if the plugin failed on this layer.
    pub failure: Option<Failure>,
}

/// The suite's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    /// What the metric says it is.
    pub metric: MetricInfo,
    /// Per-layer results, in order.
    pub layers: Vec<LayerCheck>,
    /// Whether every layer passed (valid, deterministic, within budget).
    pub passed: bool,
    /// The first failure, if any.
    pub failure: Option<Failure>,
}

/// Run the suite on `shapes` (default: [`DEFAULT_SHAPES`]).
pub fn run(plugin: &Plugin, shapes: &[(usize, usize, LayerKind)], seed: u64) -> CheckReport {
    let mut layers = Vec::new();
    let mut failure = None;
    for &(rows, cols, kind) in shapes {
        let layer = SyntheticLayer::generate(rows, cols, kind, seed);
        let check = check_layer(plugin, &layer);
        let stop = check.failure.is_some();
        if failure.is_none() {
            failure = check.failure.clone();
        }
        layers.push(check);
        if stop {
            break;
        }
    }
    let passed = failure.is_none() && layers.iter().all(|l| l.deterministic);
    CheckReport {
        metric: plugin.info().clone(),
        layers,
        passed,
        failure,
    }
}

fn check_layer(plugin: &Plugin, layer: &SyntheticLayer) -> LayerCheck {
    let n = (layer.rows * layer.cols) as f64;
    let mut out = LayerCheck {
        shape: format!("{}x{}", layer.rows, layer.cols),
        kind: layer.id.kind,
        seconds: 0.0,
        ns_per_weight: 0.0,
        fuel: 0,
        fuel_per_weight: 0.0,
        fuel_budget_used: 0.0,
        time_budget_used: 0.0,
        peak_memory_bytes: 0,
        deterministic: false,
        failure: None,
    };
    let data = layer.data(0.5);
    let first = match plugin.score(&data) {
        Ok(s) => s,
        Err(f) => {
            out.failure = Some(f);
            return out;
        }
    };
    let u = &first.usage;
    out.seconds = u.seconds;
    out.ns_per_weight = u.seconds * 1e9 / n;
    out.fuel = u.fuel;
    out.fuel_per_weight = u.fuel as f64 / n;
    out.fuel_budget_used = u.fuel as f64 / u.fuel_limit.max(1) as f64;
    out.time_budget_used = u.seconds / plugin.policy().score_timeout().as_secs_f64();
    out.peak_memory_bytes = u.peak_memory_bytes;
    match plugin.score(&data) {
        Ok(second) => {
            out.deterministic = second.usage.fuel == first.usage.fuel
                && second.scores.len() == first.scores.len()
                && second
                    .scores
                    .iter()
                    .zip(&first.scores)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
        }
        Err(f) => out.failure = Some(f),
    }
    out
}

/// ` [needs gradient, Hessian inverse diagonal]`-style note of the optional inputs, or "".
fn needs_note(m: &MetricInfo) -> String {
    let needs: Vec<&str> = [
        (m.needs_gradient, "gradient"),
        (m.needs_hessian_inverse_diagonal, "Hessian inverse diagonal"),
        (m.needs_output_stats, "output stats"),
    ]
    .iter()
    .filter(|(n, _)| *n)
    .map(|(_, what)| *what)
    .collect();
    if needs.is_empty() {
        String::new()
    } else {
        format!(" [needs {}]", needs.join(", "))
    }
}

/// A human summary of a report.
pub fn render(report: &CheckReport) -> String {
    use std::fmt::Write;
    let m = &report.metric;
    let mut s = String::new();
    // Name, version, description and failures are the plugin's words: escaped, one line each.
    let _ = writeln!(
        s,
        "metric {} {} — {}{}",
        line(&m.name),
        line(&m.version),
        line(&m.description),
        needs_note(m)
    );
    let _ = writeln!(
        s,
        "{:<12} {:>5} {:>9} {:>9} {:>10} {:>7} {:>9} {:>6}  result",
        "layer", "kind", "time", "ns/wt", "fuel/wt", "fuel%", "peak mem", "det."
    );
    for l in &report.layers {
        let result = match &l.failure {
            Some(f) => format!("FAIL {}", line(&f.to_string())),
            None if !l.deterministic => "FAIL nondeterministic".into(),
            None => "ok".into(),
        };
        let _ = writeln!(
            s,
            "{:<12} {:>5} {:>8.3}s {:>9.2} {:>10.2} {:>6.2}% {:>7.1}MiB {:>6}  {}",
            l.shape,
            l.kind.name(),
            l.seconds,
            l.ns_per_weight,
            l.fuel_per_weight,
            l.fuel_budget_used * 100.0,
            l.peak_memory_bytes as f64 / (1 << 20) as f64,
            if l.deterministic { "yes" } else { "no" },
            result
        );
    }
    let _ = write!(
        s,
        "verdict: {}",
        if report.passed { "PASS" } else { "FAIL" }
    );
    if let Some(f) = &report.failure {
        let _ = write!(s, " ({})", f.kind());
    }
    s
}

/// Synthetic allocation units of a `num_blocks`-block model with SmolLM2-135M's shapes
/// (hidden 576, MLP 1536, 3 KV heads of 64): one unit per block (`per_layer = false`) or one
/// per linear. Summaries are realistic and vary smoothly with depth plus a deterministic
/// jitter from `seed`: heavier Wanda tails in the first and last blocks, as in real LLMs.
pub fn synthetic_units(num_blocks: u32, per_layer: bool, seed: u64) -> Vec<UnitSummary> {
    let shape = |k: LayerKind| -> (u64, u64) {
        match k {
            LayerKind::Q | LayerKind::O => (576, 576),
            LayerKind::K | LayerKind::V => (192, 576),
            LayerKind::Gate | LayerKind::Up => (1536, 576),
            LayerKind::Down => (576, 1536),
            LayerKind::Other => (576, 576),
        }
    };
    let mut rng = SplitMix64::new(seed ^ 0xA110C);
    let dist = |rng: &mut SplitMix64, count: u64, mean: f64, tail: f64| -> Distribution {
        let j = 1.0 + 0.2 * (rng.unit_f32_nonzero() as f64 - 0.5);
        let r5 = 0.004 * tail * j;
        Distribution {
            count,
            mean,
            variance: (mean * 1.3).powi(2) * j,
            skewness: 2.0 + 3.0 * tail * j,
            kurtosis: 8.0 + 40.0 * tail * j,
            max: mean * (40.0 + 200.0 * tail * j),
            outlier_ratios: OUTLIER_MULTIPLES
                .iter()
                .map(|&m| r5 * (5.0f64 / m).powi(3))
                .collect(),
        }
    };
    let mut units = Vec::new();
    for b in 0..num_blocks {
        let depth = b as f64 / (num_blocks.max(2) - 1) as f64;
        // U-shaped outlier profile over depth.
        let tail = 0.5 + 2.0 * (depth - 0.5).powi(2) * 4.0;
        let kinds: Vec<Option<LayerKind>> = if per_layer {
            LayerKind::BLOCK.iter().map(|&k| Some(k)).collect()
        } else {
            vec![None]
        };
        for kind in kinds {
            let (rows, cols, params) = match kind {
                Some(k) => {
                    let (r, c) = shape(k);
                    (r, c, r * c)
                }
                None => (
                    0,
                    0,
                    LayerKind::BLOCK
                        .iter()
                        .map(|&k| shape(k).0 * shape(k).1)
                        .sum(),
                ),
            };
            let kt = if kind == Some(LayerKind::Down) {
                1.5
            } else {
                1.0
            };
            units.push(UnitSummary {
                block: b,
                kind,
                rows,
                cols,
                params,
                weights: dist(&mut rng, params, 0.02, 0.3 * tail),
                wanda: dist(&mut rng, params, 0.05, tail * kt),
                scores: dist(&mut rng, params, 0.05, tail * kt),
            });
        }
    }
    units
}

/// One synthetic allocation request of the allocator suite.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllocationCheck {
    /// What the request is (`30 blocks @ 0.5`, …).
    pub case: String,
    /// Number of units.
    pub units: usize,
    /// Target sparsity.
    pub target: f64,
    /// Wall time of the first run, seconds (instantiation included).
    pub seconds: f64,
    /// Fuel used.
    pub fuel: u64,
    /// Share of the fuel limit used.
    pub fuel_budget_used: f64,
    /// Largest guest memory, bytes.
    pub peak_memory_bytes: u64,
    /// Smallest and largest sparsity returned.
    pub range: Option<(f64, f64)>,
    /// Two runs gave bit-identical sparsities and the same fuel.
    pub deterministic: bool,
    /// The failure (host validation included), if any.
    pub failure: Option<Failure>,
}

/// The allocator suite's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllocatorCheckReport {
    /// What the allocator says it is.
    pub allocator: AllocatorInfo,
    /// Per-request results, in order.
    pub requests: Vec<AllocationCheck>,
    /// Whether every request passed (valid, deterministic, within budget).
    pub passed: bool,
    /// The first failure, if any.
    pub failure: Option<Failure>,
}

/// Run an allocator on synthetic requests: 30 block units and 210 layer units
/// ([`synthetic_units`]) at targets 0.5 and 0.7 within [`Bounds::HOST`], the block request
/// within OWL-like bounds `0.7 ± 0.16`, and a degenerate request where every unit is the same.
/// Each answer is validated by the host, run twice for determinism, and timed.
pub fn run_allocator(plugin: &AllocatorPlugin, seed: u64) -> AllocatorCheckReport {
    let blocks = synthetic_units(30, false, seed);
    let layers = synthetic_units(30, true, seed);
    let same: Vec<UnitSummary> = (0..12)
        .map(|b| UnitSummary {
            block: b,
            ..blocks[0].clone()
        })
        .collect();
    let cases: Vec<(String, &[UnitSummary], f64, Bounds)> = vec![
        ("30 blocks".into(), &blocks, 0.5, Bounds::HOST),
        ("30 blocks".into(), &blocks, 0.7, Bounds::HOST),
        ("210 layers".into(), &layers, 0.5, Bounds::HOST),
        ("210 layers".into(), &layers, 0.7, Bounds::HOST),
        (
            "30 blocks, ±0.16".into(),
            &blocks,
            0.7,
            Bounds::around(0.7, 0.16),
        ),
        ("12 equal blocks".into(), &same, 0.6, Bounds::HOST),
    ];
    let mut requests = Vec::new();
    let mut failure = None;
    for (case, units, target, bounds) in cases {
        let c = check_request(plugin, case, units, target, bounds);
        if failure.is_none() {
            failure = c.failure.clone();
        }
        requests.push(c);
    }
    let passed = failure.is_none() && requests.iter().all(|r| r.deterministic);
    AllocatorCheckReport {
        allocator: plugin.info().clone(),
        requests,
        passed,
        failure,
    }
}

fn check_request(
    plugin: &AllocatorPlugin,
    case: String,
    units: &[UnitSummary],
    target: f64,
    bounds: Bounds,
) -> AllocationCheck {
    let mut out = AllocationCheck {
        case,
        units: units.len(),
        target,
        seconds: 0.0,
        fuel: 0,
        fuel_budget_used: 0.0,
        peak_memory_bytes: 0,
        range: None,
        deterministic: false,
        failure: None,
    };
    let first = match plugin.allocate_with_usage(target, bounds, units) {
        Ok(a) => a,
        Err(f) => {
            out.failure = Some(f);
            return out;
        }
    };
    let u = &first.usage;
    out.seconds = u.seconds;
    out.fuel = u.fuel;
    out.fuel_budget_used = u.fuel as f64 / u.fuel_limit.max(1) as f64;
    out.peak_memory_bytes = u.peak_memory_bytes;
    out.range = Some(
        first
            .sparsities
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            }),
    );
    match plugin.allocate_with_usage(target, bounds, units) {
        Ok(second) => {
            out.deterministic = second.usage.fuel == first.usage.fuel
                && second.sparsities.len() == first.sparsities.len()
                && second
                    .sparsities
                    .iter()
                    .zip(&first.sparsities)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
        }
        Err(f) => out.failure = Some(f),
    }
    out
}

/// A human summary of an allocator report.
pub fn render_allocator(report: &AllocatorCheckReport) -> String {
    use std::fmt::Write;
    let a = &report.allocator;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "allocator {} {} — {}",
        line(&a.name),
        line(&a.version),
        line(&a.description)
    );
    let _ = writeln!(
        s,
        "{:<18} {:>5} {:>6} {:>9} {:>12} {:>7} {:>17} {:>6}  result",
        "request", "units", "target", "time", "fuel", "fuel%", "range", "det."
    );
    for r in &report.requests {
        let result = match &r.failure {
            Some(f) => format!("FAIL {}", line(&f.to_string())),
            None if !r.deterministic => "FAIL nondeterministic".into(),
            None => "ok".into(),
        };
        let range = r
            .range
            .map(|(lo, hi)| format!("[{lo:.4}, {hi:.4}]"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "{:<18} {:>5} {:>6.2} {:>8.4}s {:>12} {:>6.2}% {:>17} {:>6}  {}",
            r.case,
            r.units,
            r.target,
            r.seconds,
            r.fuel,
            r.fuel_budget_used * 100.0,
            range,
            if r.deterministic { "yes" } else { "no" },
            result
        );
    }
    let _ = write!(
        s,
        "verdict: {}",
        if report.passed { "PASS" } else { "FAIL" }
    );
    if let Some(f) = &report.failure {
        let _ = write!(s, " ({})", f.kind());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_layers_are_deterministic_and_heavy_tailed() {
        let a = SyntheticLayer::generate(64, 128, LayerKind::Q, 7);
        let b = SyntheticLayer::generate(64, 128, LayerKind::Q, 7);
        assert_eq!(a.weights, b.weights);
        assert_eq!(a.stats, b.stats);
        // Kurtosis of a Laplace is 6 (normal: 3); outlier columns push it higher.
        let n = a.weights.len() as f64;
        let m2 = a.weights.iter().map(|&w| (w as f64).powi(2)).sum::<f64>() / n;
        let m4 = a.weights.iter().map(|&w| (w as f64).powi(4)).sum::<f64>() / n;
        assert!(m4 / (m2 * m2) > 4.5, "kurtosis {}", m4 / (m2 * m2));
        let norms = a.stats.l2_norm();
        let max = norms.iter().cloned().fold(0.0, f32::max);
        let mut sorted = norms.clone();
        sorted.sort_by(f32::total_cmp);
        assert!(
            max > 10.0 * sorted[sorted.len() / 2],
            "outlier channels exist"
        );
    }

    #[test]
    fn synthetic_units_are_valid_for_the_builtin_allocators() {
        use crate::alloc::{Allocation, OwlParams, SdsaParams};
        let blocks = synthetic_units(30, false, 0);
        let layers = synthetic_units(30, true, 0);
        assert_eq!((blocks.len(), layers.len()), (30, 210));
        assert_eq!(blocks, synthetic_units(30, false, 0));
        let block_params: u64 = blocks.iter().map(|u| u.params).sum();
        let layer_params: u64 = layers.iter().map(|u| u.params).sum();
        assert_eq!(block_params, layer_params);
        for units in [&blocks, &layers] {
            for a in [
                Allocation::Owl(OwlParams::default()),
                Allocation::Sdsa(SdsaParams::default()),
            ] {
                let s = a.allocate(0.7, units).unwrap();
                let (lo, hi) = s
                    .iter()
                    .fold((1.0f64, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
                assert!(
                    hi - lo > 0.05,
                    "{}: the summaries differ enough to spread ({lo}, {hi})",
                    a.name()
                );
            }
        }
    }
}
