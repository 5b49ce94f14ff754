//! The board's pages: plain server-rendered HTML with no script at all (the server's
//! Content-Security-Policy forbids one). Every submitted string — names, submitters, verdicts,
//! code — is escaped.

use super::store::{JobView, Leaderboard, SubmissionView};
use super::BoardConfig;
use crate::search::report::esc;
use std::fmt::Write;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}tr.base{color:#555;background:#f6f6f6}\
.fail{color:#a00}pre{background:#f6f6f6;padding:1em;overflow:auto}small{color:#666}";

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
        esc(title)
    )
}

fn ppl(x: f64) -> String {
    if x >= 1e6 {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

/// The leaderboard: one table per setting (rank, metric, submitter, perplexity, ratio to
/// Wanda), the failed submissions with their verdicts, and the latest submissions.
pub fn board(b: &Leaderboard, recent: &[SubmissionView], config: &BoardConfig) -> String {
    let mut h = head("autoprune leaderboard");
    let p = &config.protocol;
    let _ = write!(
        h,
        "<h1>autoprune leaderboard</h1><p>Perplexity on the held-out text (State of the Union speeches from 1990 on), \
         {} windows of {} tokens, after pruning with {} calibration windows; lower is better. \
         Baselines (grey) are measured by the same workers.</p>",
        p.eval_windows, p.seq_len, p.calib_windows
    );
    for r in &b.settings {
        let _ = write!(
            h,
            "<h2 id=\"s-{}\">{}</h2>",
            esc(&r.setting.replace(['%', '+', ':'], "-")),
            esc(&r.setting)
        );
        if r.entries.is_empty() {
            h.push_str("<p><small>No results yet.</small></p>");
        } else {
            h.push_str("<table><thead><tr><th>rank</th><th>metric</th><th>submitter</th><th>perplexity</th><th>× Wanda</th></tr></thead><tbody>");
            for (i, e) in r.entries.iter().enumerate() {
                let _ = write!(
                    h,
                    "<tr class=\"{}\" data-submission=\"{}\"><td class=\"n\">{}</td><td><a href=\"/submissions/{}\">{}</a></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    if e.baseline { "base" } else { "entry" },
                    e.submission_id,
                    i + 1,
                    e.submission_id,
                    esc(&e.name),
                    esc(&e.submitter),
                    ppl(e.ppl),
                    e.ratio_to_wanda.map_or("–".into(), |x| format!("{x:.4}"))
                );
            }
            h.push_str("</tbody></table>");
        }
        if r.pending > 0 {
            let _ = write!(
                h,
                "<p><small>{} job(s) waiting or running.</small></p>",
                r.pending
            );
        }
        if !r.failed.is_empty() {
            h.push_str("<details><summary>Failed</summary><table><tbody>");
            for (sid, name, who, v) in &r.failed {
                let _ = write!(
                    h,
                    "<tr class=\"fail\"><td><a href=\"/submissions/{sid}\">{}</a></td><td>{}</td><td>{}</td></tr>",
                    esc(name),
                    esc(who),
                    esc(&v.kind)
                );
            }
            h.push_str("</tbody></table></details>");
        }
    }
    h.push_str("<h2>Latest submissions</h2><table><thead><tr><th>#</th><th>metric</th><th>submitter</th><th>jobs</th></tr></thead><tbody>");
    for s in recent {
        let _ = write!(
            h,
            "<tr><td class=\"n\">{}</td><td><a href=\"/submissions/{}\">{}</a></td><td>{}</td><td>{}</td></tr>",
            s.id,
            s.id,
            esc(&s.name),
            esc(&s.submitter),
            esc(&job_summary(&s.jobs))
        );
    }
    h.push_str("</tbody></table></body></html>");
    h
}

fn job_summary(jobs: &[JobView]) -> String {
    jobs.iter()
        .map(|j| format!("{} {}", j.setting, j.state))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One submission: its results per setting, verdicts, and its code when published.
pub fn detail(s: &SubmissionView) -> String {
    let mut h = head(&format!("{} — autoprune", s.name));
    let _ = write!(
        h,
        "<p><a href=\"/\">← leaderboard</a></p><h1>{}</h1><p>#{} by {}{} · {} · sha256 <code>{}</code></p>",
        esc(&s.name),
        s.id,
        esc(&s.submitter),
        if s.baseline { " (baseline)" } else { "" },
        match s.kind {
            super::store::PluginKind::Rs => "Rust source",
            super::store::PluginKind::Wasm => "component",
            super::store::PluginKind::Builtin => "built-in method",
            super::store::PluginKind::Task => "search task",
        },
        esc(&s.sha256)
    );
    h.push_str("<table><thead><tr><th>setting</th><th>state</th><th>perplexity</th><th>sparsity</th><th>seconds</th><th>verdict</th></tr></thead><tbody>");
    for j in &s.jobs {
        let verdict = j
            .verdict
            .as_ref()
            .map_or(String::new(), |v| format!("{}: {}", v.kind, v.detail));
        let reused = j
            .reused_from
            .map_or(String::new(), |r| format!(" (reused job {r})"));
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"fail\">{}</td></tr>",
            esc(&j.setting),
            esc(&j.state),
            reused,
            j.ppl.map_or("–".into(), ppl),
            j.sparsity.map_or("–".into(), |x| format!("{x:.4}")),
            j.seconds.map_or("–".into(), |x| format!("{x:.1}")),
            esc(&verdict)
        );
    }
    h.push_str("</tbody></table>");
    match &s.code {
        Some(code) => {
            let _ = write!(h, "<h2>Code</h2><pre><code>{}</code></pre>", esc(code));
        }
        None => h.push_str("<p><small>The code is not published.</small></p>"),
    }
    h.push_str("</body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::super::store::{Entry, JobVerdict, PluginKind, Ranking};
    use super::*;

    #[test]
    fn every_submitted_string_is_escaped() {
        let evil = "<script>alert(1)</script>\"'&";
        let b = Leaderboard {
            settings: vec![Ranking {
                setting: "2:4".into(),
                entries: vec![Entry {
                    submission_id: 2,
                    name: evil.into(),
                    submitter: evil.into(),
                    baseline: false,
                    ppl: 50.0,
                    ratio_to_wanda: Some(0.9),
                }],
                failed: vec![(
                    3,
                    evil.into(),
                    evil.into(),
                    JobVerdict {
                        kind: evil.into(),
                        detail: evil.into(),
                    },
                )],
                pending: 1,
            }],
        };
        let page = board(&b, &[], &BoardConfig::default());
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"));
        let s = SubmissionView {
            id: 3,
            name: evil.into(),
            submitter: evil.into(),
            kind: PluginKind::Rs,
            sha256: "ab".into(),
            publish: true,
            baseline: false,
            created: 0.0,
            jobs: vec![JobView {
                id: 1,
                setting: "2:4".into(),
                state: "failed".into(),
                attempts: 1,
                ppl: None,
                sparsity: None,
                seconds: None,
                verdict: Some(JobVerdict {
                    kind: "compile".into(),
                    detail: evil.into(),
                }),
                reused_from: None,
            }],
            code: Some(format!("// {evil}")),
        };
        let page = detail(&s);
        assert!(!page.contains("<script>"));
        assert_eq!(page.matches("&lt;script&gt;").count(), 5);
    }
}
