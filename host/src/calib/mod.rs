//! Calibration: text → token windows → per-linear input statistics of one block.
//!
//! Windows follow the SOTU-512 protocol (evenly spaced, deterministic) or classic random
//! sampling with a recorded seed. Statistics are accumulated in f64 from the dense forward of
//! a block; inputs shared by several linears (q/k/v, gate/up) are accumulated once.

pub mod device;
pub mod gradient;
pub mod hessian;
pub mod tokens;

pub use device::DevicePath;

use crate::layer::{ChannelStats, LayerKind};
use crate::model::{Block, ModelError, Rope};
use crate::rng::SplitMix64;
use candle_core::Tensor;
use hessian::HessianAccumulator;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How calibration windows are placed in the calibration stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "sampler", rename_all = "snake_case")]
pub enum Sampler {
    /// `offset_k = floor(k · (L − seqlen) / n)`: the SOTU-512 protocol, no random generator.
    Even,
    /// Uniform random offsets in `[0, L − seqlen − 1]` from a SplitMix64 stream seeded here.
    Random {
        /// The seed (recorded in every report).
        seed: u64,
    },
    /// Offsets given explicitly (e.g. to reproduce another tool's windows).
    Given,
}

/// Calibration problems caused by the input text or settings.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    /// The stream cannot hold one window.
    #[error("the calibration text has {tokens} tokens; {windows} windows of {seq_len} tokens need at least {needed}")]
    TooShort {
        /// Tokens in the stream.
        tokens: usize,
        /// Tokens needed.
        needed: usize,
        /// Windows requested.
        windows: usize,
        /// Window length.
        seq_len: usize,
    },
    /// A forward pass failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A statistic could not be accumulated.
    #[error("statistics: {0}")]
    Stats(String),
}

/// Start offsets of `n` windows of `seq_len` tokens in a stream of `len` tokens.
pub fn window_offsets(
    len: usize,
    n: usize,
    seq_len: usize,
    sampler: Sampler,
) -> Result<Vec<usize>, CalibError> {
    if n == 0 || seq_len == 0 || len <= seq_len {
        return Err(CalibError::TooShort {
            tokens: len,
            needed: seq_len + 1,
            windows: n,
            seq_len,
        });
    }
    Ok(match sampler {
        Sampler::Even => (0..n).map(|k| k * (len - seq_len) / n).collect(),
        Sampler::Random { seed } => {
            let mut rng = SplitMix64::new(seed);
            (0..n)
                .map(|_| rng.below_mod((len - seq_len) as u64) as usize)
                .collect()
        }
        Sampler::Given => {
            return Err(CalibError::Stats(
                "explicit offsets are checked with `check_offsets`".into(),
            ))
        }
    })
}

/// Check explicitly given offsets: every window must lie inside the stream.
pub fn check_offsets(len: usize, offsets: &[usize], seq_len: usize) -> Result<(), CalibError> {
    match offsets.iter().find(|&&o| o + seq_len > len) {
        Some(&o) => Err(CalibError::Stats(format!(
            "calibration offset {o} + {seq_len} tokens runs past the end of the stream ({len} tokens)"
        ))),
        None if offsets.is_empty() => Err(CalibError::Stats("no calibration offsets".into())),
        None => Ok(()),
    }
}

/// `n` held-out windows of the calibration stream, for tuning hyperparameters without
/// touching the evaluation text: window `k` starts halfway between calibration windows
/// `j = ⌊k·c/n⌋` and `j + 1` (the stream's end after the last), where `c` is the number of
/// calibration windows. Fails if a validation window would overlap a calibration window.
pub fn validation_offsets(
    len: usize,
    calib_offsets: &[usize],
    n: usize,
    seq_len: usize,
) -> Result<Vec<usize>, CalibError> {
    let mut sorted = calib_offsets.to_vec();
    sorted.sort_unstable();
    let c = sorted.len();
    if c == 0 || n == 0 {
        return Err(CalibError::Stats(
            "validation windows need calibration windows and n > 0".into(),
        ));
    }
    let out: Vec<usize> = (0..n)
        .map(|k| {
            let j = k * c / n;
            let next = sorted
                .get(j + 1)
                .copied()
                .unwrap_or(len.saturating_sub(seq_len));
            sorted[j] + next.saturating_sub(sorted[j]) / 2
        })
        .collect();
    for &v in &out {
        let clash = v + seq_len > len || sorted.iter().any(|&o| v < o + seq_len && o < v + seq_len);
        if clash {
            return Err(CalibError::Stats(format!(
                "the calibration stream ({len} tokens) is too short for {n} validation windows \
                 of {seq_len} tokens between {c} calibration windows"
            )));
        }
    }
    Ok(out)
}

