//! Statistics accumulated with tensor operations where the activations live (the GPU when the
//! model runs on CUDA), copied to the host once per block.
//!
//! The host path ([`ChannelStats::accumulate`], [`HessianAccumulator::add_batch`]) reads CPU
//! activations in place; for activations on a device it would copy every capture to the host
//! (e.g. 4096 × 11008 values per MLP input of a 7B model). Here every quantity stays on the
//! device until the block ends:
//!
//! - `Σx²` and `Σx` per channel are summed in **f64** on the device (the host path sums in f64
//!   too), so the two paths differ only by summation order: a relative difference of a few
//!   1e-16 per channel on the CPU, measured by `autoprune bench --stats`;
//! - `max |x|` per channel is exact (a maximum does not round);
//! - SparseGPT's `H = 2/N · Σ x xᵀ`: each batch's Gram matrix `XᵀX` is one f32 GEMM on the
//!   device (the host path's Gram is an f32 GEMM as well), and the running average is kept in
//!   f64, exactly as [`HessianAccumulator`] keeps it; the Gram's f32 rounding depends on the
//!   GEMM's blocking, so the two paths agree to f32 precision (measured the same way).
//!
//! The same code runs on the CPU (candle's CPU backend), which is how the suite checks it on
//! machines without a GPU ([`DevicePath::Tensor`]).

use candle_core::{DType, Tensor};

use super::hessian::HessianAccumulator;
use super::CalibError;
use crate::layer::ChannelStats;

/// Where the host's numerics for a block run: its input statistics and Hessians are
/// accumulated, and SparseGPT updates its weights ([`crate::prune::sparsegpt::device`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePath {
    /// Where the activations are: on the host for CPU tensors (read in place), with tensor
    /// operations on the device otherwise.
    #[default]
    Auto,
    /// Always with tensor operations on the activations' device, the CPU included (how the
    /// device path is tested, and compared, without a GPU).
    Tensor,
    /// Always on the host (device activations are copied): the reference the device path is
    /// compared with.
    Host,
}

impl std::str::FromStr for DevicePath {
    type Err = String;

    /// `auto`, `tensor` or `host`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DevicePath::Auto),
            "tensor" => Ok(DevicePath::Tensor),
            "host" => Ok(DevicePath::Host),
            _ => Err(format!("`{s}` is not auto, tensor or host")),
        }
    }
}

impl DevicePath {
    /// Whether activations (or weights) on `device` take the tensor path.
    pub fn on_tensor(self, device: &candle_core::Device) -> bool {
        match self {
            DevicePath::Auto => !device.is_cpu(),
            DevicePath::Tensor => true,
            DevicePath::Host => false,
        }
    }

    /// The path data on `device` takes: `Tensor` or `Host`, never `Auto`.
    pub fn resolve(self, device: &candle_core::Device) -> DevicePath {
        if self.on_tensor(device) {
            DevicePath::Tensor
        } else {
            DevicePath::Host
        }
    }
}

fn err(e: candle_core::Error) -> CalibError {
    CalibError::Stats(format!("device statistics: {e}"))
}

/// Per-channel `Σx²`, `Σx` (f64) and `max |x|` (f32) of one input slot, on the activations'
/// device.
#[derive(Debug)]
pub struct TensorStats {
    cols: usize,
    sum_sq: Tensor,
    sum: Tensor,
    max_abs: Tensor,
    tokens: u64,
}

impl TensorStats {
    /// Empty statistics of `cols` channels on `device`.
    pub fn new(cols: usize, device: &candle_core::Device) -> Result<Self, CalibError> {
        Ok(TensorStats {
            cols,
            sum_sq: Tensor::zeros(cols, DType::F64, device).map_err(err)?,
            sum: Tensor::zeros(cols, DType::F64, device).map_err(err)?,
            max_abs: Tensor::zeros(cols, DType::F32, device).map_err(err)?,
            tokens: 0,
        })
    }

