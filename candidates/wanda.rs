//! Wanda (Sun et al., 2023): weight magnitude times input activation norm,
//! `score = |W_ij| · ||X_j||₂`, compared per output row by the host.

use autoprune_sdk::prelude::*;

struct Wanda;

impl Metric for Wanda {
    fn info() -> Info {
        Info::new("wanda", "1.0.0", "|W_ij| * ||X_j||_2")
    }

    fn score(layer: &Layer) -> Result<()> {
        let norm = &layer.stats().l2_norm;
        layer.score_rows(|row, out| {
            for ((o, w), n) in out.iter_mut().zip(row.weights).zip(norm) {
                *o = w.abs() * n;
            }
        })
    }
}

export_metric!(Wanda);

#[cfg(test)]
mod tests {
    use super::*;
    use autoprune_sdk::testing::{run, TestLayer};

    #[test]
    fn weight_magnitude_times_channel_norm() {
        // norms [2, 0.5, 0]:
        // row 0: |1|·2 = 2, |-4|·0.5 = 2, |3|·0 = 0
        // row 1: |-0.5|·2 = 1, |2|·0.5 = 1, |-7|·0 = 0
        let layer = TestLayer::new(2, 3, vec![1.0, -4.0, 3.0, -0.5, 2.0, -7.0])
            .with_l2_norm(vec![2.0, 0.5, 0.0]);
        assert_eq!(
            run::<Wanda>(&layer).unwrap(),
            [2.0, 2.0, 0.0, 1.0, 1.0, 0.0]
        );
    }

    #[test]
    fn same_scores_with_small_tiles() {
        // 5 rows in tiles of 2, 2, 1: row i = [i, -i], norms [1, 3] -> [i, 3i].
        let weights: Vec<f32> = (0..5).flat_map(|i| [i as f32, -(i as f32)]).collect();
        let layer = TestLayer::new(5, 2, weights)
            .with_l2_norm(vec![1.0, 3.0])
            .with_tile_rows(2);
        let expected: Vec<f32> = (0..5).flat_map(|i| [i as f32, 3.0 * i as f32]).collect();
        assert_eq!(run::<Wanda>(&layer).unwrap(), expected);
    }
}
