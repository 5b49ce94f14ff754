//! LLaMA-family models on candle tensors: loading (GGUF, Hugging Face safetensors), the
//! block-by-block forward with capture points, full-sequence logits, and the tokenizer.
//!
//! All weights are f32 in Hugging Face layout (`[out, in]`, Q/K rows in `rotate_half`
//! order), whatever the file stored; quantized GGUF tensors are dequantized on load.

mod attention;
pub(crate) mod bf16;
mod block;
mod config;
pub mod diff;
mod gguf;
pub mod header;
mod hf;
pub(crate) mod kernels;
mod layers;
pub(crate) mod matmul;
mod random;
mod stream;
pub mod tokenizer;
mod weights;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub use block::{AttnShape, Block, Capture, GemmaParts};
pub use config::{Arch, Gemma3Params, ModelConfig};
pub use layers::{rope_tables, Linear, RmsNorm, Rope};
pub(crate) use layers::{with_cpu_f32, with_host_f32};
pub use matmul::{
    bench_linear, cpu_report, describe as cpu_matmul_backend, init as init_cpu_matmul, CpuReport,
};
pub use random::write_hf as write_random_hf;
pub use stream::BlockStream;
pub use tokenizer::Tokenizer;
pub use writer::{HfWriter, SaveDtype};

