//! The expression trees of symbolic GP: terminals, operators, their prefix and infix forms, and
//! tree queries.

use super::ops;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::hash::{Hash, Hasher};

/// Constants the generator draws from.
pub const CONSTANTS: &[f32] = &[0.1, 0.5, 1.0, 2.0, 3.0, 10.0];

/// A constant leaf's value; compared and hashed by its bits, (de)serialised as a number.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Num(pub f32);

impl PartialEq for Num {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Num {}

impl Hash for Num {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnOp {
    /// `a²`.
    Sqr,
    /// `−a`.
    Neg,
    /// `|a|`.
    Abs,
    /// `ln(|a| + 1e-3)`.
    Log,
    /// `exp(min(a, 30))`.
    Exp,
    /// `sqrt(|a|)`.
    Sqrt,
    /// `tanh(a)`.
    Tanh,
    /// Min–max normalisation over the whole layer.
    Mms,
    /// Z-score normalisation over the whole layer.
    Zsn,
    /// `a / Σ_row |a|`.
    RowNorm,
    /// `a / Σ_column |a|` (whole layer).
    ColNorm,
}

impl UnOp {
    /// Every unary operator.
    pub const ALL: [UnOp; 11] = [
        UnOp::Sqr,
        UnOp::Neg,
        UnOp::Abs,
        UnOp::Log,
        UnOp::Exp,
        UnOp::Sqrt,
        UnOp::Tanh,
        UnOp::Mms,
        UnOp::Zsn,
        UnOp::RowNorm,
        UnOp::ColNorm,
    ];

    /// Name in the prefix form and in the rendered code.
    pub fn name(self) -> &'static str {
        match self {
            UnOp::Sqr => "sqr",
            UnOp::Neg => "neg",
            UnOp::Abs => "abs",
            UnOp::Log => "log",
            UnOp::Exp => "exp",
            UnOp::Sqrt => "sqrt",
            UnOp::Tanh => "tanh",
            UnOp::Mms => "mms",
            UnOp::Zsn => "zsn",
            UnOp::RowNorm => "rownorm",
            UnOp::ColNorm => "colnorm",
        }
    }

    /// Whether the operator needs a statistic of its argument over the whole layer (an extra
    /// pass): `mms`, `zsn`, `colnorm`.
    pub fn whole_layer(self) -> bool {
        matches!(self, UnOp::Mms | UnOp::Zsn | UnOp::ColNorm)
    }

    /// The elementwise function, for the pointwise operators (`None` for the normalisations).
    pub(super) fn pointwise(self) -> Option<fn(f32) -> f32> {
        Some(match self {
            UnOp::Sqr => ops::sqr,
            UnOp::Neg => ops::neg,
            UnOp::Abs => ops::abs,
            UnOp::Log => ops::log,
            UnOp::Exp => ops::exp,
            UnOp::Sqrt => ops::sqrt,
            UnOp::Tanh => ops::tanh,
            UnOp::Mms | UnOp::Zsn | UnOp::RowNorm | UnOp::ColNorm => return None,
        })
    }
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinOp {
    /// `a + b`.
    Add,
    /// `a − b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / (|b| + 1e-8)`.
    Div,
}

impl BinOp {
    /// Every binary operator.
    pub const ALL: [BinOp; 4] = [BinOp::Add, BinOp::Sub, BinOp::Mul, BinOp::Div];

    /// Name in the prefix form and in the rendered code.
    pub fn name(self) -> &'static str {
        match self {
            BinOp::Add => "add",
            BinOp::Sub => "sub",
            BinOp::Mul => "mul",
            BinOp::Div => "div",
        }
    }

    pub(super) fn function(self) -> fn(f32, f32) -> f32 {
        match self {
            BinOp::Add => ops::add,
            BinOp::Sub => ops::sub,
            BinOp::Mul => ops::mul,
            BinOp::Div => ops::div,
        }
    }

    pub(super) fn commutative(self) -> bool {
        matches!(self, BinOp::Add | BinOp::Mul)
    }
}

/// A metric expression tree (see the [module docs](self) for the exact semantics).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expr {
    /// `|W_ij|`.
    W,
    /// `W_ij` (signed).
    Wsigned,
    /// Mean squared activation of channel `j`: `‖X_j‖₂² / tokens`.
    X,
    /// `‖X_j‖₂`.
    N,
    /// `max |x_j|`.
    A,
    /// Variance of `x_j`.
    Var,
    /// The gradient statistic (the metric then needs the gradient).
    G,
    /// `[(H + λI)⁻¹]_jj` of column `j` (the metric then declares `hessian-inverse-diagonal`).
    H,
    /// `‖y_i‖₂` of output row `i` (the metric then declares `output-stats`).
    O,
    /// A constant.
    Const(Num),
    /// A unary operator.
    Unary(UnOp, Box<Expr>),
    /// A binary operator.
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

/// The variable terminals.
pub(super) const VARIABLES: [Expr; 9] = [
    Expr::W,
    Expr::Wsigned,
    Expr::X,
    Expr::N,
    Expr::A,
    Expr::Var,
    Expr::G,
    Expr::H,
    Expr::O,
];

impl Expr {
    /// A constant leaf.
    pub fn constant(v: f32) -> Expr {
        Expr::Const(Num(v))
    }

