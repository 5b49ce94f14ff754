//! The hyper-parameters of a LLaMA-family model, read from GGUF metadata or a Hugging Face
//! `config.json`, and written back as `config.json` for export.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde::{Deserialize, Serialize};

use super::{ModelError, Result};

/// The architecture families this host can run (all are LLaMA-style decoder blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// LLaMA 1/2/3 and look-alikes (SmolLM, TinyLlama, ...): no biases.
    Llama,
    /// Mistral: LLaMA with an optional sliding attention window.
    Mistral,
    /// Qwen2 / Qwen2.5: LLaMA with biases on the q/k/v projections.
    Qwen2,
    /// Gemma 3 (text): gated GELU (tanh) MLP, QK-norm, norms before and after attention and
    /// MLP with `(1 + w)` scales, embeddings scaled by √hidden, sliding-window layers with
    /// their own RoPE base interleaved with global ones (see [`Gemma3Params`]).
    Gemma3,
}

impl Arch {
    /// The Hugging Face `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3_text",
        }
    }

    /// The Hugging Face `architectures[0]` class name.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// Whether q/k/v projections carry a bias (Qwen2 does).
    pub fn qkv_bias(self) -> bool {
        matches!(self, Arch::Qwen2)
    }

    fn from_hf_name(name: &str) -> Result<Self> {
        match name {
            "LlamaForCausalLM" | "llama" => Ok(Arch::Llama),
            "MistralForCausalLM" | "mistral" => Ok(Arch::Mistral),
            "Qwen2ForCausalLM" | "qwen2" => Ok(Arch::Qwen2),
            "Gemma3ForCausalLM" | "gemma3_text" => Ok(Arch::Gemma3),
            other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
        }
    }
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Architecture family.
    pub arch: Arch,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads (grouped-query attention when smaller than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rows of the embedding matrix.
    pub vocab_size: usize,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Context length the model was trained for.
    pub max_position_embeddings: usize,
    /// Sliding attention window, if any; sequences longer than it are refused.
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token id, when known.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id, when known.
    pub eos_token_id: Option<u32>,
    /// Gemma 3's extra hyper-parameters (`None` for every other family).
    #[serde(default)]
    pub gemma: Option<Gemma3Params>,
}

/// What a Gemma 3 model adds to the LLaMA shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gemma3Params {
    /// RoPE base of the sliding-window (local) layers; [`ModelConfig::rope_theta`] is the
    /// global layers' base.
    pub rope_local_theta: f64,
    /// Every `pattern`-th layer (counting from 1) attends globally, the others within
    /// [`ModelConfig::sliding_window`] tokens.
    pub sliding_window_pattern: usize,
    /// Attention scores are scaled by `query_pre_attn_scalar^(-1/2)`.
    pub query_pre_attn_scalar: f64,
}

/// Gemma 3's defaults (transformers' `Gemma3TextConfig`, llama.cpp's `gemma3` graph).
const GEMMA3_LOCAL_THETA: f64 = 10_000.0;
const GEMMA3_PATTERN: usize = 6;
const GEMMA3_WINDOW: usize = 4096;
const GEMMA3_THETA: f64 = 1_000_000.0;
const GEMMA3_QUERY_SCALAR: f64 = 256.0;

/// Most blocks a model may have.
pub const MAX_LAYERS: usize = 4096;

