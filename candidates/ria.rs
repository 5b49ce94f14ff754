//! RIA, relative importance and activations (Zhang et al., 2024):
//! `score = (|W_ij| / Σ_i' |W_i'j| + |W_ij| / Σ_j' |W_ij'|) · ||X_j||₂^0.5`.
//!
//! Two passes over the tiles: the first sums `|W|` down every column, the second computes each
//! row's sum from the row itself and scores it. An all-zero column or row contributes 0 to its
//! term (instead of 0/0: every weight in it is 0 anyway), and a negative norm counts as 0.

use autoprune_sdk::prelude::*;

struct Ria;

impl Metric for Ria {
    fn info() -> Info {
        Info::new(
            "ria",
            "1.0.0",
            "(|W_ij|/sum_i'|W_i'j| + |W_ij|/sum_j'|W_ij'|) * ||X_j||_2^0.5",
        )
    }

    fn score(layer: &Layer) -> Result<()> {
        let mut col_sum = vec![0.0f32; layer.cols()];
        layer.for_each_tile(|tile| {
            for row in tile.rows() {
                for (s, w) in col_sum.iter_mut().zip(row.weights) {
                    *s += w.abs();
                }
            }
        })?;
        let inv_col: Vec<f32> = col_sum.iter().map(|&s| inverse(s)).collect();
        let norm = &layer.stats().l2_norm;
        let act: Vec<f32> = norm.iter().map(|n| n.max(0.0).sqrt()).collect();
        layer.score_rows(|row, out| {
            let inv_row = inverse(row.weights.iter().map(|w| w.abs()).sum());
            for (((o, w), c), a) in out.iter_mut().zip(row.weights).zip(&inv_col).zip(&act) {
                let w = w.abs();
                *o = (w * c + w * inv_row) * a;
            }
        })
    }
}

/// `1 / sum`, or 0 for an empty (all-zero) row or column.
fn inverse(sum: f32) -> f32 {
    if sum > 0.0 {
        1.0 / sum
    } else {
        0.0
    }
}

export_metric!(Ria);

#[cfg(test)]
mod tests {
    use super::*;
    use autoprune_sdk::testing::{run, TestLayer};

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "[{i}] {g} != {w}");
        }
    }

    #[test]
    fn relative_importance_times_sqrt_norm() {
        // W = [[1, -2], [3, 4]], norms [4, 9] -> sqrt: [2, 3]
        // column sums [4, 6], row sums [3, 7]
        // (0,0): (1/4 + 1/3)·2 = 7/6      (0,1): (2/6 + 2/3)·3 = 3
        // (1,0): (3/4 + 3/7)·2 = 33/14    (1,1): (4/6 + 4/7)·3 = 26/7
        let layer = TestLayer::new(2, 2, vec![1.0, -2.0, 3.0, 4.0]).with_l2_norm(vec![4.0, 9.0]);
        let want = [7.0 / 6.0, 3.0, 33.0 / 14.0, 26.0 / 7.0];
        // Tiles of one row: the column sums must still cover the whole layer.
        for tile_rows in [1, 2] {
            let scores = run::<Ria>(&layer.clone().with_tile_rows(tile_rows)).unwrap();
            assert_close(&scores, &want);
        }
    }

    #[test]
    fn zero_rows_and_columns_score_zero() {
        // W = [[0, 0], [0, 2]], norms [1, 1]: column 0 and row 0 are all zero (sum 0 -> term 0).
        // (1,1): (2/2 + 2/2)·1 = 2; every other weight is 0 -> 0, not NaN.
        let layer = TestLayer::new(2, 2, vec![0.0, 0.0, 0.0, 2.0]);
        assert_eq!(run::<Ria>(&layer).unwrap(), [0.0, 0.0, 0.0, 2.0]);
    }
}