    /// `op(a)`.
    pub fn un(op: UnOp, a: Expr) -> Expr {
        Expr::Unary(op, Box::new(a))
    }

    /// `op(a, b)`.
    pub fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }

    /// Magnitude pruning: `|W|`.
    pub fn magnitude() -> Expr {
        Expr::W
    }

    /// Wanda: `|W| · ‖X_j‖₂` (scores equal `candidates/wanda.rs` bitwise).
    pub fn wanda() -> Expr {
        Expr::bin(BinOp::Mul, Expr::W, Expr::N)
    }

    /// Pruner-Zero's best published tree: `|W|² · mms(G)` (scores equal
    /// `candidates/pruner_zero.rs` bitwise).
    pub fn pruner_zero_best() -> Expr {
        Expr::bin(
            BinOp::Mul,
            Expr::un(UnOp::Sqr, Expr::W),
            Expr::un(UnOp::Mms, Expr::G),
        )
    }

    /// GBLM-Pruner: `|W| · (‖X_j‖₂ + √32 · G)` (the weighting of `candidates/gblm.rs`).
    pub fn gblm() -> Expr {
        Expr::bin(
            BinOp::Mul,
            Expr::W,
            Expr::bin(
                BinOp::Add,
                Expr::N,
                Expr::bin(BinOp::Mul, Expr::Const(Num(5.656_854)), Expr::G),
            ),
        )
    }

    /// RIA: `(colnorm(|W|) + rownorm(|W|)) · sqrt(‖X_j‖₂)` (scores equal `candidates/ria.rs`
    /// bitwise on layers without all-zero rows or columns).
    pub fn ria() -> Expr {
        Expr::bin(
            BinOp::Mul,
            Expr::bin(
                BinOp::Add,
                Expr::un(UnOp::ColNorm, Expr::W),
                Expr::un(UnOp::RowNorm, Expr::W),
            ),
            Expr::un(UnOp::Sqrt, Expr::N),
        )
    }

