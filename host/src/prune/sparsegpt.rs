//! SparseGPT: Hessian-aware pruning with the OBS weight update.
//!
//! A faithful port of `SparseGPT.add_batch` / `fasterprune` from IST-DASLab/sparsegpt
//! as locuslab/wanda's `prune_sparsegpt` runs it (unstructured masks chosen per
//! 128-column block across all rows, or N:M chosen on the fly; each pruned weight's
//! error is compensated on the columns to its right).
//!
//! Numerics, and why:
//! - **Hessian**: each batch's Gram matrix `XᵀX` comes from f32 GEMMs (the forward's own
//!   products, like the reference's f32 `matmul`; only the lower-triangle tiles are multiplied); the
//!   running average `H = H·n/(n+t) + (2/(n+t))·XᵀX` is kept in **f64**, so 32 or 128
//!   batches add no rounding drift. Mathematically this is the reference's update
//!   exactly (`H_N = 2/N · Σ x xᵀ`), so a caller may as well pass many sequences in
//!   one call (`samples` = their number).
//! - **Factorisation in f64**, blocked, with the O(n³) parts in f64 GEMMs (OpenBLAS `dgemm`
//!   in shape-fixed panels, so the bits depend on the kernel family, not on the thread count
//!   or the cache sizes).
//!   The reference computes `cholesky(cholesky_inverse(cholesky(H)), upper=True)` in
//!   f32. The upper Cholesky factor `U` of `H⁻¹` is unique, and equals
//!   `J·chol_lower(J·H·J)⁻¹·J` (`J` reverses the order), so we compute that: one
//!   Cholesky and one triangular inverse instead of three factorisations, with no
//!   explicit inverse to lose accuracy in.
//! - **The pruning loop in f32**, as the reference: masks compare `w²/d²` in f32 and
//!   weights are updated in f32, so masks match the reference's except for weights
//!   within rounding of a block's threshold.
//!
//! One deliberate deviation: a sparsity of 0 prunes nothing (the reference's
//! `tmp <= sorted[0]` would prune each block's minimum).

use rayon::prelude::*;

use super::mask::{prune_count, Mask};

/// Why SparseGPT could not run.
#[derive(Debug, thiserror::Error)]
pub enum SparseGptError {
    /// A buffer has the wrong number of values.
    #[error("{what} has {got} values, expected {expected}")]
    Shape {
        /// Which buffer ("inputs", "weights", "hessian").
        what: &'static str,
        /// Values received.
        got: usize,
        /// Values expected.
        expected: usize,
    },
    /// A non-finite input value.
    #[error("{what} value {index} is not finite: {value}")]
    NonFinite {
        /// Which buffer.
        what: &'static str,
        /// Flat index of the first bad value.
        index: usize,
        /// The value.
        value: f64,
    },
    /// `add_batch` was told the batch holds no samples.
    #[error("a batch must hold at least one sample")]
    ZeroSamples,
    /// `fasterprune` on a Hessian that saw no samples.
    #[error("the Hessian has accumulated no samples")]
    EmptyHessian,
    /// Sparsity outside `[0, 1)`.
    #[error("sparsity {0} is outside [0, 1)")]
    Sparsity(f64),
    /// Block size 0.
    #[error("block size must be positive")]
    BlockSize,
    /// Damping fraction negative or not finite.
    #[error("damping fraction {0} must be finite and >= 0")]
    Damp(f64),
    /// An N:M pattern that does not tile the columns and blocks.
    #[error("N:M {n}:{m} needs 0 < M, N <= M, cols % M == 0 and blocksize % M == 0 (cols {cols}, blocksize {blocksize})")]
    NMShape {
        /// N.
        n: usize,
        /// M.
        m: usize,
        /// Columns of the layer.
        cols: usize,
        /// Block size.
        blocksize: usize,
    },
    /// Cholesky failed: the damped Hessian is not (numerically) positive definite.
    #[error("damped Hessian is not positive definite (pivot {pivot:e} at column {column})")]
    NotPositiveDefinite {
        /// Column (original order) whose pivot failed.
        column: usize,
        /// The pivot value (≤ 0 or not finite).
        pivot: f64,
    },
    /// The result prunes fewer weights than the pattern promises (a bug).
    #[error("SparseGPT pruned {got} weights, expected {expected}")]
    Count {
        /// Promised (a lower bound for unstructured masks).
        expected: usize,
        /// Pruned.
        got: usize,
    },
    /// The GEMM backend failed.
    #[error("matrix product failed: {0}")]
    Candle(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, SparseGptError>;

fn first_non_finite(what: &'static str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(SparseGptError::NonFinite {
            what,
            index,
            value: v[index] as f64,
        }),
        None => Ok(()),
    }
}

