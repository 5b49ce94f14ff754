//! `autoprune search` and `autoprune runs show`.

use super::check::load_policy;
use super::protocol::{load_model, stream, ProtocolArgs};
use super::BuildFlags;
use anyhow::Context;
use autoprune::calib::{validation_offsets, window_offsets, Sampler};
use autoprune::model::Precision;
use autoprune::prune::mask::Pattern;
use autoprune::search::archive::{Archive, Node, Status};
use autoprune::search::cascade::{CascadeConfig, Evaluator, SearchData};
use autoprune::search::gcot::{LlmProposer, PromptSettings, Templates};
use autoprune::search::llm::{LlmClient, LlmConfig};
use autoprune::search::proposer::{GpProposer, GpSettings};
use autoprune::search::run::{
    rank_heldout, run as run_search, Budget, Event, Pools, Proposer, Stop,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

mod trust;

/// Arguments of `autoprune search`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run folder for a new run (its archive is `<run>/archive.sqlite`).
    #[arg(long, required_unless_present_any = ["resume", "write_prompts"], conflicts_with = "resume")]
    pub run: Option<PathBuf>,
    /// Resume the run in this folder with its recorded settings. Settings that decide what
    /// runs outside the sandbox, which files are read and where the API key goes (`--trusted`,
    /// `--llm`, `--api-key-env`, `--allow-insecure-key`, `--policy`, `--prompts`, `--model`)
    /// are never taken from the archive: give them again, equal to the run's.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Proposer: `gp` (symbolic genetic programming, default), `random` (random trees: the
    /// baseline every search result is compared against), or `llm` (implied by `--llm`).
    #[arg(long, default_value = "gp", value_parser = ["gp", "random", "llm"])]
    pub proposer: String,
    /// Base URL of an OpenAI-compatible endpoint (`…/v1`): the LLM proposer.
    #[arg(long)]
    pub llm: Option<String>,
    /// Model name sent to the endpoint.
    #[arg(long, default_value = "default")]
    pub llm_model: String,
    /// Name of the environment variable that holds the API key (the key is never recorded).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Send the API key over plain http:// to a host that is not loopback (refused otherwise).
    #[arg(long)]
    pub allow_insecure_key: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    pub llm_temperature: f64,
    /// Completion tokens per request.
    #[arg(long, default_value_t = 2048)]
    pub llm_max_tokens: u32,
    /// Seconds before a request is abandoned (and retried).
    #[arg(long, default_value_t = 120.0)]
    pub llm_timeout: f64,
    /// Retries of a request after a transient failure (429, 5xx, timeout, connection).
    #[arg(long, default_value_t = 4)]
    pub llm_retries: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 2)]
    pub llm_concurrency: usize,
    /// Folder of prompt templates replacing the built-in ones (see `--write-prompts`).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Write the built-in prompt templates into this folder (to edit) and exit.
    #[arg(long)]
    pub write_prompts: Option<PathBuf>,
    /// Proposer tokens (prompt + completion, all sessions; 0 = unlimited).
    #[arg(long)]
    pub budget_tokens: Option<u64>,
    /// Proposer cost cap (needs prices; 0 = unlimited).
    #[arg(long)]
    pub budget_cost: Option<f64>,
    /// Price per 1000 prompt tokens.
    #[arg(long, default_value_t = 0.0)]
    pub price_prompt_per_1k: f64,
    /// Price per 1000 completion tokens.
    #[arg(long, default_value_t = 0.0)]
    pub price_completion_per_1k: f64,
    /// Evaluation threads (each evaluation also uses the rayon pool for its products).
    #[arg(long, default_value_t = 1)]
    pub eval_workers: usize,
    /// Target sparsity.
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
    /// Comparison group: `row`, `layer`, or N:M such as `2:4`.
    #[arg(long, default_value = "row")]
    pub pattern: Pattern,
    /// Candidates to propose (seeds excluded). On `--resume`, a new total.
    #[arg(long)]
    pub budget_candidates: Option<u64>,
    /// Wall-clock minutes of searching (all sessions of the run together; 0 = unlimited).
    /// On `--resume`, a new total.
    #[arg(long)]
    pub budget_minutes: Option<f64>,
    /// Seed of every random choice of the proposer.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Calibration windows of the full stage (the protocol's 32).
    #[arg(long, default_value_t = 32)]
    pub calib_windows: usize,
    /// Calibration windows of the proxy stage.
    #[arg(long, default_value_t = 4)]
    pub proxy_calib_windows: usize,
    /// Validation windows (held out of the calibration stream) of the full stage.
    #[arg(long, default_value_t = 16)]
    pub validation_windows: usize,
    /// Validation windows of the proxy stage.
    #[arg(long, default_value_t = 4)]
    pub proxy_validation_windows: usize,
    /// Continue past the proxy only if proxy ≤ this × the best baseline's proxy.
    #[arg(long, default_value_t = 1.5)]
    pub proxy_factor: f64,
    /// Candidates measured on the held-out evaluation windows at the end.
    #[arg(long, default_value_t = 3)]
    pub heldout_top: usize,
    /// Calibration text file (default: SOTU speeches before 1990).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// A JSON file with sandbox limits.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub flags: BuildFlags,
}

