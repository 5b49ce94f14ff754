//! The small building blocks of a LLaMA block: linear layers, RMSNorm, and the per-length
//! position tables (RoPE cos/sin, causal mask).

use std::sync::Arc;

use candle_core::{DType, Device, Storage, Tensor};

use super::matmul::{self, Backend};
use super::{ModelConfig, ModelError, Precision, Result};

/// A dense linear layer `y = x·Wᵀ + b` with an f32 weight `[out, in]` (Hugging Face layout).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    precision: Precision,
}

impl Linear {
    /// Wrap a `[out, in]` f32 weight and an optional `[out]` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out, _) = weight.dims2()?;
        check_f32("linear weight", &weight)?;
        if let Some(b) = &bias {
            check_f32("linear bias", b)?;
            if b.dims() != [out] {
                return Err(ModelError::Shape(format!(
                    "bias shape {:?} does not match {out} output features",
                    b.dims()
                )));
            }
        }
        // The CPU product reads the weight as a row-major slice.
        let weight = weight.contiguous()?;
        Ok(Self {
            weight,
            bias,
            precision: Precision::F32,
        })
    }

    /// The `[out, in]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The `[out]` bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `(out_features, in_features)`.
    pub fn shape(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (d[0], d[1])
    }

    /// This layer with the given arithmetic for its CPU product (bf16 needs a CPU weight and a
    /// CPU with AVX512-BF16).
    pub fn with_precision(mut self, precision: Precision) -> Result<Self> {
        super::check_precision(precision, self.weight.device())?;
        self.precision = precision;
        Ok(self)
    }

    /// The arithmetic of the CPU product (see [`super::Model::set_precision`], which checks
    /// that the CPU supports it).
    pub(crate) fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The arithmetic of the CPU product.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The CPU matrix-product backend of this layer.
    pub(crate) fn backend(&self) -> Backend {
        match self.precision {
            Precision::Bf16 => Backend::Bf16,
            Precision::F32 => matmul::backend(),
        }
    }

    /// Replace the weight (e.g. with its pruned version); shape, dtype and device must match.
    pub fn set_weight(&mut self, weight: Tensor) -> Result<()> {
        if weight.dims() != self.weight.dims() {
            return Err(ModelError::Shape(format!(
                "new weight {:?} does not match {:?}",
                weight.dims(),
                self.weight.dims()
            )));
        }
        check_f32("linear weight", &weight)?;
        if !weight.device().same_device(self.weight.device()) {
            return Err(ModelError::Shape("new weight is on another device".into()));
        }
        self.weight = weight.contiguous()?;
        Ok(())
    }

    /// Apply to `x` of shape `[..., in]`, giving `[..., out]`.
    ///
    /// The leading dimensions are flattened into one GEMM of `rows × in × out` (one large
    /// product is much faster than a batch of small ones on the CPU).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out, inp) = self.shape();
        let dims = x.dims();
        if dims.last() != Some(&inp) {
            return Err(ModelError::Shape(format!(
                "input {dims:?} does not end in {inp} features"
            )));
        }
        let rows = x.elem_count() / inp;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = out;
        }
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let x = x.contiguous()?;
            let y = with_cpu_f32(&x, |xs| self.forward_cpu(self.backend(), xs, rows, None))??;
            return Ok(Tensor::from_vec(y, out_dims, x.device())?);
        }
        let y = x.reshape((rows, inp))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        Ok(y.reshape(out_dims)?)
    }

    /// `residual + forward(x)` (a transformer's residual branch), fused into the product's
    /// panels on the CPU; `residual` has the output's shape.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (out, inp) = self.shape();
        let cpu = x.device().is_cpu() && x.dtype() == DType::F32 && residual.dtype() == DType::F32;
        if !cpu || x.dims().last() != Some(&inp) {
            return Ok((residual + self.forward(x)?)?);
        }
        let rows = x.elem_count() / inp;
        if residual.elem_count() != rows * out {
            return Err(ModelError::Shape(format!(
                "residual {:?} does not match {rows} rows of {out}",
                residual.dims()
            )));
        }
        let (x, r) = (x.contiguous()?, residual.contiguous()?);
        let y = with_cpu_f32(&x, |xs| {
            with_cpu_f32(&r, |rs| {
                self.forward_cpu(self.backend(), xs, rows, Some(rs))
            })
        })???;
        Ok(Tensor::from_vec(y, residual.dims(), x.device())?)
    }

    /// CPU product of a row-major `[rows, in]` slice: `[rows, out]`, bias and `residual`
    /// (`[rows, out]`) added.
    pub(crate) fn forward_cpu(
        &self,
        be: Backend,
        x: &[f32],
        rows: usize,
        residual: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let (out, inp) = self.shape();
        if x.len() != rows * inp {
            return Err(ModelError::Shape(format!(
                "input of {} values is not {rows} rows of {inp}",
                x.len()
            )));
        }
        let bias = match &self.bias {
            Some(b) => Some(b.to_device(&Device::Cpu)?.contiguous()?),
            None => None,
        };
        let dims = (rows, out, inp);
        with_cpu_f32(&self.weight, |w| match &bias {
            Some(b) => with_cpu_f32(b, |b| matmul::matmul_nt(be, x, w, dims, Some(b), residual)),
            None => Ok(matmul::matmul_nt(be, x, w, dims, None, residual)),
        })?
    }

    /// Whether the CPU path can read this layer (f32 weight in host memory, no bias).
    pub(crate) fn cpu_without_bias(&self) -> bool {
        self.bias.is_none() && self.weight.device().is_cpu()
    }
}