/// The running `H = 2/N · Σ x xᵀ` of one layer's inputs (`cols × cols`, f64).
///
/// `H` is symmetric: only its lower triangle (`j <= i`) is stored and updated, which
/// halves the work; [`HessianAccumulator::to_matrix`] mirrors it.
#[derive(Debug, Clone, PartialEq)]
pub struct HessianAccumulator {
    cols: usize,
    h: Vec<f64>,
    nsamples: u64,
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
            return Err(SparseGptError::Shape {
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
            return Err(SparseGptError::ZeroSamples);
        }
        if self.cols == 0 || !x.len().is_multiple_of(self.cols) {
            let expected = x.len().div_ceil(self.cols.max(1)) * self.cols;
            return Err(SparseGptError::Shape {
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
fn gram_lower(x: &[f32], tokens: usize, cols: usize) -> Result<Vec<f32>> {
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

/// What `fasterprune` needs from the Hessian: the upper Cholesky factor of the damped
/// inverse. Layers that share inputs (q/k/v, gate/up) can share one factor.
#[derive(Debug, Clone)]
pub struct HessianFactor {
    cols: usize,
    dead: Vec<bool>,
    damp: f64,
    upper: Vec<f32>,
    inverse_diagonal: Vec<f64>,
}

impl HessianFactor {
    /// Dead columns (`H[i,i] == 0` → 1), damping `percdamp·mean(diag H)`, then
    /// `U = cholesky(H⁻¹, upper=True)`.
    pub fn new(h: &HessianAccumulator, percdamp: f64) -> Result<Self> {
        if h.nsamples == 0 {
            return Err(SparseGptError::EmptyHessian);
        }
        if !(percdamp.is_finite() && percdamp >= 0.0) {
            return Err(SparseGptError::Damp(percdamp));
        }
        let n = h.cols;
        if let Some(index) = h.h.iter().position(|v| !v.is_finite()) {
            return Err(SparseGptError::NonFinite {
                what: "hessian",
                index,
                value: h.h[index],
            });
        }
        let mut diag: Vec<f64> = (0..n).map(|i| h.h[i * n + i]).collect();
        let dead: Vec<bool> = diag.iter().map(|&d| d == 0.0).collect();
        for (d, &dd) in diag.iter_mut().zip(&dead) {
            if dd {
                *d = 1.0;
            }
        }
        let damp = percdamp * diag.iter().sum::<f64>() / n.max(1) as f64;
        // Reversed order, read from H's lower triangle: r[i][j] = H[n-1-j][n-1-i], j <= i.
        let mut r = vec![0.0f64; n * n];
        r.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, row)| {
            for (j, v) in row[..=i].iter_mut().enumerate() {
                *v = if i == j {
                    diag[n - 1 - i] + damp
                } else {
                    h.h[(n - 1 - j) * n + (n - 1 - i)]
                };
            }
        });
        cholesky_lower(&mut r, n).map_err(|e| match e {
            SparseGptError::NotPositiveDefinite { column, pivot } => {
                SparseGptError::NotPositiveDefinite {
                    column: n - 1 - column,
                    pivot,
                }
            }
            e => e,
        })?;
        let x = invert_lower(&r, n)?;
        // `x = L⁻¹` of the reversed matrix `J(H + damp·I)J = L·Lᵀ`, so its inverse is `xᵀx`
        // and `[(H + damp·I)⁻¹]_jj = Σ_k x[k][n−1−j]²`, summed in f64 before any rounding.
        let mut inverse_diagonal = vec![0.0f64; n];
        for row in x.chunks_exact(n.max(1)) {
            for (d, v) in inverse_diagonal.iter_mut().zip(row.iter().rev()) {
                *d += v * v;
            }
        }
        let mut upper = vec![0.0f32; n * n];
        upper
            .par_chunks_mut(n.max(1))
            .enumerate()
            .for_each(|(i, row)| {
                for (j, u) in row.iter_mut().enumerate().skip(i) {
                    *u = x[(n - 1 - i) * n + (n - 1 - j)] as f32;
                }
            });
        if let Some(p) = (0..n).find(|&i| !(upper[i * n + i] > 0.0 && upper[i * n + i].is_finite()))
        {
            return Err(SparseGptError::NotPositiveDefinite {
                column: p,
                pivot: upper[p * n + p] as f64,
            });
        }
        Ok(HessianFactor {
            cols: n,
            dead,
            damp,
            upper,
            inverse_diagonal,
        })
    }

    /// Inputs of the layer.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Columns whose Hessian diagonal was 0 (their weights are zeroed).
    pub fn dead_columns(&self) -> &[bool] {
        &self.dead
    }

    /// The damping added to the diagonal.
    pub fn damp(&self) -> f64 {
        self.damp
    }

    /// `U`, row-major `cols × cols`, zero below the diagonal, `UᵀU = (H + damp·I)⁻¹`.
    pub fn upper(&self) -> &[f32] {
        &self.upper
    }

    /// `[(H + damp·I)⁻¹]_jj` for every column `j`, in f64 (from the f64 inverse factor, before
    /// it is rounded to `U`'s f32), with dead columns' diagonals replaced by 1 as above.
    pub fn inverse_diagonal(&self) -> &[f64] {
        &self.inverse_diagonal
    }
}

/// `Σ a_i b_i` with independent partial sums so the loop vectorises.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `A·B` (`A·Bᵀ` when `b_transposed`, `B` then stored `n × k`), row-major f64, through the
/// forward's f64 products (OpenBLAS `dgemm` in shape-fixed panels: the same bits on every CPU
/// of a kernel family, whatever the thread count).
fn gemm_f64(
    a: &[f64],
    m: usize,
    k: usize,
    b: &[f64],
    n: usize,
    b_transposed: bool,
) -> Result<Vec<f64>> {
    Ok(crate::model::matmul::matmul_f64(
        a,
        m,
        k,
        b,
        n,
        b_transposed,
    ))
}

/// Block size of the factorisations: the diagonal blocks (128³/6 flops each) run in
/// scalar loops, everything else in GEMMs of depth 128.
const NB: usize = 128;

/// In-place lower Cholesky of a row-major SPD matrix (only `j <= i` is read or written).
/// Blocked right-looking: factor a diagonal block, solve the panel below it (rows in
/// parallel), update the trailing matrix with one GEMM. A failing pivot is reported
/// with its index in this matrix.
fn cholesky_lower(a: &mut [f64], n: usize) -> Result<()> {
    for k0 in (0..n).step_by(NB) {
        let k1 = (k0 + NB).min(n);
        let nb = k1 - k0;
        // 1. The diagonal block, unblocked.
        for j in k0..k1 {
            let rowj = &mut a[j * n..j * n + n];
            let d = rowj[j] - dot(&rowj[k0..j], &rowj[k0..j]);
            if !(d > 0.0 && d.is_finite()) {
                return Err(SparseGptError::NotPositiveDefinite {
                    column: j,
                    pivot: d,
                });
            }
            rowj[j] = d.sqrt();
            let lj: Vec<f64> = rowj[k0..=j].to_vec();
            for i in j + 1..k1 {
                let rowi = &mut a[i * n..i * n + n];
                rowi[j] = (rowi[j] - dot(&rowi[k0..j], &lj[..j - k0])) / lj[j - k0];
            }
        }
        if k1 == n {
            break;
        }
        let diag: Vec<f64> = (k0..k1)
            .flat_map(|j| a[j * n + k0..j * n + k1].to_vec())
            .collect();
        // 2. The panel below: forward substitution per row.
        let below = &mut a[k1 * n..];
        below.par_chunks_mut(n).for_each(|row| {
            for j in 0..nb {
                let lj = &diag[j * nb..j * nb + nb];
                row[k0 + j] = (row[k0 + j] - dot(&row[k0..k0 + j], &lj[..j])) / lj[j];
            }
        });
        // 3. Trailing update A22 -= L21·L21ᵀ, lower part only: one GEMM per column tile
        //    (half the flops of one square GEMM).
        let m = n - k1;
        let panel: Vec<f64> = below
            .chunks(n)
            .flat_map(|row| row[k0..k1].iter().copied())
            .collect();
        for t0 in (0..m).step_by(NB) {
            let t1 = (t0 + NB).min(m);
            let w = t1 - t0;
            let g = gemm_f64(
                &panel[t0 * nb..],
                m - t0,
                nb,
                &panel[t0 * nb..t1 * nb],
                w,
                true,
            )?;
            below[t0 * n..]
                .par_chunks_mut(n)
                .zip(g.par_chunks(w))
                .enumerate()
                .for_each(|(i, (row, g))| {
                    let c = k1 + t0;
                    for (x, y) in row[c..c + w.min(i + 1)].iter_mut().zip(g) {
                        *x -= y;
                    }
                });
        }
    }
    Ok(())
}

/// Inverse of a small lower-triangular block `l[r0..r1, r0..r1]` (row stride `n`),
/// returned row-major `nb × nb`, by forward substitution per column.
fn invert_lower_block(l: &[f64], n: usize, r0: usize, r1: usize) -> Vec<f64> {
    let nb = r1 - r0;
    let mut x = vec![0.0f64; nb * nb];
    for c in 0..nb {
        for i in c..nb {
            let li = &l[(r0 + i) * n + r0..(r0 + i) * n + r1];
            let s: f64 = (c..i).map(|p| li[p] * x[p * nb + c]).sum();
            x[i * nb + c] = (if i == c { 1.0 } else { 0.0 } - s) / li[i];
        }
    }
    x
}

/// Inverse of a row-major lower-triangular matrix (only `j <= i` read), row-major,
/// zero above the diagonal. Block row by block row:
/// `X[I, :I] = −X_II · (L[I, :I] · X[:I, :I])`.
fn invert_lower(l: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut x = vec![0.0f64; n * n];
    for i0 in (0..n).step_by(NB) {
        let i1 = (i0 + NB).min(n);
        let nb = i1 - i0;
        let xii = invert_lower_block(l, n, i0, i1);
        if i0 > 0 {
            // T = L[I, :I]·X[:I, :I], one GEMM per column tile J of the lower-triangular
            // X (only rows J.. of it are non-zero): half the flops of one square GEMM.
            let mut t = vec![0.0f64; nb * i0];
            for j0 in (0..i0).step_by(NB) {
                let j1 = (j0 + NB).min(i0);
                let (w, depth) = (j1 - j0, i0 - j0);
                let a: Vec<f64> = (i0..i1)
                    .flat_map(|r| l[r * n + j0..r * n + i0].to_vec())
                    .collect();
                let b: Vec<f64> = (j0..i0)
                    .flat_map(|r| x[r * n + j0..r * n + j1].to_vec())
                    .collect();
                let tj = gemm_f64(&a, nb, depth, &b, w, false)?;
                for r in 0..nb {
                    t[r * i0 + j0..r * i0 + j1].copy_from_slice(&tj[r * w..(r + 1) * w]);
                }
            }
            let y = gemm_f64(&xii, nb, nb, &t, i0, false)?;
            for r in 0..nb {
                for (d, v) in x[(i0 + r) * n..(i0 + r) * n + i0]
                    .iter_mut()
                    .zip(&y[r * i0..(r + 1) * i0])
                {
                    *d = -v;
                }
            }
        }
        for r in 0..nb {
            x[(i0 + r) * n + i0..(i0 + r) * n + i1].copy_from_slice(&xii[r * nb..(r + 1) * nb]);
        }
    }
    Ok(x)
}

/// SparseGPT settings, with the reference's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseGptConfig {
    /// Fraction pruned per block when `prune_n == 0` (in `[0, 1)`).
    pub sparsity: f64,
    /// N of N:M; 0 means unstructured.
    pub prune_n: usize,
    /// M of N:M.
    pub prune_m: usize,
    /// Columns per block (128: the mask is chosen per block across all rows).
    pub blocksize: usize,
    /// Damping as a fraction of the mean Hessian diagonal (0.01).
    pub percdamp: f64,
}

impl Default for SparseGptConfig {
    fn default() -> Self {
        SparseGptConfig {
            sparsity: 0.5,
            prune_n: 0,
            prune_m: 0,
            blocksize: 128,
            percdamp: 0.01,
        }
    }
}

impl SparseGptConfig {
    /// Unstructured at `sparsity`, reference defaults otherwise.
    pub fn unstructured(sparsity: f64) -> Self {
        SparseGptConfig {
            sparsity,
            ..Default::default()
        }
    }

    /// N:M semi-structured (`n` of every `m` consecutive inputs pruned).
    pub fn n_m(n: usize, m: usize) -> Self {
        SparseGptConfig {
            sparsity: n as f64 / m.max(1) as f64,
            prune_n: n,
            prune_m: m,
            ..Default::default()
        }
    }

    /// Check the settings against a layer with `cols` inputs.
    pub fn validate(&self, cols: usize) -> Result<()> {
        if self.blocksize == 0 {
            return Err(SparseGptError::BlockSize);
        }
        if !(self.percdamp.is_finite() && self.percdamp >= 0.0) {
            return Err(SparseGptError::Damp(self.percdamp));
        }
        let (n, m) = (self.prune_n, self.prune_m);
        if n == 0 {
            if !(0.0..1.0).contains(&self.sparsity) {
                return Err(SparseGptError::Sparsity(self.sparsity));
            }
        } else if m == 0 || n > m || !cols.is_multiple_of(m) || !self.blocksize.is_multiple_of(m) {
            return Err(SparseGptError::NMShape {
                n,
                m,
                cols,
                blocksize: self.blocksize,
            });
        }
        Ok(())
    }
}

/// What one SparseGPT run did.
#[derive(Debug, Clone)]
pub struct SparseGptStats {
    /// The weights it pruned (set to exactly 0).
    pub mask: Mask,
    /// Number of pruned weights.
    pub pruned: usize,
    /// `pruned / (rows·cols)`.
    pub sparsity: f64,
    /// Weights exactly 0 afterwards (what the reference's `check_sparsity` counts).
    pub zeros: usize,
    /// The reference's `Losses` summed: `Σ (w − q)² / d² / 2`.
    pub loss: f64,
    /// Columns zeroed because no input ever reached them.
    pub dead_columns: usize,
}

/// Prune `w` (row-major `rows × cols`, updated in place) with SparseGPT.
pub fn fasterprune(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    h: &HessianAccumulator,
    cfg: &SparseGptConfig,
) -> Result<SparseGptStats> {
    cfg.validate(cols)?;
    check_weights(w, rows, cols, h.cols)?;
    let f = HessianFactor::new(h, cfg.percdamp)?;
    prune_with_factor(w, rows, cols, &f, cfg)
}

fn check_weights(w: &[f32], rows: usize, cols: usize, hcols: usize) -> Result<()> {
    if hcols != cols {
        return Err(SparseGptError::Shape {
            what: "hessian columns",
            got: hcols,
            expected: cols,
        });
    }
    if w.len() != rows * cols || rows == 0 || cols == 0 {
        return Err(SparseGptError::Shape {
            what: "weights",
            got: w.len(),
            expected: rows * cols,
        });
    }
    first_non_finite("weights", w)
}

/// [`fasterprune`] with a precomputed factor (shared by layers with the same inputs).
/// `cfg.percdamp` is not used here: the factor already holds its damping.
pub fn prune_with_factor(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    f: &HessianFactor,
    cfg: &SparseGptConfig,
) -> Result<SparseGptStats> {
    cfg.validate(cols)?;
    check_weights(w, rows, cols, f.cols)?;
    for row in w.chunks_mut(cols) {
        for (v, &d) in row.iter_mut().zip(&f.dead) {
            if d {
                *v = 0.0;
            }
        }
    }
    let mut pruned = vec![false; rows * cols];
    let mut losses = vec![0.0f64; rows];
    let nm = (cfg.prune_n > 0).then_some((cfg.prune_n, cfg.prune_m));
    let mut expected = 0;
    if nm.is_some() || cfg.sparsity > 0.0 {
        for i1 in (0..cols).step_by(cfg.blocksize) {
            let i2 = (i1 + cfg.blocksize).min(cols);
            if nm.is_none() {
                expected += block_mask(w, &mut pruned, cols, i1, i2, &f.upper, cfg.sparsity);
            }
            prune_block(w, &mut pruned, &mut losses, cols, i1, i2, &f.upper, nm);
        }
    }
    if let Some((n, m)) = nm {
        expected = rows * (cols / m) * n;
    }
    let keep: Vec<bool> = pruned.iter().map(|p| !p).collect();
    let mask = Mask::from_keep(rows, cols, &keep).map_err(|_| SparseGptError::Shape {
        what: "mask",
        got: keep.len(),
        expected: rows * cols,
    })?;
    let n_pruned = mask.pruned_count();
    let ok = if nm.is_some() {
        n_pruned == expected
    } else {
        n_pruned >= expected
    };
    if !ok {
        return Err(SparseGptError::Count {
            expected,
            got: n_pruned,
        });
    }
    Ok(SparseGptStats {
        sparsity: mask.sparsity(),
        pruned: n_pruned,
        zeros: w.iter().filter(|&&v| v == 0.0).count(),
        loss: losses.iter().sum(),
        dead_columns: f.dead.iter().filter(|&&d| d).count(),
        mask,
    })
}

/// Unstructured mask of block `[i1, i2)` across all rows: `tmp = w²/d²`,
/// `thresh = sort(tmp)[floor(numel·s)]`, prune `tmp <= thresh`. Returns the lower
/// bound on what it pruned (`k + 1`).
fn block_mask(
    w: &[f32],
    pruned: &mut [bool],
    cols: usize,
    i1: usize,
    i2: usize,
    u: &[f32],
    s: f64,
) -> usize {
    let count = i2 - i1;
    let d2: Vec<f32> = (i1..i2)
        .map(|c| u[c * cols + c] * u[c * cols + c])
        .collect();
    let tmp: Vec<f32> = w
        .par_chunks(cols)
        .flat_map_iter(|row| row[i1..i2].iter().zip(&d2).map(|(&x, &d)| x * x / d))
        .collect();
    let k = prune_count(tmp.len(), s).min(tmp.len() - 1);
    let mut sel = tmp.clone();
    let thresh = *sel.select_nth_unstable_by(k, f32::total_cmp).1;
    pruned
        .par_chunks_mut(cols)
        .zip(tmp.par_chunks(count))
        .for_each(|(p, t)| {
            for (p, &t) in p[i1..i2].iter_mut().zip(t) {
                *p = t <= thresh;
            }
        });
    k + 1
}

/// Rows processed together in the trailing update, so each `U` row is read from L1
/// for all of them.
const ROW_GROUP: usize = 8;

/// The OBS loop over the columns of block `[i1, i2)` for every row, then the update
/// of the columns right of the block: `W[:, i2:] -= Err1 · U[i1:i2, i2:]`.
#[allow(clippy::too_many_arguments)]
fn prune_block(
    w: &mut [f32],
    pruned: &mut [bool],
    losses: &mut [f64],
    cols: usize,
    i1: usize,
    i2: usize,
    u: &[f32],
    nm: Option<(usize, usize)>,
) {
    let count = i2 - i1;
    w.par_chunks_mut(cols * ROW_GROUP)
        .zip(pruned.par_chunks_mut(cols * ROW_GROUP))
        .zip(losses.par_chunks_mut(ROW_GROUP))
        .for_each(|((wg, pg), lg)| {
            let mut errs = vec![0.0f32; count * ROW_GROUP];
            for (r, ((row, p), loss)) in wg
                .chunks_mut(cols)
                .zip(pg.chunks_mut(cols))
                .zip(lg.iter_mut())
                .enumerate()
            {
                *loss += obs_row(
                    &mut row[i1..i2],
                    &mut p[i1..i2],
                    &mut errs[r * count..(r + 1) * count],
                    u,
                    cols,
                    i1,
                    nm,
                );
            }
            for k in 0..count {
                let uk = &u[(i1 + k) * cols + i2..(i1 + k + 1) * cols];
                for (r, row) in wg.chunks_mut(cols).enumerate() {
                    let e = errs[r * count + k];
                    if e != 0.0 {
                        for (x, &y) in row[i2..].iter_mut().zip(uk) {
                            *x -= e * y;
                        }
                    }
                }
            }
        });
}

/// One row's pass over a block: choose N:M groups on the fly if asked, replace each
/// pruned weight by 0 and spread its error `(w − q)/d` over the block's later columns.
/// Returns the row's loss `Σ (w − q)²/d² / 2`.
fn obs_row(
    w1: &mut [f32],
    p1: &mut [bool],
    err: &mut [f32],
    u: &[f32],
    cols: usize,
    i1: usize,
    nm: Option<(usize, usize)>,
) -> f64 {
    let count = w1.len();
    let mut loss = 0.0f64;
    for i in 0..count {
        let ui = &u[(i1 + i) * cols + i1..(i1 + i) * cols + i1 + count];
        if let Some((n, m)) = nm {
            if i % m == 0 {
                nm_choose(&w1[i..i + m], &mut p1[i..i + m], u, cols, i1 + i, n);
            }
        }
        let wi = w1[i];
        let d = ui[i];
        let q = if p1[i] { 0.0 } else { wi };
        let e = (wi - q) / d;
        loss += ((wi - q) * (wi - q) / (d * d)) as f64 / 2.0;
        if e != 0.0 {
            for (x, &y) in w1[i + 1..].iter_mut().zip(&ui[i + 1..]) {
                *x -= e * y;
            }
        }
        w1[i] = q;
        err[i] = e;
    }
    loss
}

/// The reference's `topk(W1[:, i:i+m]² / diag(Hinv1)[i:i+m]², n, largest=False)`
/// for one row; ties go to the lower column.
fn nm_choose(w: &[f32], p: &mut [bool], u: &[f32], cols: usize, c0: usize, n: usize) {
    let m = w.len();
    let tmp: Vec<f32> = (0..m)
        .map(|j| {
            let d = u[(c0 + j) * cols + c0 + j];
            w[j] * w[j] / (d * d)
        })
        .collect();
    for j in 0..m {
        let v = tmp[j];
        let rank = tmp
            .iter()
            .enumerate()
            .filter(|&(i, &t)| t < v || (t == v && i < j))
            .count();
        p[j] = rank < n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::mask::Pattern;
    use crate::prune::testutil::Rng;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0)
    }

    /// Naive f64 Cholesky (lower), the textbook triple loop.
    fn naive_chol(a: &[f64], n: usize) -> Vec<f64> {
        let mut l = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
                l[i * n + j] = if i == j {
                    (a[i * n + i] - s).sqrt()
                } else {
                    (a[i * n + j] - s) / l[j * n + j]
                };
            }
        }
        l
    }

