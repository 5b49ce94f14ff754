//! The gradient statistic of GBLM-Pruner and Pruner-Zero: for every weight of the seven linears
//! of every block, `G_ij = sqrt(Σ_windows (100 · ∂L/∂W_ij)²)`, where `L` is the language-model
//! loss of one calibration window (the mean next-token cross-entropy over its `T − 1` predicted
//! positions, as `transformers` computes it with `labels = input_ids`). It is taken on the dense
//! model, one window at a time (batch 1, as the reference `gradient_computation.py` does: a
//! window's gradient is squared before windows are summed, so batching would change it).
//!
//! # How
//!
//! The CPU forward of [`Model`] uses fused kernels without a backward pass, so this module has
//! its own differentiable forward built from plain candle ops (matmul, broadcast ops, `exp`,
//! sums, `narrow`/`cat` for RoPE's `rotate_half`, an additive causal mask, a softmax written
//! out, candle's differentiable `silu`), reading the blocks' public weights. It is checked
//! against [`Model::forward`] by the tests.
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
//!
//! # Accumulators
//!
//! `Σ (100·g)²` is accumulated on the host in **f32**, one `Vec<f32>` per (block, linear), the
//! same as the reference (`gradients_l2` is float32 there). With at most a few hundred windows
//! of non-negative terms the relative rounding error stays below ~1e-5, far under what a
//! ranking can see; f64 would double the memory (SmolLM2-135M: 425 MB in f32).

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Tensor, Var, D};

use crate::layer::LayerKind;
use crate::model::{rope_tables, AttnShape, Block, Model, ModelError};

/// The factor GBLM-Pruner and Pruner-Zero multiply gradients by before squaring.
pub const GRADIENT_SCALE: f32 = 100.0;

/// Why the gradient pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum GradientError {
    /// A tensor operation or the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The calibration windows cannot be used (empty, too short, ids outside the vocabulary).
    #[error("gradient pass: {0}")]
    Input(String),
    /// The progress callback asked to stop.
    #[error("the gradient pass was stopped after {done} of {total} windows")]
    Cancelled {
        /// Windows finished.
        done: usize,
        /// Windows requested.
        total: usize,
    },
}

impl From<candle_core::Error> for GradientError {
    fn from(e: candle_core::Error) -> Self {
        GradientError::Model(e.into())
    }
}

type Result<T, E = GradientError> = std::result::Result<T, E>;

/// Position of `kind` in [`LayerKind::BLOCK`] (`None` for [`LayerKind::Other`]).
fn kind_index(kind: LayerKind) -> Option<usize> {
    LayerKind::BLOCK.iter().position(|&k| k == kind)
}

/// The gradient statistic of every linear of every block, row-major like the weights.
#[derive(Debug, Clone)]
pub struct Gradients {
    /// `[block][kind in LayerKind::BLOCK order]`; `None` once released.
    layers: Vec<Option<Vec<Vec<f32>>>>,
    /// Calibration windows accumulated.
    pub windows: usize,
    /// Mean over windows of the window loss (nats per predicted token) of the dense model.
    pub mean_loss: f64,
    /// Wall-clock seconds of the pass.
    pub seconds: f64,
}

impl Gradients {
    /// `G = sqrt(Σ_windows (100·∂L/∂W)²)` of the `kind` linear of `block`, row-major
    /// (`rows · cols` values); `None` for an unknown layer or a released block.
    pub fn get(&self, block: usize, kind: LayerKind) -> Option<&[f32]> {
        let k = kind_index(kind)?;
        self.layers.get(block)?.as_ref().map(|b| b[k].as_slice())
    }

    /// Number of blocks covered.
    pub fn num_blocks(&self) -> usize {
        self.layers.len()
    }

    /// Free the statistic of `block` (a pruning run no longer needs a block it has pruned).
    pub fn release_block(&mut self, block: usize) {
        if let Some(b) = self.layers.get_mut(block) {
            *b = None;
        }
    }

    /// Bytes held by the statistics still present.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flat_map(|b| b.iter().map(|v| v.len() * 4))
            .sum()
    }
}

/// Magic and version of the gradient file format ([`Gradients::save`]).
const FILE_MAGIC: &[u8; 8] = b"APGRAD01";