/// Everything that defines a run, recorded in the archive (`meta.config`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    proposer: String,
    seed: u64,
    budget_candidates: u64,
    #[serde(default)]
    budget_minutes: f64,
    #[serde(default)]
    budget_tokens: u64,
    #[serde(default)]
    budget_cost: f64,
    #[serde(default)]
    llm: Option<LlmConfig>,
    #[serde(default)]
    prompts: Option<PathBuf>,
    #[serde(default)]
    pools: Pools,
    cascade: CascadeConfig,
    calib_windows: usize,
    validation_windows: usize,
    heldout_windows: usize,
    heldout_top: usize,
    seq_len: usize,
    model: Option<PathBuf>,
    calib: Option<PathBuf>,
    eval: Option<PathBuf>,
    policy: Option<PathBuf>,
    trusted: bool,
    gp: GpSettings,
    /// Arithmetic of the linear layers (runs recorded before it existed are f32).
    #[serde(default)]
    precision: Precision,
}

fn archive_path(dir: &Path) -> PathBuf {
    dir.join("archive.sqlite")
}

/// Run it.
pub fn run(args: Args) -> anyhow::Result<i32> {
    for (name, v) in [
        ("--budget-minutes", args.budget_minutes),
        ("--budget-cost", args.budget_cost),
    ] {
        if let Some(v) = v {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "{name} must be a finite number ≥ 0 (got {v})"
            );
        }
    }
    if let Some(dir) = &args.write_prompts {
        Templates::write_builtin(dir).with_context(|| format!("writing {}", dir.display()))?;
        println!(
            "wrote the prompt templates to {}; edit them and pass --prompts {}",
            dir.display(),
            dir.display()
        );
        return Ok(0);
    }
    let quiet = args.protocol.json;
    let (dir, mut archive, cfg, proposer) = match &args.resume {
        Some(dir) => {
            let archive = Archive::open_existing(&archive_path(dir))?;
            let text = archive
                .meta("config")?
                .with_context(|| format!("{} has no recorded configuration", dir.display()))?;
            let mut cfg: RunConfig = serde_json::from_str(&text)
                .with_context(|| format!("reading the configuration of {}", dir.display()))?;
            trust::check_resume(&cfg, &args)?;
            trust::refuse_trusted_llm(cfg.trusted, cfg.llm.is_some())?;
            if let Some(b) = args.budget_candidates {
                cfg.budget_candidates = b;
            }
            if let Some(m) = args.budget_minutes {
                cfg.budget_minutes = m;
            }
            if let Some(t) = args.budget_tokens {
                cfg.budget_tokens = t;
            }
            if let Some(c) = args.budget_cost {
                cfg.budget_cost = c;
            }
            let proposer = build_proposer(&cfg)?;
            archive.set_meta("config", &serde_json::to_string(&cfg)?)?;
            (dir.clone(), archive, cfg, proposer)
        }
        None => {
            let dir = args.run.clone().expect("clap: --run or --resume");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = archive_path(&dir);
            if path.exists() {
                anyhow::bail!(
                    "{} already holds a run; continue it with `autoprune search --resume {}`",
                    dir.display(),
                    dir.display()
                );
            }
            let wants_llm = args.llm.is_some() || args.proposer == "llm";
            trust::refuse_trusted_llm(args.flags.trusted, wants_llm)?;
            let llm = if wants_llm {
                Some(LlmConfig {
                    base_url: args
                        .llm
                        .clone()
                        .context("--proposer llm needs --llm <base URL>")?,
                    model: args.llm_model.clone(),
                    api_key_env: args.api_key_env.clone(),
                    temperature: args.llm_temperature,
                    max_tokens: args.llm_max_tokens,
                    timeout_s: args.llm_timeout,
                    max_retries: args.llm_retries,
                    price_prompt_per_1k: args.price_prompt_per_1k,
                    price_completion_per_1k: args.price_completion_per_1k,
                    allow_insecure_key: args.allow_insecure_key,
                    ..LlmConfig::default()
                })
            } else {
                None
            };
            let pools = if llm.is_some() {
                let c = args.llm_concurrency.max(1);
                Pools {
                    proposal_workers: c,
                    eval_workers: args.eval_workers.max(1),
                    lookahead: args.eval_workers.max(1) + c,
                    ..Pools::default()
                }
            } else {
                Pools {
                    eval_workers: args.eval_workers.max(1),
                    lookahead: args.eval_workers.max(1),
                    ..Pools::default()
                }
            };
            let cfg = RunConfig {
                proposer: if llm.is_some() {
                    "llm".into()
                } else {
                    args.proposer.clone()
                },
                budget_tokens: args.budget_tokens.unwrap_or(0),
                budget_cost: args.budget_cost.unwrap_or(0.0),
                llm,
                prompts: args.prompts.clone(),
                pools,
                seed: args.seed,
                budget_candidates: args.budget_candidates.unwrap_or(200),
                budget_minutes: args.budget_minutes.unwrap_or(0.0),
                cascade: CascadeConfig {
                    sparsity: args.sparsity,
                    pattern: args.pattern,
                    proxy_calib_windows: args.proxy_calib_windows,
                    proxy_val_windows: args.proxy_validation_windows,
                    proxy_factor: args.proxy_factor,
                    calib_batch: 8,
                },
                calib_windows: args.calib_windows,
                validation_windows: args.validation_windows,
                heldout_windows: args.protocol.eval_windows,
                heldout_top: args.heldout_top,
                seq_len: args.protocol.seqlen,
                model: args.protocol.model.clone(),
                calib: args.calib.clone(),
                eval: args.protocol.eval.clone(),
                policy: args.policy.clone(),
                trusted: args.flags.trusted,
                gp: GpSettings::default(),
                precision: args.protocol.precision,
            };
            // Check the proposer's settings before anything is written, so a typo does not
            // leave a run folder that only holds a broken configuration.
            let proposer = build_proposer(&cfg)?;
            let archive = Archive::open(&path)?;
            archive.set_meta("config", &serde_json::to_string(&cfg)?)?;
            (dir, archive, cfg, proposer)
        }
    };
    let policy = load_policy(cfg.policy.as_ref())?;
    let device = super::protocol::device(&args.protocol.device)?;
    let loaded = load_model(cfg.model.as_ref(), &device, cfg.precision)?;
    let calib = stream(&loaded.tokenizer, cfg.calib.as_ref(), "calib")?;
    let eval = stream(&loaded.tokenizer, cfg.eval.as_ref(), "eval")?;
    let seq = cfg.seq_len;
    let offsets = window_offsets(calib.tokens.len(), cfg.calib_windows, seq, Sampler::Even)?;
    let proxy_offsets = window_offsets(
        calib.tokens.len(),
        cfg.cascade.proxy_calib_windows,
        seq,
        Sampler::Even,
    )?;
    let val = validation_offsets(calib.tokens.len(), &offsets, cfg.validation_windows, seq)?;
    let win = |o: &usize| calib.tokens[*o..*o + seq].to_vec();
    let data = SearchData {
        model: loaded.model,
        calib: offsets.iter().map(win).collect(),
        proxy_calib: proxy_offsets.iter().map(win).collect(),
        validation: val.iter().flat_map(win).collect(),
        validation_windows: val.len(),
        heldout: eval.tokens,
        heldout_windows: cfg.heldout_windows,
        seq_len: seq,
    };
    autoprune::eval::eval_windows(
        &data.heldout,
        &autoprune::eval::PerplexityOptions {
            seq_len: seq,
            windows: cfg.heldout_windows,
            batch: 2,
        },
    )?;
    let flags = BuildFlags {
        trusted: cfg.trusted,
        build_timeout: args.flags.build_timeout,
    };
    let evaluator = Evaluator::new(cfg.cascade.clone(), data, flags.builder()?, policy)?;
    // LLM runs start from the hand-written sources (readable); GP runs from trees (breedable).
    let seeds = if cfg.llm.is_some() {
        autoprune::search::gcot::seeds()
    } else {
        GpProposer::seeds()
    };
    let stop = stop_on_ctrl_c();
    let budget = Budget {
        candidates: cfg.budget_candidates,
        tokens: cfg.budget_tokens,
        seconds: cfg.budget_minutes * 60.0,
        cost: cfg.budget_cost,
    };
    let mut print = |e: Event<'_>| {
        if quiet {
            return;
        }
        match e {
            Event::Finished(n, o) => eprintln!(
                "#{:<4} {:<9} {:<10} {:<6} proxy {:>10} fitness {:>10}  {}",
                n.id,
                n.operator,
                format!("{:?}", o.status.unwrap_or(Status::Failed)).to_lowercase(),
                o.stage,
                fmt_opt(o.proxy),
                fmt_opt(o.fitness),
                first_line(&n.thought, 60)
            ),
            Event::Heldout(n, p) => eprintln!("held-out #{:<4} {:.4}", n.id, p),
            Event::Proposed(n) => {
                if n.status == Status::Failed {
                    eprintln!(
                        "#{:<4} {:<9} failed     propose {}",
                        n.id,
                        n.operator,
                        first_line(n.verdict.as_deref().unwrap_or(""), 90)
                    );
                }
            }
            Event::ProposerError(e) => eprintln!("proposer: {}", first_line(e, 120)),
        }
    };
    let why = run_search(
        &mut archive,
        &evaluator,
        proposer,
        &seeds,
        budget,
        cfg.pools,
        &stop,
        &mut print,
    )?;
    let ranked = if why == Stop::Interrupted {
        Vec::new()
    } else {
        rank_heldout(&archive, &evaluator, cfg.heldout_top, &mut print)?
    };
    if quiet {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "run": dir, "stopped": why, "ranking": ranked
            }))?
        );
    } else {
        println!("stopped: {why:?}\n{}", leaderboard(&archive.nodes()?, 10));
        println!("details: autoprune runs show {}", dir.display());
    }
    Ok(0)
}

