//! Hugging Face model directories: `config.json` plus `model.safetensors` or shards listed in
//! `model.safetensors.index.json`; f32/f16/bf16 weights become f32. Also the f32 export.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::weights::{assemble, WeightSource};
use super::{expect_shape, Block, HfWriter, Model, ModelConfig, ModelError, Result, SaveDtype};
use crate::layer::LayerKind;

pub(crate) const CONFIG: &str = "config.json";
pub(crate) const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// Largest `config.json` read. Why 1 MiB: real ones are a few KiB.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest index read. Why 64 MiB: an index lists one line per tensor (~100 bytes); 100,000
/// tensors take 10 MiB.
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// Load `dir` into a model.
pub(crate) fn load(dir: &Path, device: &Device) -> Result<Model> {
    let (cfg, mut src) = open_files(dir)?;
    assemble(&cfg, &mut src, device)
}

/// The configuration of `dir` and a source of its weights (every header validated).
pub(crate) fn open_files(dir: &Path) -> Result<(ModelConfig, StFiles)> {
    let cfg = ModelConfig::from_hf_json(&read_text(&dir.join(CONFIG), MAX_CONFIG_BYTES)?)?;
    let files = weight_files(dir)?;
    Ok((cfg, StFiles::open(dir, &files)?))
}

/// Where one tensor lies.
struct StTensor {
    /// Index into [`StFiles::files`].
    file: usize,
    dtype: String,
    shape: Vec<usize>,
    /// Absolute byte offset of its data in the file.
    start: u64,
    /// Bytes of data.
    len: u64,
}

/// Safetensors files read with positioned reads, a few MiB at a time, straight into the f32
/// tensor: reading a tensor costs its f32 size and nothing more (no half-precision copy, no
/// mapped pages that stay resident until the map is dropped), which the streaming run's
/// memory bound needs.
pub(crate) struct StFiles {
    dir: PathBuf,
    files: Vec<(PathBuf, std::fs::File)>,
    tensors: HashMap<String, StTensor>,
}

/// Elements converted per read. Why 4 Mi: 16 MiB of f32, large enough that reads run at disk
/// speed, small next to any layer.
const READ_CHUNK: usize = 4 << 20;

impl StFiles {
    /// Open `files`, validate each header ([`super::header::read_safetensors`]) on the handle
    /// that later reads the data, and index the tensors; a name in two shards is an error.
    fn open(dir: &Path, files: &[PathBuf]) -> Result<Self> {
        let mut tensors = HashMap::new();
        let mut opened = Vec::with_capacity(files.len());
        for (i, path) in files.iter().enumerate() {
            let io = |source| ModelError::Io {
                path: path.clone(),
                source,
            };
            // Checked before opening: opening a FIFO an index names would block.
            if !std::fs::metadata(path).map_err(io)?.is_file() {
                return Err(ModelError::Format {
                    path: path.clone(),
                    reason: "not a regular file".into(),
                });
            }
            let f = std::fs::File::open(path).map_err(io)?;
            let size = f.metadata().map_err(io)?.len();
            let header = super::header::read_safetensors(std::io::BufReader::new(&f), size)
                .map_err(|reason| ModelError::Format {
                    path: path.clone(),
                    reason,
                })?;
            let base = 8 + header.header_len; // ≤ size: checked
            for e in header.tensors {
                let shape = e.shape.iter().map(|&d| d as usize).collect();
                let t = StTensor {
                    file: i,
                    dtype: e.dtype,
                    shape,
                    start: base + e.data.0,
                    len: e.data.1 - e.data.0,
                };
                if tensors.insert(e.name.clone(), t).is_some() {
                    return Err(ModelError::Format {
                        path: path.clone(),
                        reason: format!(
                            "tensor `{}` is listed in two shards",
                            crate::term::line(&e.name)
                        ),
                    });
                }
            }
            opened.push((path.clone(), f));
        }
        Ok(StFiles {
            dir: dir.to_path_buf(),
            files: opened,
            tensors,
        })
    }
}

