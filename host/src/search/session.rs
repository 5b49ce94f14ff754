//! A search session: the run's persisted configuration built from flags (new run) or merged
//! with the flags of `--resume`, the archive it lives in, the proposer, and the search itself.

mod trust;

use super::archive::{Archive, NewNode, Node, SCHEMA_VERSION};
use super::cascade::{Evaluator, LadderConfig, Reference, SearchData};
use super::data::ValidationSource;
use super::gcot::{LlmProposer, PromptSettings, Templates};
use super::llm::{LlmClient, LlmConfig};
use super::local_server::{LocalLlm, LocalServer, LOCAL};
use super::objective::{Objective, Setting};
use super::proposer::{GpProposer, GpSettings};
use super::run::{rank_heldout, run as run_search, Budget, Event, Pools, Proposer, Stop};
use crate::build::Builder;
use crate::model::Precision;
use crate::prune::mask::Pattern;
use crate::sandbox::Policy;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The settings of `autoprune search` as given on the command line (library-side mirror of
/// the CLI's flags; `None` where a flag was not given and the default depends on others).
#[derive(Debug, Clone)]
pub struct SearchFlags {
    /// `gp`, `random` or `llm`.
    pub proposer: String,
    /// Base URL of an OpenAI-compatible endpoint, or `local`.
    pub llm: Option<String>,
    /// GGUF model served by `--llm local`.
    pub llm_model_file: Option<PathBuf>,
    /// The llama-server binary of `--llm local`.
    pub llm_server: Option<PathBuf>,
    /// CPU threads of the `--llm local` server (0 = every core).
    pub llm_threads: usize,
    /// Model name sent to the endpoint.
    pub llm_model: String,
    /// Name of the environment variable that holds the API key.
    pub api_key_env: Option<String>,
    /// Send the API key over plain http:// to a host that is not loopback.
    pub allow_insecure_key: bool,
    /// Sampling temperature.
    pub llm_temperature: f64,
    /// Completion tokens per request.
    pub llm_max_tokens: Option<u32>,
    /// Seconds before a request is abandoned.
    pub llm_timeout: Option<f64>,
    /// Seconds without a byte of the streamed answer before a request is abandoned.
    pub llm_idle_timeout: f64,
    /// Do not stream answers.
    pub llm_no_stream: bool,
    /// Retries of a request after a transient failure.
    pub llm_retries: u32,
    /// Requests in flight at once.
    pub llm_concurrency: usize,
    /// Folder of prompt templates replacing the built-in ones.
    pub prompts: Option<PathBuf>,
    /// Proposer tokens (0 = unlimited).
    pub budget_tokens: Option<u64>,
    /// Proposer cost cap (0 = unlimited).
    pub budget_cost: Option<f64>,
    /// Price per 1000 prompt tokens.
    pub price_prompt_per_1k: f64,
    /// Price per 1000 completion tokens.
    pub price_completion_per_1k: f64,
    /// Evaluation threads.
    pub eval_workers: usize,
    /// What to optimise (default: `sparsity` with `pattern`).
    pub objective: Option<Objective>,
    /// Target sparsity (when no `objective` is given).
    pub sparsity: f64,
    /// Comparison group (when no `objective` is given).
    pub pattern: Pattern,
    /// Candidates to propose (seeds excluded).
    pub budget_candidates: Option<u64>,
    /// Wall-clock minutes of searching (0 = unlimited).
    pub budget_minutes: Option<f64>,
    /// Seed of every random choice of the proposer.
    pub seed: u64,
    /// Calibration windows.
    pub calib_windows: usize,
    /// Validation windows of the sequential level.
    pub validation_windows: usize,
    /// Where the validation windows come from.
    pub validation_source: ValidationSource,
    /// Validation windows of the screen.
    pub screen_windows: usize,
    /// Continue past the screen only if its ratio to Wanda is at most this.
    pub promote_ratio: f64,
    /// Probability of a constant-tuning step in GP breeding.
    pub gp_tune: f64,
    /// Do not compute the gradient statistic.
    pub no_gradient: bool,
    /// Candidates measured on the held-out windows at the end.
    pub heldout_top: usize,
    /// Calibration text file.
    pub calib: Option<PathBuf>,
    /// A JSON file with sandbox limits.
    pub policy: Option<PathBuf>,
    /// Model file or folder.
    pub model: Option<PathBuf>,
    /// Held-out text file.
    pub eval: Option<PathBuf>,
    /// Tokens per window.
    pub seq_len: usize,
    /// Held-out windows.
    pub heldout_windows: usize,
    /// Arithmetic of the linear layers.
    pub precision: Precision,
    /// Compile metrics outside the sandbox.
    pub trusted: bool,
}

impl SearchFlags {
    /// Refuse a budget that is negative or not finite.
    pub fn check_budgets(&self) -> anyhow::Result<()> {
        for (name, v) in [
            ("--budget-minutes", self.budget_minutes),
            ("--budget-cost", self.budget_cost),
        ] {
            if let Some(v) = v {
                anyhow::ensure!(
                    v.is_finite() && v >= 0.0,
                    "{name} must be a finite number ≥ 0 (got {v})"
                );
            }
        }
        Ok(())
    }
}

/// Everything that defines a run, recorded in the archive (`meta.config`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    /// `gp`, `random` or `llm`.
    pub proposer: String,
    /// Seed of every random choice of the proposer.
    pub seed: u64,
    /// Candidates to propose (seeds excluded).
    pub budget_candidates: u64,
    /// Wall-clock minutes of searching (0 = unlimited).
    #[serde(default)]
    pub budget_minutes: f64,
    /// Proposer tokens (0 = unlimited).
    #[serde(default)]
    pub budget_tokens: u64,
    /// Proposer cost cap (0 = unlimited).
    #[serde(default)]
    pub budget_cost: f64,
    /// The LLM proposer's endpoint and sampling settings.
    #[serde(default)]
    pub llm: Option<LlmConfig>,
    /// The llama.cpp server that `--llm local` starts for every session of the run.
    #[serde(default)]
    pub local: Option<LocalLlm>,
    /// Folder of prompt templates replacing the built-in ones.
    #[serde(default)]
    pub prompts: Option<PathBuf>,
    /// Proposal and evaluation threads.
    #[serde(default)]
    pub pools: Pools,
    /// The evaluation ladder.
    pub ladder: LadderConfig,
    /// Calibration windows.
    pub calib_windows: usize,
    /// Validation windows.
    pub validation_windows: usize,
    /// Where they come from (runs recorded before the choice existed: spread).
    #[serde(default)]
    pub validation_source: ValidationSource,
    /// Held-out windows.
    pub heldout_windows: usize,
    /// Candidates measured on the held-out windows at the end.
    pub heldout_top: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Model file or folder.
    pub model: Option<PathBuf>,
    /// Calibration text file.
    pub calib: Option<PathBuf>,
    /// Held-out text file.
    pub eval: Option<PathBuf>,
    /// A JSON file with sandbox limits.
    pub policy: Option<PathBuf>,
    /// Metrics compiled outside the sandbox.
    pub trusted: bool,
    /// GP settings.
    pub gp: GpSettings,
    /// Probability of a constant-tuning step in GP breeding.
    #[serde(default)]
    pub gp_tune: f64,
    /// Arithmetic of the linear layers (runs recorded before it existed are f32).
    #[serde(default)]
    pub precision: Precision,
}

