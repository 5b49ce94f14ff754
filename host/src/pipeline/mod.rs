//! The Wanda-protocol pruning run: block by block, dense statistics → host-built masks →
//! pruned pass feeding the next block.

use crate::alloc::summary::SummaryError;
use crate::calib::gradient::{self, GradientError, Gradients};
use crate::calib::hessian::HessianFactor;
use crate::calib::hessian::{block_extras, BlockExtras, HessianError, Wanted};
use crate::calib::input_slot;
pub use crate::calib::DevicePath;
use crate::calib::{collect_block_inputs_on, BlockInputs, CalibError};
use crate::layer::{LayerData, LayerId, LayerKind};
use crate::model::{with_host_f32, Block, Model, ModelError, Rope};
use crate::prune::mask::{Mask, MaskError, Pattern};
use crate::prune::sparsegpt::device::{prune_tensor, DeviceFactor};
use crate::prune::sparsegpt::{prune_with_factor, SparseGptConfig};
use crate::sandbox::{Failure, InvalidOutput, Plugin};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Instant;

mod stream;
pub use stream::{prune_streaming, stream_nlls, BlockRecord, StreamJob, StreamOutcome};

/// How weights are chosen for pruning.
pub enum Method<'a> {
    /// A sandboxed metric plugin scores weights; the host builds the masks.
    Metric(&'a Plugin),
    /// SparseGPT (built in): OBS mask selection and weight update from the Hessian.
    SparseGpt,
}

/// What to prune and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneConfig {
    /// Target sparsity of every linear (ignored by N:M patterns, which fix it).
    pub sparsity: f64,
    /// Per-layer sparsities from an allocation ([`crate::alloc`]), one per linear in model
    /// order (block-major, [`LayerKind::BLOCK`] order); empty = `sparsity` everywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_sparsity: Vec<f64>,
    /// Comparison group.
    pub pattern: Pattern,
    /// Calibration windows per forward pass (memory vs speed).
    pub batch: usize,
    /// Where statistics, Hessians and SparseGPT's update run: on the host, or with tensor
    /// operations where the model is (`Auto`: the tensor path for a model on a GPU). Both
    /// give the same pruning up to f32 rounding (`docs/CUDA.md`), so it is not part of a
    /// run's recorded configuration.
    #[serde(skip)]
    pub path: DevicePath,
}

impl PruneConfig {
    /// Uniform sparsity `sparsity` with `pattern`.
    pub fn uniform(sparsity: f64, pattern: Pattern, batch: usize) -> Self {
        PruneConfig {
            sparsity,
            layer_sparsity: Vec::new(),
            pattern,
            batch,
            path: DevicePath::Auto,
        }
    }

    /// The sparsity of layer `id`.
    pub fn sparsity_of(&self, id: LayerId) -> f64 {
        let i = id.block as usize * LayerKind::BLOCK.len()
            + LayerKind::BLOCK
                .iter()
                .position(|&k| k == id.kind)
                .unwrap_or(0);
        self.layer_sparsity.get(i).copied().unwrap_or(self.sparsity)
    }
}

