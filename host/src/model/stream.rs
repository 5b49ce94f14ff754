//! A model read one part at a time: the embeddings, block *i*, the final norm and head, each
//! loaded from the file when asked for and owned by the caller, who drops it when done. What
//! a streaming run holds is therefore one block (plus its activations), whatever the depth.
//!
//! GGUF tensors are read and dequantized one at a time through a buffered file reader;
//! safetensors tensors are read with positioned reads straight into f32 (no half-precision
//! copy, no mapped pages that would stay resident).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::weights::{self, WeightSource};
use super::{
    embed, gguf, guard_panics, hf, ids_tensor, Block, Linear, ModelConfig, ModelFormat, Precision,
    Result, RmsNorm, Rope,
};

/// A model file opened for block-by-block reading.
pub struct BlockStream {
    config: ModelConfig,
    path: PathBuf,
    source: Box<dyn WeightSource + Send>,
    device: Device,
    precision: Precision,
}

impl BlockStream {
    /// Open a GGUF file or a Hugging Face directory (as [`super::Model::load`] accepts) and
    /// read its configuration; no weight is read yet.
    pub fn open(path: &Path, device: &Device) -> Result<Self> {
        let (config, source): (ModelConfig, Box<dyn WeightSource + Send>) =
            match ModelFormat::detect(path)? {
                ModelFormat::Gguf(p) => {
                    let (cfg, src) = guard_panics(&p, || gguf::open_source(&p))?;
                    (cfg, Box::new(src))
                }
                ModelFormat::HfDir(d) => {
                    let (cfg, src) = guard_panics(&d, || hf::open_files(&d))?;
                    (cfg, Box::new(src))
                }
            };
        config.validate()?;
        Ok(BlockStream {
            config,
            path: path.to_path_buf(),
            source,
            device: device.clone(),
            precision: Precision::F32,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Set the arithmetic of the linear layers of every part loaded from now on.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        super::check_precision(precision, &self.device)?;
        self.precision = precision;
        Ok(())
    }

    /// Position tables for sequences of up to `max_len` tokens.
    pub fn rope(&self, max_len: usize) -> Result<Rope> {
        Rope::new(&self.config, max_len, &self.device)
    }

    fn read<T>(
        &mut self,
        f: impl FnOnce(&ModelConfig, &mut dyn WeightSource, &Device) -> Result<T>,
    ) -> Result<T> {
        let (cfg, src, device) = (&self.config, &mut *self.source, &self.device);
        guard_panics(&self.path, || f(cfg, src, device))
    }

    /// The token embeddings `[vocab, hidden]`.
    pub fn embeddings(&mut self) -> Result<Tensor> {
        self.read(weights::embeddings)
    }

    /// Embed equally long `windows` with `table` (from [`Self::embeddings`]):
    /// `[windows, seq, hidden]`, as [`super::Model::embed`] does.
    pub fn embed(&self, table: &Tensor, windows: &[&[u32]]) -> Result<Tensor> {
        let ids = ids_tensor(windows, self.config.vocab_size, &self.device)?;
        embed(&self.config, table, &ids)
    }

    /// Block `i`.
    pub fn block(&mut self, i: usize) -> Result<Block> {
        if i >= self.config.num_layers {
            return Err(super::ModelError::Input(format!(
                "block {i} of a model with {} blocks",
                self.config.num_layers
            )));
        }
        let mut b = self.read(|cfg, src, device| weights::block(cfg, src, i, device))?;
        b.set_precision(self.precision);
        Ok(b)
    }

    /// The final norm.
    pub fn final_norm(&mut self) -> Result<RmsNorm> {
        let width = self.config.hidden_size;
        self.read(|cfg, src, device| weights::norm(cfg, src, hf::NORM, width, device))
    }

    /// The output head (the embeddings again when they are tied).
    pub fn head(&mut self) -> Result<Linear> {
        let w = if self.config.tie_word_embeddings {
            self.embeddings()?
        } else {
            self.read(weights::untied_head)?
        };
        Linear::new(w, None)?.with_precision(self.precision)
    }
}
