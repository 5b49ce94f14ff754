//! SparseGPT's Hessian of a layer's inputs, `H = 2/N · Σ x xᵀ`, accumulated in f64 from
//! f32 Gram matrices (see [`HessianAccumulator`]).
//!
//! Each batch's Gram matrix `XᵀX` comes from f32 GEMMs (the forward's own products, like the
//! reference's f32 `matmul`; only the lower-triangle tiles are multiplied); the running
//! average `H = H·n/(n+t) + (2/(n+t))·XᵀX` is kept in **f64**, so 32 or 128 batches add no
//! rounding drift. Mathematically this is the reference's update exactly (`H_N = 2/N · Σ x xᵀ`),
//! so a caller may as well pass many sequences in one call (`samples` = their number).

use rayon::prelude::*;

use super::linalg::{first_non_finite, LinalgError, Result};

/// The running `H = 2/N · Σ x xᵀ` of one layer's inputs (`cols × cols`, f64).
///
/// `H` is symmetric: only its lower triangle (`j <= i`) is stored and updated, which
/// halves the work; [`HessianAccumulator::to_matrix`] mirrors it.
#[derive(Debug, Clone, PartialEq)]
pub struct HessianAccumulator {
    pub(super) cols: usize,
    /// Row-major `cols × cols`; only the lower triangle is kept.
    pub(super) h: Vec<f64>,
    pub(super) nsamples: u64,
}

impl HessianAccumulator {
    /// An empty accumulator for a layer with `cols` inputs.
    pub fn new(cols: usize) -> Self {
        HessianAccumulator {
            cols,
            h: vec![0.0; cols * cols],
            nsamples: 0,
        }
    }

    /// Wrap an existing row-major `cols × cols` Hessian (e.g. a cached one). Only its
    /// lower triangle is used, as `torch.linalg.cholesky` does.
    pub fn from_matrix(cols: usize, mut h: Vec<f64>, nsamples: u64) -> Result<Self> {
        if h.len() != cols * cols {
            return Err(LinalgError::Shape {
                what: "hessian",
                got: h.len(),
                expected: cols * cols,
            });
        }
        for (i, row) in h.chunks_mut(cols.max(1)).enumerate() {
            row[i + 1..].iter_mut().for_each(|v| *v = 0.0);
        }
        Ok(HessianAccumulator { cols, h, nsamples })
    }

    /// Inputs of the layer.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Samples accumulated so far (the reference's `nsamples`).
    pub fn nsamples(&self) -> u64 {
        self.nsamples
    }

    /// The current `H`, row-major `cols × cols`, symmetric.
    pub fn to_matrix(&self) -> Vec<f64> {
        let n = self.cols;
        let mut m = self.h.clone();
        for i in 0..n {
            for j in 0..i {
                m[j * n + i] = m[i * n + j];
            }
        }
        m
    }

    /// Add one batch: `x` is row-major `[tokens, cols]`, `samples` how many sequences
    /// it holds (the reference's `tmp = inp.shape[0]`: 1 for a `[1, seq, hidden]` input).
    ///
    /// Mirrors `H *= n/(n+tmp); n += tmp; inp = sqrt(2/n)·inp; H += inp·inpᵀ`.
    pub fn add_batch(&mut self, x: &[f32], samples: usize) -> Result<()> {
        if samples == 0 {
            return Err(LinalgError::ZeroSamples);
        }
        if self.cols == 0 || !x.len().is_multiple_of(self.cols) {
            let expected = x.len().div_ceil(self.cols.max(1)) * self.cols;
            return Err(LinalgError::Shape {
                what: "inputs",
                got: x.len(),
                expected,
            });
        }
        first_non_finite("inputs", x)?;
        let tokens = x.len() / self.cols;
        let n0 = self.nsamples as f64;
        let n1 = n0 + samples as f64;
        let (keep, add) = (n0 / n1, 2.0 / n1);
        let n = self.cols;
        let g = if tokens == 0 {
            vec![0.0; n * n]
        } else {
            gram_lower(x, tokens, n)?
        };
        self.h
            .par_chunks_mut(n)
            .zip(g.par_chunks(n))
            .enumerate()
            .for_each(|(i, (h, g))| {
                for (h, &g) in h[..=i].iter_mut().zip(&g[..=i]) {
                    *h = *h * keep + add * g as f64;
                }
            });
        self.nsamples += samples as u64;
        Ok(())
    }
}

/// Column tile of the Gram matrix: `XᵀX` is symmetric, so only the tiles on and below
/// the diagonal are multiplied (6 of 9 for 1536 columns, 3 of 4 for 576), and GEMMs
/// of 288–512 columns still run near full speed.
const GRAM_TILE: usize = 512;

/// The lower triangle (and diagonal tiles) of `XᵀX` for row-major `x: [tokens, cols]`,
/// in f32 GEMMs; entries above the diagonal tiles are left 0.
///
/// The products run through the forward's own matrix products ([`matmul::matmul_nt`] on
/// `Xᵀ`), not candle's: their panels are fixed by the shape and their kernels by the OpenBLAS
/// kernel family, so the Hessian has the same bits on every CPU of a family, whatever its
/// cache sizes (candle's `gemm` crate sizes its blocks from the cache it detects, which moved
/// SparseGPT 50 % on SOTU-512 from 47.21 on an Intel CPU to 47.57 on an AMD one).
pub(super) fn gram_lower(x: &[f32], tokens: usize, cols: usize) -> Result<Vec<f32>> {
    use crate::model::matmul;
    // Xᵀ, row-major `[cols, tokens]`: each tile is then `Xᵀ_a · (Xᵀ_b)ᵀ`, a linear-layer
    // product.
    let mut xt = vec![0f32; cols * tokens];
    xt.par_chunks_mut(tokens.max(1))
        .enumerate()
        .for_each(|(c, row)| {
            for (t, v) in row.iter_mut().enumerate() {
                *v = x[t * cols + c];
            }
        });
    let p = cols.div_ceil(GRAM_TILE);
    let tile = cols.div_ceil(p.max(1));
    let starts: Vec<usize> = (0..p).map(|i| i * tile).collect();
    let be = matmul::backend();
    let mut g = vec![0.0f32; cols * cols];
    for a in 0..p {
        for b in 0..=a {
            let (a0, b0) = (starts[a], starts[b]);
            let (ta, tb) = (tile.min(cols - a0), tile.min(cols - b0));
            let blk = matmul::matmul_nt(
                be,
                &xt[a0 * tokens..(a0 + ta) * tokens],
                &xt[b0 * tokens..(b0 + tb) * tokens],
                (ta, tb, tokens),
                None,
                None,
            );
            for (i, src) in blk.chunks_exact(tb).enumerate() {
                g[(a0 + i) * cols + b0..(a0 + i) * cols + b0 + tb].copy_from_slice(src);
            }
        }
    }
    Ok(g)
}
