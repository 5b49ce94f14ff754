//! `autoprune prune` as one library call: load, calibrate, allocate, prune, measure, export,
//! and return a typed report (or the verdict that stopped it).

use super::allocate::{plan, AllocationJob, Rule};
use crate::alloc::plan::Planned;
use crate::calib::Sampler;
use crate::eval::{eval_windows, perplexity_with_progress, PerplexityOptions};
use crate::layer::LayerId;
use crate::model::{Model, Precision, SaveDtype};
use crate::pipeline::{
    prune_model, Method, PipelineError, Progress as Stage, PruneConfig, PruneJob,
};
use crate::progress::{step, Progress};
use crate::prune::mask::Pattern;
use crate::report::{
    peak_rss_bytes, MethodRecord, PerplexityPair, PplReport, Protocol, PruneRunReport, Timings,
    ZeroShotPair,
};
use crate::run::eval::zero_shot;
use crate::run::export::ModelOut;
use crate::sandbox::{Failure, Plugin};
use crate::setup::{device, load_model, stream, CalibSpec, Calibration, ProtocolSpec};
use std::path::PathBuf;
use std::time::Instant;

/// The pruning method of a run.
pub enum MethodSpec<'a> {
    /// A metric plugin, with its file and that file's SHA-256.
    Metric {
        /// The loaded plugin.
        plugin: &'a Plugin,
        /// Its file.
        source: PathBuf,
        /// The file's SHA-256.
        sha256: String,
    },
    /// SparseGPT (weight updates).
    SparseGpt,
}

/// Everything `autoprune prune` does, built from its flags.
pub struct PruneSpec<'a> {
    /// Model, texts, windows.
    pub protocol: ProtocolSpec,
    /// Calibration windows.
    pub calib: CalibSpec,
    /// Calibration windows per forward pass.
    pub calib_batch: usize,
    /// The method.
    pub method: MethodSpec<'a>,
    /// Target sparsity.
    pub sparsity: f64,
    /// Comparison group.
    pub pattern: Pattern,
    /// Layer-wise allocation and its granularity.
    pub allocation: (Rule<'a>, crate::alloc::Granularity),
    /// Arithmetic of the evaluations (default: the protocol's).
    pub eval_precision: Option<Precision>,
    /// Skip the dense perplexity.
    pub skip_dense: bool,
    /// Stop after the allocation plan.
    pub plan_only: bool,
    /// Write the pruned model and `report.json` here.
    pub out: Option<PathBuf>,
    /// Zero-shot tasks, scored dense and pruned.
    pub tasks: crate::run::eval::TaskSpec,
    /// Read, prune and write the model one block at a time ([`crate::run::stream`]).
    pub stream: bool,
    /// Element type of the written weights.
    pub save_dtype: SaveDtype,
    /// Called with the pruned model before its evaluation (in-memory runs): `Ok(false)` stops
    /// the run there ([`Outcome::Stopped`]), e.g. when a board already measured these masks.
    pub after_prune: Option<AfterPrune<'a>>,
}

/// A look at the pruned model before its evaluation: `Ok(false)` stops the run.
pub type AfterPrune<'a> = Box<dyn FnMut(&Model) -> anyhow::Result<bool> + 'a>;

/// How a prune run ended.
pub enum Outcome {
    /// Pruned and measured.
    Done(Box<PruneRunReport>),
    /// `plan_only`: the plan (`None` for uniform).
    Plan(Option<Planned>),
    /// The metric failed on a layer (its verdict).
    Metric {
        /// The layer.
        layer: LayerId,
        /// The verdict.
        failure: Failure,
    },
    /// The allocator plugin failed (its verdict).
    Allocator(Failure),
    /// `after_prune` stopped the run before the evaluation.
    Stopped,
}

fn ppl(
    model: &Model,
    tokens: &[u32],
    opts: &PerplexityOptions,
    what: &str,
    progress: &mut dyn Progress,
) -> anyhow::Result<PplReport> {
    let p = step(progress, what, opts.windows, |adv| {
        perplexity_with_progress(model, tokens, opts, &mut |d, _| adv(d))
    })?;
    Ok(p.into())
}

/// Map the verdicts of a pipeline error to an [`Outcome`], anything else to an error.
pub(super) fn verdict(e: PipelineError) -> anyhow::Result<Outcome> {
    match e {
        PipelineError::Metric { layer, failure } => Ok(Outcome::Metric { layer, failure }),
        PipelineError::Allocator(failure) => Ok(Outcome::Allocator(failure)),
        e => Err(e.into()),
    }
}