/// `n` validation windows from the end of the calibration stream (the text nearest a
/// held-out text that follows it), non-overlapping, skipping every calibration window; the
/// first is the last window of the stream. Fails if the stream has no room for `n`.
pub fn recent_offsets(
    len: usize,
    calib_offsets: &[usize],
    n: usize,
    seq_len: usize,
) -> Result<Vec<usize>, CalibError> {
    let mut out = Vec::with_capacity(n);
    let mut end = len;
    while out.len() < n && end >= seq_len && seq_len > 0 {
        let start = end - seq_len;
        match calib_offsets
            .iter()
            .filter(|&&o| start < o + seq_len && o < end)
            .min()
        {
            Some(&o) => end = o,
            None => {
                out.push(start);
                end = start;
            }
        }
    }
    if out.len() < n {
        return Err(CalibError::Stats(format!(
            "the calibration stream ({len} tokens) is too short for {n} validation windows \
             of {seq_len} tokens beside {} calibration windows",
            calib_offsets.len()
        )));
    }
    Ok(out)
}

/// The windows at `offsets`.
pub fn windows<'a>(tokens: &'a [u32], offsets: &[usize], seq_len: usize) -> Vec<&'a [u32]> {
    offsets.iter().map(|&o| &tokens[o..o + seq_len]).collect()
}

/// Which captured tensor a linear reads: q/k/v share one, gate/up share one.
pub fn input_slot(kind: LayerKind) -> LayerKind {
    match kind {
        LayerKind::K | LayerKind::V => LayerKind::Q,
        LayerKind::Up => LayerKind::Gate,
        k => k,
    }
}

/// What a block's dense pass collected, per input slot (see [`input_slot`]).
#[derive(Debug, Default)]
pub struct BlockInputs {
    /// Channel statistics per slot.
    pub stats: BTreeMap<LayerKind, ChannelStats>,
    /// SparseGPT Hessians per slot, when asked for.
    pub hessians: BTreeMap<LayerKind, HessianAccumulator>,
    /// Seconds spent accumulating the Hessians (0 without them): what they add to the pass.
    pub hessian_seconds: f64,
}

impl BlockInputs {
    /// Statistics of the inputs of `kind`.
    pub fn stats(&self, kind: LayerKind) -> Option<&ChannelStats> {
        self.stats.get(&input_slot(kind))
    }

    /// Hessian of the inputs of `kind`.
    pub fn hessian(&self, kind: LayerKind) -> Option<&HessianAccumulator> {
        self.hessians.get(&input_slot(kind))
    }
}

/// Dense pass of `block` over `batches` (each `[b, seq, hidden]`), accumulating statistics of
/// every linear's inputs, and SparseGPT Hessians (one sample per window) if `hessians`.
pub fn collect_block_inputs(
    block: &Block,
    batches: &[Tensor],
    rope: &Rope,
    hessians: bool,
) -> Result<BlockInputs, CalibError> {
    collect_block_inputs_on(block, batches, rope, hessians, DevicePath::Auto)
}

/// [`collect_block_inputs`], accumulating where `how` says (the pruning run's
/// [`DevicePath`]).
pub fn collect_block_inputs_on(
    block: &Block,
    batches: &[Tensor],
    rope: &Rope,
    hessians: bool,
    how: DevicePath,
) -> Result<BlockInputs, CalibError> {
    collect_how(block, batches, rope, hessians, false, how).map(|(acc, _)| acc)
}

/// Like [`collect_block_inputs`] (with Hessians when `hessians`), but runs the whole block and
/// also returns its outputs (the next block's dense inputs), one tensor per batch; accumulating
/// as `how` says (the dense passes of allocation and search, and `autoprune bench --stats`,
/// which compares the host and tensor paths with it).
pub fn collect_block_inputs_with(
    block: &Block,
    batches: &[Tensor],
    rope: &Rope,
    hessians: bool,
    how: DevicePath,
) -> Result<(BlockInputs, Vec<Tensor>), CalibError> {
    collect_how(block, batches, rope, hessians, true, how)
}

