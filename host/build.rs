//! Records which CPU features and libraries the machine that builds the tests has, as `cfg`s,
//! so tests that need one are compiled as `#[ignore = "needs …"]` elsewhere: `cargo test`
//! then reports them as *ignored* (not run) with the reason, never as passed or failed.
//!
//! Tests run where they are built (CI builds and tests on one machine). A test whose `cfg`
//! says a feature is present checks again at run time and fails with "rebuild" if the binary
//! was moved to a CPU without it.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for name in [
        "autoprune_cpu_avx2_fma",
        "autoprune_cpu_avx512",
        "autoprune_cpu_avx512_bf16",
        "autoprune_openblas",
        "autoprune_gpu",
    ] {
        println!("cargo::rustc-check-cfg=cfg({name})");
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        // Only when building for the machine we run on (no cross-compilation).
        if std::env::var("TARGET").ok() == std::env::var("HOST").ok() {
            if has!("avx2") && has!("fma") {
                println!("cargo:rustc-cfg=autoprune_cpu_avx2_fma");
            }
            // OpenBLAS's SkylakeX kernels need these five.
            if has!("avx512f")
                && has!("avx512bw")
                && has!("avx512vl")
                && has!("avx512dq")
                && has!("avx512cd")
            {
                println!("cargo:rustc-cfg=autoprune_cpu_avx512");
            }
            if has!("avx512f") && has!("avx512bw") && has!("avx512bf16") {
                println!("cargo:rustc-cfg=autoprune_cpu_avx512_bf16");
            }
        }
    }
    if openblas_installed() {
        println!("cargo:rustc-cfg=autoprune_openblas");
    }
    // An NVIDIA driver with a GPU: the CUDA equivalence tests (tests/cuda.rs) run.
    if ["/dev/nvidiactl", "/proc/driver/nvidia/version"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
    {
        println!("cargo:rustc-cfg=autoprune_gpu");
    }
}

/// Whether the dynamic loader knows `libopenblas.so.0` (what the host `dlopen`s at run time).
fn openblas_installed() -> bool {
    let listed = std::process::Command::new("ldconfig")
        .arg("-p")
        .output()
        .or_else(|_| {
            std::process::Command::new("/sbin/ldconfig")
                .arg("-p")
                .output()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("libopenblas.so.0"))
        .unwrap_or(false);
    listed
        || [
            "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
            "/usr/lib64/libopenblas.so.0",
            "/usr/lib/libopenblas.so.0",
        ]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}
