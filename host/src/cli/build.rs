//! `autoprune build`: candidate source → metric component.

use super::{BuildFlags, EXIT_VERDICT};
use std::path::PathBuf;

/// Arguments of `autoprune build`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The candidate source file (one `.rs` file using `autoprune_sdk`).
    pub source: PathBuf,
    /// Where to write the component (default: the source name with `.wasm`).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Print a JSON object instead of a human summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub flags: BuildFlags,
}

/// Run it; returns the exit status.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let source = std::fs::read_to_string(&args.source)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.source.display()))?;
    let builder = args.flags.builder()?;
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| args.source.with_extension("wasm"));
    match builder.build(&source) {
        Ok(built) => {
            std::fs::write(&out, &built.wasm)?;
            if args.json {
                let j = serde_json::json!({
                    "ok": true, "output": out, "bytes": built.wasm.len(),
                    "source_sha256": built.source_hash, "cached": built.cached,
                    "seconds": built.seconds, "warnings": built.warnings,
                });
                println!("{j}");
            } else {
                if !built.warnings.is_empty() {
                    eprintln!("{}", built.warnings.trim_end());
                }
                println!(
                    "built {} → {} ({} bytes, {:.3} s{}, source sha256 {})",
                    args.source.display(),
                    out.display(),
                    built.wasm.len(),
                    built.seconds,
                    if built.cached { ", cached" } else { "" },
                    &built.source_hash[..16]
                );
            }
            Ok(0)
        }
        Err(failure) => {
            if args.json {
                println!("{}", serde_json::json!({ "ok": false, "failure": failure }));
            } else {
                eprintln!("build failed — {failure}");
            }
            Ok(EXIT_VERDICT)
        }
    }
}
