//! The vocabulary every room shares: which linear layer, its weights, and its input statistics.

use serde::{Deserialize, Serialize};

/// The role of a linear layer inside a transformer block (mirrors the WIT `layer-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// Attention query projection.
    Q,
    /// Attention key projection.
    K,
    /// Attention value projection.
    V,
    /// Attention output projection.
    O,
    /// MLP gate projection.
    Gate,
    /// MLP up projection.
    Up,
    /// MLP down projection.
    Down,
    /// Any other linear layer.
    Other,
}

impl LayerKind {
    /// The seven linears of a LLaMA-family block, in forward order.
    pub const BLOCK: [LayerKind; 7] = [
        LayerKind::Q,
        LayerKind::K,
        LayerKind::V,
        LayerKind::O,
        LayerKind::Gate,
        LayerKind::Up,
        LayerKind::Down,
    ];

    /// Short name as used in reports and Hugging Face keys (`q_proj` → "q").
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Q => "q",
            LayerKind::K => "k",
            LayerKind::V => "v",
            LayerKind::O => "o",
            LayerKind::Gate => "gate",
            LayerKind::Up => "up",
            LayerKind::Down => "down",
            LayerKind::Other => "other",
        }
    }
}

/// Where a layer sits in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayerId {
    /// Zero-based block index.
    pub block: u32,
    /// Number of blocks in the model.
    pub num_blocks: u32,
    /// Role inside the block.
    pub kind: LayerKind,
}

impl LayerId {
    /// The linear `kind` of block `block` in a model of `num_blocks` blocks.
    pub fn of(block: usize, num_blocks: usize, kind: LayerKind) -> Self {
        LayerId {
            block: block as u32,
            num_blocks: num_blocks as u32,
            kind,
        }
    }
}

impl std::fmt::Display for LayerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "block {}/{} {}",
            self.block,
            self.num_blocks,
            self.kind.name()
        )
    }
}

/// Per-input-channel statistics of a linear layer's inputs, accumulated in f64.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelStats {
    /// Number of tokens accumulated.
    pub tokens: u64,
    /// `Σ x_j²` per input channel.
    pub sum_sq: Vec<f64>,
    /// `Σ x_j` per input channel.
    pub sum: Vec<f64>,
    /// `max |x_j|` per input channel.
    pub max_abs: Vec<f32>,
}

impl ChannelStats {
    /// Empty statistics for `cols` channels.
    pub fn new(cols: usize) -> Self {
        Self {
            tokens: 0,
            sum_sq: vec![0.0; cols],
            sum: vec![0.0; cols],
            max_abs: vec![0.0; cols],
        }
    }

    /// Number of channels.
    pub fn cols(&self) -> usize {
        self.sum_sq.len()
    }

    /// Accumulate `tokens` rows of a row-major `[tokens, cols]` activation matrix.
    ///
    /// Large inputs are split into groups of columns accumulated in parallel; every column
    /// still adds its rows in order, so the result does not depend on the split.
    pub fn accumulate(&mut self, x: &[f32]) {
        use rayon::prelude::*;
        /// Columns per parallel task.
        const GROUP: usize = 64;
        let cols = self.cols();
        assert!(
            cols > 0 && x.len().is_multiple_of(cols),
            "activation shape mismatch"
        );
        let groups = self
            .sum_sq
            .par_chunks_mut(GROUP)
            .zip(self.sum.par_chunks_mut(GROUP))
            .zip(self.max_abs.par_chunks_mut(GROUP))
            .enumerate();
        type Group<'a> = (usize, ((&'a mut [f64], &'a mut [f64]), &'a mut [f32]));
        let run = |(g, ((sum_sq, sum), max_abs)): Group<'_>| {
            accumulate_columns(x, cols, g * GROUP, sum_sq, sum, max_abs)
        };
        if x.len() >= 1 << 16 {
            groups.for_each(run);
        } else {
            groups.collect::<Vec<_>>().into_iter().for_each(run);
        }
        self.tokens += (x.len() / cols) as u64;
    }

    /// `||X_j||₂ = sqrt(Σ x_j²)` per channel (Wanda's activation norm).
    pub fn l2_norm(&self) -> Vec<f32> {
        self.sum_sq.iter().map(|&s| s.sqrt() as f32).collect()
    }

    /// Mean of `x_j` per channel (0 when no tokens were seen).
    pub fn mean(&self) -> Vec<f32> {
        let n = self.tokens.max(1) as f64;
        self.sum.iter().map(|&s| (s / n) as f32).collect()
    }

    /// Population variance of `x_j` per channel, never negative.
    pub fn variance(&self) -> Vec<f32> {
        let n = self.tokens.max(1) as f64;
        self.sum
            .iter()
            .zip(&self.sum_sq)
            .map(|(&s, &sq)| {
                let m = s / n;
                (sq / n - m * m).max(0.0) as f32
            })
            .collect()
    }
}

