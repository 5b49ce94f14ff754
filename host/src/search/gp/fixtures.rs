//! Test fixtures shared by the GP unit tests: channel statistics, random layers, a configuration
//! allowing every operator.

use super::{GpConfig, Rng};
use crate::layer::ChannelStats;

pub(super) fn stats(cols: usize, tokens: u64) -> ChannelStats {
    let mut s = ChannelStats::new(cols);
    s.tokens = tokens;
    for j in 0..cols {
        let rms = 0.5 + j as f64 * 0.37;
        s.sum_sq[j] = rms * rms * tokens as f64;
        s.sum[j] = 0.1 * j as f64 * tokens as f64 / 8.0;
        s.max_abs[j] = (rms * 7.0) as f32;
    }
    s
}

pub(super) fn layer(rows: usize, cols: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut r = Rng::new(seed);
    let w = (0..rows * cols)
        .map(|_| (r.unit() as f32 - 0.5) * 0.1)
        .collect();
    let g = (0..rows * cols).map(|_| r.unit() as f32 * 1e-3).collect();
    (w, g)
}

pub(super) fn all_ops_config() -> GpConfig {
    GpConfig {
        allow_gradient: true,
        ..GpConfig::default()
    }
}
