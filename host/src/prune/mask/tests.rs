//! Tests of mask building: counts, ties, pattern semantics, validation, hashing.

use super::*;
use crate::prune::testutil::Rng;

/// The reference semantics spelled out: stable ascending sort, first `k` pruned.
fn stable_lowest(values: &[f32], k: usize) -> Vec<bool> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[a].partial_cmp(&values[b]).unwrap());
    let mut pruned = vec![false; values.len()];
    for &i in &idx[..k] {
        pruned[i] = true;
    }
    pruned
}

fn pruned_flags(m: &Mask) -> Vec<bool> {
    m.to_keep().iter().map(|k| !k).collect()
}

/// Integer-valued scores in `lo..lo+span`: many ties, exact under 3x+1 and x³.
fn int_scores(rng: &mut Rng, n: usize, span: u64, lo: f32) -> Vec<f32> {
    (0..n).map(|_| rng.below(span) as f32 + lo).collect()
}

#[test]
fn per_row_counts_exact_and_equal_stable_sort() {
    let mut rng = Rng::new(1);
    let (rows, cols) = (37, 576);
    let continuous = rng.normals(rows * cols);
    let tied = int_scores(&mut rng, rows * cols, 7, -3.0);
    for scores in [&continuous, &tied] {
        for s in [0.0, 0.3, 0.5, 0.7, 0.99] {
            let m = Mask::from_scores(scores, rows, cols, Pattern::PerRow, s).unwrap();
            let k = prune_count(cols, s);
            let mut want = Vec::new();
            for r in 0..rows {
                assert_eq!(m.row_pruned_count(r), k, "row {r} at {s}");
                want.extend(stable_lowest(&scores[r * cols..(r + 1) * cols], k));
            }
            assert_eq!(pruned_flags(&m), want, "stable-sort semantics at {s}");
        }
    }
    // Wanda 70 % on 576 columns: floor(403.2) = 403 → 0.69965 (PROTOCOL's 0.6997).
    let m = Mask::from_scores(&continuous, rows, cols, Pattern::PerRow, 0.7).unwrap();
    assert_eq!(m.pruned_count(), rows * 403);
}

#[test]
fn n_m_ties_follow_torch_topk() {
    // Hand-run of libstdc++ nth_element(begin, begin + 1, end) on four equal values:
    // the median swap gives order [2, 1, 0, 3], the partition [2, 3, 0, 1]; the first two
    // (columns 2 and 3) are PyTorch's `topk(2, largest=False)`.
    let m = Mask::from_scores(&[1.0; 4], 1, 4, Pattern::n_m(2, 4), 0.0).unwrap();
    assert_eq!(pruned_flags(&m), vec![false, false, true, true]);
    // No ties: the two lowest, wherever they are.
    let m = Mask::from_scores(&[3.0, 1.0, 4.0, 2.0], 1, 4, Pattern::n_m(2, 4), 0.0).unwrap();
    assert_eq!(pruned_flags(&m), vec![false, true, false, true]);
}

#[test]
fn n_m_groups_exact_and_equal_stable_sort() {
    // (distinct values: no tie rule involved)
    let (rows, cols) = (9, 64);
    // Distinct scores: any correct selection equals the stable sort's.
    let tied: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919) % 1009) as f32)
        .collect();
    for (n, m) in [(2, 4), (4, 8), (1, 4), (0, 4), (4, 4)] {
        let mask = Mask::from_scores(&tied, rows, cols, Pattern::n_m(n, m), 0.0).unwrap();
        let flags = pruned_flags(&mask);
        for g in 0..rows * cols / m {
            let grp = &tied[g * m..(g + 1) * m];
            assert_eq!(
                &flags[g * m..(g + 1) * m],
                &stable_lowest(grp, n)[..],
                "{n}:{m} group {g}"
            );
        }
        assert_eq!(mask.pruned_count(), rows * cols / m * n);
    }
}

#[test]
fn n_m_shape_errors() {
    let s = vec![1.0; 2 * 10];
    for (n, m) in [(2, 4), (3, 2), (0, 0)] {
        assert_eq!(
            Mask::from_scores(&s, 2, 10, Pattern::n_m(n, m), 0.5),
            Err(MaskError::NMShape { n, m, cols: 10 })
        );
    }
}