    /// The reference's composition spelled out: `cholesky(cholesky_inverse(cholesky(H)), upper=True)`.
    fn naive_upper_of_inverse(h: &[f64], n: usize) -> Vec<f64> {
        let l = naive_chol(h, n);
        // L⁻¹ by forward substitution, then H⁻¹ = L⁻ᵀ L⁻¹.
        let mut li = vec![0.0; n * n];
        for c in 0..n {
            for i in c..n {
                let s: f64 = (c..i).map(|p| l[i * n + p] * li[p * n + c]).sum();
                li[i * n + c] = (if i == c { 1.0 } else { 0.0 } - s) / l[i * n + i];
            }
        }
        let mut inv = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                inv[i * n + j] = (0..n).map(|k| li[k * n + i] * li[k * n + j]).sum();
            }
        }
        // Upper factor U = Lᵀ of the lower factor of H⁻¹.
        let l2 = naive_chol(&inv, n);
        let mut u = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                u[i * n + j] = l2[j * n + i];
            }
        }
        u
    }

    /// Inputs with correlated, unevenly scaled channels: X = Z·A·diag(scale).
    fn inputs(rng: &mut Rng, tokens: usize, cols: usize) -> Vec<f32> {
        let z = rng.normals(tokens * cols);
        let a: Vec<f32> = (0..cols * cols)
            .map(|i| {
                if i / cols == i % cols {
                    1.0
                } else {
                    0.3 * rng.normal() as f32 / (cols as f32).sqrt()
                }
            })
            .collect();
        let scale: Vec<f32> = (0..cols)
            .map(|_| (rng.normal() * 0.7).exp() as f32)
            .collect();
        let mut x = vec![0.0f32; tokens * cols];
        for t in 0..tokens {
            for j in 0..cols {
                let s: f32 = (0..cols).map(|k| z[t * cols + k] * a[k * cols + j]).sum();
                x[t * cols + j] = s * scale[j];
            }
        }
        x
    }

    fn hessian_of(x: &[f32], cols: usize, batches: usize) -> HessianAccumulator {
        let mut h = HessianAccumulator::new(cols);
        let per = x.len() / batches;
        for b in x.chunks(per) {
            h.add_batch(b, 1).unwrap();
        }
        h
    }

    /// `||(W − Ŵ) Xᵀ||²`: the layer's output error on the calibration inputs.
    fn recon_error(w: &[f32], w_hat: &[f32], x: &[f32], rows: usize, cols: usize) -> f64 {
        let tokens = x.len() / cols;
        let mut e = 0.0f64;
        for r in 0..rows {
            for t in 0..tokens {
                let d: f64 = (0..cols)
                    .map(|j| {
                        (w[r * cols + j] - w_hat[r * cols + j]) as f64 * x[t * cols + j] as f64
                    })
                    .sum();
                e += d * d;
            }
        }
        e
    }

    /// A literal, column-by-column port of the reference `fasterprune` loop (given `U`).
    fn naive_fasterprune(
        w: &mut [f32],
        rows: usize,
        cols: usize,
        u: &[f32],
        cfg: &SparseGptConfig,
    ) -> Vec<bool> {
        let mut mask = vec![false; rows * cols];
        for i1 in (0..cols).step_by(cfg.blocksize) {
            let i2 = (i1 + cfg.blocksize).min(cols);
            let count = i2 - i1;
            let mut w1: Vec<f32> = (0..rows)
                .flat_map(|r| w[r * cols + i1..r * cols + i2].to_vec())
                .collect();
            let mut err1 = vec![0.0f32; rows * count];
            let dg = |c: usize| u[(i1 + c) * cols + i1 + c];
            let mut m1 = vec![false; rows * count];
            if cfg.prune_n == 0 {
                let tmp: Vec<f32> = (0..rows * count)
                    .map(|k| w1[k] * w1[k] / (dg(k % count) * dg(k % count)))
                    .collect();
                let mut sorted = tmp.clone();
                sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
                let thresh = sorted[(tmp.len() as f64 * cfg.sparsity) as usize];
                for k in 0..tmp.len() {
                    m1[k] = tmp[k] <= thresh;
                }
            }
            for i in 0..count {
                if cfg.prune_n != 0 && i % cfg.prune_m == 0 {
                    for r in 0..rows {
                        let mut idx: Vec<usize> = (i..i + cfg.prune_m).collect();
                        let t = |c: usize| w1[r * count + c] * w1[r * count + c] / (dg(c) * dg(c));
                        idx.sort_by(|&a, &b| t(a).partial_cmp(&t(b)).unwrap());
                        for &c in &idx[..cfg.prune_n] {
                            m1[r * count + c] = true;
                        }
                    }
                }
                for r in 0..rows {
                    let wv = w1[r * count + i];
                    let q = if m1[r * count + i] { 0.0 } else { wv };
                    let e = (wv - q) / dg(i);
                    for j in i..count {
                        w1[r * count + j] -= e * u[(i1 + i) * cols + i1 + j];
                    }
                    w1[r * count + i] = q;
                    err1[r * count + i] = e;
                }
            }
            for r in 0..rows {
                for c in 0..count {
                    w[r * cols + i1 + c] = w1[r * count + c];
                    mask[r * cols + i1 + c] = m1[r * count + c];
                }
                for j in i2..cols {
                    let s: f64 = (0..count)
                        .map(|k| err1[r * count + k] as f64 * u[(i1 + k) * cols + j] as f64)
                        .sum();
                    w[r * cols + j] -= s as f32;
                }
            }
        }
        mask
    }

    #[test]
    fn hessian_running_average_matches_closed_form() {
        let mut h = HessianAccumulator::new(2);
        h.add_batch(&[1.0, 2.0, 3.0, 4.0], 1).unwrap();
        // After one sample: 2/1 · (x1 x1ᵀ + x2 x2ᵀ) = 2 · [[10, 14], [14, 20]].
        assert_eq!(h.to_matrix(), [20.0, 28.0, 28.0, 40.0]);
        h.add_batch(&[0.0, 1.0], 2).unwrap();
        // N = 3: H = 2/3 · Σ x xᵀ = 2/3 · [[10, 14], [14, 21]].
        let want = [20.0 / 3.0, 28.0 / 3.0, 28.0 / 3.0, 14.0];
        assert!(
            h.to_matrix()
                .iter()
                .zip(want)
                .all(|(a, b)| close(*a, b, 1e-12)),
            "{:?}",
            h.to_matrix()
        );
        assert_eq!(h.nsamples(), 3);
        assert!(matches!(
            h.add_batch(&[1.0], 1),
            Err(SparseGptError::Shape { .. })
        ));
        assert!(matches!(
            h.add_batch(&[1.0, 2.0], 0),
            Err(SparseGptError::ZeroSamples)
        ));
        assert!(matches!(
            h.add_batch(&[1.0, f32::NAN], 1),
            Err(SparseGptError::NonFinite {
                what: "inputs",
                index: 1,
                ..
            })
        ));
    }

    #[test]
    fn one_call_equals_many_batches() {
        let mut rng = Rng::new(9);
        let cols = 40;
        let x = rng.normals(8 * 16 * cols);
        let many = hessian_of(&x, cols, 8);
        let mut one = HessianAccumulator::new(cols);
        one.add_batch(&x, 8).unwrap();
        assert_eq!(one.nsamples(), many.nsamples());
        for (a, b) in one.to_matrix().iter().zip(many.to_matrix()) {
            assert!(close(*a, b, 1e-5), "{a} vs {b}");
        }
    }

    #[test]
    fn tiled_gram_matches_naive_lower_triangle() {
        // 1100 columns → 3 tiles of 367: off-diagonal tiles and a ragged last tile.
        let mut rng = Rng::new(10);
        let (tokens, cols) = (24, 1100);
        let x = rng.normals(tokens * cols);
        let g = gram_lower(&x, tokens, cols).unwrap();
        for i in (0..cols).step_by(7) {
            for j in (0..=i).step_by(5) {
                let want: f64 = (0..tokens)
                    .map(|t| x[t * cols + i] as f64 * x[t * cols + j] as f64)
                    .sum();
                assert!(close(g[i * cols + j] as f64, want, 1e-4), "({i},{j})");
            }
        }
        let mut h = HessianAccumulator::new(cols);
        h.add_batch(&x, 1).unwrap();
        let m = h.to_matrix();
        assert_eq!(m[3 * cols + 1000], m[1000 * cols + 3]);
        assert!(close(
            m[1000 * cols + 3],
            2.0 * g[1000 * cols + 3] as f64,
            1e-12
        ));
    }

    #[test]
    fn factor_matches_hand_3x3() {
        // Cholesky: [[4,2,2],[2,5,3],[2,3,6]] = L Lᵀ with L = [[2,0,0],[1,2,0],[1,1,2]].
        let mut a = vec![4.0, 2.0, 2.0, 2.0, 5.0, 3.0, 2.0, 3.0, 6.0];
        cholesky_lower(&mut a, 3).unwrap();
        let lower: Vec<f64> = (0..9)
            .map(|k| if k % 3 <= k / 3 { a[k] } else { 0.0 })
            .collect();
        assert_eq!(lower, [2.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0, 2.0]);
        // L⁻¹ row by row: [1/2], [-1/4, 1/2], [-(1/2 - 1/4)/2 = -1/8, -1/4, 1/2].
        let inv = invert_lower(&lower, 3).unwrap();
        assert_eq!(inv, [0.5, 0.0, 0.0, -0.25, 0.5, 0.0, -0.125, -0.25, 0.5]);
        // Built backwards: U = [[1,1,0],[0,1,1],[0,0,1]] has U⁻¹ = [[1,-1,1],[0,1,-1],[0,0,1]],
        // and H = (UᵀU)⁻¹ = U⁻¹U⁻ᵀ = [[3,-2,1],[-2,2,-1],[1,-1,1]] (rows of U⁻¹ dotted).
        let h = vec![3.0, -2.0, 1.0, -2.0, 2.0, -1.0, 1.0, -1.0, 1.0];
        let f = HessianFactor::new(
            &HessianAccumulator::from_matrix(3, h.clone(), 1).unwrap(),
            0.0,
        )
        .unwrap();
        let want = [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0];
        assert!(
            f.upper()
                .iter()
                .zip(want)
                .all(|(a, b)| (a - b).abs() < 1e-6),
            "{:?}",
            f.upper()
        );
        // Damping: 0.01 · mean(3, 2, 1) = 0.02 on the diagonal.
        let f =
            HessianFactor::new(&HessianAccumulator::from_matrix(3, h, 1).unwrap(), 0.01).unwrap();
        assert!(close(f.damp(), 0.02, 1e-15));
        // Dead column: H[1,1] = 0 → 1 (then damped), flagged.
        let h = vec![2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0];
        let f =
            HessianFactor::new(&HessianAccumulator::from_matrix(3, h, 1).unwrap(), 0.0).unwrap();
        assert_eq!(f.dead_columns(), [false, true, false]);
        // Diagonal H: U = diag(1/sqrt(h_ii)).
        assert!(
            close(f.upper()[0] as f64, 0.5f64.sqrt(), 1e-7)
                && f.upper()[4] == 1.0
                && f.upper()[8] == 0.5
        );
    }

    #[test]
    fn factor_matches_reference_composition_on_random_spd() {
        let mut rng = Rng::new(11);
        for n in [5, 150, 300] {
            let x = inputs(&mut rng, 2 * n, n);
            let h = hessian_of(&x, n, 2);
            let f = HessianFactor::new(&h, 0.01).unwrap();
            let mut damped = h.to_matrix();
            for i in 0..n {
                damped[i * n + i] += f.damp();
            }
            let want = naive_upper_of_inverse(&damped, n);
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (k, (&g, &w)) in f.upper().iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= 1e-5 * scale,
                    "n={n} entry {k}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn not_positive_definite_is_a_typed_error() {
        let h = HessianAccumulator::from_matrix(2, vec![1.0, 2.0, 2.0, 1.0], 1).unwrap();
        assert!(matches!(
            HessianFactor::new(&h, 0.0),
            Err(SparseGptError::NotPositiveDefinite { .. })
        ));
        let mut w = vec![1.0f32; 4];
        let r = fasterprune(
            &mut w,
            2,
            2,
            &h,
            &SparseGptConfig {
                percdamp: 0.0,
                ..Default::default()
            },
        );
        assert!(matches!(r, Err(SparseGptError::NotPositiveDefinite { .. })));
        assert!(matches!(
            HessianFactor::new(&HessianAccumulator::new(2), 0.01),
            Err(SparseGptError::EmptyHessian)
        ));
        assert!(matches!(
            HessianAccumulator::from_matrix(2, vec![1.0; 3], 1),
            Err(SparseGptError::Shape { .. })
        ));
    }

    #[test]
    fn fasterprune_matches_literal_port() {
        let mut rng = Rng::new(12);
        let (rows, cols) = (19, 64);
        let x = inputs(&mut rng, 256, cols);
        let h = hessian_of(&x, cols, 8);
        let w0 = rng.normals(rows * cols);
        let f = HessianFactor::new(&h, 0.01).unwrap();
        for cfg in [
            SparseGptConfig {
                blocksize: 32,
                ..SparseGptConfig::unstructured(0.5)
            },
            SparseGptConfig {
                blocksize: 16,
                ..SparseGptConfig::unstructured(0.7)
            },
            SparseGptConfig::unstructured(0.5),
            SparseGptConfig {
                blocksize: 32,
                ..SparseGptConfig::n_m(2, 4)
            },
            SparseGptConfig::n_m(4, 8),
        ] {
            let mut w = w0.clone();
            let stats = prune_with_factor(&mut w, rows, cols, &f, &cfg).unwrap();
            let mut w_ref = w0.clone();
            let m_ref = naive_fasterprune(&mut w_ref, rows, cols, f.upper(), &cfg);
            assert_eq!(
                stats.mask.to_keep(),
                m_ref.iter().map(|p| !p).collect::<Vec<_>>(),
                "{cfg:?}"
            );
            for (k, (a, b)) in w.iter().zip(&w_ref).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{cfg:?} weight {k}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn achieved_sparsity_and_exact_n_m_groups() {
        let mut rng = Rng::new(13);
        let (rows, cols) = (16, 64);
        let x = inputs(&mut rng, 256, cols);
        let h = hessian_of(&x, cols, 4);
        let w0 = rng.normals(rows * cols);
        for s in [0.5, 0.7] {
            let mut w = w0.clone();
            let cfg = SparseGptConfig {
                blocksize: 32,
                ..SparseGptConfig::unstructured(s)
            };
            let st = fasterprune(&mut w, rows, cols, &h, &cfg).unwrap();
            // Per 32-column block: `<= sorted[floor(512·s)]` prunes floor(512·s) + 1 (no ties).
            let per_block = prune_count(rows * 32, s) + 1;
            assert_eq!(st.pruned, 2 * per_block, "at {s}");
            for b in 0..2 {
                let n: usize = (0..rows)
                    .flat_map(|r| (b * 32..b * 32 + 32).map(move |c| (r, c)))
                    .filter(|&(r, c)| !st.mask.is_kept(r, c))
                    .count();
                assert_eq!(n, per_block);
            }
            assert!(st.zeros >= st.pruned && st.loss > 0.0);
            let keep = st.mask.to_keep();
            assert!(w.iter().zip(&keep).all(|(v, k)| *k || *v == 0.0));
        }
        for (n, m) in [(2, 4), (4, 8)] {
            let mut w = w0.clone();
            let st = fasterprune(&mut w, rows, cols, &h, &SparseGptConfig::n_m(n, m)).unwrap();
            for r in 0..rows {
                for g in 0..cols / m {
                    let z = (g * m..(g + 1) * m)
                        .filter(|&c| !st.mask.is_kept(r, c))
                        .count();
                    assert_eq!(z, n, "{n}:{m} row {r} group {g}");
                }
            }
            assert_eq!(st.sparsity, n as f64 / m as f64);
        }
    }

    #[test]
    fn update_beats_magnitude_and_mask_only_on_reconstruction() {
        let mut rng = Rng::new(14);
        let (rows, cols) = (16, 64);
        let x = inputs(&mut rng, 256, cols);
        let h = hessian_of(&x, cols, 8);
        let w0 = rng.normals(rows * cols);
        for cfg in [
            SparseGptConfig::unstructured(0.5),
            SparseGptConfig::n_m(2, 4),
        ] {
            let mut w = w0.clone();
            let st = fasterprune(&mut w, rows, cols, &h, &cfg).unwrap();
            let sgpt = recon_error(&w0, &w, &x, rows, cols);
            // Its own mask, no update.
            let mut masked = w0.clone();
            st.mask.apply(&mut masked).unwrap();
            let mask_only = recon_error(&w0, &masked, &x, rows, cols);
            // Magnitude at the same sparsity (same pattern for N:M).
            let mag_scores: Vec<f32> = w0.iter().map(|v| v.abs()).collect();
            let (pattern, s) = match cfg.prune_n {
                0 => (Pattern::PerLayerExact, st.sparsity),
                n => (Pattern::NM { n, m: cfg.prune_m }, 0.0),
            };
            let mag = Mask::from_scores(&mag_scores, rows, cols, pattern, s).unwrap();
            let mut wm = w0.clone();
            mag.apply(&mut wm).unwrap();
            let magnitude = recon_error(&w0, &wm, &x, rows, cols);
            assert!(
                sgpt < mask_only && sgpt < magnitude,
                "{cfg:?}: sgpt {sgpt} mask-only {mask_only} magnitude {magnitude}"
            );
            assert!(
                sgpt < 0.8 * magnitude,
                "{cfg:?}: update should help clearly: {sgpt} vs {magnitude}"
            );
        }
    }

    #[test]
    fn dead_columns_are_zeroed() {
        let mut rng = Rng::new(15);
        let (rows, cols) = (8, 32);
        let mut x = inputs(&mut rng, 128, cols);
        for t in 0..128 {
            x[t * cols + 3] = 0.0;
        }
        let h = hessian_of(&x, cols, 2);
        let mut w = rng.normals(rows * cols);
        let st = fasterprune(&mut w, rows, cols, &h, &SparseGptConfig::unstructured(0.5)).unwrap();
        assert_eq!(st.dead_columns, 1);
        assert!((0..rows).all(|r| w[r * cols + 3] == 0.0));
    }

    #[test]
    fn shared_factor_equals_fasterprune() {
        let mut rng = Rng::new(16);
        let (rows, cols) = (8, 48);
        let x = inputs(&mut rng, 96, cols);
        let h = hessian_of(&x, cols, 3);
        let w0 = rng.normals(rows * cols);
        let cfg = SparseGptConfig {
            blocksize: 16,
            ..SparseGptConfig::unstructured(0.6)
        };
        let (mut a, mut b) = (w0.clone(), w0.clone());
        let sa = fasterprune(&mut a, rows, cols, &h, &cfg).unwrap();
        let f = HessianFactor::new(&h, cfg.percdamp).unwrap();
        let sb = prune_with_factor(&mut b, rows, cols, &f, &cfg).unwrap();
        assert_eq!(a, b);
        assert_eq!(sa.mask, sb.mask);
        // Sparsity 0 prunes nothing (documented deviation) and leaves weights alone.
        let mut c = w0.clone();
        let s0 =
            prune_with_factor(&mut c, rows, cols, &f, &SparseGptConfig::unstructured(0.0)).unwrap();
        assert_eq!((s0.pruned, c), (0, w0));
    }

    #[test]
    fn bad_settings_and_shapes_are_typed_errors() {
        let h = HessianAccumulator::from_matrix(
            8,
            (0..64)
                .map(|k| if k % 9 == 0 { 1.0 } else { 0.0 })
                .collect(),
            1,
        )
        .unwrap();
        let mut w = vec![1.0f32; 16];
        let run =
            |w: &mut [f32], rows, cols, cfg: SparseGptConfig| fasterprune(w, rows, cols, &h, &cfg);
        assert!(matches!(
            run(&mut w, 2, 8, SparseGptConfig::unstructured(1.0)),
            Err(SparseGptError::Sparsity(_))
        ));
        assert!(matches!(
            run(&mut w, 2, 8, SparseGptConfig::n_m(3, 2)),
            Err(SparseGptError::NMShape { .. })
        ));
        assert!(matches!(
            run(&mut w, 2, 8, SparseGptConfig::n_m(2, 3)),
            Err(SparseGptError::NMShape { .. })
        ));
        let odd_block = SparseGptConfig {
            blocksize: 6,
            ..SparseGptConfig::n_m(2, 4)
        };
        assert!(matches!(
            run(&mut w, 2, 8, odd_block),
            Err(SparseGptError::NMShape { .. })
        ));
        let zero_block = SparseGptConfig {
            blocksize: 0,
            ..Default::default()
        };
        assert!(matches!(
            run(&mut w, 2, 8, zero_block),
            Err(SparseGptError::BlockSize)
        ));
        let bad_damp = SparseGptConfig {
            percdamp: -1.0,
            ..Default::default()
        };
        assert!(matches!(
            run(&mut w, 2, 8, bad_damp),
            Err(SparseGptError::Damp(_))
        ));
        assert!(matches!(
            run(&mut w[..15], 2, 8, Default::default()),
            Err(SparseGptError::Shape { .. })
        ));
        assert!(matches!(
            run(&mut w, 4, 4, Default::default()),
            Err(SparseGptError::Shape { .. })
        ));
        w[5] = f32::INFINITY;
        assert!(matches!(
            run(&mut w, 2, 8, Default::default()),
            Err(SparseGptError::NonFinite { index: 5, .. })
        ));
    }
}
