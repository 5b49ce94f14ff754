//! Assembling a [`Model`] from any source of named f32 tensors (GGUF, safetensors, random).

use candle_core::{Device, Tensor};

use super::block::{AttnShape, Block, GemmaParts};
use super::layers::{Linear, RmsNorm};
use super::{Arch, Model, ModelConfig, Result};

/// A store of weights addressed by Hugging Face checkpoint keys.
pub(crate) trait WeightSource {
    /// The tensor `name` as f32 on `device`, checked to have exactly `shape`.
    fn tensor(&mut self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor>;

    /// Whether the source holds `name`.
    fn contains(&self, name: &str) -> bool;

    /// Whether Gemma's `(1 + w)` norms are stored as the scale `1 + w` (llama.cpp) rather
    /// than as `w` (transformers).
    fn gemma_norms_as_scale(&self) -> bool {
        false
    }
}

/// A norm weight of `shape` under `name`, read the way the family stores it.
pub(super) fn norm(
    cfg: &ModelConfig,
    src: &mut dyn WeightSource,
    name: &str,
    width: usize,
    device: &Device,
) -> Result<RmsNorm> {
    let w = src.tensor(name, &[width], device)?;
    match (cfg.arch, src.gemma_norms_as_scale()) {
        (Arch::Gemma3, true) => RmsNorm::from_offset_scale(w, cfg.rms_norm_eps),
        (Arch::Gemma3, false) => RmsNorm::new_offset(w, cfg.rms_norm_eps),
        _ => RmsNorm::new(w, cfg.rms_norm_eps),
    }
}

/// Build the model described by `cfg` from `src`, one tensor at a time (each source
/// converts a tensor to f32 and drops its raw form before the next one is read).
pub(crate) fn assemble(
    cfg: &ModelConfig,
    src: &mut dyn WeightSource,
    device: &Device,
) -> Result<Model> {
    cfg.validate()?;
    let hidden = cfg.hidden_size;
    let embed_tokens = embeddings(cfg, src, device)?;
    let blocks = (0..cfg.num_layers)
        .map(|i| block(cfg, src, i, device))
        .collect::<Result<Vec<_>>>()?;
    let norm = norm(cfg, src, "model.norm.weight", hidden, device)?;
    let head = if cfg.tie_word_embeddings {
        embed_tokens.clone() // shares storage: no second copy of the largest matrix
    } else {
        untied_head(cfg, src, device)?
    };
    Ok(Model {
        config: cfg.clone(),
        embed_tokens,
        blocks,
        norm,
        lm_head: Linear::new(head, None)?,
    })
}

/// The token embeddings `[vocab, hidden]`.
pub(super) fn embeddings(
    cfg: &ModelConfig,
    src: &mut dyn WeightSource,
    device: &Device,
) -> Result<Tensor> {
    let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
    src.tensor("model.embed_tokens.weight", &[vocab, hidden], device)
}

/// The output head's own weight (untied models).
pub(super) fn untied_head(
    cfg: &ModelConfig,
    src: &mut dyn WeightSource,
    device: &Device,
) -> Result<Tensor> {
    let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
    src.tensor("lm_head.weight", &[vocab, hidden], device)
}

/// Block `i` of the model `cfg` describes.
pub(super) fn block(
    cfg: &ModelConfig,
    src: &mut dyn WeightSource,
    i: usize,
    device: &Device,
) -> Result<Block> {
    let p = format!("model.layers.{i}");
    let (h, m) = (cfg.hidden_size, cfg.intermediate_size);
    let (qw, kvw) = cfg.attn_widths();
    let bias = cfg.arch.qkv_bias();
    let mut lin = |name: &str, out: usize, inp: usize, need_bias: bool| {
        linear(src, &format!("{p}.{name}"), out, inp, need_bias, device)
    };
    let q_proj = lin("self_attn.q_proj", qw, h, bias)?;
    let k_proj = lin("self_attn.k_proj", kvw, h, bias)?;
    let v_proj = lin("self_attn.v_proj", kvw, h, bias)?;
    let o_proj = lin("self_attn.o_proj", h, qw, false)?;
    let gate_proj = lin("mlp.gate_proj", m, h, false)?;
    let up_proj = lin("mlp.up_proj", m, h, false)?;
    let down_proj = lin("mlp.down_proj", h, m, false)?;
    let mut nm = |name: &str, width: usize| -> Result<RmsNorm> {
        norm(cfg, src, &format!("{p}.{name}.weight"), width, device)
    };
    let (pre_mlp, gemma) = match cfg.arch {
        Arch::Gemma3 => (
            nm("pre_feedforward_layernorm", h)?,
            Some(GemmaParts {
                q_norm: nm("self_attn.q_norm", cfg.head_dim)?,
                k_norm: nm("self_attn.k_norm", cfg.head_dim)?,
                post_attention_norm: nm("post_attention_layernorm", h)?,
                post_feedforward_norm: nm("post_feedforward_layernorm", h)?,
                local: cfg.is_local_layer(i),
            }),
        ),
        _ => (nm("post_attention_layernorm", h)?, None),
    };
    Ok(Block {
        input_layernorm: nm("input_layernorm", h)?,
        post_attention_layernorm: pre_mlp,
        q_proj,
        k_proj,
        v_proj,
        o_proj,
        gate_proj,
        up_proj,
        down_proj,
        attn: AttnShape {
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            scale: cfg.attn_scale(),
        },
        gemma,
    })
}

/// `prefix.weight` and, when required or present, `prefix.bias`.
fn linear(
    src: &mut dyn WeightSource,
    prefix: &str,
    out: usize,
    inp: usize,
    need_bias: bool,
    device: &Device,
) -> Result<Linear> {
    let weight = src.tensor(&format!("{prefix}.weight"), &[out, inp], device)?;
    let bias_name = format!("{prefix}.bias");
    let bias = if need_bias || src.contains(&bias_name) {
        Some(src.tensor(&bias_name, &[out], device)?)
    } else {
        None
    };
    Linear::new(weight, bias)
}