/// Why a pruning run stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The model's forward pass failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Calibration failed.
    #[error(transparent)]
    Calib(#[from] CalibError),
    /// The gradient pass (for metrics that read the gradient statistic) failed.
    #[error(transparent)]
    Gradient(#[from] GradientError),
    /// The metric plugin failed on a layer.
    #[error("the metric failed on {layer}: {failure}")]
    Metric {
        /// The layer.
        layer: LayerId,
        /// Its typed verdict.
        failure: Failure,
    },
    /// Scores could not be turned into a mask.
    #[error("mask for {layer}: {error}")]
    Mask {
        /// The layer.
        layer: LayerId,
        /// Why.
        error: MaskError,
    },
    /// The allocator plugin failed (its typed verdict).
    #[error("the allocator failed: {0}")]
    Allocator(Failure),
    /// The configuration is inconsistent with the model or itself.
    #[error("configuration: {0}")]
    Config(String),
    /// The Hessian-derived optional inputs (WIT 0.2.0) of a block could not be computed.
    #[error("Hessian inputs of block {block}: {error}")]
    Hessian {
        /// The block.
        block: u32,
        /// Why.
        error: HessianError,
    },
    /// SparseGPT failed on a layer.
    #[error("SparseGPT on {layer}: {message}")]
    SparseGpt {
        /// The layer.
        layer: LayerId,
        /// Why.
        message: String,
    },
}

/// A mask error as the pipeline reports it: a per-layer overshoot is the metric's verdict
/// (its scores cannot rank the layer), anything else a mask error.
pub fn mask_error(layer: LayerId, error: MaskError) -> PipelineError {
    match error {
        MaskError::Overshoot {
            expected,
            got,
            allowed,
            weights,
        } => PipelineError::Metric {
            layer,
            failure: Failure::InvalidOutput(InvalidOutput::SparsityOvershoot {
                pruned: got as u64,
                target: expected as u64,
                allowed: allowed as u64,
                weights: weights as u64,
            }),
        },
        error => PipelineError::Mask { layer, error },
    }
}

impl From<candle_core::Error> for PipelineError {
    fn from(e: candle_core::Error) -> Self {
        PipelineError::Model(e.into())
    }
}

/// The dense pre-pass's errors, as the variants of the same name and message.
impl From<SummaryError> for PipelineError {
    fn from(e: SummaryError) -> Self {
        match e {
            SummaryError::Model(e) => PipelineError::Model(e),
            SummaryError::Calib(e) => PipelineError::Calib(e),
            SummaryError::Metric { layer, failure } => PipelineError::Metric { layer, failure },
            SummaryError::Hessian { block, error } => PipelineError::Hessian { block, error },
        }
    }
}

/// What happened to one linear layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerReport {
    /// Block index.
    pub block: u32,
    /// Linear kind.
    pub kind: LayerKind,
    /// Rows × cols.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// The sparsity this layer was asked for (the allocation's, or the uniform target).
    #[serde(default)]
    pub target: f64,
    /// Weights pruned by the mask.
    pub pruned: usize,
    /// Weights exactly zero afterwards (includes zeros that were there before).
    pub zeros: usize,
    /// `zeros / (rows·cols)`.
    pub sparsity: f64,
    /// Hash of the mask (equal masks, equal hashes).
    pub mask_hash: String,
    /// Fuel the metric used (0 for built-in methods).
    pub fuel: u64,
    /// Seconds spent scoring and masking this layer.
    pub seconds: f64,
    /// Where its statistics, Hessians and SparseGPT update were computed: `tensor` or `host`
    /// (absent for a one-shot run, whose statistics come from an earlier dense pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<DevicePath>,
}

/// The result of a pruning run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneReport {
    /// Per-layer results in model order.
    pub layers: Vec<LayerReport>,
    /// Zeros over all linear weights.
    pub sparsity: f64,
    /// Seconds of dense statistics passes.
    pub stats_seconds: f64,
    /// Seconds of scoring, masking (and weight updates).
    pub prune_seconds: f64,
    /// Seconds of pruned passes.
    pub forward_seconds: f64,
    /// Seconds of the gradient pass on the dense model (0 unless the metric reads the
    /// gradient statistic).
    #[serde(default)]
    pub gradient_seconds: f64,
    /// Seconds spent accumulating input Hessians in the statistics passes (part of
    /// `stats_seconds`; 0 unless SparseGPT or the metric's optional inputs need them).
    #[serde(default)]
    pub hessian_seconds: f64,
    /// Seconds spent on the Hessian-derived inputs a metric declared (inverse diagonals and
    /// output statistics; part of `prune_seconds`).
    #[serde(default)]
    pub hessian_inputs_seconds: f64,
}

impl PruneReport {
    /// No layer yet, every time zero.
    fn empty() -> Self {
        PruneReport {
            layers: Vec::new(),
            sparsity: 0.0,
            stats_seconds: 0.0,
            prune_seconds: 0.0,
            forward_seconds: 0.0,
            gradient_seconds: 0.0,
            hessian_seconds: 0.0,
            hessian_inputs_seconds: 0.0,
        }
    }

    /// Set `sparsity` from the layers: zeros over all their weights.
    fn finish_sparsity(&mut self) {
        let zeros: usize = self.layers.iter().map(|l| l.zeros).sum();
        let total: usize = self.layers.iter().map(|l| l.rows * l.cols).sum();
        self.sparsity = zeros as f64 / total.max(1) as f64;
    }
}

