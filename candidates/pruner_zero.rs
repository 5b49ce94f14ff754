//! Pruner-Zero (Dong et al., 2024): the best symbolic metric its genetic search published
//! (`data/best_tree.json` of pprp/Pruner-Zero: `mul(abs(mul(W, W)), mms(G))`),
//! `score = |W_ij|² · mms(G)_ij`, compared per output row by the host.
//!
//! `G_ij = sqrt(Σ_windows (100 · ∂L/∂W_ij)²)` is the host's gradient statistic, and
//! `mms(G) = (G − min G) / (max G − min G)` is min–max normalisation over the **whole layer**,
//! so the metric reads the layer twice: a first pass over the tiles finds `min G` and `max G`,
//! the second scores. When every `G` of the layer is equal the reference divides 0 by 0 (NaN);
//! here `mms` is then 1 everywhere, so the score falls back to `|W|²` (magnitude ranking).

use autoprune_sdk::prelude::*;

struct PrunerZero;

impl Metric for PrunerZero {
    fn info() -> Info {
        Info::new(
            "pruner-zero",
            "1.0.0",
            "|W_ij|^2 * mms(G)_ij, min-max over the layer (G: sqrt(sum (100 dL/dW)^2))",
        )
        .needs_gradient()
    }

    fn score(layer: &Layer) -> Result<()> {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        layer.for_each_tile(|tile| {
            for &g in tile.gradient() {
                lo = lo.min(g);
                hi = hi.max(g);
            }
        })?;
        let range = hi - lo;
        // A constant (or empty) G: mms would be 0/0; use 1 so the score is |W|².
        let (shift, inv) = if range > 0.0 && range.is_finite() {
            (lo, 1.0 / range)
        } else {
            (0.0, 0.0)
        };
        layer.score_rows(|row, out| {
            for ((o, w), g) in out.iter_mut().zip(row.weights).zip(row.gradient()) {
                let mms = if inv > 0.0 { (g - shift) * inv } else { 1.0 };
                *o = w * w * mms;
            }
        })
    }
}

export_metric!(PrunerZero);

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
    fn squared_magnitude_times_min_max_normalised_gradient() {
        // W = [[1, -2], [3, 0.5]], G = [[1, 5], [2, 3]]: min 1, max 5, mms = (G − 1) / 4
        // = [[0, 1], [0.25, 0.5]]; W² = [[1, 4], [9, 0.25]];
        // scores = [[0, 4], [2.25, 0.125]].
        let layer =
            TestLayer::new(2, 2, vec![1.0, -2.0, 3.0, 0.5]).with_gradient(vec![1.0, 5.0, 2.0, 3.0]);
        let want = [0.0, 4.0, 2.25, 0.125];
        // Tiles of one row: min and max must still come from the whole layer (row 0 alone has
        // min 1, max 5; row 1 alone has min 2, max 3, which would give different scores).
        for tile_rows in [1, 2] {
            assert_close(
                &run::<PrunerZero>(&layer.clone().with_tile_rows(tile_rows)).unwrap(),
                &want,
            );
        }
    }

    #[test]
    fn constant_gradient_falls_back_to_squared_magnitude() {
        let layer = TestLayer::new(1, 3, vec![-1.0, 2.0, 0.5]).with_gradient(vec![0.7; 3]);
        assert_eq!(run::<PrunerZero>(&layer).unwrap(), [1.0, 4.0, 0.25]);
    }

    #[test]
    fn ignores_activations() {
        // Channel norms do not enter the tree.
        let layer = TestLayer::new(1, 2, vec![2.0, -3.0])
            .with_l2_norm(vec![100.0, 0.0])
            .with_gradient(vec![0.0, 2.0]);
        assert_eq!(run::<PrunerZero>(&layer).unwrap(), [0.0, 9.0]);
    }
}
