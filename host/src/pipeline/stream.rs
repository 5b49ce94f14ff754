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
    check_layer_sparsity, embed_chunks, prune_block, through, BlockJob, Method, PipelineError,
    Progress, PruneConfig, PruneReport,
};
use crate::calib::hessian::Wanted;
use crate::eval::hidden_nll;
use crate::model::{BlockStream, HfWriter, Linear, RmsNorm};
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
    let nlls = |xs: &[Tensor]| window_nlls(&norm, &head, xs, &eval_chunks);
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

/// Summed NLL of each evaluation window (batches of `batch`) of the model `model` streams,
/// reading one block at a time: [`crate::eval::batch_nll`]'s numbers without holding the
/// model. `progress(done, total)` after every block.
pub fn stream_nlls(
    model: &mut BlockStream,
    eval: &[&[u32]],
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<f64>, PipelineError> {
    let chunks: Vec<&[&[u32]]> = eval.chunks(batch.max(1)).collect();
    let rope = model.rope(eval.first().map_or(1, |w| w.len().max(1)))?;
    let table = model.embeddings()?;
    let mut xs = chunks
        .iter()
        .map(|w| model.embed(&table, w))
        .collect::<Result<Vec<_>, _>>()?;
    drop(table);
    let total = model.config().num_layers;
    for i in 0..total {
        let block = model.block(i)?;
        // Batch by batch in place: one batch's output exists beside the inputs, not all.
        for x in &mut xs {
            *x = block.forward(x, &rope, &mut |_, _| Ok(()))?;
        }
        progress(i + 1, total);
    }
    let (norm, head) = (model.final_norm()?, model.head()?);
    window_nlls(&norm, &head, &xs, &chunks)
}

/// Summed NLL of every window from the last block's outputs `xs` of the batches `chunks`.
fn window_nlls(
    norm: &RmsNorm,
    head: &Linear,
    xs: &[Tensor],
    chunks: &[&[&[u32]]],
) -> Result<Vec<f64>, PipelineError> {
    let mut out = Vec::new();
    for (x, w) in xs.iter().zip(chunks) {
        out.extend(hidden_nll(norm, head, x, w)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::batch_nll;
    use crate::model::testutil::{token_windows, write_gguf};
    use crate::model::{Arch, Model, ModelConfig, SaveDtype};
    use crate::prune::mask::Pattern;
    use candle_core::quantized::GgmlDType;
    use candle_core::Device;

    /// The GGUF path (quantized tensors dequantized block by block, LLaMA's Q/K rows
    /// un-permuted) gives SparseGPT's in-memory masks, losses and weights exactly.
    #[test]
    fn streamed_gguf_equals_loaded_gguf() {
        for arch in [Arch::Llama, Arch::Qwen2, Arch::Gemma3] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.gguf");
            let m = Model::random(&ModelConfig::tiny(arch), 5, &Device::Cpu).unwrap();
            write_gguf(&m, &path, GgmlDType::Q8_0, GgmlDType::Q8_0).unwrap();
            let calib = token_windows(3, 16, 256, 1);
            let eval = token_windows(3, 12, 256, 2);
            let calib: Vec<&[u32]> = calib.iter().map(|w| w.as_slice()).collect();
            let eval: Vec<&[u32]> = eval.iter().map(|w| w.as_slice()).collect();
            let cfg = PruneConfig::uniform(0.5, Pattern::n_m(2, 4), 2);
            let method = Method::SparseGpt;

            let mut loaded = Model::load(&path, &Device::Cpu).unwrap();
            let report = super::super::prune_model(
                &mut loaded,
                &super::super::PruneJob::new(&calib, &method, &cfg),
                &mut |_| {},
            )
            .unwrap();
            let want: Vec<f64> = eval
                .chunks(2)
                .flat_map(|c| batch_nll(&loaded, c).unwrap())
                .collect();

            let out = tempfile::tempdir().unwrap();
            let mut stream = BlockStream::open(&path, &Device::Cpu).unwrap();
            let mut w = HfWriter::create(out.path(), stream.config(), SaveDtype::F32).unwrap();
            let job = StreamJob {
                calib: &calib,
                method: &method,
                config: &cfg,
                eval: &eval,
                eval_batch: 2,
                dense: false,
            };
            let s = prune_streaming(&mut stream, &job, Some(&mut w), &mut |_| {}).unwrap();
            w.finish().unwrap();
            let masks = |r: &PruneReport| -> Vec<String> {
                r.layers.iter().map(|l| l.mask_hash.clone()).collect()
            };
            assert_eq!(masks(&s.report), masks(&report), "{arch:?}");
            assert_eq!(s.pruned_nlls, want, "{arch:?}");
            assert!(s.dense_nlls.is_none());
            let dense = Model::load(&path, &Device::Cpu).unwrap();
            let want_dense: Vec<f64> = eval
                .chunks(2)
                .flat_map(|c| batch_nll(&dense, c).unwrap())
                .collect();
            let mut fresh = BlockStream::open(&path, &Device::Cpu).unwrap();
            let got = stream_nlls(&mut fresh, &eval, 2, &mut |_, _| {}).unwrap();
            assert_eq!(got, want_dense, "{arch:?}: streamed evaluation");
            let back = Model::load(out.path(), &Device::Cpu).unwrap();
            let (a, b) = (back.hf_tensors(), loaded.hf_tensors());
            assert_eq!(a.len(), b.len());
            for ((na, x), (nb, y)) in a.iter().zip(&b) {
                assert_eq!(na, nb);
                let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
                assert!(x == y, "{arch:?} {na}");
            }
        }
    }

    /// Per-layer sparsities that do not fit the model are refused before a block is read.
    #[test]
    fn layer_sparsities_must_fit_the_streamed_model() {
        let dir = tempfile::tempdir().unwrap();
        let m = Model::random(&ModelConfig::tiny(Arch::Llama), 5, &Device::Cpu).unwrap();
        m.save_hf(dir.path()).unwrap();
        let mut stream = BlockStream::open(dir.path(), &Device::Cpu).unwrap();
        let calib = token_windows(1, 8, 256, 1);
        let calib: Vec<&[u32]> = calib.iter().map(|w| w.as_slice()).collect();
        let cfg = PruneConfig {
            layer_sparsity: vec![0.5; 3],
            ..PruneConfig::uniform(0.5, Pattern::PerRow, 1)
        };
        let job = StreamJob {
            calib: &calib,
            method: &Method::SparseGpt,
            config: &cfg,
            eval: &[],
            eval_batch: 1,
            dense: false,
        };
        let e = prune_streaming(&mut stream, &job, None, &mut |_| {}).unwrap_err();
        assert!(matches!(e, PipelineError::Config(_)), "{e}");
    }
}
