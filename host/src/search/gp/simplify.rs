//! Simplification of expression trees, so trees that prune identically share one canonical key.

use super::expression::{BinOp, Expr, UnOp};
use super::ops;

/// Whether `e` is provably `>= 0` everywhere.
fn nonneg(e: &Expr) -> bool {
    match e {
        Expr::W | Expr::X | Expr::N | Expr::A | Expr::Var | Expr::G | Expr::H | Expr::O => true,
        Expr::Wsigned => false,
        Expr::Const(c) => c.0 >= 0.0,
        Expr::Unary(op, a) => match op {
            UnOp::Sqr | UnOp::Abs | UnOp::Sqrt | UnOp::Exp | UnOp::Mms => true,
            UnOp::Neg | UnOp::Log | UnOp::Zsn => false,
            UnOp::Tanh | UnOp::RowNorm | UnOp::ColNorm => nonneg(a),
        },
        Expr::Binary(op, a, b) => match op {
            BinOp::Add | BinOp::Mul => nonneg(a) && nonneg(b),
            BinOp::Div => nonneg(a),
            BinOp::Sub => false,
        },
    }
}

fn const_of(e: &Expr) -> Option<f32> {
    match e {
        Expr::Const(c) => Some(c.0),
        _ => None,
    }
}

/// `x` when `e` is `x + c`, `c + x`, `x − c`, `x · c` / `c · x` with `c > 0`, or `x / c`: a
/// strictly increasing affine function of `x`, the same for every element of the layer.
fn increasing_affine_arg(e: &Expr) -> Option<&Expr> {
    match e {
        Expr::Binary(BinOp::Add, a, b) => match (const_of(a), const_of(b)) {
            (Some(_), None) => Some(b),
            (None, Some(_)) => Some(a),
            _ => None,
        },
        Expr::Binary(BinOp::Sub, a, b) if const_of(b).is_some() && const_of(a).is_none() => Some(a),
        Expr::Binary(BinOp::Mul, a, b) => match (const_of(a), const_of(b)) {
            (Some(c), None) if c > 0.0 => Some(b),
            (None, Some(c)) if c > 0.0 => Some(a),
            _ => None,
        },
        // a / (|c| + 1e-8): a positive scale.
        Expr::Binary(BinOp::Div, a, b) if const_of(b).is_some() && const_of(a).is_none() => Some(a),
        _ => None,
    }
}