impl WeightSource for StFiles {
    fn tensor(&mut self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| ModelError::Weight {
            name: name.to_string(),
            reason: format!("missing from {}", self.dir.display()),
        })?;
        expect_shape(name, &t.shape, shape)?;
        let n: usize = shape.iter().product();
        let width = match t.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            other => {
                return Err(ModelError::Weight {
                    name: name.to_string(),
                    reason: format!(
                        "dtype {} (expected F32, F16 or BF16)",
                        crate::term::line(other)
                    ),
                })
            }
        };
        // The header check guarantees len = n · width; checked again before allocating.
        if t.len != (n * width) as u64 {
            return Err(ModelError::Weight {
                name: name.to_string(),
                reason: format!("{} bytes for {n} elements of {}", t.len, t.dtype),
            });
        }
        let (path, file) = &self.files[t.file];
        let mut out = vec![0f32; n];
        let mut raw = vec![0u8; READ_CHUNK.min(n.max(1)) * width];
        for (c, dst) in out.chunks_mut(READ_CHUNK).enumerate() {
            let bytes = &mut raw[..dst.len() * width];
            let at = t.start + (c * READ_CHUNK * width) as u64;
            std::os::unix::fs::FileExt::read_exact_at(file, bytes, at).map_err(|source| {
                ModelError::Io {
                    path: path.clone(),
                    source,
                }
            })?;
            convert(&t.dtype, bytes, dst);
        }
        Ok(Tensor::from_vec(out, shape, device)?)
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Little-endian `bytes` of `dtype` (F32, F16 or BF16) into `dst`.
fn convert(dtype: &str, bytes: &[u8], dst: &mut [f32]) {
    let pairs = bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]));
    match dtype {
        "F16" => {
            for (d, h) in dst.iter_mut().zip(pairs) {
                *d = half::f16::from_bits(h).to_f32();
            }
        }
        "BF16" => {
            for (d, h) in dst.iter_mut().zip(pairs) {
                *d = half::bf16::from_bits(h).to_f32();
            }
        }
        _ => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

/// The safetensors files of a directory: the index's shards, or the single file.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX);
    if index.is_file() {
        let v: serde_json::Value = serde_json::from_str(&read_text(&index, MAX_INDEX_BYTES)?)
            .map_err(|e| ModelError::Format {
                path: index.clone(),
                reason: e.to_string(),
            })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Format {
                path: index.clone(),
                reason: "no `weight_map` object".into(),
            })?;
        let shards: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        if shards.is_empty() {
            return Err(ModelError::Format {
                path: index,
                reason: "`weight_map` lists no files".into(),
            });
        }
        return shards
            .into_iter()
            .map(|f| shard_path(dir, &index, f))
            .collect();
    }
    let single = dir.join(SINGLE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::Format {
        path: dir.to_path_buf(),
        reason: format!("no {SINGLE} or {INDEX} (only safetensors weights are supported)"),
    })
}

/// A shard named by the index, confined to the model folder: a plain relative path (no root,
/// no `..`, no `.`), so an index cannot make the host open a file elsewhere.
fn shard_path(dir: &Path, index: &Path, name: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    let plain = !name.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(ModelError::Format {
            path: index.to_path_buf(),
            reason: format!(
                "shard {:?} is not a file inside the model folder",
                crate::term::line(name)
            ),
        });
    }
    Ok(dir.join(rel))
}

/// Read a text file of at most `limit` bytes (checked before reading).
fn read_text(path: &Path, limit: u64) -> Result<String> {
    crate::files::read_text_limited(path, limit).map_err(|e| match e {
        crate::files::FileError::Io { source, .. } => ModelError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => ModelError::Format {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

/// The Hugging Face key of each weight of `model`.
pub(crate) fn named_tensors(model: &Model) -> Vec<(String, Tensor)> {
    let mut out = vec![(EMBED.to_string(), model.embed_tokens.clone())];
    for (i, b) in model.blocks.iter().enumerate() {
        out.extend(block_tensors(i, b));
    }
    out.push((NORM.to_string(), model.norm.weight().clone()));
    if !model.config.tie_word_embeddings {
        out.push((HEAD.to_string(), model.lm_head.weight().clone()));
    }
    out
}

/// Key of the token embeddings.
pub(crate) const EMBED: &str = "model.embed_tokens.weight";
/// Key of the final norm.
pub(crate) const NORM: &str = "model.norm.weight";
/// Key of an untied output head.
pub(crate) const HEAD: &str = "lm_head.weight";

/// The Hugging Face key of each weight of block `i`.
pub(crate) fn block_tensors(i: usize, b: &Block) -> Vec<(String, Tensor)> {
    let p = format!("model.layers.{i}");
    let mut out = vec![(
        format!("{p}.input_layernorm.weight"),
        b.input_layernorm.weight().clone(),
    )];
    let pre_mlp = match &b.gemma {
        Some(g) => {
            for (name, n) in [
                ("self_attn.q_norm", &g.q_norm),
                ("self_attn.k_norm", &g.k_norm),
                ("post_attention_layernorm", &g.post_attention_norm),
                ("post_feedforward_layernorm", &g.post_feedforward_norm),
            ] {
                out.push((format!("{p}.{name}.weight"), n.weight().clone()));
            }
            "pre_feedforward_layernorm"
        }
        None => "post_attention_layernorm",
    };
    out.push((
        format!("{p}.{pre_mlp}.weight"),
        b.post_attention_layernorm.weight().clone(),
    ));
    for (kind, lin) in b.linears() {
        let module = hf_module(kind);
        out.push((format!("{p}.{module}.weight"), lin.weight().clone()));
        if let Some(bias) = lin.bias() {
            out.push((format!("{p}.{module}.bias"), bias.clone()));
        }
    }
    out
}

/// The module path of a block linear inside `model.layers.N`.
pub(crate) fn hf_module(kind: LayerKind) -> &'static str {
    match kind {
        LayerKind::Q => "self_attn.q_proj",
        LayerKind::K => "self_attn.k_proj",
        LayerKind::V => "self_attn.v_proj",
        LayerKind::O => "self_attn.o_proj",
        LayerKind::Gate => "mlp.gate_proj",
        LayerKind::Up => "mlp.up_proj",
        LayerKind::Down => "mlp.down_proj",
        LayerKind::Other => "other",
    }
}

/// Write `config.json` and `model.safetensors` (f32) into `dir`.
pub(crate) fn save(model: &Model, dir: &Path) -> Result<()> {
    let mut w = HfWriter::create(dir, &model.config, SaveDtype::F32)?;
    for (name, t) in named_tensors(model) {
        w.put(&name, &t)?;
    }
    w.finish()
}
