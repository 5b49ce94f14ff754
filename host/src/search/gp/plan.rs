//! Compiling an expression to an evaluation plan (passes of nodes), its fuel estimate, and the
//! host's native scoring.

use super::expression::{to_infix, BinOp, Expr, UnOp};
use super::ops;
use crate::layer::{ChannelStats, LayerData};

/// One node of a [`Plan`]: a terminal, a constant, or an operator over earlier nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Op {
    W,
    Wsigned,
    X,
    N,
    A,
    Var,
    G,
    H,
    O,
    Const(f32),
    Un(UnOp, usize),
    Bin(BinOp, usize, usize),
}

/// One read of the layer before scoring.
#[derive(Debug, Clone)]
pub(super) struct Pass {
    /// Whole-layer nodes whose statistics this pass gathers (from their argument).
    pub(super) targets: Vec<usize>,
    /// Nodes evaluated for every row, ascending (children before parents).
    pub(super) eval: Vec<usize>,
}

/// The tree as a post-order node list (children before parents; the root is last).
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) ops: Vec<Op>,
    /// Prefix form of every node's subtree (comments in the rendered code).
    pub(super) labels: Vec<String>,
    pub(super) passes: Vec<Pass>,
}

impl Plan {
    pub(super) fn new(e: &Expr) -> Plan {
        fn push(e: &Expr, ops: &mut Vec<Op>, labels: &mut Vec<String>) -> usize {
            let op = match e {
                Expr::W => Op::W,
                Expr::Wsigned => Op::Wsigned,
                Expr::X => Op::X,
                Expr::N => Op::N,
                Expr::A => Op::A,
                Expr::Var => Op::Var,
                Expr::G => Op::G,
                Expr::H => Op::H,
                Expr::O => Op::O,
                Expr::Const(c) => Op::Const(c.0),
                Expr::Unary(op, a) => Op::Un(*op, push(a, ops, labels)),
                Expr::Binary(op, a, b) => {
                    let a = push(a, ops, labels);
                    Op::Bin(*op, a, push(b, ops, labels))
                }
            };
            ops.push(op);
            labels.push(to_infix(e));
            ops.len() - 1
        }
        let (mut ops, mut labels) = (Vec::new(), Vec::new());
        push(e, &mut ops, &mut labels);
        let mut level = vec![0usize; ops.len()];
        for k in 0..ops.len() {
            level[k] = match ops[k] {
                Op::Un(op, a) => level[a] + op.whole_layer() as usize,
                Op::Bin(_, a, b) => level[a].max(level[b]),
                _ => 0,
            };
        }
        let max_level = level.last().copied().unwrap_or(0);
        let passes = (1..=max_level)
            .map(|p| {
                let targets: Vec<usize> = (0..ops.len())
                    .filter(|&k| {
                        matches!(ops[k], Op::Un(op, _) if op.whole_layer()) && level[k] == p
                    })
                    .collect();
                let mut needed = vec![false; ops.len()];
                let mut stack: Vec<usize> = targets
                    .iter()
                    .filter_map(|&k| match ops[k] {
                        Op::Un(_, a) => Some(a),
                        _ => None,
                    })
                    .collect();
                while let Some(k) = stack.pop() {
                    if !needed[k] {
                        needed[k] = true;
                        match ops[k] {
                            Op::Un(_, a) => stack.push(a),
                            Op::Bin(_, a, b) => stack.extend([a, b]),
                            _ => {}
                        }
                    }
                }
                Pass {
                    targets,
                    eval: (0..ops.len()).filter(|&k| needed[k]).collect(),
                }
            })
            .collect();
        Plan {
            ops,
            labels,
            passes,
        }
    }

    pub(super) fn root(&self) -> usize {
        self.ops.len() - 1
    }

