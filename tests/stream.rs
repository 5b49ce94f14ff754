//! `prune --stream`: the model read, pruned, measured and written one block at a time. The
//! same masks, perplexities and written weights as the in-memory run, on every family and
//! method; bounded memory on a two-block slice of LLaMA-2-7B's shapes; what it cannot do is
//! refused; a failed run leaves no model behind.

mod common;

use autoprune::eval::batch_nll;
use autoprune::model::{Arch, BlockStream, HfWriter, Model, ModelConfig, SaveDtype};
use autoprune::pipeline::{
    prune_model, prune_streaming, Method, PruneConfig, PruneJob, PruneReport, StreamJob,
};
use autoprune::prune::mask::Pattern;
use candle_core::Device;
use common::{autoprune, candidate, tokens};
use serde_json::Value;
use std::path::Path;

fn hashes(r: &PruneReport) -> Vec<String> {
    r.layers.iter().map(|l| l.mask_hash.clone()).collect()
}

/// Every weight of two models, bit for bit.
fn assert_same_weights(a: &Model, b: &Model) {
    let (a, b) = (a.hf_tensors(), b.hf_tensors());
    assert_eq!(a.len(), b.len());
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(x == y, "{name} differs");
    }
}

#[test]
fn streaming_equals_the_in_memory_run_on_every_family_and_method() {
    let wanda = candidate("candidates/wanda.rs");
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Gemma3] {
        let cfg = ModelConfig::tiny(arch);
        let dir = tempfile::tempdir().unwrap();
        Model::random(&cfg, 3, &Device::Cpu)
            .unwrap()
            .save_hf(dir.path())
            .unwrap();
        let toks = tokens(4096, cfg.vocab_size as u32);
        let calib: Vec<&[u32]> = toks[..4 * 24].chunks(24).collect();
        // Longer than Gemma's window of 8 tokens, and in batches of 2 (the last one short).
        let eval: Vec<&[u32]> = toks[1000..1000 + 5 * 20].chunks(20).collect();
        for (name, method) in [
            ("wanda", Method::Metric(&wanda)),
            ("sparsegpt", Method::SparseGpt),
        ] {
            let what = format!("{arch:?} {name}");
            let pcfg = PruneConfig::uniform(0.5, Pattern::PerRow, 3);
            let mut model = Model::load(dir.path(), &Device::Cpu).unwrap();
            let dense: Vec<f64> = eval
                .chunks(2)
                .flat_map(|c| batch_nll(&model, c).unwrap())
                .collect();
            let memory = prune_model(
                &mut model,
                &PruneJob::new(&calib, &method, &pcfg),
                &mut |_| {},
            )
            .unwrap();
            let pruned: Vec<f64> = eval
                .chunks(2)
                .flat_map(|c| batch_nll(&model, c).unwrap())
                .collect();

            let out = tempfile::tempdir().unwrap();
            let mut stream = BlockStream::open(dir.path(), &Device::Cpu).unwrap();
            let mut writer = HfWriter::create(out.path(), stream.config(), SaveDtype::F32).unwrap();
            let job = StreamJob {
                calib: &calib,
                method: &method,
                config: &pcfg,
                eval: &eval,
                eval_batch: 2,
                dense: true,
            };
            let mut blocks = 0;
            let s = prune_streaming(&mut stream, &job, Some(&mut writer), &mut |_| blocks += 1)
                .unwrap();
            writer.finish().unwrap();
            assert_eq!(blocks, cfg.num_layers, "{what}");
            assert_eq!(hashes(&s.report), hashes(&memory), "{what}: masks");
            assert_eq!(s.report.sparsity, memory.sparsity, "{what}");
            assert_eq!(s.dense_nlls.as_deref(), Some(&dense[..]), "{what}: dense");
            assert_eq!(s.pruned_nlls, pruned, "{what}: pruned");
            assert_same_weights(&Model::load(out.path(), &Device::Cpu).unwrap(), &model);
            assert_eq!(s.blocks.len(), cfg.num_layers);
            assert!(s.block_bytes > 0 && s.activation_bytes > 0);
        }
    }
}

