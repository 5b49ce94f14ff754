//! A differentiable forward of [`Model`] and its backward pass, for the gradient statistic of
//! GBLM-Pruner and Pruner-Zero (`calib::gradient`): the loss `L` of one window (the
//! mean next-token cross-entropy over its `T − 1` predicted positions, as `transformers`
//! computes it with `labels = input_ids`) and `∂L/∂W` of the seven linears of every block.
//!
//! # How
//!
//! The CPU forward of [`Model`] uses fused kernels without a backward pass, so this module is
//! a second forward built from plain candle ops (matmul, broadcast ops, `exp`, sums,
//! `narrow`/`cat` for RoPE's `rotate_half`, an additive causal mask, a softmax written out,
//! candle's differentiable `silu`) that mirrors [`Block::forward`] (attention, layers) and
//! reads the blocks' public weights. It is checked against [`Model::forward`] by the tests.
//!
//! Per window, with block-level recomputation ("gradient checkpointing") so memory holds one
//! block's autograd graph at a time instead of thirty:
//! 1. a forward pass without autograd keeps every block's input (`T × hidden` each; the fast
//!    fused [`Block::forward`] in f32);
//! 2. the output head's gradient is written out analytically: for logits `z = h_n · Eᵀ` and
//!    targets `y`, `∂L/∂h_n[t] = (Σ_v softmax(z_t)_v E_v − E_{y_t}) / (T − 1)` (no one-hot
//!    matrix, no gradient for the frozen head), then autograd takes it through the final norm;
//! 3. from the last block to the first: the block is re-run differentiably from its saved input
//!    with its seven weights (and its input) as [`Var`]s, `Σ out ⊙ ∂L/∂out` is backpropagated,
//!    which yields the weights' gradients and `∂L/∂input` for the block below.
//!
//! Cost per window ≈ one fast forward + one differentiable forward + one backward of the blocks,
//! plus two `T × vocab × hidden` products for the head.

use candle_core::{DType, Tensor, Var, D};

use super::{rope_tables, AttnShape, Block, Model, ModelError, Result};
use crate::layer::LayerKind;

/// Position of `kind` in [`LayerKind::BLOCK`] (`None` for [`LayerKind::Other`]).
fn kind_index(kind: LayerKind) -> Option<usize> {
    LayerKind::BLOCK.iter().position(|&k| k == kind)
}

/// The raw gradient `∂L/∂W` of one window, for checks: `grads[block][k]` is the gradient of
/// the `LayerKind::BLOCK[k]` linear, shaped like its weight, in `dtype`.
#[derive(Debug)]
pub struct WindowGradient {
    /// The window's loss `L` (mean next-token cross-entropy, nats).
    pub loss: f64,
    /// `∂L/∂W` per block and linear.
    pub grads: Vec<Vec<Tensor>>,
}

/// `∂L/∂W` of every block linear for one window, computed in `dtype` (`F32`, or `F64` for
/// precise checks: the model's f32 weights are converted).
pub fn window_gradient(model: &Model, window: &[u32], dtype: DType) -> Result<WindowGradient> {
    let mut grads: Vec<Vec<Option<Tensor>>> = vec![vec![None; 7]; model.blocks.len()];
    let loss = backward_window(model, window, dtype, &mut |block, kind, g| -> Result<()> {
        grads[block][kind_index(kind).expect("a block linear")] = Some(g.clone());
        Ok(())
    })?;
    let grads = grads
        .into_iter()
        .map(|b| {
            b.into_iter()
                .map(|g| g.expect("every linear has a gradient"))
                .collect()
        })
        .collect();
    Ok(WindowGradient { loss, grads })
}

/// The loss `L` of one window through the differentiable forward in `dtype` (what
/// [`window_gradient`] differentiates; for finite-difference checks).
pub fn lm_loss(model: &Model, window: &[u32], dtype: DType) -> Result<f64> {
    let ids = ids(model, window)?;
    let rope = DiffRope::new(model, window.len(), dtype)?;
    let mut x = model.embed(&ids)?.to_dtype(dtype)?;
    for block in &model.blocks {
        x = BlockParams::constant(block, model, dtype)?.forward(&x, &rope)?;
    }
    let head = Head::new(model, dtype)?;
    let hn = rms_norm(&x, &head.norm, head.eps)?;
    Ok(head.loss_and_grad(&hn, window, false)?.0)
}

