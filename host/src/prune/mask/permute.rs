//! Input-channel permutation for N:M masks (RIA's "channel permutation", Zhang et al. 2024).
//!
//! An N:M kernel prunes `n` of every `m` *consecutive* inputs of a row. Which inputs share a
//! group is free if the layer's input columns are permuted (the weight's columns and the
//! activations' features together, which leaves the product unchanged): a permutation that
//! puts important channels in different groups lets every row keep more of its score. The host
//! chooses one permutation per layer from the scores alone, so it works with any metric:
//!
//! 1. **Allocation**: columns sorted by their total score (descending) are dealt round-robin to
//!    the `cols/m` groups, so each group gets one column from each importance tier.
//! 2. **Refinement**: for each position `t` in `0..m` in turn, the column at position `t` of
//!    every group is taken out and the columns are reassigned to the groups by a linear-sum
//!    assignment (Hungarian algorithm) that maximises the total kept score given the groups'
//!    other `m − 1` columns. Each step is optimal given the rest (up to the f32 sums of its
//!    costs), so the kept score does not fall; rounds repeat while one gains at least 0.01 %
//!    (at most [`ROUNDS`]).
//!
//! The objective is the sum over rows of the scores the mask keeps, as in RIA; it is the right
//! objective for non-negative scores (every built-in metric's). The identity permutation is
//! kept when nothing beats it. An exact assignment costs `O(groups³ + groups²·rows)` per
//! position, so layers with more than [`ASSIGN_BLOCK`] groups are reassigned within blocks of
//! that many groups (independent, in parallel), the blocks shifted by half a block each round.
//!
//! The mask is built in the permuted order and mapped back: pruned weights are zeros at their
//! original positions, so evaluation is exactly that of the permuted model. A deployment on a
//! 2:4 kernel needs the permutation too (gather the inputs in that order); see
//! [`super::Mask::from_scores`].

use rayon::prelude::*;

/// Refinement rounds (each visits the `m` positions once) at most.
pub const ROUNDS: usize = 3;

/// Groups per exact assignment: a layer with more groups is solved in blocks of this many
/// (`O(block³)` each), the blocks shifted by half a block between rounds.
pub const ASSIGN_BLOCK: usize = 384;

/// The column order chosen for an `n:m` mask of `scores` (`rows × cols`, row-major): position
/// `k` of the permuted layer holds original column `perm[k]`; group `g` is positions
/// `g·m .. g·m + m`. Needs `cols % m == 0`; with `n == 0` or `n == m` (nothing to choose) the
/// identity.
pub fn channel_permutation(
    scores: &[f32],
    rows: usize,
    cols: usize,
    n: usize,
    m: usize,
) -> Vec<usize> {
    let identity: Vec<usize> = (0..cols).collect();
    if n == 0 || n >= m || m < 2 || cols < 2 * m || !cols.is_multiple_of(m) || rows == 0 {
        return identity;
    }
    let keep = m - n;
    // Column-major copy in f64: every cost below reads whole columns. Scaled by a power of two
    // (exact, so the choices do not change) that brings the largest |score| into [0.5, 1]: the
    // f32 cost sums then stay within ±rows, where huge finite scores would overflow to ±inf.
    let largest = scores
        .iter()
        .fold(0.0f64, |a, &v| a.max(f64::from(v).abs()));
    let scale = if largest > 0.0 && largest.is_finite() {
        2f64.powi(-(largest.log2().ceil() as i32))
    } else {
        1.0
    };
    let colmajor: Vec<f64> = (0..cols)
        .into_par_iter()
        .flat_map_iter(|c| (0..rows).map(move |r| f64::from(scores[r * cols + c]) * scale))
        .collect();
    let col = |c: usize| &colmajor[c * rows..(c + 1) * rows];
    let groups = cols / m;

    // 1. Allocation: sorted by total score, dealt round-robin (tier t = position t).
    let totals: Vec<f64> = (0..cols).map(|c| col(c).iter().sum()).collect();
    let mut order: Vec<usize> = (0..cols).collect();
    order.sort_by(|&a, &b| totals[b].total_cmp(&totals[a]).then(a.cmp(&b)));
    let mut perm = vec![0usize; cols];
    for (i, &c) in order.iter().enumerate() {
        let (tier, g) = (i / groups, i % groups);
        perm[g * m + tier] = c;
    }

    // 2. Refinement by assignment, one position at a time.
    let mut current = kept_score(&colmajor, rows, &perm, m, keep);
    for round in 0..ROUNDS {
        let before = current;
        let previous = perm.clone();
        let offset = if groups > ASSIGN_BLOCK {
            (round * ASSIGN_BLOCK / 2) % groups
        } else {
            0
        };
        for t in 0..m {
            reassign_position(&colmajor, rows, &mut perm, m, keep, t, offset);
        }
        current = kept_score(&colmajor, rows, &perm, m, keep);
        if current < before {
            // The f32 costs misled the assignment: keep the better order.
            perm = previous;
            current = before;
            break;
        }
        // Stop when a round gains less than 0.01 % of the kept score.
        if current <= before + 1e-4 * before.abs() {
            break;
        }
    }
    if current > kept_score(&colmajor, rows, &identity, m, keep) {
        perm
    } else {
        identity
    }
}

