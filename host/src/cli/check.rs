//! `autoprune check`: the validation suite on synthetic layers (metrics) or synthetic
//! allocation requests (allocators).

use super::{BuildFlags, EXIT_VERDICT};
use autoprune::build::plugin;
use autoprune::check::{self, DEFAULT_SHAPES};
use autoprune::layer::LayerKind;
use autoprune::sandbox::{AllocatorPlugin, AnyPlugin, Failure, Plugin, Policy};
use autoprune::term::text;
use std::path::{Path, PathBuf};

/// Arguments of `autoprune check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A metric or allocator plugin: candidate source (`.rs`, built first) or a component
    /// (`.wasm`); the world is told from the component's exports.
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
    /// Seed of the synthetic layers (or allocation requests).
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

/// Load a policy file, or the defaults ([`plugin::load_policy`]).
pub fn load_policy(path: Option<&PathBuf>) -> anyhow::Result<Policy> {
    Ok(plugin::load_policy(path.map(PathBuf::as_path))?)
}

/// SHA-256 of a plugin file that loaded ([`plugin::plugin_sha256`]).
pub fn plugin_sha256(path: &Path, policy: &Policy) -> anyhow::Result<String> {
    Ok(plugin::plugin_sha256(path, policy)?)
}

/// A metric plugin from `.rs` or `.wasm` ([`plugin::load_plugin`]).
pub fn load_plugin(
    p: &Path,
    f: &BuildFlags,
    policy: &Policy,
) -> anyhow::Result<Result<Plugin, Failure>> {
    Ok(plugin::load_plugin(p, &f.options(), policy)?)
}

/// An allocator plugin from `.rs` or `.wasm` ([`plugin::load_allocator`]).
pub fn load_allocator(
    p: &Path,
    f: &BuildFlags,
    policy: &Policy,
) -> anyhow::Result<Result<AllocatorPlugin, Failure>> {
    Ok(plugin::load_allocator(p, &f.options(), policy)?)
}

/// Run it; returns the exit status.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let shapes = parse_shapes(&args.shapes)?;
    let policy = load_policy(args.policy.as_ref())?;
    let loaded = plugin::load_any(&args.metric, &args.flags.options(), &policy)?;
    let plugin = match loaded {
        Ok(p) => p,
        Err(failure) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "passed": false, "failure": failure })
                );
            } else {
                eprintln!(
                    "{}: FAIL — {}",
                    args.metric.display(),
                    text(&failure.to_string())
                );
            }
            return Ok(EXIT_VERDICT);
        }
    };
    let passed = match plugin {
        AnyPlugin::Metric(plugin) => {
            let report = check::run(&plugin, &shapes, args.seed);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", check::render(&report));
            }
            report.passed
        }
        AnyPlugin::Allocator(plugin) => {
            let report = check::run_allocator(&plugin, args.seed);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", check::render_allocator(&report));
            }
            report.passed
        }
    };
    Ok(if passed { 0 } else { EXIT_VERDICT })
}