    /// Upper estimate of the rendered plugin's wasm fuel per weight (see [`fuel_estimate`]).
    fn fuel_estimate(&self) -> f64 {
        let node = |k: usize| -> f64 {
            match self.ops[k] {
                Op::Const(_) => 3.0,
                Op::W | Op::Wsigned | Op::X | Op::N | Op::A | Op::Var | Op::G | Op::H | Op::O => {
                    8.0
                }
                Op::Bin(..) => 12.0,
                Op::Un(op, _) => match op {
                    UnOp::Exp => 130.0,
                    UnOp::Log => 80.0,
                    UnOp::Tanh => 140.0,
                    UnOp::Mms | UnOp::Zsn => 50.0,
                    UnOp::RowNorm | UnOp::ColNorm => 20.0,
                    UnOp::Sqr | UnOp::Neg | UnOp::Abs | UnOp::Sqrt => 12.0,
                },
            }
        };
        let accumulate = |k: usize| -> f64 {
            match self.ops[k] {
                Op::Un(UnOp::Mms, _) => 15.0,
                Op::Un(UnOp::Zsn, _) => 25.0,
                _ => 8.0,
            }
        };
        let passes: f64 = self
            .passes
            .iter()
            .map(|p| {
                p.eval.iter().map(|&k| node(k)).sum::<f64>()
                    + p.targets.iter().map(|&k| accumulate(k)).sum::<f64>()
            })
            .sum();
        // The final pass evaluates every node, then copies and writes the scores back.
        passes + (0..self.ops.len()).map(node).sum::<f64>() + 6.0
    }
}

/// An upper estimate of the wasm fuel per weight that the plugin of
/// [`render`](fn@super::render) spends on `e`
/// (calibrated on the sandbox: `|W|` ≈ 14, `exp(|W|)` ≈ 137, `tanh` ≈ 141, `log` ≈ 82, `mms` ≈ 60
/// measured against 14, 144, 154, 94, 87 estimated). Every pass re-evaluates the nodes below
/// its whole-layer operators, so nesting multiplies the cost. The sandbox grants
/// `Policy::fuel_per_weight` (4096 by default); time scales with fuel (roughly 1 ns per unit).
pub fn fuel_estimate(e: &Expr) -> f64 {
    Plan::new(e).fuel_estimate()
}

/// A whole-layer node's finished statistic.
#[derive(Debug, Clone)]
enum LayerStat {
    None,
    MinMax((f32, f32)),
    Moments((f64, f64)),
    Cols(Vec<f32>),
}

/// A whole-layer node's running statistic.
enum Acc {
    MinMax(ops::MinMax),
    Moments(ops::Moments),
    Cols(Vec<f32>),
}

/// Per-channel terminal values, as the rendered code computes them.
struct Channels {
    x: Vec<f32>,
    n: Vec<f32>,
    a: Vec<f32>,
    v: Vec<f32>,
    h: Vec<f32>,
}

/// One row's inputs: its weights, its gradient and its output norm `O`.
struct RowIn<'a> {
    w: &'a [f32],
    g: &'a [f32],
    o: f32,
}

/// Evaluate `list` (ascending) for one row into `t`; mirrors the rendered code exactly.
fn eval_row(
    plan: &Plan,
    list: &[usize],
    row: &RowIn<'_>,
    ch: &Channels,
    stats: &[LayerStat],
    t: &mut [Vec<f32>],
) {
    let (w, g) = (row.w, row.g);
    fn map1(o: &mut [f32], a: &[f32], f: impl Fn(f32) -> f32) {
        for (o, a) in o.iter_mut().zip(a) {
            *o = f(*a);
        }
    }
    for &k in list {
        let (d, r) = t.split_at_mut(k);
        let o = &mut r[0];
        match plan.ops[k] {
            Op::W => map1(o, w, ops::abs),
            Op::Wsigned => map1(o, w, ops::fin),
            Op::X => map1(o, &ch.x, |v| v),
            Op::N => map1(o, &ch.n, |v| v),
            Op::A => map1(o, &ch.a, |v| v),
            Op::Var => map1(o, &ch.v, |v| v),
            Op::G => map1(o, g, ops::fin),
            Op::H => map1(o, &ch.h, |v| v),
            Op::O => o.fill(row.o),
            Op::Const(c) => o.fill(ops::fin(c)),
            Op::Un(op, a) => {
                let a = &d[a];
                match (op, &stats[k]) {
                    (UnOp::Mms, LayerStat::MinMax(p)) => map1(o, a, |v| ops::mms(v, *p)),
                    (UnOp::Zsn, LayerStat::Moments(p)) => map1(o, a, |v| ops::zsn(v, *p)),
                    (UnOp::ColNorm, LayerStat::Cols(c)) => {
                        for ((o, a), c) in o.iter_mut().zip(a).zip(c) {
                            *o = ops::scale(*a, *c);
                        }
                    }
                    (UnOp::RowNorm, _) => {
                        let s = ops::row_inverse(a);
                        map1(o, a, |v| ops::scale(v, s));
                    }
                    // `Plan` evaluates a whole-layer node only after the pass that finishes
                    // its statistic, so `None` cannot happen; stay finite regardless.
                    (op, _) => map1(o, a, op.pointwise().unwrap_or(ops::fin)),
                }
            }
            Op::Bin(op, a, b) => {
                let f = op.function();
                for ((o, a), b) in o.iter_mut().zip(&d[a]).zip(&d[b]) {
                    *o = f(*a, *b);
                }
            }
        }
    }
}