/// `autoprune eval --json` of `model` on 2 evaluation windows of `seqlen`, with `extra` flags.
fn eval_json(model: &Path, seqlen: &str, extra: &[&str]) -> Value {
    let r = autoprune()
        .current_dir(common::workspace())
        .args([
            "eval",
            "--eval-windows",
            "2",
            "--seqlen",
            seqlen,
            "--json",
            "--model",
        ])
        .arg(model)
        .args(extra)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    serde_json::from_slice(&r.stdout).unwrap()
}

fn mask_hashes(r: &Value) -> Vec<Value> {
    r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mask_hash"].clone())
        .collect()
}

/// The real GGUF path: SmolLM2 streamed equals SmolLM2 loaded, to the last bit of the
/// perplexities and of the written file.
#[test]
fn smollm2_streamed_equals_loaded() {
    common::require_real_data!();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("memory"), dir.path().join("stream"));
    let flags = [
        "--metric",
        "candidates/wanda.rs",
        "--calib-windows",
        "2",
        "--eval-windows",
        "2",
        "--seqlen",
        "128",
        "--out",
    ];
    let ws = common::workspace();
    let run = |out: &Path, extra: &[&str]| {
        let mut args: Vec<&str> = flags.to_vec();
        args.push(out.to_str().unwrap());
        args.extend(extra);
        let r = autoprune()
            .current_dir(&ws)
            .arg("prune")
            .args(&args)
            .arg("--json")
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        serde_json::from_slice::<Value>(&r.stdout).unwrap()
    };
    let memory = run(&a, &[]);
    let stream = run(&b, &["--stream"]);
    assert_eq!(mask_hashes(&memory), mask_hashes(&stream));
    assert_eq!(
        memory["perplexity"]["dense"]["ppl"],
        stream["perplexity"]["dense"]["ppl"]
    );
    assert_eq!(
        memory["perplexity"]["pruned"]["ppl"],
        stream["perplexity"]["pruned"]["ppl"]
    );
    assert!(memory.get("stream").is_none());
    assert_eq!(stream["stream"]["blocks"].as_array().unwrap().len(), 30);
    let file = |d: &Path| std::fs::read(d.join("model/model.safetensors")).unwrap();
    assert!(file(&a) == file(&b), "the written models differ");
    assert!(b.join("model/tokenizer.json").is_file() && b.join("report.json").is_file());
    assert!(!b.join("model.partial").exists());
    // `eval --stream` of the written model: the loaded model's perplexity, to the last bit.
    let eval =
        |extra: &[&str]| eval_json(&b.join("model"), "128", extra)["perplexity"]["ppl"].clone();
    let loaded = eval(&[]);
    assert_eq!(loaded, eval(&["--stream"]));
    assert_eq!(loaded, stream["perplexity"]["pruned"]["ppl"]);
}

