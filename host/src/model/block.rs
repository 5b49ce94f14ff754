//! One LLaMA-family transformer block (pre-norm GQA attention + SwiGLU MLP) with capture
//! points at the input of each of its seven linear layers.

use candle_core::{DType, Tensor};

use super::attention::{causal_attention, rope_inplace, Heads};
use super::kernels::causal_softmax;
use super::layers::{geglu, softmax_last, swiglu, with_cpu_f32, Linear, RmsNorm, Rope};
use super::matmul;
use super::{ModelError, Result};
use crate::layer::LayerKind;

/// Called with the input of each linear layer, as a contiguous `[batch, seq, in_features]`
/// f32 tensor.
///
/// Convention: it is called once per [`LayerKind`] in forward order Q, K, V, O, Gate, Up,
/// Down. Q, K and V receive the same tensor (the normed block input), and so do Gate and Up
/// (the normed post-attention residual); a caller that only needs statistics may compute
/// them once per shared input.
pub type Capture<'a> = dyn FnMut(LayerKind, &Tensor) -> Result<()> + 'a;

/// The attention shape of a block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Factor of `q·k` before the softmax (`1/√head_dim` unless the model says otherwise).
    pub scale: f64,
}

/// What a Gemma 3 block adds to a LLaMA block. Its pre-MLP norm (transformers'
/// `pre_feedforward_layernorm`) is [`Block::post_attention_layernorm`], the LLaMA name of
/// that role; every norm here scales by `1 + w`.
#[derive(Debug, Clone)]
pub struct GemmaParts {
    /// Per-head norm of the queries, before RoPE.
    pub q_norm: RmsNorm,
    /// Per-head norm of the keys, before RoPE.
    pub k_norm: RmsNorm,
    /// Norm of the attention output before the residual (transformers'
    /// `post_attention_layernorm`).
    pub post_attention_norm: RmsNorm,
    /// Norm of the MLP output before the residual.
    pub post_feedforward_norm: RmsNorm,
    /// Whether the block attends within the sliding window (with the local RoPE base).
    pub local: bool,
}

/// A transformer block; field names follow the Hugging Face checkpoint keys.
#[derive(Debug, Clone)]
pub struct Block {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Query projection `[heads·head_dim, hidden]`.
    pub q_proj: Linear,
    /// Key projection `[kv_heads·head_dim, hidden]`.
    pub k_proj: Linear,
    /// Value projection `[kv_heads·head_dim, hidden]`.
    pub v_proj: Linear,
    /// Attention output projection `[hidden, heads·head_dim]`.
    pub o_proj: Linear,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// MLP gate projection `[intermediate, hidden]`.
    pub gate_proj: Linear,
    /// MLP up projection `[intermediate, hidden]`.
    pub up_proj: Linear,
    /// MLP down projection `[hidden, intermediate]`.
    pub down_proj: Linear,
    /// Head layout.
    pub attn: AttnShape,
    /// Gemma 3's extra norms and layer type (`None` for LLaMA-style blocks).
    pub gemma: Option<GemmaParts>,
}

impl Block {
    /// The linear layer of the given kind (`None` for [`LayerKind::Other`]).
    pub fn linear(&self, kind: LayerKind) -> Option<&Linear> {
        Some(match kind {
            LayerKind::Q => &self.q_proj,
            LayerKind::K => &self.k_proj,
            LayerKind::V => &self.v_proj,
            LayerKind::O => &self.o_proj,
            LayerKind::Gate => &self.gate_proj,
            LayerKind::Up => &self.up_proj,
            LayerKind::Down => &self.down_proj,
            LayerKind::Other => return None,
        })
    }

    /// Mutable access to the linear layer of the given kind, e.g. to
    /// [`Linear::set_weight`] its pruned weights.
    pub fn linear_mut(&mut self, kind: LayerKind) -> Option<&mut Linear> {
        Some(match kind {
            LayerKind::Q => &mut self.q_proj,
            LayerKind::K => &mut self.k_proj,
            LayerKind::V => &mut self.v_proj,
            LayerKind::O => &mut self.o_proj,
            LayerKind::Gate => &mut self.gate_proj,
            LayerKind::Up => &mut self.up_proj,
            LayerKind::Down => &mut self.down_proj,
            LayerKind::Other => return None,
        })
    }

