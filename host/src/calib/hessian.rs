//! SparseGPT's input Hessian of a layer ([`HessianAccumulator`], accumulated by the statistics
//! pass with the other input statistics), its factorisation ([`HessianFactor`], f64 linear
//! algebra in `linalg`), and the optional inputs it gives (WIT 0.2.0): the diagonal of its
//! damped inverse, and the statistics of the dense layer output per row.
//!
//! Both come from the SparseGPT Hessian the statistics pass accumulates
//! ([`HessianAccumulator`], `H_sg = (2/windows)·XᵀX` in f64) and need no extra forward:
//! - `H = XᵀX / tokens`, `λ = 0.01·mean(diag H)`, `hessian-inverse-diagonal[j] =
//!   [(H + λI)⁻¹]_jj`. [`HessianFactor`] (SparseGPT's own factorisation, f64) inverts
//!   `H_sg + 0.01·mean(diag H_sg)·I = c·(H + λI)` with `c = 2·tokens/windows`, so the value is
//!   `c·[(H_sg + cλI)⁻¹]_jj`. Dead inputs (`H_jj = 0`) are SparseGPT's: their diagonal is
//!   set to 1 in `H_sg` (`1/c` in `H`) before damping, so they read `1/(1/c + λ)`.
//! - `l2_i = sqrt(w_iᵀ (XᵀX) w_i)`, `mean_i = w_i·(Σx/tokens)`,
//!   `variance_i = max(0, l2_i²/tokens − mean_i²)`, all in f64.

mod accumulator;
mod factor;
#[cfg(test)]
pub(crate) mod factor_tests;
mod linalg;

pub use accumulator::HessianAccumulator;
pub use factor::HessianFactor;
pub(crate) use linalg::first_non_finite;
pub use linalg::LinalgError;

use super::{input_slot, BlockInputs};
use crate::layer::{ChannelStats, LayerKind, RowStats};
use crate::model::{Block, ModelError};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// The damping fraction: SparseGPT's `percdamp` (0.01 of the mean Hessian diagonal), the value
/// its paper and every reimplementation use.
pub const PERCDAMP: f64 = 0.01;