/// Where a pruning run is, for [`prune_model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// `done` of `total` calibration windows through the gradient pass (only for metrics that
    /// read the gradient statistic; it runs before the first block).
    Gradient {
        /// Windows finished.
        done: usize,
        /// Windows in all.
        total: usize,
    },
    /// `done` of `total` blocks pruned.
    Block {
        /// Blocks finished.
        done: usize,
        /// Blocks in all.
        total: usize,
    },
}

/// Embed calibration windows in batches of `batch` with `embed`.
pub(crate) fn embed_chunks(
    windows: &[&[u32]],
    batch: usize,
    embed: impl Fn(&[&[u32]]) -> Result<Tensor, ModelError>,
) -> Result<Vec<Tensor>, PipelineError> {
    windows
        .chunks(batch.max(1))
        .map(|w| Ok(embed(w)?))
        .collect()
}

/// One pruning run: what [`prune_model`] does to a model.
#[derive(Clone, Copy)]
pub struct PruneJob<'a> {
    /// The calibration windows (all of one length).
    pub windows: &'a [&'a [u32]],
    /// How weights are chosen.
    pub method: &'a Method<'a>,
    /// What to prune.
    pub config: &'a PruneConfig,
    /// The gradient statistic, already computed on the dense model over the same `windows`
    /// (e.g. by the allocation step, or once per search run), so it is not computed again.
    /// With `None` it is computed when the metric reads it.
    pub gradients: Option<&'a Gradients>,
}

impl<'a> PruneJob<'a> {
    /// Prune with `method` and `config` on `windows`; the gradient statistic, if the metric
    /// reads it, is computed in the run.
    pub fn new(windows: &'a [&'a [u32]], method: &'a Method<'a>, config: &'a PruneConfig) -> Self {
        PruneJob {
            windows,
            method,
            config,
            gradients: None,
        }
    }

    /// The same job with the gradient statistic already computed (`None`: computed in the
    /// run when the metric reads it).
    pub fn with_gradients(self, gradients: Option<&'a Gradients>) -> Self {
        PruneJob { gradients, ..self }
    }
}

/// Prune `model` in place as `job` says.
///
/// `progress` is called after every block ([`Progress::Block`]). When the metric reads the
/// gradient statistic ([`MetricInfo::needs_gradient`](crate::sandbox::MetricInfo)) and the job
/// does not bring it, a gradient pass over the same windows runs first on the dense model (see
/// [`gradient::compute`]), reporting [`Progress::Gradient`] after every window.
pub fn prune_model(
    model: &mut Model,
    job: &PruneJob<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<PruneReport, PipelineError> {
    let PruneJob {
        windows,
        method,
        config: cfg,
        gradients,
    } = *job;
    // The gradient statistic, only for a metric that asks for it (it costs a backward pass per
    // window), on the dense model before anything is pruned.
    let computed: Option<Gradients> = match (method, gradients) {
        (Method::Metric(plugin), None) if plugin.info().needs_gradient => {
            Some(gradient::compute(model, windows, &mut |done, total| {
                progress(Progress::Gradient { done, total });
                ControlFlow::Continue(())
            })?)
        }
        _ => None,
    };
    let needs = matches!(method, Method::Metric(p) if p.info().needs_gradient);
    // The Hessian-derived inputs, only for a metric that declares them (WIT 0.2.0).
    let wanted = match method {
        Method::Metric(p) => p.info().wanted(),
        Method::SparseGpt => Wanted::default(),
    };
    let grads = if needs {
        computed.as_ref().or(gradients)
    } else {
        None
    };
    check_layer_sparsity(model.blocks.len(), cfg)?;
    let seq_len = windows.first().map_or(0, |w| w.len());
    let rope = model.rope(seq_len)?;
    let mut inps = embed_chunks(windows, cfg.batch, |w| model.embed(&model.ids_tensor(w)?))?;
    let num_blocks = model.blocks.len();
    let mut report = PruneReport {
        gradient_seconds: computed.as_ref().map_or(0.0, |g| g.seconds),
        ..PruneReport::empty()
    };
    let ctx = BlockJob {
        num_blocks,
        method,
        cfg,
        wanted,
        grads,
    };
    for i in 0..num_blocks {
        let layers = prune_block(&mut model.blocks[i], i, &inps, &rope, &ctx, &mut report)?;
        report.layers.extend(layers);
        // The last block's pruned outputs would feed nothing: the protocol never reads them.
        if i + 1 == num_blocks {
            progress(Progress::Block {
                done: i + 1,
                total: num_blocks,
            });
            break;
        }
        let t = Instant::now();
        inps = through(&model.blocks[i], &inps, &rope)?;
        report.forward_seconds += t.elapsed().as_secs_f64();
        progress(Progress::Block {
            done: i + 1,
            total: num_blocks,
        });
    }
    report.finish_sparsity();
    Ok(report)
}

/// Every batch of `xs` through `block`.
fn through(block: &Block, xs: &[Tensor], rope: &Rope) -> Result<Vec<Tensor>, PipelineError> {
    Ok(xs
        .iter()
        .map(|x| block.forward(x, rope, &mut |_, _| Ok(())))
        .collect::<Result<_, _>>()?)
}

/// What every block of a sequential run shares.
struct BlockJob<'a> {
    num_blocks: usize,
    method: &'a Method<'a>,
    cfg: &'a PruneConfig,
    /// The Hessian-derived inputs the metric declared (WIT 0.2.0).
    wanted: Wanted,
    /// The gradient statistic, for a metric that reads it.
    grads: Option<&'a Gradients>,
}