/// The run's proposer. Settings that would make the run fail or a budget meaningless are
/// refused here, before the model loads and (for a new run) before anything is written.
fn build_proposer(cfg: &RunConfig) -> anyhow::Result<Arc<dyn Proposer>> {
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
            let client = LlmClient::new(llm.clone())?;
            Arc::new(LlmProposer::new(
                client,
                templates,
                PromptSettings {
                    sparsity: cfg.cascade.sparsity,
                    pattern: pattern_words(cfg.cascade.pattern),
                },
                cfg.seed,
            ))
        }
        None => Arc::new(GpProposer::new(
            cfg.gp.clone(),
            cfg.seed,
            cfg.proposer == "random",
        )),
    })
}

/// A flag set by the first Ctrl-C (the loop then stops after the current candidate, with
/// everything recorded); a second Ctrl-C exits at once (the candidate being evaluated stays
/// `pending` and is evaluated again on `--resume`).
fn stop_on_ctrl_c() -> std::sync::Arc<AtomicBool> {
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    eprintln!("interrupted again: exiting now (the candidate in evaluation is re-evaluated on --resume)");
                    std::process::exit(130);
                }
                eprintln!("interrupted: stopping after the current candidate (Ctrl-C again to exit at once)");
            }
        });
    });
    stop
}

