//! The evaluation ladder: every candidate climbs build → check → probe → screen →
//! sequential, stopping at the first level it fails or does not pass, and the best climb to
//! the held-out text at the end.
//!
//! - **build**: the sandboxed builder (same as any candidate; cache by source hash).
//! - **check**: the validation suite on small synthetic layers (typed verdicts, determinism).
//! - **probe**: masks on fixed probe layers of the real model (the first and the middle block,
//!   dense statistics) under every setting of the objective; their hash identifies
//!   *behaviour*: a candidate whose probe masks equal an earlier candidate's reuses that result
//!   (metrics that differ by a monotone transform prune identically).
//! - **screen** (one-shot): every layer pruned with the *dense* model's statistics, which are
//!   computed once per run, then perplexity on the first `screen_windows` validation windows.
//!   No forward pass is needed to prune, so a candidate costs its scoring, its masks and a
//!   short evaluation. A candidate continues only if its screen ratio to Wanda is at most
//!   `promote_ratio` (the seeds, i.e. the baselines, always continue).
//! - **sequential**: the Wanda protocol (statistics of each block from the pruned blocks
//!   before it; the protocol's calibration windows), perplexity on every validation window:
//!   the fitness proposers see.
//! - **held-out** ([`Evaluator::heldout`]): the sequential protocol evaluated on the held-out
//!   text, for the final ranking only; proposers never see it.
//!
//! Every level is a **paired comparison** with Wanda under the same setting on the same
//! windows ([`super::paired`]): per-window differences of mean NLL, their mean `Δ` and a
//! bootstrap 95 % interval; the recorded score of a level is the ratio `exp(Δ)` (1.0 = Wanda,
//! lower is better), averaged in log space over the objective's settings. Wanda's per-window
//! losses at every level are computed once per run ([`Reference`]) and stored in the archive,
//! so a resumed run does not recompute them.
//!
//! Everything that does not depend on the candidate is computed once per run: the token
//! windows, the dense statistics of every block, the gradient statistic of the dense model (for
//! metrics that read it), the allocation plan of every setting, and Wanda's losses. The
//! Hessian-derived inputs of WIT 0.2.0 (inverse diagonals, output statistics) come from a
//! second dense pass with Hessians, run only when the first candidate that declares either
//! arrives, and then shared by every later one.

mod fault;
mod measure;
mod records;

pub use fault::{EvalError, HostFault};
pub use records::*;

use super::archive::{Archive, Node, Outcome, Stage, Status, Verdict};
use super::paired::{paired, paired_diffs};
use crate::alloc::summary::{dense_extras, dense_stats, summarize, DenseExtras, DenseStats};
use crate::alloc::{expand, Granularity};
use crate::build::{BuildFailure, Builder};
use crate::calib::gradient::{self, Gradients};
use crate::calib::hessian::Wanted;
use crate::calib::DevicePath;
use crate::check;
use crate::eval::window_nlls;
use crate::layer::{LayerData, LayerId, LayerKind};
use crate::model::Model;
use crate::pipeline::{prune_model, prune_one_shot, Method, PipelineError, PruneConfig, PruneJob};
use crate::prune::mask::Mask;
use crate::sandbox::{Failure, Plugin, Policy};
use fault::failure_of;
use std::ops::ControlFlow;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// One probe layer: weights, shape and block.
struct Probe {
    id: LayerId,
    rows: usize,
    cols: usize,
    weights: Vec<f32>,
    block: usize,
}

/// Runs the ladder for one search.
pub struct Evaluator {
    cfg: LadderConfig,
    data: SearchData,
    builder: Builder,
    policy: Policy,
    dense: DenseStats,
    /// The Hessian-derived inputs of the dense model, computed at the first candidate that
    /// declares them (or the error that pass ended with).
    extras: OnceLock<Result<DenseExtras, String>>,
    grads: Option<Gradients>,
    /// Per-layer sparsities of each setting (empty: uniform).
    plans: Vec<Vec<f64>>,
    probes: Vec<Probe>,
    reference: Mutex<Reference>,
    prep: Preparation,
}

/// The Wanda source every run compares with (the same file as `candidates/wanda.rs`).
pub const WANDA_SOURCE: &str = include_str!("../../../candidates/wanda.rs");