/// Sum over rows and groups of the `keep` highest scores of each group under `perm`.
pub fn kept_score(colmajor: &[f64], rows: usize, perm: &[usize], m: usize, keep: usize) -> f64 {
    // Per-group sums in parallel, added in order: the total decides rounds and the final
    // choice, so it must not depend on how rayon splits the work.
    let per_group: Vec<f64> = perm
        .par_chunks(m)
        .map(|grp| {
            let mut vals = vec![0.0f64; m];
            let mut sum = 0.0;
            for r in 0..rows {
                for (j, &c) in grp.iter().enumerate() {
                    vals[j] = colmajor[c * rows + r];
                }
                vals.sort_by(|a, b| b.total_cmp(a));
                sum += vals[..keep].iter().sum::<f64>();
            }
            sum
        })
        .collect();
    per_group.iter().sum()
}

/// Takes the column at position `t` out of every group and puts the columns back where they
/// keep the most score given the groups' other columns: an optimal assignment within each block
/// of at most [`ASSIGN_BLOCK`] groups. The blocks start at `offset` (rotated between rounds, so
/// a column can reach any group over the rounds); a layer with at most that many groups is one
/// block, solved exactly.
fn reassign_position(
    colmajor: &[f64],
    rows: usize,
    perm: &mut [usize],
    m: usize,
    keep: usize,
    t: usize,
    offset: usize,
) {
    let groups = perm.len() / m;
    let order: Vec<usize> = (offset..groups).chain(0..offset).collect();
    let blocks: Vec<&[usize]> = order.chunks(ASSIGN_BLOCK).collect();
    let snapshot: &[usize] = perm;
    let moves: Vec<(usize, usize)> = blocks
        .par_iter()
        .flat_map_iter(|block| assign_block(colmajor, rows, snapshot, m, keep, t, block))
        .collect();
    for (g, c) in moves {
        perm[g * m + t] = c;
    }
}