/// Run `f` on the f32 elements of a contiguous CPU tensor.
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(cpu), Some((lo, hi))) = (&*storage, layout.contiguous_offsets()) else {
        return Err(ModelError::Shape("expected a contiguous CPU tensor".into()));
    };
    Ok(f(&cpu.as_slice::<f32>()?[lo..hi]))
}

/// [`with_cpu_f32`] for a tensor on any device: a contiguous CPU tensor is lent as it is, any
/// other copied to the host first.
pub(crate) fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if t.device().is_cpu() && t.is_contiguous() && t.dtype() == candle_core::DType::F32 {
        return with_cpu_f32(t, f);
    }
    let v: Vec<f32> = t
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    Ok(f(&v))
}

/// Root-mean-square layer norm: `x / sqrt(mean(x²) + eps) · w`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// The checkpoint's weight.
    weight: Tensor,
    /// The scale applied: `weight`, or Gemma's `1 + weight`.
    scale: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Wrap a `[hidden]` f32 weight.
    pub fn new(weight: Tensor, eps: f64) -> Result<Self> {
        weight.dims1()?;
        check_f32("norm weight", &weight)?;
        Ok(Self {
            scale: weight.clone(),
            weight,
            // transformers adds eps to an f32 variance, so the f32 rounding of eps is exact.
            eps: eps as f32,
        })
    }

    /// Gemma's norm `x / rms(x) · (1 + w)` with its checkpoint weight `w`.
    pub fn new_offset(weight: Tensor, eps: f64) -> Result<Self> {
        let mut n = Self::new(weight, eps)?;
        n.scale = (&n.weight + 1.0)?;
        Ok(n)
    }

    /// Gemma's norm from the scale `1 + w` itself (how llama.cpp stores it): the scale is
    /// kept exactly, the checkpoint weight is `scale − 1`.
    pub fn from_offset_scale(scale: Tensor, eps: f64) -> Result<Self> {
        let mut n = Self::new((&scale - 1.0)?, eps)?;
        n.scale = scale;
        Ok(n)
    }

    /// The `[hidden]` checkpoint weight (for Gemma the `w` of `1 + w`).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The `[hidden]` factor applied after normalising (`1 + w` for Gemma).
    pub fn scale(&self) -> &Tensor {
        &self.scale
    }

    /// The epsilon added to the mean square.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Normalise the last dimension of `x` (copied first if it is not contiguous).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.scale,
            self.eps,
        )?)
    }

    /// Normalise every `width`-wide chunk of a row-major slice in place (Gemma's per-head
    /// QK-norm on the projections' `[rows, heads·width]` layout), in f32 as transformers does.
    pub(crate) fn forward_chunks_inplace(&self, x: &mut [f32]) -> Result<()> {
        let scale = self.scale.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
        let width = scale.len();
        if width == 0 || !x.len().is_multiple_of(width) {
            return Err(ModelError::Shape(format!(
                "{} values do not split into norms of {width}",
                x.len()
            )));
        }
        let eps = self.eps;
        use rayon::prelude::*;
        x.par_chunks_mut(width * 64).for_each(|rows| {
            for chunk in rows.chunks_exact_mut(width) {
                let ms = chunk.iter().map(|v| v * v).sum::<f32>() / width as f32;
                let inv = 1.0 / (ms + eps).sqrt();
                for (v, s) in chunk.iter_mut().zip(&scale) {
                    *v = *v * inv * s;
                }
            }
        });
        Ok(())
    }
}

