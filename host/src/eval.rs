//! Perplexity by the protocol: the first `n` non-overlapping windows of a token stream, mean
//! cross-entropy over each window's shifted positions, `ppl = exp(ΣNLL / (n·(seq−1)))`.

use std::time::Instant;

use candle_core::{Tensor, D};
use rayon::prelude::*;

use crate::model::kernels::{max_f32, sum_exp_shifted};
use crate::model::{Model, ModelError};

/// Errors of an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The text has fewer tokens than the requested windows need.
    #[error(
        "the evaluation text has {tokens} tokens but {windows} windows of {seq_len} need {needed}"
    )]
    TooShort {
        /// Tokens available.
        tokens: usize,
        /// Tokens needed.
        needed: usize,
        /// Windows requested.
        windows: usize,
        /// Window length.
        seq_len: usize,
    },
    /// Options out of range.
    #[error("invalid evaluation options: {0}")]
    Options(String),
    /// The forward pass failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// How to measure perplexity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerplexityOptions {
    /// Tokens per window.
    pub seq_len: usize,
    /// Number of windows (taken from the start of the stream).
    pub windows: usize,
    /// Windows per forward pass.
    pub batch: usize,
}

impl PerplexityOptions {
    /// The SOTU-512 protocol: 64 windows of 512 tokens.
    pub const SOTU_512: Self = Self {
        seq_len: 512,
        windows: 64,
        // Two windows per pass, measured best for SmolLM2 on 2 cores (64 windows: 63 s at 2,
        // 68 s at 1, 71 s at 4). The GEMMs are already large at one window; at four, the
        // attention scores pass 32 MB, beyond which glibc maps fresh pages for every tensor.
        batch: 2,
    };
}

impl Default for PerplexityOptions {
    fn default() -> Self {
        Self::SOTU_512
    }
}

/// The outcome of a perplexity measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// `exp(nll)`.
    pub ppl: f64,
    /// Mean negative log-likelihood per predicted token (nats).
    pub nll: f64,
    /// Windows evaluated.
    pub windows: usize,
    /// Tokens fed to the model (`windows · seq_len`).
    pub tokens: usize,
    /// Positions scored (`windows · (seq_len − 1)`).
    pub predicted: usize,
    /// Wall-clock seconds of the forward passes.
    pub seconds: f64,
}

/// Perplexity of `model` on `tokens` (see the module docs).
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    opts: &PerplexityOptions,
) -> Result<Perplexity, EvalError> {
    perplexity_with_progress(model, tokens, opts, &mut |_, _| {})
}