    /// Add every row of `x` (any shape whose last dimension is the channels).
    pub fn add(&mut self, x: &Tensor) -> Result<(), CalibError> {
        let rows = x.elem_count() / self.cols.max(1);
        if self.cols == 0 || rows * self.cols != x.elem_count() {
            return Err(CalibError::Stats(format!(
                "activation of shape {:?} is not a multiple of {} channels",
                x.dims(),
                self.cols
            )));
        }
        let x = x.reshape((rows, self.cols)).map_err(err)?;
        let x32 = x.to_dtype(DType::F32).map_err(err)?;
        let x64 = x.to_dtype(DType::F64).map_err(err)?;
        let sq = x64.sqr().and_then(|s| s.sum(0)).map_err(err)?;
        self.sum_sq = (&self.sum_sq + sq).map_err(err)?;
        self.sum = (&self.sum + x64.sum(0).map_err(err)?).map_err(err)?;
        let m = x32.abs().and_then(|a| a.max(0)).map_err(err)?;
        self.max_abs = self.max_abs.maximum(&m).map_err(err)?;
        self.tokens += rows as u64;
        Ok(())
    }

    /// The statistics on the host (one copy of three vectors).
    pub fn finish(self) -> Result<ChannelStats, CalibError> {
        Ok(ChannelStats {
            tokens: self.tokens,
            sum_sq: self.sum_sq.to_vec1::<f64>().map_err(err)?,
            sum: self.sum.to_vec1::<f64>().map_err(err)?,
            max_abs: self.max_abs.to_vec1::<f32>().map_err(err)?,
        })
    }
}

/// SparseGPT's running `H = 2/N · Σ x xᵀ` (f64, `cols × cols`) on the activations' device.
#[derive(Debug)]
pub struct TensorHessian {
    cols: usize,
    h: Tensor,
    nsamples: u64,
}

impl TensorHessian {
    /// An empty Hessian of `cols` inputs on `device`.
    pub fn new(cols: usize, device: &candle_core::Device) -> Result<Self, CalibError> {
        Ok(TensorHessian {
            cols,
            h: Tensor::zeros((cols, cols), DType::F64, device).map_err(err)?,
            nsamples: 0,
        })
    }

    /// Add a batch `x` of `samples` sequences (`[samples, seq, cols]` or any shape whose last
    /// dimension is the channels): `H ← H·n/(n+s) + 2/(n+s) · XᵀX`, which is the reference's
    /// per-sequence update applied `s` times.
    pub fn add(&mut self, x: &Tensor, samples: usize) -> Result<(), CalibError> {
        let rows = x.elem_count() / self.cols.max(1);
        if samples == 0 || self.cols == 0 || rows * self.cols != x.elem_count() {
            return Err(CalibError::Stats(format!(
                "Hessian input of shape {:?} with {samples} samples does not fit {} channels",
                x.dims(),
                self.cols
            )));
        }
        let x = x
            .reshape((rows, self.cols))
            .and_then(|x| x.to_dtype(DType::F32))
            .map_err(err)?;
        let gram = x
            .t()
            .and_then(|t| t.matmul(&x))
            .and_then(|g| g.to_dtype(DType::F64))
            .map_err(err)?;
        let n = self.nsamples as f64;
        let total = n + samples as f64;
        self.h = (self.h.affine(n / total, 0.0).map_err(err)?
            + gram.affine(2.0 / total, 0.0).map_err(err)?)
        .map_err(err)?;
        self.nsamples += samples as u64;
        Ok(())
    }

    /// The Hessian on the host (one copy of `cols²` values).
    pub fn finish(self) -> Result<HessianAccumulator, CalibError> {
        let h = self
            .h
            .flatten_all()
            .and_then(|h| h.to_vec1::<f64>())
            .map_err(err)?;
        HessianAccumulator::from_matrix(self.cols, h, self.nsamples)
            .map_err(|e| CalibError::Stats(e.to_string()))
    }
}