/// One local rewrite of a node whose children are already simplified; applied again to its
/// own result while that shrinks the tree (every rule removes at least one node).
fn rewrite(e: Expr) -> Expr {
    use Expr::{Binary, Const, Unary};
    match e {
        Unary(op, a) => {
            if let (Some(f), Some(c)) = (op.pointwise(), const_of(&a)) {
                return Expr::constant(f(ops::fin(c)));
            }
            match (op, *a) {
                (UnOp::Mms, Const(_)) => Expr::constant(1.0),
                (UnOp::Zsn, Const(_)) => Expr::constant(0.0),
                (UnOp::Neg, Unary(UnOp::Neg, x)) => *x,
                (UnOp::Neg, Binary(BinOp::Sub, x, y)) => rewrite(Expr::Binary(BinOp::Sub, y, x)),
                (UnOp::Abs, x) if nonneg(&x) => x,
                (UnOp::Abs, Unary(UnOp::Neg, x)) => rewrite(Expr::Unary(UnOp::Abs, x)),
                (UnOp::Sqr, Unary(UnOp::Neg | UnOp::Abs, x)) => rewrite(Expr::Unary(UnOp::Sqr, x)),
                (UnOp::Sqrt, Unary(UnOp::Neg | UnOp::Abs, x)) => {
                    rewrite(Expr::Unary(UnOp::Sqrt, x))
                }
                (UnOp::Sqrt, Unary(UnOp::Sqr, x)) => rewrite(Expr::Unary(UnOp::Abs, x)),
                (UnOp::Log, Unary(UnOp::Neg | UnOp::Abs, x)) => rewrite(Expr::Unary(UnOp::Log, x)),
                (UnOp::Mms | UnOp::Zsn, Unary(UnOp::Mms | UnOp::Zsn, x)) => {
                    rewrite(Expr::Unary(op, x))
                }
                (UnOp::Mms | UnOp::Zsn, x) if increasing_affine_arg(&x).is_some() => {
                    let inner = increasing_affine_arg(&x).cloned().unwrap_or(x);
                    rewrite(Expr::un(op, inner))
                }
                (UnOp::RowNorm, Unary(UnOp::RowNorm, x)) => Expr::Unary(UnOp::RowNorm, x),
                (UnOp::ColNorm, Unary(UnOp::ColNorm, x)) => Expr::Unary(UnOp::ColNorm, x),
                (op, a) => Expr::un(op, a),
            }
        }
        Binary(op, a, b) => {
            if let (Some(x), Some(y)) = (const_of(&a), const_of(&b)) {
                return Expr::constant(op.function()(ops::fin(x), ops::fin(y)));
            }
            let (ca, cb) = (const_of(&a), const_of(&b));
            let out = match (op, *a, *b) {
                (BinOp::Add, _, y) if ca == Some(0.0) => y,
                (BinOp::Add, x, _) if cb == Some(0.0) => x,
                (BinOp::Add, x, Unary(UnOp::Neg, y)) | (BinOp::Add, Unary(UnOp::Neg, y), x) => {
                    return rewrite(Expr::Binary(BinOp::Sub, Box::new(x), y))
                }
                (BinOp::Sub, x, _) if cb == Some(0.0) => x,
                (BinOp::Sub, _, y) if ca == Some(0.0) => rewrite(Expr::un(UnOp::Neg, y)),
                (BinOp::Sub, x, y) if x == y => Expr::constant(0.0),
                (BinOp::Sub, x, Unary(UnOp::Neg, y)) => {
                    return rewrite(Expr::Binary(BinOp::Add, Box::new(x), y))
                }
                (BinOp::Mul, _, _) if ca == Some(0.0) || cb == Some(0.0) => Expr::constant(0.0),
                (BinOp::Mul, _, y) if ca == Some(1.0) => y,
                (BinOp::Mul, x, _) if cb == Some(1.0) => x,
                (BinOp::Mul, Unary(UnOp::Neg, x), Unary(UnOp::Neg, y)) => {
                    return rewrite(Expr::Binary(BinOp::Mul, x, y))
                }
                (BinOp::Div, _, _) if ca == Some(0.0) => Expr::constant(0.0),
                // 1 + 1e-8 rounds to 1 in f32: exact.
                (BinOp::Div, x, _) if cb == Some(1.0) => x,
                (BinOp::Div, x, Unary(UnOp::Neg | UnOp::Abs, y)) => {
                    return rewrite(Expr::Binary(BinOp::Div, Box::new(x), y))
                }
                (op, x, y) => Expr::bin(op, x, y),
            };
            order_commutative(out)
        }
        leaf => leaf,
    }
}

/// Put the children of `add` and `mul` in the order of their prefix forms.
fn order_commutative(e: Expr) -> Expr {
    match e {
        Expr::Binary(op, a, b) if op.commutative() && b.to_string() < a.to_string() => {
            Expr::Binary(op, b, a)
        }
        e => e,
    }
}

