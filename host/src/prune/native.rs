//! Baseline metrics in plain Rust: magnitude, Wanda, RIA (scores: higher = keep).
//!
//! Built-in references for the sandboxed candidates and the native side of
//! wasm-vs-native benchmarks: single-threaded tight loops that auto-vectorise, with
//! the formulas of `reference/PRUNING.md`.
//!
//! # Panics
//! Each function panics if `layer.weights` (or an output buffer) is not `rows·cols`
//! long, has no columns, or (for the activation-aware ones) `layer.stats` does not
//! have `cols` channels: a `LayerData` is built by the host, so a mismatch is a host
//! bug, not bad input.

use crate::layer::LayerData;

/// RIA's activation exponent `a` (its paper and code use 0.5).
pub const RIA_A: f32 = 0.5;

fn check(layer: &LayerData, needs_stats: bool, out: &[f32]) {
    assert_eq!(
        out.len(),
        layer.rows * layer.cols,
        "{}: output is not rows*cols",
        layer.id
    );
    assert_eq!(
        layer.weights.len(),
        layer.rows * layer.cols,
        "{}: weights are not rows*cols",
        layer.id
    );
    assert!(layer.cols > 0, "{}: a layer needs columns", layer.id);
    if needs_stats {
        assert_eq!(
            layer.stats.cols(),
            layer.cols,
            "{}: stats do not match cols",
            layer.id
        );
    }
}

/// Magnitude: `|W_ij|`.
pub fn magnitude(layer: &LayerData) -> Vec<f32> {
    let mut out = vec![0.0; layer.weights.len()];
    magnitude_into(layer, &mut out);
    out
}

/// [`magnitude`] into a caller's buffer (no allocation; `rows·cols` long).
pub fn magnitude_into(layer: &LayerData, out: &mut [f32]) {
    check(layer, false, out);
    for (o, w) in out.iter_mut().zip(layer.weights) {
        *o = w.abs();
    }
}

/// Wanda: `|W_ij| · ||X_j||₂` with `||X_j||₂ = sqrt(Σ_tokens x_j²)`.
pub fn wanda(layer: &LayerData) -> Vec<f32> {
    let mut out = vec![0.0; layer.weights.len()];
    wanda_into(layer, &mut out);
    out
}

/// [`wanda`] into a caller's buffer (`rows·cols` long).
pub fn wanda_into(layer: &LayerData, out: &mut [f32]) {
    check(layer, true, out);
    let norm = layer.stats.l2_norm();
    for (o, w) in out
        .chunks_exact_mut(layer.cols)
        .zip(layer.weights.chunks_exact(layer.cols))
    {
        for ((o, w), n) in o.iter_mut().zip(w).zip(&norm) {
            *o = w.abs() * n;
        }
    }
}

/// RIA with `a = 0.5`: see [`ria_with`].
pub fn ria(layer: &LayerData) -> Vec<f32> {
    ria_with(layer, RIA_A)
}

/// RIA: `(|W_ij| / Σ_i' |W_i'j| + |W_ij| / Σ_j' |W_ij'|) · (||X_j||₂)^a`.
///
/// Divisions (not reciprocal products) as the reference, so near-ties rank alike. A
/// row or column whose `|W|` sums to 0 contributes 0 (the reference would give 0/0 = NaN).
pub fn ria_with(layer: &LayerData, a: f32) -> Vec<f32> {
    let mut out = vec![0.0; layer.weights.len()];
    ria_into(layer, a, &mut out);
    out
}

/// [`ria_with`] into a caller's buffer (`rows·cols` long).
pub fn ria_into(layer: &LayerData, a: f32, out: &mut [f32]) {
    check(layer, true, out);
    let cols = layer.cols;
    let act: Vec<f32> = layer.stats.l2_norm().iter().map(|n| n.powf(a)).collect();
    let mut col_sum = vec![0.0f32; cols];
    for row in layer.weights.chunks_exact(cols) {
        for (s, w) in col_sum.iter_mut().zip(row) {
            *s += w.abs();
        }
    }
    for (o, row) in out
        .chunks_exact_mut(cols)
        .zip(layer.weights.chunks_exact(cols))
    {
        let rs = abs_sum(row);
        for (((o, w), cs), x) in o.iter_mut().zip(row).zip(&col_sum).zip(&act) {
            let w = w.abs();
            let by_col = if *cs > 0.0 { w / cs } else { 0.0 };
            let by_row = if rs > 0.0 { w / rs } else { 0.0 };
            *o = (by_col + by_row) * x;
        }
    }
}

