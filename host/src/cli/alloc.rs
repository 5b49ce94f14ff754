//! Allocation flags and the allocation step shared by `prune` and `sweep`.

use super::protocol::bar;
use autoprune::alloc::summary::{dense_extras, dense_stats, DenseExtras, DenseStats};
use autoprune::alloc::{
    expand, Allocation, Bounds, Granularity, OwlParams, SdsaParams, SkewSource, UnitSummary,
};
use autoprune::calib::gradient::{self, Gradients};
use autoprune::model::Model;
use autoprune::pipeline::PipelineError;
use autoprune::prune::mask::Pattern;
use autoprune::sandbox::Plugin;
use serde::Serialize;
use std::ops::ControlFlow;

/// Layer-wise allocation flags of `autoprune prune`.
#[derive(Debug, clap::Args)]
pub struct AllocArgs {
    /// Layer-wise sparsity allocation: `uniform`, `owl`, `sdsa`, or an allocator plugin
    /// (`.rs` source built in the sandbox, or a `.wasm` component of the `allocator` world).
    #[arg(long, default_value = "uniform")]
    pub allocation: String,
    /// What gets one sparsity: `block` (all linears of a block share it) or `layer`.
    #[arg(long, default_value = "block")]
    pub granularity: Granularity,
    /// OWL: outlier threshold as a multiple of the mean Wanda score (3, 5, 7 or 10).
    #[arg(long, default_value_t = OwlParams::default().m)]
    pub owl_m: f64,
    /// OWL: λ; sparsities spread over a range of width 2λ around the target.
    #[arg(long, default_value_t = OwlParams::default().lambda)]
    pub owl_lambda: f64,
    /// SDSA: softmax temperature on the standardised skewness.
    #[arg(long, default_value_t = SdsaParams::default().temperature)]
    pub sdsa_temperature: f64,
    /// SDSA: largest deviation of a unit's sparsity from the target.
    #[arg(long, default_value_t = SdsaParams::default().delta)]
    pub sdsa_delta: f64,
    /// SDSA: whose skewness: `weights` (|W|, default), `scores` (the metric's) or `wanda`.
    #[arg(long, default_value = "weights")]
    pub sdsa_source: SkewSource,
}

impl AllocArgs {
    /// The built-in rule named by `--allocation`, or `None` for a plugin path.
    pub fn builtin(&self) -> anyhow::Result<Option<Allocation>> {
        Ok(Some(match self.allocation.as_str() {
            "uniform" => Allocation::Uniform,
            "owl" => Allocation::Owl(OwlParams {
                m: self.owl_m,
                lambda: self.owl_lambda,
            }),
            "sdsa" => Allocation::Sdsa(SdsaParams {
                temperature: self.sdsa_temperature,
                delta: self.sdsa_delta,
                source: self.sdsa_source,
            }),
            p if p.ends_with(".rs") || p.ends_with(".wasm") => return Ok(None),
            other => anyhow::bail!(
                "unknown allocation `{other}` (uniform, owl, sdsa, or an allocator plugin .rs/.wasm)"
            ),
        }))
    }
}

/// One unit of an allocation, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct UnitRow {
    /// Block.
    pub block: u32,
    /// Linear (absent for block units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Weights.
    pub params: u64,
    /// Allocated sparsity.
    pub sparsity: f64,
    /// Skewness of the metric's scores.
    pub score_skewness: f64,
    /// Excess kurtosis of the metric's scores.
    pub score_kurtosis: f64,
    /// Skewness of |W|.
    pub weight_skewness: f64,
    /// Skewness of the Wanda scores.
    pub wanda_skewness: f64,
    /// Share of Wanda scores above 5× their mean (OWL's statistic).
    pub wanda_outlier_ratio_5: f64,
}

/// The allocation of one run, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    /// Rule and its parameters (or the plugin).
    pub rule: serde_json::Value,
    /// Granularity.
    pub granularity: Granularity,
    /// Per-unit results.
    pub units: Vec<UnitRow>,
    /// Seconds of the dense statistics pass.
    pub stats_seconds: f64,
    /// Per-linear sparsities in model order (for the pipeline).
    #[serde(skip)]
    pub layer_sparsity: Vec<f64>,
}

/// The plan as a table: one line per unit.
pub fn plan_table(p: &Planned) -> String {
    use std::fmt::Write;
    let mut s = String::from(
        "block  kind      params  sparsity  skew(scores)  kurt(scores)  skew(wanda)  skew(|W|)  outl5(wanda)",
    );
    for u in &p.units {
        let _ = write!(
            s,
            "\n{:>5}  {:<5} {:>10}  {:>8.4}  {:>12.3}  {:>12.2}  {:>11.3}  {:>9.3}  {:>12.5}",
            u.block,
            u.kind.unwrap_or("-"),
            u.params,
            u.sparsity,
            u.score_skewness,
            u.score_kurtosis,
            u.wanda_skewness,
            u.weight_skewness,
            u.wanda_outlier_ratio_5
        );
    }
    s
}

