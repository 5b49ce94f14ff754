//! The protocol flags (model, texts, windows, device, arithmetic) and progress bars on stderr.

use autoprune::calib::DevicePath;
use autoprune::model::Precision;
pub use autoprune::setup::device;
use autoprune::setup::ProtocolSpec;
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
    /// Where activation statistics, Hessians and SparseGPT's update are computed: `auto`
    /// (with tensor operations on the GPU for a model there, on the host for one on the CPU),
    /// `tensor` (tensor operations wherever the model is; on the CPU, how the GPU path is
    /// checked without a GPU) or `host`.
    #[arg(long, default_value = "auto")]
    pub device_path: DevicePath,
}

impl ProtocolArgs {
    /// Refuse a `--device-path` other than `auto` where `command` does not take it (it
    /// prunes nothing, or it measures with the default path).
    pub fn only_auto_path(&self, command: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.device_path == DevicePath::Auto,
            "`{command}` always uses --device-path auto; the flag is for prune and sweep"
        );
        Ok(())
    }

    /// The library's description of these flags.
    pub fn spec(&self) -> ProtocolSpec {
        ProtocolSpec {
            model: self.model.clone(),
            eval: self.eval.clone(),
            seq_len: self.seqlen,
            eval_windows: self.eval_windows,
            eval_batch: self.eval_batch,
            device: self.device.clone(),
            precision: self.precision,
            device_path: self.device_path,
        }
    }
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

/// Progress bars on stderr for the library's [`autoprune::progress::Progress`]: one bar at a
/// time, hidden (and notes silent) under `--json`.
pub struct Bars {
    hidden: bool,
    pb: Option<ProgressBar>,
}

impl Bars {
    /// Bars that show unless `hidden`.
    pub fn new(hidden: bool) -> Self {
        Self { hidden, pb: None }
    }
}

impl autoprune::progress::Progress for Bars {
    fn begin(&mut self, what: &str, len: usize) {
        match &self.pb {
            Some(pb) => {
                pb.set_message(what.to_string());
                pb.set_length(len as u64);
            }
            None => self.pb = Some(bar(len, what, self.hidden)),
        }
    }

    fn advance(&mut self, done: usize, len: usize) {
        if let Some(pb) = &self.pb {
            pb.set_length(len as u64);
            pb.set_position(done as u64);
        }
    }

    fn end(&mut self) {
        if let Some(pb) = self.pb.take() {
            pb.finish_and_clear();
        }
    }

    fn note(&mut self, line: &str) {
        if !self.hidden {
            eprintln!("{line}");
        }
    }
}