impl ModelConfig {
    /// Check the internal consistency of the shape parameters.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ModelError::Config(format!("{name} must be positive")));
            }
        }
        // Why 4096: the deepest published models have about 130 blocks; the bound keeps a
        // hostile configuration's block count out of allocation sizes.
        if self.num_layers > MAX_LAYERS {
            return Err(ModelError::Config(format!(
                "num_layers {} is more than {MAX_LAYERS}",
                self.num_layers
            )));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(ModelError::Config(format!(
                "num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ModelError::Config(format!(
                "head_dim {} must be even for RoPE",
                self.head_dim
            )));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(ModelError::Config(format!(
                "rope_theta {} must be positive",
                self.rope_theta
            )));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(ModelError::Config(format!(
                "rms_norm_eps {} must be non-negative",
                self.rms_norm_eps
            )));
        }
        if let Some(g) = self.gemma {
            if self.arch != Arch::Gemma3 {
                return Err(ModelError::Config(
                    "Gemma 3 parameters on a non-Gemma model".into(),
                ));
            }
            if g.sliding_window_pattern == 0
                || !(g.rope_local_theta.is_finite() && g.rope_local_theta > 0.0)
                || !(g.query_pre_attn_scalar.is_finite() && g.query_pre_attn_scalar > 0.0)
                || self.sliding_window == Some(0)
            {
                return Err(ModelError::Config(format!(
                    "invalid Gemma 3 parameters {g:?} (window {:?})",
                    self.sliding_window
                )));
            }
        } else if self.arch == Arch::Gemma3 {
            return Err(ModelError::Config(
                "a Gemma 3 model needs its parameters".into(),
            ));
        }
        Ok(())
    }

    /// Whether block `layer` attends within the sliding window (Gemma 3's local layers);
    /// `false` for every layer of other families, whose window (if any) covers all layers.
    pub fn is_local_layer(&self, layer: usize) -> bool {
        self.gemma
            .is_some_and(|g| !(layer + 1).is_multiple_of(g.sliding_window_pattern))
    }

    /// The factor applied to `q·k` before the softmax.
    pub fn attn_scale(&self) -> f64 {
        match self.gemma {
            Some(g) => 1.0 / g.query_pre_attn_scalar.sqrt(),
            None => 1.0 / (self.head_dim as f64).sqrt(),
        }
    }

    /// Number of query/key/value output rows: `(q, kv)` = `(heads·head_dim, kv_heads·head_dim)`.
    pub fn attn_widths(&self) -> (usize, usize) {
        (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        )
    }

    /// Read the configuration from GGUF metadata (`general.architecture` = `llama` | `qwen2`).
    ///
    /// `embedding_rows` is the row count of `token_embd.weight`, the fallback for the vocab
    /// size; `has_output` tells whether a separate `output.weight` exists (else tied).
    pub fn from_gguf(
        md: &HashMap<String, Value>,
        embedding_rows: Option<usize>,
        has_output: bool,
    ) -> Result<Self> {
        let arch_name = gguf_str(md, "general.architecture")?;
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        if let Some(v) = md.get(&key("rope.scaling.type")) {
            let kind = v.to_string().map(String::as_str).unwrap_or("?");
            if kind != "none" {
                return Err(ModelError::Unsupported(format!("RoPE scaling `{kind}`")));
            }
        }
        let hidden_size = gguf_usize(md, &key("embedding_length"))?;
        let num_heads = gguf_usize(md, &key("attention.head_count"))?;
        let num_kv_heads =
            gguf_opt_usize(md, &key("attention.head_count_kv"))?.unwrap_or(num_heads);
        let head_dim = match gguf_opt_usize(md, &key("attention.key_length"))? {
            Some(d) => d,
            None => gguf_opt_usize(md, &key("rope.dimension_count"))?
                .unwrap_or(hidden_size / num_heads.max(1)),
        };
        let vocab_size = match gguf_opt_usize(md, &key("vocab_size"))? {
            Some(v) => v,
            None => embedding_rows
                .ok_or_else(|| ModelError::Config("no vocab size and no token_embd".into()))?,
        };
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: gguf_usize(md, &key("feed_forward_length"))?,
            num_layers: gguf_usize(md, &key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            // llama.cpp's default base when the key is absent.
            rope_theta: gguf_opt_f64(md, &key("rope.freq_base"))?.unwrap_or(10_000.0),
            rms_norm_eps: gguf_f64(md, &key("attention.layer_norm_rms_epsilon"))?,
            vocab_size,
            tie_word_embeddings: !has_output,
            max_position_embeddings: gguf_opt_usize(md, &key("context_length"))?.unwrap_or(2048),
            sliding_window: None,
            bos_token_id: gguf_opt_usize(md, "tokenizer.ggml.bos_token_id")?.map(|v| v as u32),
            eos_token_id: gguf_opt_usize(md, "tokenizer.ggml.eos_token_id")?.map(|v| v as u32),
            gemma: None,
        };
        let cfg = if arch == Arch::Gemma3 {
            gemma3_from_gguf(cfg, md, &key)?
        } else {
            cfg
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse a Hugging Face `config.json` (LLaMA, Mistral or Qwen2 families).
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let raw: HfConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        raw.into_config()
    }

    /// The Hugging Face `config.json` describing this model (weights in float32).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": if self.gemma.is_some() { "gelu_pytorch_tanh" } else { "silu" },
            "torch_dtype": "float32",
            "rope_scaling": null,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        });
        let Some(obj) = v.as_object_mut() else {
            return v;
        };
        match self.arch {
            Arch::Llama => {
                obj.insert("attention_bias".into(), false.into());
                obj.insert("mlp_bias".into(), false.into());
            }
            Arch::Mistral => {
                obj.insert("sliding_window".into(), self.sliding_window.into());
            }
            Arch::Qwen2 => {
                obj.insert(
                    "use_sliding_window".into(),
                    self.sliding_window.is_some().into(),
                );
                obj.insert("sliding_window".into(), self.sliding_window.into());
            }
            Arch::Gemma3 => {
                if let Some(g) = self.gemma {
                    gemma3_hf_keys(self, g, obj);
                }
            }
        }
        v
    }
}

