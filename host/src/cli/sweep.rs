//! `autoprune sweep`: a grid of metrics × sparsities × allocations under one protocol, with a
//! markdown/JSON table and an SVG plot of perplexity against sparsity (the work is
//! [`autoprune::run::sweep`]).

use super::check::{load_plugin, plugin_sha256};
use super::flags::{CalibFlags, SandboxFlags};
use super::protocol::{Bars, ProtocolArgs};
use super::{Exit, EXIT_VERDICT};
use autoprune::alloc::{Allocation, Granularity, OwlParams, SdsaParams, SkewSource};
use autoprune::prune::mask::Pattern;
use autoprune::run::sweep::{SweepMetric, SweepSpec};
use autoprune::term::{line, text};
use std::path::PathBuf;

/// Arguments of `autoprune sweep`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Metric sources or components (repeat, or separate with commas).
    #[arg(long, required = true, value_delimiter = ',')]
    pub metric: Vec<PathBuf>,
    /// Target sparsities.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.7,0.8")]
    pub sparsities: Vec<f64>,
    /// Allocations: `uniform`, `owl`, `sdsa` (each OWL/SDSA entry expands over the
    /// hyperparameter lists below).
    #[arg(long, value_delimiter = ',', default_value = "uniform,owl,sdsa")]
    pub allocations: Vec<String>,
    /// What gets one sparsity: `block` or `layer`.
    #[arg(long, default_value = "block")]
    pub granularity: Granularity,
    /// OWL M values (3, 5, 7 or 10).
    #[arg(long, value_delimiter = ',', default_value = "5")]
    pub owl_m: Vec<f64>,
    /// OWL λ values.
    #[arg(long, value_delimiter = ',', default_value = "0.08")]
    pub owl_lambda: Vec<f64>,
    /// SDSA temperatures.
    #[arg(long, value_delimiter = ',', default_values_t = [SdsaParams::default().temperature])]
    pub sdsa_temperature: Vec<f64>,
    /// SDSA deltas.
    #[arg(long, value_delimiter = ',', default_values_t = [SdsaParams::default().delta])]
    pub sdsa_delta: Vec<f64>,
    /// SDSA skewness source: `weights` (default), `scores` or `wanda`.
    #[arg(long, default_value = "weights")]
    pub sdsa_source: SkewSource,
    /// Comparison group: `row`, `layer` or `layer-exact`.
    #[arg(long, default_value = "row")]
    pub pattern: Pattern,
    #[command(flatten)]
    pub calib: CalibFlags,
    /// Calibration windows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub calib_batch: usize,
    /// Measure perplexity on N held-out windows of the *calibration* stream (halfway between
    /// calibration windows) instead of the evaluation text: for tuning hyperparameters
    /// without looking at the evaluation windows.
    #[arg(long)]
    pub validation: Option<usize>,
    /// Output folder: `cells.jsonl`, `table.md`, `table.json`, and the plot.
    #[arg(long, default_value = "runs/sweep")]
    pub out: PathBuf,
    /// The plot (SVG; default `<out>/sweep.svg`).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub tasks: super::eval::TaskFlags,
    #[command(flatten)]
    pub sandbox: SandboxFlags,
}

fn rules(args: &Args) -> anyhow::Result<Vec<Allocation>> {
    let mut out = Vec::new();
    for name in &args.allocations {
        match name.as_str() {
            "uniform" => out.push(Allocation::Uniform),
            "owl" => {
                for &m in &args.owl_m {
                    for &lambda in &args.owl_lambda {
                        out.push(Allocation::Owl(OwlParams { m, lambda }));
                    }
                }
            }
            "sdsa" => {
                for &temperature in &args.sdsa_temperature {
                    for &delta in &args.sdsa_delta {
                        out.push(Allocation::Sdsa(SdsaParams {
                            temperature,
                            delta,
                            source: args.sdsa_source,
                        }));
                    }
                }
            }
            other => anyhow::bail!("unknown allocation `{other}` in a sweep (uniform, owl, sdsa)"),
        }
    }
    Ok(out)
}

/// Run it.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let json = args.protocol.json;
    let rules = rules(&args)?;
    let mut plugins = Vec::new();
    let mut spec = SweepSpec {
        metrics: Vec::new(),
        sparsities: args.sparsities.clone(),
        rules,
        granularity: args.granularity,
        pattern: args.pattern,
        protocol: args.protocol.spec(),
        calib: args.calib.calib.clone(),
        calib_windows: args.calib.calib_windows,
        calib_batch: args.calib_batch,
        validation: args.validation,
        tasks: args.tasks.spec(),
        plot: args
            .plot
            .clone()
            .unwrap_or_else(|| args.out.join("sweep.svg")),
        out: args.out.clone(),
    };
    autoprune::run::sweep::check(&spec)?;
    let policy = args.sandbox.policy()?;
    // Metrics (built once).
    for path in &args.metric {
        match load_plugin(path, &args.sandbox.build, &policy)? {
            Ok(pl) => plugins.push((pl, plugin_sha256(path, &policy)?)),
            Err(f) => {
                let f = text(&f.to_string()).into_owned();
                eprintln!("the metric {} failed before the sweep: {f}", path.display());
                return Ok(EXIT_VERDICT);
            }
        }
    }
    // The name is the plugin's word: escaped once here, then shown in tables and plots.
    spec.metrics = plugins
        .iter()
        .map(|(pl, sha256)| SweepMetric {
            name: line(&pl.info().name).into_owned(),
            sha256: sha256.clone(),
            plugin: pl,
        })
        .collect();
    let result = autoprune::run::sweep::run(&spec, &mut Bars::new(json))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result.cells)?);
    } else {
        let (out, plot) = (args.out.display(), spec.plot.display());
        println!("{}", result.table);
        println!("wrote {out}/table.md, {out}/table.json, {plot}");
    }
    Ok(Exit::Success.into())
}
