//! SparseGPT's f64 linear algebra: a vectorised dot, blocked Cholesky, triangular inverse, GEMMs through the forward's products.

use rayon::prelude::*;

/// Why a Hessian could not be accumulated ([`super::HessianAccumulator`]) or factorised
/// ([`super::HessianFactor`]).
#[derive(Debug, thiserror::Error)]
pub enum LinalgError {
    /// A buffer has the wrong number of values.
    #[error("{what} has {got} values, expected {expected}")]
    Shape {
        /// Which buffer ("inputs", "hessian").
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
    /// A factorisation of a Hessian that saw no samples.
    #[error("the Hessian has accumulated no samples")]
    EmptyHessian,
    /// Damping fraction negative or not finite.
    #[error("damping fraction {0} must be finite and >= 0")]
    Damp(f64),
    /// Cholesky failed: the damped Hessian is not (numerically) positive definite.
    #[error("damped Hessian is not positive definite (pivot {pivot:e} at column {column})")]
    NotPositiveDefinite {
        /// Column (original order) whose pivot failed.
        column: usize,
        /// The pivot value (≤ 0 or not finite).
        pivot: f64,
    },
}

pub(super) type Result<T> = std::result::Result<T, LinalgError>;

/// `Err(NonFinite)` at the first value of `v` that is NaN or infinite.
pub(crate) fn first_non_finite(what: &'static str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(LinalgError::NonFinite {
            what,
            index,
            value: v[index] as f64,
        }),
        None => Ok(()),
    }
}

/// `Σ a_i b_i` with independent partial sums so the loop vectorises.
pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
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
pub(super) fn gemm_f64(
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
pub(super) fn cholesky_lower(a: &mut [f64], n: usize) -> Result<()> {
    for k0 in (0..n).step_by(NB) {
        let k1 = (k0 + NB).min(n);
        let nb = k1 - k0;
        // 1. The diagonal block, unblocked.
        for j in k0..k1 {
            let rowj = &mut a[j * n..j * n + n];
            let d = rowj[j] - dot(&rowj[k0..j], &rowj[k0..j]);
            if !(d > 0.0 && d.is_finite()) {
                return Err(LinalgError::NotPositiveDefinite {
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
pub(super) fn invert_lower_block(l: &[f64], n: usize, r0: usize, r1: usize) -> Vec<f64> {
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
pub(super) fn invert_lower(l: &[f64], n: usize) -> Result<Vec<f64>> {
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