/// Simplify without changing values (up to floating-point rounding): redundant operator pairs
/// (`neg∘neg`, `abs∘abs`, `abs` of a provably non-negative tree, `sqr∘abs`, `sqrt∘sqr → abs`,
/// `mms∘mms`, `zsn∘zsn`, `mms∘zsn`, `rownorm∘rownorm`, …), `mms`/`zsn` of a positive affine
/// function of `x` → of `x`, identities (`x − x → 0`, `x + 0`, `x · 1`, `x · 0`, `x / 1`),
/// constant folding (with the same arithmetic as evaluation), and the operands of `add`/`mul`
/// put in a canonical order.
pub fn simplify_values(e: &Expr) -> Expr {
    match e {
        Expr::Unary(op, a) => rewrite(Expr::un(*op, simplify_values(a))),
        Expr::Binary(op, a, b) => rewrite(Expr::bin(*op, simplify_values(a), simplify_values(b))),
        leaf => leaf.clone(),
    }
}

/// [`simplify_values`], then strip the strictly increasing functions at the **root**, which
/// never change a mask.
///
/// A mask depends only on the ranking of the scores inside each comparison group (a row, a
/// layer, an N:M group). A function applied at the root keeps every such ranking when it is the
/// same strictly increasing function for every element of the layer. Stripped at the root:
/// `exp`, `tanh`, `mms`, `zsn` (a positive affine map with one shift and scale per layer), and
/// `sqrt`, `log`, `sqr`, `abs` of a provably non-negative argument, `x + c`, `x − c`, `x · c`
/// with `c > 0`, `x / c`. Not stripped: `rownorm` (a different scale per row: rankings within a
/// row survive, rankings across the layer do not), `colnorm` (a scale per column changes
/// rankings within rows too) and `neg` (reverses them).
///
/// Caveat: equivalence is exact in real arithmetic. In f32, saturating operators (`exp` clamped
/// at 30, `tanh` near ±1, the ±1e30 clamp) and rounding can merge nearly tied scores, so two
/// trees with the same key may still differ in a few tie-breaks.
pub fn simplify(e: &Expr) -> Expr {
    let mut e = simplify_values(e);
    loop {
        let next = match &e {
            Expr::Unary(UnOp::Exp | UnOp::Tanh | UnOp::Mms | UnOp::Zsn, x) => (**x).clone(),
            Expr::Unary(UnOp::Sqrt | UnOp::Log | UnOp::Sqr | UnOp::Abs, x) if nonneg(x) => {
                (**x).clone()
            }
            other => match increasing_affine_arg(other) {
                Some(x) => x.clone(),
                None => break,
            },
        };
        e = next;
    }
    e
}

