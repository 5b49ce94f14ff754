//! `autoprune sweep`: a grid of metrics × sparsities × allocations under one protocol, with a
//! markdown/JSON table and an SVG plot of perplexity against sparsity.
//!
//! What is shared across cells is computed once: tokenization, the dense perplexity, the
//! dense statistics pass (for non-uniform allocations) and each metric's unit summaries per
//! target. Finished cells are appended to `cells.jsonl` in the output folder as they finish; a
//! rerun (after a crash, or with more cells) skips every cell already there.

use super::alloc::check_pattern;
use super::check::{load_plugin, load_policy, plugin_sha256};
use super::protocol::{bar, load_model, stream, ProtocolArgs};
use super::BuildFlags;
use anyhow::Context;
use autoprune::alloc::summary::{summarize, DenseStats};
use autoprune::alloc::{
    expand, Allocation, Granularity, OwlParams, SdsaParams, SkewSource, UnitSummary,
};
use autoprune::calib::{validation_offsets, window_offsets, windows, Sampler};
use autoprune::eval::{perplexity_with_progress, PerplexityOptions};
use autoprune::model::Precision;
use autoprune::pipeline::{prune_model_with_progress, Method, PruneConfig};
use autoprune::prune::mask::Pattern;
use autoprune::sandbox::{sha256_hex, Plugin};
use autoprune::term::{line, text};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `autoprune sweep`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Metric sources or components (repeat, or separate with commas).
    #[arg(long, required = true, value_delimiter = ',')]
    pub metric: Vec<PathBuf>,
    /// Target sparsities.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.7,0.8")]
    pub sparsities: Vec<f64>,
    /// Allocations: `uniform`, `owl`, `sdsa` (each OWL/SDSA entry expands over the
    /// hyperparameter lists below).
    #[arg(long, value_delimiter = ',', default_value = "uniform,owl,sdsa")]
    pub allocations: Vec<String>,
    /// What gets one sparsity: `block` or `layer`.
    #[arg(long, default_value = "block")]
    pub granularity: Granularity,
    /// OWL M values (3, 5, 7 or 10).
    #[arg(long, value_delimiter = ',', default_value = "5")]
    pub owl_m: Vec<f64>,
    /// OWL λ values.
    #[arg(long, value_delimiter = ',', default_value = "0.08")]
    pub owl_lambda: Vec<f64>,
    /// SDSA temperatures.
    #[arg(long, value_delimiter = ',', default_values_t = [SdsaParams::default().temperature])]
    pub sdsa_temperature: Vec<f64>,
    /// SDSA deltas.
    #[arg(long, value_delimiter = ',', default_values_t = [SdsaParams::default().delta])]
    pub sdsa_delta: Vec<f64>,
    /// SDSA skewness source: `weights` (default), `scores` or `wanda`.
    #[arg(long, default_value = "weights")]
    pub sdsa_source: SkewSource,
    /// Comparison group: `row`, `layer` or `layer-exact`.
    #[arg(long, default_value = "row")]
    pub pattern: Pattern,
    /// Calibration text file (default: SOTU speeches before 1990).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration windows (evenly spaced, the protocol's sampler).
    #[arg(long, default_value_t = 32)]
    pub calib_windows: usize,
    /// Calibration windows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub calib_batch: usize,
    /// Measure perplexity on N held-out windows of the *calibration* stream (halfway between
    /// calibration windows) instead of the evaluation text: for tuning hyperparameters
    /// without looking at the evaluation windows.
    #[arg(long)]
    pub validation: Option<usize>,
    /// Output folder: `cells.jsonl`, `table.md`, `table.json`, and the plot.
    #[arg(long, default_value = "runs/sweep")]
    pub out: PathBuf,
    /// The plot (SVG; default `<out>/sweep.svg`).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// A JSON file with sandbox limits.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub flags: BuildFlags,
}

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
}

