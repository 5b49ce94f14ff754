//! A real Gemma 3 checkpoint (Gemma-3-270M, GGUF Q4_K_M with Q4_K/Q5_0/Q6_K/Q8_0 tensors:
//! gated GELU, QK-norm, pre- and post-norms, sliding-window and global layers with two RoPE
//! bases, its SentencePiece vocabulary from GGUF metadata), checked against numbers measured by
//! implementations that are not ours: llama.cpp's tokenizer (`llama-server /tokenize`),
//! transformers loading the same GGUF (`tests/gguf_reference.py`), and the original Wanda code
//! (`tests/wanda_reference.py`).

mod common;

use autoprune::data::{sotu_streams, DataDir};
use autoprune::model::Tokenizer;
use autoprune::run::eval::ids_sha256;
use common::family::{check_dense, check_wanda_export, real_model, Reference};
use std::path::PathBuf;

/// sha256 of the SOTU evaluation stream's ids (little-endian u32, one BOS first) under
/// llama.cpp's tokenizer of the same GGUF (`POST /tokenize {"add_special": true}`) and under
/// transformers' (`tok(text)`): both give these 237,605 ids.
const EVAL_IDS_SHA256: &str = "f94cbaa0b85f47c9fa3cc757bcfc93f8543e51d2010b8e5b14a64119207b6dad";
/// The same for the calibration stream (llama.cpp: 1,853,875 ids).
const CALIB_IDS_SHA256: &str = "57beb62d49c65c8a86f5d5baec480f34e367f34457e4bc7753f2d7b32e1f29f8";
/// Dense perplexity of the first 2 evaluation windows under transformers 5.25 loading and
/// dequantising the same GGUF (f32, eager attention):
/// `python3 tests/gguf_reference.py data/gemma3/gemma-3-270m-q4_k_m.gguf 2`.
const TRANSFORMERS_DENSE_2: f64 = 29.6047;
/// The original Wanda algorithm in PyTorch (`tests/wanda_reference.py`, 4 calibration windows,
/// 2 evaluation windows) on autoprune's dense f32 export of the same model; its masks equal
/// ours in blocks 0–7 and differ from block 8 on (f32 ties), 78,158 entries of 119 M in all.
const REFERENCE_WANDA_2: f64 = 82.7466;

/// The numbers above.
const REFERENCE: Reference = Reference {
    dense_2: TRANSFORMERS_DENSE_2,
    wanda_2: REFERENCE_WANDA_2,
    eval_ids_sha256: EVAL_IDS_SHA256,
};

fn gemma3() -> Option<PathBuf> {
    real_model("Gemma-3-270M", DataDir::gemma3_gguf)
}

/// The SentencePiece vocabulary rebuilt from GGUF metadata tokenises both SOTU streams exactly
/// as llama.cpp does.
#[test]
fn tokenization_is_llama_cpps() {
    let Some(model) = gemma3() else { return };
    let tk = Tokenizer::from_gguf(&model).unwrap();
    let streams = sotu_streams(&DataDir::resolve().sotu_dir().unwrap()).unwrap();
    let eval = tk.encode(&streams.eval).unwrap();
    assert_eq!(
        (eval.len(), eval[0]),
        (237_605, 2),
        "one BOS, then the text"
    );
    assert_eq!(ids_sha256(&eval), EVAL_IDS_SHA256);
    let calib = tk.encode(&streams.calib).unwrap();
    assert_eq!(calib.len(), 1_853_875);
    assert_eq!(ids_sha256(&calib), CALIB_IDS_SHA256);
}

/// Dense perplexity within 0.1 % of transformers', on the same ids.
#[test]
fn dense_perplexity_agrees_with_transformers() {
    let Some(model) = gemma3() else { return };
    check_dense(&model, &REFERENCE);
}

/// Wanda through the sandboxed plugin: half of every linear layer pruned, perplexity within
/// 1 % of the original algorithm's, and the Hugging Face export (Gemma's `(1 + w)` norms written
/// back as `w`) measures the same perplexity on the same ids when read back.
#[test]
fn wanda_prunes_exports_and_reloads() {
    let Some(model) = gemma3() else { return };
    let dir = check_wanda_export(&model, &REFERENCE);
    let config = std::fs::read_to_string(dir.path().join("gw/model/config.json")).unwrap();
    assert!(config.contains("Gemma3ForCausalLM"), "{config}");
}
