//! The symbolic GP proposer end to end: rendered trees build in the real sandboxed builder, pass
//! the host's checks and score exactly (bit for bit) like `eval_native`; the seeds equal the
//! hand-written candidates.

mod common;

use autoprune::check::SyntheticLayer;
use autoprune::layer::{ChannelStats, LayerKind};
use autoprune::sandbox::{Plugin, Policy};
use autoprune::search::gp::{self, BinOp, Expr, Gp, GpConfig, UnOp};

/// Small tiles (7 rows) so whole-layer statistics must span several tiles.
fn policy(cols: usize) -> Policy {
    Policy {
        tile_bytes: (cols * 4 * 7) as u64,
        ..Policy::default()
    }
}

fn build(expr: &Expr, name: &str, policy: &Policy) -> Plugin {
    let src = gp::render(expr, name);
    let built = common::builder(true)
        .build(&src)
        .unwrap_or_else(|f| panic!("{expr}: build failed: {f}\n{src}"));
    assert!(
        built.warnings.trim().is_empty(),
        "{expr}: compiler warnings:\n{}\n{src}",
        built.warnings
    );
    let plugin = Plugin::load(&built.wasm, policy, Some(&common::cache()))
        .unwrap_or_else(|f| panic!("{expr}: load failed: {f}"));
    assert_eq!(plugin.info().name, name);
    assert_eq!(plugin.info().needs_gradient, expr.uses_gradient(), "{expr}");
    assert_eq!(
        plugin.info().needs_hessian_inverse_diagonal,
        expr.uses_hessian(),
        "{expr}"
    );
    assert_eq!(
        plugin.info().needs_output_stats,
        expr.uses_output_stats(),
        "{expr}"
    );
    assert!(
        plugin.info().description.contains(&gp::to_infix(expr)),
        "{}",
        plugin.info().description
    );
    plugin
}

/// The host's scores, from everything the layer holds (gradient, `H`, `O`).
fn native(expr: &Expr, layer: &SyntheticLayer) -> Vec<f32> {
    let want = gp::eval_layer(expr, &layer.data(0.5));
    if !expr.uses_hessian() && !expr.uses_output_stats() {
        // Trees without the 0.2.0 terminals score as they always did.
        let old = gp::eval_native(
            expr,
            layer.rows,
            layer.cols,
            &layer.weights,
            &layer.stats,
            Some(&layer.gradient),
        );
        assert_bitwise(&old, &want, &expr.to_string());
    }
    want
}

fn assert_bitwise(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: [{i}] plugin {g} != native {w}"
        );
    }
}

/// Hand-picked trees that cover every operator, nested whole-layer passes included.
fn covering_trees() -> Vec<Expr> {
    use Expr::*;
    let un = Expr::un;
    let bin = Expr::bin;
    vec![
        // Two nested whole-layer levels: zsn(G) in pass 1, mms(...) in pass 2.
        bin(
            BinOp::Mul,
            W,
            un(
                UnOp::Mms,
                bin(BinOp::Add, un(UnOp::Zsn, G), un(UnOp::Log, X)),
            ),
        ),
        bin(
            BinOp::Div,
            un(UnOp::Tanh, bin(BinOp::Sub, Wsigned, Expr::constant(0.5))),
            un(UnOp::ColNorm, un(UnOp::Exp, un(UnOp::Neg, A))),
        ),
        bin(
            BinOp::Add,
            un(UnOp::RowNorm, un(UnOp::Sqr, Wsigned)),
            un(UnOp::Sqrt, un(UnOp::Abs, bin(BinOp::Mul, Var, N))),
        ),
        // Division by an all-zero column norm of a constant 0: finite.
        bin(BinOp::Div, W, un(UnOp::ColNorm, Expr::constant(0.0))),
        // The WIT 0.2.0 terminals: OBS's w²/H, the output norm per row, inside a whole-layer
        // pass too.
        bin(BinOp::Div, un(UnOp::Sqr, Wsigned), H),
        bin(
            BinOp::Mul,
            un(UnOp::ColNorm, bin(BinOp::Mul, W, O)),
            un(UnOp::Zsn, bin(BinOp::Sub, H, un(UnOp::Log, O))),
        ),
    ]
}

#[test]
fn rendered_trees_score_exactly_like_eval_native() {
    let layer = SyntheticLayer::generate(40, 72, LayerKind::Up, 3);
    let policy = policy(layer.cols);
    let config = GpConfig {
        allow_gradient: true,
        ..GpConfig::default()
    };
    let mut gp_ops = Gp::new(config, 2024);
    let random = gp_ops.ramped_half_and_half(12);
    // The random trees must exercise the whole-layer operators and the gradient.
    let text: String = random.iter().map(|e| e.to_string()).collect();
    for needle in ["mms(", "zsn(", "G"] {
        assert!(
            text.contains(needle),
            "seed 2024 trees lack {needle}: {text}"
        );
    }
    let mut trees = vec![
        Expr::magnitude(),
        Expr::wanda(),
        Expr::pruner_zero_best(),
        Expr::ria(),
    ];
    trees.extend(covering_trees());
    trees.extend(random);
    for (i, expr) in trees.iter().enumerate() {
        let plugin = build(expr, &format!("gp-{i}"), &policy);
        let scored = plugin
            .score(&layer.data(0.5))
            .unwrap_or_else(|f| panic!("{expr}: {f}"));
        assert_bitwise(&scored.scores, &native(expr, &layer), &expr.to_string());
        // Small layer: fixed costs (instantiation, statistics) weigh more than on real layers,
        // so only a loose bound here; the heavy-tree test checks the estimate on a bigger one.
        let per_weight = scored.usage.fuel as f64 / (layer.rows * layer.cols) as f64;
        assert!(
            per_weight <= gp::fuel_estimate(expr) + 200.0,
            "{expr}: {per_weight} fuel/weight, estimated {}",
            gp::fuel_estimate(expr)
        );
    }
}