/// Full-sequence logits `[batch, seq, vocab]` of `[batch, seq]` u32 `ids` through the
/// differentiable forward, in `dtype` (it must equal [`Model::forward`]).
pub fn forward(model: &Model, ids: &Tensor, dtype: DType) -> Result<Tensor> {
    let (_, t) = ids.dims2()?;
    let rope = DiffRope::new(model, t, dtype)?;
    let mut x = model.embed(ids)?.to_dtype(dtype)?;
    for block in &model.blocks {
        x = BlockParams::constant(block, model, dtype)?.forward(&x, &rope)?;
    }
    let head = Head::new(model, dtype)?;
    let hn = rms_norm(&x, &head.norm, head.eps)?;
    linear(&hn, &head.weight, head.bias.as_ref())
}

/// A `[1, T]` id tensor, checked.
fn ids(model: &Model, window: &[u32]) -> Result<Tensor> {
    if window.len() < 2 {
        return Err(ModelError::Input(format!(
            "a window needs at least 2 tokens for a next-token loss, got {}",
            window.len()
        )));
    }
    model.ids_tensor(&[window])
}

/// `∂L/∂W` of one `window` (at least 2 tokens), computed in `dtype`: forward with
/// checkpoints, analytic head gradient, block-by-block backward (see the module docs). Calls
/// `sink(block, kind, ∂L/∂W)` for every linear (blocks last to first) and returns the loss;
/// an error of the sink stops the pass and is returned as it is.
pub fn backward_window<E>(
    model: &Model,
    window: &[u32],
    dtype: DType,
    sink: &mut dyn FnMut(usize, LayerKind, &Tensor) -> std::result::Result<(), E>,
) -> std::result::Result<f64, E>
where
    E: From<ModelError> + From<candle_core::Error>,
{
    let ids = ids(model, window)?;
    let t = window.len();
    let rope = DiffRope::new(model, t, dtype)?;
    // 1. Checkpoints: the input of every block, and the final hidden state.
    let mut inputs = Vec::with_capacity(model.blocks.len());
    let mut x = model.embed(&ids)?.to_dtype(dtype)?;
    if dtype == DType::F32 {
        let fast = model.rope(t)?;
        for block in &model.blocks {
            let y = block.forward(&x, &fast, &mut |_, _| Ok(()))?;
            inputs.push(std::mem::replace(&mut x, y));
        }
    } else {
        for block in &model.blocks {
            let y = BlockParams::constant(block, model, dtype)?.forward(&x, &rope)?;
            inputs.push(std::mem::replace(&mut x, y));
        }
    }
    // 2. The head: loss and ∂L/∂h through the final norm.
    let head = Head::new(model, dtype)?;
    let h = Var::from_tensor(&x)?;
    let hn = rms_norm(h.as_tensor(), &head.norm, head.eps)?;
    let (loss, dhn) = head.loss_and_grad(&hn.detach(), window, true)?;
    let dhn = dhn.expect("asked for the gradient");
    let grads = (hn * dhn)?.sum_all()?.backward()?;
    let mut dout = grads
        .get(h.as_tensor())
        .ok_or_else(|| ModelError::Input("no gradient reached the last hidden state".into()))?
        .clone();
    drop(grads);
    // 3. Blocks, last to first.
    for (i, x) in inputs.iter().enumerate().rev() {
        let block = &model.blocks[i];
        let mut params = BlockParams::constant(block, model, dtype)?;
        let vars = params.make_vars()?;
        // The first block's input is the embedding: no gradient needed there.
        let xv = if i > 0 {
            Some(Var::from_tensor(x)?)
        } else {
            None
        };
        let xin = xv.as_ref().map_or(x, |v| v.as_tensor());
        let out = params.forward(xin, &rope)?;
        let grads = (out * &dout)?.sum_all()?.backward()?;
        for (kind, v) in LayerKind::BLOCK.into_iter().zip(&vars) {
            let g = grads.get(v.as_tensor()).ok_or_else(|| {
                ModelError::Input(format!("no gradient for block {i} {}", kind.name()))
            })?;
            sink(i, kind, g)?;
        }
        if let Some(xv) = &xv {
            dout = grads
                .get(xv.as_tensor())
                .ok_or_else(|| ModelError::Input(format!("no gradient for block {i} input")))?
                .clone();
        }
    }
    Ok(loss)
}

/// RoPE tables in the Hugging Face `rotate_half` layout, widened to the full head width.
struct DiffRope {
    /// `[T, head_dim]`: `cos` repeated over both halves.
    cos: Tensor,
    /// `[T, head_dim]`.
    sin: Tensor,
    /// `[T, T]` additive causal mask (0 or −∞; within the window for local layers).
    mask: Tensor,
    half: usize,
    /// Gemma 3: the tables and mask of the sliding-window layers.
    local: Option<Box<DiffRope>>,
}

