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
    /// With `--synthetic-7b`: write SmolLM2-135M's shapes (30 blocks, `--layers` ignored)
    /// instead of LLaMA-2-7B's, for GPU checks where the real model is not at hand.
    #[arg(long, requires = "synthetic_7b")]
    pub smollm2_shape: bool,
    /// With `--synthetic-7b`: the tokenizer (`tokenizer.json`, or a GGUF holding one) to
    /// give the model (default: SmolLM2's from the data directory). Its vocabulary sets the
    /// model's.
    #[arg(long, requires = "synthetic_7b")]
    pub tokenizer: Option<std::path::PathBuf>,
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
    /// Instead: the calibration statistics of the device path against the host path, block
    /// by block over the whole model (seconds, and how far apart: Σx², Σx, max |x|, the first
    /// blocks' SparseGPT Hessians, Wanda masks). The reference is the model on the CPU with
    /// the host's f64 accumulation; the other side runs on `--device` (with `cpu`: candle's CPU
    /// backend, the device path's arithmetic without a GPU).
    #[arg(long)]
    pub stats: bool,
    /// Device of `--stats`'s compared path: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu", requires = "stats")]
    pub device: String,
    /// Model of `--stats` (default: SmolLM2 in the data directory).
    #[arg(long, requires = "stats")]
    pub model: Option<std::path::PathBuf>,
    /// Calibration text of `--stats` (default: SOTU before 1990).
    #[arg(long, requires = "stats")]
    pub calib: Option<std::path::PathBuf>,
    /// Calibration windows of `--stats`.
    #[arg(long, default_value_t = 32, requires = "stats")]
    pub calib_windows: usize,
    /// Tokens per window (`--stats`).
    #[arg(long, default_value_t = 512, requires = "stats")]
    pub seqlen: usize,
    /// Windows per forward pass (`--stats`).
    #[arg(long, default_value_t = 8, requires = "stats")]
    pub batch: usize,
    /// Blocks (the first ones) whose SparseGPT Hessians `--stats` also compares.
    #[arg(long, default_value_t = 2, requires = "stats")]
    pub hessian_blocks: usize,
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
    if args.stats {
        return stats(&args);
    }
    if let Some(dir) = &args.synthetic_7b {
        let layers = if args.smollm2_shape { 30 } else { args.layers };
        let bytes = autoprune::run::bench::synthetic_model(
            dir,
            layers,
            args.smollm2_shape,
            args.tokenizer.as_deref(),
        )?;
        println!(
            "wrote {} ({} blocks, {:.2} GB of f16 weights)",
            autoprune::term::line(&dir.display().to_string()),
            layers,
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

fn stats(args: &Args) -> anyhow::Result<i32> {
    use autoprune::run::device_stats::{run, StatsSpec};
    anyhow::ensure!(
        args.calib_windows > 0 && args.seqlen > 0 && args.batch > 0,
        "--calib-windows, --seqlen and --batch must be positive"
    );
    let spec = StatsSpec {
        model: args.model.clone(),
        calib: args.calib.clone(),
        windows: args.calib_windows,
        seq_len: args.seqlen,
        batch: args.batch,
        device: args.device.clone(),
        hessian_blocks: args.hessian_blocks,
    };
    let r = run(&spec, &mut |done, total| eprint!("\rblock {done}/{total}"))?;
    eprintln!();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(0);
    }
    let line = autoprune::term::line;
    println!(
        "calibration statistics of {} on {}: {} windows of {} tokens, host path (CPU, f64) against the device path (tensor ops)",
        line(&r.model),
        line(&r.device),
        r.windows,
        r.seq_len
    );
    println!(
        "{:>5} {:>10} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "block",
        "host s",
        "device s",
        "ratio",
        "Σx² rel",
        "Σx rel",
        "max rel",
        "H rel",
        "Wanda diff",
        "near-ties"
    );
    for b in &r.blocks {
        let h = b
            .hessian_rel
            .map_or("–".to_string(), |h| format!("{h:.2e}"));
        println!(
            "{:>5} {:>10.3} {:>10.3} {:>9.2} {:>10.2e} {:>10.2e} {:>10.2e} {:>10} {:>12} {:>10}",
            b.block,
            b.host_seconds,
            b.device_seconds,
            b.host_seconds / b.device_seconds.max(1e-12),
            b.sum_sq_rel,
            b.sum_rel,
            b.max_abs_rel,
            h,
            b.wanda_mask_diff,
            b.wanda_near_ties
        );
    }
    let (diff, ties, weights) = r.wanda();
    println!(
        "total: host {:.2} s, device {:.2} s, device {:.2}× the host path; worst Σx² {:.2e}, Σx {:.2e}, max |x| {:.2e}, Hessian {:.2e}; Wanda masks: {diff} of {weights} weights differ, {ties} of them near-ties",
        r.host_seconds,
        r.device_seconds,
        r.speedup,
        r.sum_sq_rel(),
        r.sum_rel(),
        r.max_abs_rel(),
        r.hessian_rel()
    );
    if let Some(d) = r.magnitude_mask_diff() {
        println!("magnitude masks: {d} of {weights} weights differ");
    }
    if let Some((sg, n)) = r.sparsegpt() {
        println!(
            "SparseGPT 50 % on the blocks with Hessians ({n} weights): host update {:.2} s, device update {:.2} s ({:.2}×); same factor: {} mask entries differ, updated weights {:.2e} apart (relative Frobenius norm), losses {:.2e} apart (worst layer); each path's own Hessian: {} differ",
            sg.host_seconds,
            sg.device_seconds,
            sg.host_seconds / sg.device_seconds.max(1e-12),
            sg.same_factor_mask_diff,
            sg.same_factor_weight_rel,
            sg.same_factor_loss_rel,
            sg.mask_diff
        );
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
