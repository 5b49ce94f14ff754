//! `autoprune prune --stream`: the same run as [`super::prune::run`] on a model that is never
//! held whole — read, pruned, measured and written one block at a time
//! ([`crate::pipeline::prune_streaming`]). Peak memory is about one block plus the
//! activations of the calibration and evaluation windows, whatever the model's depth.
//!
//! What needs the whole model is refused up front: a layer-wise allocation (it needs a dense
//! statistics pass first), metrics that read the gradient statistic, zero-shot tasks, and an
//! evaluation precision other than the pruning one.

use super::export::ModelOut;
use super::prune::{
    method_of, protocol_record, verdict, write_report, MethodSpec, Outcome, PruneSpec,
};
use crate::alloc::Allocation;
use crate::eval::{eval_windows, Perplexity};
use crate::pipeline::{prune_streaming, Progress as Stage, PruneConfig, StreamJob};
use crate::progress::Progress;
use crate::report::{
    peak_rss_bytes, PerplexityPair, PplReport, PruneRunReport, StreamRecord, Timings,
};
use crate::run::allocate::Rule;
use crate::setup::{device, open_streamed, stream, Calibration, Streamed};
use anyhow::bail;
use std::time::Instant;

/// Refuse what a streaming run cannot do, before anything is read.
fn check(spec: &PruneSpec) -> anyhow::Result<()> {
    let refuse = |what: &str| -> anyhow::Result<()> {
        bail!("--stream cannot be combined with {what}: it needs the whole model in memory")
    };
    if !matches!(spec.allocation.0, Rule::Builtin(Allocation::Uniform)) {
        refuse("a layer-wise allocation (--allocation)")?;
    }
    if !spec.tasks.tasks.is_empty() {
        refuse("zero-shot tasks (--tasks)")?;
    }
    if spec.plan_only {
        refuse("--plan-only")?;
    }
    if spec
        .eval_precision
        .is_some_and(|p| p != spec.protocol.precision)
    {
        refuse("an --eval-precision other than --precision")?;
    }
    if let MethodSpec::Metric { plugin, .. } = &spec.method {
        if plugin.info().needs_gradient {
            refuse("a metric that reads the gradient statistic (a backward pass through the whole model)")?;
        }
    }
    Ok(())
}

/// Run it.
pub fn run(spec: PruneSpec, progress: &mut dyn Progress) -> anyhow::Result<Outcome> {
    check(&spec)?;
    let start = Instant::now();
    let p = &spec.protocol;
    let (method, method_record) = method_of(&spec.method);
    let Streamed {
        mut model,
        tokenizer,
        path,
        seconds: load_seconds,
    } = open_streamed(p.model.as_ref(), &device(&p.device)?, p.precision)?;
    let calib = Calibration::load(&spec.calib, &tokenizer, p.seq_len)?;
    let eval = stream(&tokenizer, p.eval.as_ref(), "eval")?;
    let opts = p.perplexity_options();
    let eval_w = eval_windows(&eval.tokens, &opts)?;
    let calib_w = calib.windows(p.seq_len);
    let cfg = PruneConfig {
        path: spec.protocol.device_path,
        ..PruneConfig::uniform(spec.sparsity, spec.pattern, spec.calib_batch)
    };
    let job = StreamJob {
        calib: &calib_w,
        method: &method,
        config: &cfg,
        eval: &eval_w,
        eval_batch: p.eval_batch,
        dense: !spec.skip_dense,
    };
    let mut out = match &spec.out {
        Some(o) => Some(ModelOut::create(o, model.config(), spec.save_dtype)?),
        None => None,
    };
    let t = Instant::now();
    progress.begin("prune", model.config().num_layers);
    let result = prune_streaming(
        &mut model,
        &job,
        out.as_mut().map(ModelOut::writer),
        &mut |s| {
            if let Stage::Block { done, total } = s {
                progress.advance(done, total);
            }
        },
    );
    progress.end();
    let streamed = match result {
        Ok(r) => r,
        Err(e) => return verdict(e),
    };
    let prune_seconds = t.elapsed().as_secs_f64();
    let ppl =
        |sums: &[f64], seconds| PplReport::from(Perplexity::from_window_sums(sums, &opts, seconds));
    let perplexity = PerplexityPair {
        dense: streamed
            .dense_nlls
            .as_deref()
            .map(|d| ppl(d, streamed.dense_eval_seconds)),
        pruned: ppl(&streamed.pruned_nlls, streamed.pruned_eval_seconds),
    };
    let protocol = protocol_record(
        p,
        spec.calib.file.is_none(),
        &path,
        &calib,
        &eval,
        p.precision,
    );
    let r = &streamed.report;
    let report = PruneRunReport {
        allocation: None,
        cpu: crate::model::cpu_report(),
        layers: r.layers.clone(),
        method: method_record,
        pattern: spec.pattern,
        peak_rss_bytes: peak_rss_bytes(),
        perplexity,
        protocol,
        sparsity_achieved: r.sparsity,
        sparsity_target: spec.sparsity,
        timings: Timings {
            gradient_seconds: 0.0,
            load_seconds,
            prune_seconds,
            pruned_forward_seconds: r.forward_seconds,
            score_mask_seconds: r.prune_seconds,
            stats_seconds: r.stats_seconds,
            total_seconds: start.elapsed().as_secs_f64(),
        },
        zero_shot: None,
        stream: Some(StreamRecord {
            blocks: streamed.blocks.clone(),
            block_bytes: streamed.block_bytes,
            activation_bytes: streamed.activation_bytes,
            goal_bytes: (streamed.block_bytes + streamed.activation_bytes) * 3 / 2,
            save_dtype: spec.save_dtype,
        }),
    };
    if let (Some(o), Some(dir)) = (out, &spec.out) {
        o.finish(&tokenizer)?;
        write_report(dir, &report)?;
    }
    Ok(Outcome::Done(Box::new(report)))
}