/// The method as the pipeline takes it and as the report records it.
pub(super) fn method_of<'a>(spec: &MethodSpec<'a>) -> (Method<'a>, MethodRecord) {
    match spec {
        MethodSpec::Metric {
            plugin,
            source,
            sha256,
        } => (
            Method::Metric(plugin),
            MethodRecord::Metric {
                metric: plugin.info().clone(),
                sha256: Some(sha256.clone()),
                source: Some(source.clone()),
            },
        ),
        MethodSpec::SparseGpt => (
            Method::SparseGpt,
            MethodRecord::Builtin {
                builtin: "sparsegpt".into(),
            },
        ),
    }
}

/// Run it.
pub fn run(mut spec: PruneSpec, progress: &mut dyn Progress) -> anyhow::Result<Outcome> {
    // Refused before the model loads (streaming or not); the pipeline refuses it too.
    anyhow::ensure!(
        !matches!(spec.method, MethodSpec::SparseGpt)
            || !matches!(spec.pattern, Pattern::NM { permute: true, .. }),
        "SparseGPT chooses its N:M groups while it updates the weights; the channel permutation of `{}` is for metrics",
        spec.pattern
    );
    if spec.stream {
        anyhow::ensure!(
            spec.after_prune.is_none(),
            "a streaming run has no whole pruned model to look at before its evaluation"
        );
        return super::stream::run(spec, progress);
    }
    let start = Instant::now();
    let p = &spec.protocol;
    let (method, method_record) = method_of(&spec.method);
    let plugin = match &method {
        Method::Metric(pl) => Some(*pl),
        Method::SparseGpt => None,
    };
    let tasks = spec.tasks.load()?;
    let mut loaded = load_model(p.model.as_ref(), &device(&p.device)?, p.precision)?;
    // The output folder is started now, so an unwritable `--out` fails before the pruning.
    let mut out = match &spec.out {
        Some(o) if !spec.plan_only => {
            Some(ModelOut::create(o, &loaded.model.config, spec.save_dtype)?)
        }
        _ => None,
    };
    // The evaluations' arithmetic, set (so checked) now: the dense evaluation runs with it, and
    // one this machine cannot run is refused before the pruning, not after it.
    let eval_precision = spec.eval_precision.unwrap_or(p.precision);
    loaded.model.set_precision(eval_precision)?;
    let calib = Calibration::load(&spec.calib, &loaded.tokenizer, p.seq_len)?;
    let eval = stream(&loaded.tokenizer, p.eval.as_ref(), "eval")?;
    let calib_windows = calib.windows(p.seq_len);
    let opts = p.perplexity_options();
    // Fail early, before minutes of pruning, if the evaluation text is too short.
    eval_windows(&eval.tokens, &opts)?;
    let dense = if spec.skip_dense || spec.plan_only {
        None
    } else {
        Some(ppl(
            &loaded.model,
            &eval.tokens,
            &opts,
            "dense eval",
            progress,
        )?)
    };
    let dense_tasks = if dense.is_some() {
        zero_shot(&loaded.model, &loaded.tokenizer, &tasks, "dense", progress)?
    } else {
        Vec::new()
    };
    loaded.model.set_precision(p.precision)?;
    let job = AllocationJob {
        rule: spec.allocation.0,
        granularity: spec.allocation.1,
        pattern: spec.pattern,
        target: spec.sparsity,
        batch: spec.calib_batch,
        path: p.device_path,
    };
    let (planned, grads) = match plan(&job, &loaded.model, &calib_windows, plugin, progress) {
        Ok(p) => p,
        Err(e) => return verdict(e),
    };
    if spec.plan_only {
        return Ok(Outcome::Plan(planned));
    }
    let cfg = PruneConfig {
        sparsity: spec.sparsity,
        layer_sparsity: planned
            .as_ref()
            .map_or_else(Vec::new, |p| p.layer_sparsity.clone()),
        pattern: spec.pattern,
        batch: spec.calib_batch,
        path: p.device_path,
    };
    let t = Instant::now();
    let pruned_report = match prune_step(
        &mut loaded.model,
        &calib_windows,
        &method,
        &cfg,
        grads.as_ref(),
        progress,
    ) {
        Ok(r) => r,
        Err(e) => return verdict(e),
    };
    let prune_seconds = t.elapsed().as_secs_f64();
    if let Some(check) = spec.after_prune.as_mut() {
        if !check(&loaded.model)? {
            return Ok(Outcome::Stopped);
        }
    }
    loaded.model.set_precision(eval_precision)?;
    let pruned = ppl(&loaded.model, &eval.tokens, &opts, "pruned eval", progress)?;
    let pruned_tasks = zero_shot(&loaded.model, &loaded.tokenizer, &tasks, "pruned", progress)?;
    let protocol = protocol_record(
        &spec.protocol,
        spec.calib.file.is_none(),
        &loaded.path,
        &calib,
        &eval,
        eval_precision,
    );
    let report = PruneRunReport {
        allocation: planned,
        cpu: crate::model::cpu_report(),
        layers: pruned_report.layers,
        method: method_record,
        pattern: spec.pattern,
        peak_rss_bytes: peak_rss_bytes(),
        perplexity: PerplexityPair { dense, pruned },
        protocol,
        sparsity_achieved: pruned_report.sparsity,
        sparsity_target: spec.sparsity,
        timings: Timings {
            gradient_seconds: pruned_report.gradient_seconds,
            load_seconds: loaded.seconds,
            prune_seconds,
            pruned_forward_seconds: pruned_report.forward_seconds,
            score_mask_seconds: pruned_report.prune_seconds,
            stats_seconds: pruned_report.stats_seconds,
            total_seconds: start.elapsed().as_secs_f64(),
        },
        zero_shot: (!tasks.is_empty()).then_some(ZeroShotPair {
            dense: dense_tasks,
            pruned: pruned_tasks,
        }),
        stream: None,
    };
    if let (Some(mut o), Some(dir)) = (out.take(), &spec.out) {
        for (name, t) in loaded.model.hf_tensors() {
            o.writer().put(&name, &t)?;
        }
        o.finish(&loaded.tokenizer)?;
        write_report(dir, &report)?;
    }
    Ok(Outcome::Done(Box::new(report)))
}

