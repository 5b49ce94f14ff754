//! A bf16 matrix product for CPUs with AVX512-BF16 (`vdpbf16ps`): `C = A·Bᵀ` with f32
//! operands rounded to bf16 (round to nearest even) and products accumulated in f32.
//!
//! Why: the SOTU-512 run is GEMM-bound and f32 sits near this CPU class's peak
//! (≈ 95 GFLOP/s per core). `vdpbf16ps` does two multiply-adds per f32 lane, twice the f32
//! FMA's work per instruction. The price is precision: each operand keeps 8 significant bits,
//! so results differ from f32 by about 0.1–0.5 % per element. It is therefore opt-in
//! (`--precision bf16`), and its effect on perplexity is measured in the README, never
//! assumed.
//!
//! Layout: `A` rows are converted to bf16 pairs (one `u32` holds columns `2p` and `2p+1`);
//! `B` (`[n, k]`, a linear layer's weight) is packed into panels of 32 output columns, each a
//! run of `k/2` groups of 32 pairs, so one 64-byte load gives 16 columns × one pair. The
//! micro-kernel keeps `MR × 32` outputs in 2·`MR` registers and broadcasts one pair of each
//! `A` row per step. Odd `k` is padded with a zero column; ragged `n` with zero columns that
//! are never stored.

use std::cell::RefCell;

/// Output columns per packed panel (two 16-lane registers).
const NR: usize = 32;
/// Rows of `A` per micro-kernel call (2·`MR` accumulators + 2 `B` registers + 1 broadcast).
const MR: usize = 12;

/// Whether this CPU can run the bf16 product.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f") && has!("avx512bw") && has!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Round an f32 to bf16, to nearest even (NaN stays NaN, f32 denormals become signed zero):
/// the scalar twin of `vcvtne2ps2bf16`, which treats denormal inputs as zero, for the tails
/// the vector loop leaves.
pub(crate) fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    if x.is_subnormal() {
        return ((b >> 16) & 0x8000) as u16;
    }
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1));
    (rounded >> 16) as u16
}

/// The f32 value of a bf16.
#[cfg(test)]
pub(crate) fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

