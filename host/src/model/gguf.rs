//! GGUF loading: llama.cpp tensor names → Hugging Face keys, dequantization to f32, and the
//! inverse of llama.cpp's Q/K row permutation.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};

use super::weights::{assemble, WeightSource};
use super::{expect_shape, Arch, Model, ModelConfig, ModelError, Result};

/// GGUF files start with these four bytes.
const MAGIC: &[u8; 4] = b"GGUF";

/// Whether `path` starts with the GGUF magic.
pub(crate) fn has_magic(path: &Path) -> Result<bool> {
    let mut head = [0u8; 4];
    let mut f = File::open(path).map_err(|e| io_err(path, e))?;
    match f.read_exact(&mut head) {
        Ok(()) => Ok(&head == MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io_err(path, e)),
    }
}

/// An open GGUF file: parsed header plus a reader for tensor data.
pub(crate) struct GgufFile {
    path: PathBuf,
    reader: BufReader<File>,
    /// Metadata and tensor directory.
    pub content: Content,
}

impl GgufFile {
    /// Open, validate ([`super::header::check_gguf`]) and parse the header (metadata and
    /// tensor directory, no tensor data).
    pub fn open(path: &Path) -> Result<Self> {
        super::header::check_file(path, |r, size| super::header::check_gguf(r, size))?;
        let mut reader = BufReader::new(File::open(path).map_err(|e| io_err(path, e))?);
        let content = Content::read(&mut reader).map_err(|e| format_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            content,
        })
    }

    /// The model configuration from the metadata.
    pub fn config(&self) -> Result<ModelConfig> {
        let rows = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .and_then(|t| t.shape.dims().first().copied());
        let has_output = self.content.tensor_infos.contains_key("output.weight");
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(ModelError::Unsupported(
                "RoPE frequency factors (rope_freqs)".into(),
            ));
        }
        ModelConfig::from_gguf(&self.content.metadata, rows, has_output)
    }

    /// Read tensor `name` (GGUF key), check its shape and dequantize it to f32.
    pub fn tensor(&mut self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| ModelError::Weight {
                name: name.to_string(),
                reason: format!("missing from {}", self.path.display()),
            })?;
        // Checked before reading so a corrupt directory cannot make us allocate wildly.
        expect_shape(name, info.shape.dims(), shape)?;
        let q = info
            .read(&mut self.reader, self.content.tensor_data_offset, device)
            .map_err(|e| format_err(&self.path, e.context(format!("tensor `{name}`"))))?;
        // `q` (the quantized copy) is dropped on return: only the f32 tensor stays.
        Ok(q.dequantize(device)?)
    }
}

/// Load a whole model.
pub(crate) fn load(path: &Path, device: &Device) -> Result<Model> {
    let (cfg, mut src) = open_source(path)?;
    assemble(&cfg, &mut src, device)
}

/// The configuration of `path` and a source of its weights (read tensor by tensor).
pub(crate) fn open_source(path: &Path) -> Result<(ModelConfig, GgufSource)> {
    let file = GgufFile::open(path)?;
    let cfg = file.config()?;
    let src = GgufSource {
        file,
        cfg: cfg.clone(),
    };
    Ok((cfg, src))
}

/// Serves Hugging Face keys from a GGUF file.
pub(crate) struct GgufSource {
    file: GgufFile,
    cfg: ModelConfig,
}

impl WeightSource for GgufSource {
    fn tensor(&mut self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let gguf_name = gguf_name_for(self.cfg.arch, name).ok_or_else(|| ModelError::Weight {
            name: name.to_string(),
            reason: "no GGUF equivalent".into(),
        })?;
        let t = self.file.tensor(&gguf_name, shape, device)?;
        match self.permuted_heads(name) {
            Some(heads) => unpermute_rows(&t, heads),
            None => Ok(t),
        }
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name_for(self.cfg.arch, name)
            .is_some_and(|n| self.file.content.tensor_infos.contains_key(&n))
    }

    fn gemma_norms_as_scale(&self) -> bool {
        // llama.cpp's converter adds 1 to every Gemma norm weight.
        true
    }
}

impl GgufSource {
    /// llama.cpp permutes Q and K (weights and biases) of LLaMA models only; Qwen2 is
    /// converted unpermuted because llama.cpp runs it with the NeoX rotation.
    fn permuted_heads(&self, name: &str) -> Option<usize> {
        // Gemma 3 runs with the NeoX rotation in llama.cpp too.
        if matches!(self.cfg.arch, Arch::Qwen2 | Arch::Gemma3) {
            return None;
        }
        if name.contains("self_attn.q_proj.") {
            Some(self.cfg.num_heads)
        } else if name.contains("self_attn.k_proj.") {
            Some(self.cfg.num_kv_heads)
        } else {
            None
        }
    }
}

/// The llama.cpp name of a Hugging Face key of a model of family `arch` (Gemma 3 names its
/// norms differently).
pub(crate) fn gguf_name_for(arch: Arch, hf: &str) -> Option<String> {
    if arch == Arch::Gemma3 {
        if let Some(name) = gemma3_norm_name(hf) {
            return Some(name);
        }
    }
    gguf_name(hf)
}

/// The llama.cpp name of one of the norms only Gemma 3 has (or names differently).
fn gemma3_norm_name(hf: &str) -> Option<String> {
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, key) = rest.split_once('.')?;
    let (module, kind) = key.rsplit_once('.')?;
    let short = match module {
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" => "post_attention_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

/// The llama.cpp name of a Hugging Face key.
pub(crate) fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, key) = rest.split_once('.')?;
    let (module, kind) = key.rsplit_once('.')?;
    let short = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

/// Undo llama.cpp's `permute`: within each head, rows stored as `(d/2, 2)` pairs go back to
/// HF's `(2, d/2)` halves. Works for weights `[rows, cols]` and biases `[rows]`.
pub(crate) fn unpermute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    swap_head_halves(t, heads, true)
}

/// llama.cpp's `permute` (HF → GGUF row order), the inverse of [`unpermute_rows`].
#[cfg(test)]
pub(crate) fn permute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    swap_head_halves(t, heads, false)
}

fn swap_head_halves(t: &Tensor, heads: usize, to_hf: bool) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    let cols: usize = dims.iter().skip(1).product();
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(ModelError::Shape(format!(
            "{rows} rows do not split into {heads} heads of even width"
        )));
    }
    let half = rows / heads / 2;
    // GGUF row h·d + 2i + j ↔ HF row h·d + j·d/2 + i.
    let (a, b) = if to_hf { (half, 2) } else { (2, half) };
    let out = t
        .reshape((heads, a, b, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?;
    Ok(out)
}

fn io_err(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_err(path: &Path, e: candle_core::Error) -> ModelError {
    ModelError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