impl RunConfig {
    /// The configuration of a new run.
    fn from_flags(f: &SearchFlags) -> anyhow::Result<RunConfig> {
        let local = (f.llm.as_deref() == Some(LOCAL)).then(|| {
            let data = crate::data::DataDir::resolve();
            let d = LocalLlm::new(data.root(), f.llm_concurrency);
            LocalLlm {
                server: f.llm_server.clone().unwrap_or(d.server.clone()),
                model: f.llm_model_file.clone().unwrap_or(d.model.clone()),
                threads: f.llm_threads,
                ..d
            }
        });
        let wants_llm = f.llm.is_some() || f.proposer == "llm";
        trust::refuse_trusted_llm(f.trusted, wants_llm)?;
        let llm = if wants_llm {
            Some(llm_config(f, local.as_ref())?)
        } else {
            None
        };
        let pools = if llm.is_some() {
            let c = f.llm_concurrency.max(1);
            Pools {
                proposal_workers: c,
                eval_workers: f.eval_workers.max(1),
                lookahead: f.eval_workers.max(1) + c,
                ..Pools::default()
            }
        } else {
            Pools {
                eval_workers: f.eval_workers.max(1),
                lookahead: f.eval_workers.max(1),
                ..Pools::default()
            }
        };
        Ok(RunConfig {
            proposer: if llm.is_some() {
                "llm".into()
            } else {
                f.proposer.clone()
            },
            budget_tokens: f.budget_tokens.unwrap_or(0),
            budget_cost: f.budget_cost.unwrap_or(0.0),
            llm,
            local,
            prompts: f.prompts.clone(),
            pools,
            seed: f.seed,
            budget_candidates: f.budget_candidates.unwrap_or(200),
            budget_minutes: f.budget_minutes.unwrap_or(0.0),
            ladder: LadderConfig {
                objective: f
                    .objective
                    .clone()
                    .unwrap_or_else(|| Objective::single(Setting::uniform(f.sparsity, f.pattern))),
                screen_windows: f.screen_windows,
                promote_ratio: f.promote_ratio,
                calib_batch: 8,
                gradient: !f.no_gradient,
            },
            calib_windows: f.calib_windows,
            validation_windows: f.validation_windows,
            validation_source: f.validation_source,
            heldout_windows: f.heldout_windows,
            heldout_top: f.heldout_top,
            seq_len: f.seq_len,
            model: f.model.clone(),
            calib: f.calib.clone(),
            eval: f.eval.clone(),
            policy: f.policy.clone(),
            trusted: f.trusted,
            gp: GpSettings {
                allow_gradient: !f.no_gradient,
                ..GpSettings::default()
            },
            gp_tune: f.gp_tune,
            precision: f.precision,
        })
    }

