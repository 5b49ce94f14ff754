//! Test fixtures: writing a model as a llama.cpp-style GGUF file or an HF directory.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use super::gguf::{gguf_name_for, permute_rows};
use super::{Arch, Model, Result};

/// Write `model` as GGUF the way llama.cpp's converter does: llama.cpp tensor names, Q/K
/// rows permuted for LLaMA, norms and biases in f32, block linears in `linear`, the
/// embedding in `embed` (and an `output.weight` in `embed` when untied).
pub(crate) fn write_gguf(
    model: &Model,
    path: &Path,
    linear: GgmlDType,
    embed: GgmlDType,
) -> Result<()> {
    let cfg = &model.config;
    let arch = match cfg.arch {
        Arch::Qwen2 => "qwen2",
        Arch::Gemma3 => "gemma3",
        Arch::Llama | Arch::Mistral => "llama",
    };
    let k = |s: &str| format!("{arch}.{s}");
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (k("block_count"), Value::U32(cfg.num_layers as u32)),
        (
            k("context_length"),
            Value::U32(cfg.max_position_embeddings as u32),
        ),
        (k("embedding_length"), Value::U32(cfg.hidden_size as u32)),
        (
            k("feed_forward_length"),
            Value::U32(cfg.intermediate_size as u32),
        ),
        (k("attention.head_count"), Value::U32(cfg.num_heads as u32)),
        (
            k("attention.head_count_kv"),
            Value::U32(cfg.num_kv_heads as u32),
        ),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (k("rope.dimension_count"), Value::U32(cfg.head_dim as u32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
    ];
    let mut md = md;
    if let (Some(g), Some(w)) = (cfg.gemma, cfg.sliding_window) {
        md.push((k("attention.sliding_window"), Value::U32(w as u32)));
        md.push((
            k("attention.sliding_window_pattern"),
            Value::U32(g.sliding_window_pattern as u32),
        ));
        md.push((k("attention.key_length"), Value::U32(cfg.head_dim as u32)));
        md.push((
            k("rope.freq_base_swa"),
            Value::F32(g.rope_local_theta as f32),
        ));
    }
    let mut tensors = Vec::new();
    for (name, t) in model.hf_tensors() {
        let t = match (cfg.arch, name.as_str()) {
            // llama.cpp stores Gemma's norms as `1 + w`.
            (Arch::Gemma3, n) if n.ends_with("norm.weight") => (t + 1.0)?,
            (Arch::Qwen2 | Arch::Gemma3, _) => t,
            (_, n) if n.contains("q_proj") => permute_rows(&t, cfg.num_heads)?,
            (_, n) if n.contains("k_proj") => permute_rows(&t, cfg.num_kv_heads)?,
            _ => t,
        };
        let dtype = if t.rank() == 1 {
            GgmlDType::F32
        } else if name.contains("embed_tokens") || name.starts_with("lm_head") {
            embed
        } else {
            linear
        };
        let gname = gguf_name_for(cfg.arch, &name).unwrap_or(name);
        tensors.push((gname, QTensor::quantize(&t, dtype)?));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).map_err(|e| super::ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    gguf_file::write(&mut f, &md_refs, &t_refs)?;
    Ok(())
}

/// Write `model` as an HF directory with weights stored in `dtype` (f32, f16 or bf16).
pub(crate) fn write_hf(model: &Model, dir: &Path, dtype: DType) -> Result<()> {
    model.save_hf(dir)?;
    if dtype != DType::F32 {
        let tensors = model
            .hf_tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(dtype)?)))
            .collect::<Result<HashMap<String, Tensor>>>()?;
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    }
    Ok(())
}

/// Largest absolute difference between two tensors of equal shape.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0));
    d.and_then(|d| d.to_scalar::<f32>())
        .unwrap_or(f32::INFINITY)
}

/// Deterministic token windows `[batch][seq]` below `vocab`.
pub(crate) fn token_windows(batch: usize, seq: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = crate::rng::SplitMix64::new(seed);
    (0..batch)
        .map(|_| {
            (0..seq)
                .map(|_| (rng.next_u64() % vocab as u64) as u32)
                .collect()
        })
        .collect()
}

/// `len` deterministic values in [-1, 1) (a fixed arithmetic pattern; `seed` shifts it), for
/// matrix-product tests.
pub(crate) fn pattern(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 1001.0)
        .collect()
}
