//! SparseGPT's factorisation of a damped Hessian: the upper Cholesky factor of its inverse
//! (what `fasterprune` needs) and the inverse's diagonal, in f64.
//!
//! The reference computes `cholesky(cholesky_inverse(cholesky(H)), upper=True)` in f32. The
//! upper Cholesky factor `U` of `H⁻¹` is unique, and equals `J·chol_lower(J·H·J)⁻¹·J` (`J`
//! reverses the order), so we compute that: one Cholesky and one triangular inverse instead of
//! three factorisations, with no explicit inverse to lose accuracy in. The O(n³) parts run in
//! f64 GEMMs (OpenBLAS `dgemm` in shape-fixed panels, so the bits depend on the kernel family,
//! not on the thread count or the cache sizes).

use rayon::prelude::*;

use super::accumulator::HessianAccumulator;
use super::linalg::{cholesky_lower, invert_lower, LinalgError, Result};

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
            return Err(LinalgError::EmptyHessian);
        }
        if !(percdamp.is_finite() && percdamp >= 0.0) {
            return Err(LinalgError::Damp(percdamp));
        }
        let n = h.cols;
        if let Some(index) = h.h.iter().position(|v| !v.is_finite()) {
            return Err(LinalgError::NonFinite {
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
            LinalgError::NotPositiveDefinite { column, pivot } => {
                LinalgError::NotPositiveDefinite {
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
            return Err(LinalgError::NotPositiveDefinite {
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
