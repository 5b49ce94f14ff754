//! The fidelity study of the evaluation ladder: a fixed panel of metrics, each measured at
//! every level (screens of 1–16 windows, the former 4-window sequential proxy, the
//! sequential level on 8–32 validation windows) and on the held-out text, with Kendall's τ of
//! each level against the held-out ranking and each level's cost per candidate.
//!
//! Each metric is pruned three times (one-shot; sequential with the proxy's few calibration
//! windows; sequential with the protocol's windows) and every level reads prefixes of the
//! per-window losses of those runs, so all window counts come from one measurement. Results
//! are appended to a JSON-lines file per metric, so an interrupted study resumes where it
//! stopped.

use super::cascade::{EvalError, Evaluator, Level, Pruning};
use super::gp::{render, Expr};
use super::paired::{kendall_tau, paired, windows_to_resolve};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One metric of the panel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PanelEntry {
    /// Short name.
    pub name: String,
    /// Candidate source.
    pub source: String,
}

/// The built-in panel: the hand-written baselines and expression variants that span
/// magnitude-level to better than Wanda (exponents of the activation norm, RIA-like
/// normalisations, other activation statistics, gradient mixes, and some poor rules), each
/// pruning differently on SmolLM2 (prefix form of [`Expr`]). With `gradient`, the entries
/// that read the gradient statistic are included.
pub fn builtin_panel(gradient: bool) -> Vec<PanelEntry> {
    const EXPRS: &[(&str, &str)] = &[
        ("wanda", "mul(W,N)"),
        ("magnitude", "W"),
        ("ria", "mul(add(colnorm(W),rownorm(W)),sqrt(N))"),
        ("w_sqrtN", "mul(W,sqrt(N))"),
        ("w_N^0.25", "mul(W,sqrt(sqrt(N)))"),
        ("w_N^1.5", "mul(W,mul(N,sqrt(N)))"),
        ("w_N^2", "mul(W,sqr(N))"),
        ("w_N^3", "mul(W,mul(N,sqr(N)))"),
        ("w_A", "mul(W,A)"),
        ("w_sqrtA", "mul(W,sqrt(A))"),
        ("w_sqrt(NA)", "mul(W,sqrt(mul(N,A)))"),
        ("w_(N+A)", "mul(W,add(N,A))"),
        ("w_sqrtVar", "mul(W,sqrt(Var))"),
        ("w_(N+Var)", "mul(W,add(N,Var))"),
        ("wN+w", "add(mul(W,N),W)"),
        ("wN+10w", "add(mul(W,N),mul(10,W))"),
        ("wN+0.1w", "add(mul(W,N),mul(0.1,W))"),
        ("ria_a1", "mul(add(colnorm(W),rownorm(W)),N)"),
        ("ria_a0.25", "mul(add(colnorm(W),rownorm(W)),sqrt(sqrt(N)))"),
        ("colnorm_sqrtN", "mul(colnorm(W),sqrt(N))"),
        ("colnorm_N", "mul(colnorm(W),N)"),
        ("colnorm(wN)", "colnorm(mul(W,N))"),
        (
            "ria+wanda",
            "add(mul(add(colnorm(W),rownorm(W)),sqrt(N)),mms(mul(W,N)))",
        ),
        ("gp_best_50", "add(add(W,colnorm(tanh(mul(N,W)))),mul(N,W))"),
        ("w(1+2N)", "mul(W,add(1,mul(2,N)))"),
        ("wN_tanh", "mul(mul(W,N),add(1,tanh(W)))"),
        ("w_tanhN", "mul(W,tanh(N))"),
        ("w_logN", "mul(W,log(N))"),
        ("w+N", "add(W,N)"),
        ("w_div_N", "div(W,N)"),
        ("wN_minus_A", "sub(mul(W,N),mul(0.1,A))"),
        ("zsn_wN", "add(zsn(mul(W,N)),zsn(W))"),
        ("w^2+N", "add(sqr(W),mul(0.01,N))"),
        ("exp_w_N", "mul(exp(W),N)"),
        ("N_only", "add(N,mul(0.001,W))"),
    ];
    const GRAD: &[(&str, &str)] = &[
        ("gblm", "mul(W,add(N,mul(5.656854,G)))"),
        ("pruner_zero", "mul(sqr(W),mms(G))"),
        ("w_G", "mul(W,G)"),
        ("w_mmsG", "mul(W,mms(G))"),
        ("gblm_a1", "mul(W,add(N,G))"),
        ("gblm_a20", "mul(W,add(N,mul(20,G)))"),
        ("wN_G", "mul(mul(W,N),sqrt(G))"),
    ];
    EXPRS
        .iter()
        .chain(if gradient { GRAD } else { &[] })
        .map(|(name, text)| {
            let e: Expr = text.parse().expect("the built-in panel parses");
            PanelEntry {
                name: (*name).into(),
                source: render(&e, name),
            }
        })
        .collect()
}

