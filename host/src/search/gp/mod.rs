//! Symbolic genetic programming over Pruner-Zero-style metric expressions.
//!
//! An [`Expr`] is a tree over per-weight terminals and operators. [`Gp`] generates random trees
//! (ramped half-and-half), selects by tournament and breeds by subtree crossover and point /
//! subtree / hoist mutation, deterministically from a seed. [`simplify`] and [`canonical_key`]
//! recognise trees that prune identically; [`render()`] turns a tree into a complete candidate
//! source for the sandboxed builder, and [`eval_native`] computes the same scores in the host,
//! bit for bit.
//!
//! # Semantics
//!
//! Every node is a `rows × cols` matrix of f32 values.
//!
//! | node | value at `(i, j)` |
//! |------|-------------------|
//! | `W` | `\|W_ij\|` |
//! | `Wsigned` | `W_ij` |
//! | `X` | mean squared activation of channel `j`: `‖X_j‖₂² / tokens` (from the f32 norm) |
//! | `N` | `‖X_j‖₂ = sqrt(Σ x_j²)` |
//! | `A` | `max \|x_j\|` |
//! | `Var` | population variance of `x_j` |
//! | `G` | the host's gradient statistic `sqrt(Σ (100·∂L/∂W_ij)²)` (needs the gradient) |
//! | `H` | `[(H + λI)⁻¹]_jj`, the diagonal of the damped inverse input Hessian (WIT 0.2.0; `w²/H` is OBS's saliency) |
//! | `O` | `‖y_i‖₂`, the L2 norm of output row `i` of the dense layer over the calibration tokens (WIT 0.2.0) |
//! | `Const(c)` | `c` |
//! | `sqr(a)`, `neg(a)`, `abs(a)` | `a²`, `−a`, `\|a\|` |
//! | `log(a)` | `ln(\|a\| + 1e-3)` |
//! | `exp(a)` | `exp(min(a, 30))` |
//! | `sqrt(a)` | `sqrt(\|a\|)` |
//! | `tanh(a)` | `tanh(a)` |
//! | `mms(a)` | `(a − min a) / (max a − min a)` over the **whole layer**; 1 when `a` is constant |
//! | `zsn(a)` | `(a − mean a) / std a` over the **whole layer** (population std); 0 when constant |
//! | `rownorm(a)` | `a_ij / Σ_j' \|a_ij'\|` (0 for an all-zero row) |
//! | `colnorm(a)` | `a_ij / Σ_i' \|a_i'j\|` (0 for an all-zero column), as in RIA |
//! | `add`, `sub`, `mul` | `a + b`, `a − b`, `a · b` |
//! | `div(a, b)` | safe division `a / (\|b\| + 1e-8)` (elementwise; Pruner-Zero's `a / ‖b‖_F` is only a
//! per-layer scale, which an elementwise division can express with `b` constant) |
//!
//! Every node's result is clamped to `[−1e30, 1e30]` (NaN becomes `−1e30`), so every tree gives
//! finite scores on every layer: division by zero, empty or constant layers included. `exp`,
//! `ln` and `tanh` are computed by the shared arithmetic in `gp/ops.rs` (f64 polynomials over
//! IEEE basic operations) instead of the platform's libm, so the sandboxed plugin and
//! [`eval_native`] agree bitwise.
//!
//! # Whole-layer passes
//!
//! `mms`, `zsn` and `colnorm` need a statistic of their argument over the whole layer. A rendered
//! metric reads the layer once per nesting level of these operators ([`Expr::layer_passes`]): pass
//! `p` evaluates, row by row, the arguments of the level-`p` operators (whose own whole-layer
//! inputs were finished by earlier passes) and accumulates their statistics; the final
//! `score_rows` pass evaluates the whole tree. Nesting is therefore fully supported; the
//! generator bounds it with [`GpConfig::max_layer_passes`] because each level costs a read of
//! the layer. `rownorm` needs only its own row and costs no pass.
//!
//! # Cost
//!
//! [`fuel_estimate`] bounds the plugin's wasm fuel per weight from the tree (`exp`, `log`, `tanh`
//! cost ~10× an arithmetic node, and every pass re-evaluates the nodes below it);
//! [`GpConfig::max_fuel_per_weight`] keeps generated trees within half the sandbox's grant.

mod evolution;
mod expression;
#[cfg(test)]
mod fixtures;
/// The shared arithmetic, compiled into the host (and pasted into rendered candidates).
#[allow(dead_code)]
mod ops;
mod plan;
mod render;
mod simplify;

pub use crate::rng::SplitMix64 as Rng;
pub use evolution::{Gp, GpConfig};
pub use expression::{to_infix, BinOp, Expr, Num, UnOp, CONSTANTS};
pub use plan::{eval_layer, eval_native, fuel_estimate};
pub use render::render;
pub use simplify::{canonical_key, simplify, simplify_values};
