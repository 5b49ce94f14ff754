//! Tests of SparseGPT's Hessian: accumulation, the tiled Gram matrix, the factorisation
//! against the reference's composition.

use super::accumulator::gram_lower;
use super::linalg::{cholesky_lower, invert_lower};
use super::{HessianAccumulator, HessianFactor, LinalgError};
use crate::rng::SplitMix64 as Rng;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0)
}

/// Naive f64 Cholesky (lower), the textbook triple loop.
fn naive_chol(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            l[i * n + j] = if i == j {
                (a[i * n + i] - s).sqrt()
            } else {
                (a[i * n + j] - s) / l[j * n + j]
            };
        }
    }
    l
}

/// The reference's composition spelled out: `cholesky(cholesky_inverse(cholesky(H)), upper=True)`.
fn naive_upper_of_inverse(h: &[f64], n: usize) -> Vec<f64> {
    let l = naive_chol(h, n);
    // L⁻¹ by forward substitution, then H⁻¹ = L⁻ᵀ L⁻¹.
    let mut li = vec![0.0; n * n];
    for c in 0..n {
        for i in c..n {
            let s: f64 = (c..i).map(|p| l[i * n + p] * li[p * n + c]).sum();
            li[i * n + c] = (if i == c { 1.0 } else { 0.0 } - s) / l[i * n + i];
        }
    }
    let mut inv = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            inv[i * n + j] = (0..n).map(|k| li[k * n + i] * li[k * n + j]).sum();
        }
    }
    // Upper factor U = Lᵀ of the lower factor of H⁻¹.
    let l2 = naive_chol(&inv, n);
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = l2[j * n + i];
        }
    }
    u
}

/// Inputs with correlated, unevenly scaled channels: X = Z·A·diag(scale).
pub(crate) fn inputs(rng: &mut Rng, tokens: usize, cols: usize) -> Vec<f32> {
    let z = rng.normals(tokens * cols);
    let a: Vec<f32> = (0..cols * cols)
        .map(|i| {
            if i / cols == i % cols {
                1.0
            } else {
                0.3 * rng.normal() as f32 / (cols as f32).sqrt()
            }
        })
        .collect();
    let scale: Vec<f32> = (0..cols)
        .map(|_| (rng.normal() * 0.7).exp() as f32)
        .collect();
    let mut x = vec![0.0f32; tokens * cols];
    for t in 0..tokens {
        for j in 0..cols {
            let s: f32 = (0..cols).map(|k| z[t * cols + k] * a[k * cols + j]).sum();
            x[t * cols + j] = s * scale[j];
        }
    }
    x
}

pub(crate) fn hessian_of(x: &[f32], cols: usize, batches: usize) -> HessianAccumulator {
    let mut h = HessianAccumulator::new(cols);
    let per = x.len() / batches;
    for b in x.chunks(per) {
        h.add_batch(b, 1).unwrap();
    }
    h
}

#[test]
fn hessian_running_average_matches_closed_form() {
    let mut h = HessianAccumulator::new(2);
    h.add_batch(&[1.0, 2.0, 3.0, 4.0], 1).unwrap();
    // After one sample: 2/1 · (x1 x1ᵀ + x2 x2ᵀ) = 2 · [[10, 14], [14, 20]].
    assert_eq!(h.to_matrix(), [20.0, 28.0, 28.0, 40.0]);
    h.add_batch(&[0.0, 1.0], 2).unwrap();
    // N = 3: H = 2/3 · Σ x xᵀ = 2/3 · [[10, 14], [14, 21]].
    let want = [20.0 / 3.0, 28.0 / 3.0, 28.0 / 3.0, 14.0];
    assert!(
        h.to_matrix()
            .iter()
            .zip(want)
            .all(|(a, b)| close(*a, b, 1e-12)),
        "{:?}",
        h.to_matrix()
    );
    assert_eq!(h.nsamples(), 3);
    assert!(matches!(
        h.add_batch(&[1.0], 1),
        Err(LinalgError::Shape { .. })
    ));
    assert!(matches!(
        h.add_batch(&[1.0, 2.0], 0),
        Err(LinalgError::ZeroSamples)
    ));
    assert!(matches!(
        h.add_batch(&[1.0, f32::NAN], 1),
        Err(LinalgError::NonFinite {
            what: "inputs",
            index: 1,
            ..
        })
    ));
}

#[test]
fn one_call_equals_many_batches() {
    let mut rng = Rng::new(9);
    let cols = 40;
    let x = rng.normals(8 * 16 * cols);
    let many = hessian_of(&x, cols, 8);
    let mut one = HessianAccumulator::new(cols);
    one.add_batch(&x, 8).unwrap();
    assert_eq!(one.nsamples(), many.nsamples());
    for (a, b) in one.to_matrix().iter().zip(many.to_matrix()) {
        assert!(close(*a, b, 1e-5), "{a} vs {b}");
    }
}

