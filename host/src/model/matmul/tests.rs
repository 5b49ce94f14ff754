//! Tests of the matrix products: panel splits, kernel agreement, determinism across thread counts.

use super::*;
use crate::model::testutil::pattern as data;

fn naive_nt(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k)
                .map(|p| f64::from(x[i * k + p]) * f64::from(w[j * k + p]))
                .sum();
        }
    }
    y
}

fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Gemm];
    if backend() == Backend::OpenBlas {
        v.push(Backend::OpenBlas);
    }
    v
}

#[test]
fn matmul_nt_matches_naive_on_all_backends_and_splits() {
    // Shapes: tiny (one call), wide (column panels with a ragged last panel), tall (row
    // panels), and k = 0.
    for &(m, n, k) in &[(3, 5, 7), (37, 1000, 65), (700, 33, 129), (4, 3, 0)] {
        let x = data(m * k, 1);
        let w = data(n * k, 2);
        let want = naive_nt(&x, &w, m, n, k);
        for be in backends() {
            let y = matmul_nt(be, &x, &w, (m, n, k), None, None);
            assert_eq!(y.len(), m * n);
            for (a, b) in y.iter().zip(&want) {
                assert!(
                    (f64::from(*a) - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{be:?} {m}x{n}x{k}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn epilogues_and_fused_swiglu_match_separate_steps() {
    let (m, n, k) = (90, 300, 40);
    let x = data(m * k, 7);
    let g = data(n * k, 8);
    let u = data(n * k, 9);
    let bias = data(n, 10);
    let res = data(m * n, 11);
    for be in backends() {
        let plain = matmul_nt(be, &x, &g, (m, n, k), None, None);
        let with = matmul_nt(be, &x, &g, (m, n, k), Some(&bias), Some(&res));
        for i in 0..m {
            for j in 0..n {
                let want = (plain[i * n + j] + bias[j]) + res[i * n + j];
                assert_eq!(with[i * n + j], want, "{be:?}");
            }
        }
        let up = matmul_nt(be, &x, &u, (m, n, k), None, None);
        let fused = matmul_nt_swiglu(be, &x, &g, &u, (m, n, k));
        let mut want = vec![0f32; m * n];
        crate::model::kernels::swiglu_slice(&mut want, &plain, &up);
        assert_eq!(fused, want, "{be:?}");
    }
}

#[test]
fn sgemm_nn_with_leading_dimensions() {
    // C[2×3] (ldc 5) = A[2×4] (lda 6) · B[4×3] (ldb 4), all embedded in larger buffers.
    let a = data(2 * 6, 3);
    let b = data(4 * 4, 4);
    for be in backends() {
        let mut c = vec![7f32; 2 * 5];
        // SAFETY: the buffers cover the described extents.
        unsafe {
            sgemm(
                be,
                2,
                3,
                4,
                a.as_ptr(),
                6,
                b.as_ptr(),
                4,
                false,
                c.as_mut_ptr(),
                5,
            )
        };
        for i in 0..2 {
            for j in 0..3 {
                let want: f32 = (0..4).map(|p| a[i * 6 + p] * b[p * 4 + j]).sum();
                assert!((c[i * 5 + j] - want).abs() < 1e-5, "{be:?}");
            }
            assert_eq!(&c[i * 5 + 3..i * 5 + 5], &[7.0, 7.0], "{be:?} wrote past n");
        }
    }
}

#[test]
fn f64_products_match_naive_sums_and_threads() {
    for &(m, n, k, bt) in &[(3, 5, 7, true), (130, 90, 200, false), (700, 40, 64, true)] {
        let a: Vec<f64> = data(m * k, 1).iter().map(|&x| f64::from(x)).collect();
        let b: Vec<f64> = data(n * k, 2).iter().map(|&x| f64::from(x) * 0.5).collect();
        let c = matmul_f64(&a, m, k, &b, n, bt);
        for i in (0..m).step_by(7) {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|p| a[i * k + p] * if bt { b[j * k + p] } else { b[p * n + j] })
                    .sum();
                assert!((c[i * n + j] - want).abs() <= 1e-12 * (1.0 + want.abs()));
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| matmul_f64(&a, m, k, &b, n, bt)), c);
    }
}

#[test]
fn panels_are_a_function_of_the_shape_and_tile_the_product() {
    for &(m, n, k) in &[
        (1, 1, 1),
        (3, 5, 7),
        (1024, 576, 576),
        (517, 49152, 576),
        (700, 33, 129),
    ] {
        let (rows, cols) = panels(m, n, k);
        assert!(rows.len() == 1 || cols.len() == 1);
        assert!(rows.len() * cols.len() <= PANEL_COUNT + 1, "{m}x{n}x{k}");
        for (ranges, len) in [(&rows, m), (&cols, n)] {
            assert_eq!(ranges.first().unwrap().0, 0);
            assert_eq!(ranges.last().unwrap().1, len);
            assert!(ranges
                .windows(2)
                .all(|w| w[0].1 == w[1].0 && w[0].0 < w[0].1));
        }
        // Pure: the same in any thread pool.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| panels(m, n, k)), (rows, cols));
    }
    // Products big enough to split are split (row panels for a block linear, column
    // panels for the output head).
    assert!(panels(1024, 576, 576).0.len() > 1);
    assert!(panels(517, 49152, 576).1.len() > 1);
}

/// The bits of every product kind on `be` in pools of 1, 2, 3 and 5 threads.
fn assert_thread_count_invariant(be: Backend) {
    let shapes = [
        (300, 700, 96),
        (50, 700, 96),
        (1030, 576, 576),
        (97, 1536, 576),
    ];
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            shapes
                .iter()
                .map(|&(m, n, k)| {
                    let x = data(m * k, 5);
                    let w = data(n * k, 6);
                    let u = data(n * k, 7);
                    let plain = matmul_nt(be, &x, &w, (m, n, k), None, None);
                    let fused = matmul_nt_swiglu(be, &x, &w, &u, (m, n, k));
                    (plain, fused)
                })
                .collect::<Vec<_>>()
        })
    };
    let one = run(1);
    for threads in [2, 3, 5] {
        let many = run(threads);
        for ((a, b), &(m, n, k)) in one.iter().zip(&many).zip(&shapes) {
            assert!(a == b, "{be:?} {m}x{n}x{k}: 1 thread vs {threads} differ");
        }
    }
}

#[test]
fn products_do_not_depend_on_the_thread_count() {
    for be in backends() {
        assert_thread_count_invariant(be);
    }
    if crate::model::bf16::available() {
        assert_thread_count_invariant(Backend::Bf16);
    }
    // Run as a child of the kernel-family tests below: the family must have loaded.
    if let Ok(want) = std::env::var("AUTOPRUNE_TEST_CORETYPE") {
        assert_eq!(
            describe().to_lowercase(),
            format!("openblas ({})", want.to_lowercase()),
            "OPENBLAS_CORETYPE={want} did not select that kernel family"
        );
    }
}

/// Runs [`products_do_not_depend_on_the_thread_count`] in a child test process whose
/// OpenBLAS loads the kernel family `core` (OpenBLAS reads `OPENBLAS_CORETYPE` once, when
/// it loads, so each family needs its own process).
fn thread_invariance_with_kernel_family(core: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "model::matmul::tests::products_do_not_depend_on_the_thread_count",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("OPENBLAS_CORETYPE", core)
        .env("AUTOPRUNE_TEST_CORETYPE", core)
        .env_remove("AUTOPRUNE_BLAS")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "with OPENBLAS_CORETYPE={core}:\n{text}"
    );
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}