/// Errors of the model room. Candle errors are wrapped at the edge in [`ModelError::Tensor`].
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid model file (truncated, corrupt, wrong format).
    #[error("invalid model file {path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The architecture is not one of the LLaMA family members we run.
    #[error("unsupported architecture `{0}` (supported: llama, mistral, qwen2, gemma3)")]
    UnsupportedArchitecture(String),
    /// A feature of an otherwise supported model that we do not implement.
    #[error("unsupported model feature: {0}")]
    Unsupported(String),
    /// The configuration is missing values or is inconsistent.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A weight is missing or has the wrong shape.
    #[error("weight `{name}`: {reason}")]
    Weight {
        /// Checkpoint key of the weight.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor argument has the wrong shape, dtype or device.
    #[error("shape error: {0}")]
    Shape(String),
    /// An argument is out of range (token ids, sequence lengths).
    #[error("invalid input: {0}")]
    Input(String),
    /// The tokenizer cannot be built, loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The tokenizer produces ids the model has no embedding for.
    #[error("tokenizer does not fit the model: {0}")]
    TokenizerMismatch(String),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Arithmetic of the CPU linear layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands and accumulation (the reference's arithmetic; the default).
    #[default]
    F32,
    /// Operands rounded to bf16, products accumulated in f32 (AVX512-BF16 CPUs only). About
    /// twice the f32 speed; its effect on perplexity is measured, not assumed (README).
    Bf16,
}

impl Precision {
    /// Whether this CPU can run it (bf16 needs AVX512-BF16).
    pub fn available(self) -> bool {
        match self {
            Precision::F32 => true,
            Precision::Bf16 => bf16::available(),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!(
                "unknown precision `{other}` (expected f32 or bf16)"
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Result type of the model room.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A LLaMA-family causal language model with f32 weights.
#[derive(Debug, Clone)]
pub struct Model {
    /// Shape parameters.
    pub config: ModelConfig,
    /// Token embeddings `[vocab, hidden]`.
    pub embed_tokens: Tensor,
    /// The transformer blocks, in order.
    pub blocks: Vec<Block>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Output head `[vocab, hidden]`; shares `embed_tokens` when the embeddings are tied.
    pub lm_head: Linear,
}

impl Model {
    /// Load a model from a GGUF file or a Hugging Face directory (`config.json` plus
    /// `model.safetensors` or a sharded `model.safetensors.index.json`). A path to a file
    /// inside such a directory also works.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        match ModelFormat::detect(path)? {
            ModelFormat::Gguf(p) => Self::load_gguf(&p, device),
            ModelFormat::HfDir(d) => Self::load_hf(&d, device),
        }
    }

    /// Load a GGUF file, dequantizing every tensor to f32 and un-permuting Q/K rows.
    pub fn load_gguf(path: &Path, device: &Device) -> Result<Self> {
        guard_panics(path, || gguf::load(path, device))
    }

    /// Load a Hugging Face model directory (f32, f16 or bf16 safetensors → f32).
    pub fn load_hf(dir: &Path, device: &Device) -> Result<Self> {
        guard_panics(dir, || hf::load(dir, device))
    }

    /// A model with deterministic pseudo-random weights (for tests and benchmarks).
    pub fn random(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        random::model(config, seed, device)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// Position tables for sequences of up to `max_len` tokens on the model's device.
    pub fn rope(&self, max_len: usize) -> Result<Rope> {
        Rope::new(&self.config, max_len, self.device())
    }

    /// A `[batch, seq]` id tensor from equally long windows, checking every id against the
    /// vocabulary.
    pub fn ids_tensor(&self, windows: &[&[u32]]) -> Result<Tensor> {
        ids_tensor(windows, self.config.vocab_size, self.device())
    }

    /// Embed `[batch, seq]` u32 ids into `[batch, seq, hidden]` (Gemma: times √hidden).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        embed(&self.config, &self.embed_tokens, ids)
    }

    /// Final norm and output head: `[batch, seq, hidden]` → `[batch, seq, vocab]` logits.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(&self.norm.forward(hidden)?)
    }

    /// Full-sequence logits `[batch, seq, vocab]` for `[batch, seq]` u32 ids.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let rope = self.rope(ids.dim(1)?)?;
        let mut x = self.embed(ids)?;
        for block in &self.blocks {
            x = block.forward(&x, &rope, &mut |_, _| Ok(()))?;
        }
        self.logits(&x)
    }

    /// All weights under their Hugging Face checkpoint keys (`lm_head.weight` only when
    /// untied), in HF layout, ready for `safetensors` export.
    pub fn hf_tensors(&self) -> Vec<(String, Tensor)> {
        hf::named_tensors(self)
    }

    /// SHA-256 of the zero pattern of every tensor (names in order, one bit per element):
    /// two prunings with the same masks have the same hash.
    pub fn mask_sha256(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (name, t) in self.hf_tensors() {
            h.update(name.as_bytes());
            h.update(
                t.dims()
                    .iter()
                    .flat_map(|d| (*d as u64).to_le_bytes())
                    .collect::<Vec<u8>>(),
            );
            let v = t
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?;
            let mut bits = vec![0u8; v.len().div_ceil(8)];
            for (i, x) in v.iter().enumerate() {
                if *x == 0.0 {
                    bits[i / 8] |= 1 << (i % 8);
                }
            }
            h.update(&bits);
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Write `config.json` and `model.safetensors` (f32) into `dir`, creating it.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        hf::save(self, dir)
    }

    /// Set the arithmetic of every linear layer (blocks and output head). Attention, norms and
    /// statistics stay f32/f64. bf16 needs the model on the CPU and a CPU with AVX512-BF16.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        check_precision(precision, self.device())?;
        for block in &mut self.blocks {
            block.set_precision(precision);
        }
        self.lm_head.set_precision(precision);
        Ok(())
    }

    /// The arithmetic of the linear layers.
    pub fn precision(&self) -> Precision {
        self.lm_head.precision()
    }

    /// Number of weights in the blocks' linear layers (what pruning acts on).
    pub fn num_linear_weights(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(|b| b.linears().map(|(_, l)| l.weight().elem_count()))
            .sum()
    }
}

/// A `[batch, seq]` id tensor on `device` from equally long windows, checking every id
/// against a vocabulary of `vocab`.
pub(crate) fn ids_tensor(windows: &[&[u32]], vocab: usize, device: &Device) -> Result<Tensor> {
    let t = windows.first().map_or(0, |w| w.len());
    if t == 0 || windows.iter().any(|w| w.len() != t) {
        return Err(ModelError::Input(
            "windows must be non-empty and of equal length".into(),
        ));
    }
    if let Some(&bad) = windows
        .iter()
        .flat_map(|w| w.iter())
        .find(|&&id| id as usize >= vocab)
    {
        return Err(ModelError::Input(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let flat: Vec<u32> = windows.concat();
    Ok(Tensor::from_vec(flat, (windows.len(), t), device)?)
}

/// Embed `[batch, seq]` u32 ids with the table `[vocab, hidden]` of a model `cfg` describes
/// (Gemma: times √hidden, rounded to the activations' f32 as transformers does).
pub(crate) fn embed(cfg: &ModelConfig, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let x = table.index_select(&ids.flatten_all()?, 0)?;
    let x = x.reshape((b, t, cfg.hidden_size))?;
    if cfg.gemma.is_some() {
        let s = (cfg.hidden_size as f64).sqrt() as f32;
        return Ok((x * f64::from(s))?);
    }
    Ok(x)
}

/// Whether `precision` can run on `device` here.
fn check_precision(precision: Precision, device: &Device) -> Result<()> {
    if precision == Precision::Bf16 {
        if !device.is_cpu() {
            return Err(ModelError::Unsupported(
                "bf16 precision runs on the CPU only (CUDA runs f32)".into(),
            ));
        }
        if !bf16::available() {
            return Err(ModelError::Unsupported(
                "bf16 precision needs a CPU with AVX512-BF16 (this one has none); use f32".into(),
            ));
        }
    }
    Ok(())
}

/// How a model path is stored on disk.
enum ModelFormat {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl ModelFormat {
    fn detect(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.is_dir() {
            return Ok(ModelFormat::HfDir(path.to_path_buf()));
        }
        if gguf::has_magic(path)? {
            return Ok(ModelFormat::Gguf(path.to_path_buf()));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let in_hf_dir = name == "config.json"
            || name.ends_with(".safetensors")
            || name.ends_with(".safetensors.index.json");
        match path.parent() {
            Some(dir) if in_hf_dir => Ok(ModelFormat::HfDir(dir.to_path_buf())),
            _ => Err(ModelError::Format {
                path: path.to_path_buf(),
                reason: "neither a GGUF file nor a Hugging Face model directory".into(),
            }),
        }
    }
}

thread_local! {
    /// Set while this thread runs a guarded loader: its panics are reported as errors, not
    /// printed by the panic hook.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Install (once) a panic hook that stays silent for panics of a guarded loader and passes
/// every other panic to the previous hook.
fn quiet_guarded_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                previous(info);
            }
        }));
    });
}

/// Run a loader, turning a panic inside a third-party parser into a [`ModelError::Format`]:
/// a bad input file must never bring the host down, nor print a panic and its backtrace
/// (headers are validated first, so this is the second line of defence).
fn guard_panics<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    quiet_guarded_panics();
    let was = GUARDED.with(|g| g.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    result.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("panic while parsing");
        Err(ModelError::Format {
            path: path.to_path_buf(),
            reason: msg.to_string(),
        })
    })
}

/// Check that a weight has the expected shape before it is read.
pub(crate) fn expect_shape(name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(ModelError::Weight {
            name: name.to_string(),
            reason: format!("shape {got:?}, expected {want:?}"),
        });
    }
    Ok(())
}
