//! `autoprune sweep` as one library call: a grid of metrics × sparsities × allocations under
//! one protocol, each finished cell appended to `cells.jsonl`, then a table and an SVG plot.
//!
//! What is shared across cells is computed once: tokenization, the dense perplexity, the
//! dense statistics pass (for non-uniform allocations) and each metric's unit summaries per
//! target. A rerun (after a crash, or with more cells) skips every cell already there.

pub mod plot;
pub mod table;

pub use plot::svg_plot;
pub use table::markdown_table;

use super::allocate::{extras_if_needed, gradients_if_needed, stats_pass};
use crate::alloc::summary::{summarize, DenseStats};
use crate::alloc::{expand, Allocation, Granularity, SkewSource, UnitSummary};
use crate::calib::{validation_offsets, window_offsets, windows, Sampler};
use crate::eval::tasks::{Item, TaskScore};
use crate::eval::{eval_windows, perplexity_with_progress, PerplexityOptions};
use crate::model::{Model, Precision};
use crate::pipeline::{prune_model, Method, PruneConfig, PruneJob};
use crate::progress::{step, Progress};
use crate::prune::mask::Pattern;
use crate::run::eval::{zero_shot, TaskSpec};
use crate::sandbox::{sha256_hex, Plugin};
use crate::setup::ProtocolSpec;
use crate::setup::{device, file_name, load_model, stream};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One finished cell, one line of `cells.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    /// Identity: protocol, metric hash, target, rule, granularity, pattern.
    pub key: String,
    /// Metric name (`dense` for the unpruned model).
    pub metric: String,
    /// Rule label, e.g. `owl M=5 λ=0.08`.
    pub allocation: String,
    /// Rule family: `uniform`, `owl`, `sdsa` (or `dense`).
    pub family: String,
    /// Comparison group.
    pub pattern: String,
    /// Target sparsity.
    pub sparsity: f64,
    /// Achieved sparsity over all linear weights.
    pub achieved: f64,
    /// Perplexity.
    pub ppl: f64,
    /// Per-unit allocated sparsities.
    pub unit_sparsity: Vec<f64>,
    /// Seconds for this cell (allocation, prune, evaluation).
    pub seconds: f64,
    /// Zero-shot accuracy per task (`--tasks`; absent when none was asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zero_shot: Vec<TaskScore>,
}

/// One metric of the grid: its (terminal-safe) name, its file's hash, the loaded plugin.
pub struct SweepMetric<'a> {
    /// Name, already escaped for terminals, tables and plots.
    pub name: String,
    /// SHA-256 of the plugin file (part of every cell's key).
    pub sha256: String,
    /// The plugin.
    pub plugin: &'a Plugin,
}

/// Everything `autoprune sweep` does, built from its flags.
pub struct SweepSpec<'a> {
    /// The metrics.
    pub metrics: Vec<SweepMetric<'a>>,
    /// Target sparsities, each in [0, 1).
    pub sparsities: Vec<f64>,
    /// Allocation rules.
    pub rules: Vec<Allocation>,
    /// What gets one sparsity.
    pub granularity: Granularity,
    /// Comparison group (unstructured only).
    pub pattern: Pattern,
    /// Model, texts, windows.
    pub protocol: ProtocolSpec,
    /// Calibration text (`None`: SOTU before 1990).
    pub calib: Option<PathBuf>,
    /// Calibration windows (evenly spaced).
    pub calib_windows: usize,
    /// Calibration windows per forward pass.
    pub calib_batch: usize,
    /// Measure on this many held-out windows of the calibration stream instead of the
    /// evaluation text.
    pub validation: Option<usize>,
    /// Zero-shot tasks scored on every cell's model (none: perplexity only).
    pub tasks: TaskSpec,
    /// Output folder.
    pub out: PathBuf,
    /// The SVG plot.
    pub plot: PathBuf,
}

/// What a sweep leaves: every cell under its protocol, the table, and the plot's path.
pub struct SweepResult {
    /// Cells measured under this protocol (earlier runs' included).
    pub cells: Vec<Cell>,
    /// The markdown table (also in `table.md`).
    pub table: String,
}

/// The label of a rule in tables, e.g. `owl M=5 λ=0.08`.
pub fn rule_label(a: &Allocation) -> String {
    match a {
        Allocation::Uniform => "uniform".into(),
        Allocation::Owl(p) => format!("owl M={} λ={}", p.m, p.lambda),
        Allocation::Sdsa(p) => format!(
            "sdsa T={} δ={}{}",
            p.temperature,
            p.delta,
            match p.source {
                SkewSource::Weights => "",
                SkewSource::Wanda => " (wanda skew)",
                SkewSource::Scores => " (score skew)",
            }
        ),
    }
}

/// Refuse a grid the sweep cannot run, before any work.
pub fn check(spec: &SweepSpec) -> anyhow::Result<()> {
    if spec.sparsities.iter().any(|s| !(0.0..1.0).contains(s)) {
        anyhow::bail!("sparsities must lie in [0, 1)");
    }
    if let Pattern::NM { .. } = spec.pattern {
        anyhow::bail!(
            "a sweep over sparsities needs an unstructured pattern (row, layer, layer-exact)"
        );
    }
    if spec.rules.iter().any(|r| *r != Allocation::Uniform) {
        super::allocate::check_pattern(spec.pattern)?;
    }
    if spec.plot.extension().and_then(|e| e.to_str()) != Some("svg") {
        anyhow::bail!("the plot is drawn as SVG: name it *.svg");
    }
    Ok(())
}

/// Cells already in `path` (none if it does not exist); a line cut short by a crash is
/// ignored, so that cell runs again.
pub fn read_cells(path: &Path) -> anyhow::Result<Vec<Cell>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Append `cell` to `path` as one line, synced.
pub fn append_cell(path: &Path, cell: &Cell) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // A crash may have left a partial last line: start on a fresh one.
    let partial = std::fs::read(path)
        .map(|b| b.last().is_some_and(|&c| c != b'\n'))
        .unwrap_or(false);
    if partial {
        writeln!(f)?;
    }
    writeln!(f, "{}", serde_json::to_string(cell)?)?;
    f.sync_data()?;
    Ok(())
}

/// The evaluation tokens, their source and window count: the evaluation text, or held-out
/// windows of the calibration stream.
struct EvalText {
    tokens: Vec<u32>,
    source: String,
    windows: usize,
}

/// What every cell shares: the model file, the calibration windows, the evaluation text, and
/// the protocol's key (the prefix of every cell's key).
struct Shared {
    device: candle_core::Device,
    model_path: PathBuf,
    calib_tokens: Vec<u32>,
    offsets: Vec<usize>,
    eval: EvalText,
    opts: PerplexityOptions,
    protocol_key: String,
    cells_path: PathBuf,
    tokenizer: crate::model::Tokenizer,
    tasks: Vec<(String, Vec<Item>)>,
}

impl Shared {
    fn calib_windows(&self) -> Vec<&[u32]> {
        windows(&self.calib_tokens, &self.offsets, self.opts.seq_len)
    }
}

/// Load the model and the texts, place the windows, and key the protocol.
fn prepare(spec: &SweepSpec) -> anyhow::Result<(Shared, Model)> {
    let p = &spec.protocol;
    std::fs::create_dir_all(&spec.out)
        .with_context(|| format!("creating {}", spec.out.display()))?;
    let device = device(&p.device)?;
    let loaded = load_model(p.model.as_ref(), &device, p.precision)?;
    let calib = stream(&loaded.tokenizer, spec.calib.as_ref(), "calib")?;
    let offsets = window_offsets(
        calib.tokens.len(),
        spec.calib_windows,
        p.seq_len,
        Sampler::Even,
    )?;
    let eval = match spec.validation {
        Some(n) => {
            let v = validation_offsets(calib.tokens.len(), &offsets, n, p.seq_len)?;
            let tokens: Vec<u32> = v
                .iter()
                .flat_map(|&o| calib.tokens[o..o + p.seq_len].iter().copied())
                .collect();
            let source = format!("{} validation windows", calib.source);
            EvalText {
                tokens,
                source,
                windows: n,
            }
        }
        None => {
            let e = stream(&loaded.tokenizer, p.eval.as_ref(), "eval")?;
            EvalText {
                tokens: e.tokens,
                source: e.source,
                windows: p.eval_windows,
            }
        }
    };
    let opts = PerplexityOptions {
        seq_len: p.seq_len,
        windows: eval.windows,
        batch: p.eval_batch,
    };
    eval_windows(&eval.tokens, &opts)?;
    let mut protocol = format!(
        "{}|{}|{}|{:?}|{}|{}",
        loaded.path.display(),
        calib.source,
        eval.source,
        offsets,
        eval.windows,
        p.seq_len
    );
    // f32 keys stay as they were before the setting existed; so do keys without tasks.
    if p.precision != Precision::F32 {
        protocol.push_str(&format!("|{}", p.precision));
    }
    // So do keys of the default path; another one gives other cells.
    if p.device_path != crate::calib::DevicePath::Auto {
        protocol.push_str(&format!("|path {:?}", p.device_path));
    }
    let tasks = spec.tasks.load()?;
    if !tasks.is_empty() {
        let items = serde_json::to_string(&tasks)?;
        protocol.push_str(&format!("|tasks {}", sha256_hex(items.as_bytes())));
    }
    let shared = Shared {
        device,
        model_path: loaded.path,
        calib_tokens: calib.tokens,
        offsets,
        eval,
        opts,
        protocol_key: sha256_hex(protocol.as_bytes()),
        cells_path: spec.out.join("cells.jsonl"),
        tokenizer: loaded.tokenizer,
        tasks,
    };
    Ok((shared, loaded.model))
}

/// The dense model's cell.
fn dense_cell(sh: &Shared, model: &Model, progress: &mut dyn Progress) -> anyhow::Result<Cell> {
    let t = Instant::now();
    let ppl = step(progress, "dense eval", sh.opts.windows, |adv| {
        perplexity_with_progress(model, &sh.eval.tokens, &sh.opts, &mut |d, _| adv(d))
    })?;
    let zero_shot = zero_shot(model, &sh.tokenizer, &sh.tasks, "dense tasks", progress)?;
    Ok(Cell {
        key: format!("{}|dense", sh.protocol_key),
        metric: "dense".into(),
        allocation: "dense".into(),
        family: "dense".into(),
        pattern: "-".into(),
        sparsity: 0.0,
        achieved: 0.0,
        ppl: ppl.ppl,
        unit_sparsity: Vec::new(),
        seconds: t.elapsed().as_secs_f64(),
        zero_shot,
    })
}

/// What the allocation cells share: the dense statistics pass (once) and each metric's unit
/// summaries per target.
#[derive(Default)]
struct AllocationCache {
    stats: Option<DenseStats>,
    summaries: HashMap<(usize, u64), Vec<UnitSummary>>,
}

/// One cell's per-linear and per-unit sparsities (both empty for uniform).
#[allow(clippy::too_many_arguments)]
fn cell_sparsities(
    spec: &SweepSpec,
    sh: &Shared,
    cache: &mut AllocationCache,
    m: &Model,
    mi: usize,
    target: f64,
    rule: &Allocation,
    progress: &mut dyn Progress,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    if *rule == Allocation::Uniform {
        return Ok((Vec::new(), Vec::new()));
    }
    let calib_windows = sh.calib_windows();
    let path = spec.protocol.device_path;
    if cache.stats.is_none() {
        cache.stats = Some(stats_pass(
            m,
            &calib_windows,
            spec.calib_batch,
            path,
            progress,
        )?);
    }
    let st = cache.stats.as_ref().expect("computed above");
    let units = match cache.summaries.entry((mi, target.to_bits())) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let plugin = Some(spec.metrics[mi].plugin);
            let grads = gradients_if_needed(m, &calib_windows, plugin, progress)?;
            let extras =
                extras_if_needed(m, &calib_windows, spec.calib_batch, path, plugin, progress)?;
            e.insert(summarize(
                m,
                st,
                plugin,
                grads.as_ref(),
                extras.as_ref(),
                target,
                spec.granularity,
            )?)
        }
    };
    let s = rule
        .allocate(target, units)
        .with_context(|| format!("{} at {target}", rule_label(rule)))?;
    Ok((expand(units, &s, m.blocks.len()), s))
}

/// Prune `m` at `target` with the given per-linear sparsities and measure it.
fn prune_and_measure(
    spec: &SweepSpec,
    sh: &Shared,
    m: &mut Model,
    plugin: &Plugin,
    target: f64,
    layer_sparsity: Vec<f64>,
    progress: &mut dyn Progress,
) -> anyhow::Result<(f64, f64, Vec<TaskScore>)> {
    let cfg = PruneConfig {
        sparsity: target,
        layer_sparsity,
        pattern: spec.pattern,
        batch: spec.calib_batch,
        path: spec.protocol.device_path,
    };
    let calib_windows = sh.calib_windows();
    let report = step(progress, "prune", m.blocks.len(), |adv| {
        let method = Method::Metric(plugin);
        prune_model(
            m,
            &PruneJob::new(&calib_windows, &method, &cfg),
            &mut |pr| {
                if let crate::pipeline::Progress::Block { done, .. } = pr {
                    adv(done);
                }
            },
        )
    })?;
    let ppl = step(progress, "eval", sh.opts.windows, |adv| {
        perplexity_with_progress(m, &sh.eval.tokens, &sh.opts, &mut |d, _| adv(d))
    })?;
    let scores = zero_shot(m, &sh.tokenizer, &sh.tasks, "tasks", progress)?;
    Ok((report.sparsity, ppl.ppl, scores))
}

/// Run it.
pub fn run(spec: &SweepSpec, progress: &mut dyn Progress) -> anyhow::Result<SweepResult> {
    check(spec)?;
    let (sh, dense_model) = prepare(spec)?;
    let mut cells = read_cells(&sh.cells_path)?;
    let done = |cells: &[Cell], key: &str| cells.iter().any(|c| c.key == key);
    // Each cell reloads the model from its file rather than pruning a clone of a dense copy
    // kept in memory: loading SmolLM2 takes ≈ 1 s (1 % of a cell), and a kept copy would double
    // the peak memory, which matters more for large models.
    let mut model = Some(dense_model);
    if !done(&cells, &format!("{}|dense", sh.protocol_key)) {
        let cell = dense_cell(&sh, model.as_ref().expect("model loaded"), progress)?;
        append_cell(&sh.cells_path, &cell)?;
        cells.push(cell);
    }
    let mut cache = AllocationCache::default();
    let total = spec.metrics.len() * spec.sparsities.len() * spec.rules.len();
    let mut n = 0;
    for (mi, metric) in spec.metrics.iter().enumerate() {
        for &target in &spec.sparsities {
            for rule in &spec.rules {
                n += 1;
                let label = rule_label(rule);
                let key = format!(
                    "{}|{}|{target}|{}|{:?}|{}",
                    sh.protocol_key,
                    metric.sha256,
                    serde_json::to_string(rule)?,
                    spec.granularity,
                    spec.pattern
                );
                if done(&cells, &key) {
                    continue;
                }
                progress.note(&format!("[{n}/{total}] {} {target} {label}", metric.name));
                let t = Instant::now();
                let mut m = match model.take() {
                    Some(m) => m,
                    None => {
                        load_model(Some(&sh.model_path), &sh.device, spec.protocol.precision)?.model
                    }
                };
                let (layer_sparsity, unit_sparsity) =
                    cell_sparsities(spec, &sh, &mut cache, &m, mi, target, rule, progress)?;
                let (achieved, ppl, zero_shot) = prune_and_measure(
                    spec,
                    &sh,
                    &mut m,
                    metric.plugin,
                    target,
                    layer_sparsity,
                    progress,
                )?;
                drop(m);
                let cell = Cell {
                    key,
                    metric: metric.name.clone(),
                    allocation: label,
                    family: rule.name().into(),
                    pattern: spec.pattern.to_string(),
                    sparsity: target,
                    achieved,
                    ppl,
                    unit_sparsity,
                    seconds: t.elapsed().as_secs_f64(),
                    zero_shot,
                };
                progress.note(&format!(
                    "    ppl {:.4}  achieved {:.6}  ({:.0} s)",
                    cell.ppl, cell.achieved, cell.seconds
                ));
                append_cell(&sh.cells_path, &cell)?;
                cells.push(cell);
            }
        }
    }
    finish(spec, &sh, cells)
}

/// Everything in the folder measured under this protocol goes into the table and plot.
fn finish(spec: &SweepSpec, sh: &Shared, cells: Vec<Cell>) -> anyhow::Result<SweepResult> {
    let mine: Vec<Cell> = cells
        .into_iter()
        .filter(|c| c.key.starts_with(&sh.protocol_key))
        .collect();
    let table = markdown_table(&mine);
    std::fs::write(spec.out.join("table.md"), &table)?;
    std::fs::write(
        spec.out.join("table.json"),
        serde_json::to_string_pretty(&mine)?,
    )?;
    let title = format!("{} — {}", file_name(&sh.model_path), sh.eval.source);
    std::fs::write(&spec.plot, svg_plot(&mine, &title))
        .with_context(|| format!("writing {}", spec.plot.display()))?;
    Ok(SweepResult { cells: mine, table })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(metric: &str, alloc: &str, family: &str, s: f64, ppl: f64) -> Cell {
        Cell {
            key: format!("{metric}{alloc}{s}"),
            metric: metric.into(),
            allocation: alloc.into(),
            family: family.into(),
            pattern: "row".into(),
            sparsity: s,
            achieved: s,
            ppl,
            unit_sparsity: vec![],
            seconds: 1.0,
            zero_shot: vec![],
        }
    }

    #[test]
    fn table_and_plot_have_every_cell() {
        let cells = vec![
            cell("dense", "dense", "dense", 0.0, 27.13),
            cell("wanda", "uniform", "uniform", 0.5, 55.49),
            cell("wanda", "uniform", "uniform", 0.7, 615.7),
            cell("wanda", "owl M=5 λ=0.08", "owl", 0.5, 54.0),
            cell("wanda", "owl M=5 λ=0.08", "owl", 0.7, 400.0),
        ];
        let t = markdown_table(&cells);
        assert!(
            t.contains("| wanda | row | uniform | 55.49 | 615.7 |"),
            "{t}"
        );
        assert!(
            t.contains("| wanda | row | owl M=5 λ=0.08 | 54.00 | 400.0 |"),
            "{t}"
        );
        assert!(t.contains("Dense perplexity: 27.13."));
        let svg = svg_plot(&cells, "t <x>");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("t &lt;x&gt;"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn truncated_lines_are_skipped() {
        let dir = std::env::temp_dir().join(format!("ap-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("cells.jsonl");
        let c = cell("wanda", "uniform", "uniform", 0.5, 55.0);
        append_cell(&p, &c).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        write!(f, "{{\"key\": \"cut").unwrap();
        drop(f);
        let back = read_cells(&p).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].key, c.key);
        // The next cell still lands on its own line.
        let d = cell("wanda", "uniform", "uniform", 0.6, 70.0);
        append_cell(&p, &d).unwrap();
        assert_eq!(read_cells(&p).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
