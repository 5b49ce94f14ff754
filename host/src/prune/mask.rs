//! Masks built by the host from untrusted per-weight scores (higher = keep).
//!
//! The comparison groups reproduce the reference code exactly:
//! - [`Pattern::PerRow`] (Wanda): per output row, a stable ascending sort of the
//!   scores, the first `floor(cols·s)` pruned — ties go to the lower column index.
//! - [`Pattern::PerLayer`] (magnitude): `thresh = sorted[floor(numel·s)]`, everything
//!   `<= thresh` pruned, so ties (and the threshold itself) overshoot slightly.
//! - [`Pattern::PerLayerExact`]: exactly `floor(numel·s)` pruned per layer, ties to
//!   the lower flat index.
//! - [`Pattern::NM`]: per row, in every group of `m` consecutive columns the `n`
//!   lowest are pruned, ties to the lower index.
//!
//! No full sort is needed: a selection (`select_nth_unstable` on order-preserving
//! integer keys; for a whole layer, a parallel 16-bit radix histogram first) finds
//! the k-th value of a row or layer, then one branch-free pass prunes everything
//! below it and the first ties in index order — the same set a stable sort gives.
//!
//! Sparsity is `f64`, like Python's float: `int(cols * s)` must match. A sparsity
//! held as `f32` should go through [`sparsity_from_f32`] first.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How scores are compared to decide which weights are pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Pattern {
    /// Per output row, the `floor(cols·s)` lowest scores (Wanda's reference). `"row"`.
    #[default]
    PerRow,
    /// One threshold per layer, `sorted[floor(numel·s)]`, everything `<=` it pruned
    /// (magnitude's reference; ties overshoot). `"layer"`.
    PerLayer,
    /// Exactly `floor(numel·s)` lowest per layer, ties to the lower flat index. `"layer-exact"`.
    PerLayerExact,
    /// Semi-structured: in each row, `n` of every `m` consecutive weights pruned. `"2:4"`.
    NM {
        /// Weights pruned per group.
        n: usize,
        /// Group length (consecutive input columns).
        m: usize,
    },
}

/// Why a pattern string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParsePatternError {
    /// Not one of the known names nor `N:M`.
    #[error("unknown pruning pattern {0:?}: expected \"row\", \"layer\", \"layer-exact\" or \"N:M\" such as \"2:4\"")]
    Unknown(String),
    /// `N:M` whose numbers are not integers.
    #[error("bad N:M pattern {0:?}: N and M must be non-negative integers")]
    NotNumbers(String),
    /// `N:M` with `m == 0` or `n > m`.
    #[error("bad N:M pattern {n}:{m}: need 0 < M and N <= M")]
    Invalid {
        /// Parsed N.
        n: usize,
        /// Parsed M.
        m: usize,
    },
}

impl FromStr for Pattern {
    type Err = ParsePatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "row" | "per-row" | "per_row" | "perrow" => return Ok(Pattern::PerRow),
            "layer" | "per-layer" | "per_layer" | "perlayer" => return Ok(Pattern::PerLayer),
            "layer-exact" | "layer_exact" | "per-layer-exact" => return Ok(Pattern::PerLayerExact),
            _ => {}
        }
        let (a, b) = t
            .split_once(':')
            .ok_or_else(|| ParsePatternError::Unknown(s.to_string()))?;
        let n = a.trim().parse::<usize>();
        let m = b.trim().parse::<usize>();
        let (Ok(n), Ok(m)) = (n, m) else {
            return Err(ParsePatternError::NotNumbers(s.to_string()));
        };
        if m == 0 || n > m {
            return Err(ParsePatternError::Invalid { n, m });
        }
        Ok(Pattern::NM { n, m })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::PerRow => f.write_str("row"),
            Pattern::PerLayer => f.write_str("layer"),
            Pattern::PerLayerExact => f.write_str("layer-exact"),
            Pattern::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

impl TryFrom<String> for Pattern {
    type Error = ParsePatternError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.to_string()
    }
}