/// Prune block `i` in place from its (dense) inputs `inps`: statistics of every linear's
/// input, the Hessian-derived inputs and SparseGPT's factors where needed, then every linear
/// scored and masked (or SparseGPT-updated). Only this block is read, so a caller may hold
/// the model's blocks one at a time. Adds its statistics, Hessian and pruning times to
/// `report`.
fn prune_block(
    block: &mut Block,
    i: usize,
    inps: &[Tensor],
    rope: &Rope,
    job: &BlockJob<'_>,
    report: &mut PruneReport,
) -> Result<Vec<LayerReport>, PipelineError> {
    let BlockJob {
        num_blocks,
        method,
        cfg,
        wanted,
        grads,
    } = *job;
    let sparsegpt = matches!(method, Method::SparseGpt);
    let t = Instant::now();
    let hessians = sparsegpt || wanted.any();
    // One decision for the block: its statistics, Hessians and SparseGPT update all run where
    // the model's data are (the activations and the weights share a device).
    let device = inps.first().map_or(Device::Cpu, |x| x.device().clone());
    let path = cfg.path.resolve(&device);
    let inputs = collect_block_inputs_on(block, inps, rope, hessians, path)?;
    report.stats_seconds += t.elapsed().as_secs_f64();
    report.hessian_seconds += inputs.hessian_seconds;
    let t = Instant::now();
    // Before any layer of the block is pruned: output statistics of the dense weights.
    let extras = block_extras(block, &inputs, wanted).map_err(|error| PipelineError::Hessian {
        block: i as u32,
        error,
    })?;
    report.hessian_inputs_seconds += extras.seconds;
    // q/k/v and gate/up read the same inputs: one Hessian factor serves each group.
    let mut factors = BTreeMap::new();
    for (&slot, h) in inputs.hessians.iter().filter(|_| sparsegpt) {
        let f = HessianFactor::new(h, SparseGptConfig::default().percdamp).map_err(|e| {
            PipelineError::SparseGpt {
                layer: LayerId::of(i, num_blocks, slot),
                message: e.to_string(),
            }
        })?;
        let f = if path == DevicePath::Tensor {
            let df = DeviceFactor::new(&f, &device).map_err(|e| PipelineError::SparseGpt {
                layer: LayerId::of(i, num_blocks, slot),
                message: e.to_string(),
            })?;
            Factor::Tensor(df)
        } else {
            Factor::Host(f)
        };
        factors.insert(slot, f);
    }
    let mut layers = Vec::with_capacity(LayerKind::BLOCK.len());
    for kind in LayerKind::BLOCK {
        let id = LayerId::of(i, num_blocks, kind);
        let optional = Optional {
            gradient: grads.and_then(|g| g.get(i, kind)),
            extras: Some(&extras),
        };
        let mut layer = prune_linear(block, id, &inputs, &factors, method, cfg, optional)?;
        layer.path = Some(path);
        layers.push(layer);
    }
    report.prune_seconds += t.elapsed().as_secs_f64();
    Ok(layers)
}