fn collect_how(
    block: &Block,
    batches: &[Tensor],
    rope: &Rope,
    hessians: bool,
    outputs: bool,
    how: DevicePath,
) -> Result<(BlockInputs, Vec<Tensor>), CalibError> {
    let mut acc = BlockInputs::default();
    // The tensor path's accumulators, moved into `acc` when the block ends.
    let mut on_device: BTreeMap<LayerKind, device::TensorStats> = BTreeMap::new();
    let mut device_h: BTreeMap<LayerKind, device::TensorHessian> = BTreeMap::new();
    let mut outs = Vec::new();
    for x in batches {
        let mut err: Option<CalibError> = None;
        let mut capture = |kind: LayerKind, t: &Tensor| -> crate::model::Result<()> {
            if input_slot(kind) != kind {
                return Ok(()); // shared input, accumulated under its slot
            }
            let (b, _, cols) = t.dims3()?;
            if how.on_tensor(t.device()) {
                use std::collections::btree_map::Entry;
                let mut add = || -> Result<(), CalibError> {
                    let stats = match on_device.entry(kind) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => e.insert(device::TensorStats::new(cols, t.device())?),
                    };
                    stats.add(t)?;
                    if hessians {
                        let start = std::time::Instant::now();
                        let h = match device_h.entry(kind) {
                            Entry::Occupied(e) => e.into_mut(),
                            Entry::Vacant(e) => {
                                e.insert(device::TensorHessian::new(cols, t.device())?)
                            }
                        };
                        h.add(t, b)?;
                        acc.hessian_seconds += start.elapsed().as_secs_f64();
                    }
                    Ok(())
                };
                if let Err(e) = add() {
                    err.get_or_insert(e);
                }
                return Ok(());
            }
            let mut record = |data: &[f32]| {
                acc.stats
                    .entry(kind)
                    .or_insert_with(|| ChannelStats::new(cols))
                    .accumulate(data);
                if hessians {
                    let t = std::time::Instant::now();
                    let h = acc
                        .hessians
                        .entry(kind)
                        .or_insert_with(|| HessianAccumulator::new(cols));
                    for sample in data.chunks_exact(data.len() / b) {
                        if let Err(e) = h.add_batch(sample, 1) {
                            err.get_or_insert(CalibError::Stats(e.to_string()));
                        }
                    }
                    acc.hessian_seconds += t.elapsed().as_secs_f64();
                }
            };
            // Read CPU activations in place (no copy of e.g. 4096 × 1536 values per capture).
            if t.device().is_cpu() && t.is_contiguous() && t.dtype() == candle_core::DType::F32 {
                crate::model::with_cpu_f32(t, record)?;
            } else {
                record(&t.flatten_all()?.to_vec1::<f32>()?);
            }
            Ok(())
        };
        if outputs {
            outs.push(block.forward(x, rope, &mut capture)?);
        } else {
            block.collect_inputs(x, rope, &mut capture)?;
        }
        if let Some(e) = err {
            return Err(e);
        }
    }
    for (kind, s) in on_device {
        acc.stats.insert(kind, s.finish()?);
    }
    for (kind, h) in device_h {
        let start = std::time::Instant::now();
        acc.hessians.insert(kind, h.finish()?);
        acc.hessian_seconds += start.elapsed().as_secs_f64();
    }
    Ok((acc, outs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_offsets_match_the_protocol() {
        // PROTOCOL.md: L = 1,887,111, n = 32, seqlen 512 → 0, 58956, 117912, …, 1827642.
        let o = window_offsets(1_887_111, 32, 512, Sampler::Even).unwrap();
        assert_eq!(o.len(), 32);
        assert_eq!(&o[..3], &[0, 58956, 117912]);
        assert_eq!(o[31], 1_827_642);
    }

    #[test]
    fn validation_windows_sit_between_calibration_windows() {
        let cal = window_offsets(1_887_111, 32, 512, Sampler::Even).unwrap();
        let v = validation_offsets(1_887_111, &cal, 16, 512).unwrap();
        assert_eq!(v.len(), 16);
        assert_eq!(v[0], 58956 / 2);
        for &x in &v {
            assert!(cal.iter().all(|&o| x + 512 <= o || o + 512 <= x));
        }
        // Too dense: windows of 512 every 600 tokens leave no room.
        let cal: Vec<usize> = (0..10).map(|k| k * 600).collect();
        assert!(validation_offsets(6000, &cal, 4, 512).is_err());
    }

    #[test]
    fn recent_windows_come_from_the_end_and_skip_calibration_windows() {
        let cal = window_offsets(1_887_111, 32, 512, Sampler::Even).unwrap();
        let v = recent_offsets(1_887_111, &cal, 64, 512).unwrap();
        assert_eq!(v.len(), 64);
        assert_eq!(v[0], 1_887_111 - 512);
        // The last calibration window (1,827,642) sits among the last 120 windows: skipped.
        for w in v.windows(2) {
            assert!(w[1] + 512 <= w[0], "descending, disjoint: {w:?}");
        }
        for &x in &v {
            assert!(cal.iter().all(|&o| x + 512 <= o || o + 512 <= x));
        }
        let v = recent_offsets(1_887_111, &cal, 200, 512).unwrap();
        assert!(
            v.iter().any(|&x| x < 1_827_642),
            "crosses the last calibration window"
        );
        // Windows of 512 every 600 tokens leave no room.
        let cal: Vec<usize> = (0..10).map(|k| k * 600).collect();
        assert!(recent_offsets(6000, &cal, 4, 512).is_err());
        assert!(recent_offsets(100, &[], 1, 512).is_err());
    }

    #[test]
    fn random_offsets_are_seeded_and_in_range() {
        let a = window_offsets(10_000, 16, 512, Sampler::Random { seed: 3 }).unwrap();
        let b = window_offsets(10_000, 16, 512, Sampler::Random { seed: 3 }).unwrap();
        let c = window_offsets(10_000, 16, 512, Sampler::Random { seed: 4 }).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|&o| o + 512 < 10_000));
    }

    #[test]
    fn given_offsets_must_fit() {
        assert!(check_offsets(1000, &[0, 488], 512).is_ok());
        assert!(check_offsets(1000, &[489], 512).is_err());
        assert!(check_offsets(1000, &[], 512).is_err());
    }

    #[test]
    fn too_short_text_is_an_error() {
        assert!(matches!(
            window_offsets(512, 1, 512, Sampler::Even),
            Err(CalibError::TooShort { .. })
        ));
    }
}
