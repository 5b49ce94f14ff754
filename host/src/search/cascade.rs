//! The evaluation cascade: every candidate goes build → check → probe masks → proxy → full
//! protocol, and stops at the first stage it fails or does not pass.
//!
//! - **build**: the sandboxed builder (same as any candidate; cache by source hash).
//! - **check**: the validation suite on small synthetic layers (typed verdicts, determinism).
//! - **probe**: masks on fixed probe layers of the real model (the first and the middle block,
//!   with dense statistics); their hash identifies *behaviour*: a candidate whose probe masks
//!   equal an earlier candidate's reuses that result instead of being evaluated again
//!   (metrics that differ by a monotone transform prune identically).
//! - **proxy**: prune with a few calibration windows, perplexity on a few validation windows;
//!   a candidate continues only if its proxy is at most `proxy_factor ×` the best built-in
//!   baseline's proxy measured in the same run.
//! - **full**: the full calibration (the protocol's windows), perplexity on every validation
//!   window: the fitness proposers see.
//!
//! Validation windows come from the calibration stream (held out between calibration
//! windows); the evaluation text is used only for the final ranking ([`Evaluator::heldout`]),
//! which proposers never see.

use super::archive::{Archive, Node, Outcome, Status};
use crate::alloc::summary::DenseStats;
use crate::build::Builder;
use crate::check;
use crate::eval::{perplexity, PerplexityOptions};
use crate::layer::{LayerData, LayerId, LayerKind};
use crate::model::Model;
use crate::pipeline::{prune_model, Method, PipelineError, PruneConfig};
use crate::prune::mask::{Mask, Pattern};
use crate::sandbox::{Failure, Plugin, Policy};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Settings of the cascade.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CascadeConfig {
    /// Target sparsity.
    pub sparsity: f64,
    /// Comparison group.
    pub pattern: Pattern,
    /// Calibration windows of the proxy stage.
    pub proxy_calib_windows: usize,
    /// Validation windows of the proxy stage.
    pub proxy_val_windows: usize,
    /// Continue past the proxy only if proxy ≤ this × the best baseline's proxy.
    pub proxy_factor: f64,
    /// Calibration windows per forward pass.
    pub calib_batch: usize,
}

impl Default for CascadeConfig {
    fn default() -> Self {
        CascadeConfig {
            sparsity: 0.5,
            pattern: Pattern::PerRow,
            proxy_calib_windows: 4,
            proxy_val_windows: 4,
            proxy_factor: 1.5,
            calib_batch: 8,
        }
    }
}

/// The text a search evaluates on, tokenized and windowed.
pub struct SearchData {
    /// The dense model (cloned for every evaluation; tensors are shared until replaced).
    pub model: Model,
    /// Full-protocol calibration windows.
    pub calib: Vec<Vec<u32>>,
    /// Proxy calibration windows (a subset, evenly spread).
    pub proxy_calib: Vec<Vec<u32>>,
    /// Validation tokens: held-out calibration-side windows, concatenated.
    pub validation: Vec<u32>,
    /// Number of validation windows in `validation`.
    pub validation_windows: usize,
    /// Held-out evaluation tokens (final ranking only).
    pub heldout: Vec<u32>,
    /// Windows of the held-out evaluation.
    pub heldout_windows: usize,
    /// Tokens per window.
    pub seq_len: usize,
}

/// One probe layer: weights and dense statistics.
struct Probe {
    id: LayerId,
    rows: usize,
    cols: usize,
    weights: Vec<f32>,
    block: usize,
}

/// Runs the cascade for one search.
pub struct Evaluator {
    cfg: CascadeConfig,
    data: SearchData,
    builder: Builder,
    policy: Policy,
    stats: DenseStats,
    probes: Vec<Probe>,
}

fn verdict(f: &Failure) -> String {
    serde_json::to_string(f).unwrap_or_else(|_| format!("{{\"verdict\":\"{f}\"}}"))
}

