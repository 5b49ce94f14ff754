//! Perplexity by the protocol: the first `n` non-overlapping windows of a token stream, mean
//! cross-entropy over each window's shifted positions, `ppl = exp(ΣNLL / (n·(seq−1)))`.

use std::time::Instant;

pub mod tasks;

use candle_core::{Tensor, D};
use rayon::prelude::*;

use crate::model::kernels::{max_f32, sum_exp_shifted};
use crate::model::{matmul, with_cpu_f32, Linear, Model, ModelError, RmsNorm};

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
    let mut sums = Vec::with_capacity(windows.len());
    for batch in windows.chunks(opts.batch) {
        sums.extend(batch_nll(model, batch)?);
        progress(sums.len(), windows.len());
    }
    Ok(Perplexity::from_window_sums(
        &sums,
        opts,
        start.elapsed().as_secs_f64(),
    ))
}

impl Perplexity {
    /// From the summed NLL of each window (`seq_len − 1` predicted positions each, as
    /// [`batch_nll`] returns them), added up batch by batch in `opts.batch` as [`perplexity`]
    /// does, so the same sums give the same number to the last bit.
    pub fn from_window_sums(sums: &[f64], opts: &PerplexityOptions, seconds: f64) -> Self {
        let total: f64 = sums
            .chunks(opts.batch.max(1))
            .map(|b| b.iter().sum::<f64>())
            .fold(0.0, |a, b| a + b);
        let predicted = sums.len() * (opts.seq_len - 1);
        let nll = total / predicted.max(1) as f64;
        Perplexity {
            ppl: nll.exp(),
            nll,
            windows: sums.len(),
            tokens: sums.len() * opts.seq_len,
            predicted,
            seconds,
        }
    }
}

/// Mean NLL per predicted token of each window (`seq − 1` positions each), in batches of
/// `batch` windows: the per-window losses a paired comparison needs
/// ([`crate::search::paired`]). `exp` of their mean is the perplexity over the windows.
pub fn window_nlls(
    model: &Model,
    windows: &[&[u32]],
    batch: usize,
) -> Result<Vec<f64>, ModelError> {
    let mut out = Vec::with_capacity(windows.len());
    for chunk in windows.chunks(batch.max(1)) {
        let predicted = chunk
            .first()
            .map_or(1, |w| w.len().saturating_sub(1).max(1));
        out.extend(
            batch_nll(model, chunk)?
                .into_iter()
                .map(|s| s / predicted as f64),
        );
    }
    Ok(out)
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
    let rope = model.rope(ids.dim(1)?)?;
    let mut x = model.embed(&ids)?;
    for block in &model.blocks {
        x = block.forward(&x, &rope, &mut |_, _| Ok(()))?;
    }
    hidden_nll(&model.norm, &model.lm_head, &x, windows)
}

/// Summed NLL of each window's positions 1..seq from the last block's output `x`
/// `[batch, seq, hidden]` of `windows`, through the final `norm` and output `head`: the end of
/// [`batch_nll`], for callers that ran the blocks themselves (the streaming run holds one
/// block at a time).
pub fn hidden_nll(
    norm: &RmsNorm,
    head: &Linear,
    x: &Tensor,
    windows: &[&[u32]],
) -> Result<Vec<f64>, ModelError> {
    let how = if x.device().is_cpu() && head.bias().is_none() {
        Head::Fused { panel: HEAD_PANEL }
    } else {
        Head::Chunked {
            rows: logit_rows(head.shape().0),
        }
    };
    hidden_nll_with(norm, head, x, windows, how)
}

/// How the output head turns final hidden states into per-position NLLs.
#[derive(Debug, Clone, Copy)]
enum Head {
    /// CPU: logits of `panel` vocabulary entries for all positions at a time, reduced to a
    /// per-row (max, Σexp) at once (see [`head_nll_cpu`]).
    Fused { panel: usize },
    /// Any device: full-vocabulary logits of `rows` positions at a time.
    Chunked { rows: usize },
}

/// Vocabulary entries per panel of the fused CPU head: a multiple of the 512-element blocks
/// of [`sum_exp_shifted`]; 1022 positions × 2048 × 4 B = 8 MB per task.
const HEAD_PANEL: usize = 2048;

fn hidden_nll_with(
    norm: &RmsNorm,
    head: &Linear,
    x: &Tensor,
    windows: &[&[u32]],
    how: Head,
) -> Result<Vec<f64>, ModelError> {
    let (b, t, h) = x.dims3()?;
    if b != windows.len() || windows.iter().any(|w| w.len() != t) || t < 2 {
        return Err(ModelError::Shape(format!(
            "hidden states {:?} for {} windows",
            x.dims(),
            windows.len()
        )));
    }
    // The last position predicts nothing inside the window: skip its logits. Full-vocabulary
    // logits of a whole batch (200 MB for two SmolLM2 windows) never exist at once.
    let hidden = norm.forward(&x.narrow(1, 0, t - 1)?)?;
    let n = b * (t - 1);
    let hidden = hidden.reshape((n, h))?;
    let targets: Vec<u32> = windows
        .iter()
        .flat_map(|w| w[1..].iter().copied())
        .collect();
    let per_pos = match how {
        Head::Fused { panel } => {
            let vocab = head.shape().0;
            with_cpu_f32(&hidden, |xs| {
                with_cpu_f32(head.weight(), |w| {
                    head_nll_cpu(head.backend(), xs, w, (n, vocab, h), &targets, panel)
                })
            })???
        }
        Head::Chunked { rows } => {
            let mut per_pos = Vec::with_capacity(n);
            for r0 in (0..n).step_by(rows.max(1)) {
                let len = rows.max(1).min(n - r0);
                let logits = head.forward(&hidden.narrow(0, r0, len)?)?;
                per_pos.extend(position_nll(&logits, &targets[r0..r0 + len])?);
            }
            per_pos
        }
    };
    Ok(per_pos
        .chunks_exact(t - 1)
        .map(|w| w.iter().sum())
        .take(b)
        .collect())
}