/// `Σ |x|` with eight partial sums so the loop vectorises.
fn abs_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v.abs()).sum();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k].abs();
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{ChannelStats, LayerId, LayerKind};

    fn layer<'a>(w: &'a [f32], rows: usize, cols: usize, stats: &'a ChannelStats) -> LayerData<'a> {
        LayerData {
            id: LayerId {
                block: 0,
                num_blocks: 1,
                kind: LayerKind::Q,
            },
            rows,
            cols,
            weights: w,
            stats,
            gradient: None,
            hessian_inverse_diagonal: None,
            output_stats: None,
            sparsity: 0.5,
        }
    }

    /// 2×3 weights, inputs with Σx² = [4, 9, 0] (norms 2, 3, 0).
    fn fixture() -> (Vec<f32>, ChannelStats) {
        let w = vec![1.0, -2.0, 3.0, -4.0, 0.0, 6.0];
        let mut s = ChannelStats::new(3);
        s.accumulate(&[2.0, 3.0, 0.0]);
        (w, s)
    }

    #[test]
    fn magnitude_is_abs() {
        let (w, s) = fixture();
        assert_eq!(
            magnitude(&layer(&w, 2, 3, &s)),
            [1.0, 2.0, 3.0, 4.0, 0.0, 6.0]
        );
    }

    #[test]
    fn wanda_hand_values() {
        let (w, s) = fixture();
        // |W| · [2, 3, 0].
        assert_eq!(wanda(&layer(&w, 2, 3, &s)), [2.0, 6.0, 0.0, 8.0, 0.0, 0.0]);
    }

    #[test]
    fn ria_hand_values() {
        let w = [1.0f32, -2.0, 3.0, -4.0, 0.0, 6.0];
        let mut s = ChannelStats::new(3);
        s.accumulate(&[2.0, 3.0, 4.0]); // norms 2, 3, 4 → sqrt: √2, √3, 2
                                        // Column sums |W|: [5, 2, 9]; row sums: [6, 10].
        let want = [
            (1.0 / 5.0 + 1.0 / 6.0) * 2f32.sqrt(),
            (2.0 / 2.0 + 2.0 / 6.0) * 3f32.sqrt(),
            (3.0 / 9.0 + 3.0 / 6.0) * 2.0,
            (4.0 / 5.0 + 4.0 / 10.0) * 2f32.sqrt(),
            0.0,
            (6.0 / 9.0 + 6.0 / 10.0) * 2.0,
        ];
        let got = ria(&layer(&w, 2, 3, &s));
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
        // a = 0 drops the activation factor.
        let got = ria_with(&layer(&w, 2, 3, &s), 0.0);
        assert!((got[0] - (0.2 + 1.0 / 6.0)).abs() < 1e-6);
    }

    #[test]
    fn ria_zero_row_and_column_stay_finite() {
        // Column 1 and row 1 are all zero.
        let w = [1.0f32, 0.0, 2.0, 0.0, 0.0, 0.0];
        let mut s = ChannelStats::new(3);
        s.accumulate(&[1.0, 1.0, 1.0]);
        let got = ria(&layer(&w, 2, 3, &s));
        assert!(got.iter().all(|v| v.is_finite()));
        assert_eq!(got[3..], [0.0, 0.0, 0.0]);
        // Row 0: |W|/colsum + |W|/rowsum = 1/1 + 1/3, 2/2 + 2/3.
        assert!((got[0] - (1.0 + 1.0 / 3.0)).abs() < 1e-6);
        assert!((got[2] - (1.0 + 2.0 / 3.0)).abs() < 1e-6);
    }

    #[test]
    fn abs_sum_matches_plain_sum() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.5).collect();
        let plain: f32 = x.iter().map(|v| v.abs()).sum();
        assert_eq!(abs_sum(&x), plain); // small integers/halves: exact in any order
    }
}
