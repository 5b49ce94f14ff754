//! What the README's determinism statement claims, tested: the activation statistics (f64),
//! every mask and the perplexity of a pruning run are bit-identical whatever the number of
//! threads — with the sandboxed Wanda plugin per row and 2:4, and with SparseGPT — and that
//! holds for every kernel family this CPU can run (OpenBLAS SkylakeX, Haswell, Zen; the `gemm`
//! crate). Different kernel families round differently from each other, so *across* machine
//! classes only the reduction order is the same, not the bits (README, "Machine classes").

mod common;

use autoprune::calib::{collect_block_inputs, window_offsets, windows, Sampler};
use autoprune::eval::{perplexity, PerplexityOptions};
use autoprune::layer::LayerKind;
use autoprune::model::{Arch, Model, ModelConfig};
use autoprune::pipeline::{prune_model, Method, PruneConfig, PruneJob};
use autoprune::prune::mask::Pattern;
use autoprune::sandbox::Policy;
use candle_core::Device;

/// A random model whose products are big enough to be split into panels (tokens × hidden ×
/// hidden ≥ 2¹⁸ multiply-adds).
fn model() -> Model {
    let cfg = ModelConfig {
        hidden_size: 128,
        intermediate_size: 352,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 32,
        vocab_size: 512,
        max_position_embeddings: 256,
        ..ModelConfig::tiny(Arch::Llama)
    };
    Model::random(&cfg, 17, &Device::Cpu).unwrap()
}

fn tokens(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 7 + (i / 13) * 3 + (i / 101) * 5) % vocab)
        .collect()
}

/// Everything a run produces that could depend on rounding, as bits: the dense statistics of
/// every linear input of block 0, then per method the per-layer mask hashes and the
/// perplexity of the pruned model.
fn fingerprint() -> Vec<String> {
    let dense = model();
    let toks = tokens(8192, dense.config.vocab_size as u32);
    let seq = 128;
    let offsets = window_offsets(toks.len(), 6, seq, Sampler::Even).unwrap();
    let wins = windows(&toks, &offsets, seq);
    let mut out = Vec::new();

    let rope = dense.rope(seq).unwrap();
    let batch = dense.embed(&dense.ids_tensor(&wins).unwrap()).unwrap();
    let inputs = collect_block_inputs(&dense.blocks[0], &[batch], &rope, true).unwrap();
    for kind in LayerKind::BLOCK {
        let s = inputs.stats(kind).unwrap();
        let bits: Vec<u64> = s.sum_sq.iter().chain(&s.sum).map(|v| v.to_bits()).collect();
        out.push(format!("{kind:?} stats {bits:?} max {:?}", s.max_abs));
        let h = inputs.hessian(kind).unwrap().to_matrix();
        let hb: Vec<u64> = h.iter().map(|v| v.to_bits()).collect();
        out.push(format!("{kind:?} hessian {:016x}", fnv(&hb)));
    }

    let wanda = common::plugin("candidates/wanda.rs", &Policy::default()).unwrap();
    let runs: [(&str, Method, Pattern); 3] = [
        ("wanda 50%", Method::Metric(&wanda), Pattern::PerRow),
        ("wanda 2:4", Method::Metric(&wanda), Pattern::n_m(2, 4)),
        ("sparsegpt 50%", Method::SparseGpt, Pattern::PerRow),
    ];
    let eval = tokens(4096, dense.config.vocab_size as u32);
    for (name, method, pattern) in runs {
        let mut m = dense.clone();
        let cfg = PruneConfig::uniform(0.5, pattern, 4);
        let report =
            prune_model(&mut m, &PruneJob::new(&wins, &method, &cfg), &mut |_| {}).unwrap();
        let masks: Vec<&str> = report.layers.iter().map(|l| l.mask_hash.as_str()).collect();
        let opts = PerplexityOptions {
            seq_len: seq,
            windows: 8,
            batch: 3,
        };
        let ppl = perplexity(&m, &eval, &opts).unwrap().ppl;
        out.push(format!(
            "{name}: masks {masks:?} ppl {:016x} ({ppl})",
            ppl.to_bits()
        ));
    }
    out
}

fn fnv(xs: &[u64]) -> u64 {
    xs.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ x).wrapping_mul(0x0100_0000_01b3)
    })
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn statistics_masks_and_perplexity_do_not_depend_on_the_thread_count() {
    let one = in_pool(1, fingerprint);
    for threads in [2, 3, 5] {
        let many = in_pool(threads, fingerprint);
        for (a, b) in one.iter().zip(&many) {
            assert_eq!(a, b, "1 thread vs {threads} threads");
        }
    }
    eprintln!(
        "matrix products: {}",
        autoprune::model::cpu_matmul_backend()
    );
    if let Ok(want) = std::env::var("AUTOPRUNE_TEST_CORETYPE") {
        let got = autoprune::model::cpu_matmul_backend().to_lowercase();
        assert_eq!(got, format!("openblas ({})", want.to_lowercase()));
    }
}

/// The test above in a child process whose matrix products use kernel family `core`
/// (`OPENBLAS_CORETYPE` is read once, when OpenBLAS loads), or the `gemm` crate for `"gemm"`.
fn in_child(core: &str) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "--exact",
        "statistics_masks_and_perplexity_do_not_depend_on_the_thread_count",
        "--nocapture",
    ]);
    if core == "gemm" {
        cmd.env("AUTOPRUNE_BLAS", "off");
    } else {
        cmd.env("OPENBLAS_CORETYPE", core)
            .env("AUTOPRUNE_TEST_CORETYPE", core)
            .env_remove("AUTOPRUNE_BLAS");
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kernel family {core}:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}

#[test]
fn with_the_gemm_crate() {
    in_child("gemm");
}

#[test]
#[cfg_attr(
    not(all(autoprune_openblas, autoprune_cpu_avx512)),
    ignore = "needs OpenBLAS and AVX-512 F/BW/VL/DQ/CD (its SkylakeX kernels)"
)]
fn with_openblas_skylakex_kernels() {
    in_child("SkylakeX");
}

#[test]
#[cfg_attr(
    not(all(autoprune_openblas, autoprune_cpu_avx2_fma)),
    ignore = "needs OpenBLAS and AVX2 + FMA (its Haswell and Zen kernels)"
)]
fn with_openblas_haswell_and_zen_kernels() {
    in_child("Haswell");
    in_child("Zen");
}