/// Positions per output-head chunk: about 24 MB of f32 logits, under glibc's largest
/// `mmap` threshold (32 MB), so the buffer is reused instead of freshly faulted in each time.
fn logit_rows(vocab: usize) -> usize {
    ((6 << 20) / vocab.max(1)).clamp(1, 4096)
}

thread_local! {
    static LOGITS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `logsumexp(x_i·Wᵀ) − x_i·W[target_i]` for the `n` rows of `x` `[n, k]` and the head `W`
/// `[vocab, k]`, one task per panel of `panel` vocabulary entries: each computes its logits
/// for all rows into a small buffer and keeps, per row, the panel's max `m_p`, `s_p =
/// Σ exp(z − m_p)` (as [`sum_exp_shifted`]) and the target logit if it falls in the panel.
/// Panels merge in order in f64: `lse = M + ln Σ_p s_p · exp(m_p − M)`, `M = max_p m_p`.
fn head_nll_cpu(
    be: matmul::Backend,
    x: &[f32],
    w: &[f32],
    (n, vocab, k): (usize, usize, usize),
    targets: &[u32],
    panel: usize,
) -> Result<Vec<f64>, ModelError> {
    if targets.len() != n || x.len() != n * k || w.len() != vocab * k {
        return Err(ModelError::Shape(format!(
            "head: {} targets, {} inputs and {} weights for {n} rows of {k} and {vocab} entries",
            targets.len(),
            x.len(),
            w.len()
        )));
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(ModelError::Input(format!(
            "target {bad} is outside the vocabulary"
        )));
    }
    let panel = panel.max(1);
    // Per panel: (max, Σexp) of every row, and the (row, logit) of targets in the panel.
    type Panel = (Vec<(f32, f64)>, Vec<(usize, f32)>);
    let parts: Vec<Panel> = (0..vocab.div_ceil(panel))
        .into_par_iter()
        .map(|p| {
            let (j0, j1) = (p * panel, ((p + 1) * panel).min(vocab));
            let cols = j1 - j0;
            LOGITS.with_borrow_mut(|buf| {
                let buf = matmul::scratch(buf, n * cols);
                // SAFETY: x is n×k, rows j0..j1 of w are inside it, buf holds n×cols.
                unsafe {
                    let wp = w.as_ptr().add(j0 * k);
                    matmul::sgemm(
                        be,
                        n,
                        cols,
                        k,
                        x.as_ptr(),
                        k,
                        wp,
                        k,
                        true,
                        buf.as_mut_ptr(),
                        cols,
                    );
                }
                let mut stats = Vec::with_capacity(n);
                let mut hits = Vec::new();
                for (i, row) in buf.chunks_exact(cols).enumerate() {
                    let m = max_f32(row);
                    stats.push((m, sum_exp_shifted(row, m)));
                    let tgt = targets[i] as usize;
                    if (j0..j1).contains(&tgt) {
                        hits.push((i, row[tgt - j0]));
                    }
                }
                (stats, hits)
            })
        })
        .collect();
    let mut target_logit = vec![0f32; n];
    for (_, hits) in &parts {
        for &(i, z) in hits {
            target_logit[i] = z;
        }
    }
    Ok((0..n)
        .map(|i| {
            let big = parts
                .iter()
                .map(|(s, _)| s[i].0)
                .fold(f32::NEG_INFINITY, f32::max);
            let total: f64 = parts
                .iter()
                .map(|(s, _)| s[i].1 * (f64::from(s[i].0) - f64::from(big)).exp())
                .sum();
            f64::from(big) + total.ln() - f64::from(target_logit[i])
        })
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
    fn head_paths_and_panel_widths_agree() {
        let m = Model::random(&ModelConfig::tiny(Arch::Llama), 5, &Device::Cpu).unwrap();
        let tokens: Vec<u32> = (0..48u32).map(|i| (i * 31 + 2) % 256).collect();
        let windows: Vec<&[u32]> = tokens.chunks_exact(16).collect();
        let rope = m.rope(16).unwrap();
        let mut x = m.embed(&m.ids_tensor(&windows).unwrap()).unwrap();
        for block in &m.blocks {
            x = block.forward(&x, &rope, &mut |_, _| Ok(())).unwrap();
        }
        let batch_nll_with = |m: &Model, windows: &[&[u32]], how| {
            hidden_nll_with(&m.norm, &m.lm_head, &x, windows, how)
        };
        let want = batch_nll_with(&m, &windows, Head::Chunked { rows: 1 << 20 }).unwrap();
        let heads = [
            Head::Chunked { rows: 1 },
            Head::Chunked { rows: 7 },
            Head::Chunked { rows: 44 },
            Head::Fused { panel: 1 },
            Head::Fused { panel: 16 },
            Head::Fused { panel: 100 },
            Head::Fused { panel: 4096 },
        ];
        for head in heads {
            let got = batch_nll_with(&m, &windows, head).unwrap();
            // Equal up to f32 rounding: products of other shapes may sum in another order.
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() < 1e-6 * b.abs(),
                    "{head:?}: {got:?} vs {want:?}"
                );
            }
        }
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
            return crate::testutil::not_run(&format!(
                "no SmolLM2/SOTU data under {} (run ./setup.sh)",
                data.root().display()
            ));
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