fn rule_label(a: &Allocation) -> String {
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

fn rules(args: &Args) -> anyhow::Result<Vec<Allocation>> {
    let mut out = Vec::new();
    for name in &args.allocations {
        match name.as_str() {
            "uniform" => out.push(Allocation::Uniform),
            "owl" => {
                for &m in &args.owl_m {
                    for &lambda in &args.owl_lambda {
                        out.push(Allocation::Owl(OwlParams { m, lambda }));
                    }
                }
            }
            "sdsa" => {
                for &temperature in &args.sdsa_temperature {
                    for &delta in &args.sdsa_delta {
                        out.push(Allocation::Sdsa(SdsaParams {
                            temperature,
                            delta,
                            source: args.sdsa_source,
                        }));
                    }
                }
            }
            other => anyhow::bail!("unknown allocation `{other}` in a sweep (uniform, owl, sdsa)"),
        }
    }
    Ok(out)
}

fn read_cells(path: &Path) -> anyhow::Result<Vec<Cell>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // A line cut short by a crash is ignored (that cell runs again).
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn append_cell(path: &Path, cell: &Cell) -> anyhow::Result<()> {
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

/// Run it.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let p = &args.protocol;
    let quiet = p.json;
    if args.sparsities.iter().any(|s| !(0.0..1.0).contains(s)) {
        anyhow::bail!("sparsities must lie in [0, 1)");
    }
    if let Pattern::NM { .. } = args.pattern {
        anyhow::bail!(
            "a sweep over sparsities needs an unstructured pattern (row, layer, layer-exact)"
        );
    }
    let rules = rules(&args)?;
    if rules.iter().any(|r| *r != Allocation::Uniform) {
        check_pattern(args.pattern)?;
    }
    if let Some(plot) = &args.plot {
        if plot.extension().and_then(|e| e.to_str()) != Some("svg") {
            anyhow::bail!("the plot is drawn as SVG: name it *.svg");
        }
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let policy = load_policy(args.policy.as_ref())?;
    let device = super::protocol::device(&p.device)?;
    let loaded = load_model(p.model.as_ref(), &device, p.precision)?;
    let model_path = loaded.path.clone();
    let calib = stream(&loaded.tokenizer, args.calib.as_ref(), "calib")?;
    let offsets = window_offsets(
        calib.tokens.len(),
        args.calib_windows,
        p.seqlen,
        Sampler::Even,
    )?;
    let calib_windows = windows(&calib.tokens, &offsets, p.seqlen);
    let (eval_tokens, eval_source, eval_windows) = match args.validation {
        Some(n) => {
            let v = validation_offsets(calib.tokens.len(), &offsets, n, p.seqlen)?;
            let toks: Vec<u32> = v
                .iter()
                .flat_map(|&o| calib.tokens[o..o + p.seqlen].iter().copied())
                .collect();
            (toks, format!("{} validation windows", calib.source), n)
        }
        None => {
            let e = stream(&loaded.tokenizer, p.eval.as_ref(), "eval")?;
            (e.tokens, e.source, p.eval_windows)
        }
    };
    let opts = PerplexityOptions {
        seq_len: p.seqlen,
        windows: eval_windows,
        batch: p.eval_batch,
    };
    autoprune::eval::eval_windows(&eval_tokens, &opts)?;
    let mut protocol = format!(
        "{}|{}|{}|{:?}|{}|{}",
        model_path.display(),
        calib.source,
        eval_source,
        offsets,
        eval_windows,
        p.seqlen
    );
    // f32 keys stay as they were before the setting existed.
    if p.precision != Precision::F32 {
        protocol.push_str(&format!("|{}", p.precision));
    }
    let protocol_key = sha256_hex(protocol.as_bytes());
    let cells_path = args.out.join("cells.jsonl");
    let mut cells = read_cells(&cells_path)?;
    let done = |cells: &[Cell], key: &str| cells.iter().any(|c| c.key == key);

    // Metrics (built once).
    let mut metrics: Vec<(String, String, Plugin)> = Vec::new();
    for path in &args.metric {
        match load_plugin(path, &args.flags, &policy)? {
            // The name is the plugin's word: escaped once here, then shown in tables and plots.
            Ok(pl) => metrics.push((
                line(&pl.info().name).into_owned(),
                plugin_sha256(path, &policy)?,
                pl,
            )),
            Err(f) => {
                eprintln!(
                    "the metric {} failed before the sweep: {}",
                    path.display(),
                    text(&f.to_string())
                );
                return Ok(super::EXIT_VERDICT);
            }
        }
    }

    // Each cell reloads the model from its file rather than pruning a clone of a dense copy
    // kept in memory: loading SmolLM2 takes ≈ 1 s (1 % of a cell), and a kept copy would double
    // the peak memory, which matters more for large models.
    let mut model = Some(loaded.model);
    let dense_key = format!("{protocol_key}|dense");
    if !done(&cells, &dense_key) {
        let m = model.as_ref().expect("model loaded");
        let pb = bar(opts.windows, "dense eval", quiet);
        let t = Instant::now();
        let ppl = perplexity_with_progress(m, &eval_tokens, &opts, &mut |d, _| {
            pb.set_position(d as u64)
        })?;
        pb.finish_and_clear();
        let cell = Cell {
            key: dense_key.clone(),
            metric: "dense".into(),
            allocation: "dense".into(),
            family: "dense".into(),
            pattern: "-".into(),
            sparsity: 0.0,
            achieved: 0.0,
            ppl: ppl.ppl,
            unit_sparsity: Vec::new(),
            seconds: t.elapsed().as_secs_f64(),
        };
        append_cell(&cells_path, &cell)?;
        cells.push(cell);
    }

    let mut stats: Option<DenseStats> = None;
    let mut summaries: HashMap<(usize, u64), Vec<UnitSummary>> = HashMap::new();
    let total = metrics.len() * args.sparsities.len() * rules.len();
    let mut n = 0;
    for (mi, (name, hash, plugin)) in metrics.iter().enumerate() {
        for &target in &args.sparsities {
            for rule in &rules {
                n += 1;
                let label = rule_label(rule);
                let key = format!(
                    "{protocol_key}|{hash}|{target}|{}|{:?}|{}",
                    serde_json::to_string(rule)?,
                    args.granularity,
                    args.pattern
                );
                if done(&cells, &key) {
                    continue;
                }
                if !quiet {
                    eprintln!("[{n}/{total}] {name} {target} {label}");
                }
                let t = Instant::now();
                let mut m = match model.take() {
                    Some(m) => m,
                    None => load_model(Some(&model_path), &device, p.precision)?.model,
                };
                let (layer_sparsity, unit_sparsity) = if *rule == Allocation::Uniform {
                    (Vec::new(), Vec::new())
                } else {
                    if stats.is_none() {
                        stats = Some(super::alloc::stats_pass(
                            &m,
                            &calib_windows,
                            args.calib_batch,
                            quiet,
                        )?);
                    }
                    let st = stats.as_ref().expect("computed above");
                    let k = (mi, target.to_bits());
                    let units = match summaries.entry(k) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            let grads = super::alloc::gradients_if_needed(
                                &m,
                                &calib_windows,
                                Some(plugin),
                                quiet,
                            )?;
                            let extras = super::alloc::extras_if_needed(
                                &m,
                                &calib_windows,
                                args.calib_batch,
                                Some(plugin),
                                quiet,
                            )?;
                            e.insert(summarize(
                                &m,
                                st,
                                Some(plugin),
                                grads.as_ref(),
                                extras.as_ref(),
                                target,
                                args.granularity,
                            )?)
                        }
                    };
                    let s = rule
                        .allocate(target, units)
                        .with_context(|| format!("{label} at {target}"))?;
                    (expand(units, &s, m.blocks.len()), s)
                };
                let cfg = PruneConfig {
                    sparsity: target,
                    layer_sparsity,
                    pattern: args.pattern,
                    batch: args.calib_batch,
                };
                let pb = bar(m.blocks.len(), "prune", quiet);
                let report = prune_model_with_progress(
                    &mut m,
                    &calib_windows,
                    &Method::Metric(plugin),
                    &cfg,
                    &mut |pr| {
                        if let autoprune::pipeline::Progress::Block { done, .. } = pr {
                            pb.set_position(done as u64);
                        }
                    },
                )?;
                pb.finish_and_clear();
                let pb = bar(opts.windows, "eval", quiet);
                let ppl = perplexity_with_progress(&m, &eval_tokens, &opts, &mut |d, _| {
                    pb.set_position(d as u64)
                })?;
                pb.finish_and_clear();
                drop(m);
                let cell = Cell {
                    key,
                    metric: name.clone(),
                    allocation: label,
                    family: rule.name().into(),
                    pattern: args.pattern.to_string(),
                    sparsity: target,
                    achieved: report.sparsity,
                    ppl: ppl.ppl,
                    unit_sparsity,
                    seconds: t.elapsed().as_secs_f64(),
                };
                if !quiet {
                    eprintln!(
                        "    ppl {:.4}  achieved {:.6}  ({:.0} s)",
                        cell.ppl, cell.achieved, cell.seconds
                    );
                }
                append_cell(&cells_path, &cell)?;
                cells.push(cell);
            }
        }
    }

    // Everything in the folder measured under this protocol goes into the table and plot.
    let mine: Vec<Cell> = cells
        .into_iter()
        .filter(|c| c.key.starts_with(&protocol_key))
        .collect();
    let table = markdown_table(&mine);
    std::fs::write(args.out.join("table.md"), &table)?;
    std::fs::write(
        args.out.join("table.json"),
        serde_json::to_string_pretty(&mine)?,
    )?;
    let plot = args
        .plot
        .clone()
        .unwrap_or_else(|| args.out.join("sweep.svg"));
    let title = format!(
        "{} — {}",
        model_path
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default(),
        eval_source
    );
    std::fs::write(&plot, svg_plot(&mine, &title))
        .with_context(|| format!("writing {}", plot.display()))?;
    if quiet {
        println!("{}", serde_json::to_string_pretty(&mine)?);
    } else {
        println!("{table}");
        println!(
            "wrote {}/table.md, {}/table.json, {}",
            args.out.display(),
            args.out.display(),
            plot.display()
        );
    }
    Ok(0)
}

