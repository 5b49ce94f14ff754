//! `autoprune bench`: measured speed of the sandbox path against native code, in one run.
//!
//! Prints ratios against baselines measured in the same process, never absolute pass/fail.

use super::BuildFlags;
use autoprune::build::{default_cache, Builder};
use autoprune::check::SyntheticLayer;
use autoprune::layer::LayerKind;
use autoprune::prune::native;
use autoprune::sandbox::{Plugin, Policy};
use std::time::{Duration, Instant};

/// Arguments of `autoprune bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub reps: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Instead: the CPU linear layers of SmolLM2's shapes (8 windows of 512 tokens; the
    /// output head on 2 windows), f32 against bf16, with the bf16 error relative to f32.
    #[arg(long)]
    pub gemm: bool,
    #[command(flatten)]
    pub flags: BuildFlags,
}

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

const WANDA: &str = include_str!("../../../candidates/wanda.rs");

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
fn gemm(args: &Args) -> anyhow::Result<i32> {
    use autoprune::model::{bench_linear, init_cpu_matmul, Linear, Precision};
    use candle_core::{Device, Tensor};
    let backend = init_cpu_matmul();
    let threads = rayon::current_num_threads();
    let reps = args.reps.max(1);
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
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    let bf16_note = if bf16_cpu {
        "AVX512-BF16"
    } else {
        "not run: this CPU has no AVX512-BF16"
    };
    println!("CPU linear layers, f32 ({backend}) vs bf16 ({bf16_note}), {threads} threads, median of {reps}:");
    println!(
        "{:<9} {:>18} {:>9} {:>9} {:>8} {:>10} {:>12} {:>12} {:>8}",
        "layer",
        "m x n x k",
        "f32 GF/s",
        "bf16 GF/s",
        "speedup",
        "rel. err",
        "fixed GF/s",
        "thread GF/s",
        "ratio"
    );
    let num = |r: &serde_json::Value, k: &str, digits: usize| {
        r[k].as_f64().map_or("-".to_string(), |v| {
            if digits == 99 {
                format!("{v:.2e}")
            } else {
                format!("{v:.digits$}")
            }
        })
    };
    for r in &rows {
        println!(
            "{:<9} {:>18} {:>9} {:>9} {:>8} {:>10} {:>12} {:>12} {:>8}",
            r["layer"].as_str().unwrap_or(""),
            format!("{}x{}x{}", r["m"], r["n"], r["k"]),
            num(r, "f32_gflops", 1),
            num(r, "bf16_gflops", 1),
            num(r, "speedup", 2),
            num(r, "relative_rms_error", 99),
            num(r, "fixed_panels_gflops", 1),
            num(r, "thread_panels_gflops", 1),
            num(r, "fixed_vs_thread_panels", 3),
        );
    }
    println!("ratio: time with 2 panels per thread / time with the fixed split (> 1: the fixed split is faster)");
    Ok(0)
}

/// Run it.
pub fn run(args: Args) -> anyhow::Result<i32> {
    if args.gemm {
        return gemm(&args);
    }
    let reps = args.reps.max(1);
    let builder = args.flags.builder()?;
    let (cold, warm, cached) = build_times(&builder, reps)?;
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
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    println!(
        "Wanda, wasm guest (tile path, fresh store per call) vs native Rust, median of {reps}:"
    );
    println!(
        "{:<12} {:>12} {:>12} {:>8} {:>10}",
        "layer", "native ns/w", "wasm ns/w", "ratio", "identical"
    );
    for r in &rows {
        println!(
            "{:<12} {:>12.3} {:>12.3} {:>7.2}x {:>10}",
            r["shape"].as_str().unwrap_or(""),
            r["native_ns_per_weight"].as_f64().unwrap_or(0.0),
            r["wasm_ns_per_weight"].as_f64().unwrap_or(0.0),
            r["ratio"].as_f64().unwrap_or(0.0),
            r["bit_identical"]
        );
    }
    println!(
        "build (bubblewrap={}): cold {:.3} s, warm {:.3} s, cached {:.4} s",
        !args.flags.trusted, cold, warm, cached
    );
    println!("instantiate (fresh store + instance): {:.1} µs", inst * 1e6);
    Ok(0)
}