/// Gemma 3's metadata: llama.cpp's converter writes no local RoPE base, layer pattern or query
/// scalar (`rope.freq_base_swa` and `sliding_window_pattern` keys, where present, are read),
/// and uses the constants it shares with transformers (base 10,000, every sixth layer global,
/// `1/√head_dim`; the 27B model, which scales by `hidden/heads`, is refused).
fn gemma3_from_gguf(
    mut cfg: ModelConfig,
    md: &HashMap<String, Value>,
    key: &dyn Fn(&str) -> String,
) -> Result<ModelConfig> {
    if let Some(v) = md.get(&key("rope.scaling.factor")) {
        if !matches!(v, Value::F32(f) if *f == 1.0) {
            return Err(ModelError::Unsupported("Gemma 3 RoPE scaling".into()));
        }
    }
    if cfg.num_layers == 62 {
        return Err(ModelError::Unsupported(
            "Gemma 3 27B (its query scaling differs)".into(),
        ));
    }
    cfg.sliding_window =
        Some(gguf_opt_usize(md, &key("attention.sliding_window"))?.unwrap_or(GEMMA3_WINDOW));
    cfg.gemma = Some(Gemma3Params {
        rope_local_theta: match gguf_opt_f64(md, &key("rope.freq_base_swa"))? {
            Some(t) => t,
            None => gguf_opt_f64(md, &key("rope.local.freq_base"))?.unwrap_or(GEMMA3_LOCAL_THETA),
        },
        sliding_window_pattern: match md.get(&key("attention.sliding_window_pattern")) {
            None => GEMMA3_PATTERN,
            Some(Value::Array(_)) => {
                return Err(ModelError::Unsupported(
                    "a per-layer sliding-window pattern".into(),
                ))
            }
            Some(_) => gguf_usize(md, &key("attention.sliding_window_pattern"))?,
        },
        query_pre_attn_scalar: cfg.head_dim as f64,
    });
    Ok(cfg)
}

/// `v` as a JSON integer when it is one, else as a float.
fn json_number(v: f64) -> serde_json::Value {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        (v as i64).into()
    } else {
        v.into()
    }
}