/// A key equal for trees that [`simplify`] to the same tree (hence prune identically, up to the
/// caveat there): the prefix form of the simplified tree.
pub fn canonical_key(e: &Expr) -> String {
    simplify(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::gp::eval_native;
    use crate::search::gp::fixtures::{layer, stats};

    #[test]
    fn simplification_examples() {
        use Expr::*;
        let s = |e: Expr| simplify_values(&e).to_string();
        let un = Expr::un;
        let bin = Expr::bin;
        assert_eq!(s(un(UnOp::Neg, un(UnOp::Neg, W))), "W");
        assert_eq!(s(un(UnOp::Abs, un(UnOp::Abs, Wsigned))), "abs(Ws)");
        assert_eq!(s(un(UnOp::Abs, un(UnOp::Sqr, Wsigned))), "sqr(Ws)");
        assert_eq!(s(un(UnOp::Abs, bin(BinOp::Mul, W, N))), "mul(N,W)");
        assert_eq!(s(un(UnOp::Sqrt, un(UnOp::Sqr, Wsigned))), "abs(Ws)");
        assert_eq!(s(un(UnOp::Sqrt, un(UnOp::Sqr, W))), "W");
        assert_eq!(s(un(UnOp::Mms, un(UnOp::Mms, G))), "mms(G)");
        assert_eq!(s(un(UnOp::Zsn, un(UnOp::Mms, un(UnOp::Zsn, G)))), "zsn(G)");
        assert_eq!(
            s(un(UnOp::Mms, bin(BinOp::Mul, G, Expr::constant(3.0)))),
            "mms(G)"
        );
        assert_eq!(
            s(bin(
                BinOp::Sub,
                bin(BinOp::Mul, W, X),
                bin(BinOp::Mul, X, W)
            )),
            "0.0"
        );
        assert_eq!(s(bin(BinOp::Add, W, un(UnOp::Neg, N))), "sub(W,N)");
        assert_eq!(s(bin(BinOp::Mul, W, Expr::constant(1.0))), "W");
        assert_eq!(
            s(bin(BinOp::Add, Expr::constant(2.0), Expr::constant(0.5))),
            "2.5"
        );
        assert_eq!(s(un(UnOp::RowNorm, un(UnOp::RowNorm, W))), "rownorm(W)");
        // Values are unchanged by `simplify_values` but the root `sqrt` is not stripped.
        assert_eq!(s(un(UnOp::Sqrt, bin(BinOp::Mul, W, N))), "sqrt(mul(N,W))");
    }

    #[test]
    fn canonical_keys_identify_rank_equivalent_trees() {
        use Expr::*;
        let k = |e: Expr| canonical_key(&e);
        let wn = Expr::wanda();
        let same = [
            Expr::bin(BinOp::Mul, N, W),
            Expr::un(UnOp::Sqrt, wn.clone()),
            Expr::un(UnOp::Sqr, wn.clone()),
            Expr::un(UnOp::Exp, Expr::un(UnOp::Mms, wn.clone())),
            Expr::un(UnOp::Log, Expr::un(UnOp::Mms, wn.clone())),
            Expr::bin(
                BinOp::Mul,
                Expr::constant(2.0),
                Expr::un(UnOp::Tanh, wn.clone()),
            ),
            Expr::bin(BinOp::Add, wn.clone(), Expr::constant(3.0)),
            Expr::un(
                UnOp::Zsn,
                Expr::un(UnOp::Zsn, Expr::un(UnOp::Abs, wn.clone())),
            ),
        ];
        for e in same {
            assert_eq!(k(e.clone()), k(wn.clone()), "{e}");
        }
        // Not rank-equivalent: per-row or per-column rescaling, reversal, different terminals.
        for e in [
            Expr::un(UnOp::RowNorm, wn.clone()),
            Expr::un(UnOp::ColNorm, wn.clone()),
            Expr::un(UnOp::Neg, wn.clone()),
            Expr::bin(BinOp::Mul, W, X),
            Expr::un(UnOp::Sqr, Expr::bin(BinOp::Sub, W, N)),
            // ln(|zsn| + ε) is not monotone: zsn takes both signs.
            Expr::un(UnOp::Log, Expr::un(UnOp::Zsn, wn.clone())),
        ] {
            assert_ne!(k(e.clone()), k(wn.clone()), "{e}");
        }
    }

    #[test]
    fn root_stripping_keeps_every_row_and_layer_ranking() {
        let (rows, cols) = (6, 9);
        let (w, g) = layer(rows, cols, 5);
        let st = stats(cols, 100);
        let rank = |v: &[f32]| {
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]).then(a.cmp(&b)));
            idx
        };
        let base = Expr::bin(BinOp::Add, Expr::wanda(), Expr::un(UnOp::Sqr, Expr::G));
        for e in [
            Expr::un(UnOp::Sqrt, base.clone()),
            Expr::un(UnOp::Mms, base.clone()),
            Expr::un(UnOp::Zsn, Expr::un(UnOp::Log, base.clone())),
            Expr::bin(
                BinOp::Mul,
                Expr::un(UnOp::Tanh, base.clone()),
                Expr::constant(0.5),
            ),
        ] {
            assert_eq!(canonical_key(&e), canonical_key(&base));
            let a = eval_native(&e, rows, cols, &w, &st, Some(&g));
            let b = eval_native(&base, rows, cols, &w, &st, Some(&g));
            assert_eq!(rank(&a), rank(&b), "{e}");
        }
    }
}