/// Why an optional input could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum HessianError {
    /// The Hessian or its factorisation failed (no samples, non-finite inputs, not positive
    /// definite).
    #[error(transparent)]
    Linalg(#[from] LinalgError),
    /// A product failed.
    #[error("matrix product failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Shapes that do not fit together (a host bug).
    #[error("shape: {0}")]
    Shape(String),
    /// The layer is missing from the model or the statistics.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// `c = 2·tokens / windows`: SparseGPT's Hessian is `c·H` with `H = XᵀX / tokens`.
fn sparsegpt_scale(h: &HessianAccumulator, tokens: u64) -> f64 {
    2.0 * tokens as f64 / h.nsamples().max(1) as f64
}

/// `[(H + λI)⁻¹]_jj` per input channel from SparseGPT's accumulator `h` over `tokens` tokens
/// (see the module docs), rounded once to f32.
pub fn hessian_inverse_diagonal(
    h: &HessianAccumulator,
    tokens: u64,
) -> Result<Vec<f32>, HessianError> {
    let f = HessianFactor::new(h, PERCDAMP)?;
    let c = sparsegpt_scale(h, tokens);
    Ok(f.inverse_diagonal()
        .iter()
        .map(|&d| (c * d) as f32)
        .collect())
}

/// The full symmetric Gram matrix `XᵀX` (row-major `cols × cols`, f64) of `h`'s inputs.
pub fn gram(h: &HessianAccumulator) -> Vec<f64> {
    let half = h.nsamples() as f64 / 2.0;
    let mut g = h.to_matrix();
    g.par_iter_mut().for_each(|v| *v *= half);
    g
}

/// Statistics of the dense output `y = W x` of a `rows × cols` layer (row-major `weights`)
/// from its inputs' Gram matrix `gram = XᵀX` and channel sums `stats`, in f64.
pub fn row_stats(
    weights: &[f32],
    rows: usize,
    cols: usize,
    gram: &[f64],
    stats: &ChannelStats,
) -> Result<RowStats, HessianError> {
    if weights.len() != rows * cols || gram.len() != cols * cols || stats.cols() != cols {
        return Err(HessianError::Shape(format!(
            "{} weights, a Gram matrix of {} and {} channels for a {rows}×{cols} layer",
            weights.len(),
            gram.len(),
            stats.cols()
        )));
    }
    let tokens = stats.tokens;
    let w64: Vec<f64> = weights.iter().map(|&w| w as f64).collect();
    // M = W·G in one f64 GEMM (rows·cols² flops), then q_i = Σ_j M_ij·w_ij = w_iᵀ G w_i.
    let m = if rows == 0 || cols == 0 {
        Vec::new()
    } else {
        let dev = Device::Cpu;
        let tw = Tensor::from_slice(&w64, (rows, cols), &dev)?;
        let tg = Tensor::from_slice(gram, (cols, cols), &dev)?;
        tw.matmul(&tg)?.flatten_all()?.to_vec1::<f64>()?
    };
    let n = tokens.max(1) as f64;
    let means: Vec<f64> = stats.sum.iter().map(|&s| s / n).collect();
    let per_row: Vec<(f32, f32, f32)> = (0..rows)
        .into_par_iter()
        .map(|i| {
            let w = &w64[i * cols..(i + 1) * cols];
            let q: f64 = m[i * cols..(i + 1) * cols]
                .iter()
                .zip(w)
                .map(|(a, b)| a * b)
                .sum();
            // XᵀX is positive semi-definite; rounding can leave a tiny negative.
            let q = q.max(0.0);
            let mean: f64 = w.iter().zip(&means).map(|(a, b)| a * b).sum();
            let var = (q / n - mean * mean).max(0.0);
            (q.sqrt() as f32, mean as f32, var as f32)
        })
        .collect();
    Ok(RowStats {
        tokens,
        l2_norm: per_row.iter().map(|r| r.0).collect(),
        mean: per_row.iter().map(|r| r.1).collect(),
        variance: per_row.iter().map(|r| r.2).collect(),
    })
}

/// Which optional inputs to compute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wanted {
    /// `hessian-inverse-diagonal`, per input slot.
    pub hessian_inverse_diagonal: bool,
    /// `output-stats`, per layer.
    pub output_stats: bool,
}

impl Wanted {
    /// Whether anything needs the Hessian.
    pub fn any(self) -> bool {
        self.hessian_inverse_diagonal || self.output_stats
    }
}

/// The Hessian-derived inputs of one block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockExtras {
    /// `[(H + λI)⁻¹]_jj` per input slot ([`input_slot`]).
    pub hessian_inverse_diagonal: BTreeMap<LayerKind, Vec<f32>>,
    /// Dense output statistics per linear.
    pub output_stats: BTreeMap<LayerKind, RowStats>,
    /// Seconds spent factorising and multiplying (not the accumulation).
    pub seconds: f64,
}

impl BlockExtras {
    /// The inverse diagonal of the inputs of `kind`.
    pub fn hessian_inverse_diagonal(&self, kind: LayerKind) -> Option<&[f32]> {
        self.hessian_inverse_diagonal
            .get(&input_slot(kind))
            .map(Vec::as_slice)
    }

    /// The output statistics of `kind`.
    pub fn output_stats(&self, kind: LayerKind) -> Option<&RowStats> {
        self.output_stats.get(&kind)
    }
}

