//! `autoprune eval` as one library call: the perplexity of a model under the protocol.

use super::prune::ProtocolSpec;
use crate::eval::{perplexity_with_progress, PerplexityOptions};
use crate::model::Precision;
use crate::progress::{step, Progress};
use crate::report::{peak_rss_bytes, PplReport};
use crate::setup::{device, load_model, stream};
use serde::Serialize;
use std::path::PathBuf;

/// What `autoprune eval --json` prints (fields in the order it has always had them).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Evaluation text source.
    pub eval_source: String,
    /// Tokens in the evaluation stream.
    pub eval_tokens: usize,
    /// Seconds to load the model.
    pub load_seconds: f64,
    /// Model file or directory.
    pub model: PathBuf,
    /// Peak resident memory, if the OS tells.
    pub peak_rss_bytes: Option<u64>,
    /// The measurement.
    pub perplexity: PplReport,
    /// Arithmetic of the linear layers.
    pub precision: Precision,
    /// Tokens per window.
    pub seq_len: usize,
}

/// Run it.
pub fn run(spec: &ProtocolSpec, progress: &mut dyn Progress) -> anyhow::Result<EvalReport> {
    let loaded = load_model(spec.model.as_ref(), &device(&spec.device)?, spec.precision)?;
    let eval = stream(&loaded.tokenizer, spec.eval.as_ref(), "eval")?;
    let opts = PerplexityOptions {
        seq_len: spec.seq_len,
        windows: spec.eval_windows,
        batch: spec.eval_batch,
    };
    let ppl = step(progress, "eval", opts.windows, |adv| {
        perplexity_with_progress(&loaded.model, &eval.tokens, &opts, &mut |d, _| adv(d))
    })?;
    Ok(EvalReport {
        eval_source: eval.source,
        eval_tokens: eval.tokens.len(),
        load_seconds: loaded.seconds,
        model: loaded.path,
        peak_rss_bytes: peak_rss_bytes(),
        perplexity: ppl.into(),
        precision: spec.precision,
        seq_len: spec.seq_len,
    })
}
