//! SparseGPT: Hessian-aware pruning with the OBS weight update.
//!
//! A faithful port of `SparseGPT.add_batch` / `fasterprune` from IST-DASLab/sparsegpt
//! as locuslab/wanda's `prune_sparsegpt` runs it (unstructured masks chosen per
//! 128-column block across all rows, or N:M chosen on the fly; each pruned weight's
//! error is compensated on the columns to its right).
//!
//! Numerics, and why:
//! - **Hessian** ([`HessianAccumulator`], with the other input statistics in
//!   `calib::hessian`): each batch's Gram matrix `XᵀX` comes from f32 GEMMs, the running
//!   average `H = 2/N · Σ x xᵀ` is kept in **f64**.
//! - **Factorisation in f64** ([`HessianFactor`], also in `calib::hessian`), blocked, with the
//!   O(n³) parts in f64 GEMMs: one Cholesky and one triangular inverse give the upper Cholesky
//!   factor of the damped inverse that the reference gets from three factorisations in f32.
//! - **The pruning loop in f32**, as the reference: masks compare `w²/d²` in f32 and
//!   weights are updated in f32, so masks match the reference's except for weights
//!   within rounding of a block's threshold.
//!
//! One deliberate deviation: a sparsity of 0 prunes nothing (the reference's
//! `tmp <= sorted[0]` would prune each block's minimum).

use rayon::prelude::*;

use super::mask::{prune_count, Mask};

use crate::calib::hessian::first_non_finite;
pub use crate::calib::hessian::{HessianAccumulator, HessianFactor, LinalgError};

/// Why SparseGPT could not run.
#[derive(Debug, thiserror::Error)]
pub enum SparseGptError {
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
    /// An input has the wrong size or a non-finite value, or the Hessian could not be
    /// factorised (no samples, not finite, not positive definite).
    #[error(transparent)]
    Hessian(#[from] LinalgError),
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
    check_weights(w, rows, cols, h.cols())?;
    let f = HessianFactor::new(h, cfg.percdamp)?;
    prune_with_factor(w, rows, cols, &f, cfg)
}

fn check_weights(w: &[f32], rows: usize, cols: usize, hcols: usize) -> Result<()> {
    if hcols != cols {
        return Err(SparseGptError::Hessian(LinalgError::Shape {
            what: "hessian columns",
            got: hcols,
            expected: cols,
        }));
    }
    if w.len() != rows * cols || rows == 0 || cols == 0 {
        return Err(SparseGptError::Hessian(LinalgError::Shape {
            what: "weights",
            got: w.len(),
            expected: rows * cols,
        }));
    }
    Ok(first_non_finite("weights", w)?)
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
    check_weights(w, rows, cols, f.cols())?;
    for row in w.chunks_mut(cols) {
        for (v, &d) in row.iter_mut().zip(f.dead_columns()) {
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
                expected += block_mask(w, &mut pruned, cols, i1, i2, f.upper(), cfg.sparsity);
            }
            prune_block(w, &mut pruned, &mut losses, cols, i1, i2, f.upper(), nm);
        }
    }
    if let Some((n, m)) = nm {
        expected = rows * (cols / m) * n;
    }
    let zeros = w.iter().filter(|&&v| v == 0.0).count();
    finish(
        rows,
        cols,
        &pruned,
        expected,
        nm.is_some(),
        zeros,
        losses.iter().sum(),
        f.dead_columns().iter().filter(|&&d| d).count(),
    )
}

/// The host's check of what a run pruned, and its stats: `pruned` (row-major) must hold
/// exactly `expected` pruned weights for N:M, at least `expected` otherwise.
#[allow(clippy::too_many_arguments)]
fn finish(
    rows: usize,
    cols: usize,
    pruned: &[bool],
    expected: usize,
    nm: bool,
    zeros: usize,
    loss: f64,
    dead_columns: usize,
) -> Result<SparseGptStats> {
    let keep: Vec<bool> = pruned.iter().map(|p| !p).collect();
    let mask = Mask::from_keep(rows, cols, &keep).map_err(|_| {
        SparseGptError::Hessian(LinalgError::Shape {
            what: "mask",
            got: keep.len(),
            expected: rows * cols,
        })
    })?;
    let n_pruned = mask.pruned_count();
    let ok = if nm {
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
        zeros,
        loss,
        dead_columns,
        mask,
    })
}

/// The reference's threshold over one block's `tmp = w²/d²` (every row): `sort(tmp)[k]` with
/// `k = floor(numel·s)`; weights with `tmp <= thresh` are pruned, at least `k + 1` of them.
fn block_threshold(tmp: &[f32], s: f64) -> (f32, usize) {
    let k = prune_count(tmp.len(), s).min(tmp.len() - 1);
    let mut sel = tmp.to_vec();
    let thresh = *sel.select_nth_unstable_by(k, f32::total_cmp).1;
    (thresh, k + 1)
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
    let (thresh, at_least) = block_threshold(&tmp, s);
    pruned
        .par_chunks_mut(cols)
        .zip(tmp.par_chunks(count))
        .for_each(|(p, t)| {
            for (p, &t) in p[i1..i2].iter_mut().zip(t) {
                *p = t <= thresh;
            }
        });
    at_least
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

pub mod device;

#[cfg(test)]
mod tests;