/// Why a mask could not be built or applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MaskError {
    /// The layer has no weights.
    #[error("layer shape {rows}x{cols} has no weights")]
    EmptyLayer {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// A buffer does not hold `rows·cols` values.
    #[error("{what} has {got} values, expected rows*cols = {rows}*{cols} = {}", rows * cols)]
    Length {
        /// Which buffer ("scores", "weights").
        what: &'static str,
        /// Values received.
        got: usize,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// The first non-finite score (NaN or ±∞).
    #[error("score {index} (row {row}, column {col}) is not finite: {value}")]
    NonFinite {
        /// Flat row-major index.
        index: usize,
        /// Row of that score.
        row: usize,
        /// Column of that score.
        col: usize,
        /// The offending value.
        value: f32,
    },
    /// Sparsity outside `[0, 1)` (or NaN).
    #[error("sparsity {0} is outside [0, 1)")]
    Sparsity(f64),
    /// An N:M pattern that cannot tile the rows.
    #[error("N:M pattern {n}:{m} does not fit {cols} columns (need 0 < M, N <= M, cols % M == 0)")]
    NMShape {
        /// N.
        n: usize,
        /// M.
        m: usize,
        /// Columns of the layer.
        cols: usize,
    },
    /// A per-layer threshold pruned far more than the target because many scores tie at the
    /// threshold (the `<=` rule prunes every tie): the metric's scores cannot rank the layer.
    #[error("the scores tie at the threshold: the per-layer `<=` rule prunes {got} of {weights} weights, more than the {allowed} allowed for a target of {expected}")]
    Overshoot {
        /// What the target asks for (`floor(numel·s) + 1`).
        expected: usize,
        /// What the threshold prunes.
        got: usize,
        /// The most accepted ([`per_layer_prune_limit`]).
        allowed: usize,
        /// Weights of the layer.
        weights: usize,
    },
    /// The built mask does not prune what the pattern promises (a host bug).
    #[error("mask prunes {got} weights, expected {expected}")]
    Count {
        /// What the pattern promises (a lower bound for [`Pattern::PerLayer`]).
        expected: usize,
        /// What the mask prunes.
        got: usize,
    },
}

/// The most weights a [`Pattern::PerLayer`] mask of a `numel`-weight layer may prune when its
/// target prunes `expected`: the layer must keep at least 90 % (rounded down) of the weights
/// the target keeps.
///
/// Why: the reference's `<= threshold` rule prunes every score tied with the threshold, and
/// quantized weights tie often, so a small overshoot is part of the protocol (magnitude 50 %
/// on SmolLM2-Q4_1: at most 0.500723 in one matrix, i.e. 0.07 % of the layer, while this
/// allows 5 %). A metric whose scores are all (or nearly all) equal prunes the whole layer
/// under that rule; that gets a verdict instead of a destroyed layer.
pub fn per_layer_prune_limit(numel: usize, expected: usize) -> usize {
    expected + (numel - expected.min(numel)).div_ceil(10)
}

/// `floor(n·s)` computed as Python's `int(n * s)` on floats.
pub fn prune_count(n: usize, sparsity: f64) -> usize {
    ((n as f64) * sparsity).floor() as usize
}

/// Widen an `f32` sparsity to the `f64` a person meant: `0.7f32` becomes `0.7`, not
/// `0.699999988…` (whose `floor(10·s)` is 6, not Python's `int(10 * 0.7) = 7`).
pub fn sparsity_from_f32(s: f32) -> f64 {
    // Display prints the shortest decimal that round-trips to `s`.
    s.to_string().parse().unwrap_or(s as f64)
}

/// Check that `scores` is a finite `rows × cols` matrix.
pub fn validate_scores(scores: &[f32], rows: usize, cols: usize) -> Result<(), MaskError> {
    if rows == 0 || cols == 0 {
        return Err(MaskError::EmptyLayer { rows, cols });
    }
    if scores.len() != rows * cols {
        return Err(MaskError::Length {
            what: "scores",
            got: scores.len(),
            rows,
            cols,
        });
    }
    // A branch-free OR per row vectorises; only a bad row is searched again.
    let bad = |v: &f32| v.to_bits() & 0x7f80_0000 == 0x7f80_0000;
    let row = scores
        .par_chunks(cols)
        .position_first(|r| r.iter().fold(false, |acc, v| acc | bad(v)));
    if let Some(row) = row {
        let r = &scores[row * cols..(row + 1) * cols];
        let col = r.iter().position(bad).unwrap_or(0);
        return Err(MaskError::NonFinite {
            index: row * cols + col,
            row,
            col,
            value: r[col],
        });
    }
    Ok(())
}

fn check_sparsity(s: f64) -> Result<(), MaskError> {
    if (0.0..1.0).contains(&s) {
        Ok(())
    } else {
        Err(MaskError::Sparsity(s))
    }
}

/// Which weights of a `rows × cols` layer are kept, one bit per weight.
///
/// Bits are packed per row (`ceil(cols/64)` words, bit `c % 64` of word `c / 64`, set =
/// keep; padding bits are always zero), so equal masks have equal bits and hashes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Mask {
    rows: usize,
    cols: usize,
    words_per_row: usize,
    bits: Vec<u64>,
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mask")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("pruned", &self.pruned_count())
            .field("hash64", &format_args!("{:016x}", self.hash64()))
            .finish()
    }
}