/// A row's screen and sequential losses on one validation source (`None`: not measured).
type PickLosses<'p> = dyn Fn(&Measured) -> Option<(&[f64], &[f64])> + 'p;

fn spread() -> String {
    super::data::ValidationSource::Spread.name().into()
}

/// The per-window losses of one panel metric.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Panel name.
    pub name: String,
    /// SHA-256 of the source.
    pub source_hash: String,
    /// Hash of its probe masks (equal hashes prune alike on the probe layers).
    pub mask_hash: Option<String>,
    /// Where `screen` and `sequential`'s windows come from (studies before the choice
    /// existed: `spread`).
    #[serde(default = "spread")]
    pub validation_source: String,
    /// Why it could not be measured.
    pub failure: Option<String>,
    /// One-shot pruning, the first validation windows.
    pub screen: Vec<f64>,
    /// Sequential pruning with the proxy's few calibration windows, the first validation
    /// windows.
    pub proxy: Vec<f64>,
    /// Sequential pruning (the protocol), every validation window.
    pub sequential: Vec<f64>,
    /// The same pruned model on the held-out windows.
    pub heldout: Vec<f64>,
    /// Seconds: scoring and masks of the one-shot pruning.
    pub screen_prune_s: f64,
    /// Seconds: evaluation of the screen windows.
    pub screen_eval_s: f64,
    /// Seconds of the proxy's pruning and evaluation.
    pub proxy_s: f64,
    /// Seconds of the sequential pruning.
    pub sequential_prune_s: f64,
    /// Seconds of the validation-window evaluation.
    pub sequential_eval_s: f64,
    /// Seconds of the held-out evaluation.
    pub heldout_eval_s: f64,
    /// The same two prunings measured on other validation sources.
    #[serde(default)]
    pub sources: Vec<SourceLosses>,
}

/// A panel metric's losses on the windows of another validation source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceLosses {
    /// The source's name (`recent`, `eval-tail`, …).
    pub source: String,
    /// One-shot pruning, its first windows.
    pub screen: Vec<f64>,
    /// Sequential pruning, every window.
    pub sequential: Vec<f64>,
}

/// Validation windows of another source, measured beside the study's own.
pub struct OtherSource<'a> {
    /// The source's name.
    pub name: &'a str,
    /// Its screen windows.
    pub screen: Vec<&'a [u32]>,
    /// Its sequential windows.
    pub sequential: Vec<&'a [u32]>,
}

