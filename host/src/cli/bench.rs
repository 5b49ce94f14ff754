//! `autoprune bench`: measured speed of the sandbox path against native code, in one run
//! (the measuring is [`autoprune::run::bench`]).
//!
//! Prints ratios against baselines measured in the same process, never absolute pass/fail.

use super::BuildFlags;

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
    /// Instead: write a model with LLaMA-2-7B's shapes and random weights (f16 safetensors,
    /// SmolLM2's tokenizer) into this folder, for `prune --stream`'s memory benchmark
    /// (docs/STREAMING.md). 405 MB per block.
    #[arg(long, value_name = "DIR")]
    pub synthetic_7b: Option<std::path::PathBuf>,
    /// Blocks of the `--synthetic-7b` model.
    #[arg(long, default_value_t = 32, requires = "synthetic_7b")]
    pub layers: usize,
    /// Instead: the leaderboard service on loopback. It starts a board in this process and
    /// two worker processes (real data needed), sends a hostile burst, and runs concurrent
    /// clients that submit and read for `--board-seconds`. It reports submissions accepted per
    /// second, p50/p99 latency per route, and every hostile submission's verdict.
    #[arg(long)]
    pub board: bool,
    /// Seconds of load (`--board`).
    #[arg(long, default_value_t = 20.0)]
    pub board_seconds: f64,
    /// Concurrent clients (`--board`).
    #[arg(long, default_value_t = 8)]
    pub board_clients: usize,
    /// Folder of hostile `.rs` files for the burst (`--board`; e.g. `tests/attacks`).
    #[arg(long)]
    pub board_hostile: Option<std::path::PathBuf>,
    /// Longest wait for the burst's verdicts, seconds (`--board`).
    #[arg(long, default_value_t = 600.0)]
    pub board_verdict_wait: f64,
    #[command(flatten)]
    pub flags: BuildFlags,
}

/// Run it.
pub fn run(args: Args) -> anyhow::Result<i32> {
    if args.board {
        anyhow::ensure!(
            args.board_seconds.is_finite() && args.board_seconds > 0.0 && args.board_clients > 0,
            "--board-seconds and --board-clients must be positive"
        );
        let spec = autoprune::board::bench::BenchSpec {
            seconds: args.board_seconds,
            clients: args.board_clients,
            hostile: args.board_hostile.clone(),
            autoprune: std::env::current_exe()?,
            workers: 2,
            verdict_wait: args.board_verdict_wait,
        };
        let report = autoprune::board::bench::run(&spec)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", autoprune::board::bench::render(&report));
        }
        return Ok(0);
    }
    if let Some(dir) = &args.synthetic_7b {
        let bytes = autoprune::run::bench::synthetic_7b(dir, args.layers)?;
        println!(
            "wrote {} ({} blocks, {:.2} GB of f16 weights)",
            autoprune::term::line(&dir.display().to_string()),
            args.layers,
            bytes as f64 / 1e9
        );
        return Ok(0);
    }
    let report = if args.gemm {
        autoprune::run::bench::gemm(args.reps)?
    } else {
        autoprune::run::bench::sandbox(&args.flags.builder()?, args.reps)?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.gemm {
        print_gemm(&report);
    } else {
        print_sandbox(&report, args.flags.trusted);
    }
    Ok(0)
}

fn print_gemm(report: &serde_json::Value) {
    let (backend, threads, reps, bf16_cpu) = (
        report["f32_backend"].as_str().unwrap_or(""),
        &report["threads"],
        &report["reps"],
        report["bf16"].as_bool().unwrap_or(false),
    );
    let rows = report["linear"].as_array().cloned().unwrap_or_default();
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
}

fn print_sandbox(report: &serde_json::Value, trusted: bool) {
    let reps = &report["reps"];
    let rows = report["wanda"].as_array().cloned().unwrap_or_default();
    let b = &report["build_seconds"];
    let (cold, warm, cached) = (
        b["cold"].as_f64().unwrap_or(0.0),
        b["warm"].as_f64().unwrap_or(0.0),
        b["cached"].as_f64().unwrap_or(0.0),
    );
    let inst = report["instantiate_microseconds"].as_f64().unwrap_or(0.0) / 1e6;
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
        !trusted, cold, warm, cached
    );
    println!("instantiate (fresh store + instance): {:.1} µs", inst * 1e6);
}
