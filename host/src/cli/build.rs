//! `autoprune build`: candidate source → metric component.

use super::{BuildFlags, EXIT_VERDICT};
use autoprune::term::text;
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
    let builder = args.flags.builder()?;
    let limit = builder.options().max_source_bytes as u64;
    let source = match autoprune::files::read_text_limited(&args.source, limit) {
        Ok(s) => s,
        Err(e @ autoprune::files::FileError::TooLarge { .. }) => {
            eprintln!("build failed — {e}");
            return Ok(EXIT_VERDICT);
        }
        Err(e) => return Err(e.into()),
    };
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
                    eprintln!("{}", text(built.warnings.trim_end()));
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
                eprintln!("build failed — {}", text(&failure.to_string()));
            }
            Ok(EXIT_VERDICT)
        }
    }
}