/// The `wanted` inputs of every linear of `block` (its current, dense weights) from the
/// Hessians and statistics its dense pass collected (`collect_block_inputs(.., true)`).
pub fn block_extras(
    block: &Block,
    inputs: &BlockInputs,
    wanted: Wanted,
) -> Result<BlockExtras, HessianError> {
    let t = Instant::now();
    let mut out = BlockExtras::default();
    if !wanted.any() {
        return Ok(out);
    }
    for (&slot, h) in &inputs.hessians {
        let stats = inputs
            .stats
            .get(&slot)
            .ok_or_else(|| HessianError::Shape(format!("no statistics for {}", slot.name())))?;
        if wanted.hessian_inverse_diagonal {
            out.hessian_inverse_diagonal
                .insert(slot, hessian_inverse_diagonal(h, stats.tokens)?);
        }
        if wanted.output_stats {
            let g = gram(h);
            for kind in LayerKind::BLOCK
                .into_iter()
                .filter(|&k| input_slot(k) == slot)
            {
                let lin = block
                    .linear(kind)
                    .ok_or_else(|| ModelError::Input(format!("no {} linear", kind.name())))?;
                let (rows, cols) = lin.shape();
                let w: Vec<f32> = lin.weight().flatten_all()?.to_vec1()?;
                out.output_stats
                    .insert(kind, row_stats(&w, rows, cols, &g, stats)?);
            }
        }
    }
    out.seconds = t.elapsed().as_secs_f64();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic `[tokens, cols]` activation matrix with correlated channels.
    fn inputs(tokens: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        (0..tokens)
            .flat_map(|_| {
                let base = next();
                (0..cols)
                    .map(|j| base * (j as f32 * 0.3) + next() * (1.0 + j as f32))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Plain Gauss–Jordan inverse with partial pivoting, f64.
    fn gauss_jordan(a: &[f64], n: usize) -> Vec<f64> {
        let mut m = a.to_vec();
        let mut inv: Vec<f64> = (0..n * n)
            .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
            .collect();
        for c in 0..n {
            let p = (c..n)
                .max_by(|&x, &y| m[x * n + c].abs().total_cmp(&m[y * n + c].abs()))
                .unwrap();
            for k in 0..n {
                m.swap(c * n + k, p * n + k);
                inv.swap(c * n + k, p * n + k);
            }
            let d = m[c * n + c];
            for k in 0..n {
                m[c * n + k] /= d;
                inv[c * n + k] /= d;
            }
            for r in (0..n).filter(|&r| r != c) {
                let f = m[r * n + c];
                for k in 0..n {
                    m[r * n + k] -= f * m[c * n + k];
                    inv[r * n + k] -= f * inv[c * n + k];
                }
            }
        }
        inv
    }

    /// `XᵀX` of `x: [tokens, cols]`, naively in f64.
    fn naive_gram(x: &[f32], cols: usize) -> Vec<f64> {
        let mut g = vec![0.0f64; cols * cols];
        for row in x.chunks_exact(cols) {
            for a in 0..cols {
                for b in 0..cols {
                    g[a * cols + b] += row[a] as f64 * row[b] as f64;
                }
            }
        }
        g
    }

    /// Accumulate `windows` windows of `x` as the pipeline does (one sample per window).
    fn accumulate(x: &[f32], cols: usize, windows: usize) -> (HessianAccumulator, ChannelStats) {
        let mut h = HessianAccumulator::new(cols);
        let mut st = ChannelStats::new(cols);
        let per = x.len() / windows;
        for w in x.chunks(per) {
            h.add_batch(w, 1).unwrap();
            st.accumulate(w);
        }
        (h, st)
    }

    /// `(XᵀX/tokens + λI)⁻¹` in f64 the slow way (λ as the host damps), row-major.
    fn damped_inverse_reference(x: &[f32], tokens: usize, cols: usize) -> Vec<f64> {
        let mut hm = naive_gram(x, cols);
        hm.iter_mut().for_each(|v| *v /= tokens as f64);
        let lambda = PERCDAMP * (0..cols).map(|j| hm[j * cols + j]).sum::<f64>() / cols as f64;
        (0..cols).for_each(|j| hm[j * cols + j] += lambda);
        gauss_jordan(&hm, cols)
    }

    #[test]
    fn inverse_diagonal_matches_gauss_jordan() {
        // 96 tokens in 3 windows over 7 channels (the Cholesky blocks are 128: one block).
        let (tokens, cols) = (96, 7);
        let x = inputs(tokens, cols, 3);
        let (h, st) = accumulate(&x, cols, 3);
        let got = hessian_inverse_diagonal(&h, st.tokens).unwrap();
        let inv = damped_inverse_reference(&x, tokens, cols);
        for j in 0..cols {
            let want = inv[j * cols + j];
            let rel = (got[j] as f64 - want).abs() / want;
            // The batch Gram matrices come from f32 GEMMs: agreement to a few f32 ulps.
            assert!(rel < 1e-5, "column {j}: {} vs {want} ({rel:e})", got[j]);
        }
    }

    #[test]
    fn inverse_diagonal_is_blocked_correctly_past_128_columns() {
        // 300 columns: three Cholesky blocks and a trailing update; 600 tokens keep H definite.
        let (tokens, cols) = (600, 300);
        let x = inputs(tokens, cols, 5);
        let (h, st) = accumulate(&x, cols, 2);
        let got = hessian_inverse_diagonal(&h, st.tokens).unwrap();
        let inv = damped_inverse_reference(&x, tokens, cols);
        for j in 0..cols {
            let want = inv[j * cols + j];
            assert!(
                (got[j] as f64 - want).abs() <= 1e-4 * want,
                "column {j}: {} vs {want}",
                got[j]
            );
        }
    }

    #[test]
    fn dead_columns_read_as_sparsegpt_defines_them() {
        // Channel 2 is 0 on every token. 64 tokens in 2 windows: c = 2·64/2 = 64.
        let (tokens, cols) = (64, 4);
        let mut x = inputs(tokens, cols, 9);
        x.chunks_exact_mut(cols).for_each(|r| r[2] = 0.0);
        let (h, st) = accumulate(&x, cols, 2);
        let got = hessian_inverse_diagonal(&h, st.tokens).unwrap();
        let c = 64.0;
        let mut hm = naive_gram(&x, cols);
        hm.iter_mut().for_each(|v| *v /= tokens as f64);
        hm[2 * cols + 2] = 1.0 / c;
        let lambda = PERCDAMP * (0..cols).map(|j| hm[j * cols + j]).sum::<f64>() / cols as f64;
        let want = 1.0 / (1.0 / c + lambda);
        assert!(
            (got[2] as f64 - want).abs() <= 1e-6 * want,
            "{} vs {want}",
            got[2]
        );
        assert!(got.iter().all(|v| v.is_finite() && *v > 0.0));
    }

    #[test]
    fn row_stats_match_the_dense_output() {
        let (tokens, rows, cols) = (50, 5, 6);
        let x = inputs(tokens, cols, 1);
        let (h, st) = accumulate(&x, cols, 2);
        let w: Vec<f32> = (0..rows * cols)
            .map(|k| ((k * 37 % 11) as f32 - 5.0) / 7.0)
            .collect();
        let got = row_stats(&w, rows, cols, &gram(&h), &st).unwrap();
        assert_eq!(got.tokens, tokens as u64);
        for i in 0..rows {
            // y_i over tokens, directly, in f64.
            let y: Vec<f64> = x
                .chunks_exact(cols)
                .map(|r| {
                    (0..cols)
                        .map(|j| w[i * cols + j] as f64 * r[j] as f64)
                        .sum()
                })
                .collect();
            let l2 = y.iter().map(|v| v * v).sum::<f64>().sqrt();
            let mean = y.iter().sum::<f64>() / tokens as f64;
            let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / tokens as f64;
            let close = |a: f32, b: f64, what: &str| {
                assert!(
                    (a as f64 - b).abs() <= 1e-5 * b.abs().max(1e-3),
                    "row {i} {what}: {a} vs {b}"
                )
            };
            close(got.l2_norm[i], l2, "l2");
            close(got.mean[i], mean, "mean");
            close(got.variance[i], var, "variance");
        }
    }

    #[test]
    fn row_stats_refuse_mismatched_shapes() {
        let st = ChannelStats::new(3);
        assert!(matches!(
            row_stats(&[0.0; 6], 2, 3, &[0.0; 4], &st),
            Err(HessianError::Shape(_))
        ));
    }
}