fn pattern_words(p: Pattern) -> String {
    match p {
        Pattern::PerRow => "per output row".into(),
        Pattern::PerLayer | Pattern::PerLayerExact => "whole-layer".into(),
        other => format!("{other} (N:M groups along each row)"),
    }
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| {
        if v >= 1e6 {
            format!("{v:.3e}")
        } else {
            format!("{v:.3}")
        }
    })
}

/// The first line of untrusted text, at most `n` characters, escaped for the terminal.
fn first_line(s: &str, n: usize) -> String {
    let l: String = s.lines().next().unwrap_or("").chars().take(n).collect();
    autoprune::term::line(&l).into_owned()
}

/// The leaderboard: best evaluated nodes by held-out perplexity, then validation fitness.
pub fn leaderboard(nodes: &[Node], top: usize) -> String {
    use std::fmt::Write;
    let mut best: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.status == Status::Evaluated)
        .collect();
    best.sort_by(|a, b| {
        (a.heldout.unwrap_or(f64::MAX), a.fitness.unwrap_or(f64::MAX))
            .partial_cmp(&(b.heldout.unwrap_or(f64::MAX), b.fitness.unwrap_or(f64::MAX)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let count = |s: Status| nodes.iter().filter(|n| n.status == s).count();
    let mut out = format!(
        "{} nodes: {} evaluated, {} screened by the proxy, {} duplicates, {} failed, {} pending\n",
        nodes.len(),
        count(Status::Evaluated),
        count(Status::Screened),
        count(Status::Duplicate),
        count(Status::Failed),
        count(Status::Pending)
    );
    out.push_str("  id  proposer  operator      proxy   fitness(val)  held-out  idea\n");
    for n in best.iter().take(top) {
        let _ = writeln!(
            out,
            "{:>4}  {:<8}  {:<9} {:>9} {:>13} {:>9}  {}",
            n.id,
            n.proposer,
            n.operator,
            fmt_opt(n.proxy),
            fmt_opt(n.fitness),
            fmt_opt(n.heldout),
            first_line(&n.thought, 70)
        );
    }
    out
}

/// Arguments of `autoprune runs`.
#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RunsCommand,
}

/// `autoprune runs …`
#[derive(Debug, clap::Subcommand)]
pub enum RunsCommand {
    /// Leaderboard, best candidate's code and lineage of a search run.
    Show {
        /// The run folder.
        dir: PathBuf,
        /// Rows of the leaderboard.
        #[arg(long, default_value_t = 15)]
        top: usize,
        /// Print JSON (every node and edge).
        #[arg(long)]
        json: bool,
        /// Write a self-contained HTML report (lineage graph, best over time, candidates per
        /// stage, every candidate's code, thought and verdicts) to this file.
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

/// Run `autoprune runs`.
pub fn runs(args: RunsArgs) -> anyhow::Result<i32> {
    match args.command {
        RunsCommand::Show {
            dir,
            top,
            json,
            html,
        } => {
            let archive = Archive::open_existing(&archive_path(&dir))?;
            let nodes = archive.nodes()?;
            if let Some(out) = html {
                let config = archive
                    .meta("config")?
                    .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok());
                let page = autoprune::search::report::render(
                    &dir.display().to_string(),
                    config.as_ref(),
                    &nodes,
                    &archive.edges()?,
                    &archive.calls()?,
                );
                std::fs::write(&out, page).with_context(|| format!("writing {}", out.display()))?;
                println!("wrote {}", out.display());
                return Ok(0);
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "config": archive.meta("config")?.and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok()),
                        "nodes": nodes, "edges": archive.edges()?,
                    }))?
                );
                return Ok(0);
            }
            println!("{}", leaderboard(&nodes, top));
            let (pt, ct) = archive.token_split()?;
            let calls = archive.calls()?;
            if !calls.is_empty() {
                let failed = calls.iter().filter(|c| c.error.is_some()).count();
                println!(
                    "proposer calls: {} ({failed} failed attempts), tokens: {pt} prompt + {ct} completion\n",
                    calls.len()
                );
            }
            if let Some(s) = archive
                .meta(autoprune::search::run::ELAPSED_KEY)?
                .and_then(|s| s.parse::<f64>().ok())
            {
                println!("searched for {:.1} min\n", s / 60.0);
            }
            let best = autoprune::search::report::best(&nodes);
            if let Some(b) = best {
                println!("best: #{} — {}\n", b.id, autoprune::term::text(&b.thought));
                // Lineage: follow first parents back to a seed.
                let edges = archive.edges()?;
                let mut chain = vec![b.id];
                let mut cur = b.id;
                while let Some(e) = edges.iter().find(|e| e.child == cur) {
                    chain.push(e.parent);
                    cur = e.parent;
                    if chain.len() > 64 {
                        break;
                    }
                }
                println!(
                    "lineage: {}\n",
                    chain
                        .iter()
                        .map(|i| format!("#{i}"))
                        .collect::<Vec<_>>()
                        .join(" ← ")
                );
                println!("{}", autoprune::term::text(&b.code));
            }
            Ok(0)
        }
    }
}
