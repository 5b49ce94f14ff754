//! Selection algorithms behind the masks: k-th smallest of a row or layer, threshold fills, PyTorch-exact N:M.

use rayon::prelude::*;

/// Keep bits of one row: all prune decisions come from `pruned(col)`.
pub(super) fn fill_row(words: &mut [u64], cols: usize, mut pruned: impl FnMut(usize) -> bool) {
    for (w, word) in words.iter_mut().enumerate() {
        let lo = w * 64;
        let hi = (lo + 64).min(cols);
        let mut bits = 0u64;
        for c in lo..hi {
            bits |= ((!pruned(c)) as u64) << (c - lo);
        }
        *word = bits;
    }
}

/// Keep bits of a fully kept row (padding bits stay zero).
pub(super) fn fill_dense(words: &mut [u64], cols: usize) {
    for (w, word) in words.iter_mut().enumerate() {
        let live = (cols - w * 64).min(64);
        *word = if live == 64 {
            u64::MAX
        } else {
            (1u64 << live) - 1
        };
    }
}

/// Keep bits for "prune every score `< t`, and the first `ties` scores `== t`".
/// Branch-free per weight (random scores make `v < t` unpredictable); ties are rare
/// and handled per word.
pub(super) fn fill_threshold(words: &mut [u64], row: &[f32], t: f32, mut ties: usize) {
    for (word, chunk) in words.iter_mut().zip(row.chunks(64)) {
        let (mut gt, mut eq) = (0u64, 0u64);
        for (c, &v) in chunk.iter().enumerate() {
            gt |= ((v > t) as u64) << c;
            eq |= ((v == t) as u64) << c;
        }
        // The lowest-indexed ties are pruned first: clear them from `eq`.
        while eq != 0 && ties > 0 {
            eq &= eq - 1;
            ties -= 1;
        }
        *word = gt | eq;
    }
}

/// Order-preserving `u32` key of a finite `f32`. `-0.0` and `+0.0` share a key (IEEE
/// equality, as in `torch.sort`): `v + 0.0` turns `-0.0` into `+0.0`.
#[inline]
pub(super) fn key(v: f32) -> u32 {
    let b = (v + 0.0).to_bits();
    b ^ (((b as i32) >> 31) as u32 | 0x8000_0000)
}

/// The `f32` of a [`key`].
#[inline]
pub(super) fn unkey(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 {
        k & 0x7fff_ffff
    } else {
        !k
    })
}

/// The value of rank `k` (0-based) among `values` and how many are strictly below it.
pub(super) fn kth_smallest(values: &[f32], k: usize, scratch: &mut Vec<u32>) -> (f32, usize) {
    scratch.clear();
    scratch.extend(values.iter().map(|&v| key(v)));
    let (below, t, _) = scratch.select_nth_unstable(k);
    let t = *t;
    let lt = below.iter().filter(|&&v| v < t).count();
    (unkey(t), lt)
}