impl Gradients {
    /// Write the statistic to `path` (atomically: a temporary file renamed into place):
    /// a header (magic, windows, mean loss, seconds, block and layer counts, each layer's
    /// length), the values as little-endian f32, and a SHA-256 of everything before it.
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut buf: Vec<u8> = Vec::with_capacity(self.bytes() + 4096);
        buf.extend_from_slice(FILE_MAGIC);
        buf.extend_from_slice(&(self.windows as u64).to_le_bytes());
        buf.extend_from_slice(&self.mean_loss.to_le_bytes());
        buf.extend_from_slice(&self.seconds.to_le_bytes());
        buf.extend_from_slice(&(self.layers.len() as u64).to_le_bytes());
        for block in &self.layers {
            let block = block
                .as_ref()
                .ok_or_else(|| std::io::Error::other("a released block cannot be saved"))?;
            buf.extend_from_slice(&(block.len() as u64).to_le_bytes());
            for l in block {
                buf.extend_from_slice(&(l.len() as u64).to_le_bytes());
            }
        }
        for l in self.layers.iter().flatten().flatten() {
            for v in l {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        let digest = crate::hash::sha256_hex(&buf);
        buf.extend_from_slice(digest.as_bytes());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut tmp =
            tempfile::NamedTempFile::new_in(path.parent().unwrap_or(std::path::Path::new(".")))?;
        tmp.write_all(&buf)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Read a statistic written by [`Gradients::save`] for `model`: every block's layers must
    /// have the model's weight counts, and the checksum must match; anything else is an error
    /// (never a panic), so a corrupt or foreign file is recomputed instead of used.
    pub fn load(path: &std::path::Path, model: &Model) -> Result<Gradients> {
        let bad = |why: &str| GradientError::Input(format!("{}: {why}", path.display()));
        let expected: u64 = model
            .blocks
            .iter()
            .flat_map(|b| b.linears().map(|(_, l)| l.weight().elem_count() as u64))
            .sum();
        let meta = std::fs::metadata(path).map_err(|e| bad(&e.to_string()))?;
        // Header, per-layer lengths, values and digest; refuse before reading anything larger.
        let limit = 4 * expected + 64 + 16 * (model.blocks.len() as u64 + 1) * 8 + 64;
        if meta.len() > limit {
            return Err(bad("larger than the model's gradient statistic"));
        }
        let buf = std::fs::read(path).map_err(|e| bad(&e.to_string()))?;
        if buf.len() < 8 + 32 + 64 || &buf[..8] != FILE_MAGIC {
            return Err(bad("not a gradient statistic file"));
        }
        let (body, digest) = buf.split_at(buf.len() - 64);
        if crate::hash::sha256_hex(body).as_bytes() != digest {
            return Err(bad("checksum mismatch"));
        }
        let mut at = 8usize;
        let u64_at = |at: &mut usize| -> Result<u64> {
            let b = body
                .get(*at..*at + 8)
                .ok_or_else(|| bad("truncated header"))?;
            *at += 8;
            Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        let windows = u64_at(&mut at)? as usize;
        let mean_loss = f64::from_bits(u64_at(&mut at)?);
        let seconds = f64::from_bits(u64_at(&mut at)?);
        let blocks = u64_at(&mut at)? as usize;
        if blocks != model.blocks.len() {
            return Err(bad("block count differs from the model's"));
        }
        let mut shapes = Vec::with_capacity(blocks);
        for b in &model.blocks {
            let n = u64_at(&mut at)? as usize;
            let want: Vec<usize> = b.linears().map(|(_, l)| l.weight().elem_count()).collect();
            if n != want.len() {
                return Err(bad("layer count differs from the model's"));
            }
            let mut lens = Vec::with_capacity(n);
            for &w in &want {
                let len = u64_at(&mut at)? as usize;
                if len != w {
                    return Err(bad("a layer's size differs from the model's"));
                }
                lens.push(len);
            }
            shapes.push(lens);
        }
        let mut layers = Vec::with_capacity(blocks);
        for lens in shapes {
            let mut block = Vec::with_capacity(lens.len());
            for len in lens {
                let bytes = body
                    .get(at..at + 4 * len)
                    .ok_or_else(|| bad("truncated values"))?;
                at += 4 * len;
                block.push(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                        .collect(),
                );
            }
            layers.push(Some(block));
        }
        if at != body.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Gradients {
            layers,
            windows,
            mean_loss,
            seconds,
        })
    }
}

/// Compute the gradient statistic of all seven linears of every block of the dense `model` over
/// the calibration `windows` (each of at least 2 tokens; lengths may differ), one window at a
/// time.
///
/// `progress(done, total)` is called after every window; returning `ControlFlow::Break(())`
/// stops the pass with [`GradientError::Cancelled`] (the statistics of finished windows are
/// dropped: a partial sum is not the statistic).
pub fn compute(
    model: &Model,
    windows: &[&[u32]],
    progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<Gradients> {
    let start = Instant::now();
    if windows.is_empty() {
        return Err(GradientError::Input("no calibration windows".into()));
    }
    let mut acc: Vec<Vec<Vec<f32>>> = model
        .blocks
        .iter()
        .map(|b| {
            b.linears()
                .map(|(_, l)| vec![0f32; l.weight().elem_count()])
                .collect()
        })
        .collect();
    let mut loss_sum = 0f64;
    for (w, window) in windows.iter().enumerate() {
        let loss = backward_window(model, window, DType::F32, &mut |block, kind, g| {
            let k = kind_index(kind).expect("a block linear");
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            let a = &mut acc[block][k];
            if g.len() != a.len() {
                return Err(GradientError::Input(format!(
                    "gradient of block {block} {} has {} values, expected {}",
                    kind.name(),
                    g.len(),
                    a.len()
                )));
            }
            for (a, g) in a.iter_mut().zip(&g) {
                let s = GRADIENT_SCALE * g;
                *a += s * s;
            }
            Ok(())
        })?;
        loss_sum += loss;
        if progress(w + 1, windows.len()).is_break() {
            return Err(GradientError::Cancelled {
                done: w + 1,
                total: windows.len(),
            });
        }
    }
    for v in acc.iter_mut().flatten() {
        v.iter_mut().for_each(|x| *x = x.sqrt());
    }
    Ok(Gradients {
        layers: acc.into_iter().map(Some).collect(),
        windows: windows.len(),
        mean_loss: loss_sum / windows.len() as f64,
        seconds: start.elapsed().as_secs_f64(),
    })
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
    let loss = backward_window(model, window, dtype, &mut |block, kind, g| {
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
        return Err(GradientError::Input(format!(
            "a window needs at least 2 tokens for a next-token loss, got {}",
            window.len()
        )));
    }
    Ok(model.ids_tensor(&[window])?)
}

/// Forward with checkpoints, analytic head gradient, block-by-block backward. Calls
/// `sink(block, kind, ∂L/∂W)` for every linear (blocks last to first) and returns the loss.
fn backward_window(
    model: &Model,
    window: &[u32],
    dtype: DType,
    sink: &mut dyn FnMut(usize, LayerKind, &Tensor) -> Result<()>,
) -> Result<f64> {
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
        .ok_or_else(|| GradientError::Input("no gradient reached the last hidden state".into()))?
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
                GradientError::Input(format!("no gradient for block {i} {}", kind.name()))
            })?;
            sink(i, kind, g)?;
        }
        if let Some(xv) = &xv {
            dout = grads
                .get(xv.as_tensor())
                .ok_or_else(|| GradientError::Input(format!("no gradient for block {i} input")))?
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
    /// `[T, T]` additive causal mask (0 or −∞).
    mask: Tensor,
    half: usize,
}

impl DiffRope {
    fn new(model: &Model, t: usize, dtype: DType) -> Result<Self> {
        // Same validation as the model (sliding window); the fast tables are not used here.
        model.rope(t)?;
        let cfg = &model.config;
        let half = cfg.head_dim / 2;
        let dev = model.device();
        let (cos, sin) = rope_tables(cfg.head_dim, cfg.rope_theta, t);
        let widen = |v: Vec<f32>| -> Result<Tensor> {
            let h = Tensor::from_vec(v, (t, half), dev)?;
            Ok(Tensor::cat(&[&h, &h], 1)?.to_dtype(dtype)?)
        };
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Ok(Self {
            cos: widen(cos)?,
            sin: widen(sin)?,
            mask: Tensor::from_vec(mask, (t, t), dev)?.to_dtype(dtype)?,
            half,
        })
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
        Ok(Self {
            ln1: block.input_layernorm.weight().to_dtype(dtype)?,
            ln2: block.post_attention_layernorm.weight().to_dtype(dtype)?,
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

    /// The block on `x` `[b, T, hidden]`: pre-norm GQA attention and SwiGLU MLP, residuals.
    fn forward(&self, x: &Tensor, rope: &DiffRope) -> Result<Tensor> {
        let AttnShape {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
        } = self.attn;
        let (b, t, _) = x.dims3()?;
        let group = nh / nkv;
        let xn = rms_norm(x, &self.ln1, self.eps)?;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        let q = rope.apply(&heads(self.lin(LayerKind::Q, &xn)?, nh)?)?;
        let k = rope.apply(&heads(self.lin(LayerKind::K, &xn)?, nkv)?)?;
        let v = heads(self.lin(LayerKind::V, &xn)?, nkv)?;
        // The query heads sharing a KV head are stacked along the sequence axis, as the model
        // does: head h = j·group + g is rows g·T.. of KV group j.
        let q = q.reshape((b, nkv, group * t, d))?;
        let scale = 1.0 / (d as f64).sqrt();
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
        let h = (x + self.lin(LayerKind::O, &a)?)?;
        let hn = rms_norm(&h, &self.ln2, self.eps)?;
        let act = (self.lin(LayerKind::Gate, &hn)?.silu()? * self.lin(LayerKind::Up, &hn)?)?;
        Ok((h + self.lin(LayerKind::Down, &act)?)?)
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
            norm: model.norm.weight().to_dtype(dtype)?,
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