/// The `gemma3_text` keys of `config.json` (transformers' `Gemma3TextConfig`).
fn gemma3_hf_keys(
    cfg: &ModelConfig,
    g: Gemma3Params,
    obj: &mut serde_json::Map<String, serde_json::Value>,
) {
    let layer_types: Vec<&str> = (0..cfg.num_layers)
        .map(|i| {
            if cfg.is_local_layer(i) {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    obj.remove("hidden_act");
    let entries = [
        ("hidden_activation", serde_json::json!("gelu_pytorch_tanh")),
        ("sliding_window", cfg.sliding_window.into()),
        ("sliding_window_pattern", g.sliding_window_pattern.into()),
        ("layer_types", serde_json::json!(layer_types)),
        ("rope_local_base_freq", g.rope_local_theta.into()),
        // transformers declares it an int and refuses `256.0`.
        (
            "query_pre_attn_scalar",
            json_number(g.query_pre_attn_scalar),
        ),
        ("final_logit_softcapping", serde_json::Value::Null),
        ("attn_logit_softcapping", serde_json::Value::Null),
        ("attention_bias", false.into()),
        ("use_bidirectional_attention", false.into()),
    ];
    for (k, v) in entries {
        obj.insert(k.into(), v);
    }
}

/// The subset of a Hugging Face `config.json` we read; unknown keys are ignored.
#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f64>,
    rms_norm_eps: Option<f64>,
    vocab_size: usize,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    max_position_embeddings: Option<usize>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    rope_local_base_freq: Option<f64>,
    sliding_window_pattern: Option<usize>,
    layer_types: Option<Vec<String>>,
    query_pre_attn_scalar: Option<f64>,
    final_logit_softcapping: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5: `{rope_type, rope_theta}`, or one such entry per layer type.
    rope_parameters: Option<serde_json::Value>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

impl HfConfig {
    fn arch(&self) -> Result<Arch> {
        match (&self.architectures, &self.model_type) {
            (Some(list), _) if !list.is_empty() => Arch::from_hf_name(&list[0]),
            (_, Some(t)) => Arch::from_hf_name(t),
            _ => Err(ModelError::Config(
                "config.json names neither `architectures` nor `model_type`".into(),
            )),
        }
    }

    fn check_supported(&self, arch: Arch) -> Result<()> {
        let (act, want) = match arch {
            Arch::Gemma3 => (
                self.hidden_activation.as_ref().or(self.hidden_act.as_ref()),
                "gelu_pytorch_tanh",
            ),
            _ => (self.hidden_act.as_ref(), "silu"),
        };
        if let Some(act) = act {
            if act != want {
                return Err(ModelError::Unsupported(format!("hidden_act `{act}`")));
            }
        }
        if self.final_logit_softcapping.is_some() || self.attn_logit_softcapping.is_some() {
            return Err(ModelError::Unsupported("logit soft-capping".into()));
        }
        let plain = |p: &serde_json::Value| {
            p.get("rope_type")
                .and_then(|t| t.as_str())
                .is_none_or(|t| t == "default")
        };
        if let Some(p) = &self.rope_parameters {
            let entries: Vec<&serde_json::Value> = match p.get("full_attention") {
                Some(_) => p
                    .as_object()
                    .map(|o| o.values().collect())
                    .unwrap_or_default(),
                None => vec![p],
            };
            if !entries.iter().all(|e| plain(e)) {
                return Err(ModelError::Unsupported(
                    "RoPE scaling (`rope_parameters`)".into(),
                ));
            }
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ModelError::Unsupported(
                "RoPE scaling (`rope_scaling`)".into(),
            ));
        }
        if self.attention_bias == Some(true) || self.mlp_bias == Some(true) {
            return Err(ModelError::Unsupported(
                "`attention_bias`/`mlp_bias` on a LLaMA model".into(),
            ));
        }
        Ok(())
    }

    fn into_config(self) -> Result<ModelConfig> {
        let arch = self.arch()?;
        self.check_supported(arch)?;
        let sliding_window = match arch {
            Arch::Llama => None,
            Arch::Mistral => self.sliding_window,
            Arch::Qwen2 => self
                .sliding_window
                .filter(|_| self.use_sliding_window == Some(true)),
            Arch::Gemma3 => Some(self.sliding_window.unwrap_or(GEMMA3_WINDOW)),
        };
        let gemma = match arch {
            Arch::Gemma3 => Some(self.gemma3_params()?),
            _ => None,
        };
        let cfg = ModelConfig {
            arch,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            // Defaults below are the transformers defaults of each family.
            rope_theta: self
                .rope_theta
                .or_else(|| self.rope_parameter("full_attention"))
                .unwrap_or(if arch == Arch::Gemma3 {
                    GEMMA3_THETA
                } else {
                    10_000.0
                }),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            vocab_size: self.vocab_size,
            // Gemma 3's configs leave it out: transformers' default there is `true`.
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(arch == Arch::Gemma3),
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            sliding_window,
            bos_token_id: first_id(self.bos_token_id.as_ref()),
            eos_token_id: first_id(self.eos_token_id.as_ref()),
            gemma,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// `rope_theta` from transformers 5's `rope_parameters`: the entry of `layer_type`
    /// when there is one per layer type, else the single entry.
    fn rope_parameter(&self, layer_type: &str) -> Option<f64> {
        let p = self.rope_parameters.as_ref()?;
        p.get(layer_type).unwrap_or(p).get("rope_theta")?.as_f64()
    }

    /// Gemma 3's parameters; `layer_types`, when given, must be the regular pattern.
    fn gemma3_params(&self) -> Result<Gemma3Params> {
        let pattern = self.sliding_window_pattern.unwrap_or(GEMMA3_PATTERN);
        if let Some(types) = &self.layer_types {
            let regular = types.len() == self.num_hidden_layers
                && types.iter().enumerate().all(|(i, t)| {
                    let local = pattern > 0 && !(i + 1).is_multiple_of(pattern);
                    t == if local {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                });
            if !regular {
                return Err(ModelError::Unsupported(format!(
                    "Gemma 3 `layer_types` other than every {pattern}th layer global"
                )));
            }
        }
        Ok(Gemma3Params {
            rope_local_theta: self
                .rope_local_base_freq
                .or_else(|| self.rope_parameter("sliding_attention"))
                .unwrap_or(GEMMA3_LOCAL_THETA),
            sliding_window_pattern: pattern,
            query_pre_attn_scalar: self.query_pre_attn_scalar.unwrap_or(GEMMA3_QUERY_SCALAR),
        })
    }
}

/// A token id given as a number or a list of numbers (the first one is kept).
fn first_id(v: Option<&serde_json::Value>) -> Option<u32> {
    match v? {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_json::Value::Array(a) => first_id(a.first()),
        _ => None,
    }
}

fn gguf_str(md: &HashMap<String, Value>, key: &str) -> Result<String> {
    match md.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(bad_key(key, other)),
        None => Err(ModelError::Config(format!("missing GGUF metadata `{key}`"))),
    }
}

fn gguf_opt_usize(md: &HashMap<String, Value>, key: &str) -> Result<Option<usize>> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    let n: Option<u64> = match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    };
    n.and_then(|n| usize::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| bad_key(key, v))
}

fn gguf_usize(md: &HashMap<String, Value>, key: &str) -> Result<usize> {
    gguf_opt_usize(md, key)?
        .ok_or_else(|| ModelError::Config(format!("missing GGUF metadata `{key}`")))
}

fn gguf_opt_f64(md: &HashMap<String, Value>, key: &str) -> Result<Option<f64>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::F32(x)) => Ok(Some(f64::from(*x))),
        Some(Value::F64(x)) => Ok(Some(*x)),
        Some(other) => Err(bad_key(key, other)),
    }
}