/// [`kth_smallest`] for a whole layer without copying it: a parallel histogram of
/// the top 16 key bits finds the bucket holding rank `k`; only that bucket is selected.
pub(super) fn kth_smallest_layer(values: &[f32], k: usize) -> (f32, usize) {
    const BUCKETS: usize = 1 << 16;
    let pieces = rayon::current_num_threads().max(1) * 4;
    let hist = values
        .par_chunks(values.len().div_ceil(pieces).max(1))
        .map(|c| {
            let mut h = vec![0u32; BUCKETS];
            for &v in c {
                h[(key(v) >> 16) as usize] += 1;
            }
            h
        })
        .reduce(
            || vec![0u32; BUCKETS],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    let (mut below, mut bucket) = (0usize, 0u32);
    for (b, &c) in hist.iter().enumerate() {
        if below + c as usize > k {
            bucket = b as u32;
            break;
        }
        below += c as usize;
    }
    let mut cand: Vec<u32> = values
        .par_iter()
        .map(|&v| key(v))
        .filter(|&kv| kv >> 16 == bucket)
        .collect();
    let (lo, t, _) = cand.select_nth_unstable(k - below);
    let t = *t;
    let lt = below + lo.iter().filter(|&&v| v < t).count();
    (unkey(t), lt)
}

/// Keep bits of one row under N:M: in each group of `m`, `n` lowest scores are pruned, ties
/// resolved as PyTorch's CPU `topk(largest=False)` resolves them (see [`torch_lowest`]), so N:M
/// masks equal the reference implementations' masks even on quantized weights, where equal
/// magnitudes inside a group are common. `words` must be zeroed.
pub(super) fn fill_nm(words: &mut [u64], row: &[f32], n: usize, m: usize) {
    let mut queue = Vec::with_capacity(m);
    for (g, grp) in row.chunks_exact(m).enumerate() {
        let pruned = torch_lowest(grp, n, &mut queue);
        for j in 0..m {
            let c = g * m + j;
            words[c / 64] |= (((pruned >> j) & 1) ^ 1) << (c % 64);
        }
    }
}

/// Bit `j` set when `grp[j]` is among the `n` lowest, chosen exactly as PyTorch's CPU `topk`
/// does for small groups (`k·64 > m`): `std::nth_element` (libstdc++ introselect with
/// median-of-three pivots, then insertion sort) over `(value, index)` pairs compared by value,
/// taking the first `n`. Deterministic; only the choice among equal values differs from a
/// stable sort (all-equal `[1, 1, 1, 1]` at 2:4 prunes columns 2 and 3). Groups wider than 64
/// use the stable rule (lowest index first).
pub(super) fn torch_lowest(grp: &[f32], n: usize, q: &mut Vec<(f32, usize)>) -> u64 {
    let m = grp.len();
    if n == 0 {
        return 0;
    }
    if n >= m {
        return if m == 64 { u64::MAX } else { (1u64 << m) - 1 };
    }
    q.clear();
    q.extend(grp.iter().copied().zip(0..));
    if m > 64 || !introselect(q, n - 1) {
        // Stable fallback: rank by (value, index).
        q.clear();
        q.extend(grp.iter().copied().zip(0..));
        q.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    }
    q[..n].iter().fold(0u64, |acc, &(_, j)| acc | (1u64 << j))
}

/// libstdc++'s `std::nth_element` on `q` with `<` on the values. Returns false (leaving `q`
/// permuted) if its depth limit would switch to heap selection, which groups of ≤ 8 never
/// reach and which is not reproduced here.
pub(super) fn introselect(q: &mut [(f32, usize)], nth: usize) -> bool {
    let less = |q: &[(f32, usize)], a: usize, b: usize| q[a].0 < q[b].0;
    let (mut first, mut last) = (0usize, q.len());
    let mut depth = 2 * (usize::BITS - 1 - q.len().leading_zeros()) as usize;
    while last - first > 3 {
        if depth == 0 {
            return false;
        }
        depth -= 1;
        // __unguarded_partition_pivot: median of (first+1, mid, last-1) moved to first.
        let (a, b, c) = (first + 1, first + (last - first) / 2, last - 1);
        let median = if less(q, a, b) {
            if less(q, b, c) {
                b
            } else if less(q, a, c) {
                c
            } else {
                a
            }
        } else if less(q, a, c) {
            a
        } else if less(q, b, c) {
            c
        } else {
            b
        };
        q.swap(first, median);
        // __unguarded_partition(first + 1, last, pivot = first).
        let (mut lo, mut hi) = (first + 1, last);
        let cut = loop {
            while less(q, lo, first) {
                lo += 1;
            }
            hi -= 1;
            while less(q, first, hi) {
                hi -= 1;
            }
            if lo >= hi {
                break lo;
            }
            q.swap(lo, hi);
            lo += 1;
        };
        if cut <= nth {
            first = cut;
        } else {
            last = cut;
        }
    }
    // __insertion_sort(first, last).
    for i in first + 1..last {
        let val = q[i];
        if val.0 < q[first].0 {
            q.copy_within(first..i, first + 1);
            q[first] = val;
        } else {
            let mut j = i;
            while val.0 < q[j - 1].0 {
                q[j] = q[j - 1];
                j -= 1;
            }
            q[j] = val;
        }
    }
    true
}
