//! Fused CPU kernels for the element-wise work between the GEMMs: causal softmax and SwiGLU,
//! plus a vectorizable `exp`. Other devices take the plain tensor-op path.
//!
//! Why: on the CPU, candle's softmax and SiLU call the scalar libm `expf` and make a pass per
//! op; for SmolLM2 at 512 tokens the masked softmax alone cost as much as the Q/K/V GEMMs.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::Result;

/// Elements per parallel task of element-wise kernels (large enough to amortise scheduling,
/// small enough to split a 512×1536 activation across two cores).
const CHUNK: usize = 1 << 14;

/// `exp(x)` in f32, Cephes-style: `2ⁿ · p(r)` with `r = x − n·ln2`, |r| ≤ ln2/2, and a
/// degree-6 polynomial; relative error ≈ 1e-7. Only adds, multiplies, compares and bit moves
/// (no `floor`, which is a libm call on baseline x86-64), so loops over slices vectorize.
/// Inputs are clamped to [−87, 88] (results stay normal and finite); NaN propagates.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln2 split in a part exact in f32 and a correction (Cody–Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer n and leaves n in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5; // Cephes' 5.0000001201e-1 rounds to 0.5 in f32
    let y = p * r * r + r + 1.0;
    // n ∈ [−126, 127] after the clamp, so n + 127 fits the 8 exponent bits: shifting the
    // low mantissa bits of `shifted` (n plus a multiple of 2⁹) into place builds 2ⁿ.
    let pow2n = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    y * pow2n
}

/// `Σ exp(v − max)` over `row`: f32 sums of 512-element blocks, added up in f64.
pub(crate) fn sum_exp_shifted(row: &[f32], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2, the only feature the function is compiled for.
        return unsafe { avx2::sum_exp_shifted(row, max) };
    }
    sum_exp_body(row, max)
}

#[inline(always)]
fn sum_exp_body(row: &[f32], max: f32) -> f64 {
    // Exponentials go through a stack buffer: a plain map loop vectorizes, a fused
    // map-and-accumulate loop does not. A `for`, not `map().sum()`: iterator adaptors may be
    // outlined out of the AVX2-compiled caller.
    let mut buf = [0f32; 512];
    let mut total = 0f64;
    for c in row.chunks(buf.len()) {
        let buf = &mut buf[..c.len()];
        exp_into(buf, c, 1.0, max);
        total += f64::from(lane_sum(buf));
    }
    total
}

/// Largest element (NaNs are skipped here; they still poison the sums that follow).
pub(crate) fn max_f32(xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `sum_exp_shifted`.
        return unsafe { avx2::max_f32(xs) };
    }
    max_body(xs)
}

#[inline(always)]
fn max_body(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let mut m = f32::NEG_INFINITY;
    for &v in chunks.remainder() {
        m = if v > m { v } else { m };
    }
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = if v > *l { v } else { *l };
        }
    }
    for l in lanes {
        m = if l > m { l } else { m };
    }
    m
}

/// `out[i] = exp(scale · src[i] − shift)`.
#[inline(always)]
fn exp_into(out: &mut [f32], src: &[f32], scale: f32, shift: f32) {
    for (o, &v) in out.iter_mut().zip(src) {
        *o = exp_f32(v * scale - shift);
    }
}

/// Sum in eight interleaved lanes (vectorizes; the order is fixed, so results are repeatable).
#[inline(always)]
fn lane_sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `out[..keep] = softmax(scale · row[..keep])`, `out[keep..]` left at 0.
#[inline(always)]
fn softmax_row_body(out: &mut [f32], row: &[f32], keep: usize, scale: f32) {
    let max = max_body(&row[..keep]) * scale;
    exp_into(&mut out[..keep], &row[..keep], scale, max);
    let inv = 1.0 / lane_sum(&out[..keep]);
    out[..keep].iter_mut().for_each(|o| *o *= inv);
}

/// In place: `row[..keep] = softmax(scale · row[..keep])`, `row[keep..] = 0` (the same
/// arithmetic as [`softmax_row_body`]).
#[inline(always)]
fn softmax_row_inplace_body(row: &mut [f32], keep: usize, scale: f32) {
    let (live, masked) = row.split_at_mut(keep);
    let max = max_body(live) * scale;
    for v in live.iter_mut() {
        *v = exp_f32(*v * scale - max);
    }
    let inv = 1.0 / lane_sum(live);
    live.iter_mut().for_each(|o| *o *= inv);
    masked.fill(0.0);
}

/// Causal softmax of one score row in place: the first `keep` entries (≥ 1) become
/// `softmax(scale · row[..keep])`, the rest 0.
pub(crate) fn softmax_row_inplace(row: &mut [f32], keep: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `sum_exp_shifted`.
        return unsafe { avx2::softmax_row_inplace(row, keep, scale) };
    }
    softmax_row_inplace_body(row, keep, scale)
}

