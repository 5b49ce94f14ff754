//! f32 matrix products of the CPU forward: OpenBLAS's `cblas_sgemm` when the system has it,
//! the `gemm` crate (candle's own kernel) otherwise, split across the rayon pool by us.
//!
//! Why: the forward is GEMM-bound. Each product is split into row panels (column panels for
//! the very wide output head), one single-threaded product per rayon task: one thread pool for
//! everything (no second pool spinning against rayon's), outputs written once (candle's matmul
//! zero-fills them first), and bias/residual added per panel while it is in cache. Per core,
//! both kernels run near this CPU class's peak (measured on an AMD EPYC with AVX-512:
//! OpenBLAS's AVX-512 kernel 100–105 GFLOP/s, `gemm`'s AVX2 kernel 85–105); end to end on
//! SOTU-512 OpenBLAS is only ≈ 2 % faster.
//!
//! **Determinism.** The panels of a product are a function of its shape only ([`panels`]),
//! never of the thread count, and each panel is one single-threaded kernel call, so a product
//! gives the same bits on any number of threads, with any kernel family. Splitting does change
//! bits on some families — OpenBLAS's Haswell/Zen `sgemm` rounds a row differently depending
//! on where its panel starts (measured with Debian's 0.3.21: row panels that start at a
//! multiple of 12 agree with one call, other row panels and column panels do not), while its
//! SkylakeX kernel and the `gemm` crate do not — which is why the split is fixed. Different
//! kernel families (SkylakeX vs Haswell vs `gemm`) round differently from each other; the
//! family in use is reported ([`describe`]).
//!
//! OpenBLAS is loaded lazily (`dlopen` at the first product, or at [`init`]), because Debian's
//! build picks its kernels from `OPENBLAS_CORETYPE` when the library loads and may detect a
//! recent CPU as generic ("Prescott": a third of the speed). Before loading, and only if the
//! user has not set them, we set `OPENBLAS_CORETYPE` to the best kernel family the running CPU
//! really supports (`SkylakeX` with AVX-512 F/BW/VL/DQ/CD, `Haswell` with AVX2+FMA, else
//! unset) and `OPENBLAS_NUM_THREADS=1`, and remove them again once it is loaded.
//! `AUTOPRUNE_BLAS=off` disables OpenBLAS; `AUTOPRUNE_BLAS=<path>` loads that library instead
//! of `libopenblas.so.0`.

use std::ffi::{c_char, c_int, CStr};
use std::sync::OnceLock;

use rayon::prelude::*;

/// The single-threaded kernel that computes each panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// `cblas_sgemm` of a dynamically loaded OpenBLAS.
    OpenBlas,
    /// The `gemm` crate (what candle's CPU matmul uses).
    Gemm,
    /// bf16 operands with f32 accumulation (AVX512-BF16, see [`super::bf16`]) for the `A·Bᵀ`
    /// products of linear layers; any other product falls back to the f32 backend.
    Bf16,
}

impl Backend {
    /// The f32 backend to use where this one has no kernel (itself unless bf16).
    pub(crate) fn f32(self) -> Backend {
        match self {
            Backend::Bf16 => backend(),
            other => other,
        }
    }
}

/// The backend of this process: OpenBLAS if it could be loaded, else `gemm`.
pub(crate) fn backend() -> Backend {
    if openblas().is_some() {
        Backend::OpenBlas
    } else {
        Backend::Gemm
    }
}

/// Load OpenBLAS now (otherwise it loads at the first CPU product) and describe the backend.
/// Call it early in `main`, before other threads start: loading sets `OPENBLAS_CORETYPE` in
/// the process environment for a moment.
pub fn init() -> String {
    let _ = openblas();
    describe()
}

/// A short description of the backend for reports, e.g. `openblas (SkylakeX)`.
pub fn describe() -> String {
    match openblas() {
        Some(b) => format!("openblas ({})", b.core),
        None => "gemm".to_string(),
    }
}

