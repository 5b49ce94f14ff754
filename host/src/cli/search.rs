//! `autoprune search` and `autoprune runs show`.

use super::check::load_policy;
use super::flags::{CalibFlags, SandboxFlags, TargetFlags};
use super::protocol::ProtocolArgs;
use super::BuildFlags;
use anyhow::Context;
use autoprune::search::archive::{Archive, Node, Status};
use autoprune::search::cascade::Evaluator;
use autoprune::search::data::{search_data, ValidationSource};
use autoprune::search::gcot::Templates;
use autoprune::search::local_server::{LocalLlm, LocalServer};
use autoprune::search::objective::Objective;
use autoprune::search::run::Event;
use autoprune::search::session::{archive_path, data_spec, lineage, SearchFlags, Session};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

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
    /// Base URL of an OpenAI-compatible endpoint (`…/v1`): the LLM proposer. `local` starts
    /// llama.cpp's server (built by ./setup.sh) on 127.0.0.1 for the run and stops it at the end.
    #[arg(long)]
    pub llm: Option<String>,
    /// GGUF model served by `--llm local` (default: the coder model of `./setup.sh --llm`).
    #[arg(long)]
    pub llm_model_file: Option<PathBuf>,
    /// The llama-server binary of `--llm local` (default: the one ./setup.sh builds).
    #[arg(long)]
    pub llm_server: Option<PathBuf>,
    /// CPU threads of the `--llm local` server (0 = every core).
    #[arg(long, default_value_t = 0)]
    pub llm_threads: usize,
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
    /// Completion tokens per request (default 2048; 1024 with `--llm local`: a metric is short).
    #[arg(long)]
    pub llm_max_tokens: Option<u32>,
    /// Seconds before a request is abandoned (and retried) however busy the stream is
    /// (default 120; 3600 with `--llm local`).
    #[arg(long)]
    pub llm_timeout: Option<f64>,
    /// Seconds without a byte of the streamed answer before a request is abandoned (and retried).
    #[arg(long, default_value_t = 120.0)]
    pub llm_idle_timeout: f64,
    /// Do not stream answers (then only `--llm-timeout` applies).
    #[arg(long)]
    pub llm_no_stream: bool,
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
    /// Run the candidates' ladders on a board's workers (`autoprune serve` at this URL, with a
    /// `search` token in `$AUTOPRUNE_SEARCH_TOKEN`); raise `--eval-workers` to keep that many
    /// candidates in flight. The held-out ranking stays here.
    #[arg(long, value_name = "URL")]
    pub workers: Option<String>,
    /// What to optimise: one setting or several, comma-separated, e.g. `2:4`, `0.7+sdsa`
    /// (70 % with SDSA allocation), `0.5,2:4,0.7+sdsa` (the geometric mean of the perplexity
    /// ratios to Wanda under the three). Every setting is compared with Wanda under itself.
    /// Default: `--sparsity` with `--pattern`.
    #[arg(long)]
    pub objective: Option<Objective>,
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
    /// Validation windows of the sequential level (disjoint from the calibration and held-out
    /// windows; see `--validation-source`).
    #[arg(long, default_value_t = 32)]
    pub validation_windows: usize,
    /// Where the validation windows come from: `spread` (between the calibration windows,
    /// over the whole calibration text), `recent` (the end of the calibration text) or
    /// `eval-tail` (the evaluation text after the held-out windows: the held-out text's era,
    /// disjoint tokens). The default, `recent`, never reads the evaluation text, and at 2:4 on
    /// SOTU its sequential level ranks metrics as the held-out text does far better than
    /// `spread` (Kendall's τ, docs/SEARCH.md). Runs recorded before the choice keep `spread`.
    #[arg(long, value_enum, default_value_t = ValidationSource::Recent)]
    pub validation_source: ValidationSource,
    /// Validation windows of the screen (the first ones of the validation windows).
    #[arg(long, default_value_t = 4)]
    pub screen_windows: usize,
    /// Continue past the screen only if its perplexity ratio to Wanda is at most this.
    #[arg(long, default_value_t = 1.1)]
    pub promote_ratio: f64,
    /// Probability that a GP breeding step is constant tuning (one constant of a good tree
    /// scaled, or a sum re-weighted) instead of crossover or mutation. Off by default: over 3
    /// seeds its evaluations-to-target curve did not beat the screen's noise (docs/SEARCH.md);
    /// 0.2 is what the earlier runs used.
    #[arg(long, default_value_t = 0.0)]
    pub gp_tune: f64,
    /// Do not compute the gradient statistic (faster start; GBLM, Pruner-Zero and candidates
    /// that read the gradient are then refused).
    #[arg(long)]
    pub no_gradient: bool,
    /// Candidates measured on the held-out evaluation windows at the end.
    #[arg(long, default_value_t = 3)]
    pub heldout_top: usize,
    /// The target when no `--objective` is given.
    #[command(flatten)]
    pub target: TargetFlags,
    /// The calibration text and windows: the dense statistics of the screen and the sequential
    /// level's protocol.
    #[command(flatten)]
    pub calib: CalibFlags,
    #[command(flatten)]
    pub sandbox: SandboxFlags,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
}

