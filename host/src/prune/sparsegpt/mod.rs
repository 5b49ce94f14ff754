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

mod linalg;
use linalg::{cholesky_lower, invert_lower};

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
mod tests;