impl Evaluator {
    /// Prepare a run: dense statistics of every block over the calibration windows, the
    /// gradient statistic (if configured), the allocation plans, and Wanda's losses at the
    /// screen and sequential levels (taken from `cached` when its key matches).
    pub fn new(
        cfg: LadderConfig,
        data: SearchData,
        builder: Builder,
        policy: Policy,
        cached: Option<Reference>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self, PipelineError> {
        if cfg.objective.settings.is_empty() {
            return Err(PipelineError::Config("the objective has no setting".into()));
        }
        if data.validation_windows == 0 || cfg.screen_windows == 0 {
            return Err(PipelineError::Config(
                "the ladder needs validation windows and at least one screen window".into(),
            ));
        }
        let mut prep = Preparation::default();
        let wins: Vec<&[u32]> = data.calib.iter().map(|w| w.as_slice()).collect();
        progress("dense statistics of every block");
        let dense = dense_stats(
            &data.model,
            &wins,
            cfg.calib_batch,
            DevicePath::Auto,
            &mut |_, _| {},
        )?;
        prep.dense_stats = dense.seconds;
        let grads = if cfg.gradient {
            let t = Instant::now();
            let file = match &data.gradient_cache {
                Some(d) => Some(d.join(format!("{}.grad", gradient_key(&data)?))),
                None => None,
            };
            let cached = file
                .as_ref()
                .filter(|f| f.exists())
                .and_then(|f| Gradients::load(f, &data.model).ok());
            let g = match cached {
                Some(g) => {
                    progress("gradient statistic of the dense model (cached)");
                    g
                }
                None => {
                    progress("gradient statistic of the dense model");
                    let g = gradient::compute(&data.model, &wins, &mut |_, _| {
                        ControlFlow::Continue(())
                    })?;
                    if let Some(f) = &file {
                        // A cache that cannot be written only costs the next run the pass.
                        if let Err(e) = g.save(f) {
                            progress(&format!("note: could not cache the gradient: {e}"));
                        }
                    }
                    g
                }
            };
            prep.gradient = t.elapsed().as_secs_f64();
            Some(g)
        } else {
            None
        };
        let t = Instant::now();
        let mut plans = Vec::new();
        for s in &cfg.objective.settings {
            plans.push(if s.is_uniform() {
                Vec::new()
            } else {
                let units = summarize(
                    &data.model,
                    &dense,
                    None,
                    None,
                    None,
                    s.sparsity,
                    Granularity::Block,
                )?;
                let alloc = s
                    .allocation
                    .allocate(s.sparsity, &units)
                    .map_err(|e| PipelineError::Config(format!("allocation for {s}: {e}")))?;
                expand(&units, &alloc, data.model.blocks.len())
            });
        }
        prep.plans = t.elapsed().as_secs_f64();
        let probes = probes(&data.model)?;
        let mut ev = Evaluator {
            cfg,
            data,
            builder,
            policy,
            dense,
            extras: OnceLock::new(),
            grads,
            plans,
            probes,
            reference: Mutex::new(Reference::default()),
            prep,
        };
        let key = ev.reference_key();
        let reference = match cached {
            Some(r) if r.key == key => r,
            _ => {
                progress("Wanda's losses at the screen and sequential levels");
                let t = Instant::now();
                let wanda = ev.wanda().map_err(|f| {
                    PipelineError::Config(format!("the Wanda reference failed: {f}"))
                })?;
                let mut r = Reference {
                    key,
                    ..Reference::default()
                };
                for i in 0..ev.cfg.objective.settings.len() {
                    r.screen
                        .push(ev.losses(&wanda, i, Level::Screen).map_err(|f| {
                            PipelineError::Config(format!("the Wanda reference failed: {f}"))
                        })?);
                    r.sequential
                        .push(ev.losses(&wanda, i, Level::Sequential).map_err(|f| {
                            PipelineError::Config(format!("the Wanda reference failed: {f}"))
                        })?);
                }
                ev.prep.reference = t.elapsed().as_secs_f64();
                r
            }
        };
        ev.reference = Mutex::new(reference);
        Ok(ev)
    }

    /// A key for the reference losses: the settings, the windows and the model's size and
    /// first weights (a different model or text gives a different key).
    fn reference_key(&self) -> String {
        let mut h = String::new();
        h.push_str(&serde_json::to_string(&self.cfg.objective).unwrap_or_default());
        h.push_str(&format!(
            "|{}|{}|{}|{}|",
            self.cfg.screen_windows,
            self.data.seq_len,
            self.data.validation_windows,
            self.data.heldout_windows
        ));
        for w in &self.data.calib {
            h.push_str(&format!("{w:?}"));
        }
        h.push_str(&format!("{:?}", self.data.validation));
        h.push_str(&format!(
            "{:?}",
            &self.data.heldout[..self.data.heldout.len().min(4096)]
        ));
        h.push_str(&format!("{}", self.data.model.num_linear_weights()));
        if let Some(p) = self.probes.first() {
            let bits: Vec<u32> = p.weights.iter().take(4096).map(|x| x.to_bits()).collect();
            h.push_str(&format!("{bits:?}"));
        }
        crate::sandbox::sha256_hex(h.as_bytes())[..32].to_string()
    }

    /// The settings.
    pub fn config(&self) -> &LadderConfig {
        &self.cfg
    }

    /// The data.
    pub fn data(&self) -> &SearchData {
        &self.data
    }

    /// What the preparation cost.
    pub fn preparation(&self) -> Preparation {
        let mut p = self.prep;
        if let Some(Ok(e)) = self.extras.get() {
            p.hessian_inputs = e.seconds;
        }
        p
    }

    /// The Hessian-derived inputs of the dense model when `plugin` declares any (`None` when it
    /// declares none). The first call that needs them runs the dense pass with Hessians for
    /// both inputs, once per run.
    pub fn dense_extras(&self, plugin: &Plugin) -> Result<Option<&DenseExtras>, EvalError> {
        if !plugin.info().wanted().any() {
            return Ok(None);
        }
        let extras = self.extras.get_or_init(|| {
            let wins = self.calib_windows();
            let all = Wanted {
                hessian_inverse_diagonal: true,
                output_stats: true,
            };
            dense_extras(
                &self.data.model,
                &wins,
                self.cfg.calib_batch,
                all,
                DevicePath::Auto,
                &mut |_, _| {},
            )
            .map_err(|e| e.to_string())
        });
        match extras {
            Ok(e) => Ok(Some(e)),
            Err(e) => Err(HostFault::HessianInputs(e.clone()).into()),
        }
    }

    /// Wanda's losses (to store in the archive, so a resumed run reuses them).
    pub fn reference(&self) -> Reference {
        self.reference.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The gradient statistic of the dense model, if this run computes it.
    pub fn gradients(&self) -> Option<&Gradients> {
        self.grads.as_ref()
    }

    /// The dense statistics of every block.
    pub fn dense_stats(&self) -> &DenseStats {
        &self.dense
    }

    fn wanda(&self) -> Result<Plugin, EvalError> {
        self.load(WANDA_SOURCE).map_err(|(_, e)| e)
    }

    /// Build and load a candidate (stages build and check): its verdict and stage, or a
    /// failure of the host (which is not the candidate's).
    pub fn load(&self, code: &str) -> Result<Plugin, (Stage, EvalError)> {
        let built = self.builder.try_build(code).map_err(|e| {
            let e = match e {
                BuildFailure::Candidate(f) => EvalError::Guest(f),
                BuildFailure::Host(m) => EvalError::Host(HostFault::Build(m)),
            };
            (Stage::Build, e)
        })?;
        let plugin = Plugin::load(&built.wasm, &self.policy, None)
            .map_err(|f| (Stage::Build, EvalError::Guest(f)))?;
        if plugin.info().needs_gradient && self.grads.is_none() {
            return Err((
                Stage::Check,
                EvalError::Guest(Failure::Rejected {
                    reason:
                        "this search runs without the gradient statistic; the candidate asks for it"
                            .into(),
                }),
            ));
        }
        let report = check::run(
            &plugin,
            &[(64, 48, LayerKind::Q), (96, 64, LayerKind::Down)],
            7,
        );
        if !report.passed {
            let f = report.failure.unwrap_or(Failure::Rejected {
                reason: "the validation suite failed".into(),
            });
            return Err((Stage::Check, EvalError::Guest(f)));
        }
        Ok(plugin)
    }

    /// Run the ladder on `node`. The seeds (the baselines) always climb to the sequential
    /// level (`always_promote`); other candidates only if their screen ratio passes. A failure
    /// of the candidate is its outcome (with its verdict); a fault of the host is an error,
    /// and the node has no outcome.
    pub fn evaluate(
        &self,
        archive: &Archive,
        node: &Node,
        always_promote: bool,
    ) -> Result<Outcome, HostFault> {
        let t = Instant::now();
        let mut o = Outcome {
            stage: Stage::Build,
            ..Outcome::default()
        };
        let fail = |mut o: Outcome, stage: Stage, e: EvalError| match e {
            EvalError::Guest(f) => {
                o.status = Some(Status::Failed);
                o.stage = stage;
                o.verdict = Some(Verdict::Guest(f));
                Ok(finish(o, t))
            }
            EvalError::Host(h) => Err(h),
        };
        // Same source as a finished node: reuse.
        if let Ok(Some(prev)) = archive.by_source(&node.source_hash) {
            if prev.id != node.id {
                return Ok(reuse(o, &prev, t));
            }
        }
        let plugin = match self.load(&node.code) {
            Ok(p) => p,
            Err((stage, e)) => return fail(o, stage, e),
        };
        o.stage = Stage::Probe;
        match self.probe_hash(&plugin) {
            Ok(h) => o.mask_hash = Some(h),
            Err(e) => return fail(o, Stage::Probe, e),
        }
        if let Some(h) = &o.mask_hash {
            if let Ok(Some(prev)) = archive.by_mask(h) {
                if prev.id != node.id {
                    return Ok(reuse(o, &prev, t));
                }
            }
        }
        let mut detail = Detail::default();
        o.stage = Stage::Screen;
        let screen = match self.measure(&plugin, Level::Screen) {
            Ok(r) => r,
            Err(e) => return fail(o, Stage::Screen, e),
        };
        let ratio = screen.combined.ratio();
        o.proxy = Some(ratio);
        detail.screen = Some(screen);
        o.detail = serde_json::to_string(&detail).ok();
        // A NaN ratio (never expected) is not promoted.
        let promoted = ratio
            .partial_cmp(&self.cfg.promote_ratio)
            .is_some_and(|o| o.is_le());
        if !always_promote && !promoted {
            o.status = Some(Status::Screened);
            return Ok(finish(o, t));
        }
        o.stage = Stage::Sequential;
        match self.measure(&plugin, Level::Sequential) {
            Ok(r) => {
                o.fitness = Some(r.combined.ratio());
                o.status = Some(Status::Evaluated);
                detail.sequential = Some(r);
                o.detail = serde_json::to_string(&detail).ok();
            }
            Err(e) => return fail(o, Stage::Sequential, e),
        }
        Ok(finish(o, t))
    }

    /// The held-out level (final ranking): the ratio to Wanda and its detail.
    pub fn heldout(&self, code: &str) -> Result<LevelResult, EvalError> {
        let plugin = self.load(code).map_err(|(_, e)| e)?;
        self.measure(&plugin, Level::Heldout)
    }
}

/// The gradient cache key of a model and its calibration windows: the windows' tokens and the
/// model's shape and weights (a sample of every linear's first and last values).
fn gradient_key(data: &SearchData) -> Result<String, PipelineError> {
    let mut h = format!("{:?}|{}|", data.calib, data.model.num_linear_weights());
    for b in &data.model.blocks {
        for (_, l) in b.linears() {
            let w: Vec<f32> = l.weight().flatten_all()?.to_vec1()?;
            let n = w.len();
            let sample: Vec<u32> = w[..n.min(64)]
                .iter()
                .chain(&w[n.saturating_sub(64)..])
                .map(|x| x.to_bits())
                .collect();
            h.push_str(&format!("{n}:{sample:?}"));
        }
    }
    Ok(crate::sandbox::sha256_hex(h.as_bytes())[..32].to_string())
}

/// The probe layers: every linear of the first and the middle block.
fn probes(model: &Model) -> Result<Vec<Probe>, PipelineError> {
    let n = model.blocks.len();
    let mut probes = Vec::new();
    let mut blocks = vec![0, n / 2];
    blocks.dedup();
    for b in blocks {
        for kind in LayerKind::BLOCK {
            let Some(lin) = model.blocks[b].linear(kind) else {
                continue;
            };
            let (rows, cols) = lin.shape();
            probes.push(Probe {
                id: LayerId {
                    block: b as u32,
                    num_blocks: n as u32,
                    kind,
                },
                rows,
                cols,
                weights: lin.weight().flatten_all()?.to_vec1()?,
                block: b,
            });
        }
    }
    Ok(probes)
}

/// `exp` of the mean of per-window mean NLLs: the perplexity over windows of equal length.
fn mean_exp(nll: &[f64]) -> f64 {
    (nll.iter().sum::<f64>() / nll.len().max(1) as f64).exp()
}

fn finish(mut o: Outcome, t: Instant) -> Outcome {
    o.seconds = t.elapsed().as_secs_f64();
    o
}

fn reuse(mut o: Outcome, prev: &Node, t: Instant) -> Outcome {
    o.status = Some(Status::Duplicate);
    o.duplicate_of = Some(prev.duplicate_of.unwrap_or(prev.id));
    o.stage = prev.stage.clone().unwrap_or_default();
    o.verdict = prev.verdict.clone();
    o.mask_hash = prev.mask_hash.clone().or(o.mask_hash);
    o.proxy = prev.proxy;
    o.fitness = prev.fitness;
    o.detail = prev.detail.clone();
    finish(o, t)
}
