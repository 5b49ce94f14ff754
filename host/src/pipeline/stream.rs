//! The Wanda protocol on a model read one block at a time ([`BlockStream`]): memory is one
//! block plus the activations, whatever the depth.
//!
//! Per block *i*: read it from the file; move the dense evaluation windows through it (the
//! dense perplexity needs no second pass); prune it from the calibration windows' inputs
//! exactly as [`super::prune_model`] does; move the calibration and pruned evaluation
//! windows through the pruned block; write it out; drop it. At the end the final norm and
//! head turn both evaluation streams into per-window losses. Masks, perplexities and the
//! written weights equal those of [`super::prune_model`] on the loaded model, bit for bit
//! (tested).

use std::time::Instant;

use candle_core::Tensor;
use serde::Serialize;

use super::{
    check_layer_sparsity, embed_chunks, prune_block, BlockJob, Method, PipelineError, Progress,
    PruneConfig, PruneReport,
};
use crate::calib::hessian::Wanted;
use crate::eval::hidden_nll;
use crate::model::{Block, BlockStream, HfWriter, Rope};
use crate::report::current_rss_bytes;

/// A streaming run: the pruning of [`super::PruneJob`] plus the evaluation windows.
#[derive(Clone, Copy)]
pub struct StreamJob<'a> {
    /// Calibration windows (all of one length).
    pub calib: &'a [&'a [u32]],
    /// How weights are chosen (metrics that read the gradient statistic are refused: it needs
    /// a backward pass through the whole model).
    pub method: &'a Method<'a>,
    /// What to prune.
    pub config: &'a PruneConfig,
    /// Evaluation windows (all of one length; may be empty).
    pub eval: &'a [&'a [u32]],
    /// Evaluation windows per forward pass.
    pub eval_batch: usize,
    /// Also measure the dense model on `eval`.
    pub dense: bool,
}

/// Time and memory of one block of a streaming run.
#[derive(Debug, Clone, Serialize)]
pub struct BlockRecord {
    /// Block index.
    pub block: usize,
    /// Seconds for the whole block: read, dense evaluation pass, pruning, pruned passes, write.
    pub seconds: f64,
    /// Of which reading (and dequantizing) its weights.
    pub read_seconds: f64,
    /// Of which writing it out.
    pub write_seconds: f64,
    /// Resident memory after the block was pruned and moved its windows on, before it was
    /// dropped (bytes; `None` where the OS does not tell).
    pub rss_bytes: Option<u64>,
}

/// What a streaming run measured.
#[derive(Debug, Clone)]
pub struct StreamOutcome {
    /// The pruning, as [`super::prune_model`] reports it.
    pub report: PruneReport,
    /// Summed NLL of each evaluation window's positions 1..seq, dense (when asked for).
    pub dense_nlls: Option<Vec<f64>>,
    /// The same for the pruned model.
    pub pruned_nlls: Vec<f64>,
    /// Seconds of the dense evaluation passes and heads.
    pub dense_eval_seconds: f64,
    /// Seconds of the pruned evaluation passes and heads.
    pub pruned_eval_seconds: f64,
    /// Per block: time and memory.
    pub blocks: Vec<BlockRecord>,
    /// f32 bytes of the largest block's weights.
    pub block_bytes: u64,
    /// Bytes of hidden states held across a block: every window's input and output of it.
    pub activation_bytes: u64,
}