/// Keep bits of one row: all prune decisions come from `pruned(col)`.
fn fill_row(words: &mut [u64], cols: usize, mut pruned: impl FnMut(usize) -> bool) {
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
fn fill_dense(words: &mut [u64], cols: usize) {
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
fn fill_threshold(words: &mut [u64], row: &[f32], t: f32, mut ties: usize) {
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
fn key(v: f32) -> u32 {
    let b = (v + 0.0).to_bits();
    b ^ (((b as i32) >> 31) as u32 | 0x8000_0000)
}

/// The `f32` of a [`key`].
#[inline]
fn unkey(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 {
        k & 0x7fff_ffff
    } else {
        !k
    })
}

/// The value of rank `k` (0-based) among `values` and how many are strictly below it.
fn kth_smallest(values: &[f32], k: usize, scratch: &mut Vec<u32>) -> (f32, usize) {
    scratch.clear();
    scratch.extend(values.iter().map(|&v| key(v)));
    let (below, t, _) = scratch.select_nth_unstable(k);
    let t = *t;
    let lt = below.iter().filter(|&&v| v < t).count();
    (unkey(t), lt)
}

/// [`kth_smallest`] for a whole layer without copying it: a parallel histogram of
/// the top 16 key bits finds the bucket holding rank `k`; only that bucket is selected.
fn kth_smallest_layer(values: &[f32], k: usize) -> (f32, usize) {
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
fn fill_nm(words: &mut [u64], row: &[f32], n: usize, m: usize) {
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
fn torch_lowest(grp: &[f32], n: usize, q: &mut Vec<(f32, usize)>) -> u64 {
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
fn introselect(q: &mut [(f32, usize)], nth: usize) -> bool {
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

impl Mask {
    /// A mask that keeps everything.
    pub fn dense(rows: usize, cols: usize) -> Self {
        let mut m = Mask::zeroed(rows, cols);
        m.bits
            .par_chunks_mut(m.words_per_row.max(1))
            .for_each(|w| fill_dense(w, cols));
        m
    }

    /// All bits zero (prunes everything); builders overwrite the words.
    fn zeroed(rows: usize, cols: usize) -> Self {
        let words_per_row = cols.div_ceil(64);
        Mask {
            rows,
            cols,
            words_per_row,
            bits: vec![0; rows * words_per_row],
        }
    }

    /// A mask from one `keep` flag per weight (row-major).
    pub fn from_keep(rows: usize, cols: usize, keep: &[bool]) -> Result<Self, MaskError> {
        if keep.len() != rows * cols {
            return Err(MaskError::Length {
                what: "keep flags",
                got: keep.len(),
                rows,
                cols,
            });
        }
        let mut m = Mask::zeroed(rows, cols);
        if m.words_per_row > 0 {
            m.bits
                .par_chunks_mut(m.words_per_row)
                .zip(keep.par_chunks(cols))
                .for_each(|(w, k)| fill_row(w, cols, |c| !k[c]));
        }
        Ok(m)
    }

    /// Build the mask of `pattern` at `sparsity` from untrusted `scores` (higher = keep).
    ///
    /// Scores are validated first (length, finiteness). For [`Pattern::NM`] the
    /// sparsity argument is ignored: the pattern fixes it at `n/m`. A sparsity of 0
    /// prunes nothing for every pattern (the reference's `<= sorted[0]` would prune the
    /// minimum; nobody asks for that).
    pub fn from_scores(
        scores: &[f32],
        rows: usize,
        cols: usize,
        pattern: Pattern,
        sparsity: f64,
    ) -> Result<Self, MaskError> {
        validate_scores(scores, rows, cols)?;
        let numel = rows * cols;
        let (mask, expected) = match pattern {
            Pattern::PerRow => {
                check_sparsity(sparsity)?;
                let k = prune_count(cols, sparsity).min(cols);
                (Self::per_row(scores, rows, cols, k), rows * k)
            }
            Pattern::PerLayer => {
                check_sparsity(sparsity)?;
                let k = prune_count(numel, sparsity).min(numel - 1);
                if sparsity == 0.0 {
                    (Mask::dense(rows, cols), 0)
                } else {
                    // `<= sorted[k]` prunes ranks 0..=k at least.
                    (Self::per_layer(scores, rows, cols, k), k + 1)
                }
            }
            Pattern::PerLayerExact => {
                check_sparsity(sparsity)?;
                let k = prune_count(numel, sparsity).min(numel);
                (Self::per_layer_exact(scores, rows, cols, k), k)
            }
            Pattern::NM { n, m } => {
                if m == 0 || n > m || !cols.is_multiple_of(m) {
                    return Err(MaskError::NMShape { n, m, cols });
                }
                (Self::n_m(scores, rows, cols, n, m), rows * (cols / m) * n)
            }
        };
        let got = mask.pruned_count();
        if pattern == Pattern::PerLayer {
            let allowed = per_layer_prune_limit(numel, expected);
            if got > allowed {
                return Err(MaskError::Overshoot {
                    expected,
                    got,
                    allowed,
                    weights: numel,
                });
            }
        }
        let ok = match pattern {
            Pattern::PerLayer => got >= expected,
            _ => got == expected,
        };
        if !ok {
            return Err(MaskError::Count { expected, got });
        }
        Ok(mask)
    }

    fn per_row(scores: &[f32], rows: usize, cols: usize, k: usize) -> Self {
        if k == 0 {
            return Mask::dense(rows, cols);
        }
        let mut m = Mask::zeroed(rows, cols);
        m.bits
            .par_chunks_mut(m.words_per_row)
            .zip(scores.par_chunks(cols))
            .for_each_init(Vec::new, |scratch, (w, row)| {
                let (t, lt) = kth_smallest(row, k - 1, scratch);
                fill_threshold(w, row, t, k - lt);
            });
        m
    }

    fn per_layer(scores: &[f32], rows: usize, cols: usize, k: usize) -> Self {
        let (t, _) = kth_smallest_layer(scores, k);
        let mut m = Mask::zeroed(rows, cols);
        m.bits
            .par_chunks_mut(m.words_per_row)
            .zip(scores.par_chunks(cols))
            .for_each(|(w, row)| fill_threshold(w, row, t, usize::MAX));
        m
    }

    fn per_layer_exact(scores: &[f32], rows: usize, cols: usize, k: usize) -> Self {
        if k == 0 {
            return Mask::dense(rows, cols);
        }
        let (t, lt) = kth_smallest_layer(scores, k - 1);
        // Ties at `t` are pruned in flat-index order: give each row its share.
        let ties_per_row: Vec<usize> = scores
            .par_chunks(cols)
            .map(|r| r.iter().filter(|&&v| v == t).count())
            .collect();
        let mut left = k - lt;
        let quota: Vec<usize> = ties_per_row
            .iter()
            .map(|&c| {
                let q = c.min(left);
                left -= q;
                q
            })
            .collect();
        let mut m = Mask::zeroed(rows, cols);
        m.bits
            .par_chunks_mut(m.words_per_row)
            .zip(scores.par_chunks(cols))
            .zip(quota.par_iter())
            .for_each(|((w, row), &q)| fill_threshold(w, row, t, q));
        m
    }

    fn n_m(scores: &[f32], rows: usize, cols: usize, n: usize, m: usize) -> Self {
        let mut mask = Mask::zeroed(rows, cols);
        mask.bits
            .par_chunks_mut(mask.words_per_row)
            .zip(scores.par_chunks(cols))
            .for_each(|(w, row)| fill_nm(w, row, n, m));
        mask
    }

    /// Output rows of the layer.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns of the layer.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of weights, `rows · cols`.
    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether weight `(row, col)` is kept.
    pub fn is_kept(&self, row: usize, col: usize) -> bool {
        debug_assert!(row < self.rows && col < self.cols);
        self.bits[row * self.words_per_row + col / 64] >> (col % 64) & 1 == 1
    }

    /// Number of kept weights.
    pub fn kept_count(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Number of pruned weights.
    pub fn pruned_count(&self) -> usize {
        self.numel() - self.kept_count()
    }

    /// Pruned weights in one row.
    pub fn row_pruned_count(&self, row: usize) -> usize {
        let w = &self.bits[row * self.words_per_row..(row + 1) * self.words_per_row];
        self.cols - w.iter().map(|w| w.count_ones() as usize).sum::<usize>()
    }

    /// Fraction of weights pruned (0 for an empty layer).
    pub fn sparsity(&self) -> f64 {
        if self.numel() == 0 {
            return 0.0;
        }
        self.pruned_count() as f64 / self.numel() as f64
    }

    /// One `keep` flag per weight, row-major.
    pub fn to_keep(&self) -> Vec<bool> {
        (0..self.numel())
            .map(|i| self.is_kept(i / self.cols, i % self.cols))
            .collect()
    }

    /// Zero the pruned weights of a row-major `rows × cols` matrix.
    pub fn apply(&self, weights: &mut [f32]) -> Result<(), MaskError> {
        if weights.len() != self.numel() {
            return Err(MaskError::Length {
                what: "weights",
                got: weights.len(),
                rows: self.rows,
                cols: self.cols,
            });
        }
        if self.numel() == 0 {
            return Ok(());
        }
        weights
            .par_chunks_mut(self.cols)
            .zip(self.bits.par_chunks(self.words_per_row))
            .for_each(|(row, words)| {
                for (chunk, &word) in row.chunks_mut(64).zip(words) {
                    if word == u64::MAX {
                        continue;
                    }
                    for (c, w) in chunk.iter_mut().enumerate() {
                        // All ones if kept, zero if pruned: no branch per weight.
                        let keep = 0u32.wrapping_sub((word >> c & 1) as u32);
                        *w = f32::from_bits(w.to_bits() & keep);
                    }
                }
            });
        Ok(())
    }

    /// SHA-256 of the shape and the keep bits: equal masks, equal digests, on any machine.
    ///
    /// Input: `b"autoprune-mask-v1\0"`, rows and cols as u64 little-endian, then each
    /// row's packed words little-endian.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"autoprune-mask-v1\0");
        h.update((self.rows as u64).to_le_bytes());
        h.update((self.cols as u64).to_le_bytes());
        let mut buf = Vec::with_capacity(self.bits.len().min(1 << 16) * 8);
        for chunk in self.bits.chunks(1 << 16) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|w| w.to_le_bytes()));
            h.update(&buf);
        }
        h.finalize().into()
    }

    /// The first 8 bytes of [`Mask::digest`] as a little-endian u64 (for dedup keys).
    pub fn hash64(&self) -> u64 {
        let d = self.digest();
        u64::from_le_bytes(d[..8].try_into().unwrap_or([0; 8]))
    }
}

#[cfg(test)]
mod tests {
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
        let m = Mask::from_scores(&[1.0; 4], 1, 4, Pattern::NM { n: 2, m: 4 }, 0.0).unwrap();
        assert_eq!(pruned_flags(&m), vec![false, false, true, true]);
        // No ties: the two lowest, wherever they are.
        let m = Mask::from_scores(&[3.0, 1.0, 4.0, 2.0], 1, 4, Pattern::NM { n: 2, m: 4 }, 0.0)
            .unwrap();
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
            let mask = Mask::from_scores(&tied, rows, cols, Pattern::NM { n, m }, 0.0).unwrap();
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
                Mask::from_scores(&s, 2, 10, Pattern::NM { n, m }, 0.5),
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
        for p in [
            Pattern::PerRow,
            Pattern::PerLayerExact,
            Pattern::NM { n: 2, m: 4 },
        ] {
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
            Pattern::NM { n: 2, m: 4 },
            Pattern::NM { n: 4, m: 8 },
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
        let nm = Mask::from_scores(&flat, rows, cols, Pattern::NM { n: 2, m: 4 }, 0.0).unwrap();
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
            ("2:4", Pattern::NM { n: 2, m: 4 }),
            ("4:8", Pattern::NM { n: 4, m: 8 }),
        ] {
            assert_eq!(s.parse::<Pattern>(), Ok(p));
            assert_eq!(p.to_string(), s);
            let j = serde_json::to_string(&p).unwrap();
            assert_eq!(j, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Pattern>(&j).unwrap(), p);
        }
        assert_eq!(" Per-Row ".parse::<Pattern>(), Ok(Pattern::PerRow));
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
}