/// Measure one panel metric under the objective's first setting. `proxy_calib` are the
/// former proxy's calibration windows, `proxy_windows` its validation windows; `others` are
/// validation windows of other sources, measured on the same two prunings.
pub fn measure(
    ev: &Evaluator,
    entry: &PanelEntry,
    proxy_calib: &[&[u32]],
    proxy_windows: usize,
    others: &[OtherSource<'_>],
) -> Measured {
    let mut m = Measured {
        name: entry.name.clone(),
        validation_source: ev.validation_source().name().into(),
        source_hash: crate::sandbox::sha256_hex(entry.source.as_bytes()),
        ..Measured::default()
    };
    let plugin = match ev.load(&entry.source) {
        Ok(p) => p,
        Err((stage, f)) => {
            m.failure = Some(format!("{stage}: {f}"));
            return m;
        }
    };
    m.mask_hash = ev.probe_hash(&plugin).ok();
    let screen_w = ev.windows(Level::Screen);
    let val = ev.windows(Level::Sequential);
    let held = ev.windows(Level::Heldout);
    let result = (|| -> Result<(), EvalError> {
        let mut sets: Vec<&[&[u32]]> = vec![&screen_w];
        sets.extend(others.iter().map(|o| o.screen.as_slice()));
        let mut sc = ev.prune_and_measure(&plugin, 0, Pruning::OneShot, &sets)?;
        m.screen_prune_s = sc.prune_seconds;
        m.screen_eval_s = sc.eval_seconds[0];
        let mut screens = sc.losses.drain(..);
        m.screen = screens.next().unwrap_or_default();
        m.sources = others
            .iter()
            .zip(screens)
            .map(|(o, screen)| SourceLosses {
                source: o.name.into(),
                screen,
                sequential: Vec::new(),
            })
            .collect();
        let pw = &val[..proxy_windows.min(val.len())];
        let t = Instant::now();
        let mut px =
            ev.prune_and_measure(&plugin, 0, Pruning::Sequential(proxy_calib.to_vec()), &[pw])?;
        m.proxy_s = t.elapsed().as_secs_f64();
        m.proxy = px.losses.remove(0);
        let mut sets: Vec<&[&[u32]]> = vec![&val, &held];
        sets.extend(others.iter().map(|o| o.sequential.as_slice()));
        let sq =
            ev.prune_and_measure(&plugin, 0, Pruning::Sequential(ev.calib_windows()), &sets)?;
        m.sequential_prune_s = sq.prune_seconds;
        m.sequential_eval_s = sq.eval_seconds[0];
        m.heldout_eval_s = sq.eval_seconds[1];
        let mut losses = sq.losses.into_iter();
        m.sequential = losses.next().unwrap_or_default();
        m.heldout = losses.next().unwrap_or_default();
        for (s, l) in m.sources.iter_mut().zip(losses) {
            s.sequential = l;
        }
        Ok(())
    })();
    if let Err(f) = result {
        m.failure = Some(f.to_string());
    }
    m
}

/// The fidelity of one level against the held-out ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelFidelity {
    /// Level name, e.g. `screen@4`.
    pub level: String,
    /// Windows it reads.
    pub windows: usize,
    /// Kendall's τ against the held-out ratios, all metrics.
    pub tau_all: f64,
    /// τ among the ten best metrics (by held-out ratio).
    pub tau_top10: f64,
    /// τ among the metrics within 20 % of Wanda on the held-out text.
    pub tau_within20: f64,
    /// Metrics within 20 % of Wanda.
    pub n_within20: usize,
    /// Seconds per candidate (median over the panel).
    pub seconds: f64,
    /// Candidates per hour at that cost.
    pub per_hour: f64,
}

/// Everything the study concludes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Study {
    /// Metrics measured (without failures).
    pub metrics: usize,
    /// Groups of metrics with equal probe masks (they should rank alike).
    pub duplicate_groups: Vec<Vec<String>>,
    /// Per level.
    pub levels: Vec<LevelFidelity>,
    /// Median standard deviation of the paired per-window differences at the sequential
    /// level, among metrics within 20 % of Wanda.
    pub median_sd: f64,
    /// Validation windows that resolve a 1 % difference at 95 % with that spread.
    pub windows_for_1pct: usize,
    /// Per metric: name, held-out ratio to Wanda and each level's ratio (same order as
    /// `levels`).
    pub table: Vec<(String, f64, Vec<f64>)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Ratio to Wanda of the paired losses on the first `n` windows (fewer where either has fewer).
fn prefix_ratio(c: &[f64], b: &[f64], n: usize) -> f64 {
    let n = n.min(c.len()).min(b.len());
    paired(&c[..n], &b[..n], 0).ratio()
}