    /// The seven linears in forward order.
    pub fn linears(&self) -> impl Iterator<Item = (LayerKind, &Linear)> + '_ {
        LayerKind::BLOCK
            .into_iter()
            .filter_map(move |k| self.linear(k).map(|l| (k, l)))
    }

    /// Set the arithmetic of the seven linears (see [`super::Model::set_precision`]).
    pub(crate) fn set_precision(&mut self, precision: super::Precision) {
        for kind in LayerKind::BLOCK {
            if let Some(l) = self.linear_mut(kind) {
                l.set_precision(precision);
            }
        }
    }

    /// Replace the weight of one linear layer (shape, dtype and device must match).
    pub fn set_weight(&mut self, kind: LayerKind, weight: Tensor) -> Result<()> {
        self.linear_mut(kind)
            .ok_or_else(|| ModelError::Input(format!("a block has no `{}` linear", kind.name())))?
            .set_weight(weight)
    }

    /// Run the block on `x` `[batch, seq, hidden]`, calling `capture` with each linear's
    /// input (see [`Capture`]); returns the block output `[batch, seq, hidden]`.
    pub fn forward(&self, x: &Tensor, rope: &Rope, capture: &mut Capture<'_>) -> Result<Tensor> {
        let h = self.attention_residual(x, rope, capture)?;
        let mlp_in = self.mlp_input(&h, capture)?;
        capture(LayerKind::Down, &mlp_in)?;
        match &self.gemma {
            Some(g) => Ok((&h
                + g.post_feedforward_norm
                    .forward(&self.down_proj.forward(&mlp_in)?)?)?),
            None => self.down_proj.forward_add(&mlp_in, &h),
        }
    }

    /// The RoPE tables and window of this block.
    pub fn rope<'r>(&self, rope: &'r Rope) -> &'r Rope {
        rope.for_layer(self.gemma.as_ref().is_some_and(|g| g.local))
    }

    /// Like [`Block::forward`] for statistics only: calls `capture` for all seven linears but
    /// skips `down_proj` and the final residual, whose results a statistics pass never reads.
    ///
    /// `o_proj` still runs: its output feeds the residual that the MLP's inputs are made from.
    pub fn collect_inputs(&self, x: &Tensor, rope: &Rope, capture: &mut Capture<'_>) -> Result<()> {
        let h = self.attention_residual(x, rope, capture)?;
        let mlp_in = self.mlp_input(&h, capture)?;
        capture(LayerKind::Down, &mlp_in)
    }

    /// `x + o_proj(attention(norm(x)))`, capturing the Q/K/V and O inputs.
    fn attention_residual(
        &self,
        x: &Tensor,
        rope: &Rope,
        capture: &mut Capture<'_>,
    ) -> Result<Tensor> {
        let xn = self.input_layernorm.forward(x)?;
        for kind in [LayerKind::Q, LayerKind::K, LayerKind::V] {
            capture(kind, &xn)?;
        }
        let attn = self.attention(&xn, self.rope(rope))?;
        capture(LayerKind::O, &attn)?;
        match &self.gemma {
            Some(g) => Ok((x + g
                .post_attention_norm
                .forward(&self.o_proj.forward(&attn)?)?)?),
            None => self.o_proj.forward_add(&attn, x),
        }
    }

    /// `silu(gate(norm(h))) · up(norm(h))` (Gemma: `gelu_tanh`), the input of `down_proj`.
    fn mlp_input(&self, h: &Tensor, capture: &mut Capture<'_>) -> Result<Tensor> {
        let hn = self.post_attention_layernorm.forward(h)?;
        capture(LayerKind::Gate, &hn)?;
        capture(LayerKind::Up, &hn)?;
        if self.gemma.is_some() {
            return geglu(&self.gate_proj.forward(&hn)?, &self.up_proj.forward(&hn)?);
        }
        let fused = hn.device().is_cpu()
            && hn.dtype() == DType::F32
            && self.gate_proj.cpu_without_bias()
            && self.up_proj.cpu_without_bias()
            && self.gate_proj.shape() == self.up_proj.shape();
        if fused {
            return self.swiglu_cpu(&hn, self.gate_proj.backend());
        }
        swiglu(&self.gate_proj.forward(&hn)?, &self.up_proj.forward(&hn)?)
    }

    /// `silu(gate(hn)) · up(hn)` in one pass over panels (see [`matmul::matmul_nt_swiglu`]).
    fn swiglu_cpu(&self, hn: &Tensor, be: matmul::Backend) -> Result<Tensor> {
        let (out, inp) = self.gate_proj.shape();
        let mut dims = hn.dims().to_vec();
        let rows = hn.elem_count() / inp;
        if let Some(last) = dims.last_mut() {
            *last = out;
        }
        let hn = hn.contiguous()?;
        let y = with_cpu_f32(&hn, |x| {
            with_cpu_f32(self.gate_proj.weight(), |g| {
                with_cpu_f32(self.up_proj.weight(), |u| {
                    matmul::matmul_nt_swiglu(be, x, g, u, (rows, out, inp))
                })
            })
        })???;
        Ok(Tensor::from_vec(y, dims, hn.device())?)
    }

    /// Causal grouped-query attention; returns the `o_proj` input `[batch, seq, heads·head_dim]`.
    ///
    /// The query heads that share a KV head are stacked along the sequence axis
    /// (`[b, kv, group·t, d]`), so K and V are used in place instead of being repeated
    /// `group` times as transformers' `repeat_kv` does; the arithmetic is the same. Scores
    /// are scaled by [`AttnShape::scale`] after QKᵀ, as in transformers' eager attention.
    fn attention(&self, xn: &Tensor, rope: &Rope) -> Result<Tensor> {
        if xn.device().is_cpu() && xn.dtype() == DType::F32 {
            return self.attention_cpu(xn, rope, self.q_proj.backend());
        }
        self.attention_tensor(xn, rope)
    }

    /// [`Block::attention`] with tensor ops (other devices, and the reference in tests).
    pub(crate) fn attention_tensor(&self, xn: &Tensor, rope: &Rope) -> Result<Tensor> {
        let AttnShape {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
            scale,
        } = self.attn;
        let (b, t, _) = xn.dims3()?;
        let group = nh / nkv;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        let (mut q, mut k) = (
            heads(self.q_proj.forward(xn)?, nh)?,
            heads(self.k_proj.forward(xn)?, nkv)?,
        );
        if let Some(g) = &self.gemma {
            q = g.q_norm.forward(&q)?;
            k = g.k_norm.forward(&k)?;
        }
        let q = rope.apply(&q)?;
        let k = rope.apply(&k)?;
        let v = heads(self.v_proj.forward(xn)?, nkv)?;
        let q = q.reshape((b, nkv, group * t, d))?;
        let scores = q.matmul(&k.t()?)?; // [b, kv, group·t, t]
        let fused = scores.device().is_cpu() && rope.window().is_none_or(|w| w >= t);
        let probs = attention_probs(&scores, scale, rope, fused)?;
        let out = probs.matmul(&v)?;
        Ok(out
            .reshape((b, nh, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, nh * d))?)
    }
}

