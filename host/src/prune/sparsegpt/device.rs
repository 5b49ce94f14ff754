//! SparseGPT's OBS update with tensor operations where the weights live (the GPU when the
//! model runs on CUDA), so a layer's weights never leave the device while they are updated.
//!
//! The same loop as [`prune_with_factor`](super::prune_with_factor), column by column inside
//! each 128-column block and one GEMM for the columns right of the block, as the reference
//! runs it on a GPU. What crosses to the host, per layer:
//!
//! - the factor `U` goes up once per input slot ([`DeviceFactor`]; q/k/v and gate/up share it);
//! - for an unstructured mask, each block's weights at the block's start come down
//!   (`rows × 128` values) so that the host chooses the block's threshold exactly as the host
//!   path does (`select_nth` over `w²/d²`, the same f32 operations);
//! - the finished mask comes down once, and the host checks it as it checks its own.
//!
//! Numerics against the host path: the column loop does the same f32 operations in the same
//! order (`e = w/d`, `x − e·u`), so a block's masks and weights agree exactly until the first
//! trailing update. That update is one f32 GEMM here (`W[:, i2:] −= Err1 · U[i1:i2, i2:]`) and a
//! sequential sum on the host, so later blocks see weights that differ by f32 rounding, and a
//! weight within rounding of a block's threshold (or of its N:M group's order) can go either
//! way: near-ties, counted by `bench --stats`.

use candle_core::{DType, Device, Tensor};

use super::{block_threshold, finish, Result, SparseGptConfig, SparseGptStats};
use crate::calib::hessian::{first_non_finite, HessianFactor, LinalgError};

/// A [`HessianFactor`] uploaded to a device: `U` in f32, and what the loop reads from the host.
#[derive(Debug)]
pub struct DeviceFactor {
    cols: usize,
    upper: Tensor,
    /// `U`'s diagonal, `1 × cols`, on the device.
    diag: Tensor,
    /// `U`'s diagonal on the host.
    diag_host: Vec<f32>,
    /// `1 × cols`: 1 for a dead column (its weights are zeroed), else 0.
    dead: Tensor,
    dead_count: usize,
}

impl DeviceFactor {
    /// Upload `f` to `device` (one copy of `cols²` f32).
    pub fn new(f: &HessianFactor, device: &Device) -> Result<Self> {
        let n = f.cols();
        let u = f.upper();
        let diag_host: Vec<f32> = (0..n).map(|i| u[i * n + i]).collect();
        let dead: Vec<u8> = f.dead_columns().iter().map(|&d| u8::from(d)).collect();
        Ok(DeviceFactor {
            cols: n,
            upper: Tensor::from_slice(u, (n, n), device)?,
            diag: Tensor::from_slice(&diag_host, (1, n), device)?,
            diag_host,
            dead: Tensor::from_vec(dead, (1, n), device)?,
            dead_count: f.dead_columns().iter().filter(|&&d| d).count(),
        })
    }

