//! Writing a Hugging Face model directory one tensor at a time: `config.json` and a
//! `model.safetensors` whose tensors arrive in any number of calls, so a pruned model is
//! written block by block and never held whole.
//!
//! The safetensors header (a JSON map of name → dtype, shape, byte range) comes first in the
//! file but is only complete at the end: a region sized for the model's tensors is reserved
//! when the file is created and filled at [`HfWriter::finish`], padded with spaces as the
//! format allows. Data is written to `model.safetensors.partial` and renamed when the header
//! is in place, so a run killed half-way leaves no file that looks like a model.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[cfg(test)]
use candle_core::DType;
use candle_core::Tensor;

use super::hf::{block_tensors, CONFIG, EMBED, HEAD, NORM, SINGLE};
use super::{with_host_f32, Block, Linear, ModelConfig, ModelError, Result, RmsNorm};

/// The element type of written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    /// 32-bit floats: exactly the weights the host computed with (the default).
    #[default]
    F32,
    /// IEEE half precision: half the size; pruned zeros stay exact zeros.
    F16,
    /// bfloat16: half the size, f32's range.
    Bf16,
}

impl SaveDtype {
    #[cfg(test)]
    fn dtype(self) -> DType {
        match self {
            SaveDtype::F32 => DType::F32,
            SaveDtype::F16 => DType::F16,
            SaveDtype::Bf16 => DType::BF16,
        }
    }

    /// The safetensors name of the type.
    fn name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "F32",
            SaveDtype::F16 => "F16",
            SaveDtype::Bf16 => "BF16",
        }
    }
}

impl std::str::FromStr for SaveDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(SaveDtype::F32),
            "f16" => Ok(SaveDtype::F16),
            "bf16" => Ok(SaveDtype::Bf16),
            other => Err(format!(
                "unknown dtype `{other}` (expected f32, f16 or bf16)"
            )),
        }
    }
}

/// Header bytes reserved per tensor. Why 256: our longest entry,
/// `"model.layers.NNNN.post_feedforward_layernorm.weight":{"dtype":"BF16","shape":[N],
/// "data_offsets":[N,N]}` with 20-digit numbers, is under 160 bytes.
const HEADER_PER_TENSOR: usize = 256;

/// Elements converted per write (4 MiB of f32).
const WRITE_CHUNK: usize = 1 << 20;