/// Position tables for sequences up to `max_len` tokens: RoPE cos/sin in the Hugging Face
/// `rotate_half` layout.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// The same tables in host memory, for the fused CPU attention.
    host: Arc<(Vec<f32>, Vec<f32>)>,
    max_len: usize,
    /// Keys a query sees: itself and the `window − 1` before it (`None`: all earlier ones).
    window: Option<usize>,
    /// Gemma 3: the tables and window of the sliding-window layers.
    local: Option<Box<Rope>>,
}

impl Rope {
    /// Tables for `config` and sequences of at most `max_len` tokens.
    ///
    /// Mistral and Qwen2 windows apply to every layer and sequences longer than the window are
    /// refused; Gemma 3's local layers get their own tables and a masked window (see
    /// [`Rope::for_layer`]).
    pub fn new(config: &ModelConfig, max_len: usize, device: &Device) -> Result<Self> {
        let mut rope = Self::tables(config.head_dim, config.rope_theta, max_len, device)?;
        match config.gemma {
            Some(g) => {
                let mut local = Self::tables(config.head_dim, g.rope_local_theta, max_len, device)?;
                local.window = config.sliding_window;
                rope.local = Some(Box::new(local));
            }
            None => {
                if let Some(w) = config.sliding_window.filter(|&w| max_len > w) {
                    return Err(ModelError::Input(format!(
                        "sequence length {max_len} exceeds the sliding attention window {w}"
                    )));
                }
            }
        }
        Ok(rope)
    }

    fn tables(head_dim: usize, theta: f64, max_len: usize, device: &Device) -> Result<Self> {
        let (cos, sin) = rope_tables(head_dim, theta, max_len);
        let half = head_dim / 2;
        Ok(Self {
            cos: Tensor::from_vec(cos.clone(), (max_len, half), device)?,
            sin: Tensor::from_vec(sin.clone(), (max_len, half), device)?,
            host: Arc::new((cos, sin)),
            max_len,
            window: None,
            local: None,
        })
    }

    /// The tables of a block: a Gemma 3 sliding-window layer's own, else these.
    pub fn for_layer(&self, local: bool) -> &Rope {
        match (&self.local, local) {
            (Some(l), true) => l,
            _ => self,
        }
    }

    /// The attention window of these tables (`None`: causal over the whole sequence).
    pub fn window(&self) -> Option<usize> {
        self.window
    }

    /// Longest sequence these tables cover.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The `[max_len, head_dim/2]` cos and sin tables, row-major.
    pub(crate) fn host_tables(&self) -> (&[f32], &[f32]) {
        (&self.host.0, &self.host.1)
    }