/// Rows: metric × pattern × allocation; columns: sparsities; cells: perplexity.
pub fn markdown_table(cells: &[Cell]) -> String {
    use std::fmt::Write;
    let mut sparsities: Vec<f64> = cells
        .iter()
        .filter(|c| c.family != "dense")
        .map(|c| c.sparsity)
        .collect();
    sparsities.sort_by(f64::total_cmp);
    sparsities.dedup();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for c in cells.iter().filter(|c| c.family != "dense") {
        let r = (c.metric.clone(), c.pattern.clone(), c.allocation.clone());
        if !rows.contains(&r) {
            rows.push(r);
        }
    }
    let mut s = String::from("| metric | pattern | allocation |");
    for sp in &sparsities {
        let _ = write!(s, " {:.0} % |", sp * 100.0);
    }
    s.push_str("\n|---|---|---|");
    for _ in &sparsities {
        s.push_str("---|");
    }
    for (m, p, a) in &rows {
        let _ = write!(s, "\n| {m} | {p} | {a} |");
        for sp in &sparsities {
            match cells.iter().find(|c| {
                &c.metric == m && &c.pattern == p && &c.allocation == a && c.sparsity == *sp
            }) {
                Some(c) => {
                    let _ = write!(s, " {} |", fmt_ppl(c.ppl));
                }
                None => s.push_str(" – |"),
            }
        }
    }
    if let Some(d) = cells.iter().find(|c| c.family == "dense") {
        let _ = write!(s, "\n\nDense perplexity: {}.", fmt_ppl(d.ppl));
    }
    s.push('\n');
    s
}