/// Compute `expr`'s scores in the host with exactly the arithmetic of the rendered plugin
/// ([`render`](fn@super::render)), row-major. Without a gradient, `G` reads as 0; `H` and `O`
/// read as 0 (use [`eval_layer`] to give them).
///
/// # Panics
///
/// When `weights` (or a given `gradient`) does not hold `rows * cols` values or `stats` does
/// not have `cols` channels.
pub fn eval_native(
    expr: &Expr,
    rows: usize,
    cols: usize,
    weights: &[f32],
    stats: &ChannelStats,
    gradient: Option<&[f32]>,
) -> Vec<f32> {
    eval(expr, rows, cols, weights, stats, gradient, None)
}

/// [`eval_native`] on everything `layer` holds: its gradient (`G`), Hessian inverse diagonal
/// (`H`) and output statistics (`O`), each reading as 0 when absent.
///
/// # Panics
///
/// As [`eval_native`], and when the optional inputs do not have `cols` (`H`) or `rows` (`O`)
/// values.
pub fn eval_layer(expr: &Expr, layer: &LayerData<'_>) -> Vec<f32> {
    let extra = Extra {
        hessian_inverse_diagonal: layer.hessian_inverse_diagonal,
        output_l2: layer.output_stats.map(|o| o.l2_norm.as_slice()),
    };
    eval(
        expr,
        layer.rows,
        layer.cols,
        layer.weights,
        layer.stats,
        layer.gradient,
        Some(extra),
    )
}

/// The WIT 0.2.0 inputs of [`eval_layer`].
#[derive(Clone, Copy)]
struct Extra<'a> {
    hessian_inverse_diagonal: Option<&'a [f32]>,
    output_l2: Option<&'a [f32]>,
}