impl Block {
    /// The CPU attention: projections, RoPE in place, fused causal attention (see
    /// [`super::attention`]); same result as the tensor path up to f32 rounding.
    pub(crate) fn attention_cpu(
        &self,
        xn: &Tensor,
        rope: &Rope,
        be: matmul::Backend,
    ) -> Result<Tensor> {
        let AttnShape {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
            scale,
        } = self.attn;
        let (b, t, _) = xn.dims3()?;
        rope.check_len(t)?;
        let xn = xn.contiguous()?;
        let (mut q, mut k, v) = with_cpu_f32(&xn, |x| -> Result<_> {
            Ok((
                self.q_proj.forward_cpu(be, x, b * t, None)?,
                self.k_proj.forward_cpu(be, x, b * t, None)?,
                self.v_proj.forward_cpu(be, x, b * t, None)?,
            ))
        })??;
        if let Some(g) = &self.gemma {
            g.q_norm.forward_chunks_inplace(&mut q)?;
            g.k_norm.forward_chunks_inplace(&mut k)?;
        }
        let (cos, sin) = rope.host_tables();
        rope_inplace(&mut q, t, nh, d, cos, sin);
        rope_inplace(&mut k, t, nkv, d, cos, sin);
        let heads = Heads {
            b,
            t,
            nh,
            nkv,
            d,
            window: rope.window(),
        };
        // Attention products stay f32 whatever the projections' precision.
        let out = causal_attention(be.f32(), &q, &k, &v, heads, scale as f32);
        Ok(Tensor::from_vec(out, (b, t, nh * d), xn.device())?)
    }
}

