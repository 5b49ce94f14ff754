//! Flags and loading shared by `prune` and `eval`: the model, the texts and the windows.

use anyhow::Context;
use autoprune::build::default_cache;
use autoprune::calib::tokens::tokenize_cached;
use autoprune::data::{read_text, DataDir};
use autoprune::model::{Model, Precision, Tokenizer};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

/// Model and text flags. Without `--model`, `--calib` and `--eval`, the SOTU-512 preset with
/// SmolLM2-135M-Instruct from the data directory is used.
#[derive(Debug, clap::Args)]
pub struct ProtocolArgs {
    /// A GGUF file or a Hugging Face model directory (default: SmolLM2-135M-Instruct in the data dir).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Evaluation text file (default: SOTU speeches from 1990 on).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub seqlen: usize,
    /// Evaluation windows (the first N non-overlapping windows of the evaluation text).
    #[arg(long, default_value_t = 64)]
    pub eval_windows: usize,
    /// Windows per forward pass in evaluation (2 measured fastest on SmolLM2: larger batches
    /// make attention buffers big enough that every allocation maps fresh pages).
    #[arg(long, default_value_t = 2)]
    pub eval_batch: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Where the model runs: `cpu`, or `cuda` / `cuda:N` (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Arithmetic of the linear layers on the CPU: `f32` (the reference's) or `bf16` (operands
    /// rounded to bf16, f32 accumulation; needs AVX512-BF16; about 1.6× faster, and it moves
    /// perplexities by a measured amount, see the README).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

/// The candle device named by `--device`.
pub fn device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal: usize = n.strip_prefix("cuda:").unwrap_or("0").parse()?;
            if cfg!(feature = "cuda") {
                Ok(Device::new_cuda(ordinal)?)
            } else {
                anyhow::bail!("this autoprune was built without CUDA support; rebuild with `cargo build --release --features cuda`")
            }
        }
        other => anyhow::bail!("unknown device `{other}` (expected cpu, cuda or cuda:N)"),
    }
}

/// A loaded model with its tokenizer.
pub struct Loaded {
    /// The model.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Where it came from.
    pub path: PathBuf,
    /// Seconds to load.
    pub seconds: f64,
}

/// Load the model (default: SmolLM2) onto `device` with its tokenizer, checking they fit, and
/// set the arithmetic of its linear layers.
pub fn load_model(
    model: Option<&PathBuf>,
    device: &Device,
    precision: Precision,
) -> anyhow::Result<Loaded> {
    let t = std::time::Instant::now();
    let path = match model {
        Some(p) => p.clone(),
        None => DataDir::resolve().smollm2_gguf()?,
    };
    let mut model = Model::load(&path, device)
        .with_context(|| format!("loading the model {}", path.display()))?;
    model.set_precision(precision)?;
    let tokenizer = Tokenizer::for_model(&path)
        .with_context(|| format!("loading the tokenizer of {}", path.display()))?;
    tokenizer.check_fits(&model.config)?;
    Ok(Loaded {
        model,
        tokenizer,
        path,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// A token stream and where it came from.
pub struct Stream {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// File path or `sotu:<split>`.
    pub source: String,
}

/// Tokenize `file`, or the SOTU split `split` ("eval" or "calib") when no file is given.
pub fn stream(
    tokenizer: &Tokenizer,
    file: Option<&PathBuf>,
    split: &str,
) -> anyhow::Result<Stream> {
    let (text, source) = match file {
        Some(f) => (read_text(f)?, f.display().to_string()),
        None => {
            let s = DataDir::resolve().sotu_streams()?;
            (
                if split == "eval" { s.eval } else { s.calib },
                format!("sotu:{split}"),
            )
        }
    };
    let cache = default_cache().ok();
    let tokens = tokenize_cached(tokenizer, &text, cache.as_ref().map(|c| c.dir()))?;
    Ok(Stream { tokens, source })
}

/// A progress bar on stderr (hidden when `hidden`).
pub fn bar(len: usize, what: &str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
