//! The sweep's markdown table: rows metric × pattern × allocation, columns sparsities.

use super::Cell;

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
                    let _ = write!(s, " {}{} |", fmt_ppl(c.ppl), fmt_acc(c));
                }
                None => s.push_str(" – |"),
            }
        }
    }
    if let Some(d) = cells.iter().find(|c| c.family == "dense") {
        let _ = write!(s, "\n\nDense perplexity: {}{}.", fmt_ppl(d.ppl), fmt_acc(d));
    }
    if cells.iter().any(|c| !c.zero_shot.is_empty()) {
        s.push_str("\nIn parentheses: zero-shot acc / acc_norm per task.");
    }
    s.push('\n');
    s
}

/// ` (acc/acc_norm, …)` of the cell's tasks, or nothing.
fn fmt_acc(c: &Cell) -> String {
    if c.zero_shot.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = c
        .zero_shot
        .iter()
        .map(|t| format!("{:.3}/{:.3}", t.acc, t.acc_norm))
        .collect();
    format!(" ({})", parts.join(", "))
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