fn eval(
    expr: &Expr,
    rows: usize,
    cols: usize,
    weights: &[f32],
    stats: &ChannelStats,
    gradient: Option<&[f32]>,
    extra: Option<Extra<'_>>,
) -> Vec<f32> {
    let hinv = extra.and_then(|e| e.hessian_inverse_diagonal);
    let out_l2 = extra.and_then(|e| e.output_l2);
    if let Some(h) = hinv {
        assert_eq!(
            h.len(),
            cols,
            "the Hessian inverse diagonal must have cols values"
        );
    }
    if let Some(o) = out_l2 {
        assert_eq!(o.len(), rows, "the output norms must have rows values");
    }
    assert_eq!(
        weights.len(),
        rows * cols,
        "weights must hold rows * cols values"
    );
    assert_eq!(stats.cols(), cols, "stats must have cols channels");
    if let Some(g) = gradient {
        assert_eq!(
            g.len(),
            rows * cols,
            "gradient must hold rows * cols values"
        );
    }
    if rows == 0 || cols == 0 {
        return Vec::new();
    }
    let plan = Plan::new(expr);
    let norm = stats.l2_norm();
    let tk = stats.tokens.max(1) as f32;
    let ch = Channels {
        x: norm.iter().map(|&n| ops::fin(n * n / tk)).collect(),
        n: norm.iter().map(|&n| ops::fin(n)).collect(),
        a: stats.max_abs.iter().map(|&v| ops::fin(v)).collect(),
        v: stats.variance().iter().map(|&v| ops::fin(v)).collect(),
        h: hinv.map_or_else(
            || vec![0.0; cols],
            |h| h.iter().map(|&v| ops::fin(v)).collect(),
        ),
    };
    let zeros = vec![0.0f32; cols];
    let row_in = |i: usize| RowIn {
        w: &weights[i * cols..(i + 1) * cols],
        g: gradient.map_or(&zeros[..], |g| &g[i * cols..(i + 1) * cols]),
        o: out_l2.map_or(0.0, |o| ops::fin(o[i])),
    };
    let mut t = vec![vec![0.0f32; cols]; plan.ops.len()];
    let mut stat = vec![LayerStat::None; plan.ops.len()];
    for pass in &plan.passes {
        let mut accs: Vec<(usize, usize, Acc)> = pass
            .targets
            .iter()
            .filter_map(|&k| match plan.ops[k] {
                Op::Un(UnOp::Mms, a) => Some((k, a, Acc::MinMax(ops::MinMax::new()))),
                Op::Un(UnOp::Zsn, a) => Some((k, a, Acc::Moments(ops::Moments::new()))),
                Op::Un(UnOp::ColNorm, a) => Some((k, a, Acc::Cols(vec![0.0; cols]))),
                _ => None,
            })
            .collect();
        for i in 0..rows {
            eval_row(&plan, &pass.eval, &row_in(i), &ch, &stat, &mut t);
            for (_, a, acc) in &mut accs {
                match acc {
                    Acc::MinMax(m) => m.add(&t[*a]),
                    Acc::Moments(m) => m.add(&t[*a]),
                    Acc::Cols(s) => ops::col_add(s, &t[*a]),
                }
            }
        }
        for (k, _, acc) in accs {
            stat[k] = match acc {
                Acc::MinMax(m) => LayerStat::MinMax(m.finish()),
                Acc::Moments(m) => LayerStat::Moments(m.finish()),
                Acc::Cols(s) => LayerStat::Cols(ops::col_inverses(&s)),
            };
        }
    }
    let all: Vec<usize> = (0..plan.ops.len()).collect();
    let root = plan.root();
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        eval_row(&plan, &all, &row_in(i), &ch, &stat, &mut t);
        out.extend_from_slice(&t[root]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::RowStats;
    use crate::search::gp::fixtures::{all_ops_config, layer, stats};
    use crate::search::gp::*;

    #[test]
    fn fuel_estimate_grows_with_passes_and_bounds_the_search() {
        let w = fuel_estimate(&Expr::W);
        let wanda = fuel_estimate(&Expr::wanda());
        let mms = fuel_estimate(&Expr::un(UnOp::Mms, Expr::wanda()));
        let nested = fuel_estimate(&Expr::un(UnOp::Zsn, Expr::un(UnOp::Mms, Expr::wanda())));
        assert!(
            w < wanda && wanda < mms && mms < nested,
            "{w} {wanda} {mms} {nested}"
        );
        // The sandbox's default grant is 4096 per weight; the search keeps to half of it.
        let config = all_ops_config();
        let mut gp = Gp::new(config.clone(), 5);
        for e in gp.ramped_half_and_half(100) {
            assert!(fuel_estimate(&e) <= config.max_fuel_per_weight, "{e}");
        }
    }

    #[test]
    fn seeds_compute_their_published_formulas() {
        let (rows, cols) = (5, 7);
        let (w, g) = layer(rows, cols, 9);
        let st = stats(cols, 64);
        let n = st.l2_norm();
        let wanda = eval_native(&Expr::wanda(), rows, cols, &w, &st, None);
        for (i, s) in wanda.iter().enumerate() {
            assert_eq!(*s, w[i].abs() * n[i % cols]);
        }
        let mag = eval_native(&Expr::magnitude(), rows, cols, &w, &st, None);
        assert!(mag.iter().zip(&w).all(|(s, w)| *s == w.abs()));
        let (lo, hi) = g
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let pz = eval_native(&Expr::pruner_zero_best(), rows, cols, &w, &st, Some(&g));
        for (i, s) in pz.iter().enumerate() {
            assert_eq!(*s, w[i] * w[i] * ((g[i] - lo) * (1.0 / (hi - lo))));
        }
        let ria = eval_native(&Expr::ria(), rows, cols, &w, &st, None);
        for i in 0..rows {
            let rs: f32 = w[i * cols..(i + 1) * cols].iter().map(|v| v.abs()).sum();
            for j in 0..cols {
                let cs: f32 = (0..rows).map(|r| w[r * cols + j].abs()).sum();
                let a = w[i * cols + j].abs();
                let want = (a * (1.0 / cs) + a * (1.0 / rs)) * n[j].sqrt();
                assert_eq!(ria[i * cols + j], want);
            }
        }
    }

    #[test]
    fn every_tree_is_finite_on_degenerate_layers() {
        let mut gp = Gp::new(all_ops_config(), 21);
        let mut trees = gp.ramped_half_and_half(150);
        trees.extend([
            Expr::bin(BinOp::Div, Expr::W, Expr::constant(0.0)),
            Expr::un(UnOp::Exp, Expr::un(UnOp::Exp, Expr::un(UnOp::Exp, Expr::N))),
            Expr::un(
                UnOp::Zsn,
                Expr::un(UnOp::Mms, Expr::un(UnOp::ColNorm, Expr::G)),
            ),
            Expr::bin(
                BinOp::Sub,
                Expr::un(UnOp::Sqr, Expr::un(UnOp::Sqr, Expr::Wsigned)),
                Expr::un(UnOp::Sqr, Expr::un(UnOp::Sqr, Expr::X)),
            ),
        ]);
        let (rows, cols) = (4, 6);
        let zero_stats = ChannelStats::new(cols);
        let huge: Vec<f32> = (0..rows * cols)
            .map(|i| if i % 2 == 0 { 3e38 } else { -1e-45 })
            .collect();
        let cases: Vec<(Vec<f32>, ChannelStats, Option<Vec<f32>>)> = vec![
            (
                vec![0.0; rows * cols],
                zero_stats.clone(),
                Some(vec![0.0; rows * cols]),
            ),
            (
                vec![0.25; rows * cols],
                stats(cols, 1),
                Some(vec![1.0; rows * cols]),
            ),
            (huge.clone(), stats(cols, 3), Some(huge)),
            (layer(rows, cols, 1).0, zero_stats, None),
        ];
        for e in &trees {
            for (w, st, g) in &cases {
                let s = eval_native(e, rows, cols, w, st, g.as_deref());
                assert_eq!(s.len(), rows * cols);
                assert!(s.iter().all(|v| v.is_finite()), "{e}: {s:?}");
            }
            assert!(eval_native(e, 0, cols, &[], &ChannelStats::new(cols), None).is_empty());
        }
    }

    #[test]
    fn shared_math_is_accurate() {
        let mut x = -40.0f32;
        while x < 31.0 {
            let want = (x.min(30.0) as f64).exp();
            let got = ops::exp(x) as f64;
            assert!(
                (got - want).abs() <= 2e-7 * want,
                "exp({x}) = {got}, want {want}"
            );
            let want = (x.abs() as f64 + 1e-3).ln();
            let got = ops::log(x) as f64;
            assert!(
                (got - want).abs() <= 2e-7 * want.abs().max(1e-3),
                "log({x})"
            );
            let want = (x as f64).tanh();
            let got = ops::tanh(x) as f64;
            assert!(
                (got - want).abs() <= 2e-7 * want.abs().max(1e-6),
                "tanh({x})"
            );
            x += 0.0137;
        }
        for x in [1e-30f32, 1e-7, 3e-6, 1e30, -1e30] {
            assert!((ops::log(x) as f64 - (x.abs() as f64 + 1e-3).ln()).abs() < 1e-5);
            assert!((ops::tanh(x) as f64 - (x as f64).tanh()).abs() < 1e-7);
        }
        assert_eq!(ops::exp(-1e30), 0.0);
        assert_eq!(ops::exp(0.0), 1.0);
    }

    #[test]
    fn hessian_terminals_are_gated_declared_and_evaluated() {
        let obs = Expr::bin(BinOp::Div, Expr::un(UnOp::Sqr, Expr::Wsigned), Expr::H);
        let out = Expr::bin(BinOp::Mul, Expr::W, Expr::O);
        assert_eq!(to_infix(&obs), "W^2 / H");
        assert_eq!(to_infix(&out), "|W| * O");
        // Rendered candidates declare exactly what they read; older trees render as before.
        let r = render(&obs, "obs");
        assert!(
            r.contains(".needs_hessian_inverse_diagonal()") && !r.contains("needs_output_stats")
        );
        assert!(r.contains("H: [(H+lambda I)^-1]_jj"));
        let r = render(&out, "out");
        assert!(r.contains(".needs_output_stats()") && r.contains("row_o"));
        assert!(!render(&Expr::wanda(), "w").contains("H: ["));
        // The switches.
        let off = GpConfig {
            allow_hessian: false,
            allow_output_stats: false,
            ..GpConfig::default()
        };
        assert!(GpConfig::default().fits(&obs) && GpConfig::default().fits(&out));
        assert!(!off.fits(&obs) && !off.fits(&out));
        let mut gp = Gp::new(off.clone(), 4);
        assert!(gp
            .ramped_half_and_half(200)
            .iter()
            .all(|e| !e.uses_hessian() && !e.uses_output_stats()));
        let mut gp = Gp::new(GpConfig::default(), 4);
        let trees = gp.ramped_half_and_half(200);
        assert!(trees.iter().any(Expr::uses_hessian) && trees.iter().any(Expr::uses_output_stats));
        // A configuration stored before the switches existed keeps them off.
        let mut old = serde_json::to_value(GpConfig::default()).unwrap();
        let map = old.as_object_mut().unwrap();
        map.remove("allow_hessian");
        map.remove("allow_output_stats");
        let old: GpConfig = serde_json::from_value(old).unwrap();
        assert!(!old.allow_hessian && !old.allow_output_stats);
        // Values: H per column, O per row; both read as 0 without them.
        let (rows, cols) = (3, 4);
        let (w, _) = layer(rows, cols, 2);
        let st = stats(cols, 10);
        let h = [0.5f32, 2.0, 4.0, 8.0];
        let o = RowStats {
            tokens: 10,
            l2_norm: vec![1.0, 2.0, 3.0],
            mean: vec![0.0; 3],
            variance: vec![0.0; 3],
        };
        let data = LayerData {
            id: crate::layer::LayerId {
                block: 0,
                num_blocks: 1,
                kind: crate::layer::LayerKind::Q,
            },
            rows,
            cols,
            weights: &w,
            stats: &st,
            gradient: None,
            hessian_inverse_diagonal: Some(&h),
            output_stats: Some(&o),
            sparsity: 0.5,
        };
        let got = eval_layer(&Expr::bin(BinOp::Add, Expr::H, Expr::O), &data);
        for i in 0..rows {
            for j in 0..cols {
                assert_eq!(got[i * cols + j], h[j] + o.l2_norm[i]);
            }
        }
        let got = eval_layer(&obs, &data);
        for (k, s) in got.iter().enumerate() {
            assert_eq!(*s, ops::div(ops::sqr(w[k]), h[k % cols]));
        }
        let zero = eval_native(
            &Expr::bin(BinOp::Add, Expr::H, Expr::O),
            rows,
            cols,
            &w,
            &st,
            None,
        );
        assert!(zero.iter().all(|&v| v == 0.0));
    }
}
