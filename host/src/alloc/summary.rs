//! The dense pre-pass behind allocation: input statistics of every linear from the *dense*
//! model (as OWL does), then per-unit distribution summaries of `|W|`, Wanda scores and the
//! chosen metric's scores.
//!
//! The statistics ([`DenseStats`]) do not depend on the metric or the target, so a sweep
//! computes them once per calibration set; scoring a metric on them is cheap.

use super::{Distribution, Granularity, UnitSummary};
use crate::calib::gradient::Gradients;
use crate::calib::hessian::{block_extras, BlockExtras, HessianError, Wanted};
use crate::calib::{collect_block_inputs_with, input_slot, CalibError, DevicePath};
use crate::layer::{ChannelStats, LayerData, LayerId, LayerKind};
use crate::model::{Model, ModelError};
use crate::sandbox::{Failure, Plugin};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why a dense pass or a summary failed. The pipeline turns each into its `PipelineError`
/// variant of the same name and message (the `From` sits in the pipeline, above this room).
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    /// The model's forward pass failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Collecting a block's input statistics failed.
    #[error(transparent)]
    Calib(#[from] CalibError),
    /// The metric plugin failed on a layer.
    #[error("the metric failed on {layer}: {failure}")]
    Metric {
        /// The layer.
        layer: LayerId,
        /// Its typed verdict.
        failure: Failure,
    },
    /// The Hessian-derived optional inputs (WIT 0.2.0) of a block could not be computed.
    #[error("Hessian inputs of block {block}: {error}")]
    Hessian {
        /// The block.
        block: u32,
        /// Why.
        error: HessianError,
    },
}

impl From<candle_core::Error> for SummaryError {
    fn from(e: candle_core::Error) -> Self {
        SummaryError::Model(e.into())
    }
}

/// Input statistics of every linear of the dense model, per block and input slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DenseStats {
    /// `blocks[b][slot]`, slots as in [`input_slot`].
    pub blocks: Vec<BTreeMap<LayerKind, ChannelStats>>,
    /// Seconds the pass took.
    pub seconds: f64,
}

impl DenseStats {
    /// Statistics of the inputs of `kind` in block `b`.
    pub fn get(&self, b: usize, kind: LayerKind) -> Option<&ChannelStats> {
        self.blocks.get(b)?.get(&input_slot(kind))
    }
}

