//! `autoprune bench` as library calls: speeds measured against baselines in the same run,
//! returned as JSON reports (ratios, never pass/fail).

use crate::build::{default_cache, Builder};
use crate::check::SyntheticLayer;
use crate::layer::LayerKind;
use crate::prune::native;
use crate::sandbox::{Plugin, Policy};
use std::time::{Duration, Instant};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Wanda's candidate source, the benchmark's guest.
pub const WANDA: &str = include_str!("../../../candidates/wanda.rs");

fn build_times(builder: &Builder, reps: usize) -> anyhow::Result<(f64, f64, f64)> {
    // Cold: the first compile of this process (toolchain files may already be in the page
    // cache; the artifact is not). Warm: a fresh source (new hash) compiled again. Cached:
    // the same source again.
    let nonce = format!("{:?}", Instant::now());
    let src = |k: usize| format!("{WANDA}\n// bench {nonce} {k}\n");
    let cold = builder
        .build(&src(0))
        .map_err(|f| anyhow::anyhow!("{f}"))?
        .seconds;
    let warm = median(
        (1..=reps.min(5))
            .map(|k| builder.build(&src(k)).map(|b| b.seconds))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|f| anyhow::anyhow!("{f}"))?,
    );
    let cached = time(reps, || builder.build(&src(1)));
    Ok((cold, warm, cached))
}