/// Item 4's proof: a two-block slice of LLaMA-2-7B's shapes (random f16 weights, 405 MB per
/// block) pruned with the peak resident memory within 1.5 × (one block's f32 weights + the
/// activations held), and the written model measured again by `autoprune eval`.
#[test]
fn seven_b_shaped_blocks_prune_in_bounded_memory() {
    common::require_real_data!(); // SmolLM2's tokenizer
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("llama2-7b-shape");
    let st = autoprune()
        .args(["bench", "--synthetic-7b"])
        .arg(&model)
        .args(["--layers", "2"])
        .status()
        .unwrap();
    assert!(st.success());
    let out = dir.path().join("out");
    let ws = common::workspace();
    let r = autoprune()
        .current_dir(&ws)
        .arg("prune")
        .args([
            "--stream",
            "--metric",
            "candidates/wanda.rs",
            "--sparsity",
            "0.5",
        ])
        .args([
            "--calib-windows",
            "2",
            "--eval-windows",
            "2",
            "--seqlen",
            "256",
        ])
        .args(["--save-dtype", "f16", "--json", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let rep: Value = serde_json::from_slice(&r.stdout).unwrap();
    let s = &rep["stream"];
    let block = s["block_bytes"].as_u64().unwrap();
    assert_eq!(block, 4 * (4 * 4096 * 4096 + 3 * 4096 * 11008));
    // Inputs and outputs of 2 calibration and 2 × 2 (dense, pruned) evaluation windows.
    let activations = s["activation_bytes"].as_u64().unwrap();
    assert_eq!(activations, 2 * (2 + 2 * 2) * 256 * 4096 * 4);
    let goal = s["goal_bytes"].as_u64().unwrap();
    assert_eq!(goal, (block + activations) * 3 / 2);
    let peak = rep["peak_rss_bytes"].as_u64().expect("Linux reports VmHWM");
    eprintln!(
        "peak RSS {:.0} MB, goal {:.0} MB (block {:.0} MB, activations {:.0} MB)",
        peak as f64 / 1e6,
        goal as f64 / 1e6,
        block as f64 / 1e6,
        s["activation_bytes"].as_f64().unwrap() / 1e6
    );
    assert!(peak <= goal, "peak RSS {peak} over the goal {goal}");
    assert_eq!(rep["layers"].as_array().unwrap().len(), 14);
    assert!((rep["sparsity_achieved"].as_f64().unwrap() - 0.5).abs() < 1e-6);
    // The written f16 model, loaded whole by `eval`: the pruned perplexity up to f16 rounding.
    let ev = eval_json(&out.join("model"), "256", &[]);
    let (a, b) = (
        ev["perplexity"]["nll"].as_f64().unwrap(),
        rep["perplexity"]["pruned"]["nll"].as_f64().unwrap(),
    );
    assert!(
        (a - b).abs() / b < 1e-3,
        "eval of the written model: nll {a} vs {b}"
    );
}

#[test]
fn what_streaming_cannot_do_is_refused() {
    common::require_real_data!();
    let ws = common::workspace();
    for extra in [
        &[
            "--metric",
            "candidates/wanda.rs",
            "--allocation",
            "sdsa",
            "--sparsity",
            "0.7",
        ][..],
        &["--metric", "candidates/wanda.rs", "--tasks", "sotu-next"][..],
        &["--metric", "candidates/wanda.rs", "--plan-only"][..],
        &[
            "--metric",
            "candidates/wanda.rs",
            "--eval-precision",
            "bf16",
        ][..],
        &["--metric", "candidates/gblm.rs"][..],
    ] {
        let r = autoprune()
            .current_dir(&ws)
            .args(["prune", "--stream"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(r.status.code(), Some(2), "{extra:?}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            err.contains("--stream cannot be combined"),
            "{extra:?}: {err}"
        );
    }
}

/// A metric that fails half-way: its verdict, and no model (nor a partial one) under `--out`.
#[test]
fn a_failed_streaming_run_leaves_no_model() {
    common::require_real_data!();
    let dir = tempfile::tempdir().unwrap();
    let ws = common::workspace();
    let r = autoprune()
        .current_dir(&ws)
        .args([
            "prune",
            "--stream",
            "--metric",
            "tests/attacks/nan_output.rs",
        ])
        .args([
            "--calib-windows",
            "1",
            "--eval-windows",
            "1",
            "--seqlen",
            "64",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        r.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!dir.path().join("model").exists());
    assert!(!dir.path().join("model.partial").exists());
    assert!(!dir.path().join("report.json").exists());
}

/// A truncated safetensors file: exit 2 naming the file, no panic, nothing under `--out`.
#[test]
fn a_truncated_model_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    Model::random(&ModelConfig::tiny(Arch::Llama), 1, &Device::Cpu)
        .unwrap()
        .save_hf(&model)
        .unwrap();
    let st = model.join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&st).unwrap();
    f.set_len(len - 1000).unwrap();
    let out = dir.path().join("out");
    let r = autoprune()
        .args(["prune", "--stream", "--method", "sparsegpt", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(
        err.contains("model.safetensors") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!out.exists(), "{out:?} was created");
}