#[test]
fn tiled_gram_matches_naive_lower_triangle() {
    // 1100 columns → 3 tiles of 367: off-diagonal tiles and a ragged last tile.
    let mut rng = Rng::new(10);
    let (tokens, cols) = (24, 1100);
    let x = rng.normals(tokens * cols);
    let g = gram_lower(&x, tokens, cols).unwrap();
    for i in (0..cols).step_by(7) {
        for j in (0..=i).step_by(5) {
            let want: f64 = (0..tokens)
                .map(|t| x[t * cols + i] as f64 * x[t * cols + j] as f64)
                .sum();
            assert!(close(g[i * cols + j] as f64, want, 1e-4), "({i},{j})");
        }
    }
    let mut h = HessianAccumulator::new(cols);
    h.add_batch(&x, 1).unwrap();
    let m = h.to_matrix();
    assert_eq!(m[3 * cols + 1000], m[1000 * cols + 3]);
    assert!(close(
        m[1000 * cols + 3],
        2.0 * g[1000 * cols + 3] as f64,
        1e-12
    ));
}

#[test]
fn factor_matches_hand_3x3() {
    // Cholesky: [[4,2,2],[2,5,3],[2,3,6]] = L Lᵀ with L = [[2,0,0],[1,2,0],[1,1,2]].
    let mut a = vec![4.0, 2.0, 2.0, 2.0, 5.0, 3.0, 2.0, 3.0, 6.0];
    cholesky_lower(&mut a, 3).unwrap();
    let lower: Vec<f64> = (0..9)
        .map(|k| if k % 3 <= k / 3 { a[k] } else { 0.0 })
        .collect();
    assert_eq!(lower, [2.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0, 2.0]);
    // L⁻¹ row by row: [1/2], [-1/4, 1/2], [-(1/2 - 1/4)/2 = -1/8, -1/4, 1/2].
    let inv = invert_lower(&lower, 3).unwrap();
    assert_eq!(inv, [0.5, 0.0, 0.0, -0.25, 0.5, 0.0, -0.125, -0.25, 0.5]);
    // Built backwards: U = [[1,1,0],[0,1,1],[0,0,1]] has U⁻¹ = [[1,-1,1],[0,1,-1],[0,0,1]],
    // and H = (UᵀU)⁻¹ = U⁻¹U⁻ᵀ = [[3,-2,1],[-2,2,-1],[1,-1,1]] (rows of U⁻¹ dotted).
    let h = vec![3.0, -2.0, 1.0, -2.0, 2.0, -1.0, 1.0, -1.0, 1.0];
    let f = HessianFactor::new(
        &HessianAccumulator::from_matrix(3, h.clone(), 1).unwrap(),
        0.0,
    )
    .unwrap();
    let want = [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0];
    assert!(
        f.upper()
            .iter()
            .zip(want)
            .all(|(a, b)| (a - b).abs() < 1e-6),
        "{:?}",
        f.upper()
    );
    // Damping: 0.01 · mean(3, 2, 1) = 0.02 on the diagonal.
    let f = HessianFactor::new(&HessianAccumulator::from_matrix(3, h, 1).unwrap(), 0.01).unwrap();
    assert!(close(f.damp(), 0.02, 1e-15));
    // Dead column: H[1,1] = 0 → 1 (then damped), flagged.
    let h = vec![2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0];
    let f = HessianFactor::new(&HessianAccumulator::from_matrix(3, h, 1).unwrap(), 0.0).unwrap();
    assert_eq!(f.dead_columns(), [false, true, false]);
    // Diagonal H: U = diag(1/sqrt(h_ii)).
    assert!(
        close(f.upper()[0] as f64, 0.5f64.sqrt(), 1e-7)
            && f.upper()[4] == 1.0
            && f.upper()[8] == 0.5
    );
}

#[test]
fn factor_matches_reference_composition_on_random_spd() {
    let mut rng = Rng::new(11);
    for n in [5, 150, 300] {
        let x = inputs(&mut rng, 2 * n, n);
        let h = hessian_of(&x, n, 2);
        let f = HessianFactor::new(&h, 0.01).unwrap();
        let mut damped = h.to_matrix();
        for i in 0..n {
            damped[i * n + i] += f.damp();
        }
        let want = naive_upper_of_inverse(&damped, n);
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (k, (&g, &w)) in f.upper().iter().zip(&want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * scale,
                "n={n} entry {k}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn not_positive_definite_is_a_typed_error() {
    let h = HessianAccumulator::from_matrix(2, vec![1.0, 2.0, 2.0, 1.0], 1).unwrap();
    assert!(matches!(
        HessianFactor::new(&h, 0.0),
        Err(LinalgError::NotPositiveDefinite { .. })
    ));
    assert!(matches!(
        HessianFactor::new(&HessianAccumulator::new(2), 0.01),
        Err(LinalgError::EmptyHessian)
    ));
    assert!(matches!(
        HessianAccumulator::from_matrix(2, vec![1.0; 3], 1),
        Err(LinalgError::Shape { .. })
    ));
}