impl Evaluator {
    /// Prepare: dense statistics of the proxy windows (for the probe layers).
    pub fn new(
        cfg: CascadeConfig,
        data: SearchData,
        builder: Builder,
        policy: Policy,
    ) -> Result<Self, PipelineError> {
        let wins: Vec<&[u32]> = data.proxy_calib.iter().map(|w| w.as_slice()).collect();
        let stats = crate::alloc::summary::dense_stats(
            &data.model,
            &wins,
            cfg.calib_batch,
            &mut |_, _| {},
        )?;
        let n = data.model.blocks.len();
        let mut probes = Vec::new();
        let mut blocks = vec![0, n / 2];
        blocks.dedup();
        for b in blocks {
            for kind in LayerKind::BLOCK {
                let Some(lin) = data.model.blocks[b].linear(kind) else {
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
        Ok(Evaluator {
            cfg,
            data,
            builder,
            policy,
            stats,
            probes,
        })
    }

    /// The settings.
    pub fn config(&self) -> &CascadeConfig {
        &self.cfg
    }

    /// The data.
    pub fn data(&self) -> &SearchData {
        &self.data
    }

    /// Build and load a candidate (stages build and check), or its verdict and stage.
    pub fn load(&self, code: &str) -> Result<Plugin, (&'static str, Failure)> {
        let built = self.builder.build(code).map_err(|f| ("build", f))?;
        let plugin = Plugin::load(&built.wasm, &self.policy, None).map_err(|f| ("build", f))?;
        if plugin.info().needs_gradient {
            return Err((
                "check",
                Failure::Rejected {
                    reason:
                        "this search runs without the gradient statistic; the candidate asks for it"
                            .into(),
                },
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
            return Err(("check", f));
        }
        Ok(plugin)
    }

    /// Hash of the candidate's masks on the probe layers.
    pub fn probe_hash(&self, plugin: &Plugin) -> Result<String, Failure> {
        let mut all = String::new();
        for p in &self.probes {
            let stats = self
                .stats
                .get(p.block, p.id.kind)
                .ok_or(Failure::Rejected {
                    reason: "host bug: no probe statistics".into(),
                })?;
            let data = LayerData {
                id: p.id,
                rows: p.rows,
                cols: p.cols,
                weights: &p.weights,
                stats,
                gradient: None,
                sparsity: self.cfg.sparsity as f32,
            };
            let scored = plugin.score(&data)?;
            let mask = Mask::from_scores(
                &scored.scores,
                p.rows,
                p.cols,
                self.cfg.pattern,
                self.cfg.sparsity,
            )
            .map_err(|e| match crate::pipeline::mask_error(p.id, e) {
                crate::pipeline::PipelineError::Metric { failure, .. } => failure,
                other => Failure::Rejected {
                    reason: format!("probe mask: {other}"),
                },
            })?;
            all.push_str(&format!("{:016x}", mask.hash64()));
        }
        Ok(crate::sandbox::sha256_hex(all.as_bytes())[..32].to_string())
    }

    /// Prune a copy of the dense model with `plugin` on `windows`; perplexity on the first
    /// `val_windows` validation windows (or the held-out text).
    fn prune_and_measure(
        &self,
        plugin: &Plugin,
        windows: &[Vec<u32>],
        tokens: &[u32],
        eval_windows: usize,
    ) -> Result<f64, Failure> {
        let mut model = self.data.model.clone();
        let wins: Vec<&[u32]> = windows.iter().map(|w| w.as_slice()).collect();
        let cfg = PruneConfig::uniform(self.cfg.sparsity, self.cfg.pattern, self.cfg.calib_batch);
        match prune_model(
            &mut model,
            &wins,
            &Method::Metric(plugin),
            &cfg,
            &mut |_, _| {},
        ) {
            Ok(_) => {}
            Err(PipelineError::Metric { failure, .. }) => return Err(failure),
            Err(e) => {
                return Err(Failure::Rejected {
                    reason: format!("pruning failed: {e}"),
                })
            }
        }
        let opts = PerplexityOptions {
            seq_len: self.data.seq_len,
            windows: eval_windows,
            batch: 2,
        };
        let p = perplexity(&model, tokens, &opts).map_err(|e| Failure::Rejected {
            reason: format!("evaluation failed: {e}"),
        })?;
        if !p.ppl.is_finite() {
            // A pruned model whose loss overflows is a (terrible) result, not an error.
            return Ok(f64::MAX);
        }
        Ok(p.ppl)
    }

    /// Run the cascade on `node`. `baseline_proxy` is the best built-in baseline's proxy in
    /// this run (`None` while the baselines themselves are evaluated: they always go through).
    pub fn evaluate(&self, archive: &Archive, node: &Node, baseline_proxy: Option<f64>) -> Outcome {
        let t = Instant::now();
        let mut o = Outcome {
            stage: "build".into(),
            ..Outcome::default()
        };
        let fail = |mut o: Outcome, stage: &str, f: Failure| {
            o.status = Some(Status::Failed);
            o.stage = stage.into();
            o.verdict = Some(verdict(&f));
            o
        };
        // Same source as a finished node: reuse.
        if let Ok(Some(prev)) = archive.by_source(&node.source_hash) {
            if prev.id != node.id {
                return reuse(o, &prev, t);
            }
        }
        let plugin = match self.load(&node.code) {
            Ok(p) => p,
            Err((stage, f)) => return finish(fail(o, stage, f), t),
        };
        o.stage = "probe".into();
        match self.probe_hash(&plugin) {
            Ok(h) => o.mask_hash = Some(h),
            Err(f) => return finish(fail(o, "probe", f), t),
        }
        if let Some(h) = &o.mask_hash {
            if let Ok(Some(prev)) = archive.by_mask(h) {
                if prev.id != node.id {
                    return reuse(o, &prev, t);
                }
            }
        }
        o.stage = "proxy".into();
        let proxy = match self.prune_and_measure(
            &plugin,
            &self.data.proxy_calib,
            &self.data.validation,
            self.cfg.proxy_val_windows.min(self.data.validation_windows),
        ) {
            Ok(p) => p,
            Err(f) => return finish(fail(o, "proxy", f), t),
        };
        o.proxy = Some(proxy);
        if let Some(b) = baseline_proxy {
            if proxy > self.cfg.proxy_factor * b {
                o.status = Some(Status::Screened);
                return finish(o, t);
            }
        }
        o.stage = "full".into();
        match self.prune_and_measure(
            &plugin,
            &self.data.calib,
            &self.data.validation,
            self.data.validation_windows,
        ) {
            Ok(f) => {
                o.fitness = Some(f);
                o.status = Some(Status::Evaluated);
            }
            Err(f) => return finish(fail(o, "full", f), t),
        }
        finish(o, t)
    }

    /// Perplexity on the held-out evaluation windows (final ranking).
    pub fn heldout(&self, code: &str) -> Result<f64, Failure> {
        let plugin = self.load(code).map_err(|(_, f)| f)?;
        self.prune_and_measure(
            &plugin,
            &self.data.calib,
            &self.data.heldout,
            self.data.heldout_windows,
        )
    }
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
    finish(o, t)
}
