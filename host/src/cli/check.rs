//! `autoprune check`: the validation suite on synthetic layers.

use super::{BuildFlags, EXIT_VERDICT};
use autoprune::build::{default_cache, is_source};
use autoprune::check::{self, DEFAULT_SHAPES};
use autoprune::layer::LayerKind;
use autoprune::sandbox::{Failure, Plugin, Policy};
use std::path::PathBuf;

/// Arguments of `autoprune check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A metric: candidate source (`.rs`, built first) or a component (`.wasm`).
    pub metric: PathBuf,
    /// Print a JSON report instead of a human summary.
    #[arg(long)]
    pub json: bool,
    /// Layer shapes to test, as `ROWSxCOLS` (default: 576x576,1536x576,4096x4096,11008x4096).
    #[arg(long, value_delimiter = ',')]
    pub shapes: Vec<String>,
    /// A JSON file with sandbox limits (see `Policy`); unknown fields are refused.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Seed of the synthetic layers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub flags: BuildFlags,
}

fn parse_shapes(specs: &[String]) -> anyhow::Result<Vec<(usize, usize, LayerKind)>> {
    if specs.is_empty() {
        return Ok(DEFAULT_SHAPES.to_vec());
    }
    specs
        .iter()
        .map(|s| {
            let (r, c) = s
                .split_once('x')
                .ok_or_else(|| anyhow::anyhow!("shape `{s}` is not ROWSxCOLS"))?;
            let (r, c): (usize, usize) = (r.trim().parse()?, c.trim().parse()?);
            anyhow::ensure!(
                r > 0 && c > 0 && r * c <= 1 << 28,
                "shape `{s}` is empty or too large"
            );
            Ok((r, c, LayerKind::Other))
        })
        .collect()
}

/// Load a policy file, or the defaults.
pub fn load_policy(path: Option<&PathBuf>) -> anyhow::Result<Policy> {
    match path {
        None => Ok(Policy::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read policy {}: {e}", p.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("invalid policy {}: {e}", p.display()))
        }
    }
}

/// Load a plugin from `.rs` (building it) or `.wasm`; a candidate's failure is `Err(Failure)`.
pub fn load_plugin(
    path: &PathBuf,
    flags: &BuildFlags,
    policy: &Policy,
) -> anyhow::Result<Result<Plugin, Failure>> {
    let cache = default_cache()?;
    let bytes = if is_source(path) {
        let source = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        match flags.builder()?.build(&source) {
            Ok(b) => b.wasm,
            Err(f) => return Ok(Err(f)),
        }
    } else {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
    };
    Ok(Plugin::load(&bytes, policy, Some(&cache)))
}

/// Run it; returns the exit status.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let shapes = parse_shapes(&args.shapes)?;
    let policy = load_policy(args.policy.as_ref())?;
    let plugin = match load_plugin(&args.metric, &args.flags, &policy)? {
        Ok(p) => p,
        Err(failure) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "passed": false, "failure": failure })
                );
            } else {
                eprintln!("{}: FAIL — {failure}", args.metric.display());
            }
            return Ok(EXIT_VERDICT);
        }
    };
    let report = check::run(&plugin, &shapes, args.seed);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", check::render(&report));
    }
    Ok(if report.passed { 0 } else { EXIT_VERDICT })
}
