//! Tests of SparseGPT: the OBS pruning loop against references (the Hessian and its factor
//! are tested in `calib::hessian`).

use super::*;
use crate::calib::hessian::factor_tests::{hessian_of, inputs};
use crate::prune::mask::Pattern;
use crate::rng::SplitMix64 as Rng;

/// `||(W − Ŵ) Xᵀ||²`: the layer's output error on the calibration inputs.
fn recon_error(w: &[f32], w_hat: &[f32], x: &[f32], rows: usize, cols: usize) -> f64 {
    let tokens = x.len() / cols;
    let mut e = 0.0f64;
    for r in 0..rows {
        for t in 0..tokens {
            let d: f64 = (0..cols)
                .map(|j| (w[r * cols + j] - w_hat[r * cols + j]) as f64 * x[t * cols + j] as f64)
                .sum();
            e += d * d;
        }
    }
    e
}

/// A literal, column-by-column port of the reference `fasterprune` loop (given `U`).
fn naive_fasterprune(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    u: &[f32],
    cfg: &SparseGptConfig,
) -> Vec<bool> {
    let mut mask = vec![false; rows * cols];
    for i1 in (0..cols).step_by(cfg.blocksize) {
        let i2 = (i1 + cfg.blocksize).min(cols);
        let count = i2 - i1;
        let mut w1: Vec<f32> = (0..rows)
            .flat_map(|r| w[r * cols + i1..r * cols + i2].to_vec())
            .collect();
        let mut err1 = vec![0.0f32; rows * count];
        let dg = |c: usize| u[(i1 + c) * cols + i1 + c];
        let mut m1 = vec![false; rows * count];
        if cfg.prune_n == 0 {
            let tmp: Vec<f32> = (0..rows * count)
                .map(|k| w1[k] * w1[k] / (dg(k % count) * dg(k % count)))
                .collect();
            let mut sorted = tmp.clone();
            sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let thresh = sorted[(tmp.len() as f64 * cfg.sparsity) as usize];
            for k in 0..tmp.len() {
                m1[k] = tmp[k] <= thresh;
            }
        }
        for i in 0..count {
            if cfg.prune_n != 0 && i % cfg.prune_m == 0 {
                for r in 0..rows {
                    let mut idx: Vec<usize> = (i..i + cfg.prune_m).collect();
                    let t = |c: usize| w1[r * count + c] * w1[r * count + c] / (dg(c) * dg(c));
                    idx.sort_by(|&a, &b| t(a).partial_cmp(&t(b)).unwrap());
                    for &c in &idx[..cfg.prune_n] {
                        m1[r * count + c] = true;
                    }
                }
            }
            for r in 0..rows {
                let wv = w1[r * count + i];
                let q = if m1[r * count + i] { 0.0 } else { wv };
                let e = (wv - q) / dg(i);
                for j in i..count {
                    w1[r * count + j] -= e * u[(i1 + i) * cols + i1 + j];
                }
                w1[r * count + i] = q;
                err1[r * count + i] = e;
            }
        }
        for r in 0..rows {
            for c in 0..count {
                w[r * cols + i1 + c] = w1[r * count + c];
                mask[r * cols + i1 + c] = m1[r * count + c];
            }
            for j in i2..cols {
                let s: f64 = (0..count)
                    .map(|k| err1[r * count + k] as f64 * u[(i1 + k) * cols + j] as f64)
                    .sum();
                w[r * cols + j] -= s as f32;
            }
        }
    }
    mask
}

#[test]
fn not_positive_definite_is_a_typed_error() {
    let h = HessianAccumulator::from_matrix(2, vec![1.0, 2.0, 2.0, 1.0], 1).unwrap();
    let mut w = vec![1.0f32; 4];
    let r = fasterprune(
        &mut w,
        2,
        2,
        &h,
        &SparseGptConfig {
            percdamp: 0.0,
            ..Default::default()
        },
    );
    assert!(matches!(
        r,
        Err(SparseGptError::Hessian(
            LinalgError::NotPositiveDefinite { .. }
        ))
    ));
}

/// Unstructured 50 % and 70 % and N:M 2:4 and 4:8, with blocks of 16, 32 and 128 columns.
pub(super) fn configs() -> Vec<SparseGptConfig> {
    vec![
        SparseGptConfig {
            blocksize: 32,
            ..SparseGptConfig::unstructured(0.5)
        },
        SparseGptConfig {
            blocksize: 16,
            ..SparseGptConfig::unstructured(0.7)
        },
        SparseGptConfig::unstructured(0.5),
        SparseGptConfig {
            blocksize: 32,
            ..SparseGptConfig::n_m(2, 4)
        },
        SparseGptConfig::n_m(4, 8),
    ]
}