#[test]
#[cfg_attr(
    not(all(autoprune_openblas, autoprune_cpu_avx512)),
    ignore = "needs OpenBLAS and AVX-512 F/BW/VL/DQ/CD (its SkylakeX kernels)"
)]
fn openblas_skylakex_kernels_are_thread_count_invariant() {
    crate::testutil::require_cpu(&["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"]);
    thread_invariance_with_kernel_family("SkylakeX");
}

#[test]
#[cfg_attr(
    not(all(autoprune_openblas, autoprune_cpu_avx2_fma)),
    ignore = "needs OpenBLAS and AVX2 + FMA (its Haswell and Zen kernels)"
)]
fn openblas_haswell_and_zen_kernels_are_thread_count_invariant() {
    crate::testutil::require_cpu(&["avx2", "fma"]);
    thread_invariance_with_kernel_family("Haswell");
    thread_invariance_with_kernel_family("Zen");
}

#[test]
#[cfg_attr(
    not(autoprune_openblas),
    ignore = "needs OpenBLAS (libopenblas0-pthread)"
)]
fn openblas_is_loaded_where_installed() {
    // Guards the kernel-family tests above: they are only meaningful with OpenBLAS loaded.
    if std::env::var("AUTOPRUNE_BLAS").is_err() {
        assert_eq!(backend(), Backend::OpenBlas, "{}", describe());
    }
}