    /// Inputs of the layer.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Prune `w` (`rows × cols`, on `f`'s device, any float dtype) with SparseGPT. Returns the
/// updated weights (same device and dtype) and the run's stats, whose mask the host built and
/// checked.
pub fn prune_tensor(
    w: &Tensor,
    f: &DeviceFactor,
    cfg: &SparseGptConfig,
) -> Result<(Tensor, SparseGptStats)> {
    let (rows, cols) = w.dims2()?;
    cfg.validate(cols)?;
    if cols != f.cols {
        return Err(LinalgError::Shape {
            what: "hessian columns",
            got: f.cols,
            expected: cols,
        }
        .into());
    }
    if rows == 0 || cols == 0 {
        return Err(LinalgError::Shape {
            what: "weights",
            got: 0,
            expected: rows.max(1) * cols.max(1),
        }
        .into());
    }
    let dtype = w.dtype();
    let mut rest = w.to_dtype(DType::F32)?;
    // `x·0` is 0 for every finite `x` and NaN otherwise: one reduction finds a bad weight, and
    // only then are the weights copied to name it.
    let poison = (&rest * 0.0)?.sum_all()?.to_scalar::<f32>()?;
    if poison != 0.0 {
        first_non_finite("weights", &rest.flatten_all()?.to_vec1::<f32>()?)?;
    }
    let zeros = rest.zeros_like()?;
    rest = f
        .dead
        .broadcast_as((rows, cols))?
        .where_cond(&zeros, &rest)?;
    let nm = (cfg.prune_n > 0).then_some((cfg.prune_n, cfg.prune_m));
    let run_loop = nm.is_some() || cfg.sparsity > 0.0;
    let mut done: Vec<Tensor> = Vec::new();
    let mut masks: Vec<Tensor> = Vec::new();
    let mut expected = 0;
    let mut loss = 0.0f64;
    let step = if run_loop { cfg.blocksize } else { cols };
    for i1 in (0..cols).step_by(step) {
        let i2 = (i1 + step).min(cols);
        let count = i2 - i1;
        let w1 = rest.narrow(1, 0, count)?.contiguous()?;
        let right = (i2 < cols)
            .then(|| rest.narrow(1, count, cols - i2))
            .transpose()?;
        if !run_loop {
            masks.push(Tensor::zeros((rows, count), DType::U8, w.device())?);
            done.push(w1);
            break;
        }
        let (w1, mask1, err1) = match nm {
            None => {
                let (m1, at_least) = unstructured_block_mask(&w1, f, i1, cfg.sparsity)?;
                expected += at_least;
                let m1f = m1.to_dtype(DType::F32)?;
                let (w1, err1) = obs_block(w1, f, i1, |_, i| Ok(m1f.narrow(1, i, 1)?))?;
                (w1, m1, err1)
            }
            Some((n, m)) => {
                // Each group's mask as chosen (u8) and as the loop reads it (f32).
                let mut groups: Vec<(Tensor, Tensor)> = Vec::new();
                let (w1, err1) = obs_block(w1, f, i1, |w1, i| {
                    if i % m == 0 {
                        let g = nm_group(w1, f, i1 + i, i, n, m)?;
                        let gf = g.to_dtype(DType::F32)?;
                        groups.push((g, gf));
                    }
                    let (_, gf) = groups
                        .last()
                        .expect("a group is chosen at its first column");
                    Ok(gf.narrow(1, i % m, 1)?)
                })?;
                let chosen: Vec<&Tensor> = groups.iter().map(|(g, _)| g).collect();
                (w1, Tensor::cat(&chosen, 1)?, err1)
            }
        };
        loss += err1
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?
            / 2.0;
        // Pruned weights are exactly 0 (the loop leaves `w − (w/d)·d`, zero up to rounding).
        let w1 = mask1.where_cond(&w1.zeros_like()?, &w1)?;
        done.push(w1);
        masks.push(mask1);
        if let Some(right) = right {
            let u12 = f.upper.narrow(0, i1, count)?.narrow(1, i2, cols - i2)?;
            rest = (right - err1.matmul(&u12.contiguous()?)?)?;
        }
    }
    if let Some((n, m)) = nm {
        expected = rows * (cols / m) * n;
    }
    let out = Tensor::cat(&done, 1)?;
    let pruned: Vec<bool> = Tensor::cat(&masks, 1)?
        .flatten_all()?
        .to_vec1::<u8>()?
        .into_iter()
        .map(|p| p != 0)
        .collect();
    let zero_count = out
        .eq(0.0)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()? as usize;
    let stats = finish(
        rows,
        cols,
        &pruned,
        expected,
        nm.is_some(),
        zero_count,
        loss,
        f.dead_count,
    )?;
    Ok((out.to_dtype(dtype)?, stats))
}

/// The unstructured mask of a block (`u8`, 1 = pruned), chosen on the host from the block's
/// weights at its start, as the host path chooses it. Returns the mask and the least number of
/// weights it prunes.
fn unstructured_block_mask(
    w1: &Tensor,
    f: &DeviceFactor,
    i1: usize,
    s: f64,
) -> Result<(Tensor, usize)> {
    let (rows, count) = w1.dims2()?;
    let d2: Vec<f32> = f.diag_host[i1..i1 + count].iter().map(|&d| d * d).collect();
    let host = w1.flatten_all()?.to_vec1::<f32>()?;
    let tmp: Vec<f32> = host
        .chunks_exact(count)
        .flat_map(|row| row.iter().zip(&d2).map(|(&x, &d)| x * x / d))
        .collect();
    let (thresh, at_least) = block_threshold(&tmp, s);
    let m: Vec<u8> = tmp.iter().map(|&t| u8::from(t <= thresh)).collect();
    Ok((Tensor::from_vec(m, (rows, count), w1.device())?, at_least))
}

/// The reference's `topk(W1[:, i:i+m]² / diag(U)[c0:c0+m]², n, largest=False)` for every row
/// at once: a weight is pruned when fewer than `n` of its group rank before it (a smaller
/// value, or an equal one in a lower column, as the host path breaks ties). `u8`, `rows × m`.
fn nm_group(
    w1: &Tensor,
    f: &DeviceFactor,
    c0: usize,
    i: usize,
    n: usize,
    m: usize,
) -> Result<Tensor> {
    let rows = w1.dim(0)?;
    let d = f.diag.narrow(1, c0, m)?;
    let tmp = w1.narrow(1, i, m)?.sqr()?.broadcast_div(&d.sqr()?)?;
    // [r, j, k]: does column k rank before column j?
    let tj = tmp.reshape((rows, m, 1))?;
    let tk = tmp.reshape((rows, 1, m))?;
    let before: Vec<u8> = (0..m * m).map(|x| u8::from(x % m < x / m)).collect();
    let before = Tensor::from_vec(before, (1, m, m), w1.device())?;
    let lt = tk.broadcast_lt(&tj)?;
    let tie = (tk.broadcast_eq(&tj)?.to_dtype(DType::F32)?
        * before.broadcast_as((rows, m, m))?.to_dtype(DType::F32)?)?;
    let rank = (lt.to_dtype(DType::F32)? + tie)?.sum(2)?;
    Ok(rank.lt(n as f64)?)
}

/// The OBS loop over one block's columns: for column `i`, `pruned(w1, i)` gives its mask
/// (`rows × 1`, 1.0 = pruned; it may read the block's current weights), the error
/// `e = w·pruned / d` is spread over the block (`w1 −= e ⊗ U[i, block]`, zero left of `i`).
/// Returns the block's weights (pruned ones not yet zeroed) and its errors `rows × count`.
fn obs_block(
    mut w1: Tensor,
    f: &DeviceFactor,
    i1: usize,
    mut pruned: impl FnMut(&Tensor, usize) -> Result<Tensor>,
) -> Result<(Tensor, Tensor)> {
    let count = w1.dim(1)?;
    let u1 = f
        .upper
        .narrow(0, i1, count)?
        .narrow(1, i1, count)?
        .contiguous()?;
    let mut errs = Vec::with_capacity(count);
    for i in 0..count {
        let p = pruned(&w1, i)?;
        let d = f.diag.narrow(1, i1 + i, 1)?;
        let e = (w1.narrow(1, i, 1)? * p)?.broadcast_div(&d)?;
        w1 = (&w1 - e.broadcast_mul(&u1.narrow(0, i, 1)?)?)?;
        errs.push(e);
    }
    Ok((w1, Tensor::cat(&errs, 1)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::hessian::factor_tests::{hessian_of, inputs};
    use crate::prune::sparsegpt::tests::configs;
    use crate::prune::sparsegpt::{prune_with_factor, SparseGptError};
    use crate::rng::SplitMix64 as Rng;

    /// A layer, its Hessian's factor (column 3 dead when `dead`), and its weights.
    fn layer(seed: u64, rows: usize, cols: usize, dead: bool) -> (HessianFactor, Vec<f32>) {
        let mut rng = Rng::new(seed);
        let mut x = inputs(&mut rng, 4 * cols, cols);
        if dead {
            for t in 0..4 * cols {
                x[t * cols + 3] = 0.0;
            }
        }
        let h = hessian_of(&x, cols, 8);
        (
            HessianFactor::new(&h, 0.01).unwrap(),
            rng.normals(rows * cols),
        )
    }

    fn both(
        f: &HessianFactor,
        w0: &[f32],
        rows: usize,
        cfg: &SparseGptConfig,
    ) -> ((Vec<f32>, SparseGptStats), (Vec<f32>, SparseGptStats)) {
        let cols = f.cols();
        let mut host = w0.to_vec();
        let hs = prune_with_factor(&mut host, rows, cols, f, cfg).unwrap();
        let dev = Device::Cpu;
        let df = DeviceFactor::new(f, &dev).unwrap();
        let w = Tensor::from_slice(w0, (rows, cols), &dev).unwrap();
        let (out, ds) = prune_tensor(&w, &df, cfg).unwrap();
        let out = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        ((host, hs), (out, ds))
    }

    #[test]
    fn one_block_is_the_host_loop_bit_for_bit() {
        // No trailing GEMM: the same f32 operations in the same order.
        let (f, w0) = layer(21, 19, 64, true);
        for cfg in configs() {
            let cfg = SparseGptConfig {
                blocksize: 64,
                ..cfg
            };
            let ((host, hs), (dev, ds)) = both(&f, &w0, 19, &cfg);
            assert_eq!(hs.mask, ds.mask, "{cfg:?}");
            assert_eq!(host, dev, "{cfg:?}");
            assert_eq!(
                (hs.pruned, hs.zeros, hs.dead_columns),
                (ds.pruned, ds.zeros, 1)
            );
            assert!((hs.loss - ds.loss).abs() <= 1e-5 * hs.loss, "{cfg:?}");
        }
    }

    #[test]
    fn blocks_agree_with_the_host_to_f32_rounding() {
        // 200 columns: with 128-column blocks the last block is shorter.
        for (rows, cols) in [(19, 256), (11, 200)] {
            blocks_agree(rows, cols);
        }
    }

    fn blocks_agree(rows: usize, cols: usize) {
        let (f, w0) = layer(22, rows, cols, true);
        for cfg in configs() {
            let ((host, hs), (dev, ds)) = both(&f, &w0, rows, &cfg);
            // Random weights have no near-ties at this size.
            assert_eq!(hs.mask.differing(&ds.mask), Some(0), "{cfg:?}");
            assert_eq!((hs.pruned, hs.zeros), (ds.pruned, ds.zeros), "{cfg:?}");
            for (k, (a, b)) in host.iter().zip(&dev).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                    "{cfg:?} weight {k}: host {a}, tensor {b}"
                );
            }
        }
    }

    #[test]
    fn sparsity_zero_and_half_precision() {
        let (rows, cols) = (8, 64);
        let (f, w0) = layer(23, rows, cols, true);
        let ((host, hs), (dev, ds)) = both(&f, &w0, rows, &SparseGptConfig::unstructured(0.0));
        assert_eq!((hs.pruned, ds.pruned), (0, 0));
        assert_eq!(host, dev);
        // bf16 weights are pruned in f32 and come back as bf16: as the host loop prunes the
        // bf16 values (one block, so bit for bit), rounded to bf16.
        let dev = Device::Cpu;
        let df = DeviceFactor::new(&f, &dev).unwrap();
        let w = Tensor::from_slice(&w0, (rows, cols), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let rounded = w
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let cfg = SparseGptConfig::n_m(2, 4);
        let ((host, hs), _) = both(&f, &rounded, rows, &cfg);
        let (out, st) = prune_tensor(&w, &df, &cfg).unwrap();
        assert_eq!(out.dtype(), DType::BF16);
        assert_eq!(st.mask, hs.mask);
        let host = Tensor::from_vec(host, (rows, cols), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let diff = (out.to_dtype(DType::F32).unwrap() - host.to_dtype(DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn bad_weights_and_shapes_are_typed_errors() {
        let (f, mut w0) = layer(24, 4, 32, false);
        let dev = Device::Cpu;
        let df = DeviceFactor::new(&f, &dev).unwrap();
        w0[37] = f32::NAN;
        let w = Tensor::from_slice(&w0, (4, 32), &dev).unwrap();
        assert!(matches!(
            prune_tensor(&w, &df, &SparseGptConfig::default()),
            Err(SparseGptError::Hessian(LinalgError::NonFinite {
                index: 37,
                ..
            }))
        ));
        let w = Tensor::zeros((4, 16), DType::F32, &dev).unwrap();
        assert!(matches!(
            prune_tensor(&w, &df, &SparseGptConfig::default()),
            Err(SparseGptError::Hessian(LinalgError::Shape { .. }))
        ));
        let w = Tensor::zeros((4, 32), DType::F32, &dev).unwrap();
        assert!(matches!(
            prune_tensor(&w, &df, &SparseGptConfig::n_m(2, 3)),
            Err(SparseGptError::NMShape { .. })
        ));
        let w = Tensor::zeros((0, 32), DType::F32, &dev).unwrap();
        assert!(matches!(
            prune_tensor(&w, &df, &SparseGptConfig::unstructured(0.0)),
            Err(SparseGptError::Hessian(LinalgError::Shape { .. }))
        ));
    }
}