fn softmax_row(out: &mut [f32], row: &[f32], keep: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `sum_exp_shifted`.
        return unsafe { avx2::softmax_row(out, row, keep, scale) };
    }
    softmax_row_body(out, row, keep, scale)
}

/// `out = silu(g) · u` element-wise.
#[inline(always)]
fn swiglu_body(out: &mut [f32], g: &[f32], u: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + exp_f32(-g)) * u;
    }
}

/// `out = silu(g) · u` element-wise, on the calling thread.
pub(crate) fn swiglu_slice(out: &mut [f32], g: &[f32], u: &[f32]) {
    swiglu_chunk(out, g, u)
}

fn swiglu_chunk(out: &mut [f32], g: &[f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `sum_exp_shifted`.
        return unsafe { avx2::swiglu(out, g, u) };
    }
    swiglu_body(out, g, u)
}

/// Whether the running CPU has AVX2 (the check caches its answer).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// The kernels compiled for AVX2: 8-wide loops instead of baseline x86-64's 4-wide SSE2.
/// Only AVX2, not FMA, so every result is bit-identical to the portable build.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sum_exp_shifted(row: &[f32], max: f32) -> f64 {
        super::sum_exp_body(row, max)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn max_f32(xs: &[f32]) -> f32 {
        super::max_body(xs)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn softmax_row(out: &mut [f32], row: &[f32], keep: usize, scale: f32) {
        super::softmax_row_body(out, row, keep, scale)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn softmax_row_inplace(row: &mut [f32], keep: usize, scale: f32) {
        super::softmax_row_inplace_body(row, keep, scale)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn swiglu(out: &mut [f32], g: &[f32], u: &[f32]) {
        super::swiglu_body(out, g, u)
    }
}

/// Causal softmax of `scale · scores` (`scale` > 0) over the last axis of a `[..., k·t, t]`
/// tensor whose rows cycle through query positions 0..t (stacked heads of a KV group): the
/// row of position `i` keeps keys `0..=i`, the rest become 0.
pub(crate) fn causal_softmax(scores: &Tensor, scale: f32) -> Result<Tensor> {
    Ok(scores.apply_op1_no_bwd(&CausalSoftmax { scale })?)
}

/// `silu(gate) · up` in one pass.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(gate.apply_op2_no_bwd(up, &SwiGlu)?)
}

struct CausalSoftmax {
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout)?;
        let dims = layout.dims();
        let t = dims.last().copied().unwrap_or(0);
        if t == 0 || dims.len() < 2 || !dims[dims.len() - 2].is_multiple_of(t) {
            candle_core::bail!("causal-softmax expects [..., k·t, t], got {dims:?}");
        }
        let mut dst = vec![0f32; src.len()];
        let scale = self.scale;
        dst.par_chunks_mut(t)
            .zip(src.par_chunks(t))
            .enumerate()
            .for_each(|(r, (out, row))| softmax_row(out, row, r % t + 1, scale));
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("swiglu: gate {:?} and up {:?} differ", l1.dims(), l2.dims());
        }
        let (g, u) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let mut dst = vec![0f32; g.len()];
        dst.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(out, (g, u))| swiglu_chunk(out, g, u));
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((lo, hi)) => Ok(&data[lo..hi]),
        None => candle_core::bail!("fused kernels need contiguous inputs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f64;
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 1.7e-4;
            let rel = (f64::from(exp_f32(x)) / f64::from(x).exp() - 1.0).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NEG_INFINITY) < 1e-37);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn causal_softmax_equals_masked_softmax() {
        let dev = Device::Cpu;
        let t = 5;
        let data: Vec<f32> = (0..2 * t * t)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 2.0)
            .collect();
        let s = Tensor::from_vec(data, (2, t, t), &dev).unwrap();
        let got = causal_softmax(&s, 0.5).unwrap();
        let mask: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
        let want =
            candle_nn::ops::softmax_last_dim(&(s * 0.5).unwrap().broadcast_add(&mask).unwrap())
                .unwrap();
        let d = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    }

    #[test]
    fn swiglu_hand_values() {
        // silu(1) · 2 = 2 / (1 + e⁻¹) = 1.4621172; silu(−2) · 3 = −6 / (1 + e²) = −0.7152175.
        let dev = Device::Cpu;
        let g = Tensor::new(&[1f32, -2.0], &dev).unwrap();
        let u = Tensor::new(&[2f32, 3.0], &dev).unwrap();
        let y = swiglu(&g, &u).unwrap().to_vec1::<f32>().unwrap();
        assert!(
            (y[0] - 1.462_117_2).abs() < 1e-6 && (y[1] + 0.715_217_5).abs() < 1e-6,
            "{y:?}"
        );
    }
}
