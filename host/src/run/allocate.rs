//! The allocation step of a run: a dense statistics pass, per-unit summaries of the metric,
//! and the built-in rule's or the allocator plugin's validated sparsities, as a [`Planned`].

use crate::alloc::plan::Planned;
use crate::alloc::summary::{dense_extras, dense_stats, summarize, DenseExtras, DenseStats};
use crate::alloc::{Allocation, Bounds, Granularity, UnitSummary};
use crate::calib::gradient::{self, Gradients};
use crate::calib::DevicePath;
use crate::model::Model;
use crate::pipeline::PipelineError;
use crate::progress::{step, Progress};
use crate::prune::mask::Pattern;
use crate::sandbox::AllocatorPlugin;
use crate::sandbox::Plugin;
use std::ops::ControlFlow;
use std::path::Path;

/// Who decides the sparsities.
pub enum Rule<'a> {
    /// A built-in rule.
    Builtin(Allocation),
    /// An allocator plugin, with the rule as the report records it.
    Plugin {
        /// The loaded plugin.
        plugin: &'a AllocatorPlugin,
        /// Its record: path, hash, info and bounds.
        record: serde_json::Value,
    },
}

impl<'a> Rule<'a> {
    /// The allocator plugin loaded from `path` (with the SHA-256 of that file), run within
    /// [`Bounds::HOST`].
    pub fn plugin(plugin: &'a AllocatorPlugin, path: &Path, sha256: &str) -> Self {
        Rule::Plugin {
            plugin,
            record: serde_json::json!({
                "plugin": path,
                "sha256": sha256,
                "info": plugin.info(),
                "bounds": Bounds::HOST,
            }),
        }
    }
}

/// Refuse allocation with an N:M pattern (which fixes every layer's sparsity).
pub fn check_pattern(pattern: Pattern) -> anyhow::Result<()> {
    if let Pattern::NM { .. } = pattern {
        anyhow::bail!("a non-uniform allocation needs an unstructured pattern (row, layer or layer-exact): N:M fixes every layer at N/M");
    }
    Ok(())
}

/// The dense statistics pass over `windows` (batches of `batch`), as a step of `progress`.
pub fn stats_pass(
    model: &Model,
    windows: &[&[u32]],
    batch: usize,
    path: DevicePath,
    progress: &mut dyn Progress,
) -> anyhow::Result<DenseStats> {
    Ok(step(progress, "dense stats", model.blocks.len(), |p| {
        dense_stats(model, windows, batch, path, &mut |d, _| p(d))
    })?)
}

/// Gradients for a metric that reads them (the summaries score the metric on the dense model).
pub fn gradients_if_needed(
    model: &Model,
    windows: &[&[u32]],
    metric: Option<&Plugin>,
    progress: &mut dyn Progress,
) -> anyhow::Result<Option<Gradients>> {
    match metric {
        Some(p) if p.info().needs_gradient => Ok(Some(step(
            progress,
            "gradients (allocation)",
            windows.len(),
            |adv| {
                gradient::compute(model, windows, &mut |d, _| {
                    adv(d);
                    ControlFlow::Continue(())
                })
            },
        )?)),
        _ => Ok(None),
    }
}

/// The Hessian-derived inputs (WIT 0.2.0) for a metric that declares them (the summaries
/// score the metric on the dense model).
pub fn extras_if_needed(
    model: &Model,
    windows: &[&[u32]],
    batch: usize,
    path: DevicePath,
    metric: Option<&Plugin>,
    progress: &mut dyn Progress,
) -> anyhow::Result<Option<DenseExtras>> {
    match metric {
        Some(p) if p.info().wanted().any() => Ok(Some(step(
            progress,
            "Hessian inputs (allocation)",
            model.blocks.len(),
            |adv| {
                let wanted = p.info().wanted();
                dense_extras(model, windows, batch, wanted, path, &mut |d, _| adv(d))
            },
        )?)),
        _ => Ok(None),
    }
}

/// Everything the allocation step of one run reads.
pub struct AllocationJob<'a> {
    /// The rule.
    pub rule: Rule<'a>,
    /// What gets one sparsity.
    pub granularity: Granularity,
    /// The pruning pattern (N:M refuses a non-uniform allocation).
    pub pattern: Pattern,
    /// Target mean sparsity.
    pub target: f64,
    /// Calibration windows per forward pass.
    pub batch: usize,
    /// Where the dense pass's statistics and Hessians are computed.
    pub path: DevicePath,
}

/// The allocation step: `None` for uniform; otherwise a dense statistics pass, unit summaries
/// and the rule's (or plugin's) validated sparsities. Also returns the gradient statistic when
/// the summaries needed it, for the pruning run to reuse.
pub fn plan(
    job: &AllocationJob,
    model: &Model,
    windows: &[&[u32]],
    metric: Option<&Plugin>,
    progress: &mut dyn Progress,
) -> Result<(Option<Planned>, Option<Gradients>), PipelineError> {
    if matches!(job.rule, Rule::Builtin(Allocation::Uniform)) {
        return Ok((None, None));
    }
    check_pattern(job.pattern).map_err(|e| PipelineError::Config(e.to_string()))?;
    let cfg_err = |e: anyhow::Error| PipelineError::Config(format!("{e:#}"));
    let stats = stats_pass(model, windows, job.batch, job.path, progress).map_err(cfg_err)?;
    let grads = gradients_if_needed(model, windows, metric, progress).map_err(cfg_err)?;
    let extras =
        extras_if_needed(model, windows, job.batch, job.path, metric, progress).map_err(cfg_err)?;
    let units = summarize(
        model,
        &stats,
        metric,
        grads.as_ref(),
        extras.as_ref(),
        job.target,
        job.granularity,
    )?;
    let (s, record) = allocate(&job.rule, job.target, &units)?;
    let plan = Planned::new(
        record,
        job.granularity,
        &units,
        &s,
        model.blocks.len(),
        stats.seconds,
    );
    Ok((Some(plan), grads))
}

/// The rule's validated sparsities for `units` at `target`, with the rule's record.
fn allocate(
    rule: &Rule,
    target: f64,
    units: &[UnitSummary],
) -> Result<(Vec<f64>, serde_json::Value), PipelineError> {
    match rule {
        Rule::Builtin(r) => Ok((
            r.allocate(target, units)
                .map_err(|e| PipelineError::Config(format!("{} allocation: {e}", r.name())))?,
            serde_json::to_value(r).unwrap_or_default(),
        )),
        Rule::Plugin { plugin, record } => Ok((
            plugin
                .allocate(target, Bounds::HOST, units)
                .map_err(PipelineError::Allocator)?,
            record.clone(),
        )),
    }
}