    /// Rotate `x` of shape `[batch, heads, seq, head_dim]` (positions 0..seq).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let t = x.dim(2)?;
        self.check_len(t)?;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?)
    }

    /// The `[seq, seq]` additive causal mask: 0 on and below the diagonal (and within the
    /// window), −∞ elsewhere (built on demand: the CPU path uses a fused causal softmax).
    pub fn mask(&self, t: usize) -> Result<Tensor> {
        self.check_len(t)?;
        Ok(Tensor::from_vec(
            causal_mask(t, self.window),
            (t, t),
            self.cos.device(),
        )?)
    }

    pub(crate) fn check_len(&self, t: usize) -> Result<()> {
        if t > self.max_len {
            return Err(ModelError::Input(format!(
                "sequence of {t} tokens exceeds the {} prepared positions",
                self.max_len
            )));
        }
        Ok(())
    }
}

/// cos/sin of `pos · θ^(−2i/d)` for `pos < len`, `i < d/2`, row-major `[len, d/2]`.
///
/// Computed the way transformers does, in f32: `inv_freq = 1 / θ^(2i/d)`, then
/// `angle = pos · inv_freq` rounded to f32, then cos/sin. Matching the f32 rounding of the
/// angle matters at long positions (at pos 511 one f32 ulp of the angle is 3e-5 rad).
pub fn rope_tables(head_dim: usize, theta: f64, len: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            1.0 / (theta as f32).powf(exponent)
        })
        .collect();
    let mut cos = Vec::with_capacity(len * half);
    let mut sin = Vec::with_capacity(len * half);
    for pos in 0..len {
        for &f in &inv_freq {
            let angle = f64::from(pos as f32 * f);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// The `[t, t]` additive mask, row-major: row `i` sees keys `j ≤ i` with `i − j < window`
/// (0), the rest are −∞.
pub(crate) fn causal_mask(t: usize, window: Option<usize>) -> Vec<f32> {
    let w = window.unwrap_or(usize::MAX);
    (0..t)
        .flat_map(|i| {
            (0..t).map(move |j| {
                if j > i || i - j >= w {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect()
}

/// `gelu_tanh(gate) · up`, Gemma's gated MLP activation (transformers' `gelu_pytorch_tanh`).
pub(crate) fn geglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((gate.gelu()? * up)?)
}

/// Softmax over the last dimension (numerically stable).
pub(crate) fn softmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax_last_dim(x)?)
}

/// `silu(gate) · up`, the SwiGLU activation (one fused pass on the CPU).
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.device().is_cpu() {
        return super::kernels::swiglu(gate, up);
    }
    Ok((gate.silu()? * up)?)
}

/// RMSNorm written with plain tensor ops, an independent check of the fused kernel.
#[cfg(test)]
pub(crate) fn rms_norm_reference(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
    Ok(x.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)?)
}

fn check_f32(what: &str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(ModelError::Shape(format!(
            "{what} must be f32, got {:?}",
            t.dtype()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Arch;

    fn cfg(head_dim: usize, theta: f64) -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            hidden_size: head_dim,
            intermediate_size: 4,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim,
            rope_theta: theta,
            rms_norm_eps: 1e-5,
            vocab_size: 4,
            tie_word_embeddings: true,
            max_position_embeddings: 16,
            sliding_window: None,
            gemma: None,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    #[test]
    fn rms_norm_hand_values() {
        // x = [3, 4]: mean(x²) = (9 + 16) / 2 = 12.5, rms = sqrt(12.5) = 3.5355339.
        // With w = [1, 2] and eps = 0: [3/3.5355339, 2·4/3.5355339] = [0.8485281, 2.2627417].
        let dev = Device::Cpu;
        let x = Tensor::new(&[[3f32, 4.0]], &dev).unwrap();
        let norm = RmsNorm::new(Tensor::new(&[1f32, 2.0], &dev).unwrap(), 0.0).unwrap();
        let y = norm.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        assert!((y[0][0] - 0.848_528_1).abs() < 1e-6, "{y:?}");
        assert!((y[0][1] - 2.262_741_7).abs() < 1e-6, "{y:?}");
        // eps = 1: rms = sqrt(13.5) = 3.6742346 → x[0] / rms = 0.8164966.
        let norm = RmsNorm::new(Tensor::new(&[1f32, 1.0], &dev).unwrap(), 1.0).unwrap();
        let y = norm.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        assert!((y[0][0] - 0.816_496_6).abs() < 1e-6, "{y:?}");
    }

    #[test]
    fn rope_hand_values() {
        // head_dim 4, θ = 100: inv_freq = [1, 100^(-1/2)] = [1, 0.1].
        // HF rotate_half pairs element i with i + d/2: (x0, x2) by angle pos·1, (x1, x3) by pos·0.1.
        // x = [1, 2, 3, 4] at pos 1: y0 = 1·cos1 − 3·sin1 = 0.5403023 − 2.5244130 = −1.9841107
        //                           y2 = 1·sin1 + 3·cos1 = 0.8414710 + 1.6209069 = 2.4623779
        //                           y1 = 2·cos0.1 − 4·sin0.1 = 1.9900083 − 0.3993337 = 1.5906746
        //                           y3 = 2·sin0.1 + 4·cos0.1 = 0.1996668 + 3.9800167 = 4.1796835
        let dev = Device::Cpu;
        let rope = Rope::new(&cfg(4, 100.0), 2, &dev).unwrap();
        let x = Tensor::new(&[1f32, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0], &dev)
            .unwrap()
            .reshape((1, 1, 2, 4))
            .unwrap();
        let y = rope
            .apply(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Position 0 is the identity.
        assert_eq!(&y[..4], &[1.0, 2.0, 3.0, 4.0]);
        let want = [-1.984_110_7, 1.590_674_6, 2.462_377_9, 4.179_683_5];
        for (a, b) in y[4..].iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
    }

    #[test]
    fn mask_and_lengths() {
        let dev = Device::Cpu;
        let rope = Rope::new(&cfg(4, 100.0), 3, &dev).unwrap();
        let m = rope.mask(2).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m, vec![vec![0.0, f32::NEG_INFINITY], vec![0.0, 0.0]]);
        assert!(matches!(rope.mask(4), Err(ModelError::Input(_))));
        let mut windowed = cfg(4, 100.0);
        windowed.sliding_window = Some(2);
        assert!(matches!(
            Rope::new(&windowed, 3, &dev),
            Err(ModelError::Input(_))
        ));
    }

    #[test]
    fn linear_forward_and_set_weight() {
        // W = [[1, 2], [3, 4], [5, 6]], b = [0.5, 0, −1], x = [1, −1]:
        // y = [1−2+0.5, 3−4, 5−6−1] = [−0.5, −1, −2].
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &dev).unwrap();
        let b = Tensor::new(&[0.5f32, 0.0, -1.0], &dev).unwrap();
        let mut lin = Linear::new(w, Some(b)).unwrap();
        let x = Tensor::new(&[[[1f32, -1.0]]], &dev).unwrap();
        let y = lin.forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 3]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![-0.5, -1.0, -2.0]
        );
        assert!(lin
            .set_weight(Tensor::zeros((2, 2), DType::F32, &dev).unwrap())
            .is_err());
        assert!(lin
            .set_weight(Tensor::zeros((3, 2), DType::F16, &dev).unwrap())
            .is_err());
        lin.set_weight(Tensor::zeros((3, 2), DType::F32, &dev).unwrap())
            .unwrap();
        assert!(lin
            .forward(&Tensor::zeros((1, 3), DType::F32, &dev).unwrap())
            .is_err());
    }
}