/// Prune the model `model` streams as `job` says, writing the pruned model to `out` (if any,
/// then finished by the caller), calling `progress` after every block.
pub fn prune_streaming(
    model: &mut BlockStream,
    job: &StreamJob<'_>,
    mut out: Option<&mut HfWriter>,
    progress: &mut dyn FnMut(Progress),
) -> Result<StreamOutcome, PipelineError> {
    let cfg = model.config().clone();
    let num_blocks = cfg.num_layers;
    let wanted = match job.method {
        Method::Metric(p) if p.info().needs_gradient => {
            return Err(PipelineError::Config(
                "the metric reads the gradient statistic, which needs a backward pass through the whole model: it cannot be streamed (run without --stream)".into(),
            ))
        }
        Method::Metric(p) => p.info().wanted(),
        Method::SparseGpt => Wanted::default(),
    };
    check_layer_sparsity(num_blocks, job.config)?;
    let seq_len = job.calib.first().map_or(0, |w| w.len());
    let eval_len = job.eval.first().map_or(0, |w| w.len());
    let rope = model.rope(seq_len)?;
    let eval_rope = model.rope(eval_len.max(1))?;
    let eval_chunks: Vec<&[&[u32]]> = job.eval.chunks(job.eval_batch.max(1)).collect();
    // Embeddings: read, used for every window, written, dropped.
    let table = model.embeddings()?;
    let mut calib = embed_chunks(job.calib, job.config.batch, |w| model.embed(&table, w))?;
    let mut pruned_x = eval_chunks
        .iter()
        .map(|w| model.embed(&table, w))
        .collect::<Result<Vec<_>, _>>()?;
    let mut dense_x = job.dense.then(|| pruned_x.clone());
    if let Some(w) = out.as_deref_mut() {
        w.put_embeddings(&table)?;
    }
    drop(table);
    let held = |xs: &[Tensor]| xs.iter().map(|x| x.elem_count() as u64 * 4).sum::<u64>();
    let activation_bytes =
        2 * (held(&calib) + held(&pruned_x) + dense_x.as_deref().map_or(0, held));
    let mut report = PruneReport::empty();
    let (mut dense_eval_seconds, mut pruned_eval_seconds) = (0.0, 0.0);
    let ctx = BlockJob {
        num_blocks,
        method: job.method,
        cfg: job.config,
        wanted,
        grads: None,
    };
    let mut blocks = Vec::with_capacity(num_blocks);
    let mut block_bytes = 0u64;
    for i in 0..num_blocks {
        let start = Instant::now();
        let mut block = model.block(i)?;
        let read_seconds = start.elapsed().as_secs_f64();
        block_bytes = block_bytes.max(
            block
                .linears()
                .map(|(_, l)| l.weight().elem_count() as u64 * 4)
                .sum(),
        );
        if let Some(xs) = dense_x.as_mut() {
            let t = Instant::now();
            *xs = through(&block, xs, &eval_rope)?;
            dense_eval_seconds += t.elapsed().as_secs_f64();
        }
        let layers = prune_block(&mut block, i, &calib, &rope, &ctx, &mut report)?;
        report.layers.extend(layers);
        if i + 1 < num_blocks {
            let t = Instant::now();
            calib = through(&block, &calib, &rope)?;
            report.forward_seconds += t.elapsed().as_secs_f64();
        }
        let t = Instant::now();
        pruned_x = through(&block, &pruned_x, &eval_rope)?;
        pruned_eval_seconds += t.elapsed().as_secs_f64();
        let rss_bytes = current_rss_bytes();
        let t = Instant::now();
        if let Some(w) = out.as_deref_mut() {
            w.put_block(i, &block)?;
        }
        let write_seconds = t.elapsed().as_secs_f64();
        drop(block);
        blocks.push(BlockRecord {
            block: i,
            seconds: start.elapsed().as_secs_f64(),
            read_seconds,
            write_seconds,
            rss_bytes,
        });
        progress(Progress::Block {
            done: i + 1,
            total: num_blocks,
        });
    }
    drop(calib);
    let norm = model.final_norm()?;
    let head = model.head()?;
    let nlls = |xs: &[Tensor]| -> Result<Vec<f64>, PipelineError> {
        let mut v = Vec::with_capacity(job.eval.len());
        for (x, w) in xs.iter().zip(&eval_chunks) {
            v.extend(hidden_nll(&norm, &head, x, w)?);
        }
        Ok(v)
    };
    let t = Instant::now();
    let pruned_nlls = nlls(&pruned_x)?;
    pruned_eval_seconds += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let dense_nlls = dense_x.as_deref().map(nlls).transpose()?;
    dense_eval_seconds += t.elapsed().as_secs_f64();
    if let Some(w) = out {
        w.put_final(&norm, (!cfg.tie_word_embeddings).then_some(&head))?;
    }
    report.finish_sparsity();
    Ok(StreamOutcome {
        report,
        dense_nlls,
        pruned_nlls,
        dense_eval_seconds,
        pruned_eval_seconds,
        blocks,
        block_bytes,
        activation_bytes,
    })
}

/// Every batch of `xs` through `block`.
fn through(block: &Block, xs: &[Tensor], rope: &Rope) -> Result<Vec<Tensor>, PipelineError> {
    Ok(xs
        .iter()
        .map(|x| block.forward(x, rope, &mut |_, _| Ok(())))
        .collect::<Result<_, _>>()?)
}
