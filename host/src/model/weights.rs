//! Assembling a [`Model`] from any source of named f32 tensors (GGUF, safetensors, random).

use candle_core::{Device, Tensor};

use super::block::{AttnShape, Block};
use super::layers::{Linear, RmsNorm};
use super::{Model, ModelConfig, Result};

/// A store of weights addressed by Hugging Face checkpoint keys.
pub(crate) trait WeightSource {
    /// The tensor `name` as f32 on `device`, checked to have exactly `shape`.
    fn tensor(&mut self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor>;

    /// Whether the source holds `name`.
    fn contains(&self, name: &str) -> bool;
}

/// Build the model described by `cfg` from `src`, one tensor at a time (each source
/// converts a tensor to f32 and drops its raw form before the next one is read).
pub(crate) fn assemble(
    cfg: &ModelConfig,
    src: &mut dyn WeightSource,
    device: &Device,
) -> Result<Model> {
    cfg.validate()?;
    let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
    let embed_tokens = src.tensor("model.embed_tokens.weight", &[vocab, hidden], device)?;
    let blocks = (0..cfg.num_layers)
        .map(|i| block(cfg, src, i, device))
        .collect::<Result<Vec<_>>>()?;
    let norm = RmsNorm::new(
        src.tensor("model.norm.weight", &[hidden], device)?,
        cfg.rms_norm_eps,
    )?;
    let head = if cfg.tie_word_embeddings {
        embed_tokens.clone() // shares storage: no second copy of the largest matrix
    } else {
        src.tensor("lm_head.weight", &[vocab, hidden], device)?
    };
    Ok(Model {
        config: cfg.clone(),
        embed_tokens,
        blocks,
        norm,
        lm_head: Linear::new(head, None)?,
    })
}

fn block(
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
    let mut norm = |name: &str| -> Result<RmsNorm> {
        RmsNorm::new(
            src.tensor(&format!("{p}.{name}.weight"), &[h], device)?,
            cfg.rms_norm_eps,
        )
    };
    Ok(Block {
        input_layernorm: norm("input_layernorm")?,
        post_attention_layernorm: norm("post_attention_layernorm")?,
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
        },
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
