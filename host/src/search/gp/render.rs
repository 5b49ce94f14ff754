//! Rendering an expression as a complete candidate metric source for the sandboxed builder.

use super::expression::{to_infix, Expr, UnOp};
use super::plan::{Op, Plan};

/// The shared arithmetic as source text, pasted into every rendered candidate.
const OPS_SOURCE: &str = include_str!("ops.rs");

/// The statements that fill `t[k]` for the current row (mirror of `eval_row`), each line
/// prefixed with `indent`, after a comment naming the node's subtree.
fn node_code(plan: &Plan, k: usize, indent: &str) -> String {
    let map_chan = |v: &str| format!("for (o, v) in t[{k}].iter_mut().zip(&{v}) {{ *o = *v; }}");
    let lines: Vec<String> = match plan.ops[k] {
        Op::W => vec![format!(
            "for (o, v) in t[{k}].iter_mut().zip(w) {{ *o = abs(*v); }}"
        )],
        Op::Wsigned => vec![format!(
            "for (o, v) in t[{k}].iter_mut().zip(w) {{ *o = fin(*v); }}"
        )],
        Op::X => vec![map_chan("c_x")],
        Op::N => vec![map_chan("c_n")],
        Op::A => vec![map_chan("c_a")],
        Op::Var => vec![map_chan("c_v")],
        Op::G => vec![format!(
            "for (o, v) in t[{k}].iter_mut().zip(g) {{ *o = fin(*v); }}"
        )],
        Op::H => vec![map_chan("c_h")],
        Op::O => vec![format!("t[{k}].fill(row_o);")],
        Op::Const(c) => vec![format!(
            "t[{k}].fill(fin(f32::from_bits({:#010x})));",
            c.to_bits()
        )],
        Op::Un(op, a) => {
            let mut body = vec![
                "{".to_string(),
                format!("    let (d, r) = t.split_at_mut({k});"),
                format!("    let (o, a) = (&mut r[0], &d[{a}]);"),
            ];
            match op {
                UnOp::Mms => body.push(format!(
                    "    for (o, a) in o.iter_mut().zip(a) {{ *o = mms(*a, p{k}); }}"
                )),
                UnOp::Zsn => body.push(format!(
                    "    for (o, a) in o.iter_mut().zip(a) {{ *o = zsn(*a, p{k}); }}"
                )),
                UnOp::ColNorm => body.push(format!(
                    "    for ((o, a), c) in o.iter_mut().zip(a).zip(&p{k}) {{ *o = scale(*a, *c); }}"
                )),
                UnOp::RowNorm => {
                    body.push("    let s = row_inverse(a);".to_string());
                    body.push(
                        "    for (o, a) in o.iter_mut().zip(a) { *o = scale(*a, s); }".to_string(),
                    );
                }
                op => body.push(format!(
                    "    for (o, a) in o.iter_mut().zip(a) {{ *o = {}(*a); }}",
                    op.name()
                )),
            }
            body.push("}".to_string());
            body
        }
        Op::Bin(op, a, b) => vec![
            "{".to_string(),
            format!("    let (d, r) = t.split_at_mut({k});"),
            format!("    let (o, a, b) = (&mut r[0], &d[{a}], &d[{b}]);"),
            format!(
                "    for ((o, a), b) in o.iter_mut().zip(a).zip(b) {{ *o = {}(*a, *b); }}",
                op.name()
            ),
            "}".to_string(),
        ],
    };
    let mut out = format!("{indent}// t[{k}] = {}\n", plan.labels[k]);
    for line in lines {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Render `expr` as a complete candidate source named `name` (the metric's `Info` name; the
/// host accepts 1..=128 bytes): the shared arithmetic, per-channel terminals, one
/// `for_each_tile` pass per nesting level of whole-layer operators, then `score_rows`. The
/// `Info` description holds the infix formula; `needs_gradient()` is declared exactly when `G`
/// occurs, `needs_hessian_inverse_diagonal()` when `H` does and `needs_output_stats()` when `O`
/// does. The plugin's scores equal [`eval_layer`]'s bit for bit.
pub fn render(expr: &Expr, name: &str) -> String {
    use std::fmt::Write as _;
    let plan = Plan::new(expr);
    let grad = expr.uses_gradient();
    let mut needs = String::new();
    for (used, call) in [
        (grad, ".needs_gradient()"),
        (expr.uses_hessian(), ".needs_hessian_inverse_diagonal()"),
        (expr.uses_output_stats(), ".needs_output_stats()"),
    ] {
        if used {
            needs.push_str(call);
        }
    }
    let infix = to_infix(expr);
    let mut short = infix.clone();
    if short.len() > 3000 {
        let mut cut = 3000;
        while !short.is_char_boundary(cut) {
            cut -= 1;
        }
        short.truncate(cut);
        short.push_str(" ...");
    }
    // `H` and `O` are explained only where they occur, so a tree without them renders to the
    // same source (and source hash) as before they existed.
    let mut legend = String::new();
    if expr.uses_hessian() {
        legend.push_str(", H: [(H+lambda I)^-1]_jj");
    }
    if expr.uses_output_stats() {
        legend.push_str(", O: ||y_i||_2 of the dense output row");
    }
    let description = format!(
        "GP tree: {short} (|W|: weight magnitude, W: signed weight, X: mean x_j^2, \
         N: ||X_j||_2, A: max|x_j|, Var: var(x_j), G: gradient statistic{legend}; a/b = a/(|b|+1e-8), \
         log = ln(|a|+1e-3), sqrt = sqrt(|a|), exp clamped at 30; mms, zsn, colnorm over the \
         layer, rownorm over the row)"
    );
    let uses = |op: Op| plan.ops.contains(&op);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "//! Symbolic GP metric (generated by autoprune::search::gp)."
    );
    let _ = writeln!(s, "//!");
    let _ = writeln!(s, "//! Infix: {}", infix.replace('\n', " "));
    let _ = writeln!(s, "//! Prefix: {expr}");
    let _ = writeln!(
        s,
        "//! Whole-layer passes before scoring: {}; gradient: {}.",
        plan.passes.len(),
        if grad { "yes" } else { "no" }
    );
    s.push_str("#![allow(dead_code, unused_variables, clippy::all)]\n\n");
    s.push_str("use autoprune_sdk::prelude::*;\n\n");
    s.push_str(OPS_SOURCE);
    s.push_str("\n/// The generated metric.\nstruct GpMetric;\n\nimpl Metric for GpMetric {\n");
    let _ = writeln!(
        s,
        "    fn info() -> Info {{\n        Info::new({name:?}, \"1.0.0\", {description:?}){needs}\n    }}\n",
    );
    s.push_str("    fn score(layer: &Layer) -> Result<()> {\n");
    s.push_str("        let cols = layer.cols();\n");
    let chan = [Op::X, Op::N, Op::A, Op::Var];
    if chan.iter().any(|&op| uses(op)) {
        s.push_str("        let st = layer.stats();\n");
    }
    if uses(Op::X) {
        s.push_str("        let tk = st.tokens.max(1) as f32;\n");
        s.push_str(
            "        let c_x: Vec<f32> = st.l2_norm.iter().map(|&n| fin(n * n / tk)).collect();\n",
        );
    }
    if uses(Op::N) {
        s.push_str("        let c_n: Vec<f32> = st.l2_norm.iter().map(|&n| fin(n)).collect();\n");
    }
    if uses(Op::A) {
        s.push_str("        let c_a: Vec<f32> = st.max_abs.iter().map(|&v| fin(v)).collect();\n");
    }
    if uses(Op::Var) {
        s.push_str("        let c_v: Vec<f32> = st.variance.iter().map(|&v| fin(v)).collect();\n");
    }
    if uses(Op::H) {
        s.push_str(
            "        let c_h: Vec<f32> = layer.hessian_inverse_diagonal()?.iter().map(|&v| fin(v)).collect();\n",
        );
    }
    if uses(Op::O) {
        s.push_str(
            "        let r_o: Vec<f32> = layer.output_stats()?.l2_norm.iter().map(|&v| fin(v)).collect();\n",
        );
    }
    let _ = writeln!(
        s,
        "        let mut t: Vec<Vec<f32>> = vec![vec![0.0f32; cols]; {}];",
        plan.ops.len()
    );
    let row_prelude = |s: &mut String, indent: &str| {
        let _ = writeln!(s, "{indent}let w = row.weights;");
        if grad {
            let _ = writeln!(s, "{indent}let g = row.gradient();");
        }
        if uses(Op::O) {
            let _ = writeln!(s, "{indent}let row_o = r_o[row.index as usize];");
        }
    };
    for (p, pass) in plan.passes.iter().enumerate() {
        let _ = writeln!(
            s,
            "        // Pass {}: whole-layer statistics of nodes {:?}.",
            p + 1,
            pass.targets
        );
        for &k in &pass.targets {
            let init = match plan.ops[k] {
                Op::Un(UnOp::Mms, _) => "MinMax::new()",
                Op::Un(UnOp::Zsn, _) => "Moments::new()",
                _ => "vec![0.0f32; cols]",
            };
            let _ = writeln!(s, "        let mut s{k} = {init};");
        }
        s.push_str("        layer.for_each_tile(|tile| {\n            for row in tile.rows() {\n");
        row_prelude(&mut s, "                ");
        for &k in &pass.eval {
            s.push_str(&node_code(&plan, k, "                "));
        }
        for &k in &pass.targets {
            let Op::Un(op, a) = plan.ops[k] else { continue };
            let _ = match op {
                UnOp::ColNorm => writeln!(s, "                col_add(&mut s{k}, &t[{a}]);"),
                _ => writeln!(s, "                s{k}.add(&t[{a}]);"),
            };
        }
        s.push_str("            }\n        })?;\n");
        for &k in &pass.targets {
            let _ = match plan.ops[k] {
                Op::Un(UnOp::ColNorm, _) => writeln!(s, "        let p{k} = col_inverses(&s{k});"),
                _ => writeln!(s, "        let p{k} = s{k}.finish();"),
            };
        }
    }
    s.push_str("        layer.score_rows(|row, out| {\n");
    row_prelude(&mut s, "            ");
    for k in 0..plan.ops.len() {
        s.push_str(&node_code(&plan, k, "            "));
    }
    let _ = writeln!(s, "            out.copy_from_slice(&t[{}]);", plan.root());
    s.push_str("        })\n    }\n}\n\nexport_metric!(GpMetric);\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::gp::{Expr, UnOp};

    #[test]
    fn render_declares_gradient_and_passes() {
        let pz = render(&Expr::pruner_zero_best(), "pz");
        assert!(pz.contains(".needs_gradient()") && pz.contains("for_each_tile"));
        assert!(pz.contains("|W|^2 * mms(G)"));
        let wanda = render(&Expr::wanda(), "w");
        assert!(!wanda.contains(".needs_gradient()") && !wanda.contains("for_each_tile"));
        let nested = Expr::un(UnOp::Zsn, Expr::un(UnOp::Mms, Expr::W));
        assert_eq!(nested.layer_passes(), 2);
        assert_eq!(render(&nested, "n").matches("for_each_tile").count(), 2);
        assert!(crate::build::lint::lint(&wanda).is_empty());
    }
}