#[test]
fn per_layer_threshold_ties_overshoot_hand_example() {
    // 2×4 scores; sorted = [1, 2, 2, 2, 3, 5, 6, 7].
    let s = [1.0, 2.0, 2.0, 3.0, 2.0, 5.0, 6.0, 7.0];
    // s = 0.25: k = floor(8·0.25) = 2, thresh = sorted[2] = 2, `<= 2` prunes 1,2,2,2.
    let m = Mask::from_scores(&s, 2, 4, Pattern::PerLayer, 0.25).unwrap();
    assert_eq!(
        pruned_flags(&m),
        [true, true, true, false, true, false, false, false]
    );
    assert_eq!(m.sparsity(), 0.5);
    // Exact variant: the 2 lowest by (score, flat index) = index 0 (1) and index 1 (2).
    let m = Mask::from_scores(&s, 2, 4, Pattern::PerLayerExact, 0.25).unwrap();
    assert_eq!(
        pruned_flags(&m),
        [true, true, false, false, false, false, false, false]
    );
    // No ties, s = 0.5: k = 4, thresh = sorted[4], so k + 1 = 5 are pruned (the
    // reference's slight overshoot, 0.500087 on a real model).
    let d = [8.0, 1.0, 4.0, 3.0, 6.0, 2.0, 7.0, 5.0];
    let m = Mask::from_scores(&d, 2, 4, Pattern::PerLayer, 0.5).unwrap();
    assert_eq!(
        pruned_flags(&m),
        [false, true, true, true, false, true, false, true]
    );
}

#[test]
fn per_layer_overshoot_beyond_ties_is_refused() {
    // All-equal scores: `<= t` prunes every weight of the layer.
    let s = vec![0.5f32; 64 * 64];
    let err = Mask::from_scores(&s, 64, 64, Pattern::PerLayer, 0.5).unwrap_err();
    let (expected, allowed) = (2049, 2049 + 205);
    assert_eq!(
        err,
        MaskError::Overshoot {
            expected,
            got: 4096,
            allowed,
            weights: 4096
        }
    );
    // A tie block just inside the limit passes: 256 ties at the threshold.
    let mut s: Vec<f32> = (0..4096).map(|i| i as f32).collect();
    s[1900..2156].fill(2000.0);
    s[2000] = 2000.0;
    let m = Mask::from_scores(&s, 64, 64, Pattern::PerLayer, 0.5).unwrap();
    assert!(m.pruned_count() <= allowed && m.pruned_count() > expected);
    // Row, N:M and exact patterns keep their exact counts whatever the ties.
    let s = vec![0.5f32; 64 * 64];
    for p in [Pattern::PerRow, Pattern::PerLayerExact, Pattern::n_m(2, 4)] {
        assert_eq!(
            Mask::from_scores(&s, 64, 64, p, 0.5)
                .unwrap()
                .pruned_count(),
            2048
        );
    }
}

#[test]
fn per_layer_exact_equals_flat_stable_sort() {
    let mut rng = Rng::new(3);
    let (rows, cols) = (23, 100);
    // About 11 ties per value: the threshold rule overshoots, within its limit.
    let tied = int_scores(&mut rng, rows * cols, 201, -100.0);
    for s in [0.1, 0.5, 0.77] {
        let m = Mask::from_scores(&tied, rows, cols, Pattern::PerLayerExact, s).unwrap();
        let k = prune_count(rows * cols, s);
        assert_eq!(pruned_flags(&m), stable_lowest(&tied, k), "at {s}");
        // The threshold rule prunes a superset (all ties at the threshold).
        let t = Mask::from_scores(&tied, rows, cols, Pattern::PerLayer, s).unwrap();
        assert!(t.pruned_count() > k);
        assert!(pruned_flags(&m)
            .iter()
            .zip(pruned_flags(&t))
            .all(|(e, t)| !e || t));
    }
}

