//! `autoprune prune`: prune a real model with a sandboxed metric (or SparseGPT), measure
//! perplexity dense and pruned, export the pruned model and a report.

use super::alloc::{check_pattern, gradients_if_needed, planned, stats_pass, AllocArgs, Planned};
use super::check::{load_plugin, load_policy, plugin_sha256};
use super::protocol::{bar, load_model, stream, ProtocolArgs};
use super::{BuildFlags, EXIT_VERDICT};
use autoprune::alloc::summary::summarize;
use autoprune::alloc::Allocation;
use autoprune::calib::gradient::Gradients;
use autoprune::calib::{check_offsets, window_offsets, windows, Sampler};
use autoprune::eval::{perplexity_with_progress, PerplexityOptions};
use autoprune::layer::LayerKind;
use autoprune::model::{Model, Precision};
use autoprune::pipeline::{
    prune_model_with_gradients, Method, PipelineError, Progress, PruneConfig, PruneReport,
};
use autoprune::prune::mask::Pattern;
use autoprune::report::{peak_rss_bytes, PplReport, Protocol};
use autoprune::term::{line, text};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `autoprune prune`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The metric: candidate source (`.rs`, built in the sandbox) or a component (`.wasm`).
    #[arg(long, required_unless_present = "method", conflicts_with = "method")]
    pub metric: Option<PathBuf>,
    /// A built-in method instead of a metric: `sparsegpt`.
    #[arg(long, value_parser = ["sparsegpt"])]
    pub method: Option<String>,
    /// Target sparsity of every linear layer.
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
    /// Comparison group: `row` (per output row), `layer` (one threshold per matrix, ties
    /// pruned), `layer-exact`, or `N:M` such as `2:4`.
    #[arg(long, default_value = "row")]
    pub pattern: Pattern,
    /// Calibration text file (default: SOTU speeches before 1990).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 32)]
    pub calib_windows: usize,
    /// Window placement: `even` (the protocol's deterministic offsets) or `random`.
    #[arg(long, default_value = "even", value_parser = ["even", "random"])]
    pub sampler: String,
    /// Explicit calibration window offsets (comma-separated token positions), e.g. to
    /// reproduce another tool's windows; overrides `--sampler` and `--calib-windows`.
    #[arg(long, value_delimiter = ',')]
    pub calib_offsets: Vec<usize>,
    /// Seed of the random sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Calibration windows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub calib_batch: usize,
    /// Compute and print the allocation plan (per-unit statistics and sparsities), then stop
    /// without pruning.
    #[arg(long)]
    pub plan_only: bool,
    /// Skip the dense perplexity (faster; the report then has only the pruned one).
    #[arg(long)]
    pub skip_dense: bool,
    /// Arithmetic of the perplexity evaluations only (default: `--precision`). bf16 here
    /// changes perplexity by a few hundredths of a percent (README), bf16 in the calibration
    /// passes changes the masks.
    #[arg(long)]
    pub eval_precision: Option<Precision>,
    /// Write the pruned model (Hugging Face format) and `report.json` here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A JSON file with sandbox limits.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub alloc: AllocArgs,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub flags: BuildFlags,
}

fn ppl(
    model: &Model,
    tokens: &[u32],
    opts: &PerplexityOptions,
    what: &str,
    quiet: bool,
) -> anyhow::Result<PplReport> {
    let pb = bar(opts.windows, what, quiet);
    let p = perplexity_with_progress(model, tokens, opts, &mut |d, _| pb.set_position(d as u64))?;
    pb.finish_and_clear();
    Ok(p.into())
}

/// Per-block sparsity table, one column per linear kind.
fn sparsity_table(r: &PruneReport) -> String {
    use std::fmt::Write;
    let mut s = String::from("block");
    for k in LayerKind::BLOCK {
        let _ = write!(s, " {:>7}", k.name());
    }
    for chunk in r.layers.chunks(7) {
        let _ = write!(s, "\n{:>5}", chunk[0].block);
        for l in chunk {
            let _ = write!(s, " {:>7.4}", l.sparsity);
        }
    }
    s
}

fn report_metric_failure(
    quiet: bool,
    layer: autoprune::layer::LayerId,
    failure: &autoprune::sandbox::Failure,
) {
    if quiet {
        println!(
            "{}",
            serde_json::json!({ "ok": false, "layer": layer, "failure": failure })
        );
    } else {
        eprintln!(
            "the metric failed on {layer}: {}",
            text(&failure.to_string())
        );
    }
}