/// Run it.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let flags = search_flags(&args);
    flags.check_budgets()?;
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
    args.protocol.only_auto_path("search")?;
    let mut session = match &args.resume {
        Some(dir) => Session::resume(dir, &flags)?,
        None => Session::create(args.run.as_ref().expect("clap: --run or --resume"), &flags)?,
    };
    let cfg = session.config.clone();
    let policy = load_policy(cfg.policy.as_ref())?;
    let device = super::protocol::device(&args.protocol.device)?;
    let data = search_data(&data_spec(&cfg), &device)?;
    let builder = BuildFlags {
        trusted: cfg.trusted,
        build_timeout: args.sandbox.build.build_timeout,
    }
    .builder()?;
    let evaluator = session.evaluator(data, builder, policy, &mut |what| {
        if !quiet {
            eprintln!("preparing: {what}");
        }
    })?;
    if !quiet {
        print_preparation(&evaluator, &cfg.ladder.objective);
    }
    let server = session.start_local_llm(&mut |l, s| {
        if !quiet {
            print_server(l, s)
        }
    })?;
    let stop = stop_on_ctrl_c();
    let remote = match &args.workers {
        Some(url) => {
            let token = std::env::var("AUTOPRUNE_SEARCH_TOKEN").map_err(|_| {
                anyhow::anyhow!("--workers needs a search token in AUTOPRUNE_SEARCH_TOKEN (autoprune tokens add --search)")
            })?;
            Some(autoprune::search::remote::RemoteEvaluator::new(
                url,
                &token,
                cfg.clone(),
                evaluator.reference(),
            )?)
        }
        None => None,
    };
    let remote_ref = remote
        .as_ref()
        .map(|r| r as &dyn autoprune::search::run::Evaluate);
    let out = session.search(&evaluator, remote_ref, server, &stop, &mut |e| {
        if !quiet {
            print_event(e)
        }
    })?;
    let dir = &session.dir;
    if quiet {
        let json = serde_json::json!({"run": dir, "stopped": out.stopped, "ranking": out.ranking});
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "stopped: {:?}\n{}",
            out.stopped,
            leaderboard(&session.archive.nodes()?, 10)
        );
        println!("details: autoprune runs show {}", dir.display());
    }
    Ok(0)
}

/// How long the preparation took.
fn print_preparation(evaluator: &Evaluator, objective: &Objective) {
    let p = evaluator.preparation();
    eprintln!(
        "prepared in {:.1} s (dense statistics {:.1} s, gradient {:.1} s, plans {:.1} s, Wanda's losses {:.1} s); objective {}",
        p.dense_stats + p.gradient + p.plans + p.reference,
        p.dense_stats,
        p.gradient,
        p.plans,
        p.reference,
        objective
    );
}