/// The (group, column) placements of one block's position-`t` columns.
fn assign_block(
    colmajor: &[f64],
    rows: usize,
    perm: &[usize],
    m: usize,
    keep: usize,
    t: usize,
    block: &[usize],
) -> Vec<(usize, usize)> {
    // With a group's other m−1 scores of a row sorted descending (o_0 ≥ o_1 ≥ …), adding x
    // keeps Σ o_0..o_{keep−2} + max(x, o_{keep−1}): only the second term depends on x. The
    // costs are summed in f32 with 16 partial sums (vectorised); only the assignment's choices
    // depend on them, and the kept score that decides whether a round is kept is summed in f64.
    let floor: Vec<Vec<f32>> = block
        .iter()
        .map(|&g| {
            let others: Vec<usize> = (0..m)
                .filter(|&j| j != t)
                .map(|j| perm[g * m + j])
                .collect();
            let mut o = vec![0.0f64; m - 1];
            (0..rows)
                .map(|r| {
                    for (k, &c) in others.iter().enumerate() {
                        o[k] = colmajor[c * rows + r];
                    }
                    o.sort_by(|a, b| b.total_cmp(a));
                    o[keep - 1] as f32
                })
                .collect()
        })
        .collect();
    let movers: Vec<usize> = block.iter().map(|&g| perm[g * m + t]).collect();
    // cost[i][j] = −Σ_r max(x_i, floor_j): minimised by the assignment.
    let mut cost = Vec::with_capacity(movers.len() * block.len());
    for &c in &movers {
        let x: Vec<f32> = colmajor[c * rows..(c + 1) * rows]
            .iter()
            .map(|&v| v as f32)
            .collect();
        cost.extend(floor.iter().map(|f| -f64::from(sum_max(&x, f))));
    }
    if !cost.iter().all(|c| c.is_finite()) {
        return Vec::new();
    }
    let assigned = hungarian(&cost, block.len());
    assigned
        .iter()
        .enumerate()
        .map(|(i, &j)| (block[j], movers[i]))
        .collect()
}

/// `Σ max(x_r, f_r)` in 16 lanes, so the compiler vectorises it.
fn sum_max(x: &[f32], f: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (xc, xr) = x.split_at(x.len() / L * L);
    let (fc, fr) = f.split_at(xc.len());
    for (a, b) in xc.chunks_exact(L).zip(fc.chunks_exact(L)) {
        for l in 0..L {
            acc[l] += a[l].max(b[l]);
        }
    }
    let tail: f32 = xr.iter().zip(fr).map(|(a, b)| a.max(*b)).sum();
    acc.iter().sum::<f32>() + tail
}

