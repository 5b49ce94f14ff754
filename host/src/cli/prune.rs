//! `autoprune prune`: prune a real model with a sandboxed metric (or SparseGPT), measure
//! perplexity dense and pruned, export the pruned model and a report.

use super::alloc::{AllocArgs, Named};
use super::check::{load_plugin, plugin_sha256};
use super::flags::{CalibFlags, SandboxFlags, TargetFlags};
use super::protocol::{Bars, ProtocolArgs};
use super::{Exit, EXIT_VERDICT};
use autoprune::calib::Sampler;
use autoprune::layer::LayerKind;
use autoprune::model::{Precision, SaveDtype};
use autoprune::report::{peak_rss_bytes, MethodRecord, PruneRunReport};
use autoprune::run::allocate::Rule;
use autoprune::run::prune::{MethodSpec, Outcome, PruneSpec};
use autoprune::setup::CalibSpec;
use autoprune::term::{line, text};
use std::path::PathBuf;

/// Arguments of `autoprune prune`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The metric: candidate source (`.rs`, built in the sandbox) or a component (`.wasm`).
    #[arg(long, required_unless_present = "method", conflicts_with = "method")]
    pub metric: Option<PathBuf>,
    /// A built-in method instead of a metric: `sparsegpt`.
    #[arg(long, value_parser = ["sparsegpt"])]
    pub method: Option<String>,
    #[command(flatten)]
    pub target: TargetFlags,
    #[command(flatten)]
    pub calib: CalibFlags,
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
    /// Element type of the written weights: f32 (default), f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub save_dtype: SaveDtype,
    /// Read, prune, measure and write the model one block at a time: peak memory is about one
    /// block plus the windows' activations, whatever the depth (uniform sparsity only; no
    /// gradient metrics or zero-shot tasks). Same masks and perplexities as without.
    #[arg(long)]
    pub stream: bool,
    #[command(flatten)]
    pub tasks: super::eval::TaskFlags,
    #[command(flatten)]
    pub alloc: AllocArgs,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub sandbox: SandboxFlags,
}

impl Args {
    /// The calibration windows these flags ask for.
    fn calib_spec(&self) -> CalibSpec {
        CalibSpec {
            file: self.calib.calib.clone(),
            windows: self.calib.calib_windows,
            sampler: Some(match self.sampler.as_str() {
                "random" => Sampler::Random { seed: self.seed },
                _ => Sampler::Even,
            }),
            offsets: self.calib_offsets.clone(),
        }
    }
}

/// Run it.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let json = args.protocol.json;
    let policy = args.sandbox.policy()?;
    let Ok(plugin) = load_metric(&args, &policy)? else {
        return Ok(EXIT_VERDICT);
    };
    let named = args
        .alloc
        .named(&args.sandbox.build, &policy, args.target.pattern)?;
    let rule = match &named {
        Named::Builtin(r) => Rule::Builtin(*r),
        Named::Plugin(pl, path, sha) => Rule::plugin(pl, path, sha),
        Named::Failed(f) => return Ok(allocator_failed(json, &args.alloc.allocation, f)),
    };
    let spec = PruneSpec {
        protocol: args.protocol.spec(),
        calib: args.calib_spec(),
        calib_batch: args.calib_batch,
        method: match &plugin {
            Some((plugin, source, sha256)) => MethodSpec::Metric {
                plugin,
                source: source.clone(),
                sha256: sha256.clone(),
            },
            None => MethodSpec::SparseGpt,
        },
        sparsity: args.target.sparsity,
        pattern: args.target.pattern,
        allocation: (rule, args.alloc.granularity),
        eval_precision: args.eval_precision,
        skip_dense: args.skip_dense,
        plan_only: args.plan_only,
        out: args.out.clone(),
        tasks: args.tasks.spec(),
        stream: args.stream,
        save_dtype: args.save_dtype,
        after_prune: None,
    };
    let exit = match autoprune::run::prune::run(spec, &mut Bars::new(json))? {
        Outcome::Done(report) => print_report(&args, &report).map(|_| Exit::Success.into())?,
        Outcome::Plan(Some(p)) if json => println_ok(serde_json::to_string_pretty(&p)?),
        Outcome::Plan(Some(p)) => println_ok(format!("allocation {}\n{}", p.rule, p.table())),
        Outcome::Plan(None) => println_ok(format!(
            "uniform allocation: every layer at {}",
            args.target.sparsity
        )),
        Outcome::Metric { layer, failure } if json => {
            let j = serde_json::json!({ "ok": false, "layer": layer, "failure": failure });
            println!("{j}");
            EXIT_VERDICT
        }
        Outcome::Metric { layer, failure } => {
            let f = text(&failure.to_string()).into_owned();
            eprintln!("the metric failed on {layer}: {f}");
            EXIT_VERDICT
        }
        Outcome::Allocator(f) => allocator_failed(json, &args.alloc.allocation, &f),
        Outcome::Stopped => anyhow::bail!("the run stopped before its evaluation"),
    };
    Ok(exit)
}