/// One-shot pruning: every block is pruned with statistics of the *dense* model (`stats`,
/// e.g. from [`crate::alloc::summary::dense_stats`]), with no pruned pass between blocks.
/// Cheaper than the protocol (no forward pass at all here) and a screen for search: the
/// statistics are computed once per run and shared by every candidate. A metric that reads
/// the gradient statistic needs `gradients` (of the dense model); one that reads the
/// Hessian-derived inputs needs `extras` (from [`crate::alloc::summary::dense_extras`]).
pub fn prune_one_shot(
    model: &mut Model,
    stats: &crate::alloc::summary::DenseStats,
    plugin: &Plugin,
    cfg: &PruneConfig,
    gradients: Option<&Gradients>,
    extras: Option<&crate::alloc::summary::DenseExtras>,
) -> Result<PruneReport, PipelineError> {
    let num_blocks = model.blocks.len();
    check_layer_sparsity(model.blocks.len(), cfg)?;
    if plugin.info().needs_gradient && gradients.is_none() {
        return Err(PipelineError::Config(
            "the metric reads the gradient statistic; compute it first".into(),
        ));
    }
    if plugin.info().wanted().any() && extras.is_none() {
        return Err(PipelineError::Config(
            "the metric reads Hessian-derived inputs; compute them first".into(),
        ));
    }
    let mut report = PruneReport::empty();
    let t = Instant::now();
    let method = Method::Metric(plugin);
    let factors = BTreeMap::new();
    for i in 0..num_blocks {
        let inputs = BlockInputs {
            stats: stats.blocks.get(i).cloned().unwrap_or_default(),
            hessians: BTreeMap::new(),
            hessian_seconds: 0.0,
        };
        for kind in LayerKind::BLOCK {
            let id = LayerId::of(i, num_blocks, kind);
            let optional = Optional {
                gradient: gradients.and_then(|g| g.get(i, kind)),
                extras: extras.and_then(|e| e.blocks.get(i)),
            };
            let layer = prune_linear(
                &mut model.blocks[i],
                id,
                &inputs,
                &factors,
                &method,
                cfg,
                optional,
            )?;
            report.layers.push(layer);
        }
    }
    report.prune_seconds = t.elapsed().as_secs_f64();
    report.finish_sparsity();
    Ok(report)
}

/// Per-layer sparsities must match the model and an unstructured pattern.
fn check_layer_sparsity(num_blocks: usize, cfg: &PruneConfig) -> Result<(), PipelineError> {
    let expected = num_blocks * LayerKind::BLOCK.len();
    if !cfg.layer_sparsity.is_empty() {
        if cfg.layer_sparsity.len() != expected {
            return Err(PipelineError::Config(format!(
                "{} per-layer sparsities for {expected} linear layers",
                cfg.layer_sparsity.len()
            )));
        }
        if matches!(cfg.pattern, Pattern::NM { .. }) {
            return Err(PipelineError::Config(
                "per-layer sparsities need an unstructured pattern (row or layer); N:M fixes the sparsity".into(),
            ));
        }
    }
    Ok(())
}

/// The optional inputs of one layer, as far as they were computed.
#[derive(Clone, Copy)]
struct Optional<'a> {
    /// The layer's gradient statistic.
    gradient: Option<&'a [f32]>,
    /// Its block's Hessian-derived inputs.
    extras: Option<&'a BlockExtras>,
}

/// SparseGPT's factor of one input slot, where its update runs.
enum Factor {
    /// On the host (the weights are copied to it and back).
    Host(HessianFactor),
    /// Uploaded to the weights' device (the tensor path).
    Tensor(DeviceFactor),
}

