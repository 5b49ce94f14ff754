//! `autoprune runs show --html`: one self-contained HTML file per run (no network, no external
//! script or style): summary and best candidate, leaderboard, the lineage graph (nodes
//! coloured by score, failures visible), best score over time, candidates per stage, and every
//! candidate's code, thought, verdict and derivations.
//!
//! Everything a proposer wrote (thoughts, code, verdicts) is untrusted text and is escaped; the
//! page's one small script only links graph nodes to their details.

use super::archive::{Call, Edge, Node, Operator, Stage, Status};
use std::collections::HashMap;
use std::fmt::Write;

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn fmt_ppl(x: Option<f64>) -> String {
    match x {
        None => "–".into(),
        Some(v) if v >= 1e6 => format!("{v:.3e}"),
        Some(v) => format!("{v:.4}"),
    }
}

/// The score a node is ranked and coloured by: held-out, else validation fitness.
fn score(n: &Node) -> Option<f64> {
    if n.status != Status::Evaluated {
        return None;
    }
    n.heldout.or(n.fitness)
}

/// The best evaluated node: lowest held-out ratio to Wanda, then lowest sequential-level ratio.
pub fn best(nodes: &[Node]) -> Option<&Node> {
    nodes
        .iter()
        .filter(|n| n.status == Status::Evaluated && n.fitness.is_some())
        .min_by(|a, b| {
            (a.heldout.unwrap_or(f64::MAX), a.fitness.unwrap_or(f64::MAX))
                .partial_cmp(&(b.heldout.unwrap_or(f64::MAX), b.fitness.unwrap_or(f64::MAX)))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
}

/// Counts of the ladder's funnel: (label, count).
pub fn funnel(nodes: &[Node]) -> Vec<(&'static str, usize)> {
    use Stage::{Build, Check, Probe, Propose, Screen, Sequential};
    let proposed: Vec<&Node> = nodes.iter().filter(|n| !n.operator.is_seed()).collect();
    let failed_at = |n: &Node, stages: &[Stage]| {
        n.status == Status::Failed && n.stage.as_ref().is_some_and(|s| stages.contains(s))
    };
    let count = |f: &dyn Fn(&Node) -> bool| proposed.iter().filter(|n| f(n)).count();
    vec![
        ("proposed", proposed.len()),
        ("with code", count(&|n| !failed_at(n, &[Propose]))),
        ("built", count(&|n| !failed_at(n, &[Propose, Build]))),
        (
            "passed check",
            count(&|n| !failed_at(n, &[Propose, Build, Check])),
        ),
        (
            "new behaviour",
            count(&|n| {
                !failed_at(n, &[Propose, Build, Check, Probe]) && n.status != Status::Duplicate
            }),
        ),
        (
            "screened",
            count(&|n| {
                matches!(n.status, Status::Evaluated | Status::Screened)
                    || failed_at(n, &[Screen, Sequential])
            }),
        ),
        (
            "passed the screen",
            count(&|n| n.status == Status::Evaluated || failed_at(n, &[Sequential])),
        ),
        (
            "sequential level",
            count(&|n| n.status == Status::Evaluated),
        ),
        ("duplicates", count(&|n| n.status == Status::Duplicate)),
        ("failed", count(&|n| n.status == Status::Failed)),
    ]
}

/// Colour of a score on a log scale between `lo` (green) and `hi` (red).
fn colour(v: f64, lo: f64, hi: f64) -> String {
    let t = if hi > lo {
        ((v.max(1e-9).ln() - lo.ln()) / (hi.ln() - lo.ln())).clamp(0.0, 1.0)
    } else {
        0.0
    };
    // Green (120°) → yellow → red (0°).
    format!("hsl({:.0},70%,45%)", 120.0 * (1.0 - t))
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.85em;max-height:40em}
.scroll{overflow-x:auto;border:1px solid #ddd}
.failed{color:#b00}.evaluated{color:#060}.screened{color:#a60}.duplicate{color:#666}
details{margin:.3em 0}summary{cursor:pointer}
#best{background:#eef7ee;padding:.6em 1em;border-left:4px solid #3a3}
.verdict{white-space:pre-wrap;color:#b00}
";

/// The report.
pub fn render(
    title: &str,
    config: Option<&serde_json::Value>,
    nodes: &[Node],
    edges: &[Edge],
    calls: &[Call],
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>autoprune search: {}</title><style>{STYLE}</style></head><body>\n",
        esc(title)
    );
    let _ = writeln!(h, "<h1>autoprune search: {}</h1>", esc(title));
    let count = |s: Status| nodes.iter().filter(|n| n.status == s).count();
    let tokens: u64 = calls.iter().fold(0u64, |t, c| {
        t.saturating_add(c.prompt_tokens)
            .saturating_add(c.completion_tokens)
    });
    let _ = writeln!(
        h,
        "<p>{} nodes: {} evaluated, {} screened out, {} duplicates, {} failed, {} pending. \
         {} proposer calls, {} tokens.</p>",
        nodes.len(),
        count(Status::Evaluated),
        count(Status::Screened),
        count(Status::Duplicate),
        count(Status::Failed),
        count(Status::Pending),
        calls.len(),
        tokens
    );
    // Best candidate.
    match best(nodes) {
        Some(b) => {
            let _ = writeln!(
                h,
                "<section id=\"best\" data-best=\"{}\"><h2>Best candidate: #{}</h2>\
                 <p>held-out <b>{}</b> × Wanda's perplexity, sequential level {}, screen {} — {} ({})</p>\
                 <p>{}</p><details><summary>code</summary><pre><code>{}</code></pre></details></section>",
                b.id,
                b.id,
                fmt_ppl(b.heldout),
                fmt_ppl(b.fitness),
                fmt_ppl(b.proxy),
                esc(&b.proposer.name()),
                esc(b.operator.as_str()),
                esc(&b.thought),
                esc(&b.code)
            );
        }
        None => {
            let _ = writeln!(
                h,
                "<section id=\"best\"><p>No candidate evaluated yet.</p></section>"
            );
        }
    }
    // Leaderboard.
    let mut ranked: Vec<&Node> = nodes.iter().filter(|n| score(n).is_some()).collect();
    ranked.sort_by(|a, b| {
        (a.heldout.unwrap_or(f64::MAX), a.fitness.unwrap_or(f64::MAX))
            .partial_cmp(&(b.heldout.unwrap_or(f64::MAX), b.fitness.unwrap_or(f64::MAX)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    h.push_str("<h2>Leaderboard</h2><table id=\"leaderboard\"><tr><th>#</th><th>proposer</th><th>operator</th><th>screen ×W</th><th>sequential ×W</th><th>held-out ×W</th><th>idea</th></tr>\n");
    for n in ranked.iter().take(25) {
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#node-{}\">#{}</a></td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            n.id,
            n.id,
            esc(&n.proposer.name()),
            esc(n.operator.as_str()),
            fmt_ppl(n.proxy),
            fmt_ppl(n.fitness),
            fmt_ppl(n.heldout),
            esc(&first_line(&n.thought, 110))
        );
    }
    h.push_str("</table>\n");
    // Lineage graph.
    h.push_str("<h2>Lineage</h2><p>One column per candidate in creation order, one row per generation; colour = ratio to Wanda's perplexity at the sequential level, else the screen (green = the best, red = twice the best or worse, log scale); hollow = duplicate; grey × = failed (hover for the verdict); orange = screened out. Click a node for its details.</p>\n");
    h.push_str(&lineage_svg(nodes, edges));
    // Best over time.
    h.push_str("<h2>Best ratio to Wanda over the run (sequential level)</h2>\n");
    h.push_str(&best_over_time_svg(nodes));
    // Funnel.
    h.push_str("<h2>Candidates per stage</h2>\n");
    h.push_str(&funnel_svg(&funnel(nodes)));
    // Configuration.
    if let Some(c) = config {
        let _ = writeln!(
            h,
            "<h2>Configuration</h2><pre>{}</pre>",
            esc(&serde_json::to_string_pretty(c).unwrap_or_default())
        );
    }
    // Every candidate.
    h.push_str("<h2>Candidates</h2>\n");
    let by_id: HashMap<i64, &Node> = nodes.iter().map(|n| (n.id, n)).collect();
    let score_val = |n: &Node| {
        (n.status == Status::Evaluated)
            .then_some(n.fitness)
            .flatten()
    };
    let mut parents: HashMap<i64, Vec<&Edge>> = HashMap::new();
    for e in edges {
        parents.entry(e.child).or_default().push(e);
    }
    let mut calls_of: HashMap<i64, Vec<&Call>> = HashMap::new();
    for c in calls {
        if let Some(id) = c.node {
            calls_of.entry(id).or_default().push(c);
        }
    }
    for n in nodes.iter().rev() {
        let state = format!("{:?}", n.status).to_lowercase();
        let _ = write!(
            h,
            "<details id=\"node-{}\"><summary><span class=\"{state}\">#{} {state}</span> \
             [{} / {}] stage {} · screen {} · sequential {} · held-out {} (× Wanda) — {}</summary>",
            n.id,
            n.id,
            esc(&n.proposer.name()),
            esc(n.operator.as_str()),
            esc(n.stage.as_ref().map_or("–", Stage::as_str)),
            fmt_ppl(n.proxy),
            fmt_ppl(n.fitness),
            fmt_ppl(n.heldout),
            esc(&first_line(&n.thought, 90))
        );
        if let Some(ps) = parents.get(&n.id) {
            h.push_str("<ul>");
            for e in ps {
                // The measured effect: the ratio to Wanda against this parent.
                let effect = match (
                    by_id.get(&e.parent).and_then(|p| score_val(p)),
                    score_val(n),
                ) {
                    (Some(p), Some(c)) => format!(" (Δ validation {:+.3})", c - p),
                    _ => String::new(),
                };
                let _ = write!(
                    h,
                    "<li>{} of <a href=\"#node-{}\">#{}</a>{effect}: {}</li>",
                    esc(e.operator.as_str()),
                    e.parent,
                    e.parent,
                    esc(&e.rationale)
                );
            }
            h.push_str("</ul>");
        }
        if let Some(d) = n.duplicate_of {
            let _ = write!(
                h,
                "<p>prunes exactly like <a href=\"#node-{d}\">#{d}</a>: result reused</p>"
            );
        }
        if let Some(v) = &n.verdict {
            let _ = write!(h, "<p class=\"verdict\">verdict: {}</p>", esc(&v.to_json()));
        }
        let own = calls_of.get(&n.id).map_or(&[][..], |v| v.as_slice());
        let _ = write!(
            h,
            "<p><b>Thought.</b> {}</p><p>{} tokens, {} calls, {:.1} s, source {}</p><pre><code>{}</code></pre>",
            esc(&n.thought),
            n.tokens,
            own.len(),
            n.seconds.unwrap_or(0.0),
            esc(&n.source_hash.chars().take(16).collect::<String>()),
            esc(&n.code)
        );
        // The proposer's calls: prompt, raw response and verdict of every attempt.
        for (k, c) in own.iter().enumerate() {
            let _ = write!(
                h,
                "<details><summary>call {} · {} + {} tokens · {:.1} s{}</summary>\
                 <p>prompt</p><pre>{}</pre><p>response</p><pre>{}</pre></details>",
                k + 1,
                c.prompt_tokens,
                c.completion_tokens,
                c.seconds,
                c.error
                    .as_deref()
                    .map(|e| format!(" · {}", esc(&first_line(e, 120))))
                    .unwrap_or_default(),
                esc(&c.prompt),
                esc(c.response.as_deref().unwrap_or("(none)"))
            );
        }
        h.push_str("</details>\n");
    }
    h.push_str(SCRIPT);
    h.push_str("</body></html>\n");
    h
}

/// Opens a candidate's details when its graph node is clicked; marks the page as rendered.
const SCRIPT: &str = r#"<script>
(function () {
  function open(id) {
    var d = document.getElementById('node-' + id);
    if (d) { d.open = true; d.scrollIntoView(); }
  }
  var nodes = document.querySelectorAll('[data-node]');
  for (var i = 0; i < nodes.length; i++) {
    nodes[i].addEventListener('click', function (e) { open(e.currentTarget.getAttribute('data-node')); });
  }
  if (location.hash.indexOf('#node-') === 0) { open(location.hash.slice(6)); }
  document.body.setAttribute('data-rendered', String(nodes.length));
})();
</script>
"#;

fn first_line(s: &str, n: usize) -> String {
    let l = s.lines().next().unwrap_or("");
    let mut o: String = l.chars().take(n).collect();
    if l.chars().count() > n {
        o.push('…');
    }
    o
}

fn generation(edges: &[Edge], nodes: &[Node]) -> HashMap<i64, usize> {
    let mut g: HashMap<i64, usize> = HashMap::new();
    // Nodes come in id order and parents always have smaller ids.
    for n in nodes {
        let d = edges
            .iter()
            .filter(|e| e.child == n.id)
            .filter_map(|e| g.get(&e.parent))
            .max()
            .map_or(0, |d| d + 1);
        g.insert(n.id, d);
    }
    g
}

fn lineage_svg(nodes: &[Node], edges: &[Edge]) -> String {
    let gen = generation(edges, nodes);
    let max_gen = gen.values().copied().max().unwrap_or(0);
    let (dx, dy, pad) = (16.0, 34.0, 20.0);
    let width = pad * 2.0 + dx * nodes.len().max(1) as f64;
    let height = pad * 2.0 + dy * (max_gen + 1) as f64;
    let pos: HashMap<i64, (f64, f64)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.id,
                (pad + dx * i as f64 + dx / 2.0, pad + dy * gen[&n.id] as f64),
            )
        })
        .collect();
    let scores: Vec<f64> = nodes
        .iter()
        .filter_map(|n| n.fitness)
        .filter(|f| *f > 0.0 && f.is_finite())
        .collect();
    let lo = scores.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = scores
        .iter()
        .copied()
        .fold(0.0f64, f64::max)
        // Twice the best is already bad at these perplexities: spend the colours near the top.
        .min(lo * 2.0);
    let mut s = format!(
        "<div class=\"scroll\"><svg id=\"lineage\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\">\n"
    );
    for e in edges {
        if let (Some(a), Some(b)) = (pos.get(&e.parent), pos.get(&e.child)) {
            let _ = writeln!(
                s,
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\" stroke-width=\"1\" opacity=\"0.5\"/>",
                a.0,
                a.1,
                b.0,
                b.1,
                if e.operator == Operator::Crossover {
                    "#69c"
                } else {
                    "#999"
                }
            );
        }
    }
    for n in nodes {
        let (x, y) = pos[&n.id];
        let tip = esc(&format!(
            "#{} {} {} — {}{}",
            n.id,
            format!("{:?}", n.status).to_lowercase(),
            fmt_ppl(n.fitness.or(n.proxy)),
            first_line(&n.thought, 80),
            n.verdict
                .as_ref()
                .map(|v| format!(" — {}", first_line(&v.to_json(), 160)))
                .unwrap_or_default()
        ));
        let shape = match n.status {
            Status::Failed => format!(
                "<path d=\"M{:.1} {:.1}l8 8m0 -8l-8 8\" stroke=\"#888\" stroke-width=\"2\"/><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"7\" fill=\"transparent\"/>",
                x - 4.0,
                y - 4.0
            ),
            Status::Duplicate => format!(
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"white\" stroke=\"#666\" stroke-width=\"1.5\"/>"
            ),
            Status::Screened => format!(
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"#e90\"/>"
            ),
            Status::Pending => format!(
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"#ccc\"/>"
            ),
            Status::Evaluated => {
                let r = if n.operator.is_seed() { 7 } else { 6 };
                format!(
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r}\" fill=\"{}\" stroke=\"#222\" stroke-width=\"{}\"/>",
                    colour(n.fitness.unwrap_or(hi), lo, hi),
                    if n.operator.is_seed() { 2 } else { 0 }
                )
            }
        };
        let _ = writeln!(
            s,
            "<g class=\"node\" data-node=\"{}\" style=\"cursor:pointer\"><title>{tip}</title>{shape}</g>",
            n.id
        );
    }
    s.push_str("</svg></div>\n");
    s
}

fn best_over_time_svg(nodes: &[Node]) -> String {
    let (w, h, l, b) = (720.0, 260.0, 70.0, 36.0);
    let mut pts: Vec<(usize, f64)> = Vec::new();
    let mut best = f64::INFINITY;
    for (i, n) in nodes.iter().enumerate() {
        if let Some(f) = n.fitness.filter(|_| n.status == Status::Evaluated) {
            if f < best {
                best = f;
            }
        }
        if best.is_finite() {
            pts.push((i, best));
        }
    }
    if pts.is_empty() {
        return "<p>No candidate evaluated yet.</p>\n".into();
    }
    let baselines: Vec<(String, f64)> = nodes
        .iter()
        .filter(|n| n.operator.is_seed())
        .filter_map(|n| Some((first_line(&n.thought, 30), n.fitness?)))
        .collect();
    let ys: Vec<f64> = pts
        .iter()
        .map(|p| p.1)
        .chain(baselines.iter().map(|b| b.1))
        .collect();
    // Log scale: only positive finite values (perplexities) are plotted.
    let lo = (ys.iter().copied().fold(f64::INFINITY, f64::min) * 0.95).max(1e-6);
    let hi = (ys.iter().copied().fold(0.0f64, f64::max) * 1.05)
        .min(lo * 50.0)
        .max(lo * 1.01);
    let n = nodes.len().max(2) as f64;
    let x = |i: usize| l + (w - l - 10.0) * i as f64 / (n - 1.0);
    let y = |v: f64| {
        let t = (v.clamp(lo, hi).ln() - lo.ln()) / (hi.ln() - lo.ln()).max(1e-12);
        10.0 + (h - b - 10.0) * (1.0 - t)
    };
    let mut s = format!(
        "<svg id=\"best-over-time\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n\
         <line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#444\"/><line x1=\"{l}\" y1=\"10\" x2=\"{l}\" y2=\"{}\" stroke=\"#444\"/>\n",
        h - b,
        w - 10.0,
        h - b,
        h - b
    );
    for v in [lo, (lo * hi).sqrt(), hi] {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{:.2}</text>",
            l - 4.0,
            y(v) + 4.0,
            v
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">candidate (creation order)</text>",
        (l + w) / 2.0,
        h - 8.0
    );
    for (name, v) in &baselines {
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"10\" fill=\"#666\" text-anchor=\"end\">{}</text>",
            y(*v),
            w - 10.0,
            y(*v),
            w - 12.0,
            y(*v) - 3.0,
            esc(name)
        );
    }
    let path: Vec<String> = pts
        .iter()
        .enumerate()
        .map(|(k, (i, v))| {
            if k == 0 {
                format!("M{:.1} {:.1}", x(*i), y(*v))
            } else {
                format!("H{:.1} V{:.1}", x(*i), y(*v))
            }
        })
        .collect();
    let _ = writeln!(
        s,
        "<path d=\"{}\" fill=\"none\" stroke=\"#2a7\" stroke-width=\"2\"/>",
        path.join(" ")
    );
    s.push_str("</svg>\n");
    s
}

fn funnel_svg(f: &[(&str, usize)]) -> String {
    let max = f.iter().map(|x| x.1).max().unwrap_or(1).max(1) as f64;
    let (bar_h, w, label_w) = (20.0, 640.0, 130.0);
    let h = bar_h * 1.3 * f.len() as f64 + 10.0;
    let mut s = format!(
        "<svg id=\"funnel\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h:.0}\" viewBox=\"0 0 {w} {h:.0}\">\n"
    );
    for (i, (label, c)) in f.iter().enumerate() {
        let y = 5.0 + i as f64 * bar_h * 1.3;
        let bw = (w - label_w - 60.0) * *c as f64 / max;
        let fill = match *label {
            "failed" => "#c55",
            "duplicates" => "#999",
            _ => "#59a",
        };
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"end\">{label}</text>\
             <rect x=\"{label_w}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bar_h}\" fill=\"{fill}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">{c}</text>",
            label_w - 6.0,
            y + bar_h * 0.7,
            label_w + bw + 4.0,
            y + bar_h * 0.7
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::archive::Verdict;

    fn node(id: i64, op: &str, status: Status, fitness: Option<f64>, thought: &str) -> Node {
        Node {
            id,
            created: 0.0,
            proposer: "gp".into(),
            operator: op.into(),
            thought: thought.into(),
            code: format!("fn main() {{ /* {id} */ }}"),
            source_hash: format!("{id:064}"),
            expr: None,
            status,
            stage: Some(match status {
                Status::Failed => Stage::Build,
                _ => Stage::Other("full".into()),
            }),
            verdict: (status == Status::Failed).then(|| {
                Verdict::Guest(crate::sandbox::Failure::Compile {
                    diagnostics: String::new(),
                })
            }),
            mask_hash: None,
            duplicate_of: (status == Status::Duplicate).then_some(1),
            proxy: fitness,
            fitness,
            heldout: None,
            seconds: Some(1.0),
            tokens: 0,
            detail: None,
        }
    }

    #[test]
    fn untrusted_text_is_escaped_and_the_best_is_shown() {
        let nodes = vec![
            node(1, "seed", Status::Evaluated, Some(60.0), "Wanda"),
            node(
                2,
                "mutate",
                Status::Evaluated,
                Some(50.0),
                "<script>alert(1)</script>",
            ),
            node(3, "mutate", Status::Failed, None, "x\" onload=\"alert(2)"),
            node(4, "mutate", Status::Duplicate, Some(60.0), "same"),
        ];
        let edges = vec![Edge {
            child: 2,
            parent: 1,
            operator: "mutate".into(),
            rationale: "<img src=x onerror=alert(3)>".into(),
        }];
        let call = Call {
            node: Some(2),
            proposer: "llm:m".into(),
            prompt: "<script>p</script>".into(),
            response: Some("<script>r</script>".into()),
            error: Some("{\"verdict\":\"no_code\"}".into()),
            ..Call::default()
        };
        let html = render("t<1>", None, &nodes, &edges, &[call]);
        assert!(html.contains("&lt;script&gt;r&lt;/script&gt;"));
        assert!(html.contains("call 1 · 0 + 0 tokens"));
        assert!(!html.contains("<script>alert"));
        assert!(!html.contains("<img src=x"));
        assert!(!html.contains("\" onload=\""));
        assert!(html.contains("data-best=\"2\""));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        // Exactly one script: ours.
        assert_eq!(html.matches("<script>").count(), 1);
        assert_eq!(html.matches("data-node=").count(), 4);
    }

    #[test]
    fn funnel_counts_each_stage() {
        let nodes = vec![
            node(1, "seed", Status::Evaluated, Some(60.0), "s"),
            node(2, "mutate", Status::Evaluated, Some(50.0), "a"),
            node(3, "mutate", Status::Failed, None, "b"),
            node(4, "mutate", Status::Duplicate, Some(60.0), "c"),
            node(5, "mutate", Status::Screened, None, "d"),
        ];
        let f: HashMap<&str, usize> = funnel(&nodes).into_iter().collect();
        assert_eq!(f["proposed"], 4);
        assert_eq!(f["built"], 3);
        assert_eq!(f["new behaviour"], 2);
        assert_eq!(f["screened"], 2);
        assert_eq!(f["passed the screen"], 1);
        assert_eq!(f["sequential level"], 1);
        assert_eq!(f["duplicates"], 1);
        assert_eq!(f["failed"], 1);
    }
}
