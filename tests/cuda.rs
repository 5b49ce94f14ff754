//! The device path of the calibration statistics and the CUDA build.
//!
//! - On every machine: the tensor path (what runs on a GPU) against the host path on the real
//!   SmolLM2, both on the CPU (`autoprune bench --stats --device cpu`).
//! - With the CUDA build (`./setup.sh --cuda`, `target/cuda/autoprune`) and no GPU: it starts
//!   (with the toolkit's libraries and the stub driver library on `LD_LIBRARY_PATH`), computes
//!   on the CPU exactly as the CPU build does, and refuses `--device cuda` with an error.
//! - With an NVIDIA GPU (the `autoprune_gpu` cfg, set by build.rs when a driver is present):
//!   statistics, Hessians, Wanda masks and perplexity on the GPU against the CPU. Elsewhere
//!   that test is compiled as ignored, so `cargo test` reports it as not run.

mod common;

use common::{autoprune, not_run, workspace};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// The toolkit folder `./setup.sh --cuda` fills.
fn toolkit() -> PathBuf {
    autoprune::data::DataDir::resolve().root().join("cuda/cu13")
}

/// The CUDA build, or `None` after reporting the test as not run (a failure under CI).
fn cuda_binary() -> Option<PathBuf> {
    let bin = workspace().join("target/cuda/autoprune");
    if bin.is_file() && toolkit().join("lib").is_dir() {
        Some(bin)
    } else {
        not_run("no CUDA build (run ./setup.sh --cuda)");
        None
    }
}

/// The CUDA build with the toolkit's libraries, and the stub driver library when `stub`.
fn cuda_autoprune(bin: &PathBuf, stub: bool) -> Command {
    let lib = toolkit().join("lib");
    let mut path = lib.display().to_string();
    if stub {
        path = format!("{path}:{}", lib.join("stubs").display());
    }
    let mut c = Command::new(bin);
    c.env("LD_LIBRARY_PATH", path)
        .env("AUTOPRUNE_CACHE", workspace().join("target/test-cache"));
    c
}

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

const STATS: [&str; 10] = [
    "bench",
    "--stats",
    "--calib-windows",
    "2",
    "--seqlen",
    "256",
    "--hessian-blocks",
    "1",
    "--json",
    "--device",
];

fn worst(r: &Value, key: &str) -> f64 {
    r["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| !(key == "hessian_rel" && b[key].is_null()))
        .map(|b| {
            b[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} is not a number: {b}"))
        })
        .fold(0.0, f64::max)
}

fn total(r: &Value, key: &str) -> u64 {
    r["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[key].as_u64().unwrap())
        .sum()
}

/// The tensor path on the CPU sums in the host path's order: no difference at all but the
/// Hessian's f32 Gram matrices (different GEMMs).
fn assert_cpu_equivalence(r: &Value) {
    assert_eq!(r["blocks"].as_array().unwrap().len(), 30, "every block");
    assert!(worst(r, "sum_sq_rel") <= 1e-12, "{r}");
    assert!(worst(r, "sum_rel") <= 1e-12, "{r}");
    assert_eq!(worst(r, "max_abs_rel"), 0.0, "a maximum does not round");
    assert!(
        r["blocks"][0]["hessian_rel"].is_number(),
        "block 0's Hessians compared"
    );
    let h = worst(r, "hessian_rel");
    assert!(h <= 1e-5, "Hessian {h}");
    assert_eq!(total(r, "wanda_mask_diff"), 0, "{r}");
}

#[test]
fn tensor_path_matches_the_host_path_on_smollm2() {
    common::require_real_data!();
    let out = autoprune().args(STATS).arg("cpu").output().unwrap();
    assert_cpu_equivalence(&json(&out));
}

#[test]
#[cfg_attr(
    autoprune_gpu,
    ignore = "a GPU is present: device_path_matches_the_cpu runs instead"
)]
fn cuda_build_runs_on_the_cpu_and_refuses_a_missing_gpu() {
    common::require_real_data!();
    let Some(bin) = cuda_binary() else { return };
    let v = cuda_autoprune(&bin, true)
        .arg("--version")
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    // On the CPU the CUDA build is the CPU build.
    let out = cuda_autoprune(&bin, true)
        .args(STATS)
        .arg("cpu")
        .output()
        .unwrap();
    assert_cpu_equivalence(&json(&out));
    // No driver (the stub answers "no device"): a clear error, no panic.
    let out = cuda_autoprune(&bin, true)
        .args(STATS)
        .arg("cuda")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("CUDA"), "{err}");
}

#[test]
#[cfg_attr(
    not(autoprune_gpu),
    ignore = "needs an NVIDIA GPU with its driver (and ./setup.sh --cuda)"
)]
fn device_path_matches_the_cpu() {
    common::require_real_data!();
    let Some(bin) = cuda_binary() else { return };
    let out = cuda_autoprune(&bin, false)
        .args(STATS)
        .arg("cuda")
        .output()
        .unwrap();
    let r = json(&out);
    // The GPU's forward rounds differently from the CPU's, so the activations themselves
    // differ a little (f32); the statistics follow them.
    eprintln!("GPU statistics against the CPU: {r}");
    assert!(worst(&r, "sum_sq_rel") <= 1e-3, "{r}");
    assert!(worst(&r, "sum_rel") <= 1e-3, "{r}");
    assert!(worst(&r, "max_abs_rel") <= 1e-3, "{r}");
    assert!(worst(&r, "hessian_rel") <= 1e-3, "{r}");
    let (diff, weights) = (total(&r, "wanda_mask_diff"), total(&r, "weights"));
    assert!(
        (diff as f64) <= 1e-4 * weights as f64,
        "{diff} of {weights}"
    );
    // Perplexity of a Wanda run, on the GPU and on the CPU.
    let ppl = |device: &str| -> f64 {
        let out = cuda_autoprune(&bin, false)
            .args(["prune", "--metric"])
            .arg(workspace().join("candidates/wanda.rs"))
            .args([
                "--sparsity",
                "0.5",
                "--calib-windows",
                "4",
                "--eval-windows",
                "4",
                "--json",
                "--device",
                device,
            ])
            .output()
            .unwrap();
        json(&out)["perplexity"]["pruned"]["ppl"].as_f64().unwrap()
    };
    let (gpu, cpu) = (ppl("cuda"), ppl("cpu"));
    assert!((gpu - cpu).abs() / cpu <= 1e-3, "GPU {gpu} vs CPU {cpu}");
}