fn gguf_f64(md: &HashMap<String, Value>, key: &str) -> Result<f64> {
    gguf_opt_f64(md, key)?
        .ok_or_else(|| ModelError::Config(format!("missing GGUF metadata `{key}`")))
}

fn bad_key(key: &str, v: &Value) -> ModelError {
    ModelError::Config(format!(
        "GGUF metadata `{key}` has unexpected type {:?}",
        v.value_type()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL_JSON: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "rope_theta": 100000,
        "rms_norm_eps": 1e-05, "vocab_size": 49152, "tie_word_embeddings": true,
        "max_position_embeddings": 8192, "hidden_act": "silu", "rope_scaling": null,
        "bos_token_id": 1, "eos_token_id": [2, 0], "torch_dtype": "bfloat16"
    }"#;

    #[test]
    fn hf_config_parses_and_round_trips() {
        let cfg = ModelConfig::from_hf_json(SMOL_JSON).unwrap();
        assert_eq!(cfg.arch, Arch::Llama);
        assert_eq!(cfg.head_dim, 64); // 576 / 9
        assert_eq!(cfg.eos_token_id, Some(2));
        assert!(cfg.tie_word_embeddings);
        let back = ModelConfig::from_hf_json(&cfg.to_hf_json().to_string()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn unknown_architecture_is_a_clear_error() {
        let text = SMOL_JSON.replace("LlamaForCausalLM", "GPTNeoXForCausalLM");
        let err = ModelConfig::from_hf_json(&text).unwrap_err();
        assert!(
            matches!(err, ModelError::UnsupportedArchitecture(ref a) if a == "GPTNeoXForCausalLM")
        );
        assert!(err.to_string().contains("GPTNeoXForCausalLM"));
    }

    #[test]
    fn mistral_window_and_qwen2_flag() {
        let m = SMOL_JSON
            .replace("LlamaForCausalLM", "MistralForCausalLM")
            .replace("\"rope_scaling\": null", "\"sliding_window\": 4096");
        assert_eq!(
            ModelConfig::from_hf_json(&m).unwrap().sliding_window,
            Some(4096)
        );
        let m = SMOL_JSON.replace("\"rope_scaling\": null", "\"sliding_window\": null");
        assert_eq!(ModelConfig::from_hf_json(&m).unwrap().sliding_window, None);
        let q = SMOL_JSON
            .replace("LlamaForCausalLM", "Qwen2ForCausalLM")
            .replace(
                "\"rope_scaling\": null",
                "\"sliding_window\": 4096, \"use_sliding_window\": false",
            );
        let q = ModelConfig::from_hf_json(&q).unwrap();
        assert_eq!((q.arch, q.sliding_window), (Arch::Qwen2, None));
    }

    #[test]
    fn gemma3_defaults_are_transformers() {
        // Keys Google's configs leave out take transformers' Gemma 3 defaults.
        let text = r#"{
            "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
            "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
            "vocab_size": 262144, "hidden_activation": "gelu_pytorch_tanh"
        }"#;
        let cfg = ModelConfig::from_hf_json(text).unwrap();
        assert!(cfg.tie_word_embeddings);
        assert_eq!(cfg.rope_theta, 1_000_000.0);
        let g = cfg.gemma.unwrap();
        assert_eq!(
            (
                g.rope_local_theta,
                g.sliding_window_pattern,
                g.query_pre_attn_scalar
            ),
            (10_000.0, 6, 256.0)
        );
        assert!(cfg.is_local_layer(0) && !cfg.is_local_layer(5));
        let back = ModelConfig::from_hf_json(&cfg.to_hf_json().to_string()).unwrap();
        assert_eq!(back, cfg);
        let capped = text.replace(
            "\"vocab_size\"",
            "\"final_logit_softcapping\": 30.0, \"vocab_size\"",
        );
        assert!(matches!(
            ModelConfig::from_hf_json(&capped),
            Err(ModelError::Unsupported(_))
        ));
    }

    #[test]
    fn bad_configs_are_errors() {
        let scaled = SMOL_JSON.replace(
            "\"rope_scaling\": null",
            "\"rope_scaling\": {\"type\": \"linear\"}",
        );
        assert!(matches!(
            ModelConfig::from_hf_json(&scaled),
            Err(ModelError::Unsupported(_))
        ));
        let gelu = SMOL_JSON.replace("\"silu\"", "\"gelu\"");
        assert!(matches!(
            ModelConfig::from_hf_json(&gelu),
            Err(ModelError::Unsupported(_))
        ));
        let heads = SMOL_JSON.replace("\"num_key_value_heads\": 3", "\"num_key_value_heads\": 4");
        assert!(matches!(
            ModelConfig::from_hf_json(&heads),
            Err(ModelError::Config(_))
        ));
        assert!(ModelConfig::from_hf_json("{\"hidden_size\": 3").is_err());
    }
}
