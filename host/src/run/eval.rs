//! `autoprune eval` as one library call: the perplexity of a model under the protocol, and its
//! zero-shot accuracy on multiple-choice tasks.

use crate::data::{read_sotu, DataDir, EVAL_FROM_YEAR};
use crate::eval::tasks::{accuracy, read_tasks, score, sotu_next, Item, TaskScore, SOTU_NEXT};
use crate::eval::{eval_windows, perplexity_with_progress, Perplexity};
use crate::model::Precision;
use crate::pipeline::stream_nlls;
use crate::progress::{step, Progress};
use crate::report::{peak_rss_bytes, PplReport};
use crate::setup::ProtocolSpec;
use crate::setup::{device, load_model, open_streamed, stream, Streamed};
use serde::Serialize;
use std::path::PathBuf;

/// What `autoprune eval --json` prints (with [`crate::report::sorted_json_pretty`]).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Evaluation text source.
    pub eval_source: String,
    /// Tokens in the evaluation stream.
    pub eval_tokens: usize,
    /// sha256 of the evaluation stream's ids as little-endian u32 (to compare tokenisers).
    pub eval_tokens_sha256: String,
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
    /// Zero-shot accuracy per task (absent when no task was asked for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub zero_shot: Vec<TaskScore>,
}

/// Zero-shot tasks to score: JSONL files, or the built-in [`SOTU_NEXT`].
#[derive(Debug, Clone, Default)]
pub struct TaskSpec {
    /// Files or built-in names.
    pub tasks: Vec<String>,
    /// Items of a built-in task.
    pub items: usize,
}

impl TaskSpec {
    /// Each task's name and items.
    pub fn load(&self) -> anyhow::Result<Vec<(String, Vec<Item>)>> {
        let mut out = Vec::new();
        for t in &self.tasks {
            if t == SOTU_NEXT {
                let speeches = read_sotu(&DataDir::resolve().sotu_dir()?)?;
                let items = sotu_next(&speeches, EVAL_FROM_YEAR, self.items);
                anyhow::ensure!(
                    !items.is_empty(),
                    "the task {SOTU_NEXT} has no items (--task-items {})",
                    self.items
                );
                out.push((t.clone(), items));
            } else {
                let path = std::path::Path::new(t);
                let name = path
                    .file_stem()
                    .map_or(t.clone(), |s| s.to_string_lossy().into_owned());
                out.push((name, read_tasks(path)?));
            }
        }
        Ok(out)
    }
}

/// Zero-shot accuracy of `model` on every task, each a step of `progress`.
pub fn zero_shot(
    model: &crate::model::Model,
    tokenizer: &crate::model::Tokenizer,
    tasks: &[(String, Vec<Item>)],
    what: &str,
    progress: &mut dyn Progress,
) -> anyhow::Result<Vec<TaskScore>> {
    let mut out = Vec::new();
    for (name, items) in tasks {
        let t = std::time::Instant::now();
        let scored = step(progress, &format!("{what} {name}"), items.len(), |adv| {
            score(model, tokenizer, items, &mut |d, _| adv(d))
        })?;
        out.push(accuracy(name, items, &scored, t.elapsed().as_secs_f64()));
    }
    Ok(out)
}

/// sha256 of token ids written as little-endian u32 (`numpy.array(ids, '<u4').tobytes()`).
pub fn ids_sha256(ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    crate::hash::sha256_hex(&bytes)
}

/// Run it: perplexity, then zero-shot accuracy on `tasks`. With `stream` the model is read
/// one block at a time ([`crate::pipeline::stream_nlls`]: the same number, about one block of
/// memory; zero-shot tasks are refused).
pub fn run(
    spec: &ProtocolSpec,
    tasks: &TaskSpec,
    stream_blocks: bool,
    progress: &mut dyn Progress,
) -> anyhow::Result<EvalReport> {
    if stream_blocks {
        anyhow::ensure!(
            tasks.tasks.is_empty(),
            "--stream cannot be combined with zero-shot tasks (--tasks): they need the whole model in memory"
        );
        return run_streaming(spec, progress);
    }
    let tasks = tasks.load()?;
    let loaded = load_model(spec.model.as_ref(), &device(&spec.device)?, spec.precision)?;
    let eval = stream(&loaded.tokenizer, spec.eval.as_ref(), "eval")?;
    let opts = spec.perplexity_options();
    let ppl = step(progress, "eval", opts.windows, |adv| {
        perplexity_with_progress(&loaded.model, &eval.tokens, &opts, &mut |d, _| adv(d))
    })?;
    let zero_shot = zero_shot(&loaded.model, &loaded.tokenizer, &tasks, "tasks", progress)?;
    Ok(EvalReport {
        eval_source: eval.source,
        eval_tokens: eval.tokens.len(),
        eval_tokens_sha256: ids_sha256(&eval.tokens),
        load_seconds: loaded.seconds,
        model: loaded.path,
        peak_rss_bytes: peak_rss_bytes(),
        perplexity: ppl.into(),
        precision: spec.precision,
        seq_len: spec.seq_len,
        zero_shot,
    })
}

/// [`run`] with `stream`: perplexity only, one block in memory.
fn run_streaming(spec: &ProtocolSpec, progress: &mut dyn Progress) -> anyhow::Result<EvalReport> {
    let Streamed {
        mut model,
        tokenizer,
        path,
        seconds: load_seconds,
    } = open_streamed(spec.model.as_ref(), &device(&spec.device)?, spec.precision)?;
    let eval = stream(&tokenizer, spec.eval.as_ref(), "eval")?;
    let opts = spec.perplexity_options();
    let windows = eval_windows(&eval.tokens, &opts)?;
    let t = std::time::Instant::now();
    let sums = step(
        progress,
        "eval (streamed)",
        model.config().num_layers,
        |adv| stream_nlls(&mut model, &windows, opts.batch, &mut |d, _| adv(d)),
    )?;
    let ppl = Perplexity::from_window_sums(&sums, &opts, t.elapsed().as_secs_f64());
    Ok(EvalReport {
        eval_source: eval.source,
        eval_tokens: eval.tokens.len(),
        eval_tokens_sha256: ids_sha256(&eval.tokens),
        load_seconds,
        model: path,
        peak_rss_bytes: peak_rss_bytes(),
        perplexity: ppl.into(),
        precision: spec.precision,
        seq_len: spec.seq_len,
        zero_shot: Vec::new(),
    })
}