    /// Whether this is a leaf.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Expr::Unary(..) | Expr::Binary(..))
    }

    /// Number of nodes.
    pub fn size(&self) -> usize {
        match self {
            Expr::Unary(_, a) => 1 + a.size(),
            Expr::Binary(_, a, b) => 1 + a.size() + b.size(),
            _ => 1,
        }
    }

    /// Nodes on the longest root-to-leaf path (a lone terminal has depth 1).
    pub fn depth(&self) -> usize {
        match self {
            Expr::Unary(_, a) => 1 + a.depth(),
            Expr::Binary(_, a, b) => 1 + a.depth().max(b.depth()),
            _ => 1,
        }
    }

    /// Whether `G` occurs (the metric needs the gradient).
    pub fn uses_gradient(&self) -> bool {
        self.any(&|e| matches!(e, Expr::G))
    }

    /// Whether `H` occurs (the metric needs the Hessian inverse diagonal).
    pub fn uses_hessian(&self) -> bool {
        self.any(&|e| matches!(e, Expr::H))
    }

    /// Whether `O` occurs (the metric needs the output statistics).
    pub fn uses_output_stats(&self) -> bool {
        self.any(&|e| matches!(e, Expr::O))
    }

    /// Whether the signed weight `Wsigned` occurs.
    pub fn uses_signed_weights(&self) -> bool {
        self.any(&|e| matches!(e, Expr::Wsigned))
    }

    /// Nesting depth of whole-layer operators (`mms`, `zsn`, `colnorm`): the number of extra
    /// reads of the layer a rendered metric makes before scoring.
    pub fn layer_passes(&self) -> usize {
        match self {
            Expr::Unary(op, a) => a.layer_passes() + op.whole_layer() as usize,
            Expr::Binary(_, a, b) => a.layer_passes().max(b.layer_passes()),
            _ => 0,
        }
    }

    fn any(&self, f: &dyn Fn(&Expr) -> bool) -> bool {
        f(self)
            || match self {
                Expr::Unary(_, a) => a.any(f),
                Expr::Binary(_, a, b) => a.any(f) || b.any(f),
                _ => false,
            }
    }

    /// The subtree at preorder position `index` (0 is the root).
    pub fn subtree(&self, index: usize) -> Option<&Expr> {
        fn walk<'a>(e: &'a Expr, index: &mut usize) -> Option<&'a Expr> {
            if *index == 0 {
                return Some(e);
            }
            *index -= 1;
            match e {
                Expr::Unary(_, a) => walk(a, index),
                Expr::Binary(_, a, b) => walk(a, index).or_else(|| walk(b, index)),
                _ => None,
            }
        }
        let mut i = index;
        walk(self, &mut i)
    }

    /// A copy with the subtree at preorder position `index` replaced by `with` (an unchanged
    /// copy when `index` is out of range).
    pub fn replace_subtree(&self, index: usize, with: &Expr) -> Expr {
        fn walk(e: &Expr, index: &mut usize, with: &Expr) -> Expr {
            if *index == 0 {
                *index = usize::MAX;
                return with.clone();
            }
            if *index != usize::MAX {
                *index -= 1;
            }
            match e {
                Expr::Unary(op, a) => Expr::un(*op, walk(a, index, with)),
                Expr::Binary(op, a, b) => {
                    let a = walk(a, index, with);
                    Expr::bin(*op, a, walk(b, index, with))
                }
                leaf => leaf.clone(),
            }
        }
        let mut i = index;
        walk(self, &mut i, with)
    }

    /// `(depth of the node, is it a leaf)` for every node in preorder; the root has depth 1.
    pub(super) fn node_depths(&self) -> Vec<(usize, bool)> {
        fn walk(e: &Expr, d: usize, out: &mut Vec<(usize, bool)>) {
            out.push((d, e.is_terminal()));
            match e {
                Expr::Unary(_, a) => walk(a, d + 1, out),
                Expr::Binary(_, a, b) => {
                    walk(a, d + 1, out);
                    walk(b, d + 1, out);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(self, 1, &mut out);
        out
    }
}

/// The prefix form, e.g. `mul(W,N)`; constants print as Rust's shortest round-trip f32.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::W => f.write_str("W"),
            Expr::Wsigned => f.write_str("Ws"),
            Expr::X => f.write_str("X"),
            Expr::N => f.write_str("N"),
            Expr::A => f.write_str("A"),
            Expr::Var => f.write_str("Var"),
            Expr::G => f.write_str("G"),
            Expr::H => f.write_str("H"),
            Expr::O => f.write_str("O"),
            Expr::Const(c) => write!(f, "{:?}", c.0),
            Expr::Unary(op, a) => write!(f, "{}({a})", op.name()),
            Expr::Binary(op, a, b) => write!(f, "{}({a},{b})", op.name()),
        }
    }
}

/// Parses the prefix form that [`Display`](fmt::Display) prints, e.g. `mul(W,sqrt(N))` or
/// `add(mul(W,N),mul(5.656854,G))`; whitespace is ignored.
impl std::str::FromStr for Expr {
    type Err = String;

    fn from_str(s: &str) -> Result<Expr, String> {
        let text: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let (e, rest) = parse_prefix(&text, 0)?;
        if !rest.is_empty() {
            return Err(format!("unexpected `{rest}` after the expression"));
        }
        Ok(e)
    }
}

/// One expression at the start of `s`, and what follows it.
fn parse_prefix(s: &str, depth: usize) -> Result<(Expr, &str), String> {
    // Deeper than any tree the generator makes; bounds the recursion on hostile input.
    if depth > 64 {
        return Err("the expression is nested too deeply".into());
    }
    let end = s.find(['(', ',', ')']).unwrap_or(s.len());
    let (name, rest) = s.split_at(end);
    if let Some(args) = rest.strip_prefix('(') {
        if let Some(op) = UnOp::ALL.iter().find(|o| o.name() == name) {
            let (a, rest) = parse_prefix(args, depth + 1)?;
            let rest = rest
                .strip_prefix(')')
                .ok_or_else(|| format!("`{name}(` takes one argument"))?;
            return Ok((Expr::un(*op, a), rest));
        }
        if let Some(op) = BinOp::ALL.iter().find(|o| o.name() == name) {
            let (a, rest) = parse_prefix(args, depth + 1)?;
            let rest = rest
                .strip_prefix(',')
                .ok_or_else(|| format!("`{name}(` takes two arguments"))?;
            let (b, rest) = parse_prefix(rest, depth + 1)?;
            let rest = rest
                .strip_prefix(')')
                .ok_or_else(|| format!("`{name}(` takes two arguments"))?;
            return Ok((Expr::bin(*op, a, b), rest));
        }
        return Err(format!("unknown operator `{name}`"));
    }
    let leaf = match name {
        "W" => Expr::W,
        "Ws" => Expr::Wsigned,
        "X" => Expr::X,
        "N" => Expr::N,
        "A" => Expr::A,
        "Var" => Expr::Var,
        "G" => Expr::G,
        "H" => Expr::H,
        "O" => Expr::O,
        c => Expr::Const(Num(c
            .parse::<f32>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("unknown terminal `{c}`"))?)),
    };
    Ok((leaf, rest))
}