    /// `--resume`: the budgets given again replace the recorded ones (new totals).
    fn merge_budgets(&mut self, f: &SearchFlags) {
        if let Some(b) = f.budget_candidates {
            self.budget_candidates = b;
        }
        if let Some(m) = f.budget_minutes {
            self.budget_minutes = m;
        }
        if let Some(t) = f.budget_tokens {
            self.budget_tokens = t;
        }
        if let Some(c) = f.budget_cost {
            self.budget_cost = c;
        }
    }

    /// The budget of this session.
    pub fn budget(&self) -> Budget {
        Budget {
            candidates: self.budget_candidates,
            tokens: self.budget_tokens,
            seconds: self.budget_minutes * 60.0,
            cost: self.budget_cost,
        }
    }
}

/// The LLM proposer's settings of a new run.
fn llm_config(f: &SearchFlags, local: Option<&LocalLlm>) -> anyhow::Result<LlmConfig> {
    Ok(LlmConfig {
        base_url: f
            .llm
            .clone()
            .context("--proposer llm needs --llm <base URL>")?,
        model: match local {
            // The model's own name, unless one is given.
            Some(l) if f.llm_model == "default" => l
                .model
                .file_stem()
                .map_or("local".into(), |s| s.to_string_lossy().into_owned()),
            _ => f.llm_model.clone(),
        },
        api_key_env: f.api_key_env.clone(),
        temperature: f.llm_temperature,
        max_tokens: f
            .llm_max_tokens
            .unwrap_or(if local.is_some() { 1024 } else { 2048 }),
        timeout_s: f
            .llm_timeout
            .unwrap_or(if local.is_some() { 3600.0 } else { 120.0 }),
        idle_timeout_s: f.llm_idle_timeout,
        stream: !f.llm_no_stream,
        prompt_progress: local.is_some(),
        max_retries: f.llm_retries,
        price_prompt_per_1k: f.price_prompt_per_1k,
        price_completion_per_1k: f.price_completion_per_1k,
        allow_insecure_key: f.allow_insecure_key,
        ..LlmConfig::default()
    })
}

/// Where the run's model and texts come from.
pub fn data_spec(cfg: &RunConfig) -> super::data::DataSpec<'_> {
    super::data::DataSpec {
        model: cfg.model.as_ref(),
        calib: cfg.calib.as_ref(),
        eval: cfg.eval.as_ref(),
        calib_windows: cfg.calib_windows,
        validation_windows: cfg.validation_windows,
        validation_source: cfg.validation_source,
        heldout_windows: cfg.heldout_windows,
        seq_len: cfg.seq_len,
        precision: cfg.precision,
    }
}

/// The archive of the run in `dir`.
pub fn archive_path(dir: &Path) -> PathBuf {
    dir.join("archive.sqlite")
}