/// The protocol as the report records it (`sotu-512` when every setting is the preset's).
pub(super) fn protocol_record(
    p: &ProtocolSpec,
    sotu_calib: bool,
    model: &std::path::Path,
    calib: &Calibration,
    eval: &crate::setup::Stream,
    eval_precision: Precision,
) -> Protocol {
    let preset = p.model.is_none()
        && sotu_calib
        && p.eval.is_none()
        && p.seq_len == 512
        && calib.offsets.len() == 32
        && p.eval_windows == 64
        && calib.sampler == Sampler::Even
        && p.precision == Precision::F32
        && eval_precision == Precision::F32;
    Protocol {
        name: if preset { "sotu-512" } else { "custom" }.into(),
        model: model.display().to_string(),
        calib_source: calib.stream.source.clone(),
        eval_source: eval.source.clone(),
        seq_len: p.seq_len,
        calib_windows: calib.offsets.len(),
        sampler: calib.sampler,
        calib_offsets: calib.offsets.clone(),
        eval_windows: p.eval_windows,
        calib_tokens: calib.stream.tokens.len(),
        eval_tokens: eval.tokens.len(),
        precision: p.precision,
        eval_precision,
    }
}

/// The pruning call, its progress shown as one bar that moves from gradients to blocks.
fn prune_step(
    model: &mut Model,
    windows: &[&[u32]],
    method: &Method,
    cfg: &PruneConfig,
    grads: Option<&crate::calib::gradient::Gradients>,
    progress: &mut dyn Progress,
) -> Result<crate::pipeline::PruneReport, PipelineError> {
    progress.begin("prune", model.blocks.len());
    let job = PruneJob::new(windows, method, cfg).with_gradients(grads);
    let result = prune_model(model, &job, &mut |s| {
        let (what, done, total) = match s {
            Stage::Gradient { done, total } => ("gradients", done, total),
            Stage::Block { done, total } => ("prune", done, total),
        };
        progress.begin(what, total);
        progress.advance(done, total);
    });
    progress.end();
    result
}

/// Write `report.json` into `out`.
pub(super) fn write_report(out: &std::path::Path, report: &PruneRunReport) -> anyhow::Result<()> {
    std::fs::write(
        out.join("report.json"),
        crate::report::sorted_json_pretty(report)?,
    )?;
    Ok(())
}