/// A human-readable infix form, e.g. `|W| * N` or `|W|^2 * mms(G)`, for reports and LLM
/// prompts. `/` is the safe division, `log`/`sqrt` take `|a|` (see the module docs).
pub fn to_infix(e: &Expr) -> String {
    // Precedences: 1 `+ -`, 2 `* /`, 3 prefix minus and `^2`, 4 atoms and function calls.
    fn go(e: &Expr) -> (String, u8) {
        match e {
            Expr::W => ("|W|".into(), 4),
            Expr::Wsigned => ("W".into(), 4),
            Expr::X => ("X".into(), 4),
            Expr::N => ("N".into(), 4),
            Expr::A => ("A".into(), 4),
            Expr::Var => ("Var".into(), 4),
            Expr::G => ("G".into(), 4),
            Expr::H => ("H".into(), 4),
            Expr::O => ("O".into(), 4),
            Expr::Const(c) => {
                let s = format!("{}", c.0);
                let p = if c.0 < 0.0 { 3 } else { 4 };
                (s, p)
            }
            Expr::Unary(op, a) => {
                let (s, p) = go(a);
                match op {
                    UnOp::Sqr if p >= 4 => (format!("{s}^2"), 3),
                    UnOp::Sqr => (format!("({s})^2"), 3),
                    UnOp::Neg if p >= 3 => (format!("-{s}"), 3),
                    UnOp::Neg => (format!("-({s})"), 3),
                    UnOp::Abs => (format!("abs({s})"), 4),
                    op => (format!("{}({s})", op.name()), 4),
                }
            }
            Expr::Binary(op, a, b) => {
                let (sym, prec) = match op {
                    BinOp::Add => ("+", 1),
                    BinOp::Sub => ("-", 1),
                    BinOp::Mul => ("*", 2),
                    BinOp::Div => ("/", 2),
                };
                let (sa, pa) = go(a);
                let (sb, pb) = go(b);
                let sa = if pa < prec { format!("({sa})") } else { sa };
                let right_paren =
                    pb < prec || (pb == prec && matches!(op, BinOp::Sub | BinOp::Div));
                let sb = if right_paren { format!("({sb})") } else { sb };
                (format!("{sa} {sym} {sb}"), prec)
            }
        }
    }
    go(e).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_form_round_trips() {
        for e in [
            Expr::wanda(),
            Expr::ria(),
            Expr::gblm(),
            Expr::pruner_zero_best(),
            Expr::bin(BinOp::Div, Expr::Wsigned, Expr::un(UnOp::Tanh, Expr::Var)),
            Expr::bin(BinOp::Sub, Expr::Const(Num(-0.1)), Expr::A),
            Expr::bin(BinOp::Div, Expr::un(UnOp::Sqr, Expr::W), Expr::H),
            Expr::bin(BinOp::Mul, Expr::O, Expr::N),
        ] {
            let text = e.to_string();
            assert_eq!(text.parse::<Expr>().unwrap(), e, "{text}");
        }
        assert_eq!(" mul( W , N ) ".parse::<Expr>().unwrap(), Expr::wanda());
        for bad in [
            "",
            "mul(W)",
            "foo(W)",
            "W)",
            "mul(W,N",
            "inf",
            "Q",
            &"sqrt(".repeat(100),
        ] {
            assert!(bad.parse::<Expr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn infix_and_prefix_forms() {
        assert_eq!(to_infix(&Expr::wanda()), "|W| * N");
        assert_eq!(to_infix(&Expr::pruner_zero_best()), "|W|^2 * mms(G)");
        assert_eq!(
            to_infix(&Expr::ria()),
            "(colnorm(|W|) + rownorm(|W|)) * sqrt(N)"
        );
        let e = Expr::bin(
            BinOp::Sub,
            Expr::W,
            Expr::bin(BinOp::Sub, Expr::N, Expr::un(UnOp::Neg, Expr::X)),
        );
        assert_eq!(to_infix(&e), "|W| - (N - -X)");
        assert_eq!(e.to_string(), "sub(W,sub(N,neg(X)))");
        let json = serde_json::to_string(&Expr::pruner_zero_best()).unwrap();
        assert_eq!(
            serde_json::from_str::<Expr>(&json).unwrap(),
            Expr::pruner_zero_best()
        );
    }
}
