//! What every command loads before it measures: the device, the model with its tokenizer, the
//! calibration and evaluation token streams, and the calibration windows.

use crate::build::default_cache;
use crate::calib::tokens::tokenize_cached;
use crate::calib::{check_offsets, window_offsets, Sampler};
use crate::data::{read_text, DataDir};
use crate::eval::PerplexityOptions;
use crate::model::{BlockStream, Model, Precision, Tokenizer};
use anyhow::Context;
use candle_core::Device;
use std::path::{Path, PathBuf};

/// The candle device named `cpu`, `cuda` or `cuda:N`.
pub fn device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal: usize = n.strip_prefix("cuda:").unwrap_or("0").parse()?;
            if cfg!(feature = "cuda") {
                // candle's error carries a backtrace when RUST_BACKTRACE is set: the first line
                // is the driver's answer.
                Device::new_cuda(ordinal).map_err(|e| {
                    let e = e.to_string();
                    anyhow::anyhow!(
                        "cannot open CUDA device {ordinal}: {} (is an NVIDIA driver installed and a GPU visible?)",
                        crate::term::line(e.lines().next().unwrap_or(""))
                    )
                })
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
    let path = model_path(model)?;
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

/// The model file `--model` names, or SmolLM2 from the data directory.
fn model_path(model: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    match model {
        Some(p) => Ok(p.clone()),
        None => Ok(DataDir::resolve().smollm2_gguf()?),
    }
}

/// A model opened for reading one block at a time, with its tokenizer.
pub struct Streamed {
    /// The model.
    pub model: BlockStream,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Where it came from.
    pub path: PathBuf,
    /// Seconds to open it and load the tokenizer.
    pub seconds: f64,
}

/// [`load_model`] for a streaming run: the model (default: SmolLM2) is opened, not loaded.
pub fn open_streamed(
    model: Option<&PathBuf>,
    device: &Device,
    precision: Precision,
) -> anyhow::Result<Streamed> {
    let t = std::time::Instant::now();
    let path = model_path(model)?;
    let mut model = BlockStream::open(&path, device)
        .with_context(|| format!("opening the model {}", path.display()))?;
    model.set_precision(precision)?;
    let tokenizer = Tokenizer::for_model(&path)
        .with_context(|| format!("loading the tokenizer of {}", path.display()))?;
    tokenizer.check_fits(model.config())?;
    Ok(Streamed {
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

/// The model, texts and windows of a run (the protocol flags).
#[derive(Debug, Clone)]
pub struct ProtocolSpec {
    /// Model file or directory (`None`: SmolLM2 from the data directory).
    pub model: Option<PathBuf>,
    /// Evaluation text (`None`: SOTU speeches from 1990 on).
    pub eval: Option<PathBuf>,
    /// Tokens per window.
    pub seq_len: usize,
    /// Evaluation windows.
    pub eval_windows: usize,
    /// Windows per forward pass in evaluation.
    pub eval_batch: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Arithmetic of the linear layers.
    pub precision: Precision,
    /// Where statistics, Hessians and SparseGPT's update run (`Auto`: with tensor operations
    /// for a model on a GPU, on the host otherwise).
    pub device_path: crate::calib::DevicePath,
}

impl ProtocolSpec {
    /// How perplexity is measured under this protocol.
    pub fn perplexity_options(&self) -> PerplexityOptions {
        PerplexityOptions {
            seq_len: self.seq_len,
            windows: self.eval_windows,
            batch: self.eval_batch,
        }
    }
}

/// Where the calibration windows come from.
#[derive(Debug, Clone, Default)]
pub struct CalibSpec {
    /// Calibration text file (`None`: SOTU speeches before 1990).
    pub file: Option<PathBuf>,
    /// Number of windows.
    pub windows: usize,
    /// Placement: [`Sampler::Even`] or [`Sampler::Random`] (ignored when `offsets` is given).
    pub sampler: Option<Sampler>,
    /// Explicit window offsets (overrides `sampler` and `windows` when not empty).
    pub offsets: Vec<usize>,
}

/// A calibration stream and the windows chosen in it.
pub struct Calibration {
    /// The stream.
    pub stream: Stream,
    /// How the windows were placed.
    pub sampler: Sampler,
    /// Their offsets.
    pub offsets: Vec<usize>,
}

impl Calibration {
    /// Tokenize the calibration text and place the windows of `seq_len` tokens.
    pub fn load(spec: &CalibSpec, tokenizer: &Tokenizer, seq_len: usize) -> anyhow::Result<Self> {
        let stream = stream(tokenizer, spec.file.as_ref(), "calib")?;
        let (sampler, offsets) = if spec.offsets.is_empty() {
            let sampler = spec.sampler.unwrap_or(Sampler::Even);
            let offsets = window_offsets(stream.tokens.len(), spec.windows, seq_len, sampler)?;
            (sampler, offsets)
        } else {
            check_offsets(stream.tokens.len(), &spec.offsets, seq_len)?;
            (Sampler::Given, spec.offsets.clone())
        };
        Ok(Self {
            stream,
            sampler,
            offsets,
        })
    }

    /// The windows as token slices.
    pub fn windows(&self, seq_len: usize) -> Vec<&[u32]> {
        crate::calib::windows(&self.stream.tokens, &self.offsets, seq_len)
    }
}

/// The file name of `path` for titles (empty when it has none).
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default()
}