thread_local! {
    static A_PAIRS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static B_PANELS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static ROW: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

fn grow(buf: &mut Vec<u32>, len: usize) -> &mut [u32] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// `C[m×n] = A[m×k] · Bᵀ` for row-major `A` (leading dimension `lda`) and `B[n×k]` (`ldb`),
/// in bf16 with f32 accumulation, on the calling thread. `C` (`ldc`) is overwritten.
///
/// # Safety
/// The pointers must be valid for the extents described, `C` must not overlap `A` or `B`,
/// and [`available`] must be true.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_nt(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    debug_assert!(available());
    if m == 0 || n == 0 {
        return;
    }
    let kp = k.div_ceil(2);
    let panels = n.div_ceil(NR);
    A_PAIRS.with_borrow_mut(|abuf| {
        B_PANELS.with_borrow_mut(|bbuf| {
            let apairs = grow(abuf, m * kp);
            for (i, dst) in apairs.chunks_exact_mut(kp).enumerate() {
                // SAFETY: row i of A has k elements at a + i·lda.
                let src = unsafe { std::slice::from_raw_parts(a.add(i * lda), k) };
                unsafe { x86::pairs(src, dst) };
            }
            let bpanels = grow(bbuf, panels * kp * NR);
            ROW.with_borrow_mut(|row| {
                let row = grow(row, kp);
                for j in 0..panels * NR {
                    let (q, lane) = (j / NR, j % NR);
                    let panel = &mut bpanels[q * kp * NR..(q + 1) * kp * NR];
                    if j < n {
                        // SAFETY: row j of B has k elements at b + j·ldb.
                        let src = unsafe { std::slice::from_raw_parts(b.add(j * ldb), k) };
                        unsafe { x86::pairs(src, row) };
                        for (p, &w) in row.iter().enumerate() {
                            panel[p * NR + lane] = w;
                        }
                    } else {
                        for p in 0..kp {
                            panel[p * NR + lane] = 0;
                        }
                    }
                }
            });
            for q in 0..panels {
                let panel = &bpanels[q * kp * NR..(q + 1) * kp * NR];
                let cols = NR.min(n - q * NR);
                let mut r0 = 0;
                while r0 < m {
                    let rows = MR.min(m - r0);
                    let ap = apairs[r0 * kp..].as_ptr();
                    // SAFETY: rows r0..r0+rows of the pairs, the panel, and C's rows
                    // r0..r0+rows × columns q·NR..q·NR+cols are inside their buffers.
                    unsafe {
                        let cp = c.add(r0 * ldc + q * NR);
                        x86::micro(rows, kp, ap, panel.as_ptr(), cp, ldc, cols);
                    }
                    r0 += rows;
                }
            }
        })
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{to_bf16, MR, NR};

    /// `dst[p] = bf16(src[2p]) | bf16(src[2p+1]) << 16`, a zero high half when `src` is odd.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pairs(src: &[f32], dst: &mut [u32]) {
        let k = src.len();
        let full = k / 32;
        for c in 0..full {
            // SAFETY: 32 floats at 32·c are inside src; 16 words at 16·c inside dst.
            unsafe {
                let lo = _mm512_loadu_ps(src.as_ptr().add(32 * c));
                let hi = _mm512_loadu_ps(src.as_ptr().add(32 * c + 16));
                let h = _mm512_cvtne2ps_pbh(hi, lo);
                _mm512_storeu_si512(
                    dst.as_mut_ptr().add(16 * c).cast(),
                    std::mem::transmute::<__m512bh, __m512i>(h),
                );
            }
        }
        for (p, d) in dst.iter_mut().enumerate().skip(full * 16) {
            let lo = src.get(2 * p).map_or(0, |&x| to_bf16(x));
            let hi = src.get(2 * p + 1).map_or(0, |&x| to_bf16(x));
            *d = u32::from(lo) | (u32::from(hi) << 16);
        }
    }

    /// `rows` (≤ MR) rows of C, `cols` (≤ NR) columns: `C = A·Bᵀ` over `kp` pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn micro(
        rows: usize,
        kp: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        // SAFETY (all arms): forwarded from the caller.
        unsafe {
            match rows {
                12 => kernel::<12>(kp, a, b, c, ldc, cols),
                11 => kernel::<11>(kp, a, b, c, ldc, cols),
                10 => kernel::<10>(kp, a, b, c, ldc, cols),
                9 => kernel::<9>(kp, a, b, c, ldc, cols),
                8 => kernel::<8>(kp, a, b, c, ldc, cols),
                7 => kernel::<7>(kp, a, b, c, ldc, cols),
                6 => kernel::<6>(kp, a, b, c, ldc, cols),
                5 => kernel::<5>(kp, a, b, c, ldc, cols),
                4 => kernel::<4>(kp, a, b, c, ldc, cols),
                3 => kernel::<3>(kp, a, b, c, ldc, cols),
                2 => kernel::<2>(kp, a, b, c, ldc, cols),
                _ => kernel::<1>(kp, a, b, c, ldc, cols),
            }
        }
    }

    const _: () = assert!(MR == 12 && NR == 32);

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[inline]
    unsafe fn kernel<const R: usize>(
        kp: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        // SAFETY: A rows are kp words apart; the panel holds kp groups of NR words.
        unsafe {
            for p in 0..kp {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
                let b1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*a.add(r * kp + p) as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
                }
            }
            let (m0, m1): (__mmask16, __mmask16) = if cols >= NR {
                (!0, !0)
            } else if cols > 16 {
                (!0, ((1u32 << (cols - 16)) - 1) as u16)
            } else {
                (((1u32 << cols) - 1) as u16, 0)
            };
            for (r, acc) in acc.iter().enumerate() {
                let row = c.add(r * ldc);
                _mm512_mask_storeu_ps(row, m0, acc[0]);
                _mm512_mask_storeu_ps(row.add(16), m1, acc[1]);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub(super) unsafe fn pairs(_: &[f32], _: &mut [u32]) {
        unreachable!("bf16 products need x86-64 with AVX512-BF16")
    }
    pub(super) unsafe fn micro(
        _: usize,
        _: usize,
        _: *const u32,
        _: *const u32,
        _: *mut f32,
        _: usize,
        _: usize,
    ) {
        unreachable!("bf16 products need x86-64 with AVX512-BF16")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::pattern as data;

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even (1.0).
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even.
        assert_eq!(
            from_bf16(to_bf16(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// Against an f64 product of the bf16-rounded operands: only the f32 accumulation differs.
    #[test]
    #[cfg_attr(
        not(autoprune_cpu_avx512_bf16),
        ignore = "needs AVX512-BF16 (vdpbf16ps)"
    )]
    fn matches_a_product_of_the_rounded_operands() {
        crate::testutil::require_cpu(&["avx512f", "avx512bw", "avx512bf16"]);
        // Ragged everything: m not a multiple of MR, n not of NR, odd k, k past one vector.
        for &(m, n, k) in &[
            (1, 1, 1),
            (13, 33, 7),
            (25, 70, 65),
            (12, 32, 576),
            (40, 17, 33),
        ] {
            let (lda, ldb, ldc) = (k + 3, k + 1, n + 5);
            let a = data(m * lda, 1);
            let b = data(n * ldb, 2);
            let mut c = vec![f32::NAN; m * ldc];
            // SAFETY: the buffers cover the described extents.
            unsafe {
                gemm_nt(
                    m,
                    n,
                    k,
                    a.as_ptr(),
                    lda,
                    b.as_ptr(),
                    ldb,
                    c.as_mut_ptr(),
                    ldc,
                )
            };
            let r = |x: f32| f64::from(from_bf16(to_bf16(x)));
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|p| r(a[i * lda + p]) * r(b[j * ldb + p])).sum();
                    let mag: f64 = (0..k)
                        .map(|p| (r(a[i * lda + p]) * r(b[j * ldb + p])).abs())
                        .sum();
                    let got = f64::from(c[i * ldc + j]);
                    assert!(
                        (got - want).abs() <= 1e-6 * mag + 1e-30,
                        "{m}x{n}x{k} at ({i},{j}): {got} vs {want}"
                    );
                }
                // Padding columns are never stored.
                assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()));
            }
        }
    }

    #[test]
    #[cfg_attr(
        not(autoprune_cpu_avx512_bf16),
        ignore = "needs AVX512-BF16 (vdpbf16ps)"
    )]
    fn vector_and_scalar_conversion_agree() {
        crate::testutil::require_cpu(&["avx512f", "avx512bw", "avx512bf16"]);
        let mut src: Vec<f32> = data(70, 3)
            .iter()
            .enumerate()
            .map(|(i, x)| x * (1.0 + i as f32 * 1e-3))
            .collect();
        // Ties, a denormal, a negative denormal and the largest finite value, in both the
        // vector part and the scalar tail.
        for base in [0, 64] {
            src[base] = 1.0 + 2f32.powi(-8);
            src[base + 1] = 1.0e-39;
            src[base + 2] = -1.0e-40;
            src[base + 3] = f32::MAX;
        }
        let mut dst = vec![0u32; 35];
        // SAFETY: available() was checked.
        unsafe { x86::pairs(&src, &mut dst) };
        for (p, w) in dst.iter().enumerate() {
            assert_eq!((*w & 0xffff) as u16, to_bf16(src[2 * p]), "pair {p} low");
            assert_eq!((*w >> 16) as u16, to_bf16(src[2 * p + 1]), "pair {p} high");
        }
    }
}