/// The larger of two differences, NaN if either is (a non-finite statistic must not compare
/// as equal).
pub fn worse(acc: f64, d: f64) -> f64 {
    if acc.is_nan() || d.is_nan() {
        f64::NAN
    } else {
        acc.max(d)
    }
}

/// Largest relative difference of `b` from `a` over every element, each measured against the
/// element's own magnitude (0 where both are 0); NaN if any element is not finite.
pub fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let scale = x.abs().max(y.abs());
            if !x.is_finite() || !y.is_finite() {
                f64::NAN
            } else if scale == 0.0 {
                0.0
            } else {
                (x - y).abs() / scale
            }
        })
        .fold(
            if a.len() == b.len() {
                0.0
            } else {
                f64::INFINITY
            },
            worse,
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use candle_core::Device;

    fn activations(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        // Heavy-tailed like LLM activations: a few channels 100× larger.
        (0..rows * cols)
            .map(|i| {
                let v = rng.symmetric_f32();
                if i % cols == 3 {
                    v * 100.0
                } else {
                    v
                }
            })
            .collect()
    }

    #[test]
    fn tensor_statistics_match_the_host_path() {
        let (cols, dev) = (48, Device::Cpu);
        let mut host = ChannelStats::new(cols);
        let mut tensor = TensorStats::new(cols, &dev).unwrap();
        for seed in 0..3 {
            let x = activations(2 * 40, cols, seed);
            host.accumulate(&x);
            tensor
                .add(&Tensor::from_vec(x, (2, 40, cols), &dev).unwrap())
                .unwrap();
        }
        let t = tensor.finish().unwrap();
        assert_eq!(t.tokens, host.tokens);
        assert_eq!(t.max_abs, host.max_abs, "a maximum does not round");
        assert!(max_rel_diff(&host.sum_sq, &t.sum_sq) < 1e-13);
        // Σx of values of both signs cancels: compare against the magnitudes summed.
        let scale: Vec<f64> = host.sum_sq.iter().map(|s| s.sqrt()).collect();
        for ((a, b), s) in host.sum.iter().zip(&t.sum).zip(&scale) {
            assert!((a - b).abs() <= 1e-13 * s, "{a} vs {b}");
        }
    }

    #[test]
    fn tensor_hessian_matches_the_host_path() {
        let (cols, seq, dev) = (32, 24, Device::Cpu);
        let mut host = HessianAccumulator::new(cols);
        let mut tensor = TensorHessian::new(cols, &dev).unwrap();
        for seed in 0..3 {
            let x = activations(2 * seq, cols, 10 + seed);
            for sample in x.chunks_exact(seq * cols) {
                host.add_batch(sample, 1).unwrap();
            }
            tensor
                .add(&Tensor::from_vec(x, (2, seq, cols), &dev).unwrap(), 2)
                .unwrap();
        }
        let t = tensor.finish().unwrap();
        assert_eq!(t.nsamples(), host.nsamples());
        let (a, b) = (host.to_matrix(), t.to_matrix());
        // f32 Gram matrices from different GEMMs: f32 precision, relative to the diagonal.
        let diag = (0..cols).map(|i| a[i * cols + i]).fold(0.0, f64::max);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * diag, "{x} vs {y}");
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let dev = Device::Cpu;
        let mut s = TensorStats::new(5, &dev).unwrap();
        let x = Tensor::zeros((2, 7), DType::F32, &dev).unwrap();
        assert!(s.add(&x).is_err());
        let mut h = TensorHessian::new(5, &dev).unwrap();
        assert!(h.add(&x, 1).is_err());
        let x = Tensor::zeros((2, 5), DType::F32, &dev).unwrap();
        assert!(h.add(&x, 0).is_err());
        assert_eq!(max_rel_diff(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert!(max_rel_diff(&[1.0, 2.0], &[1.0, f64::NAN]).is_nan());
        assert!(max_rel_diff(&[f64::INFINITY], &[f64::INFINITY]).is_nan());
    }
}