/// Run the dense model block by block over `windows` (batches of `batch`), collecting the
/// input statistics of every linear. `progress(done, total)` after each block.
pub fn dense_stats(
    model: &Model,
    windows: &[&[u32]],
    batch: usize,
    path: DevicePath,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<DenseStats, SummaryError> {
    let t = std::time::Instant::now();
    let seq_len = windows.first().map_or(0, |w| w.len());
    let rope = model.rope(seq_len)?;
    let mut inps: Vec<Tensor> = windows
        .chunks(batch.max(1))
        .map(|w| model.embed(&model.ids_tensor(w)?))
        .collect::<Result<_, _>>()?;
    let mut blocks = Vec::with_capacity(model.blocks.len());
    let total = model.blocks.len();
    for (i, block) in model.blocks.iter().enumerate() {
        let (acc, outs) = collect_block_inputs_with(block, &inps, &rope, false, path)?;
        blocks.push(acc.stats);
        inps = outs;
        progress(i + 1, total);
    }
    Ok(DenseStats {
        blocks,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// The Hessian-derived optional inputs (WIT 0.2.0) of every linear of the dense model.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DenseExtras {
    /// One entry per block.
    pub blocks: Vec<BlockExtras>,
    /// What was computed.
    pub wanted: Wanted,
    /// Seconds of the whole pass (forward, statistics, Hessians, inputs).
    pub seconds: f64,
    /// Seconds of it spent accumulating the Hessians.
    pub hessian_seconds: f64,
    /// Seconds of it spent on inverses and output statistics.
    pub inputs_seconds: f64,
}

impl DenseExtras {
    /// The inputs of block `b`.
    pub fn get(&self, b: usize) -> Option<&BlockExtras> {
        self.blocks.get(b)
    }
}

/// A dense pass like [`dense_stats`] that also accumulates every input slot's Hessian and
/// derives the `wanted` inputs of every linear (the Hessians themselves are dropped block by
/// block). `progress(done, total)` after each block.
pub fn dense_extras(
    model: &Model,
    windows: &[&[u32]],
    batch: usize,
    wanted: Wanted,
    path: DevicePath,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<DenseExtras, SummaryError> {
    let t = std::time::Instant::now();
    let seq_len = windows.first().map_or(0, |w| w.len());
    let rope = model.rope(seq_len)?;
    let mut inps: Vec<Tensor> = windows
        .chunks(batch.max(1))
        .map(|w| model.embed(&model.ids_tensor(w)?))
        .collect::<Result<_, _>>()?;
    let mut out = DenseExtras {
        wanted,
        ..DenseExtras::default()
    };
    let total = model.blocks.len();
    for (i, block) in model.blocks.iter().enumerate() {
        let (acc, outs) = collect_block_inputs_with(block, &inps, &rope, true, path)?;
        out.hessian_seconds += acc.hessian_seconds;
        let extras = block_extras(block, &acc, wanted).map_err(|error| SummaryError::Hessian {
            block: i as u32,
            error,
        })?;
        out.inputs_seconds += extras.seconds;
        out.blocks.push(extras);
        inps = outs;
        progress(i + 1, total);
    }
    out.seconds = t.elapsed().as_secs_f64();
    Ok(out)
}

/// Per-unit summaries of the (still dense) `model` at `target`: `|W|`, Wanda scores from
/// `stats`, and the `metric`'s scores (Wanda's when `metric` is `None`, e.g. for SparseGPT).
/// A metric that reads the gradient statistic needs `grads`; one that reads Hessian-derived
/// inputs needs `extras` ([`dense_extras`]).
pub fn summarize(
    model: &Model,
    stats: &DenseStats,
    metric: Option<&Plugin>,
    grads: Option<&Gradients>,
    extras: Option<&DenseExtras>,
    target: f64,
    granularity: Granularity,
) -> Result<Vec<UnitSummary>, SummaryError> {
    let num_blocks = model.blocks.len();
    let mut units = Vec::new();
    for (b, block) in model.blocks.iter().enumerate() {
        let mut abs_w: Vec<(LayerKind, usize, usize, Vec<f32>)> = Vec::new();
        let mut wanda: Vec<Vec<f32>> = Vec::new();
        let mut scores: Vec<Vec<f32>> = Vec::new();
        for kind in LayerKind::BLOCK {
            let id = LayerId::of(b, num_blocks, kind);
            let linear = block
                .linear(kind)
                .ok_or_else(|| ModelError::Input(format!("no {} linear", kind.name())))?;
            let (rows, cols) = linear.shape();
            let w: Vec<f32> = linear.weight().flatten_all()?.to_vec1()?;
            let st = stats.get(b, kind).ok_or_else(|| {
                ModelError::Input(format!("no dense statistics were collected for {id}"))
            })?;
            let norm = st.l2_norm();
            let wa: Vec<f32> = w
                .chunks_exact(cols)
                .flat_map(|row| row.iter().zip(&norm).map(|(x, n)| x.abs() * n))
                .collect();
            let sc = match metric {
                Some(plugin) => {
                    let data = LayerData {
                        id,
                        rows,
                        cols,
                        weights: &w,
                        stats: st,
                        gradient: grads.and_then(|g| g.get(b, kind)),
                        hessian_inverse_diagonal: extras
                            .and_then(|e| e.get(b))
                            .and_then(|e| e.hessian_inverse_diagonal(kind)),
                        output_stats: extras
                            .and_then(|e| e.get(b))
                            .and_then(|e| e.output_stats(kind)),
                        sparsity: target as f32,
                    };
                    plugin
                        .score(&data)
                        .map_err(|failure| SummaryError::Metric { layer: id, failure })?
                        .scores
                }
                None => wa.clone(),
            };
            abs_w.push((kind, rows, cols, w.iter().map(|x| x.abs()).collect()));
            wanda.push(wa);
            scores.push(sc);
        }
        match granularity {
            Granularity::Block => {
                let refs = |v: &[Vec<f32>]| -> Distribution {
                    Distribution::of(&v.iter().map(|x| x.as_slice()).collect::<Vec<_>>())
                };
                let weights: Vec<Vec<f32>> = abs_w.into_iter().map(|(_, _, _, a)| a).collect();
                units.push(UnitSummary {
                    block: b as u32,
                    kind: None,
                    rows: 0,
                    cols: 0,
                    params: weights.iter().map(|w| w.len() as u64).sum(),
                    weights: refs(&weights),
                    wanda: refs(&wanda),
                    scores: refs(&scores),
                });
            }
            Granularity::Layer => {
                for (((kind, rows, cols, a), wa), sc) in abs_w.into_iter().zip(wanda).zip(scores) {
                    units.push(UnitSummary {
                        block: b as u32,
                        kind: Some(kind),
                        rows: rows as u64,
                        cols: cols as u64,
                        params: (rows * cols) as u64,
                        weights: Distribution::of(&[&a]),
                        wanda: Distribution::of(&[&wa]),
                        scores: Distribution::of(&[&sc]),
                    });
                }
            }
        }
    }
    Ok(units)
}
