//! `autoprune check`: the validation suite on synthetic layers (metrics) or synthetic
//! allocation requests (allocators).

use super::{BuildFlags, EXIT_VERDICT};
use autoprune::build::{default_cache, is_source, BuildOptions};
use autoprune::check::{self, DEFAULT_SHAPES};
use autoprune::files::{read_limited, FileError};
use autoprune::layer::LayerKind;
use autoprune::sandbox::sha256_hex;
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

/// The bytes of a plugin file, read with the limit of its kind (a source at most the
/// builder's `max_source_bytes`, a component at most the policy's `max_component_bytes`): the
/// size is checked before anything is read. A file over its limit is the candidate's verdict
/// (`Ok(Err)`: `compile` for a source, `rejected` for a component).
pub fn read_plugin_file(path: &Path, policy: &Policy) -> anyhow::Result<Result<Vec<u8>, Failure>> {
    let source = is_source(path);
    let limit = if source {
        BuildOptions::default().max_source_bytes as u64
    } else {
        policy.max_component_bytes
    };
    match read_limited(path, limit) {
        Ok(bytes) => Ok(Ok(bytes)),
        Err(e @ FileError::TooLarge { .. }) if source => Ok(Err(Failure::Compile {
            diagnostics: e.to_string(),
        })),
        Err(e @ FileError::TooLarge { .. }) => Ok(Err(Failure::Rejected {
            reason: e.to_string(),
        })),
        Err(e) => Err(e.into()),
    }
}

/// SHA-256 of a plugin file that loaded (for reports), read with its limit.
pub fn plugin_sha256(path: &Path, policy: &Policy) -> anyhow::Result<String> {
    match read_plugin_file(path, policy)? {
        Ok(bytes) => Ok(sha256_hex(&bytes)),
        Err(f) => Err(anyhow::anyhow!("{}: {f}", path.display())),
    }
}

/// The component bytes of `path`: `.rs` source is built (a compile failure is `Ok(Err)`),
/// anything else is read as a component.
fn component_bytes(
    path: &Path,
    flags: &BuildFlags,
    policy: &Policy,
) -> anyhow::Result<Result<Vec<u8>, Failure>> {
    let bytes = match read_plugin_file(path, policy)? {
        Ok(b) => b,
        Err(f) => return Ok(Err(f)),
    };
    if !is_source(path) {
        return Ok(Ok(bytes));
    }
    let source = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
    Ok(flags.builder()?.build(&source).map(|b| b.wasm))
}

/// Load a plugin from `.rs` (building it) or `.wasm`; a candidate's failure is `Err(Failure)`.
pub fn load_plugin(
    path: &Path,
    flags: &BuildFlags,
    policy: &Policy,
) -> anyhow::Result<Result<Plugin, Failure>> {
    let cache = default_cache()?;
    Ok(component_bytes(path, flags, policy)?.and_then(|b| Plugin::load(&b, policy, Some(&cache))))
}

/// Load a plugin of either world from `.rs` (building it) or `.wasm`; a candidate's failure
/// is `Err(Failure)`.
pub fn load_any(
    path: &Path,
    flags: &BuildFlags,
    policy: &Policy,
) -> anyhow::Result<Result<AnyPlugin, Failure>> {
    let cache = default_cache()?;
    Ok(component_bytes(path, flags, policy)?
        .and_then(|b| AnyPlugin::load(&b, policy, Some(&cache))))
}

/// Load an allocator plugin (world `autoprune:metric/allocator`) from `.rs` (building it) or
/// `.wasm`, for `autoprune prune --allocation my_allocator.{rs,wasm}`. A candidate's failure
/// is `Err(Failure)`; a metric component is `Err(Failure::Rejected)`.
pub fn load_allocator(
    path: &Path,
    flags: &BuildFlags,
    policy: &Policy,
) -> anyhow::Result<Result<AllocatorPlugin, Failure>> {
    Ok(load_any(path, flags, policy)?.and_then(|p| match p {
        AnyPlugin::Allocator(a) => Ok(a),
        AnyPlugin::Metric(m) => Err(Failure::Rejected {
            reason: format!(
                "{} is a metric (`{}`), not an allocator: it exports `score`, not `allocate`",
                path.display(),
                m.info().name
            ),
        }),
    }))
}

/// Run it; returns the exit status.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let shapes = parse_shapes(&args.shapes)?;
    let policy = load_policy(args.policy.as_ref())?;
    let plugin = match load_any(&args.metric, &args.flags, &policy)? {
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
