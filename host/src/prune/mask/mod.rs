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
//!   lowest are pruned, ties to the lower index; with `permute`, the groups are consecutive
//!   columns of a per-layer input-channel permutation chosen from the scores ([`permute`]).
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

pub mod permute;
mod select;
use select::{fill_dense, fill_nm, fill_row, fill_threshold, kth_smallest, kth_smallest_layer};

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
    /// Semi-structured: in each row, `n` of every `m` consecutive weights pruned. `"2:4"`;
    /// `"2:4p"` with the layer's input channels permuted first ([`permute`]).
    NM {
        /// Weights pruned per group.
        n: usize,
        /// Group length (consecutive input columns).
        m: usize,
        /// Groups of `m` consecutive columns of a per-layer input-channel permutation chosen
        /// from the scores (RIA's channel permutation) instead of the natural order.
        permute: bool,
    },
}

impl Pattern {
    /// Plain N:M (`n` of every `m` consecutive columns pruned, natural column order).
    pub const fn n_m(n: usize, m: usize) -> Self {
        Pattern::NM {
            n,
            m,
            permute: false,
        }
    }
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
        // `2:4p` / `2:4perm`: N:M over permuted input channels.
        let (t, permute) = match t.strip_suffix("perm").or_else(|| t.strip_suffix('p')) {
            Some(body) => (body.to_string(), true),
            None => (t.clone(), false),
        };
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
        Ok(Pattern::NM { n, m, permute })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::PerRow => f.write_str("row"),
            Pattern::PerLayer => f.write_str("layer"),
            Pattern::PerLayerExact => f.write_str("layer-exact"),
            Pattern::NM { n, m, permute } => {
                write!(f, "{n}:{m}{}", if *permute { "p" } else { "" })
            }
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
            Pattern::NM { n, m, permute } => {
                if m == 0 || n > m || !cols.is_multiple_of(m) {
                    return Err(MaskError::NMShape { n, m, cols });
                }
                let mask = if permute {
                    Self::n_m_permuted(scores, rows, cols, n, m)?
                } else {
                    Self::n_m(scores, rows, cols, n, m)
                };
                (mask, rows * (cols / m) * n)
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

    /// N:M over the columns in the order [`permute::channel_permutation`] chooses, mapped
    /// back to the natural order (so the pruned weights are zeros where they are).
    fn n_m_permuted(
        scores: &[f32],
        rows: usize,
        cols: usize,
        n: usize,
        m: usize,
    ) -> Result<Self, MaskError> {
        let perm = permute::channel_permutation(scores, rows, cols, n, m);
        let permuted: Vec<f32> = scores
            .par_chunks(cols)
            .flat_map_iter(|row| perm.iter().map(move |&c| row[c]))
            .collect();
        let inner = Self::n_m(&permuted, rows, cols, n, m);
        let mut keep = vec![false; rows * cols];
        keep.par_chunks_mut(cols).enumerate().for_each(|(r, k)| {
            for (pos, &c) in perm.iter().enumerate() {
                k[c] = inner.is_kept(r, pos);
            }
        });
        Mask::from_keep(rows, cols, &keep)
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

    /// Weights kept by one mask and pruned by the other (`None` when the shapes differ).
    pub fn differing(&self, other: &Mask) -> Option<usize> {
        (self.rows == other.rows && self.cols == other.cols).then(|| {
            self.bits
                .iter()
                .zip(&other.bits)
                .map(|(a, b)| (a ^ b).count_ones() as usize)
                .sum()
        })
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
mod tests;