/// A minimum-cost perfect assignment of the `n × n` row-major `cost`: `result[i]` is the
/// column given to row `i` (shortest augmenting paths with potentials, `O(n³)`).
pub fn hungarian(cost: &[f64], n: usize) -> Vec<usize> {
    debug_assert_eq!(cost.len(), n * n);
    // 1-based arrays; index 0 is the virtual start.
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; n + 1];
    let mut p = vec![0usize; n + 1]; // p[j]: row matched to column j
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![f64::INFINITY; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0usize;
            for j in 1..=n {
                if !used[j] {
                    let cur = cost[(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            if j1 == 0 {
                // No column was reachable: a non-finite cost. Keep everything where it is.
                return (0..n).collect();
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut result = vec![0usize; n];
    for j in 1..=n {
        if p[j] > 0 {
            result[p[j] - 1] = j - 1;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_min(cost: &[f64], n: usize) -> f64 {
        fn go(cost: &[f64], n: usize, i: usize, used: &mut Vec<bool>) -> f64 {
            if i == n {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for j in 0..n {
                if !used[j] {
                    used[j] = true;
                    best = best.min(cost[i * n + j] + go(cost, n, i + 1, used));
                    used[j] = false;
                }
            }
            best
        }
        go(cost, n, 0, &mut vec![false; n])
    }

    /// Asserts `perm` is a permutation of the columns; the column-major scores and the identity.
    fn check_permutation(
        perm: &[usize],
        scores: &[f32],
        rows: usize,
        cols: usize,
    ) -> (Vec<f64>, Vec<usize>) {
        let mut sorted = perm.to_vec();
        sorted.sort_unstable();
        let identity: Vec<usize> = (0..cols).collect();
        assert_eq!(sorted, identity);
        let colmajor = (0..cols)
            .flat_map(|c| (0..rows).map(move |r| scores[r * cols + c] as f64))
            .collect();
        (colmajor, identity)
    }

    #[test]
    fn hungarian_is_optimal_on_small_matrices() {
        let mut rng = crate::rng::SplitMix64::new(7);
        for n in 1..=6 {
            for _ in 0..20 {
                let cost: Vec<f64> = (0..n * n)
                    .map(|_| (rng.unit() * 10.0).round() - 5.0)
                    .collect();
                let a = hungarian(&cost, n);
                let mut seen = vec![false; n];
                for &j in &a {
                    assert!(!seen[j], "not a permutation: {a:?}");
                    seen[j] = true;
                }
                let got: f64 = a.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum();
                assert!(
                    (got - brute_min(&cost, n)).abs() < 1e-9,
                    "n {n}: {got} vs optimum"
                );
            }
        }
    }

    #[test]
    fn permutation_separates_important_channels() {
        // 8 columns, 2:4. Columns 0 and 1 dominate every row; in natural order they share
        // group 0, so one row keeps 2 of them and loses the weaker half of group 1's columns.
        let (rows, cols) = (3, 8);
        let mut scores = vec![1.0f32; rows * cols];
        for r in 0..rows {
            scores[r * cols] = 10.0;
            scores[r * cols + 1] = 9.0;
            scores[r * cols + 2] = 8.0;
            scores[r * cols + 3] = 7.0;
        }
        let perm = channel_permutation(&scores, rows, cols, 2, 4);
        let (colmajor, identity) = check_permutation(&perm, &scores, rows, cols);
        let before = kept_score(&colmajor, rows, &identity, 4, 2);
        let after = kept_score(&colmajor, rows, &perm, 4, 2);
        // Natural order keeps 10+9 and 1+1 per row (21); split, 10+9 → 10+8 and 9+7 (34).
        assert_eq!(before, 3.0 * 21.0);
        assert_eq!(after, 3.0 * 34.0);
    }

    #[test]
    fn wide_layers_are_reassigned_in_blocks() {
        // 400 groups: one block of 384 and one of 16, then shifted blocks.
        let (rows, cols) = (6, 1600);
        let mut rng = crate::rng::SplitMix64::new(3);
        let scores: Vec<f32> = (0..rows * cols)
            .map(|i| (rng.unit() as f32) * if (i % cols) % 16 < 3 { 6.0 } else { 1.0 })
            .collect();
        let perm = channel_permutation(&scores, rows, cols, 2, 4);
        let (colmajor, identity) = check_permutation(&perm, &scores, rows, cols);
        assert!(
            kept_score(&colmajor, rows, &perm, 4, 2) > kept_score(&colmajor, rows, &identity, 4, 2)
        );
    }

    #[test]
    fn huge_finite_scores_do_not_hang() {
        // Near f32::MAX with mixed signs: unscaled, the f32 cost sums overflow to ±inf and NaN.
        let (rows, cols) = (64, 16);
        let scores: Vec<f32> = (0..rows * cols)
            .map(|i| {
                if i % 3 == 0 {
                    -f32::MAX / 2.0
                } else {
                    f32::MAX / (1 + i % 5) as f32
                }
            })
            .collect();
        let perm = channel_permutation(&scores, rows, cols, 2, 4);
        check_permutation(&perm, &scores, rows, cols);
        // The assignment itself gives up on non-finite costs instead of looping.
        let a = hungarian(&[f64::NEG_INFINITY; 4], 2);
        assert_eq!(a, vec![0, 1]);
    }

    #[test]
    fn nothing_to_choose_is_the_identity() {
        let scores = vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        for (n, m) in [(0, 4), (4, 4)] {
            assert_eq!(
                channel_permutation(&scores, 1, 8, n, m),
                (0..8).collect::<Vec<_>>()
            );
        }
        // Too few columns for two groups.
        assert_eq!(
            channel_permutation(&scores[..4], 1, 4, 2, 4),
            vec![0, 1, 2, 3]
        );
    }
}
