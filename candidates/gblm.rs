//! GBLM-Pruner (Das et al., 2023): gradient-based language-model pruning,
//! `score = |W_ij| · ||X_j||₂ + α · |W_ij| · G_ij`, compared per output row by the host.
//!
//! `G_ij = sqrt(Σ_windows (100 · ∂L/∂W_ij)²)` is the host's gradient statistic (the reference's
//! ℓ2-aggregated, ×100-scaled gradient; the paper's scaling factor is that 100).
//!
//! α: the reference code (VILA-Lab/GBLM-Pruner, `prune_gblm`) adds
//! `|W|·sqrt(scaler_row) + |W|·G`, where `scaler_row = Σ x_j² / N` is averaged over its N
//! calibration samples, i.e. its activation term is `||X_j||₂ / √N` while `G` is a plain sum
//! over the N samples. Our `||X_j||₂` is the plain norm over all calibration tokens, so the
//! reference's ranking is `|W|·||X_j||₂ + √N·|W|·G`. The metric cannot see N, so α is fixed at
//! `√32` (the SOTU-512 protocol's 32 windows): under the default protocol this is exactly the
//! reference's combination; with N windows the reference would weigh G by `√N` instead (both of
//! our terms grow like `√N`, so ours keeps the 32-window balance at any N).

use autoprune_sdk::prelude::*;

/// Weight of the gradient term relative to `||X_j||₂` (see the module docs): `√32`.
const ALPHA: f32 = 5.656_854;

struct Gblm;

impl Metric for Gblm {
    fn info() -> Info {
        Info::new(
            "gblm",
            "1.0.0",
            "|W_ij| * ||X_j||_2 + sqrt(32) * |W_ij| * G_ij (G: sqrt(sum (100 dL/dW)^2))",
        )
        .needs_gradient()
    }

    fn score(layer: &Layer) -> Result<()> {
        let norm = &layer.stats().l2_norm;
        layer.score_rows(|row, out| {
            for (((o, w), n), g) in out
                .iter_mut()
                .zip(row.weights)
                .zip(norm)
                .zip(row.gradient())
            {
                *o = w.abs() * (n + ALPHA * g);
            }
        })
    }
}

export_metric!(Gblm);

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
    fn alpha_is_sqrt_32() {
        assert!((ALPHA - 32f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn activation_term_plus_gradient_term() {
        // W = [[1, -2], [0.5, 4]], norms [3, 1], G = [[0, 1], [2, 0.25]], α = √32 = 5.6568542:
        // (0,0): 1·(3 + 0)        = 3
        // (0,1): 2·(1 + α·1)      = 2 + 2α       = 13.3137085
        // (1,0): 0.5·(3 + α·2)    = 1.5 + α      = 7.1568542
        // (1,1): 4·(1 + α·0.25)   = 4 + α        = 9.6568542
        let layer = TestLayer::new(2, 2, vec![1.0, -2.0, 0.5, 4.0])
            .with_l2_norm(vec![3.0, 1.0])
            .with_gradient(vec![0.0, 1.0, 2.0, 0.25]);
        let want = [3.0, 13.313_708, 7.156_854, 9.656_854];
        for tile_rows in [1, 2] {
            assert_close(
                &run::<Gblm>(&layer.clone().with_tile_rows(tile_rows)).unwrap(),
                &want,
            );
        }
    }

    #[test]
    fn without_gradient_it_is_wanda() {
        // G = 0 everywhere: the score is |W|·||X||, Wanda's.
        let layer = TestLayer::new(1, 3, vec![-1.0, 2.0, 3.0])
            .with_l2_norm(vec![2.0, 0.5, 0.0])
            .with_gradient(vec![0.0; 3]);
        assert_eq!(run::<Gblm>(&layer).unwrap(), [2.0, 1.0, 0.0]);
    }
}