impl DiffRope {
    fn new(model: &Model, t: usize, dtype: DType) -> Result<Self> {
        // Same validation as the model (sliding window); the fast tables are not used here.
        model.rope(t)?;
        let cfg = &model.config;
        let mut rope = Self::tables(model, cfg.rope_theta, None, t, dtype)?;
        if let Some(g) = cfg.gemma {
            let local = Self::tables(model, g.rope_local_theta, cfg.sliding_window, t, dtype)?;
            rope.local = Some(Box::new(local));
        }
        Ok(rope)
    }

    fn tables(
        model: &Model,
        theta: f64,
        window: Option<usize>,
        t: usize,
        dtype: DType,
    ) -> Result<Self> {
        let d = model.config.head_dim;
        let half = d / 2;
        let dev = model.device();
        let (cos, sin) = rope_tables(d, theta, t);
        let widen = |v: Vec<f32>| -> Result<Tensor> {
            let h = Tensor::from_vec(v, (t, half), dev)?;
            Ok(Tensor::cat(&[&h, &h], 1)?.to_dtype(dtype)?)
        };
        let mask = super::layers::causal_mask(t, window);
        Ok(Self {
            cos: widen(cos)?,
            sin: widen(sin)?,
            mask: Tensor::from_vec(mask, (t, t), dev)?.to_dtype(dtype)?,
            half,
            local: None,
        })
    }

    /// The tables of a block (Gemma 3's local layers have their own).
    fn for_layer(&self, local: bool) -> &DiffRope {
        match (&self.local, local) {
            (Some(l), true) => l,
            _ => self,
        }
    }

    /// Rotate `[b, heads, T, head_dim]`: `x·cos + rotate_half(x)·sin`,
    /// `rotate_half(x) = [−x₂, x₁]`.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let x1 = x.narrow(3, 0, self.half)?;
        let x2 = x.narrow(3, self.half, self.half)?;
        let rot = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
        Ok((x.broadcast_mul(&self.cos)? + rot.broadcast_mul(&self.sin)?)?)
    }
}

/// `x / sqrt(mean(x²) + eps) · w` over the last axis.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// `x·Wᵀ + b` for `x` of shape `[..., in]`, as one GEMM over the flattened leading axes.
fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let dims = x.dims().to_vec();
    let rows = x.elem_count() / inp;
    let y = x.reshape((rows, inp))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = out;
    }
    Ok(y.reshape(out_dims)?)
}

/// The RMSNorm epsilon exactly as the model applies it (rounded to f32).
fn model_eps(model: &Model) -> f64 {
    f64::from(model.config.rms_norm_eps as f32)
}

/// One block's parameters as tensors of one dtype, optionally with the linears' weights as
/// [`Var`]s.
struct BlockParams {
    ln1: Tensor,
    ln2: Tensor,
    /// Gemma 3's q/k, post-attention and post-MLP norm scales, and whether the block is local.
    gemma: Option<([Tensor; 4], bool)>,
    /// Weights in [`LayerKind::BLOCK`] order.
    w: Vec<Tensor>,
    /// Biases in the same order.
    b: Vec<Option<Tensor>>,
    attn: AttnShape,
    eps: f64,
}

impl BlockParams {
    fn constant(block: &Block, model: &Model, dtype: DType) -> Result<Self> {
        let mut w = Vec::with_capacity(7);
        let mut b = Vec::with_capacity(7);
        for (_, l) in block.linears() {
            w.push(l.weight().to_dtype(dtype)?);
            b.push(l.bias().map(|b| b.to_dtype(dtype)).transpose()?);
        }
        let gemma = match &block.gemma {
            Some(g) => {
                let sc = |n: &super::RmsNorm| n.scale().to_dtype(dtype);
                let scales = [
                    sc(&g.q_norm)?,
                    sc(&g.k_norm)?,
                    sc(&g.post_attention_norm)?,
                    sc(&g.post_feedforward_norm)?,
                ];
                Some((scales, g.local))
            }
            None => None,
        };
        Ok(Self {
            ln1: block.input_layernorm.scale().to_dtype(dtype)?,
            ln2: block.post_attention_layernorm.scale().to_dtype(dtype)?,
            gemma,
            w,
            b,
            attn: block.attn,
            eps: model_eps(model),
        })
    }

    /// Turn the seven weights into fresh variables (copies) and return them.
    fn make_vars(&mut self) -> Result<Vec<Var>> {
        let vars: Vec<Var> = self
            .w
            .iter()
            .map(Var::from_tensor)
            .collect::<Result<_, _>>()?;
        self.w = vars.iter().map(|v| v.as_tensor().clone()).collect();
        Ok(vars)
    }

    fn lin(&self, kind: LayerKind, x: &Tensor) -> Result<Tensor> {
        let k = kind_index(kind).expect("a block linear");
        linear(x, &self.w[k], self.b[k].as_ref())
    }