/// Causal softmax of `scale · scores` for `[b, kv, group·t, t]` scores: the fused CPU kernel,
/// or (other devices) an additive mask and a plain softmax.
fn attention_probs(scores: &Tensor, scale: f64, rope: &Rope, fused: bool) -> Result<Tensor> {
    if fused {
        return causal_softmax(scores, scale as f32);
    }
    let (b, nkv, rows, t) = scores.dims4()?;
    let s = (scores * scale)?.reshape((b, nkv, rows / t, t, t))?;
    let p = softmax_last(&s.broadcast_add(&rope.mask(t)?)?)?;
    Ok(p.reshape((b, nkv, rows, t))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, ModelConfig};
    use candle_core::Device;

    #[test]
    fn cpu_attention_matches_tensor_path_on_all_backends() {
        let mut backends = vec![matmul::Backend::Gemm];
        if matmul::backend() == matmul::Backend::OpenBlas {
            backends.push(matmul::Backend::OpenBlas);
        }
        for arch in [Arch::Llama, Arch::Qwen2, Arch::Gemma3] {
            let mut cfg = ModelConfig::tiny(arch);
            cfg.max_position_embeddings = 256;
            let m = crate::model::Model::random(&cfg, 9, &Device::Cpu).unwrap();
            // Gemma: block 0 is a sliding-window layer (window 8).
            let blk = &m.blocks[0];
            // One row block, exactly one, several with a ragged last one.
            for t in [1, 9, 64, 130] {
                let rope = Rope::new(&cfg, t, &Device::Cpu).unwrap();
                let rope = blk.rope(&rope);
                let xn = Tensor::randn(0f32, 1.0, (2, t, cfg.hidden_size), &Device::Cpu).unwrap();
                let want = blk.attention_tensor(&xn, rope).unwrap();
                for &be in &backends {
                    let got = blk.attention_cpu(&xn, rope, be).unwrap();
                    assert_eq!(got.dims(), want.dims());
                    let d = crate::model::testutil::max_abs_diff(&got, &want);
                    assert!(d < 1e-5, "{arch:?} t={t} {be:?}: max |Δ| = {d}");
                }
            }
        }
    }

    #[test]
    fn fused_and_generic_attention_probs_agree() {
        let cfg = ModelConfig::tiny(Arch::Llama);
        let rope = Rope::new(&cfg, 6, &Device::Cpu).unwrap();
        // b = 2, kv = 2, group = 3, t = 6.
        let data: Vec<f32> = (0..2 * 2 * 18 * 6)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 9.0)
            .collect();
        let scores = Tensor::from_vec(data, (2, 2, 18, 6), &Device::Cpu).unwrap();
        let fused = attention_probs(&scores, 0.25, &rope, true).unwrap();
        let generic = attention_probs(&scores, 0.25, &rope, false).unwrap();
        let d = (fused - generic)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    }
}
