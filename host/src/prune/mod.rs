//! Pruning on the host: masks from untrusted scores, SparseGPT, native baseline metrics.
//!
//! - [`mask`]: validate a metric's scores and turn them into a [`Mask`] for a
//!   comparison group ([`Pattern`]: per row, per layer, N:M), exactly as the
//!   reference code does; apply it; hash it for behavioural dedup. Its selection
//!   algorithms (k-th smallest, threshold fills, PyTorch-exact N:M) live in `mask::select`.
//! - [`sparsegpt`]: the SparseGPT method (`fasterprune` with the OBS weight update),
//!   faithful to IST-DASLab/sparsegpt as locuslab/wanda runs it; its Hessian accumulation
//!   and f64 factorisation (Cholesky, triangular inverse) live with the other input
//!   statistics in [`crate::calib::hessian`].
//! - [`native`]: magnitude, Wanda and RIA scores in plain Rust (built-in references
//!   and the native side of wasm-vs-native benchmarks).

pub mod mask;
pub mod native;
pub mod sparsegpt;

pub use mask::{
    prune_count, sparsity_from_f32, validate_scores, Mask, MaskError, ParsePatternError, Pattern,
};
pub use sparsegpt::{
    fasterprune, prune_with_factor, HessianAccumulator, HessianFactor, LinalgError,
    SparseGptConfig, SparseGptError, SparseGptStats,
};

#[cfg(test)]
mod bench;
#[cfg(test)]
mod testutil;
