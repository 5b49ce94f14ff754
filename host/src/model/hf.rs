//! Hugging Face model directories: `config.json` plus `model.safetensors` or shards listed in
//! `model.safetensors.index.json`; f32/f16/bf16 weights become f32. Also the f32 export.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};

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
    let (cfg, files) = open(dir)?;
    let st = map(dir, &files)?;
    let mut src = StSource {
        st,
        names: BTreeSet::new(),
        dir: dir.to_path_buf(),
    };
    src.names = src.st.tensors().into_iter().map(|(n, _)| n).collect();
    assemble(&cfg, &mut src, device)
}

/// The configuration and the checked safetensors files of `dir`.
fn open(dir: &Path) -> Result<(ModelConfig, Vec<PathBuf>)> {
    let cfg = ModelConfig::from_hf_json(&read_text(&dir.join(CONFIG), MAX_CONFIG_BYTES)?)?;
    let files = weight_files(dir)?;
    for f in &files {
        super::header::check_file(f, |r, size| super::header::check_safetensors(r, size))?;
    }
    Ok((cfg, files))
}

/// A source that maps the files only while one tensor is read (the streaming run): the pages
/// of tensors already converted leave the process's memory with the map.
pub(crate) struct StFiles {
    files: Vec<PathBuf>,
    names: BTreeSet<String>,
    dir: PathBuf,
}

/// The configuration of `dir` and a source of its weights that holds no map between reads.
pub(crate) fn open_files(dir: &Path) -> Result<(ModelConfig, StFiles)> {
    let (cfg, files) = open(dir)?;
    let st = map(dir, &files)?;
    let names = st.tensors().into_iter().map(|(n, _)| n).collect();
    Ok((
        cfg,
        StFiles {
            files,
            names,
            dir: dir.to_path_buf(),
        },
    ))
}

/// Map `files` read-only.
fn map(dir: &Path, files: &[PathBuf]) -> Result<MmapedSafetensors> {
    // SAFETY: the files are mapped read-only and every tensor is copied out (converted to
    // f32) before the map is dropped; like every mmap user we assume no other process
    // truncates the files meanwhile.
    unsafe { MmapedSafetensors::multi(files) }.map_err(|e| ModelError::Format {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })
}

impl WeightSource for StFiles {
    fn tensor(&mut self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let mut src = StSource {
            st: map(&self.dir, &self.files)?,
            names: BTreeSet::new(),
            dir: self.dir.clone(),
        };
        src.tensor(name, shape, device)
    }

    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
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

struct StSource {
    st: MmapedSafetensors,
    names: BTreeSet<String>,
    dir: PathBuf,
}

impl WeightSource for StSource {
    fn tensor(&mut self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let view = self.st.get(name).map_err(|_| ModelError::Weight {
            name: name.to_string(),
            reason: format!("missing from {}", self.dir.display()),
        })?;
        expect_shape(name, view.shape(), shape)?;
        let t = view.load(device).map_err(|e| ModelError::Weight {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        match t.dtype() {
            DType::F32 => Ok(t),
            DType::F16 | DType::BF16 => Ok(t.to_dtype(DType::F32)?),
            other => Err(ModelError::Weight {
                name: name.to_string(),
                reason: format!("dtype {other:?} (expected f32, f16 or bf16)"),
            }),
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }
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

/// Write `config.json` and `model.safetensors` (weights as `dtype`) into `dir`.
pub(crate) fn save(model: &Model, dir: &Path, dtype: SaveDtype) -> Result<()> {
    let mut w = HfWriter::create(dir, &model.config, dtype)?;
    for (name, t) in named_tensors(model) {
        w.put(&name, &t)?;
    }
    w.finish()
}
