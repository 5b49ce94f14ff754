//! The checks every real model family runs against numbers measured by implementations that
//! are not ours (`tests/qwen2.rs`, `tests/gemma3.rs`): dense perplexity and token ids against
//! transformers, Wanda against the original code, the export read back.

use super::{autoprune, not_run, workspace};
use autoprune::data::DataDir;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What the references measured on a family's checkpoint (first 2 evaluation windows; Wanda
/// at 50 % on 4 calibration windows).
pub struct Reference {
    /// Dense perplexity by transformers loading the same GGUF.
    pub dense_2: f64,
    /// The original Wanda code on autoprune's dense f32 export.
    pub wanda_2: f64,
    /// sha256 of the evaluation stream's ids (little-endian u32) under the reference tokenizer.
    pub eval_ids_sha256: &'static str,
}

/// The model file from the data directory (`get` picks it), or `None` after reporting the
/// test as not run (a failure under CI).
pub fn real_model(
    what: &str,
    get: fn(&DataDir) -> autoprune::data::Result<PathBuf>,
) -> Option<PathBuf> {
    let data = DataDir::resolve();
    match get(&data) {
        Ok(p) if data.sotu_dir().is_ok() => Some(p),
        _ => {
            not_run(&format!(
                "no {what} or SOTU data under {} (run ./setup.sh)",
                data.root().display()
            ));
            None
        }
    }
}

/// The JSON a successful command printed.
pub fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// `|a − b| / b`.
pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b
}

/// `autoprune eval --json` of `model` on the first 2 evaluation windows.
pub fn eval_2(model: &Path) -> Value {
    json(
        &autoprune()
            .args(["eval", "--eval-windows", "2", "--json", "--model"])
            .arg(model)
            .output()
            .unwrap(),
    )
}

/// Tokenisation identical to the reference's, dense perplexity within 0.1 %.
pub fn check_dense(model: &Path, r: &Reference) {
    let v = eval_2(model);
    assert_eq!(v["eval_tokens_sha256"].as_str(), Some(r.eval_ids_sha256));
    let ppl = v["perplexity"]["ppl"].as_f64().unwrap();
    assert!(
        rel(ppl, r.dense_2) < 1e-3,
        "autoprune {ppl} vs transformers {}",
        r.dense_2
    );
}

/// Wanda through the sandboxed plugin: half of every linear layer pruned, perplexity within
/// 1 % of the original algorithm's, and the Hugging Face export (in the returned folder's
/// `gw/model`) measures the same perplexity on the same ids when read back.
pub fn check_wanda_export(model: &Path, r: &Reference) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gw");
    let v = json(
        &autoprune()
            .args(["prune", "--metric"])
            .arg(workspace().join("candidates/wanda.rs"))
            .args(["--calib-windows", "4", "--eval-windows", "2", "--json"])
            .arg("--model")
            .arg(model)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap(),
    );
    let achieved = v["sparsity_achieved"].as_f64().unwrap();
    assert!((achieved - 0.5).abs() < 1e-4, "sparsity {achieved}");
    let dense = v["perplexity"]["dense"]["ppl"].as_f64().unwrap();
    let pruned = v["perplexity"]["pruned"]["ppl"].as_f64().unwrap();
    assert!(rel(dense, r.dense_2) < 1e-3, "dense {dense}");
    assert!(
        rel(pruned, r.wanda_2) < 1e-2,
        "autoprune Wanda {pruned} vs the original algorithm's {}",
        r.wanda_2
    );
    let back = eval_2(&out.join("model"));
    assert_eq!(back["eval_tokens_sha256"].as_str(), Some(r.eval_ids_sha256));
    let reloaded = back["perplexity"]["ppl"].as_f64().unwrap();
    assert!(
        rel(reloaded, pruned) < 1e-4,
        "export {reloaded} vs in memory {pruned}"
    );
    dir
}