/// One written tensor.
struct Entry {
    name: String,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// A model directory being written (see the module docs).
pub struct HfWriter {
    dir: PathBuf,
    partial: PathBuf,
    /// The open `.partial` file; `None` once finished or after a failed write (a writer that
    /// failed accepts nothing more: the data area would have a gap).
    file: Option<BufWriter<File>>,
    /// Most tensors the reserved header holds.
    capacity: usize,
    dtype: SaveDtype,
    /// Bytes reserved for the header (a multiple of 8).
    reserved: usize,
    entries: Vec<Entry>,
    /// Bytes of tensor data written so far.
    written: u64,
    /// Whether the file got its name (else dropping the writer deletes the partial file).
    finished: bool,
}

impl Drop for HfWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

// Tensors are written from the host's memory as they lie; safetensors is little-endian.
#[cfg(not(target_endian = "little"))]
compile_error!("the safetensors writer assumes a little-endian host");

impl HfWriter {
    /// Create `dir` (and parents) with the `config.json` of `config`, and start its
    /// `model.safetensors` with weights stored as `dtype`.
    pub fn create(dir: &Path, config: &ModelConfig, dtype: SaveDtype) -> Result<Self> {
        let io = |source| ModelError::Write {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let json = serde_json::to_string_pretty(&config.to_hf_json())
            .map_err(|e| ModelError::Config(e.to_string()))?;
        std::fs::write(dir.join(CONFIG), json).map_err(io)?;
        config.validate()?;
        // Embeddings, final norm, head, and at most 16 weights and biases per block (the
        // block count is bounded by `validate`).
        let capacity = 3 + 16 * config.num_layers;
        let reserved = (capacity * HEADER_PER_TENSOR + 256).next_multiple_of(8);
        let partial = dir.join(format!("{SINGLE}.partial"));
        let mut file = BufWriter::with_capacity(
            8 << 20,
            File::create(&partial).map_err(|source| ModelError::Write {
                path: partial.clone(),
                source,
            })?,
        );
        let at = 8 + reserved as u64;
        file.seek(SeekFrom::Start(at))
            .map_err(|source| ModelError::Write {
                path: partial.clone(),
                source,
            })?;
        Ok(HfWriter {
            dir: dir.to_path_buf(),
            partial,
            file: Some(file),
            capacity,
            dtype,
            reserved,
            entries: Vec::new(),
            written: 0,
            finished: false,
        })
    }

    /// Append tensor `name` (any float dtype; stored as the writer's dtype).
    pub fn put(&mut self, name: &str, t: &Tensor) -> Result<()> {
        if self.entries.iter().any(|e| e.name == name) {
            return Err(ModelError::Input(format!("`{name}` is written twice")));
        }
        if self.entries.len() >= self.capacity {
            return Err(ModelError::Input(format!(
                "more than {} tensors for the model's header",
                self.capacity
            )));
        }
        let shape = t.dims().to_vec();
        // Converted a chunk at a time from the f32 weights: writing costs no second copy.
        let dtype = self.dtype;
        let bytes = with_host_f32(t, |xs| -> Result<u64> {
            let mut n = 0;
            let mut buf: Vec<u16> = Vec::new();
            for chunk in xs.chunks(WRITE_CHUNK) {
                n += match dtype {
                    SaveDtype::F32 => self.write(bytemuck::cast_slice(chunk))?,
                    SaveDtype::F16 => {
                        buf.clear();
                        buf.extend(chunk.iter().map(|&x| half::f16::from_f32(x).to_bits()));
                        self.write(bytemuck::cast_slice(&buf))?
                    }
                    SaveDtype::Bf16 => {
                        buf.clear();
                        buf.extend(chunk.iter().map(|&x| half::bf16::from_f32(x).to_bits()));
                        self.write(bytemuck::cast_slice(&buf))?
                    }
                };
            }
            Ok(n)
        })??;
        let start = self.written;
        self.written += bytes;
        self.entries.push(Entry {
            name: name.to_string(),
            shape,
            start,
            end: self.written,
        });
        Ok(())
    }

    /// Append the token embeddings.
    pub fn put_embeddings(&mut self, table: &Tensor) -> Result<()> {
        self.put(EMBED, table)
    }

    /// Append every weight of block `i`.
    pub fn put_block(&mut self, i: usize, block: &Block) -> Result<()> {
        for (name, t) in block_tensors(i, block) {
            self.put(&name, &t)?;
        }
        Ok(())
    }

    /// Append the final norm and, for a model with untied embeddings, the output head.
    pub fn put_final(&mut self, norm: &RmsNorm, untied_head: Option<&Linear>) -> Result<()> {
        self.put(NORM, norm.weight())?;
        match untied_head {
            Some(h) => self.put(HEAD, h.weight()),
            None => Ok(()),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<u64> {
        let file = self.file.as_mut().ok_or_else(|| {
            ModelError::Input(format!(
                "{} failed earlier; nothing more is written",
                self.partial.display()
            ))
        })?;
        if let Err(source) = file.write_all(bytes) {
            self.file = None;
            return Err(ModelError::Write {
                path: self.partial.clone(),
                source,
            });
        }
        Ok(bytes.len() as u64)
    }

    /// Bytes of tensor data written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Write the header, flush to disk and give the file its name.
    pub fn finish(mut self) -> Result<()> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
        for e in &self.entries {
            header.insert(
                e.name.clone(),
                serde_json::json!({
                    "dtype": self.dtype.name(),
                    "shape": e.shape,
                    "data_offsets": [e.start, e.end],
                }),
            );
        }
        let mut json =
            serde_json::to_vec(&header).map_err(|e| ModelError::Config(e.to_string()))?;
        if json.len() > self.reserved {
            return Err(ModelError::Input(format!(
                "the safetensors header needs {} bytes, {} were reserved for {} tensors",
                json.len(),
                self.reserved,
                self.entries.len()
            )));
        }
        json.resize(self.reserved, b' ');
        let io = |source| ModelError::Write {
            path: self.partial.clone(),
            source,
        };
        let file = self.file.take().ok_or_else(|| {
            ModelError::Input(format!(
                "{} failed earlier; not finished",
                self.partial.display()
            ))
        })?;
        let mut file = file.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&(self.reserved as u64).to_le_bytes())
            .map_err(io)?;
        file.write_all(&json).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        let done = self.dir.join(SINGLE);
        std::fs::rename(&self.partial, &done)
            .map_err(|source| ModelError::Write { path: done, source })?;
        self.finished = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, Model};
    use candle_core::Device;

    /// Written in pieces, read back by our loader and by candle's safetensors reader: the
    /// same weights, in every dtype. A vocabulary of 70,000 × 64 makes the embeddings cross
    /// the read and write chunks (4 Mi and 1 Mi elements) with a remainder.
    #[test]
    fn written_models_load_back() {
        let cfg = ModelConfig {
            vocab_size: 70_000,
            ..ModelConfig::tiny(Arch::Qwen2)
        };
        let m = Model::random(&cfg, 4, &Device::Cpu).unwrap();
        for dtype in [SaveDtype::F32, SaveDtype::F16, SaveDtype::Bf16] {
            let dir = tempfile::tempdir().unwrap();
            let mut w = HfWriter::create(dir.path(), &m.config, dtype).unwrap();
            // Not finished yet: no model file under its real name.
            for (name, t) in crate::model::hf::named_tensors(&m) {
                w.put(&name, &t).unwrap();
            }
            assert!(!dir.path().join(SINGLE).exists());
            assert!(w.put(crate::model::hf::EMBED, &m.embed_tokens).is_err());
            w.finish().unwrap();
            assert!(!dir.path().join(format!("{SINGLE}.partial")).exists());
            let back = Model::load(dir.path(), &Device::Cpu).unwrap();
            let candle =
                candle_core::safetensors::load(dir.path().join(SINGLE), &Device::Cpu).unwrap();
            assert_eq!(candle.len(), crate::model::hf::named_tensors(&m).len());
            for (n, t) in crate::model::hf::named_tensors(&back) {
                let c = candle[&n].to_dtype(DType::F32).unwrap();
                let diff = (c - t).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(
                    diff.to_scalar::<f32>().unwrap(),
                    0.0,
                    "{n} ({dtype:?}, candle)"
                );
            }
            for ((n, a), (_, b)) in crate::model::hf::named_tensors(&m)
                .iter()
                .zip(crate::model::hf::named_tensors(&back))
            {
                let a = a
                    .to_dtype(dtype.dtype())
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{n} ({dtype:?})");
            }
        }
    }

    /// A run that stops before `finish` leaves only the `.partial` file.
    #[test]
    fn an_unfinished_model_has_no_model_file() {
        let m = Model::random(&ModelConfig::tiny(Arch::Llama), 4, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut w = HfWriter::create(dir.path(), &m.config, SaveDtype::F16).unwrap();
        w.put(crate::model::hf::EMBED, &m.embed_tokens).unwrap();
        drop(w);
        assert!(!dir.path().join(SINGLE).exists());
        assert!(!dir.path().join(format!("{SINGLE}.partial")).exists());
        assert!(Model::load(dir.path(), &Device::Cpu).is_err());
    }
}