/// The allocation step: `None` for uniform; otherwise a dense statistics pass, unit summaries
/// and the rule's (or plugin's) validated sparsities. Also returns the gradient statistic when
/// the summaries needed it, for the pruning run to reuse.
fn allocate(
    args: &Args,
    model: &Model,
    windows: &[&[u32]],
    metric: Option<&autoprune::sandbox::Plugin>,
    quiet: bool,
) -> Result<(Option<Planned>, Option<Gradients>), PipelineError> {
    let a = &args.alloc;
    let builtin = a
        .builtin()
        .map_err(|e| PipelineError::Config(e.to_string()))?;
    if builtin == Some(Allocation::Uniform) {
        return Ok((None, None));
    }
    check_pattern(args.pattern).map_err(|e| PipelineError::Config(e.to_string()))?;
    let cfg_err = |e: anyhow::Error| PipelineError::Config(format!("{e:#}"));
    let stats = stats_pass(model, windows, args.calib_batch, quiet).map_err(cfg_err)?;
    let grads = gradients_if_needed(model, windows, metric, quiet).map_err(cfg_err)?;
    let extras = super::alloc::extras_if_needed(model, windows, args.calib_batch, metric, quiet)
        .map_err(cfg_err)?;
    let units = summarize(
        model,
        &stats,
        metric,
        grads.as_ref(),
        extras.as_ref(),
        args.sparsity,
        a.granularity,
    )?;
    let (s, rule) = match builtin {
        Some(rule) => (
            rule.allocate(args.sparsity, &units)
                .map_err(|e| PipelineError::Config(format!("{} allocation: {e}", rule.name())))?,
            serde_json::to_value(rule).unwrap_or_default(),
        ),
        None => {
            let policy = load_policy(args.policy.as_ref()).map_err(cfg_err)?;
            super::alloc::run_plugin(
                std::path::Path::new(&a.allocation),
                &args.flags,
                &policy,
                args.sparsity,
                &units,
            )?
        }
    };
    let plan = planned(
        rule,
        a.granularity,
        &units,
        &s,
        model.blocks.len(),
        stats.seconds,
    );
    Ok((Some(plan), grads))
}