/// `--gemm`: f32 and bf16 linear layers on SmolLM2's shapes, timed in the same run, and what
/// the forward's fixed panel split costs against the thread-count split it replaced.
pub fn gemm(reps: usize) -> anyhow::Result<serde_json::Value> {
    use crate::model::{bench_linear, init_cpu_matmul, Linear, Precision};
    use candle_core::{Device, Tensor};
    let backend = init_cpu_matmul();
    let threads = rayon::current_num_threads();
    let reps = reps.max(1);
    let shapes = [
        ("q/o", 4096usize, 576usize, 576usize),
        ("k/v", 4096, 192, 576),
        ("gate/up", 4096, 1536, 576),
        ("down", 4096, 576, 1536),
        ("eval q/o", 1024, 576, 576),
        ("lm_head", 1022, 49152, 576),
    ];
    let bf16_cpu = Precision::Bf16.available();
    let mut rows = Vec::new();
    for (name, m, n, k) in shapes {
        // Laplace-tailed weights (the `check` generator); its rows of another shape stand in
        // for activations.
        let wv = SyntheticLayer::generate(n, k, LayerKind::Up, 1).weights;
        let xv = SyntheticLayer::generate(m, k, LayerKind::Up, 2).weights;
        let w = Tensor::from_vec(wv.clone(), (n, k), &Device::Cpu)?;
        let x = Tensor::from_vec(xv.clone(), (m, k), &Device::Cpu)?;
        let f32l = Linear::new(w, None)?;
        let t32 = time(reps, || f32l.forward(&x).expect("f32 product"));
        // The split: the forward's fixed panels against 2 panels per thread (the old rule,
        // whose bits depended on the thread count) and one call.
        let t_fixed = time(reps, || bench_linear(&xv, &wv, (m, n, k), None));
        let t_threads = time(reps, || {
            bench_linear(&xv, &wv, (m, n, k), Some(2 * threads))
        });
        let gflop = 2.0 * (m * n * k) as f64 / 1e9;
        let mut row = serde_json::json!({
            "layer": name, "m": m, "n": n, "k": k,
            "f32_gflops": gflop / t32,
            "fixed_panels_gflops": gflop / t_fixed,
            "thread_panels_gflops": gflop / t_threads,
            "fixed_vs_thread_panels": t_threads / t_fixed,
        });
        if bf16_cpu {
            let bf16l = f32l.clone().with_precision(Precision::Bf16)?;
            let (a, b) = (f32l.forward(&x)?, bf16l.forward(&x)?);
            let (a, b) = (
                a.flatten_all()?.to_vec1::<f32>()?,
                b.flatten_all()?.to_vec1::<f32>()?,
            );
            let rms = |v: &[f32]| {
                (v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
            };
            let diff: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
            let t16 = time(reps, || bf16l.forward(&x).expect("bf16 product"));
            row["bf16_gflops"] = (gflop / t16).into();
            row["speedup"] = (t32 / t16).into();
            row["relative_rms_error"] = (rms(&diff) / rms(&a)).into();
        }
        rows.push(row);
    }
    let report = serde_json::json!({
        "f32_backend": backend, "threads": threads, "reps": reps, "bf16": bf16_cpu, "linear": rows,
    });
    Ok(report)
}

/// The sandbox path against native code: build times (cold, warm, cached), instantiation, and
/// Wanda's scores in the guest against native Rust on two layer shapes (with bit identity).
pub fn sandbox(builder: &Builder, reps: usize) -> anyhow::Result<serde_json::Value> {
    let reps = reps.max(1);
    let (cold, warm, cached) = build_times(builder, reps)?;
    let built = builder.build(WANDA).map_err(|f| anyhow::anyhow!("{f}"))?;
    let plugin = Plugin::load(&built.wasm, &Policy::default(), Some(&default_cache()?))
        .map_err(|f| anyhow::anyhow!("{f}"))?;
    let inst = median(
        (0..reps.max(50))
            .map(|_| plugin.instantiate_only().map(|d: Duration| d.as_secs_f64()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|f| anyhow::anyhow!("{f}"))?,
    );
    let mut rows = Vec::new();
    for (r, c) in [(4096usize, 4096usize), (11008, 4096)] {
        let layer = SyntheticLayer::generate(r, c, LayerKind::Gate, 0);
        let data = layer.data(0.5);
        let nat = time(reps, || native::wanda(&data));
        let wasm = time(reps, || plugin.score(&data).expect("wanda scores"));
        // The same formula must give the same numbers.
        let (a, b) = (
            native::wanda(&data),
            plugin.score(&data).expect("scores").scores,
        );
        let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        let n = (r * c) as f64;
        rows.push(serde_json::json!({
            "shape": format!("{r}x{c}"), "native_ns_per_weight": nat * 1e9 / n,
            "wasm_ns_per_weight": wasm * 1e9 / n, "ratio": wasm / nat, "bit_identical": same,
        }));
    }
    let report = serde_json::json!({
        "wanda": rows,
        "build_seconds": { "cold": cold, "warm": warm, "cached": cached },
        "instantiate_microseconds": inst * 1e6,
        "reps": reps,
    });
    Ok(report)
}

/// Write a model with random weights (f16 safetensors) into `dir`: LLaMA-2-7B's shapes with
/// `layers` blocks, or SmolLM2-135M's (`smollm2`), with `tokenizer` (a `tokenizer.json` or a
/// model holding one; default SmolLM2's from the data directory), whose vocabulary the model
/// takes. Returns the bytes of weights written.
pub fn synthetic_model(
    dir: &std::path::Path,
    layers: usize,
    smollm2: bool,
    tokenizer: Option<&std::path::Path>,
) -> anyhow::Result<u64> {
    use crate::model::{ModelConfig, Tokenizer};
    let tokenizer = match tokenizer {
        Some(p) if p.extension().is_some_and(|e| e == "json") => Tokenizer::from_file(p)?,
        Some(p) => Tokenizer::for_model(p)?,
        None => Tokenizer::for_model(&crate::data::DataDir::resolve().smollm2_gguf()?)?,
    };
    // Every id the tokenizer makes gets a row (49,152 for SmolLM2's), rounded up to 64.
    let vocab = tokenizer
        .max_token_id()
        .map_or(0, |m| (m as usize + 1).div_ceil(64) * 64);
    let cfg = if smollm2 {
        ModelConfig::smollm2_shape(vocab)
    } else {
        ModelConfig::llama2_7b_shape(layers, vocab)
    };
    tokenizer.check_fits(&cfg)?;
    let bytes = crate::model::write_random_hf(&cfg, 7, dir, crate::model::SaveDtype::F16)?;
    tokenizer.save(&dir.join("tokenizer.json"))?;
    Ok(bytes)
}