/// The `--llm local` server once it runs.
fn print_server(l: &LocalLlm, s: &LocalServer) {
    eprintln!(
        "local LLM: {} on {} (pid {}, log {})",
        l.model.display(),
        s.base_url(),
        s.pid().unwrap_or(0),
        s.log().display()
    );
}

/// The library's view of the flags.
fn search_flags(a: &Args) -> SearchFlags {
    SearchFlags {
        proposer: a.proposer.clone(),
        llm: a.llm.clone(),
        llm_model_file: a.llm_model_file.clone(),
        llm_server: a.llm_server.clone(),
        llm_threads: a.llm_threads,
        llm_model: a.llm_model.clone(),
        api_key_env: a.api_key_env.clone(),
        allow_insecure_key: a.allow_insecure_key,
        llm_temperature: a.llm_temperature,
        llm_max_tokens: a.llm_max_tokens,
        llm_timeout: a.llm_timeout,
        llm_idle_timeout: a.llm_idle_timeout,
        llm_no_stream: a.llm_no_stream,
        llm_retries: a.llm_retries,
        llm_concurrency: a.llm_concurrency,
        prompts: a.prompts.clone(),
        budget_tokens: a.budget_tokens,
        budget_cost: a.budget_cost,
        price_prompt_per_1k: a.price_prompt_per_1k,
        price_completion_per_1k: a.price_completion_per_1k,
        eval_workers: a.eval_workers,
        objective: a.objective.clone(),
        sparsity: a.target.sparsity,
        pattern: a.target.pattern,
        budget_candidates: a.budget_candidates,
        budget_minutes: a.budget_minutes,
        seed: a.seed,
        calib_windows: a.calib.calib_windows,
        validation_windows: a.validation_windows,
        validation_source: a.validation_source,
        screen_windows: a.screen_windows,
        promote_ratio: a.promote_ratio,
        gp_tune: a.gp_tune,
        no_gradient: a.no_gradient,
        heldout_top: a.heldout_top,
        calib: a.calib.calib.clone(),
        policy: a.sandbox.policy.clone(),
        model: a.protocol.model.clone(),
        eval: a.protocol.eval.clone(),
        seq_len: a.protocol.seqlen,
        heldout_windows: a.protocol.eval_windows,
        precision: a.protocol.precision,
        trusted: a.sandbox.build.trusted,
    }
}