/// The machine's arithmetic as reports record it: the product kernels and the CPU features
/// that choose them (results are bit-identical between machines with the same kernels; see
/// `docs/MACHINES.md`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuReport {
    /// The f32 product backend, e.g. `openblas (Haswell)` or `gemm`.
    pub matmul: String,
    /// The features that select kernels: `avx2`, `fma`, `avx512f`, `avx512bw`, `avx512vl`,
    /// `avx512dq`, `avx512cd`, `avx512bf16` (those present).
    pub features: Vec<String>,
    /// Threads of the pool (results do not depend on it).
    pub threads: usize,
    /// Panels a large product is split into (results depend on it; fixed).
    pub panels: usize,
}

/// This process's [`CpuReport`].
pub fn cpu_report() -> CpuReport {
    #[allow(unused_mut)]
    let mut features = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        for (name, present) in [
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512vl", has!("avx512vl")),
            ("avx512dq", has!("avx512dq")),
            ("avx512cd", has!("avx512cd")),
            ("avx512bf16", has!("avx512bf16")),
        ] {
            if present {
                features.push(name.to_string());
            }
        }
    }
    CpuReport {
        matmul: describe(),
        features,
        threads: rayon::current_num_threads(),
        panels: PANEL_COUNT,
    }
}

// ---------------------------------------------------------------------------------------------
// OpenBLAS

type SgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

type DgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f64,
    *const f64,
    c_int,
    *const f64,
    c_int,
    f64,
    *mut f64,
    c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

struct OpenBlas {
    sgemm: SgemmFn,
    dgemm: DgemmFn,
    core: String,
    // Keeps the library mapped for as long as `sgemm` may be called (the process lifetime).
    _lib: libloading::Library,
}

static OPENBLAS: OnceLock<Option<OpenBlas>> = OnceLock::new();