#[test]
fn masks_invariant_under_monotone_transforms() {
    let mut rng = Rng::new(4);
    let (rows, cols) = (16, 128);
    let tied = int_scores(&mut rng, rows * cols, 50, -25.0);
    // Distinct, well separated values (k/1000, shuffled by the rng).
    let distinct: Vec<f32> = (0..rows * cols)
        .map(|i| ((i as u64 * 7919) % 4001) as f32 / 1000.0 - 2.0)
        .collect();
    type Transform = (&'static str, fn(f32) -> f32);
    let transforms: [Transform; 3] = [
        ("3x+1", |x| 3.0 * x + 1.0),
        ("exp", f32::exp),
        ("x^3", |x| x * x * x),
    ];
    let patterns = [
        Pattern::PerRow,
        Pattern::PerLayer,
        Pattern::PerLayerExact,
        Pattern::n_m(2, 4),
        Pattern::n_m(4, 8),
    ];
    for scores in [&tied, &distinct] {
        for p in patterns {
            let base = Mask::from_scores(scores, rows, cols, p, 0.6).unwrap();
            for (name, f) in transforms {
                let t: Vec<f32> = scores.iter().map(|&x| f(x)).collect();
                let m = Mask::from_scores(&t, rows, cols, p, 0.6).unwrap();
                assert_eq!(m, base, "{p} under {name}");
                assert_eq!(m.digest(), base.digest());
            }
        }
    }
}

#[test]
fn ties_break_deterministically() {
    let (rows, cols) = (3, 8);
    let flat = vec![0.5f32; rows * cols];
    let row = Mask::from_scores(&flat, rows, cols, Pattern::PerRow, 0.5).unwrap();
    let nm = Mask::from_scores(&flat, rows, cols, Pattern::n_m(2, 4), 0.0).unwrap();
    let exact = Mask::from_scores(&flat, rows, cols, Pattern::PerLayerExact, 0.5).unwrap();
    for r in 0..rows {
        for c in 0..cols {
            assert_eq!(row.is_kept(r, c), c >= 4);
            // N:M follows PyTorch's topk on ties (see `n_m_ties_follow_torch_topk`).
            assert_eq!(nm.is_kept(r, c), c % 4 < 2);
            assert_eq!(exact.is_kept(r, c), r * cols + c >= 12);
        }
    }
    // The threshold rule would prune every tie, all of them: refused with a verdict.
    let layer = Mask::from_scores(&flat, rows, cols, Pattern::PerLayer, 0.5);
    assert!(
        matches!(layer, Err(MaskError::Overshoot { got: 24, .. })),
        "{layer:?}"
    );
    // −0.0 ties with +0.0 (IEEE, like torch.sort): the lower index goes first.
    let z = [0.0, -0.0, 1.0, 2.0];
    let m = Mask::from_scores(&z, 1, 4, Pattern::PerRow, 0.25).unwrap();
    assert_eq!(pruned_flags(&m), [true, false, false, false]);
    let z = [-0.0, 0.0, 1.0, 2.0];
    let m = Mask::from_scores(&z, 1, 4, Pattern::PerRow, 0.25).unwrap();
    assert_eq!(pruned_flags(&m), [true, false, false, false]);
    // Same input, same mask, run after run (rayon scheduling must not matter).
    let mut rng = Rng::new(5);
    let s = int_scores(&mut rng, 64 * 640, 4, 0.0);
    let a = Mask::from_scores(&s, 64, 640, Pattern::PerLayerExact, 0.5).unwrap();
    for _ in 0..3 {
        let b = Mask::from_scores(&s, 64, 640, Pattern::PerLayerExact, 0.5).unwrap();
        assert_eq!(a.digest(), b.digest());
    }
}

#[test]
fn bad_scores_rejected() {
    let mut s = vec![1.0f32; 4 * 5];
    s[13] = f32::NAN;
    s[17] = f32::INFINITY;
    match Mask::from_scores(&s, 4, 5, Pattern::PerRow, 0.5) {
        Err(MaskError::NonFinite {
            index: 13,
            row: 2,
            col: 3,
            value,
        }) => assert!(value.is_nan()),
        other => panic!("{other:?}"),
    }
    s[13] = 0.0;
    s[2] = f32::NEG_INFINITY;
    assert_eq!(
        Mask::from_scores(&s, 4, 5, Pattern::PerLayer, 0.5),
        Err(MaskError::NonFinite {
            index: 2,
            row: 0,
            col: 2,
            value: f32::NEG_INFINITY
        })
    );
    assert_eq!(
        Mask::from_scores(&s[..19], 4, 5, Pattern::PerRow, 0.5),
        Err(MaskError::Length {
            what: "scores",
            got: 19,
            rows: 4,
            cols: 5
        })
    );
    let ok = vec![1.0f32; 20];
    for bad in [1.0, 1.5, -0.1, f64::NAN] {
        let e = Mask::from_scores(&ok, 4, 5, Pattern::PerRow, bad).unwrap_err();
        assert!(matches!(e, MaskError::Sparsity(_)), "{bad}: {e}");
    }
    assert_eq!(
        Mask::from_scores(&[], 0, 5, Pattern::PerRow, 0.5),
        Err(MaskError::EmptyLayer { rows: 0, cols: 5 })
    );
    // Huge but finite values are fine.
    let big = [f32::MAX, f32::MIN, f32::MIN_POSITIVE, 0.0];
    assert!(Mask::from_scores(&big, 1, 4, Pattern::PerRow, 0.5).is_ok());
}

#[test]
fn apply_zeroes_pruned_and_checks_length() {
    let s = [3.0, 1.0, 2.0, 0.5, 9.0, 8.0];
    let m = Mask::from_scores(&s, 2, 3, Pattern::PerRow, 0.34).unwrap(); // 1 per row
    let mut w = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    m.apply(&mut w).unwrap();
    assert_eq!(w, [1.0, 0.0, 3.0, 0.0, 5.0, 6.0]);
    assert_eq!(m.pruned_count(), 2);
    assert!((m.sparsity() - 1.0 / 3.0).abs() < 1e-12);
    assert!(matches!(
        m.apply(&mut [0.0; 5]),
        Err(MaskError::Length { .. })
    ));
    // Across word boundaries (cols > 64, not a multiple of 64).
    let mut rng = Rng::new(6);
    let (rows, cols) = (5, 150);
    let sc = rng.normals(rows * cols);
    let m = Mask::from_scores(&sc, rows, cols, Pattern::PerRow, 0.5).unwrap();
    let mut w = vec![1.0f32; rows * cols];
    m.apply(&mut w).unwrap();
    let keep = m.to_keep();
    assert!(w.iter().zip(&keep).all(|(&w, &k)| (w == 1.0) == k));
    assert_eq!(Mask::from_keep(rows, cols, &keep).unwrap(), m);
}

#[test]
fn digest_is_stable_and_separates_masks() {
    let dense = Mask::dense(3, 70);
    assert_eq!(dense, Mask::from_keep(3, 70, &[true; 210]).unwrap());
    assert_eq!(dense.pruned_count(), 0);
    let mut keep = [true; 210];
    keep[69] = false;
    let one = Mask::from_keep(3, 70, &keep).unwrap();
    assert_ne!(one.digest(), dense.digest());
    // Same bits, different shape → different digest.
    assert_ne!(Mask::dense(70, 3).digest(), dense.digest());
    // Pinned: the hash is a persistent dedup key; changing it orphans archives.
    assert_eq!(format!("{:016x}", dense.hash64()), PINNED_DENSE_3X70);
}
// = sha256(b"autoprune-mask-v1\0" ‖ le64(3) ‖ le64(70) ‖ 3 × (le64(!0) ‖ le64(0x3f)))[..8] as LE u64,
// cross-checked with Python hashlib.
const PINNED_DENSE_3X70: &str = "c76c6025021810b2";

#[test]
fn pattern_parse_display_serde() {
    for (s, p) in [
        ("row", Pattern::PerRow),
        ("layer", Pattern::PerLayer),
        ("layer-exact", Pattern::PerLayerExact),
        ("2:4", Pattern::n_m(2, 4)),
        ("4:8", Pattern::n_m(4, 8)),
        (
            "2:4p",
            Pattern::NM {
                n: 2,
                m: 4,
                permute: true,
            },
        ),
    ] {
        assert_eq!(s.parse::<Pattern>(), Ok(p));
        assert_eq!(p.to_string(), s);
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(j, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<Pattern>(&j).unwrap(), p);
    }
    assert_eq!(" Per-Row ".parse::<Pattern>(), Ok(Pattern::PerRow));
    assert_eq!(
        "2:4perm".parse::<Pattern>(),
        Ok(Pattern::NM {
            n: 2,
            m: 4,
            permute: true
        })
    );
    assert_eq!(Pattern::default(), Pattern::PerRow);
    assert!(matches!(
        "column".parse::<Pattern>(),
        Err(ParsePatternError::Unknown(_))
    ));
    assert!(matches!(
        "a:4".parse::<Pattern>(),
        Err(ParsePatternError::NotNumbers(_))
    ));
    assert_eq!(
        "5:4".parse::<Pattern>(),
        Err(ParsePatternError::Invalid { n: 5, m: 4 })
    );
    assert_eq!(
        "0:0".parse::<Pattern>(),
        Err(ParsePatternError::Invalid { n: 0, m: 0 })
    );
    assert!(serde_json::from_str::<Pattern>("\"3:2\"").is_err());
}

#[test]
fn sparsity_counts_follow_python_floats() {
    assert_eq!(prune_count(10, 0.7), 7); // int(10 * 0.7) == 7 in Python
    assert_eq!(prune_count(10, 0.7f32 as f64), 6); // the trap
    assert_eq!(sparsity_from_f32(0.7), 0.7);
    assert_eq!(prune_count(10, sparsity_from_f32(0.7)), 7);
    assert_eq!(prune_count(576, 0.7), 403);
    assert_eq!(prune_count(576 * 576, 0.5), 165_888);
}

#[test]
fn permuted_n_m_keeps_more_score_with_exact_groups() {
    // Random non-negative scores with a few dominant input channels, as activations give.
    let (rows, cols) = (48, 64);
    let mut rng = Rng::new(11);
    let scale: Vec<f32> = (0..cols)
        .map(|c| if c % 8 < 2 { 8.0 } else { 1.0 })
        .collect();
    let scores: Vec<f32> = rng
        .normals(rows * cols)
        .iter()
        .enumerate()
        .map(|(i, x)| x.abs() * scale[i % cols])
        .collect();
    let plain = Mask::from_scores(&scores, rows, cols, "2:4".parse().unwrap(), 0.0).unwrap();
    let perm = Mask::from_scores(&scores, rows, cols, "2:4p".parse().unwrap(), 0.0).unwrap();
    assert_eq!(perm.pruned_count(), rows * cols / 2);
    let kept = |m: &Mask| -> f64 {
        (0..rows * cols)
            .filter(|&i| m.is_kept(i / cols, i % cols))
            .map(|i| scores[i] as f64)
            .sum()
    };
    assert!(
        kept(&perm) > kept(&plain),
        "{} vs {}",
        kept(&perm),
        kept(&plain)
    );
    // The groups are those of the permutation: n of every m pruned in each row.
    let order = permute::channel_permutation(&scores, rows, cols, 2, 4);
    for r in 0..rows {
        for g in order.chunks(4) {
            assert_eq!(g.iter().filter(|&&c| !perm.is_kept(r, c)).count(), 2);
        }
    }
    // In natural order the dominant channels 0, 1 share a group; permuted, they do not.
    let group_of = |c: usize| order.iter().position(|&x| x == c).unwrap() / 4;
    assert_ne!(group_of(0), group_of(1));
}

#[test]
fn differing_counts_the_weights_one_mask_keeps_and_the_other_prunes() {
    // 3 × 70: two words per row, padding bits included.
    let mut rng = Rng::new(41);
    let (rows, cols) = (3, 70);
    let a: Vec<bool> = (0..rows * cols).map(|_| rng.below(2) == 0).collect();
    let mut b = a.clone();
    for i in [0, 63, 64, 69, 140, 209] {
        b[i] = !b[i];
    }
    let (ma, mb) = (
        Mask::from_keep(rows, cols, &a).unwrap(),
        Mask::from_keep(rows, cols, &b).unwrap(),
    );
    assert_eq!(ma.differing(&mb), Some(6));
    assert_eq!(ma.differing(&ma), Some(0));
    assert_eq!(ma.differing(&Mask::dense(cols, rows)), None);
}