/// A level: its name, windows, every row's ratio to Wanda, median seconds per candidate.
type StudyLevel = (String, usize, Vec<f64>, f64);

/// One level per window count `n` in `counts` that the reference `wanda` has, named by
/// `name` with `{}` for `n`: every row's ratio to Wanda on the first `n` windows of its
/// `losses` (NaN where it has none), and the median seconds per candidate, its pruning plus
/// its evaluation (`seconds`: both, for all the windows) scaled to `n` windows.
fn window_levels(
    name: &str,
    counts: &[usize],
    rows: &[&Measured],
    wanda: &[f64],
    losses: impl Fn(&Measured) -> Option<&[f64]>,
    seconds: impl Fn(&Measured) -> (f64, f64),
) -> Vec<StudyLevel> {
    let all = wanda.len().max(1);
    counts
        .iter()
        .filter(|&&n| n <= wanda.len())
        .map(|&n| {
            let secs = median(
                rows.iter()
                    .map(|r| {
                        let (prune, eval) = seconds(r);
                        prune + eval * n as f64 / all as f64
                    })
                    .collect(),
            );
            let r = rows
                .iter()
                .map(|r| losses(r).map_or(f64::NAN, |l| prefix_ratio(l, wanda, n)))
                .collect();
            (name.replace("{}", &n.to_string()), n, r, secs)
        })
        .collect()
}

/// Analyse measured rows; `wanda` names the reference row. `screens` and `validations` are
/// the window counts to evaluate as levels (prefixes of what was measured).
pub fn analyze(
    rows: &[Measured],
    wanda: &str,
    screens: &[usize],
    validations: &[usize],
) -> Result<Study, String> {
    let ok: Vec<&Measured> = rows
        .iter()
        .filter(|r| r.failure.is_none() && !r.heldout.is_empty())
        .collect();
    let w = ok
        .iter()
        .find(|r| r.name == wanda)
        .ok_or_else(|| format!("the panel has no measured `{wanda}`"))?;
    let held: Vec<f64> = ok
        .iter()
        .map(|r| prefix_ratio(&r.heldout, &w.heldout, usize::MAX))
        .collect();
    let mut levels: Vec<StudyLevel> = Vec::new();
    let mut push_levels = |label: &str, pick: &PickLosses<'_>| {
        let Some((w_screen, w_seq)) = pick(w) else {
            return;
        };
        levels.extend(window_levels(
            &format!("screen@{{}}{label}"),
            screens,
            &ok,
            w_screen,
            |r| pick(r).map(|(sc, _)| sc),
            |r| (r.screen_prune_s, r.screen_eval_s),
        ));
        if label.is_empty() && !w.proxy.is_empty() {
            let r = ok
                .iter()
                .map(|r| prefix_ratio(&r.proxy, &w.proxy, usize::MAX))
                .collect();
            let secs = median(ok.iter().map(|r| r.proxy_s).collect());
            levels.push((format!("proxy@{}", w.proxy.len()), w.proxy.len(), r, secs));
        }
        levels.extend(window_levels(
            &format!("sequential@{{}}{label}"),
            validations,
            &ok,
            w_seq,
            |r| pick(r).map(|(_, sq)| sq),
            |r| (r.sequential_prune_s, r.sequential_eval_s),
        ));
    };
    push_levels("", &|r: &Measured| Some((&r.screen[..], &r.sequential[..])));
    for src in &w.sources {
        let label = format!(" {}", src.source);
        push_levels(&label, &|r: &Measured| {
            r.sources
                .iter()
                .find(|x| x.source == src.source)
                .map(|x| (&x.screen[..], &x.sequential[..]))
        });
    }
    let held_secs = median(
        ok.iter()
            .map(|r| r.sequential_prune_s + r.heldout_eval_s)
            .collect(),
    );
    levels.push((
        format!("heldout@{}", w.heldout.len()),
        w.heldout.len(),
        held.clone(),
        held_secs,
    ));
    let mut order: Vec<usize> = (0..ok.len()).collect();
    order.sort_by(|&a, &b| held[a].total_cmp(&held[b]));
    let top10: Vec<usize> = order.iter().copied().take(10).collect();
    let within: Vec<usize> = (0..ok.len()).filter(|&i| held[i] <= 1.2).collect();
    let tau_on = |idx: &[usize], r: &[f64]| {
        let a: Vec<f64> = idx.iter().map(|&i| r[i]).collect();
        let b: Vec<f64> = idx.iter().map(|&i| held[i]).collect();
        kendall_tau(&a, &b)
    };
    let fid = levels
        .iter()
        .map(|(name, n, r, secs)| LevelFidelity {
            level: name.clone(),
            windows: *n,
            tau_all: tau_on(&(0..ok.len()).collect::<Vec<_>>(), r),
            tau_top10: tau_on(&top10, r),
            tau_within20: tau_on(&within, r),
            n_within20: within.len(),
            seconds: *secs,
            per_hour: 3600.0 / secs,
        })
        .collect();
    let sds: Vec<f64> = within
        .iter()
        .filter(|&&i| ok[i].name != wanda)
        .map(|&i| paired(&ok[i].sequential, &w.sequential, 0).sd)
        .collect();
    let median_sd = median(sds);
    let mut groups: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for r in &ok {
        if let Some(h) = &r.mask_hash {
            groups.entry(h.as_str()).or_default().push(r.name.clone());
        }
    }
    Ok(Study {
        metrics: ok.len(),
        duplicate_groups: groups.into_values().filter(|g| g.len() > 1).collect(),
        levels: fid,
        median_sd,
        windows_for_1pct: windows_to_resolve(median_sd, 1.01f64.ln()),
        table: order
            .iter()
            .map(|&i| {
                (
                    ok[i].name.clone(),
                    held[i],
                    levels.iter().map(|(_, _, r, _)| r[i]).collect(),
                )
            })
            .collect(),
    })
}