fn fmt_ppl(x: f64) -> String {
    if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Perplexity (log scale) against sparsity: one line per metric × allocation; colour by
/// allocation family, dash by metric.
pub fn svg_plot(cells: &[Cell], title: &str) -> String {
    use std::fmt::Write;
    let (w, h) = (820.0, 480.0);
    let (l, r, t, b) = (70.0, 290.0, 40.0, 50.0);
    let pw = w - l - r;
    let ph = h - t - b;
    let pts: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.family != "dense" && c.ppl.is_finite() && c.ppl > 0.0)
        .collect();
    let dense = cells
        .iter()
        .find(|c| c.family == "dense")
        .map(|c| c.ppl)
        .filter(|p| p.is_finite() && *p > 0.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    s.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        l + pw / 2.0,
        xml_escape(title)
    );
    if pts.is_empty() {
        s.push_str("</svg>\n");
        return s;
    }
    let xmin = pts.iter().map(|c| c.sparsity).fold(f64::INFINITY, f64::min);
    let xmax = pts
        .iter()
        .map(|c| c.sparsity)
        .fold(f64::NEG_INFINITY, f64::max);
    let (xmin, xmax) = if xmax > xmin {
        (xmin, xmax)
    } else {
        (xmin - 0.05, xmax + 0.05)
    };
    let ys = pts
        .iter()
        .map(|c| c.ppl.log10())
        .chain(dense.map(f64::log10));
    let ymin = ys.clone().fold(f64::INFINITY, f64::min).floor();
    let ymax = ys.fold(f64::NEG_INFINITY, f64::max).ceil().max(ymin + 1.0);
    let x = |v: f64| l + (v - xmin) / (xmax - xmin) * pw;
    let y = |v: f64| t + ph - (v.log10() - ymin) / (ymax - ymin) * ph;
    // Axes, grid and ticks.
    let _ = write!(
        s,
        r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    let mut e = ymin as i32;
    while e as f64 <= ymax {
        let yy = t + ph - (e as f64 - ymin) / (ymax - ymin) * ph;
        let _ = write!(
            s,
            r##"<line x1="{l}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">1e{e}</text>"##,
            l + pw,
            l - 6.0,
            yy + 4.0
        );
        e += 1;
    }
    let mut xs: Vec<f64> = pts.iter().map(|c| c.sparsity).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for &v in &xs {
        let xx = x(v);
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" y1="{t}" x2="{xx:.1}" y2="{}" stroke="#eee"/><text x="{xx:.1}" y="{}" text-anchor="middle">{:.0} %</text>"##,
            t + ph,
            t + ph + 18.0,
            v * 100.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">target sparsity</text><text transform="translate(18 {}) rotate(-90)" text-anchor="middle">perplexity (log scale)</text>"#,
        l + pw / 2.0,
        h - 10.0,
        t + ph / 2.0
    );
    if let Some(d) = dense {
        let _ = write!(
            s,
            r##"<line x1="{l}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#000" stroke-dasharray="2 4"/><text x="{2}" y="{3:.1}" font-size="11">dense {4:.2}</text>"##,
            y(d),
            l + pw,
            l + 4.0,
            y(d) - 4.0,
            d
        );
    }
    // Series.
    let mut series: Vec<(String, String, String, String)> = Vec::new();
    for c in &pts {
        let k = (
            c.metric.clone(),
            c.pattern.clone(),
            c.allocation.clone(),
            c.family.clone(),
        );
        if !series.contains(&k) {
            series.push(k);
        }
    }
    let mut metric_names: Vec<String> = series.iter().map(|s| s.0.clone()).collect();
    metric_names.dedup();
    let palette = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    let mut labels: Vec<String> = Vec::new();
    for (i, (m, p, a, fam)) in series.iter().enumerate() {
        let colour = match fam.as_str() {
            "uniform" => "#555555",
            "owl" => "#ff7f0e",
            "sdsa" => "#2ca02c",
            _ => palette[i % palette.len()],
        };
        // Several variants of one family: vary the colour a little.
        let same_family_before = series[..i].iter().filter(|s| &s.3 == fam).count();
        let colour = if same_family_before == 0 {
            colour.to_string()
        } else {
            palette[(i + same_family_before) % palette.len()].to_string()
        };
        let dash = match metric_names.iter().position(|n| n == m).unwrap_or(0) % 3 {
            0 => "",
            1 => r#" stroke-dasharray="8 4""#,
            _ => r#" stroke-dasharray="2 3""#,
        };
        let mut line: Vec<&&Cell> = pts
            .iter()
            .filter(|c| &c.metric == m && &c.pattern == p && &c.allocation == a)
            .collect();
        line.sort_by(|a, b| a.sparsity.total_cmp(&b.sparsity));
        let path: Vec<String> = line
            .iter()
            .map(|c| format!("{:.1},{:.1}", x(c.sparsity), y(c.ppl)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        for c in &line {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{} {} {} @ {:.0} %: {:.3}</title></circle>"#,
                x(c.sparsity),
                y(c.ppl),
                xml_escape(m),
                xml_escape(p),
                xml_escape(a),
                c.sparsity * 100.0,
                c.ppl
            );
        }
        let ly = t + 14.0 + 18.0 * labels.len() as f64;
        let lx = l + pw + 14.0;
        let _ = write!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 26.0,
            lx + 32.0,
            ly + 4.0,
            xml_escape(&format!("{m} ({p}) {a}"))
        );
        labels.push(a.clone());
    }
    s.push_str("</svg>\n");
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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
