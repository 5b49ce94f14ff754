//! Magnitude pruning: keep the weights of largest absolute value, `score = |W_ij|`.

use autoprune_sdk::prelude::*;

struct Magnitude;

impl Metric for Magnitude {
    fn info() -> Info {
        Info::new("magnitude", "1.0.0", "|W_ij|")
    }

    fn score(layer: &Layer) -> Result<()> {
        layer.score_rows(|row, out| {
            for (o, w) in out.iter_mut().zip(row.weights) {
                *o = w.abs();
            }
        })
    }
}

export_metric!(Magnitude);

#[cfg(test)]
mod tests {
    use super::*;
    use autoprune_sdk::testing::{run, TestLayer};

    #[test]
    fn scores_are_absolute_weights() {
        // |1| = 1, |-2| = 2, |-3.5| = 3.5, |0| = 0
        let layer = TestLayer::new(2, 2, vec![1.0, -2.0, -3.5, 0.0]);
        assert_eq!(run::<Magnitude>(&layer).unwrap(), [1.0, 2.0, 3.5, 0.0]);
    }

    #[test]
    fn ignores_activations_and_tiling() {
        // Norms must not matter: still |W|, row by row across 3 tiles of 1 row.
        let layer = TestLayer::new(3, 1, vec![-4.0, 0.25, -0.5])
            .with_l2_norm(vec![10.0])
            .with_tile_rows(1);
        assert_eq!(run::<Magnitude>(&layer).unwrap(), [4.0, 0.25, 0.5]);
    }
}
