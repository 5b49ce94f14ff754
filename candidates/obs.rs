//! OBS saliency without the weight update (Hassibi & Stork, 1993; the mask rule of SparseGPT
//! without its compensation): the loss increase of removing `W_ij` alone,
//! `score = W_ij² / [(H + λI)⁻¹]_jj`, with `H = XᵀX / tokens` the layer's input Hessian and
//! `λ = 0.01·mean(diag H)`. Compared per output row by the host, like Wanda. The host
//! computes the inverse diagonal only because the metric declares it; every value is positive.

use autoprune_sdk::prelude::*;

struct Obs;

impl Metric for Obs {
    fn info() -> Info {
        Info::new("obs", "1.0.0", "W_ij^2 / [(H + lambda I)^-1]_jj")
            .needs_hessian_inverse_diagonal()
    }

    fn score(layer: &Layer) -> Result<()> {
        let hinv = layer.hessian_inverse_diagonal()?;
        layer.score_rows(|row, out| {
            for ((o, w), h) in out.iter_mut().zip(row.weights).zip(hinv) {
                *o = w * w / h;
            }
        })
    }
}

export_metric!(Obs);

#[cfg(test)]
mod tests {
    use super::*;
    use autoprune_sdk::testing::{run, TestLayer};

    #[test]
    fn squared_weight_over_the_inverse_hessian_diagonal() {
        // [H⁻¹]_jj = [0.5, 4, 0.25]:
        // row 0: 1²/0.5 = 2, (-4)²/4 = 4, 3²/0.25 = 36
        // row 1: (-0.5)²/0.5 = 0.5, 2²/4 = 1, (-1)²/0.25 = 4
        let layer = TestLayer::new(2, 3, vec![1.0, -4.0, 3.0, -0.5, 2.0, -1.0])
            .with_hessian_inverse_diagonal(vec![0.5, 4.0, 0.25]);
        assert_eq!(run::<Obs>(&layer).unwrap(), [2.0, 4.0, 36.0, 0.5, 1.0, 4.0]);
    }

    #[test]
    fn with_a_diagonal_hessian_obs_ranks_rows_like_wanda() {
        // H diagonal: [H⁻¹]_jj = 1/(h_j + λ); with λ → 0, w²·h_j = (|w|·sqrt(h_j))², Wanda's
        // score squared (‖X_j‖₂ = sqrt(tokens·h_j)), so a row's order is Wanda's.
        let h = [4.0f32, 0.25, 1.0, 9.0];
        let w = vec![0.3, -2.0, 1.0, 0.2, -0.1, 0.9, -0.4, 0.35];
        let layer = TestLayer::new(2, 4, w.clone())
            .with_hessian_inverse_diagonal(h.iter().map(|&d| 1.0 / d).collect())
            .with_tile_rows(1);
        let scores = run::<Obs>(&layer).unwrap();
        let order = |v: &[f32]| {
            let mut i: Vec<usize> = (0..v.len()).collect();
            i.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
            i
        };
        for r in 0..2 {
            let wanda: Vec<f32> = (0..4).map(|j| w[r * 4 + j].abs() * h[j].sqrt()).collect();
            assert_eq!(order(&scores[r * 4..r * 4 + 4]), order(&wanda), "row {r}");
        }
    }

    #[test]
    fn the_input_must_be_declared_and_provided() {
        let layer = TestLayer::new(1, 2, vec![1.0, 2.0]);
        assert!(matches!(run::<Obs>(&layer), Err(Error::Unsupported(_))));
    }
}
