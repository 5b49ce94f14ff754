//! Deterministic pseudo-random models, small enough for unit tests anywhere in the crate.

use candle_core::{Device, Tensor};

use crate::rng::SplitMix64;

use std::path::Path;

use super::weights::{assemble, WeightSource};
use super::{Arch, Gemma3Params, HfWriter, Linear, Model, ModelConfig, Result, SaveDtype};

impl ModelConfig {
    /// A tiny configuration for tests: 2 blocks, hidden 64, 4 query / 2 KV heads of width 16,
    /// MLP 128, vocabulary 256 (every width a multiple of 32, the GGUF quantization block).
    /// Gemma 3: every second layer global, the others within a window of 8 tokens and with
    /// RoPE base 1,000.
    pub fn tiny(arch: Arch) -> Self {
        let gemma = arch == Arch::Gemma3;
        ModelConfig {
            arch,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            vocab_size: 256,
            tie_word_embeddings: matches!(arch, Arch::Qwen2 | Arch::Gemma3),
            max_position_embeddings: 128,
            sliding_window: gemma.then_some(8),
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            // A local base and query scalar unlike the global base and head width, so tests see
            // a swapped table or a default scale.
            gemma: gemma.then_some(Gemma3Params {
                rope_local_theta: 1_000.0,
                sliding_window_pattern: 2,
                query_pre_attn_scalar: 16.0,
            }),
        }
    }
}

impl ModelConfig {
    /// SmolLM2-135M's shapes (30 blocks, hidden 576, MLP 1536, 9 query / 3 KV heads of 64,
    /// RoPE base 100,000, tied head) with a vocabulary of `vocab`: the GPU check's stand-in
    /// where the real model is not at hand.
    pub fn smollm2_shape(vocab: usize) -> Self {
        ModelConfig {
            arch: Arch::Llama,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            rope_theta: 100_000.0,
            rms_norm_eps: 1e-5,
            vocab_size: vocab,
            tie_word_embeddings: true,
            max_position_embeddings: 8192,
            sliding_window: None,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            gemma: None,
        }
    }

    /// LLaMA-2-7B's shapes (hidden 4096, MLP 11008, 32 heads of 128, RoPE base 10,000,
    /// untied head) with `num_layers` blocks and a vocabulary of `vocab` (to fit a tokenizer at
    /// hand): the memory and speed benchmarks' model.
    pub fn llama2_7b_shape(num_layers: usize, vocab: usize) -> Self {
        ModelConfig {
            arch: Arch::Llama,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_layers,
            num_heads: 32,
            num_kv_heads: 32,
            head_dim: 128,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            vocab_size: vocab,
            tie_word_embeddings: false,
            max_position_embeddings: 4096,
            sliding_window: None,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            gemma: None,
        }
    }
}

/// Write a model of `cfg` with the weights [`Model::random`] would give (same seed, same
/// generator, same order) into the Hugging Face directory `dir` as `dtype`, one tensor at a
/// time: a 7B-shaped model is written in the memory of its largest matrix. Returns the bytes
/// of weights written.
pub fn write_hf(cfg: &ModelConfig, seed: u64, dir: &Path, dtype: SaveDtype) -> Result<u64> {
    cfg.validate()?;
    let mut w = HfWriter::create(dir, cfg, dtype)?;
    let mut src = RandomSource(SplitMix64::new(seed), cfg.arch == Arch::Gemma3);
    let device = Device::Cpu;
    let embed = super::weights::embeddings(cfg, &mut src, &device)?;
    w.put_embeddings(&embed)?;
    drop(embed);
    for i in 0..cfg.num_layers {
        let b = super::weights::block(cfg, &mut src, i, &device)?;
        w.put_block(i, &b)?;
    }
    let norm = super::weights::norm(cfg, &mut src, super::hf::NORM, cfg.hidden_size, &device)?;
    let head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(Linear::new(
            super::weights::untied_head(cfg, &mut src, &device)?,
            None,
        )?)
    };
    w.put_final(&norm, head.as_ref())?;
    let bytes = w.bytes_written();
    w.finish()?;
    Ok(bytes)
}

/// A model whose weights come from a seeded generator: linears uniform in ±1/√in (so
/// activations stay O(1)), norms 1 ± 0.2, embeddings ±1, biases ±0.1.
pub(crate) fn model(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Model> {
    let gemma = cfg.arch == Arch::Gemma3;
    assemble(cfg, &mut RandomSource(SplitMix64::new(seed), gemma), device)
}

/// The generator, and whether norms are stored as Gemma's `w` of `(1 + w)`.
struct RandomSource(SplitMix64, bool);

impl WeightSource for RandomSource {
    fn tensor(&mut self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let (center, scale) = if name.ends_with("norm.weight") {
            // Gemma's `(1 + w)` norms are stored as `w`.
            (if self.1 { 0.0 } else { 1.0 }, 0.2)
        } else if name.ends_with(".bias") {
            (0.0, 0.1)
        } else if name.contains("embed_tokens") || name.starts_with("lm_head") {
            (0.0, 1.0)
        } else {
            (0.0, 1.0 / (shape[1] as f32).sqrt())
        };
        let data: Vec<f32> = (0..n)
            .map(|_| center + scale * self.0.symmetric_f32())
            .collect();
        Ok(Tensor::from_vec(data, shape, device)?)
    }

    fn contains(&self, _name: &str) -> bool {
        false // optional tensors (biases a family does not require) are left out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The written model is the one [`Model::random`] builds: same generator, same order.
    #[test]
    fn written_random_models_equal_built_ones() {
        for arch in [Arch::Llama, Arch::Gemma3] {
            let cfg = ModelConfig::tiny(arch);
            let dir = tempfile::tempdir().unwrap();
            write_hf(&cfg, 9, dir.path(), SaveDtype::F32).unwrap();
            let a = Model::load(dir.path(), &Device::Cpu).unwrap();
            let b = Model::random(&cfg, 9, &Device::Cpu).unwrap();
            for ((n, x), (_, y)) in a.hf_tensors().iter().zip(b.hf_tensors()) {
                let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
                assert!(x == y, "{arch:?} {n}");
            }
        }
    }
}