#[test]
fn fasterprune_matches_literal_port() {
    let mut rng = Rng::new(12);
    let (rows, cols) = (19, 64);
    let x = inputs(&mut rng, 256, cols);
    let h = hessian_of(&x, cols, 8);
    let w0 = rng.normals(rows * cols);
    let f = HessianFactor::new(&h, 0.01).unwrap();
    for cfg in configs() {
        let mut w = w0.clone();
        let stats = prune_with_factor(&mut w, rows, cols, &f, &cfg).unwrap();
        let mut w_ref = w0.clone();
        let m_ref = naive_fasterprune(&mut w_ref, rows, cols, f.upper(), &cfg);
        assert_eq!(
            stats.mask.to_keep(),
            m_ref.iter().map(|p| !p).collect::<Vec<_>>(),
            "{cfg:?}"
        );
        for (k, (a, b)) in w.iter().zip(&w_ref).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{cfg:?} weight {k}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn achieved_sparsity_and_exact_n_m_groups() {
    let mut rng = Rng::new(13);
    let (rows, cols) = (16, 64);
    let x = inputs(&mut rng, 256, cols);
    let h = hessian_of(&x, cols, 4);
    let w0 = rng.normals(rows * cols);
    for s in [0.5, 0.7] {
        let mut w = w0.clone();
        let cfg = SparseGptConfig {
            blocksize: 32,
            ..SparseGptConfig::unstructured(s)
        };
        let st = fasterprune(&mut w, rows, cols, &h, &cfg).unwrap();
        // Per 32-column block: `<= sorted[floor(512·s)]` prunes floor(512·s) + 1 (no ties).
        let per_block = prune_count(rows * 32, s) + 1;
        assert_eq!(st.pruned, 2 * per_block, "at {s}");
        for b in 0..2 {
            let n: usize = (0..rows)
                .flat_map(|r| (b * 32..b * 32 + 32).map(move |c| (r, c)))
                .filter(|&(r, c)| !st.mask.is_kept(r, c))
                .count();
            assert_eq!(n, per_block);
        }
        assert!(st.zeros >= st.pruned && st.loss > 0.0);
        let keep = st.mask.to_keep();
        assert!(w.iter().zip(&keep).all(|(v, k)| *k || *v == 0.0));
    }
    for (n, m) in [(2, 4), (4, 8)] {
        let mut w = w0.clone();
        let st = fasterprune(&mut w, rows, cols, &h, &SparseGptConfig::n_m(n, m)).unwrap();
        for r in 0..rows {
            for g in 0..cols / m {
                let z = (g * m..(g + 1) * m)
                    .filter(|&c| !st.mask.is_kept(r, c))
                    .count();
                assert_eq!(z, n, "{n}:{m} row {r} group {g}");
            }
        }
        assert_eq!(st.sparsity, n as f64 / m as f64);
    }
}

#[test]
fn update_beats_magnitude_and_mask_only_on_reconstruction() {
    let mut rng = Rng::new(14);
    let (rows, cols) = (16, 64);
    let x = inputs(&mut rng, 256, cols);
    let h = hessian_of(&x, cols, 8);
    let w0 = rng.normals(rows * cols);
    for cfg in [
        SparseGptConfig::unstructured(0.5),
        SparseGptConfig::n_m(2, 4),
    ] {
        let mut w = w0.clone();
        let st = fasterprune(&mut w, rows, cols, &h, &cfg).unwrap();
        let sgpt = recon_error(&w0, &w, &x, rows, cols);
        // Its own mask, no update.
        let mut masked = w0.clone();
        st.mask.apply(&mut masked).unwrap();
        let mask_only = recon_error(&w0, &masked, &x, rows, cols);
        // Magnitude at the same sparsity (same pattern for N:M).
        let mag_scores: Vec<f32> = w0.iter().map(|v| v.abs()).collect();
        let (pattern, s) = match cfg.prune_n {
            0 => (Pattern::PerLayerExact, st.sparsity),
            n => (Pattern::n_m(n, cfg.prune_m), 0.0),
        };
        let mag = Mask::from_scores(&mag_scores, rows, cols, pattern, s).unwrap();
        let mut wm = w0.clone();
        mag.apply(&mut wm).unwrap();
        let magnitude = recon_error(&w0, &wm, &x, rows, cols);
        assert!(
            sgpt < mask_only && sgpt < magnitude,
            "{cfg:?}: sgpt {sgpt} mask-only {mask_only} magnitude {magnitude}"
        );
        assert!(
            sgpt < 0.8 * magnitude,
            "{cfg:?}: update should help clearly: {sgpt} vs {magnitude}"
        );
    }
}

#[test]
fn dead_columns_are_zeroed() {
    let mut rng = Rng::new(15);
    let (rows, cols) = (8, 32);
    let mut x = inputs(&mut rng, 128, cols);
    for t in 0..128 {
        x[t * cols + 3] = 0.0;
    }
    let h = hessian_of(&x, cols, 2);
    let mut w = rng.normals(rows * cols);
    let st = fasterprune(&mut w, rows, cols, &h, &SparseGptConfig::unstructured(0.5)).unwrap();
    assert_eq!(st.dead_columns, 1);
    assert!((0..rows).all(|r| w[r * cols + 3] == 0.0));
}

#[test]
fn shared_factor_equals_fasterprune() {
    let mut rng = Rng::new(16);
    let (rows, cols) = (8, 48);
    let x = inputs(&mut rng, 96, cols);
    let h = hessian_of(&x, cols, 3);
    let w0 = rng.normals(rows * cols);
    let cfg = SparseGptConfig {
        blocksize: 16,
        ..SparseGptConfig::unstructured(0.6)
    };
    let (mut a, mut b) = (w0.clone(), w0.clone());
    let sa = fasterprune(&mut a, rows, cols, &h, &cfg).unwrap();
    let f = HessianFactor::new(&h, cfg.percdamp).unwrap();
    let sb = prune_with_factor(&mut b, rows, cols, &f, &cfg).unwrap();
    assert_eq!(a, b);
    assert_eq!(sa.mask, sb.mask);
    // Sparsity 0 prunes nothing (documented deviation) and leaves weights alone.
    let mut c = w0.clone();
    let s0 =
        prune_with_factor(&mut c, rows, cols, &f, &SparseGptConfig::unstructured(0.0)).unwrap();
    assert_eq!((s0.pruned, c), (0, w0));
}

#[test]
fn bad_settings_and_shapes_are_typed_errors() {
    let h = HessianAccumulator::from_matrix(
        8,
        (0..64)
            .map(|k| if k % 9 == 0 { 1.0 } else { 0.0 })
            .collect(),
        1,
    )
    .unwrap();
    let mut w = vec![1.0f32; 16];
    let run =
        |w: &mut [f32], rows, cols, cfg: SparseGptConfig| fasterprune(w, rows, cols, &h, &cfg);
    assert!(matches!(
        run(&mut w, 2, 8, SparseGptConfig::unstructured(1.0)),
        Err(SparseGptError::Sparsity(_))
    ));
    assert!(matches!(
        run(&mut w, 2, 8, SparseGptConfig::n_m(3, 2)),
        Err(SparseGptError::NMShape { .. })
    ));
    assert!(matches!(
        run(&mut w, 2, 8, SparseGptConfig::n_m(2, 3)),
        Err(SparseGptError::NMShape { .. })
    ));
    let odd_block = SparseGptConfig {
        blocksize: 6,
        ..SparseGptConfig::n_m(2, 4)
    };
    assert!(matches!(
        run(&mut w, 2, 8, odd_block),
        Err(SparseGptError::NMShape { .. })
    ));
    let zero_block = SparseGptConfig {
        blocksize: 0,
        ..Default::default()
    };
    assert!(matches!(
        run(&mut w, 2, 8, zero_block),
        Err(SparseGptError::BlockSize)
    ));
    let bad_damp = SparseGptConfig {
        percdamp: -1.0,
        ..Default::default()
    };
    assert!(matches!(
        run(&mut w, 2, 8, bad_damp),
        Err(SparseGptError::Damp(_))
    ));
    assert!(matches!(
        run(&mut w[..15], 2, 8, Default::default()),
        Err(SparseGptError::Hessian(LinalgError::Shape { .. }))
    ));
    assert!(matches!(
        run(&mut w, 4, 4, Default::default()),
        Err(SparseGptError::Hessian(LinalgError::Shape { .. }))
    ));
    w[5] = f32::INFINITY;
    assert!(matches!(
        run(&mut w, 2, 8, Default::default()),
        Err(SparseGptError::Hessian(LinalgError::NonFinite {
            index: 5,
            ..
        }))
    ));
}