fn openblas() -> Option<&'static OpenBlas> {
    OPENBLAS
        .get_or_init(|| {
            let choice = std::env::var("AUTOPRUNE_BLAS").unwrap_or_default();
            if matches!(choice.as_str(), "off" | "0" | "none" | "gemm") {
                return None;
            }
            let names: Vec<&str> = if choice.is_empty() {
                vec!["libopenblas.so.0", "libopenblas.so"]
            } else {
                vec![choice.as_str()]
            };
            match load_openblas(&names) {
                Ok(b) => Some(b),
                Err(why) => {
                    eprintln!(
                        "note: OpenBLAS not used ({why}); matrix products use the gemm crate \
                         (a few percent slower; libopenblas0-pthread provides OpenBLAS)"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// The OpenBLAS kernel family for the running CPU: the fastest one whose instructions it has.
fn coretype() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f")
            && has!("avx512bw")
            && has!("avx512vl")
            && has!("avx512dq")
            && has!("avx512cd")
        {
            return Some("SkylakeX");
        }
        if has!("avx2") && has!("fma") {
            return Some("Haswell");
        }
    }
    None
}

fn load_openblas(names: &[&str]) -> Result<OpenBlas, String> {
    // OpenBLAS reads these once, while the library loads (just below). Setting the
    // environment races only with other threads reading it at this instant (call
    // [`init`] early to load before any other thread starts). What we set is removed again
    // after loading, so child processes do not inherit it.
    let mut set_here = Vec::new();
    if std::env::var_os("OPENBLAS_CORETYPE").is_none() {
        if let Some(core) = coretype() {
            std::env::set_var("OPENBLAS_CORETYPE", core);
            set_here.push("OPENBLAS_CORETYPE");
        }
    }
    if std::env::var_os("OPENBLAS_NUM_THREADS").is_none() {
        // We parallelize ourselves: no OpenBLAS thread pool.
        std::env::set_var("OPENBLAS_NUM_THREADS", "1");
        set_here.push("OPENBLAS_NUM_THREADS");
    }
    let mut last = String::new();
    let lib = names.iter().find_map(|name| {
        // SAFETY: loading runs the library's initializers; OpenBLAS's only detect the CPU
        // and allocate buffers.
        match unsafe { libloading::Library::new(*name) } {
            Ok(lib) => Some(lib),
            Err(e) => {
                last = e.to_string();
                None
            }
        }
    });
    for var in set_here {
        std::env::remove_var(var);
    }
    let lib = lib.ok_or(last)?;
    // SAFETY: the symbols are declared with their C prototypes from cblas.h / openblas_config.h.
    let sgemm: SgemmFn = *unsafe { lib.get::<SgemmFn>("cblas_sgemm") }
        .map_err(|e| format!("no cblas_sgemm: {e}"))?;
    // SAFETY: as above, cblas.h's prototype.
    let dgemm: DgemmFn = *unsafe { lib.get::<DgemmFn>("cblas_dgemm") }
        .map_err(|e| format!("no cblas_dgemm: {e}"))?;
    let core =
        unsafe { lib.get::<unsafe extern "C" fn() -> *const c_char>("openblas_get_corename") }
            .ok()
            // SAFETY: returns a static NUL-terminated string.
            .map(|f| {
                unsafe { CStr::from_ptr(f()) }
                    .to_string_lossy()
                    .into_owned()
            })
            .unwrap_or_else(|| "unknown core".into());
    if let Ok(set) = unsafe { lib.get::<unsafe extern "C" fn(c_int)>("openblas_set_num_threads") } {
        // SAFETY: plain setter.
        unsafe { set(1) };
    }
    let blas = OpenBlas {
        sgemm,
        dgemm,
        core,
        _lib: lib,
    };
    check_library(&blas)?;
    Ok(blas)
}

/// A small product against a plain loop: a broken or mislabeled library is not used.
fn check_library(blas: &OpenBlas) -> Result<(), String> {
    let (m, n, k) = (5usize, 7usize, 33usize);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0)
        .collect();
    let b: Vec<f32> = (0..n * k)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
        .collect();
    let mut c = vec![f32::NAN; m * n];
    // SAFETY: the buffers have the sizes the arguments describe.
    unsafe {
        (blas.sgemm)(
            ROW_MAJOR,
            NO_TRANS,
            TRANS,
            m as c_int,
            n as c_int,
            k as c_int,
            1.0,
            a.as_ptr(),
            k as c_int,
            b.as_ptr(),
            k as c_int,
            0.0,
            c.as_mut_ptr(),
            n as c_int,
        )
    };
    for i in 0..m {
        for j in 0..n {
            let want: f64 = (0..k)
                .map(|p| f64::from(a[i * k + p]) * f64::from(b[j * k + p]))
                .sum();
            if (f64::from(c[i * n + j]) - want).abs() > 1e-4 * (1.0 + want.abs()) {
                return Err(format!("cblas_sgemm of {} gave wrong results", blas.core));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Single-threaded kernels

/// `C[m×n] = A[m×k] · op(B)` on one thread, row-major with leading dimensions; `op(B) = Bᵀ`
/// for a row-major `B[n×k]` when `b_trans`, else `B[k×n]`. `C` is overwritten (never read).
///
/// # Safety
/// The pointers must be valid for the extents the sizes and leading dimensions describe, and
/// `C` must not overlap `A` or `B`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    be: Backend,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    b_trans: bool,
    c: *mut f32,
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            // SAFETY: row i of C has n elements.
            unsafe { std::ptr::write_bytes(c.add(i * ldc), 0, n) };
        }
        return;
    }
    match (be, openblas()) {
        (Backend::Bf16, _) if b_trans && super::bf16::available() => {
            // SAFETY: forwarded from the caller; the CPU has AVX512-BF16.
            unsafe { super::bf16::gemm_nt(m, n, k, a, lda, b, ldb, c, ldc) }
        }
        (Backend::Bf16, _) => {
            // SAFETY: forwarded from the caller.
            unsafe { sgemm(be.f32(), m, n, k, a, lda, b, ldb, b_trans, c, ldc) }
        }
        (Backend::OpenBlas, Some(blas)) => {
            // SAFETY: forwarded from the caller.
            unsafe {
                (blas.sgemm)(
                    ROW_MAJOR,
                    NO_TRANS,
                    if b_trans { TRANS } else { NO_TRANS },
                    m as c_int,
                    n as c_int,
                    k as c_int,
                    1.0,
                    a,
                    lda as c_int,
                    b,
                    ldb as c_int,
                    0.0,
                    c,
                    ldc as c_int,
                )
            }
        }
        _ => {
            // gemm's right operand is k×n: element (p, j) at p·rs + j·cs.
            let (rhs_rs, rhs_cs) = if b_trans {
                (1, ldb as isize)
            } else {
                (ldb as isize, 1)
            };
            // SAFETY: forwarded from the caller; read_dst = false, so C is only written.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c,
                    1,
                    ldc as isize,
                    false,
                    a,
                    1,
                    lda as isize,
                    b,
                    rhs_cs,
                    rhs_rs,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        }
    }
}

/// `C[m×n] = A[m×k] · op(B)` in f64, row-major and contiguous (`op(B) = Bᵀ` for `B[n×k]` when
/// `b_trans`, else `B[k×n]`), split into shape-fixed row panels over the rayon pool like the
/// f32 products: OpenBLAS's `cblas_dgemm` per panel where loaded (its blocking is fixed per
/// kernel family), else the `gemm` crate (whose blocking follows the detected caches).
pub(crate) fn matmul_f64(
    a: &[f64],
    m: usize,
    k: usize,
    b: &[f64],
    n: usize,
    b_trans: bool,
) -> Vec<f64> {
    assert!(
        a.len() >= m * k && b.len() >= n * k,
        "matmul_f64: operand too short"
    );
    let mut c: Vec<f64> = vec![0.0; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    let out = c.as_mut_ptr() as usize;
    let (ap, bp) = (a.as_ptr() as usize, b.as_ptr() as usize);
    let ldb = if b_trans { k } else { n };
    par_panels(m, n, k, |(i0, i1), (j0, j1)| {
        let (ap, bp, cp) = (ap as *const f64, bp as *const f64, out as *mut f64);
        let (rows, cols) = (i1 - i0, j1 - j0);
        // SAFETY: rows i0..i1 × columns j0..j1 of C belong to this task only; the operand
        // panels lie inside the asserted extents.
        unsafe {
            let a0 = ap.add(i0 * k);
            let b0 = if b_trans { bp.add(j0 * k) } else { bp.add(j0) };
            let c0 = cp.add(i0 * n + j0);
            if k == 0 {
                return;
            }
            match openblas() {
                Some(blas) => (blas.dgemm)(
                    ROW_MAJOR,
                    NO_TRANS,
                    if b_trans { TRANS } else { NO_TRANS },
                    rows as c_int,
                    cols as c_int,
                    k as c_int,
                    1.0,
                    a0,
                    k as c_int,
                    b0,
                    ldb as c_int,
                    0.0,
                    c0,
                    n as c_int,
                ),
                None => {
                    let (rs, cs) = if b_trans {
                        (1, ldb as isize)
                    } else {
                        (ldb as isize, 1)
                    };
                    gemm::gemm(
                        rows,
                        cols,
                        k,
                        c0,
                        1,
                        n as isize,
                        false,
                        a0,
                        1,
                        k as isize,
                        b0,
                        cs,
                        rs,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            }
        }
    });
    c
}

/// The first `len` elements of a reusable buffer, growing it if needed (never shrinking, so
/// tasks of varying sizes do not zero-fill it again and again).
pub(crate) fn scratch(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// A raw pointer that parallel tasks may share: each task writes a disjoint part.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);

impl SendPtr {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the raw field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: only used for disjoint writes from tasks that end before the buffer is read.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

// ---------------------------------------------------------------------------------------------
// Parallel products

/// Multiply-adds below which a product is one panel (one kernel call on the calling thread).
const PAR_MIN: usize = 1 << 18;
/// Narrowest panel (columns or rows) of a split product.
const PANEL_MIN: usize = 64;
/// Panels a large product is split into, whatever the number of threads: results depend on
/// the panel boundaries (on some kernel families, e.g. OpenBLAS's Haswell/Zen `sgemm`, a row
/// computed in a panel that starts elsewhere rounds differently), so the boundaries are a
/// function of the product's shape only, never of the thread pool. 12 divides evenly among
/// 1, 2, 3, 4, 6 and 12 threads.
pub(crate) const PANEL_COUNT: usize = 12;

/// `Y[m×n] = X[m×k] · Wᵀ (+ bias) (+ residual)` for row-major `X`, `W[n×k]` (a linear
/// layer), an optional `[n]` bias and an optional `[m×n]` residual, split over the rayon pool.
/// The additions happen per panel while it is in cache, in the order of the tensor path
/// (`(x·Wᵀ + b) + r`).
pub(crate) fn matmul_nt(
    be: Backend,
    x: &[f32],
    w: &[f32],
    (m, n, k): (usize, usize, usize),
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "matmul_nt: operand too short"
    );
    assert!(bias.is_none_or(|b| b.len() == n) && residual.is_none_or(|r| r.len() == m * n));
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let out = SendPtr(y.as_mut_ptr());
    let (xp, wp) = (x.as_ptr() as usize, w.as_ptr() as usize);
    par_panels(m, n, k, |(i0, i1), (j0, j1)| {
        let (xp, wp) = (xp as *const f32, wp as *const f32);
        // SAFETY: the panel rows i0..i1 × columns j0..j1 of Y are written by this task only;
        // the operands cover the extents asserted above.
        unsafe {
            let yp = out.get().add(i0 * n + j0);
            sgemm(
                be,
                i1 - i0,
                j1 - j0,
                k,
                xp.add(i0 * k),
                k,
                wp.add(j0 * k),
                k,
                true,
                yp,
                n,
            );
            if bias.is_some() || residual.is_some() {
                for i in i0..i1 {
                    let row = std::slice::from_raw_parts_mut(out.get().add(i * n + j0), j1 - j0);
                    if let Some(b) = bias {
                        row.iter_mut().zip(&b[j0..j1]).for_each(|(y, b)| *y += b);
                    }
                    if let Some(r) = residual {
                        row.iter_mut()
                            .zip(&r[i * n + j0..i * n + j1])
                            .for_each(|(y, r)| *y += r);
                    }
                }
            }
        }
    });
    // SAFETY: the panels cover Y, and each product wrote its panel.
    unsafe { y.set_len(m * n) };
    y
}

/// `X·Wᵀ` on this process's f32 backend, split into about `count` panels (`None`: the
/// forward's shape-only split, [`panels`]), for `bench --gemm` to time what a split costs.
/// Results of different splits may differ in the last bits (see the module header).
#[doc(hidden)]
pub fn bench_linear(
    x: &[f32],
    w: &[f32],
    (m, n, k): (usize, usize, usize),
    count: Option<usize>,
) -> Vec<f32> {
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "bench_linear: operand too short"
    );
    let be = backend();
    let split = match count {
        Some(c) => panels_with(m, n, k, c),
        None => panels(m, n, k),
    };
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let out = SendPtr(y.as_mut_ptr());
    let (xp, wp) = (x.as_ptr() as usize, w.as_ptr() as usize);
    par_panels_of(split, |(i0, i1), (j0, j1)| {
        let (xp, wp) = (xp as *const f32, wp as *const f32);
        // SAFETY: as in `matmul_nt`: disjoint output panels, operands asserted above.
        unsafe {
            sgemm(
                be,
                i1 - i0,
                j1 - j0,
                k,
                xp.add(i0 * k),
                k,
                wp.add(j0 * k),
                k,
                true,
                out.get().add(i0 * n + j0),
                n,
            )
        }
    });
    // SAFETY: the panels cover Y.
    unsafe { y.set_len(m * n) };
    y
}

thread_local! {
    static PANELS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `silu(X·Gᵀ) · (X·Uᵀ)` for row-major `X[m×k]` and `G`, `U` `[n×k]` (SwiGLU's gate and up
/// projections without bias): per panel, both products into a thread-local buffer, then the
/// activation into the output, so the two `[m×n]` projections never exist in full.
pub(crate) fn matmul_nt_swiglu(
    be: Backend,
    x: &[f32],
    g: &[f32],
    u: &[f32],
    (m, n, k): (usize, usize, usize),
) -> Vec<f32> {
    assert!(x.len() >= m * k && g.len() >= n * k && u.len() >= n * k);
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let out = SendPtr(y.as_mut_ptr());
    let (xp, gp, up) = (
        x.as_ptr() as usize,
        g.as_ptr() as usize,
        u.as_ptr() as usize,
    );
    par_panels(m, n, k, |(i0, i1), (j0, j1)| {
        let (rows, cols) = (i1 - i0, j1 - j0);
        PANELS.with_borrow_mut(|buf| {
            let (bg, bu) = scratch(buf, 2 * rows * cols).split_at_mut(rows * cols);
            let (xp, gp, up) = (xp as *const f32, gp as *const f32, up as *const f32);
            // SAFETY: operands as asserted; the buffers hold rows × cols each; the output
            // panel is written by this task only.
            unsafe {
                let xi = xp.add(i0 * k);
                sgemm(
                    be,
                    rows,
                    cols,
                    k,
                    xi,
                    k,
                    gp.add(j0 * k),
                    k,
                    true,
                    bg.as_mut_ptr(),
                    cols,
                );
                sgemm(
                    be,
                    rows,
                    cols,
                    k,
                    xi,
                    k,
                    up.add(j0 * k),
                    k,
                    true,
                    bu.as_mut_ptr(),
                    cols,
                );
                for r in 0..rows {
                    let dst =
                        std::slice::from_raw_parts_mut(out.get().add((i0 + r) * n + j0), cols);
                    let src = r * cols..(r + 1) * cols;
                    super::kernels::swiglu_slice(dst, &bg[src.clone()], &bu[src]);
                }
            }
        });
    });
    // SAFETY: the panels cover Y.
    unsafe { y.set_len(m * n) };
    y
}

/// Run `f((i0, i1), (j0, j1))` over panels that tile an `m×n` product with inner size `k`,
/// in parallel on the rayon pool. The panels depend on `(m, n, k)` only (see [`PANEL_COUNT`]), so a
/// product gives the same bits on 1 thread or 64: with one thread the same panels run in turn.
///
/// Row panels unless `n` is much larger than `m`: each panel's product packs its own rows of
/// `X` but all of `W`, which costs little (8 row panels of a 1024×576×576 product run at 97 %
/// of one call's speed per core), while column panels each re-pack all of `X` (8 column
/// panels of a 4096-row product: 75 %). A wide product (the output head) takes column panels.
fn par_panels(m: usize, n: usize, k: usize, f: impl Fn((usize, usize), (usize, usize)) + Sync) {
    par_panels_of(panels(m, n, k), f)
}

fn par_panels_of((rows, cols): Split, f: impl Fn((usize, usize), (usize, usize)) + Sync) {
    let tasks = rows.len() * cols.len();
    let run = |t: usize| f(rows[t / cols.len()], cols[t % cols.len()]);
    if tasks == 1 {
        run(0);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// Row ranges and column ranges of the panels of a product.
pub(crate) type Split = (Vec<(usize, usize)>, Vec<(usize, usize)>);

/// The row and column ranges of the panels of an `m×n×k` product (one of the two lists has a
/// single range): a pure function of the shape.
pub(crate) fn panels(m: usize, n: usize, k: usize) -> Split {
    panels_with(m, n, k, PANEL_COUNT)
}

/// [`panels`] with about `count` panels instead of [`PANEL_COUNT`] (for `bench --gemm`).
fn panels_with(m: usize, n: usize, k: usize, count: usize) -> Split {
    let ranges = |len: usize, step: usize| -> Vec<(usize, usize)> {
        (0..len.div_ceil(step.max(1)))
            .map(|p| (p * step, ((p + 1) * step).min(len)))
            .collect()
    };
    if m * n * k < PAR_MIN || m == 0 || n == 0 {
        return (vec![(0, m)], vec![(0, n)]);
    }
    if n >= 4 * m {
        (vec![(0, m)], ranges(n, panel(n, count, 16)))
    } else {
        (ranges(m, panel(m, count, 8)), vec![(0, n)])
    }
}

/// Panel width for splitting `len` into about `want` panels: a multiple of `align`, at least
/// [`PANEL_MIN`] (or all of `len`).
fn panel(len: usize, want: usize, align: usize) -> usize {
    let step = len.div_ceil(want).max(PANEL_MIN).div_ceil(align) * align;
    step.min(len)
}

#[cfg(test)]
mod tests;
