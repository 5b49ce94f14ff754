//! Deterministic pseudo-random models, small enough for unit tests anywhere in the crate.

use candle_core::{Device, Tensor};

use crate::rng::SplitMix64;

use super::weights::{assemble, WeightSource};
use super::{Arch, Gemma3Params, Model, ModelConfig, Result};

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