/// Add columns `j0..j0 + sum_sq.len()` of the `cols`-wide rows of `x`, row by row, into the
/// accumulators (compiled for AVX2 where the CPU has it: 4 f64 lanes instead of 2; no FMA, so
/// the sums are the same).
fn accumulate_columns(
    x: &[f32],
    cols: usize,
    j0: usize,
    sum_sq: &mut [f64],
    sum: &mut [f64],
    max_abs: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the only feature the function is compiled for.
        return unsafe { accumulate_columns_avx2(x, cols, j0, sum_sq, sum, max_abs) };
    }
    accumulate_columns_body(x, cols, j0, sum_sq, sum, max_abs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_columns_avx2(
    x: &[f32],
    cols: usize,
    j0: usize,
    sum_sq: &mut [f64],
    sum: &mut [f64],
    max_abs: &mut [f32],
) {
    accumulate_columns_body(x, cols, j0, sum_sq, sum, max_abs)
}

#[inline(always)]
fn accumulate_columns_body(
    x: &[f32],
    cols: usize,
    j0: usize,
    sum_sq: &mut [f64],
    sum: &mut [f64],
    max_abs: &mut [f32],
) {
    let w = sum_sq.len();
    let (sum, max_abs) = (&mut sum[..w], &mut max_abs[..w]);
    for row in x.chunks_exact(cols) {
        let row = &row[j0..j0 + w];
        for (((&v, sq), s), m) in row
            .iter()
            .zip(sum_sq.iter_mut())
            .zip(sum.iter_mut())
            .zip(max_abs.iter_mut())
        {
            let v64 = v as f64;
            *sq += v64 * v64;
            *s += v64;
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
}

/// Statistics of every output row `i` of a linear layer (output feature `y_i = w_i · x`) over
/// the calibration tokens of the *dense* layer output `y = W x` (WIT `row-stats`, since 0.2.0).
/// Computed from the input Gram matrix by [`crate::calib::hessian::row_stats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RowStats {
    /// Number of calibration tokens.
    pub tokens: u64,
    /// `‖y_i‖₂ = sqrt(w_iᵀ (XᵀX) w_i)` per row.
    pub l2_norm: Vec<f32>,
    /// `w_i · (Σx / tokens)` per row.
    pub mean: Vec<f32>,
    /// `max(0, ‖y_i‖₂² / tokens − mean_i²)` per row.
    pub variance: Vec<f32>,
}

impl RowStats {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.l2_norm.len()
    }

    /// Whether every list has `rows` entries.
    pub fn has_rows(&self, rows: usize) -> bool {
        self.l2_norm.len() == rows && self.mean.len() == rows && self.variance.len() == rows
    }
}

/// Everything a metric may read about one linear layer.
#[derive(Debug, Clone, Copy)]
pub struct LayerData<'a> {
    /// Which layer.
    pub id: LayerId,
    /// Output features (rows of `W`).
    pub rows: usize,
    /// Input features (columns of `W`).
    pub cols: usize,
    /// Row-major signed weights, `rows * cols` values.
    pub weights: &'a [f32],
    /// Input-channel statistics over the calibration tokens.
    pub stats: &'a ChannelStats,
    /// Per-weight gradient statistic (row-major), when computed.
    pub gradient: Option<&'a [f32]>,
    /// `[(H + λI)⁻¹]_jj` per input channel (`cols` values), when computed
    /// ([`crate::calib::hessian::hessian_inverse_diagonal`]).
    pub hessian_inverse_diagonal: Option<&'a [f32]>,
    /// Statistics of the dense layer output per row (`rows` values per list), when computed.
    pub output_stats: Option<&'a RowStats>,
    /// The sparsity the host will apply to this layer.
    pub sparsity: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_accumulate_equals_row_by_row() {
        // 600 × 130 values: parallel column groups (64, 64, 2) against one row at a time.
        let cols = 130;
        let x: Vec<f32> = (0..600 * cols)
            .map(|i| ((i * 7919 % 1999) as f32 - 999.0) / 97.0)
            .collect();
        let mut big = ChannelStats::new(cols);
        big.accumulate(&x);
        let mut rows = ChannelStats::new(cols);
        for r in x.chunks_exact(cols) {
            rows.accumulate(r);
        }
        assert_eq!(big, rows);
    }

    #[test]
    fn stats_accumulate_hand_values() {
        // Two tokens over two channels: x = [[1, -2], [3, 4]].
        let mut s = ChannelStats::new(2);
        s.accumulate(&[1.0, -2.0, 3.0, 4.0]);
        assert_eq!(s.tokens, 2);
        assert_eq!(s.sum_sq, vec![10.0, 20.0]); // 1+9, 4+16
        assert_eq!(s.sum, vec![4.0, 2.0]);
        assert_eq!(s.max_abs, vec![3.0, 4.0]);
        assert_eq!(s.mean(), vec![2.0, 1.0]);
        // var = E[x²] − m² = 5 − 4 = 1 and 10 − 1 = 9.
        assert_eq!(s.variance(), vec![1.0, 9.0]);
        assert!((s.l2_norm()[0] - 10f32.sqrt()).abs() < 1e-6);
    }
}