#[test]
fn seeds_equal_the_hand_written_candidates() {
    let layer = SyntheticLayer::generate(33, 64, LayerKind::Q, 8);
    let policy = policy(layer.cols);
    for (file, expr) in [
        ("candidates/wanda.rs", Expr::wanda()),
        ("candidates/pruner_zero.rs", Expr::pruner_zero_best()),
        ("candidates/ria.rs", Expr::ria()),
    ] {
        let reference = common::plugin(file, &policy).expect(file);
        let want = reference.score(&layer.data(0.5)).expect(file).scores;
        assert_bitwise(&native(&expr, &layer), &want, file);
        let rendered = build(&expr, "seed", &policy);
        let got = rendered.score(&layer.data(0.5)).expect(file).scores;
        assert_bitwise(&got, &want, file);
    }
}

#[test]
fn degenerate_layers_stay_finite() {
    let (rows, cols) = (9, 16);
    let mut constant = SyntheticLayer::generate(rows, cols, LayerKind::O, 1);
    constant.weights = vec![0.25; rows * cols];
    constant.gradient = vec![0.5; rows * cols];
    constant.stats = ChannelStats::new(cols); // no tokens: every statistic is 0
    let mut zero = constant.clone();
    zero.weights = vec![0.0; rows * cols];
    zero.gradient = vec![0.0; rows * cols];
    let mut huge = constant.clone();
    huge.weights = (0..rows * cols)
        .map(|i| if i % 3 == 0 { 3e38 } else { -1e-40 })
        .collect();
    let policy = policy(cols);
    let trees = [
        Expr::pruner_zero_best(),
        Expr::ria(),
        Expr::bin(BinOp::Div, Expr::W, Expr::N),
        Expr::un(UnOp::Zsn, Expr::bin(BinOp::Mul, Expr::G, Expr::X)),
        Expr::un(
            UnOp::Exp,
            Expr::un(UnOp::Sqr, Expr::un(UnOp::Sqr, Expr::Wsigned)),
        ),
    ];
    for (i, expr) in trees.iter().enumerate() {
        let plugin = build(expr, &format!("degenerate-{i}"), &policy);
        for (what, layer) in [("constant", &constant), ("zero", &zero), ("huge", &huge)] {
            let got = plugin
                .score(&layer.data(0.5))
                .unwrap_or_else(|f| panic!("{expr} on the {what} layer: {f}"))
                .scores;
            assert_bitwise(&got, &native(expr, layer), &format!("{expr} ({what})"));
        }
    }
}

#[test]
fn fuel_estimate_bounds_the_measured_fuel() {
    // A deep tree (the default depth limit) of the costliest operators (exp/log/tanh run f64
    // polynomials) with two nested whole-layer levels (three reads of the layer).
    let layer = SyntheticLayer::generate(128, 512, LayerKind::Down, 5);
    let policy = Policy::default();
    let heavy = |op: UnOp, leaf: Expr| Expr::un(op, Expr::un(UnOp::Exp, leaf));
    let expr = Expr::un(
        UnOp::Zsn,
        Expr::bin(
            BinOp::Add,
            Expr::un(
                UnOp::Mms,
                Expr::bin(
                    BinOp::Mul,
                    heavy(UnOp::Log, Expr::G),
                    heavy(UnOp::Tanh, Expr::W),
                ),
            ),
            Expr::bin(
                BinOp::Div,
                heavy(UnOp::Tanh, Expr::X),
                heavy(UnOp::Log, Expr::Var),
            ),
        ),
    );
    assert_eq!((expr.depth(), expr.layer_passes()), (7, 2));
    let plugin = build(&expr, "heavy", &policy);
    let scored = plugin.score(&layer.data(0.5)).expect("heavy tree");
    let per_weight = scored.usage.fuel as f64 / (layer.rows * layer.cols) as f64;
    let estimate = gp::fuel_estimate(&expr);
    eprintln!(
        "heavy tree ({} nodes): {per_weight:.0} fuel/weight, estimated {estimate:.0}",
        expr.size()
    );
    assert!(per_weight <= estimate && estimate < 1.5 * per_weight);
    assert!(per_weight < policy.fuel_per_weight as f64);
    // Too heavy for the default search limits (half the grant).
    let config = GpConfig {
        allow_gradient: true,
        ..GpConfig::default()
    };
    assert!(!config.fits(&expr));
    assert_bitwise(&scored.scores, &native(&expr, &layer), "heavy");
}