fn println_ok(s: String) -> i32 {
    println!("{s}");
    Exit::Success.into()
}

/// The metric plugin (with its file and hash), `None` for SparseGPT, or `Err` when it failed
/// to build or load (its verdict printed).
#[allow(clippy::type_complexity)]
fn load_metric(
    args: &Args,
    policy: &autoprune::sandbox::Policy,
) -> anyhow::Result<Result<Option<(autoprune::sandbox::Plugin, PathBuf, String)>, ()>> {
    let Some(path) = &args.metric else {
        return Ok(Ok(None));
    };
    match load_plugin(path, &args.sandbox.build, policy)? {
        Ok(pl) => Ok(Ok(Some((pl, path.clone(), plugin_sha256(path, policy)?)))),
        Err(f) => {
            let f = text(&f.to_string()).into_owned();
            eprintln!("the metric {} failed before pruning: {f}", path.display());
            Ok(Err(()))
        }
    }
}

fn allocator_failed(json: bool, allocator: &str, failure: &autoprune::sandbox::Failure) -> i32 {
    if json {
        println!(
            "{}",
            serde_json::json!({ "ok": false, "allocator": allocator, "failure": failure })
        );
    } else {
        let f = text(&failure.to_string()).into_owned();
        eprintln!("the allocator {allocator} failed: {f}");
    }
    EXIT_VERDICT
}

/// Per-block sparsity table, one column per linear kind.
fn sparsity_table(r: &PruneRunReport) -> String {
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

fn print_report(args: &Args, r: &PruneRunReport) -> anyhow::Result<()> {
    if args.protocol.json {
        println!("{}", autoprune::report::sorted_json_pretty(r)?);
        return Ok(());
    }
    println!("{}", sparsity_table(r));
    if let Some(p) = &r.allocation {
        let (rule, g, units) = (&p.rule, p.granularity, p.unit_line());
        println!("\nallocation {rule} ({g:?}): per-unit sparsity {units}");
    }
    let name = match &r.method {
        MethodRecord::Metric { metric, .. } => line(&metric.name).into_owned(),
        MethodRecord::Builtin { builtin } => builtin.clone(),
    };
    let (pr, t) = (&r.protocol, &r.timings);
    println!(
        "\nprotocol {} | {} | {} (eval {}) | method {name} | pattern {} | target sparsity {}",
        pr.name, pr.model, pr.precision, pr.eval_precision, r.pattern, r.sparsity_target
    );
    if let Some(d) = &r.perplexity.dense {
        println!("dense  perplexity {:>10.4}  ({:.1} s)", d.ppl, d.seconds);
    }
    let pruned = &r.perplexity.pruned;
    println!(
        "pruned perplexity {:>10.4}  ({:.1} s)   achieved sparsity {:.6}",
        pruned.ppl, pruned.seconds, r.sparsity_achieved
    );
    println!(
        "load {:.1} s, prune {:.1} s (gradients {:.1}, stats {:.1}, score+mask {:.1}, pruned pass {:.1}), total {:.1} s, peak RSS {:.2} GiB",
        t.load_seconds, t.prune_seconds, t.gradient_seconds, t.stats_seconds, t.score_mask_seconds,
        t.pruned_forward_seconds, t.total_seconds,
        peak_rss_bytes().unwrap_or(0) as f64 / (1u64 << 30) as f64
    );
    if let Some(z) = &r.zero_shot {
        for (what, scores) in [("dense ", &z.dense), ("pruned", &z.pruned)] {
            for t in scores {
                println!("{what} {}", super::task_line(t));
            }
        }
    }
    if let Some(out) = &args.out {
        let o = out.display();
        println!("wrote {o}/model and {o}/report.json");
    }
    Ok(())
}