/// The study as a Markdown page.
pub fn markdown(s: &Study, title: &str) -> String {
    use std::fmt::Write;
    let mut out = format!("# {title}\n\n");
    let _ = writeln!(
        out,
        "{} metrics. Kendall's τ of each level's ratio to Wanda against the held-out ratio \
         (all metrics; the ten best on the held-out text; the {} within 20 % of Wanda), and \
         each level's cost per candidate (median over the panel).\n",
        s.metrics,
        s.levels.first().map_or(0, |l| l.n_within20)
    );
    out.push_str("| level | windows | τ all | τ best 10 | τ within 20 % | s / candidate | candidates / h |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for l in &s.levels {
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.1} | {:.0} |",
            l.level, l.windows, l.tau_all, l.tau_top10, l.tau_within20, l.seconds, l.per_hour
        );
    }
    let _ = writeln!(
        out,
        "\nPaired per-window differences at the sequential level (metrics within 20 % of \
         Wanda): median standard deviation {:.4} nats, so **{} validation windows resolve a 1 % \
         perplexity difference** at 95 %.\n",
        s.median_sd, s.windows_for_1pct
    );
    if !s.duplicate_groups.is_empty() {
        out.push_str("Metrics with equal probe masks: ");
        let g: Vec<String> = s.duplicate_groups.iter().map(|g| g.join(" = ")).collect();
        let _ = writeln!(out, "{}.\n", g.join("; "));
    }
    out.push_str("| metric | held-out ×Wanda |");
    for l in &s.levels {
        let _ = write!(out, " {} |", l.level);
    }
    out.push_str("\n|---|---|");
    for _ in &s.levels {
        out.push_str("---|");
    }
    out.push('\n');
    for (name, held, r) in &s.table {
        let _ = write!(out, "| {name} | {} |", fmt_ratio(*held));
        for v in r {
            let _ = write!(out, " {} |", fmt_ratio(*v));
        }
        out.push('\n');
    }
    out
}