    /// The block on `x` `[b, T, hidden]`: pre-norm GQA attention and SwiGLU MLP, residuals
    /// (Gemma 3: QK-norm, post-norms, GELU, its local layers' tables and window).
    fn forward(&self, x: &Tensor, rope: &DiffRope) -> Result<Tensor> {
        let AttnShape {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
            scale,
        } = self.attn;
        let rope = rope.for_layer(self.gemma.as_ref().is_some_and(|g| g.1));
        let norms = self.gemma.as_ref().map(|g| &g.0);
        let (b, t, _) = x.dims3()?;
        let group = nh / nkv;
        let xn = rms_norm(x, &self.ln1, self.eps)?;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        let (mut q, mut k) = (
            heads(self.lin(LayerKind::Q, &xn)?, nh)?,
            heads(self.lin(LayerKind::K, &xn)?, nkv)?,
        );
        if let Some(n) = norms {
            q = rms_norm(&q, &n[0], self.eps)?;
            k = rms_norm(&k, &n[1], self.eps)?;
        }
        let q = rope.apply(&q)?;
        let k = rope.apply(&k)?;
        let v = heads(self.lin(LayerKind::V, &xn)?, nkv)?;
        // The query heads sharing a KV head are stacked along the sequence axis, as the model
        // does: head h = j·group + g is rows g·T.. of KV group j.
        let q = q.reshape((b, nkv, group * t, d))?;
        let s = (q.matmul(&k.t()?)? * scale)?
            .reshape((b, nkv, group, t, t))?
            .broadcast_add(&rope.mask)?;
        // Softmax written out; the row maximum is a constant shift (detached: exact gradient).
        let m = s.max_keepdim(D::Minus1)?.detach();
        let e = s.broadcast_sub(&m)?.exp()?;
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let a = p.reshape((b, nkv, group * t, t))?.matmul(&v)?;
        let a = a
            .reshape((b, nh, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, nh * d))?;
        let post = |y: Tensor, k: usize| -> Result<Tensor> {
            match norms {
                Some(n) => rms_norm(&y, &n[k], self.eps),
                None => Ok(y),
            }
        };
        let h = (x + post(self.lin(LayerKind::O, &a)?, 2)?)?;
        let hn = rms_norm(&h, &self.ln2, self.eps)?;
        let gate = self.lin(LayerKind::Gate, &hn)?;
        let gate = match norms {
            Some(_) => gate.gelu()?,
            None => gate.silu()?,
        };
        let act = (gate * self.lin(LayerKind::Up, &hn)?)?;
        Ok((h + post(self.lin(LayerKind::Down, &act)?, 3)?)?)
    }
}

/// The final norm and output head, in one dtype.
struct Head {
    norm: Tensor,
    eps: f64,
    /// `[vocab, hidden]` (the embedding matrix when tied).
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Head {
    fn new(model: &Model, dtype: DType) -> Result<Self> {
        Ok(Self {
            norm: model.norm.scale().to_dtype(dtype)?,
            eps: model_eps(model),
            weight: model.lm_head.weight().to_dtype(dtype)?,
            bias: model
                .lm_head
                .bias()
                .map(|b| b.to_dtype(dtype))
                .transpose()?,
        })
    }

    /// Loss of the window from normed final states `hn` `[1, T, hidden]` and, if `grad`,
    /// `∂L/∂hn` `[1, T, hidden]` (zero at the last position, which predicts nothing).
    fn loss_and_grad(
        &self,
        hn: &Tensor,
        window: &[u32],
        grad: bool,
    ) -> Result<(f64, Option<Tensor>)> {
        let (_, t, hidden) = hn.dims3()?;
        let n = t - 1;
        let dev = hn.device();
        let hs = hn.reshape((t, hidden))?.narrow(0, 0, n)?;
        let logits = linear(&hs, &self.weight, self.bias.as_ref())?; // [n, vocab]
        let m = logits.max_keepdim(1)?;
        let e = logits.broadcast_sub(&m)?.exp()?;
        let z = e.sum_keepdim(1)?;
        let targets = Tensor::from_vec(window[1..].to_vec(), (n, 1), dev)?;
        let picked = logits.gather(&targets, 1)?;
        // −log p(y_t) = max + ln Σ exp(z − max) − z_y
        let nll = ((m + z.log()?)? - picked)?;
        let loss = nll.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? / n as f64;
        if !grad {
            return Ok((loss, None));
        }
        let p = e.broadcast_div(&z)?;
        let ey = self.weight.index_select(&targets.flatten_all()?, 0)?;
        let d = ((p.matmul(&self.weight)? - ey)? / n as f64)?;
        let d = Tensor::cat(&[&d, &Tensor::zeros((1, hidden), d.dtype(), dev)?], 0)?;
        Ok((loss, Some(d.reshape((1, t, hidden))?)))
    }
}