/// [`perplexity`], calling `progress(windows_done, windows_total)` after every batch
/// (e.g. to drive an `indicatif::ProgressBar`).
pub fn perplexity_with_progress(
    model: &Model,
    tokens: &[u32],
    opts: &PerplexityOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity, EvalError> {
    let windows = eval_windows(tokens, opts)?;
    let start = Instant::now();
    let mut total = 0.0f64;
    let mut done = 0;
    for batch in windows.chunks(opts.batch) {
        total += batch_nll(model, batch)?.iter().sum::<f64>();
        done += batch.len();
        progress(done, windows.len());
    }
    let predicted = windows.len() * (opts.seq_len - 1);
    let nll = total / predicted as f64;
    Ok(Perplexity {
        ppl: nll.exp(),
        nll,
        windows: windows.len(),
        tokens: windows.len() * opts.seq_len,
        predicted,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The first `opts.windows` non-overlapping windows of `tokens`.
pub fn eval_windows<'a>(
    tokens: &'a [u32],
    opts: &PerplexityOptions,
) -> Result<Vec<&'a [u32]>, EvalError> {
    if opts.seq_len < 2 || opts.windows == 0 || opts.batch == 0 {
        return Err(EvalError::Options(format!(
            "need seq_len ≥ 2, windows ≥ 1, batch ≥ 1 (got {opts:?})"
        )));
    }
    let needed = opts.windows * opts.seq_len;
    if tokens.len() < needed {
        return Err(EvalError::TooShort {
            tokens: tokens.len(),
            needed,
            windows: opts.windows,
            seq_len: opts.seq_len,
        });
    }
    Ok(tokens[..needed].chunks_exact(opts.seq_len).collect())
}

/// Summed NLL of each window's positions 1..seq given the preceding tokens.
pub fn batch_nll(model: &Model, windows: &[&[u32]]) -> Result<Vec<f64>, ModelError> {
    let ids = model.ids_tensor(windows)?;
    let (b, t) = ids.dims2()?;
    let rope = model.rope(t)?;
    let mut x = model.embed(&ids)?;
    for block in &model.blocks {
        x = block.forward(&x, &rope, &mut |_, _| Ok(()))?;
    }
    // The last position predicts nothing inside the window: skip its logits.
    let logits = model.logits(&x.narrow(1, 0, t - 1)?)?;
    let targets: Vec<u32> = windows
        .iter()
        .flat_map(|w| w[1..].iter().copied())
        .collect();
    let per_pos = position_nll(&logits, &targets)?;
    Ok(per_pos
        .chunks_exact(t - 1)
        .map(|w| w.iter().sum())
        .take(b)
        .collect())
}

/// `logsumexp(row) − row[target]` for every row of `[batch, seq, vocab]` logits.
fn position_nll(logits: &Tensor, targets: &[u32]) -> Result<Vec<f64>, ModelError> {
    let vocab = logits.dim(D::Minus1)?;
    let logits = logits.contiguous()?;
    let (storage, layout) = logits.storage_and_layout();
    if let (candle_core::Storage::Cpu(cpu), Some((lo, hi))) =
        (&*storage, layout.contiguous_offsets())
    {
        let data = &cpu.as_slice::<f32>()?[lo..hi];
        return Ok(rows_nll(data, vocab, targets));
    }
    drop(storage);
    device_nll(&logits, targets)
}

/// CPU path: one pass per row over the slice, rows in parallel, results in row order (so the
/// later f64 sum is deterministic).
fn rows_nll(data: &[f32], vocab: usize, targets: &[u32]) -> Vec<f64> {
    data.par_chunks_exact(vocab)
        .zip(targets.par_iter())
        .map(|(row, &t)| row_nll(row, t as usize))
        .collect()
}

/// Stable `logsumexp(row) − row[target]`: exponentials of `x − max` are ≤ 1, so the sum
/// cannot overflow.
fn row_nll(row: &[f32], target: usize) -> f64 {
    let max = max_f32(row);
    f64::from(max) + sum_exp_shifted(row, max).ln() - f64::from(row[target])
}

/// Device path (CUDA later): the same formula with tensor ops, then one small copy.
fn device_nll(logits: &Tensor, targets: &[u32]) -> Result<Vec<f64>, ModelError> {
    let vocab = logits.dim(D::Minus1)?;
    let rows = logits.reshape(((), vocab))?;
    let max = rows.max_keepdim(D::Minus1)?;
    let lse = (rows
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max)?;
    let idx = Tensor::from_slice(targets, (targets.len(), 1), logits.device())?;
    let picked = rows.gather(&idx, D::Minus1)?;
    let nll = (lse - picked)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(nll.into_iter().map(f64::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, ModelConfig};
    use candle_core::Device;

    #[test]
    fn row_nll_hand_values() {
        // logits [0, ln 3] → softmax [1/4, 3/4]: NLL of index 1 = ln(4/3) = 0.2876821.
        let row = [0.0, 3f32.ln()];
        assert!((row_nll(&row, 1) - (4.0f64 / 3.0).ln()).abs() < 1e-6);
        // Huge logits do not overflow: [1000, 1000] → ln 2.
        assert!((row_nll(&[1000.0, 1000.0], 0) - 2f64.ln()).abs() < 1e-6);
        // Uniform over 11 (exercises the 8-lane body and the tail): ln 11.
        assert!((row_nll(&[0.5; 11], 3) - 11f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn cpu_and_tensor_paths_agree() {
        let dev = Device::Cpu;
        let data: Vec<f32> = (0..3 * 37)
            .map(|i| ((i * 29 % 53) as f32 - 26.0) / 5.0)
            .collect();
        let logits = Tensor::from_vec(data.clone(), (1, 3, 37), &dev).unwrap();
        let targets = [0u32, 17, 36];
        let a = rows_nll(&data, 37, &targets);
        let b = device_nll(&logits, &targets).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn perplexity_equals_mean_of_forward_nll() {
        let m = Model::random(&ModelConfig::tiny(Arch::Llama), 3, &Device::Cpu).unwrap();
        let tokens: Vec<u32> = (0..70u32).map(|i| (i * 97 + 5) % 256).collect();
        let opts = PerplexityOptions {
            seq_len: 16,
            windows: 4,
            batch: 3,
        };
        let mut calls = Vec::new();
        let p =
            perplexity_with_progress(&m, &tokens, &opts, &mut |d, n| calls.push((d, n))).unwrap();
        assert_eq!(calls, vec![(3, 4), (4, 4)]);
        assert_eq!((p.windows, p.tokens, p.predicted), (4, 64, 60));
        // Independent: full forward logits, log-softmax, pick targets.
        let mut total = 0.0;
        for w in tokens[..64].chunks(16) {
            let logits = m.forward(&m.ids_tensor(&[w]).unwrap()).unwrap();
            let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
            let lsm = lsm.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
            for (pos, &next) in w[1..].iter().enumerate() {
                total -= f64::from(lsm[pos][next as usize]);
            }
        }
        let want = (total / 60.0).exp();
        assert!((p.ppl - want).abs() / want < 1e-5, "{} vs {want}", p.ppl);
        // Batch size does not change the number.
        let one = perplexity(&m, &tokens, &PerplexityOptions { batch: 1, ..opts }).unwrap();
        assert!((one.ppl - p.ppl).abs() / p.ppl < 1e-6);
    }

    #[test]
    fn short_text_and_bad_options_are_errors() {
        let m = Model::random(&ModelConfig::tiny(Arch::Llama), 3, &Device::Cpu).unwrap();
        let opts = PerplexityOptions {
            seq_len: 16,
            windows: 4,
            batch: 2,
        };
        let err = perplexity(&m, &[1; 63], &opts).unwrap_err();
        assert!(
            matches!(err, EvalError::TooShort { needed: 64, .. }),
            "{err}"
        );
        assert!(matches!(
            perplexity(&m, &[1; 64], &PerplexityOptions { seq_len: 1, ..opts }),
            Err(EvalError::Options(_))
        ));
        assert!(matches!(
            perplexity(&m, &[1000; 64], &opts),
            Err(EvalError::Model(ModelError::Input(_)))
        ));
    }

    /// Dense SmolLM2-135M-Instruct on SOTU-512; the reference is 27.1338. Run with
    /// `cargo test --release -p autoprune --lib eval::tests::sotu_dense_perplexity -- --ignored --nocapture`.
    #[test]
    #[ignore = "loads the real model and takes about a minute"]
    fn sotu_dense_perplexity() {
        let data = crate::data::DataDir::resolve();
        let (Ok(gguf), Ok(streams)) = (data.smollm2_gguf(), data.sotu_streams()) else {
            eprintln!(
                "skipped: no SmolLM2/SOTU data under {} (run ./setup.sh)",
                data.root().display()
            );
            return;
        };
        let t0 = Instant::now();
        let model = Model::load(&gguf, &Device::Cpu).unwrap();
        let tk = crate::model::Tokenizer::from_gguf(&gguf).unwrap();
        tk.check_fits(&model.config).unwrap();
        let load_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let tokens = tk.encode(&streams.eval).unwrap();
        let tok_s = t1.elapsed().as_secs_f64();
        let p = perplexity(&model, &tokens, &PerplexityOptions::SOTU_512).unwrap();
        eprintln!(
            "dense SOTU-512 ppl {:.4} (nll {:.6}) over {} windows: load {load_s:.1} s, tokenize {tok_s:.1} s, eval {:.1} s",
            p.ppl, p.nll, p.windows, p.seconds
        );
        assert!((p.ppl / 27.1338 - 1.0).abs() < 0.005, "ppl {}", p.ppl);
    }
}