/// Refuse allocation with an N:M pattern (which fixes every layer's sparsity).
pub fn check_pattern(pattern: Pattern) -> anyhow::Result<()> {
    if let Pattern::NM { .. } = pattern {
        anyhow::bail!("a non-uniform allocation needs an unstructured pattern (row, layer or layer-exact): N:M fixes every layer at N/M");
    }
    Ok(())
}

/// The dense statistics pass, with a progress bar.
pub fn stats_pass(
    model: &Model,
    windows: &[&[u32]],
    batch: usize,
    quiet: bool,
) -> anyhow::Result<DenseStats> {
    let pb = bar(model.blocks.len(), "dense stats", quiet);
    let s = dense_stats(model, windows, batch, &mut |d, _| pb.set_position(d as u64))?;
    pb.finish_and_clear();
    Ok(s)
}

/// Gradients for a metric that reads them (the summaries score the metric on the dense model).
pub fn gradients_if_needed(
    model: &Model,
    windows: &[&[u32]],
    metric: Option<&Plugin>,
    quiet: bool,
) -> anyhow::Result<Option<Gradients>> {
    match metric {
        Some(p) if p.info().needs_gradient => {
            let pb = bar(windows.len(), "gradients (allocation)", quiet);
            let g = gradient::compute(model, windows, &mut |d, _| {
                pb.set_position(d as u64);
                ControlFlow::Continue(())
            })?;
            pb.finish_and_clear();
            Ok(Some(g))
        }
        _ => Ok(None),
    }
}

/// The Hessian-derived inputs (WIT 0.2.0) for a metric that declares them (the summaries
/// score the metric on the dense model).
pub fn extras_if_needed(
    model: &Model,
    windows: &[&[u32]],
    batch: usize,
    metric: Option<&Plugin>,
    quiet: bool,
) -> anyhow::Result<Option<DenseExtras>> {
    match metric {
        Some(p) if p.info().wanted().any() => {
            let pb = bar(model.blocks.len(), "Hessian inputs (allocation)", quiet);
            let e = dense_extras(model, windows, batch, p.info().wanted(), &mut |d, _| {
                pb.set_position(d as u64)
            })?;
            pb.finish_and_clear();
            Ok(Some(e))
        }
        _ => Ok(None),
    }
}

/// Turn unit sparsities into the reported plan.
pub fn planned(
    rule: serde_json::Value,
    granularity: Granularity,
    units: &[UnitSummary],
    s: &[f64],
    num_blocks: usize,
    stats_seconds: f64,
) -> Planned {
    Planned {
        rule,
        granularity,
        units: units
            .iter()
            .zip(s)
            .map(|(u, &sparsity)| UnitRow {
                block: u.block,
                kind: u.kind.map(|k| k.name()),
                params: u.params,
                sparsity,
                score_skewness: u.scores.skewness,
                score_kurtosis: u.scores.kurtosis,
                weight_skewness: u.weights.skewness,
                wanda_skewness: u.wanda.skewness,
                wanda_outlier_ratio_5: u.wanda.outlier_ratio(5.0).unwrap_or(f64::NAN),
            })
            .collect(),
        stats_seconds,
        layer_sparsity: expand(units, s, num_blocks),
    }
}

/// Build or load the allocator plugin at `path` and run it on `units` at `target`, within
/// [`Bounds::HOST`]. Returns the validated sparsities and the rule as reported.
pub fn run_plugin(
    path: &std::path::Path,
    flags: &super::BuildFlags,
    policy: &autoprune::sandbox::Policy,
    target: f64,
    units: &[UnitSummary],
) -> Result<(Vec<f64>, serde_json::Value), PipelineError> {
    let plugin = super::check::load_allocator(path, flags, policy)
        .map_err(|e| PipelineError::Config(format!("{e:#}")))?
        .map_err(PipelineError::Allocator)?;
    let sha256 = super::check::plugin_sha256(path, policy)
        .map_err(|e| PipelineError::Config(format!("{e:#}")))?;
    let s = plugin
        .allocate(target, Bounds::HOST, units)
        .map_err(PipelineError::Allocator)?;
    let rule = serde_json::json!({
        "plugin": path,
        "sha256": sha256,
        "info": plugin.info(),
        "bounds": Bounds::HOST,
    });
    Ok((s, rule))
}