/// Score, mask (or SparseGPT-update) and write back one linear layer. `optional` holds the
/// optional inputs computed for the metric.
fn prune_linear(
    block: &mut Block,
    id: LayerId,
    inputs: &BlockInputs,
    factors: &BTreeMap<LayerKind, Factor>,
    method: &Method<'_>,
    cfg: &PruneConfig,
    optional: Optional<'_>,
) -> Result<LayerReport, PipelineError> {
    let t = Instant::now();
    let linear = block
        .linear(id.kind)
        .ok_or_else(|| ModelError::Input(format!("no {} linear", id.kind.name())))?;
    let (rows, cols) = linear.shape();
    let device = linear.weight().device().clone();
    let (weight, zeros, mask, fuel) = match method {
        Method::Metric(plugin) => {
            let stats = inputs.stats(id.kind).ok_or_else(|| {
                ModelError::Input(format!("no statistics were collected for {id}"))
            })?;
            // Scored from the block's own weights: the copy to be masked is made only once the
            // scores are a mask, so a layer never has weights, a copy and scores at once (the
            // streaming run's memory bound counts on it).
            let score = |weights: &[f32]| {
                let data = LayerData {
                    id,
                    rows,
                    cols,
                    weights,
                    stats,
                    gradient: optional.gradient,
                    hessian_inverse_diagonal: optional
                        .extras
                        .and_then(|e| e.hessian_inverse_diagonal(id.kind)),
                    output_stats: optional.extras.and_then(|e| e.output_stats(id.kind)),
                    sparsity: cfg.sparsity_of(id) as f32,
                };
                plugin
                    .score(&data)
                    .map_err(|failure| PipelineError::Metric { layer: id, failure })
            };
            let scored = with_host_f32(linear.weight(), score)??;
            let mask =
                Mask::from_scores(&scored.scores, rows, cols, cfg.pattern, cfg.sparsity_of(id))
                    .map_err(|error| mask_error(id, error))?;
            let fuel = scored.usage.fuel;
            drop(scored);
            let mut w: Vec<f32> = linear.weight().flatten_all()?.to_vec1()?;
            mask.apply(&mut w)
                .map_err(|error| PipelineError::Mask { layer: id, error })?;
            let zeros = w.iter().filter(|&&x| x == 0.0).count();
            (
                Tensor::from_vec(w, (rows, cols), &device)?,
                zeros,
                mask,
                fuel,
            )
        }
        Method::SparseGpt => {
            let f = factors
                .get(&input_slot(id.kind))
                .ok_or_else(|| ModelError::Input(format!("no Hessian was collected for {id}")))?;
            let sg = match cfg.pattern {
                Pattern::NM {
                    permute: true, ..
                } => {
                    return Err(PipelineError::Config(format!(
                        "SparseGPT chooses its N:M groups while it updates the weights; the channel permutation of `{}` is for metrics",
                        cfg.pattern
                    )))
                }
                Pattern::NM { n, m, .. } => SparseGptConfig::n_m(n, m),
                _ => SparseGptConfig::unstructured(cfg.sparsity_of(id)),
            };
            let failed = |e: crate::prune::sparsegpt::SparseGptError| PipelineError::SparseGpt {
                layer: id,
                message: e.to_string(),
            };
            match f {
                Factor::Host(f) => {
                    let mut w: Vec<f32> = linear.weight().flatten_all()?.to_vec1()?;
                    let stats = prune_with_factor(&mut w, rows, cols, f, &sg).map_err(failed)?;
                    let weight = Tensor::from_vec(w, (rows, cols), &device)?;
                    (weight, stats.zeros, stats.mask, 0)
                }
                Factor::Tensor(f) => {
                    let (weight, stats) = prune_tensor(linear.weight(), f, &sg).map_err(failed)?;
                    (weight, stats.zeros, stats.mask, 0)
                }
            }
        }
    };
    block.set_weight(id.kind, weight)?;
    Ok(LayerReport {
        block: id.block,
        kind: id.kind,
        rows,
        cols,
        target: cfg.sparsity_of(id),
        pruned: mask.pruned_count(),
        zeros,
        sparsity: zeros as f64 / (rows * cols) as f64,
        mask_hash: format!("{:016x}", mask.hash64()),
        fuel,
        seconds: t.elapsed().as_secs_f64(),
        path: None,
    })
}