/// One line on stderr per event of the loop.
fn print_event(e: Event<'_>) {
    match e {
        Event::Finished(n, o) => eprintln!(
            "#{:<4} {:<9} {:<10} {:<10} screen {:>7} fitness {:>7}  {}",
            n.id,
            n.operator,
            format!("{:?}", o.status.unwrap_or(Status::Failed)).to_lowercase(),
            o.stage,
            fmt_opt(o.proxy),
            fmt_opt(o.fitness),
            first_line(&n.thought, 60)
        ),
        Event::Heldout(n, p) => eprintln!("held-out #{:<4} {:.4} × Wanda", n.id, p),
        Event::Proposed(n) => {
            if n.status == Status::Failed {
                eprintln!(
                    "#{:<4} {:<9} failed     propose {}",
                    n.id,
                    n.operator,
                    first_line(
                        &n.verdict.as_ref().map(|v| v.to_json()).unwrap_or_default(),
                        90
                    )
                );
            }
        }
        Event::ProposerError(e) => eprintln!("proposer: {}", first_line(e, 120)),
    }
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

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| {
        if v >= 1e4 {
            format!("{v:.1e}")
        } else {
            format!("{v:.4}")
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
        "{} nodes: {} evaluated, {} screened out by the screen, {} duplicates, {} failed, {} pending\n",
        nodes.len(),
        count(Status::Evaluated),
        count(Status::Screened),
        count(Status::Duplicate),
        count(Status::Failed),
        count(Status::Pending)
    );
    out.push_str(
        "  id  proposer  operator    screen  sequential [95 % CI]     held-out [95 % CI]  idea\n",
    );
    for n in best.iter().take(top) {
        let detail: autoprune::search::cascade::Detail = n
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default();
        let ci = |l: &Option<autoprune::search::cascade::LevelResult>| {
            l.as_ref().map_or(String::new(), |l| {
                let (lo, hi) = l.combined.ratio_ci();
                format!("[{lo:.4}, {hi:.4}]")
            })
        };
        let _ = writeln!(
            out,
            "{:>4}  {:<8}  {:<9} {:>7} {:>7} {:<18} {:>7} {:<18}  {}",
            n.id,
            first_line(&n.proposer.name(), 8),
            n.operator,
            fmt_opt(n.proxy),
            fmt_opt(n.fitness),
            ci(&detail.sequential),
            fmt_opt(n.heldout),
            ci(&detail.heldout),
            first_line(&n.thought, 60)
        );
    }
    out.push_str(
        "(perplexity as a ratio to Wanda's under the same setting, windows and protocol; lower is better)\n",
    );
    out
}

/// `runs export`: the node's code under a provenance header.
fn export(dir: &Path, node: Option<i64>, out: &Path) -> anyhow::Result<i32> {
    let file = out
        .file_name()
        .map_or("metric.rs".into(), |f| f.to_string_lossy().into_owned());
    let exported = autoprune::search::export::export(dir, node, &file)?;
    std::fs::write(out, &exported.source).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote node #{} to {}", exported.node, out.display());
    Ok(0)
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
    /// Write a candidate of a run as a metric file with a header that states where it comes
    /// from: the objective, the run, its measured ratios to Wanda, the command that
    /// reproduces the held-out number.
    Export {
        /// The run folder.
        dir: PathBuf,
        /// The node (default: the best by held-out ratio, then sequential ratio).
        #[arg(long)]
        node: Option<i64>,
        /// The metric file to write.
        #[arg(long, short)]
        out: PathBuf,
    },
}

/// Run `autoprune runs`.
pub fn runs(args: RunsArgs) -> anyhow::Result<i32> {
    match args.command {
        RunsCommand::Export { dir, node, out } => export(&dir, node, &out),
        RunsCommand::Show {
            dir,
            top,
            json,
            html,
        } => show(&dir, top, json, html.as_deref()),
    }
}

/// `runs show`: an HTML report, the run as JSON, or the leaderboard with the best candidate.
fn show(dir: &Path, top: usize, json: bool, html: Option<&Path>) -> anyhow::Result<i32> {
    let archive = Archive::open_existing(&archive_path(dir))?;
    let nodes = archive.nodes()?;
    let (edges, calls) = (archive.edges()?, archive.calls()?);
    let config = || -> anyhow::Result<Option<serde_json::Value>> {
        Ok(archive
            .meta("config")?
            .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok()))
    };
    if let Some(out) = html {
        let page = autoprune::search::report::render(
            &dir.display().to_string(),
            config()?.as_ref(),
            &nodes,
            &edges,
            &calls,
        );
        std::fs::write(out, page).with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {}", out.display());
        return Ok(0);
    }
    let funnel = autoprune::search::funnel::funnel(&nodes, &calls);
    let operators = autoprune::search::funnel::operators(&nodes, &edges);
    if json {
        let all = serde_json::json!({
            "config": config()?, "nodes": nodes, "edges": edges, "funnel": funnel,
            "operators": operators,
        });
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    println!("{}", leaderboard(&nodes, top));
    println!("{funnel}");
    if !operators.is_empty() {
        println!("{}", autoprune::search::funnel::operators_table(&operators));
    }
    let (pt, ct) = archive.token_split()?;
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
    if let Some(b) = autoprune::search::report::best(&nodes) {
        println!("best: #{} — {}\n", b.id, autoprune::term::text(&b.thought));
        let chain = lineage(&edges, b.id);
        let chain: Vec<String> = chain.iter().map(|i| format!("#{i}")).collect();
        println!("lineage: {}\n", chain.join(" ← "));
        println!("{}", autoprune::term::text(&b.code));
    }
    Ok(0)
}