/// Run it.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let start = Instant::now();
    let p = &args.protocol;
    let quiet = p.json;
    let policy = load_policy(args.policy.as_ref())?;
    let (plugin, metric_hash) = match &args.metric {
        Some(path) => match load_plugin(path, &args.flags, &policy)? {
            Ok(pl) => (Some(pl), Some(plugin_sha256(path, &policy)?)),
            Err(f) => {
                eprintln!(
                    "the metric {} failed before pruning: {}",
                    path.display(),
                    text(&f.to_string())
                );
                return Ok(EXIT_VERDICT);
            }
        },
        None => (None, None),
    };
    let method = match &plugin {
        Some(pl) => Method::Metric(pl),
        None => Method::SparseGpt,
    };
    let mut loaded = load_model(
        p.model.as_ref(),
        &super::protocol::device(&p.device)?,
        p.precision,
    )?;
    // The evaluations' arithmetic, set (so checked) now: the dense evaluation runs with it, and
    // one this machine cannot run is refused before the pruning, not after it.
    let eval_precision = args.eval_precision.unwrap_or(p.precision);
    loaded.model.set_precision(eval_precision)?;
    let calib = stream(&loaded.tokenizer, args.calib.as_ref(), "calib")?;
    let eval = stream(&loaded.tokenizer, p.eval.as_ref(), "eval")?;
    let (sampler, offsets) = if args.calib_offsets.is_empty() {
        let sampler = match args.sampler.as_str() {
            "random" => Sampler::Random { seed: args.seed },
            _ => Sampler::Even,
        };
        let offsets = window_offsets(calib.tokens.len(), args.calib_windows, p.seqlen, sampler)?;
        (sampler, offsets)
    } else {
        check_offsets(calib.tokens.len(), &args.calib_offsets, p.seqlen)?;
        (Sampler::Given, args.calib_offsets.clone())
    };
    let calib_windows = windows(&calib.tokens, &offsets, p.seqlen);
    let opts = PerplexityOptions {
        seq_len: p.seqlen,
        windows: p.eval_windows,
        batch: p.eval_batch,
    };
    // Fail early, before minutes of pruning, if the evaluation text is too short.
    autoprune::eval::eval_windows(&eval.tokens, &opts)?;
    let dense = if args.skip_dense || args.plan_only {
        None
    } else {
        Some(ppl(
            &loaded.model,
            &eval.tokens,
            &opts,
            "dense eval",
            quiet,
        )?)
    };
    loaded.model.set_precision(p.precision)?;
    let (plan, grads) = match allocate(&args, &loaded.model, &calib_windows, plugin.as_ref(), quiet)
    {
        Ok(p) => p,
        Err(PipelineError::Metric { layer, failure }) => {
            report_metric_failure(quiet, layer, &failure);
            return Ok(EXIT_VERDICT);
        }
        Err(PipelineError::Allocator(failure)) => {
            if quiet {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "allocator": args.alloc.allocation, "failure": failure })
                );
            } else {
                eprintln!(
                    "the allocator {} failed: {}",
                    args.alloc.allocation,
                    text(&failure.to_string())
                );
            }
            return Ok(EXIT_VERDICT);
        }
        Err(e) => return Err(e.into()),
    };
    if args.plan_only {
        match &plan {
            Some(p) if quiet => println!("{}", serde_json::to_string_pretty(p)?),
            Some(p) => println!("allocation {}\n{}", p.rule, super::alloc::plan_table(p)),
            None => println!("uniform allocation: every layer at {}", args.sparsity),
        }
        return Ok(0);
    }
    let cfg = PruneConfig {
        sparsity: args.sparsity,
        layer_sparsity: plan
            .as_ref()
            .map_or_else(Vec::new, |p| p.layer_sparsity.clone()),
        pattern: args.pattern,
        batch: args.calib_batch,
    };
    let pb = bar(loaded.model.blocks.len(), "prune", quiet);
    let t = Instant::now();
    let result = prune_model_with_gradients(
        &mut loaded.model,
        &calib_windows,
        &method,
        &cfg,
        grads.as_ref(),
        &mut |p| {
            let (what, done, total) = match p {
                Progress::Gradient { done, total } => ("gradients", done, total),
                Progress::Block { done, total } => ("prune", done, total),
            };
            pb.set_message(what);
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        },
    );
    pb.finish_and_clear();
    let pruned_report = match result {
        Ok(r) => r,
        Err(PipelineError::Metric { layer, failure }) => {
            report_metric_failure(quiet, layer, &failure);
            return Ok(EXIT_VERDICT);
        }
        Err(e) => return Err(e.into()),
    };
    let prune_seconds = t.elapsed().as_secs_f64();
    loaded.model.set_precision(eval_precision)?;
    let pruned = ppl(&loaded.model, &eval.tokens, &opts, "pruned eval", quiet)?;
    let protocol = Protocol {
        name: if p.model.is_none()
            && args.calib.is_none()
            && p.eval.is_none()
            && p.seqlen == 512
            && offsets.len() == 32
            && p.eval_windows == 64
            && sampler == Sampler::Even
            && p.precision == Precision::F32
            && eval_precision == Precision::F32
        {
            "sotu-512".into()
        } else {
            "custom".into()
        },
        model: loaded.path.display().to_string(),
        calib_source: calib.source.clone(),
        eval_source: eval.source.clone(),
        seq_len: p.seqlen,
        calib_windows: offsets.len(),
        sampler,
        calib_offsets: offsets.clone(),
        eval_windows: p.eval_windows,
        calib_tokens: calib.tokens.len(),
        eval_tokens: eval.tokens.len(),
        precision: p.precision,
        eval_precision,
    };
    let report = serde_json::json!({
        "protocol": protocol,
        "method": match &plugin { Some(pl) => serde_json::json!({"metric": pl.info(), "source": args.metric, "sha256": metric_hash}), None => serde_json::json!({"builtin": "sparsegpt"}) },
        "sparsity_target": args.sparsity,
        "pattern": args.pattern,
        "sparsity_achieved": pruned_report.sparsity,
        "allocation": plan,
        "perplexity": { "dense": dense, "pruned": pruned },
        "timings": { "load_seconds": loaded.seconds, "prune_seconds": prune_seconds,
                      "gradient_seconds": pruned_report.gradient_seconds,
                      "stats_seconds": pruned_report.stats_seconds, "score_mask_seconds": pruned_report.prune_seconds,
                      "pruned_forward_seconds": pruned_report.forward_seconds, "total_seconds": start.elapsed().as_secs_f64() },
        "peak_rss_bytes": peak_rss_bytes(),
        "cpu": autoprune::model::cpu_report(),
        "layers": pruned_report.layers,
    });
    if let Some(out) = &args.out {
        let dir = out.join("model");
        loaded.model.save_hf(&dir)?;
        loaded.tokenizer.save(&dir.join("tokenizer.json"))?;
        std::fs::write(
            out.join("report.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
    }
    if quiet {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    println!("{}", sparsity_table(&pruned_report));
    if let Some(p) = &plan {
        println!(
            "\nallocation {} ({:?}): per-unit sparsity {}",
            p.rule,
            p.granularity,
            p.units
                .iter()
                .map(|u| format!("{:.3}", u.sparsity))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let name = plugin.as_ref().map_or("sparsegpt".to_string(), |pl| {
        line(&pl.info().name).into_owned()
    });
    println!(
        "\nprotocol {} | {} | {} (eval {}) | method {} | pattern {} | target sparsity {}",
        protocol.name,
        loaded.path.display(),
        p.precision,
        eval_precision,
        name,
        args.pattern,
        args.sparsity
    );
    if let Some(d) = &dense {
        println!("dense  perplexity {:>10.4}  ({:.1} s)", d.ppl, d.seconds);
    }
    println!(
        "pruned perplexity {:>10.4}  ({:.1} s)   achieved sparsity {:.6}",
        pruned.ppl, pruned.seconds, pruned_report.sparsity
    );
    println!(
        "load {:.1} s, prune {:.1} s (gradients {:.1}, stats {:.1}, score+mask {:.1}, pruned pass {:.1}), total {:.1} s, peak RSS {:.2} GiB",
        loaded.seconds, prune_seconds, pruned_report.gradient_seconds, pruned_report.stats_seconds, pruned_report.prune_seconds,
        pruned_report.forward_seconds, start.elapsed().as_secs_f64(),
        peak_rss_bytes().unwrap_or(0) as f64 / (1u64 << 30) as f64
    );
    if let Some(out) = &args.out {
        println!(
            "wrote {}/model and {}/report.json",
            out.display(),
            out.display()
        );
    }
    Ok(0)
}