fn fmt_ratio(v: f64) -> String {
    if !v.is_finite() {
        "∞".into()
    } else if v >= 100.0 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// The model, texts and ladder of a fidelity study.
pub struct StudyData<'a> {
    /// Model and texts.
    pub data: super::data::DataSpec<'a>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: &'a str,
    /// Calibration windows of the former proxy level.
    pub proxy_calib_windows: usize,
    /// Validation windows of the former proxy level.
    pub proxy_validation_windows: usize,
    /// The ladder (promotion off: every metric climbs every level).
    pub ladder: super::cascade::LadderConfig,
    /// Other validation sources measured beside `data`'s (the same count of windows).
    pub other_sources: Vec<super::data::ValidationSource>,
}

/// Measure every metric of `todo` at every level, appending each result to `results` (one
/// JSON line, flushed) as it lands; `say` gets one line per step.
pub fn measure_panel(
    spec: &StudyData,
    builder: crate::build::Builder,
    policy: crate::sandbox::Policy,
    todo: &[&PanelEntry],
    results: &std::path::Path,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<Measured>> {
    use anyhow::Context;
    use std::io::Write;
    let device = crate::setup::device(spec.device)?;
    let data = super::data::search_data(&spec.data, &device)?;
    // The former proxy's calibration windows: evenly spaced, fewer.
    let seq = spec.data.seq_len;
    let loaded = crate::setup::load_model(spec.data.model, &device, spec.data.precision)?;
    let calib_stream = crate::setup::stream(&loaded.tokenizer, spec.data.calib, "calib")?;
    let proxy_offsets = crate::calib::window_offsets(
        calib_stream.tokens.len(),
        spec.proxy_calib_windows,
        seq,
        crate::calib::Sampler::Even,
    )?;
    let proxy_calib: Vec<Vec<u32>> = proxy_offsets
        .iter()
        .map(|&o| calib_stream.tokens[o..o + seq].to_vec())
        .collect();
    let proxy_refs: Vec<&[u32]> = proxy_calib.iter().map(|w| w.as_slice()).collect();
    let calib_offsets = crate::calib::window_offsets(
        calib_stream.tokens.len(),
        spec.data.calib_windows,
        seq,
        crate::calib::Sampler::Even,
    )?;
    let other_windows = spec
        .other_sources
        .iter()
        .filter(|&&s| s != spec.data.validation_source)
        .map(|&s| {
            let w = super::data::validation_windows(
                s,
                &calib_stream.tokens,
                &calib_offsets,
                // The whole evaluation stream, tokenised once by `search_data`.
                &data.heldout,
                spec.data.heldout_windows,
                spec.data.validation_windows,
                seq,
            )?;
            Ok((s.name(), w))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let others: Vec<OtherSource<'_>> = other_windows
        .iter()
        .map(|(name, w)| {
            let all: Vec<&[u32]> = w.iter().map(|x| x.as_slice()).collect();
            OtherSource {
                name,
                screen: all[..spec.ladder.screen_windows.min(all.len())].to_vec(),
                sequential: all,
            }
        })
        .collect();
    let ev = Evaluator::new(
        spec.ladder.clone(),
        data,
        builder,
        policy,
        None,
        &mut |what| say(&format!("preparing: {what}")),
    )?;
    let prep = ev.preparation();
    say(&format!(
        "prepared: dense statistics {:.1} s, gradient {:.1} s, Wanda's losses {:.1} s",
        prep.dense_stats, prep.gradient, prep.reference
    ));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(results)
        .with_context(|| format!("opening {}", results.display()))?;
    let mut out = Vec::new();
    for (k, e) in todo.iter().enumerate() {
        let m = measure(&ev, e, &proxy_refs, spec.proxy_validation_windows, &others);
        say(&format!(
            "[{}/{}] {:<16} {}",
            k + 1,
            todo.len(),
            e.name,
            match &m.failure {
                Some(f) => format!("failed: {}", first_line(f)),
                None => format!(
                    "screen {:.1}+{:.1} s, proxy {:.1} s, sequential {:.1}+{:.1} s, held-out {:.1} s",
                    m.screen_prune_s,
                    m.screen_eval_s,
                    m.proxy_s,
                    m.sequential_prune_s,
                    m.sequential_eval_s,
                    m.heldout_eval_s
                ),
            }
        ));
        writeln!(file, "{}", serde_json::to_string(&m)?)?;
        file.flush()?;
        out.push(m);
    }
    Ok(out)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_panel_parses_and_is_big_enough() {
        let p = builtin_panel(true);
        assert!(p.len() >= 40, "{}", p.len());
        let names: std::collections::HashSet<&str> = p.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names.len(), p.len(), "names are unique");
        assert!(builtin_panel(false).len() < p.len());
    }

    #[test]
    fn analysis_ranks_levels_against_heldout() {
        // Three metrics whose screens agree with the held-out order and one whose proxy
        // disagrees.
        let row = |name: &str, d: f64| Measured {
            name: name.into(),
            source_hash: name.into(),
            mask_hash: Some(name.into()),
            screen: vec![3.0 + d; 4],
            proxy: vec![3.0 - d; 2],
            sequential: vec![3.0 + d; 8],
            heldout: vec![3.0 + d; 8],
            screen_prune_s: 1.0,
            screen_eval_s: 4.0,
            proxy_s: 2.0,
            sequential_prune_s: 10.0,
            sequential_eval_s: 8.0,
            heldout_eval_s: 8.0,
            ..Measured::default()
        };
        let rows = vec![
            row("wanda", 0.0),
            row("a", 0.05),
            row("b", 0.1),
            row("c", -0.02),
        ];
        let s = analyze(&rows, "wanda", &[2, 4], &[8]).unwrap();
        let by = |n: &str| s.levels.iter().find(|l| l.level == n).unwrap();
        assert_eq!(by("screen@4").tau_all, 1.0);
        assert_eq!(by("proxy@2").tau_all, -1.0);
        assert_eq!(by("sequential@8").tau_all, 1.0);
        assert!((by("screen@2").seconds - 3.0).abs() < 1e-9);
        assert_eq!(s.table[0].0, "c");
        assert!(markdown(&s, "t").contains("| screen@4 | 4 | 1.000"));
    }

    #[test]
    fn other_sources_become_levels_of_their_own() {
        // The study's own windows agree with the held-out order; the other source's screen
        // reverses it, and its sequential level agrees.
        let row = |name: &str, d: f64| Measured {
            name: name.into(),
            source_hash: name.into(),
            screen: vec![3.0 + d; 4],
            sequential: vec![3.0 + d; 8],
            heldout: vec![3.0 + d; 8],
            sources: vec![SourceLosses {
                source: "eval-tail".into(),
                screen: vec![3.0 - d; 4],
                sequential: vec![3.0 + 2.0 * d; 8],
            }],
            ..Measured::default()
        };
        let rows = vec![row("wanda", 0.0), row("a", 0.05), row("b", -0.1)];
        let s = analyze(&rows, "wanda", &[4], &[8]).unwrap();
        let by = |n: &str| s.levels.iter().find(|l| l.level == n).unwrap();
        assert_eq!(by("screen@4").tau_all, 1.0);
        assert_eq!(by("screen@4 eval-tail").tau_all, -1.0);
        assert_eq!(by("sequential@8 eval-tail").tau_all, 1.0);
        // Every level has one ratio per metric in the table.
        assert!(s.table.iter().all(|(_, _, r)| r.len() == s.levels.len()));
        // A row measured before sources existed reads back with none, as `spread`.
        let old = r#"{"name":"w","source_hash":"h","mask_hash":null,"failure":null,
            "screen":[],"proxy":[],"sequential":[],"heldout":[],"screen_prune_s":0,
            "screen_eval_s":0,"proxy_s":0,"sequential_prune_s":0,"sequential_eval_s":0,
            "heldout_eval_s":0}"#;
        let m: Measured = serde_json::from_str(old).unwrap();
        assert_eq!(m.validation_source, "spread");
        assert!(m.sources.is_empty());
    }
}