/// What a finished session reports.
pub struct Outcome {
    /// Why the loop stopped.
    pub stopped: Stop,
    /// The candidates measured on the held-out windows, best first (none when interrupted).
    pub ranking: Vec<Node>,
}

/// A run being searched: its folder, archive, configuration and proposer.
pub struct Session {
    /// The run folder.
    pub dir: PathBuf,
    /// The run's archive.
    pub archive: Archive,
    /// The run's configuration (as recorded in the archive).
    pub config: RunConfig,
    proposer: Option<Arc<dyn Proposer>>,
}

impl Session {
    /// Start a new run in `dir` (created; refused if it already holds a run). The proposer's
    /// settings are checked before anything is written, so a typo does not leave a run folder
    /// that only holds a broken configuration.
    pub fn create(dir: &Path, flags: &SearchFlags) -> anyhow::Result<Session> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = archive_path(dir);
        if path.exists() {
            anyhow::bail!(
                "{} already holds a run; continue it with `autoprune search --resume {}`",
                dir.display(),
                dir.display()
            );
        }
        let config = RunConfig::from_flags(flags)?;
        let proposer = build_proposer(&config, None)?;
        let archive = Archive::open(&path)?;
        archive.set_meta("config", &serde_json::to_string(&config)?)?;
        Ok(Session {
            dir: dir.to_path_buf(),
            archive,
            config,
            proposer: Some(proposer),
        })
    }

    /// Continue the run in `dir` with its recorded configuration: the security-relevant
    /// settings must be given again in `flags`, equal to the run's; budgets given replace the
    /// recorded ones.
    pub fn resume(dir: &Path, flags: &SearchFlags) -> anyhow::Result<Session> {
        let archive = Archive::open_existing(&archive_path(dir))?;
        let schema = archive.schema()?;
        anyhow::ensure!(
            schema == SCHEMA_VERSION,
            "{} was recorded by an earlier autoprune (archive schema {schema}: perplexities, \
             not ratios to Wanda); `autoprune runs show` still reads it, but it cannot be \
             resumed: start a new run",
            dir.display()
        );
        let text = archive
            .meta("config")?
            .with_context(|| format!("{} has no recorded configuration", dir.display()))?;
        let mut config: RunConfig = serde_json::from_str(&text)
            .with_context(|| format!("reading the configuration of {}", dir.display()))?;
        trust::check_resume(&config, flags)?;
        trust::refuse_trusted_llm(config.trusted, config.llm.is_some())?;
        config.merge_budgets(flags);
        let proposer = build_proposer(&config, None)?;
        archive.set_meta("config", &serde_json::to_string(&config)?)?;
        Ok(Session {
            dir: dir.to_path_buf(),
            archive,
            config,
            proposer: Some(proposer),
        })
    }

    /// The evaluator of the run (Wanda's reference taken from the archive when recorded
    /// there); records the reference and the CPU in the archive.
    pub fn evaluator(
        &self,
        data: SearchData,
        builder: Builder,
        policy: Policy,
        progress: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Evaluator> {
        let cached: Option<Reference> = self
            .archive
            .meta("reference")?
            .and_then(|r| serde_json::from_str(&r).ok());
        let evaluator = Evaluator::new(
            self.config.ladder.clone(),
            data,
            builder,
            policy,
            cached,
            progress,
        )?;
        self.archive
            .set_meta("reference", &serde_json::to_string(&evaluator.reference())?)?;
        self.archive
            .set_meta("cpu", &serde_json::to_string(&crate::model::cpu_report())?)?;
        Ok(evaluator)
    }

    /// The seeds: LLM runs start from the hand-written sources (readable); GP runs from
    /// trees (breedable).
    pub fn seeds(&self) -> Vec<NewNode> {
        if self.config.llm.is_some() {
            super::gcot::seeds(self.config.ladder.gradient)
        } else {
            GpProposer::seeds(self.config.ladder.gradient)
        }
    }

    /// `--llm local`: start the server for this session's search (`started` is told once
    /// it runs) and point the proposer at it. Dropping the server stops it (also on an error
    /// or Ctrl-C; it dies with autoprune even on SIGKILL).
    pub fn start_local_llm(
        &mut self,
        started: &mut dyn FnMut(&LocalLlm, &LocalServer),
    ) -> anyhow::Result<Option<LocalServer>> {
        let Some(l) = &self.config.local else {
            return Ok(None);
        };
        let alias = self
            .config
            .llm
            .as_ref()
            .map_or("local", |c| c.model.as_str());
        let s = LocalServer::start(l, alias, &self.dir.join("llama-server.log"))?;
        started(l, &s);
        self.proposer = Some(build_proposer(&self.config, Some(&s.base_url()))?);
        Ok(Some(s))
    }

    /// Search until a budget is spent or `stop` is set, stop `server` (if any), then
    /// measure the best candidates on the held-out windows (unless interrupted).
    ///
    /// `remote`: the candidates' ladders run there (`search --workers`) instead of on
    /// `evaluator`, which then only measures the held-out ranking.
    pub fn search(
        &mut self,
        evaluator: &Evaluator,
        remote: Option<&dyn super::run::Evaluate>,
        server: Option<LocalServer>,
        stop: &AtomicBool,
        events: &mut dyn FnMut(Event<'_>),
    ) -> anyhow::Result<Outcome> {
        let proposer = self.proposer.take().context("the session has searched")?;
        let seeds = self.seeds();
        let stopped = run_search(
            &mut self.archive,
            remote.unwrap_or(evaluator),
            proposer,
            &seeds,
            self.config.budget(),
            self.config.pools,
            stop,
            events,
        )?;
        drop(server);
        let ranking = if stopped == Stop::Interrupted {
            Vec::new()
        } else {
            rank_heldout(&self.archive, evaluator, self.config.heldout_top, events)?
        };
        Ok(Outcome { stopped, ranking })
    }
}

/// The run's proposer. Settings that would make the run fail or a budget meaningless are
/// refused here, before the model loads and (for a new run) before anything is written.
/// `local_url` is the address of the `--llm local` server once it runs.
fn build_proposer(cfg: &RunConfig, local_url: Option<&str>) -> anyhow::Result<Arc<dyn Proposer>> {
    if cfg.budget_cost > 0.0 {
        let priced = cfg
            .llm
            .as_ref()
            .is_some_and(|l| l.price_prompt_per_1k > 0.0 || l.price_completion_per_1k > 0.0);
        anyhow::ensure!(
            priced,
            "--budget-cost needs an LLM proposer with --price-prompt-per-1k or \
             --price-completion-per-1k (without prices nothing costs anything)"
        );
    }
    Ok(match &cfg.llm {
        Some(llm) => {
            let templates = Templates::load(cfg.prompts.as_deref())?;
            let mut llm = llm.clone();
            if cfg.local.is_some() {
                llm.base_url = local_url.unwrap_or("http://127.0.0.1:0/v1").into();
            }
            let client = LlmClient::new(llm)?;
            Arc::new(LlmProposer::new(
                client,
                templates,
                PromptSettings {
                    sparsity: cfg.ladder.objective.settings[0].sparsity,
                    pattern: objective_words(&cfg.ladder.objective),
                },
                cfg.seed,
            ))
        }
        None => Arc::new(
            GpProposer::new(cfg.gp.clone(), cfg.seed, cfg.proposer == "random")
                .with_tuning(cfg.gp_tune),
        ),
    })
}

fn pattern_words(p: Pattern) -> String {
    match p {
        Pattern::PerRow => "per output row".into(),
        Pattern::PerLayer | Pattern::PerLayerExact => "whole-layer".into(),
        other => format!("{other} (N:M groups along each row)"),
    }
}

/// The objective in words for the prompts.
fn objective_words(o: &Objective) -> String {
    let parts: Vec<String> = o
        .settings
        .iter()
        .map(|s| {
            let alloc = if s.is_uniform() {
                String::new()
            } else {
                format!(
                    ", {} layer-wise allocation",
                    s.allocation.name().to_uppercase()
                )
            };
            format!("{} comparison{alloc}", pattern_words(s.pattern))
        })
        .collect();
    parts.join("; and ")
}

/// The lineage of node `id`: its first parents back to a seed (at most 65 nodes).
pub fn lineage(edges: &[super::archive::Edge], id: i64) -> Vec<i64> {
    let mut chain = vec![id];
    let mut cur = id;
    while let Some(e) = edges.iter().find(|e| e.child == cur) {
        chain.push(e.parent);
        cur = e.parent;
        if chain.len() > 64 {
            break;
        }
    }
    chain
}
