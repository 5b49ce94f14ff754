//! Symbolic genetic programming over Pruner-Zero-style metric expressions.
//!
//! An [`Expr`] is a tree over per-weight terminals and operators. [`Gp`] generates random trees
//! (ramped half-and-half), selects by tournament and breeds by subtree crossover and point /
//! subtree / hoist mutation, deterministically from a seed. [`simplify`] and [`canonical_key`]
//! recognise trees that prune identically; [`render`] turns a tree into a complete candidate
//! source for the sandboxed builder, and [`eval_native`] computes the same scores in the host,
//! bit for bit.
//!
//! # Semantics
//!
//! Every node is a `rows × cols` matrix of f32 values.
//!
//! | node | value at `(i, j)` |
//! |------|-------------------|
//! | `W` | `\|W_ij\|` |
//! | `Wsigned` | `W_ij` |
//! | `X` | mean squared activation of channel `j`: `‖X_j‖₂² / tokens` (from the f32 norm) |
//! | `N` | `‖X_j‖₂ = sqrt(Σ x_j²)` |
//! | `A` | `max \|x_j\|` |
//! | `Var` | population variance of `x_j` |
//! | `G` | the host's gradient statistic `sqrt(Σ (100·∂L/∂W_ij)²)` (needs the gradient) |
//! | `H` | `[(H + λI)⁻¹]_jj`, the diagonal of the damped inverse input Hessian (WIT 0.2.0; `w²/H` is OBS's saliency) |
//! | `O` | `‖y_i‖₂`, the L2 norm of output row `i` of the dense layer over the calibration tokens (WIT 0.2.0) |
//! | `Const(c)` | `c` |
//! | `sqr(a)`, `neg(a)`, `abs(a)` | `a²`, `−a`, `\|a\|` |
//! | `log(a)` | `ln(\|a\| + 1e-3)` |
//! | `exp(a)` | `exp(min(a, 30))` |
//! | `sqrt(a)` | `sqrt(\|a\|)` |
//! | `tanh(a)` | `tanh(a)` |
//! | `mms(a)` | `(a − min a) / (max a − min a)` over the **whole layer**; 1 when `a` is constant |
//! | `zsn(a)` | `(a − mean a) / std a` over the **whole layer** (population std); 0 when constant |
//! | `rownorm(a)` | `a_ij / Σ_j' \|a_ij'\|` (0 for an all-zero row) |
//! | `colnorm(a)` | `a_ij / Σ_i' \|a_i'j\|` (0 for an all-zero column), as in RIA |
//! | `add`, `sub`, `mul` | `a + b`, `a − b`, `a · b` |
//! | `div(a, b)` | safe division `a / (\|b\| + 1e-8)` (elementwise; Pruner-Zero's `a / ‖b‖_F` is only a
//! per-layer scale, which an elementwise division can express with `b` constant) |
//!
//! Every node's result is clamped to `[−1e30, 1e30]` (NaN becomes `−1e30`), so every tree gives
//! finite scores on every layer: division by zero, empty or constant layers included. `exp`,
//! `ln` and `tanh` are computed by the shared arithmetic in `gp_ops.rs` (f64 polynomials over
//! IEEE basic operations) instead of the platform's libm, so the sandboxed plugin and
//! [`eval_native`] agree bitwise.
//!
//! # Whole-layer passes
//!
//! `mms`, `zsn` and `colnorm` need a statistic of their argument over the whole layer. A rendered
//! metric reads the layer once per nesting level of these operators ([`Expr::layer_passes`]): pass
//! `p` evaluates, row by row, the arguments of the level-`p` operators (whose own whole-layer
//! inputs were finished by earlier passes) and accumulates their statistics; the final
//! `score_rows` pass evaluates the whole tree. Nesting is therefore fully supported; the
//! generator bounds it with [`GpConfig::max_layer_passes`] because each level costs a read of
//! the layer. `rownorm` needs only its own row and costs no pass.
//!
//! # Cost
//!
//! [`fuel_estimate`] bounds the plugin's wasm fuel per weight from the tree (`exp`, `log`, `tanh`
//! cost ~10× an arithmetic node, and every pass re-evaluates the nodes below it);
//! [`GpConfig::max_fuel_per_weight`] keeps generated trees within half the sandbox's grant.

use crate::layer::{ChannelStats, LayerData};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::hash::{Hash, Hasher};

/// The shared arithmetic, compiled into the host.
#[allow(dead_code)]
mod ops {
    include!("gp_ops.rs");
}

/// The same arithmetic as source text, pasted into every rendered candidate.
const OPS_SOURCE: &str = include_str!("gp_ops.rs");

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
    fn pointwise(self) -> Option<fn(f32) -> f32> {
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

    fn function(self) -> fn(f32, f32) -> f32 {
        match self {
            BinOp::Add => ops::add,
            BinOp::Sub => ops::sub,
            BinOp::Mul => ops::mul,
            BinOp::Div => ops::div,
        }
    }

    fn commutative(self) -> bool {
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
const VARIABLES: [Expr; 9] = [
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
    fn node_depths(&self) -> Vec<(usize, bool)> {
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

// ---------------------------------------------------------------------------------------------
// Simplification

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

// ---------------------------------------------------------------------------------------------
// Random generation and breeding

/// Deterministic pseudo-random numbers (SplitMix64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Limits and probabilities of the genetic search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpConfig {
    /// Deepest tree allowed (a lone terminal has depth 1).
    pub max_depth: usize,
    /// Most nodes allowed.
    pub max_size: usize,
    /// Smallest depth of the ramped half-and-half initial trees.
    pub init_min_depth: usize,
    /// Largest depth of the ramped half-and-half initial trees (and of mutation subtrees).
    pub init_max_depth: usize,
    /// Whether `G` may occur (the metric then needs the gradient: a backward pass).
    pub allow_gradient: bool,
    /// Whether `H` may occur (the metric then needs the Hessian inverse diagonal; a search
    /// computes it, with `O`'s statistics, in one dense pass when the first such tree arrives).
    /// A configuration stored before the option existed reads as `false`, so a resumed run
    /// proposes what it did before.
    #[serde(default = "off")]
    pub allow_hessian: bool,
    /// Whether `O` may occur (the metric then needs the output statistics); stored
    /// configurations without it read as `false`, as for `allow_hessian`.
    #[serde(default = "off")]
    pub allow_output_stats: bool,
    /// Whether the signed weight `Wsigned` may occur.
    pub allow_signed_weights: bool,
    /// Most nested whole-layer operators (`mms`, `zsn`, `colnorm`): each level costs one extra
    /// read of the layer.
    pub max_layer_passes: usize,
    /// Largest [`fuel_estimate`] allowed (fuel per weight of the rendered plugin). The default
    /// 2048 is half of the sandbox's default grant (`Policy::fuel_per_weight` = 4096).
    pub max_fuel_per_weight: f64,
    /// Probability that a generated leaf is a constant from [`CONSTANTS`].
    pub const_prob: f64,
    /// Probability that a generated inner node is binary (else unary).
    pub binary_prob: f64,
    /// Probability that a `grow` node above the depth limit is a leaf.
    pub leaf_prob: f64,
    /// Trees compared per tournament.
    pub tournament_size: usize,
    /// Probability that [`Gp::offspring`] uses crossover (else copies the winner).
    pub crossover_prob: f64,
    /// Probability that [`Gp::offspring`] then mutates the child.
    pub mutation_prob: f64,
}

/// The value of an option missing from a stored configuration.
fn off() -> bool {
    false
}

impl Default for GpConfig {
    fn default() -> Self {
        GpConfig {
            max_depth: 7,
            max_size: 25,
            init_min_depth: 2,
            init_max_depth: 4,
            allow_gradient: false,
            allow_hessian: true,
            allow_output_stats: true,
            allow_signed_weights: true,
            max_layer_passes: 2,
            max_fuel_per_weight: 2048.0,
            const_prob: 0.1,
            binary_prob: 0.5,
            leaf_prob: 0.3,
            tournament_size: 4,
            crossover_prob: 0.7,
            mutation_prob: 0.3,
        }
    }
}

impl GpConfig {
    /// Whether `e` respects every limit: depth, size, optional inputs, signed weights, passes,
    /// fuel.
    pub fn fits(&self, e: &Expr) -> bool {
        e.depth() <= self.max_depth.max(1)
            && e.size() <= self.max_size.max(1)
            && (self.allow_gradient || !e.uses_gradient())
            && (self.allow_hessian || !e.uses_hessian())
            && (self.allow_output_stats || !e.uses_output_stats())
            && (self.allow_signed_weights || !e.uses_signed_weights())
            && e.layer_passes() <= self.max_layer_passes
            && fuel_estimate(e) <= self.max_fuel_per_weight
    }
}

/// Attempts before an operator gives up and returns its fallback.
const ATTEMPTS: usize = 32;

/// The genetic operators: a configuration and a seeded generator. Every result is a
/// deterministic function of the seed and the sequence of calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gp {
    /// Limits and probabilities.
    pub config: GpConfig,
    /// The generator (serialisable, so a search can resume exactly).
    pub rng: Rng,
}

impl Gp {
    /// Operators under `config`, seeded with `seed`.
    pub fn new(config: GpConfig, seed: u64) -> Self {
        Gp {
            config,
            rng: Rng::new(seed),
        }
    }

    /// A random leaf allowed by the configuration.
    pub fn random_terminal(&mut self) -> Expr {
        if self.rng.chance(self.config.const_prob) {
            return Expr::constant(CONSTANTS[self.rng.below(CONSTANTS.len())]);
        }
        let allowed: Vec<&Expr> = VARIABLES
            .iter()
            .filter(|t| match t {
                Expr::G => self.config.allow_gradient,
                Expr::H => self.config.allow_hessian,
                Expr::O => self.config.allow_output_stats,
                Expr::Wsigned => self.config.allow_signed_weights,
                _ => true,
            })
            .collect();
        allowed[self.rng.below(allowed.len())].clone()
    }

    fn random_unary(&mut self, whole_layer_ok: bool) -> UnOp {
        let allowed: Vec<UnOp> = UnOp::ALL
            .into_iter()
            .filter(|op| whole_layer_ok || !op.whole_layer())
            .collect();
        allowed[self.rng.below(allowed.len())]
    }

    fn gen(&mut self, depth: usize, passes: usize, full: bool) -> Expr {
        if depth <= 1 || (!full && self.rng.chance(self.config.leaf_prob)) {
            return self.random_terminal();
        }
        if self.rng.chance(self.config.binary_prob) {
            let op = BinOp::ALL[self.rng.below(BinOp::ALL.len())];
            let a = self.gen(depth - 1, passes, full);
            Expr::bin(op, a, self.gen(depth - 1, passes, full))
        } else {
            let op = self.random_unary(passes > 0);
            let passes = passes - op.whole_layer() as usize;
            Expr::un(op, self.gen(depth - 1, passes, full))
        }
    }

    /// A random tree of depth at most `depth` (capped by the configuration): `full` makes
    /// every branch reach the depth, otherwise it "grows" with leaves at random. Retries until
    /// the tree fits the size limit; falls back to a leaf.
    pub fn random_tree(&mut self, depth: usize, full: bool) -> Expr {
        let depth = depth.clamp(1, self.config.max_depth.max(1));
        for _ in 0..ATTEMPTS {
            let e = self.gen(depth, self.config.max_layer_passes, full);
            if self.config.fits(&e) {
                return e;
            }
        }
        self.random_terminal()
    }

    /// `n` initial trees by ramped half-and-half: depths cycle through
    /// `init_min_depth..=init_max_depth`, alternating `full` and `grow`. Trees whose
    /// [`canonical_key`] was already drawn are redrawn (a few times) so the population starts
    /// behaviourally diverse.
    pub fn ramped_half_and_half(&mut self, n: usize) -> Vec<Expr> {
        let lo = self.config.init_min_depth.max(1);
        let hi = self.config.init_max_depth.max(lo);
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let depth = lo + (i / 2) % (hi - lo + 1);
            let full = i % 2 == 0;
            let mut e = self.random_tree(depth, full);
            for _ in 0..ATTEMPTS {
                if !seen.contains(&canonical_key(&e)) {
                    break;
                }
                e = self.random_tree(depth, full);
            }
            seen.insert(canonical_key(&e));
            out.push(e);
        }
        out
    }

    /// Tournament selection: the index of the best (lowest fitness, e.g. perplexity) of
    /// `tournament_size` random entries; NaN counts as worst, ties go to the earlier draw.
    /// `None` for an empty population.
    pub fn tournament(&mut self, population: &[(Expr, f64)]) -> Option<usize> {
        if population.is_empty() {
            return None;
        }
        let key = |f: f64| if f.is_nan() { f64::INFINITY } else { f };
        let mut best = self.rng.below(population.len());
        for _ in 1..self.config.tournament_size.max(1) {
            let i = self.rng.below(population.len());
            if key(population[i].1) < key(population[best].1) {
                best = i;
            }
        }
        Some(best)
    }

    /// A preorder position in `e`: an inner node with probability 0.9 when there is one.
    fn pick_point(&mut self, e: &Expr) -> usize {
        let nodes = e.node_depths();
        let inner: Vec<usize> = (0..nodes.len()).filter(|&i| !nodes[i].1).collect();
        if !inner.is_empty() && self.rng.chance(0.9) {
            inner[self.rng.below(inner.len())]
        } else {
            self.rng.below(nodes.len())
        }
    }

    /// Subtree crossover: a copy of `a` with one subtree replaced by a subtree of `b` (inner
    /// nodes preferred, Koza's 90 %). Retries until the child fits; falls back to a copy of `a`.
    pub fn crossover(&mut self, a: &Expr, b: &Expr) -> Expr {
        for _ in 0..ATTEMPTS {
            let i = self.pick_point(a);
            let j = self.pick_point(b);
            let Some(donor) = b.subtree(j) else { continue };
            let child = a.replace_subtree(i, donor);
            if self.config.fits(&child) {
                return child;
            }
        }
        a.clone()
    }

    /// Point mutation: one node swapped for another of the same arity (a leaf for another
    /// leaf, a unary operator for another unary, a binary for another binary), children kept.
    /// Falls back to a copy of `e` when no different tree fits.
    pub fn point_mutation(&mut self, e: &Expr) -> Expr {
        let n = e.size();
        for _ in 0..ATTEMPTS {
            let i = self.rng.below(n);
            let Some(node) = e.subtree(i) else { continue };
            let new = match node {
                Expr::Unary(op, a) => {
                    let other = UnOp::ALL[self.rng.below(UnOp::ALL.len())];
                    if other == *op {
                        continue;
                    }
                    Expr::Unary(other, a.clone())
                }
                Expr::Binary(op, a, b) => {
                    let other = BinOp::ALL[self.rng.below(BinOp::ALL.len())];
                    if other == *op {
                        continue;
                    }
                    Expr::Binary(other, a.clone(), b.clone())
                }
                leaf => {
                    let other = self.random_terminal();
                    if other == *leaf {
                        continue;
                    }
                    other
                }
            };
            let child = e.replace_subtree(i, &new);
            if self.config.fits(&child) {
                return child;
            }
        }
        e.clone()
    }

    /// Subtree mutation: one subtree replaced by a fresh random (`grow`) tree no deeper than
    /// the depth left at that position (and `init_max_depth`). Falls back to a copy of `e`.
    pub fn subtree_mutation(&mut self, e: &Expr) -> Expr {
        let nodes = e.node_depths();
        for _ in 0..ATTEMPTS {
            let i = self.rng.below(nodes.len());
            let room = (self.config.max_depth + 1).saturating_sub(nodes[i].0);
            let depth = room.min(self.config.init_max_depth.max(1));
            if depth == 0 {
                continue;
            }
            let fresh = self.gen(depth, self.config.max_layer_passes, false);
            let child = e.replace_subtree(i, &fresh);
            if child != *e && self.config.fits(&child) {
                return child;
            }
        }
        e.clone()
    }

    /// Hoist mutation: a random proper subtree becomes the whole tree (shrinks bloat). A leaf
    /// is returned unchanged.
    pub fn hoist_mutation(&mut self, e: &Expr) -> Expr {
        let n = e.size();
        if n <= 1 {
            return e.clone();
        }
        let i = 1 + self.rng.below(n - 1);
        e.subtree(i).cloned().unwrap_or_else(|| e.clone())
    }

    /// One of the three mutations, uniformly.
    pub fn mutate(&mut self, e: &Expr) -> Expr {
        match self.rng.below(3) {
            0 => self.point_mutation(e),
            1 => self.subtree_mutation(e),
            _ => self.hoist_mutation(e),
        }
    }

    /// One child of `population` (lower fitness is better): a tournament winner, crossed with a
    /// second winner with `crossover_prob`, then mutated with `mutation_prob`. `None` for an
    /// empty population.
    pub fn offspring(&mut self, population: &[(Expr, f64)]) -> Option<Expr> {
        let p = self.tournament(population)?;
        let mut child = if self.rng.chance(self.config.crossover_prob) {
            let q = self.tournament(population)?;
            self.crossover(&population[p].0, &population[q].0)
        } else {
            population[p].0.clone()
        };
        if self.rng.chance(self.config.mutation_prob) {
            child = self.mutate(&child);
        }
        Some(child)
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation plan, shared by `render` and `eval_native`

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
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
struct Pass {
    /// Whole-layer nodes whose statistics this pass gathers (from their argument).
    targets: Vec<usize>,
    /// Nodes evaluated for every row, ascending (children before parents).
    eval: Vec<usize>,
}

/// The tree as a post-order node list (children before parents; the root is last).
#[derive(Debug, Clone)]
struct Plan {
    ops: Vec<Op>,
    /// Prefix form of every node's subtree (comments in the rendered code).
    labels: Vec<String>,
    passes: Vec<Pass>,
}

impl Plan {
    fn new(e: &Expr) -> Plan {
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

    fn root(&self) -> usize {
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

/// An upper estimate of the wasm fuel per weight that [`render`]'s plugin spends on `e`
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
/// ([`render`]), row-major. Without a gradient, `G` reads as 0; `H` and `O` read as 0 (use
/// [`eval_layer`] to give them).
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

// ---------------------------------------------------------------------------------------------
// Rendering

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
    use crate::layer::RowStats;

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

    fn stats(cols: usize, tokens: u64) -> ChannelStats {
        let mut s = ChannelStats::new(cols);
        s.tokens = tokens;
        for j in 0..cols {
            let rms = 0.5 + j as f64 * 0.37;
            s.sum_sq[j] = rms * rms * tokens as f64;
            s.sum[j] = 0.1 * j as f64 * tokens as f64 / 8.0;
            s.max_abs[j] = (rms * 7.0) as f32;
        }
        s
    }

    fn layer(rows: usize, cols: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut r = Rng::new(seed);
        let w = (0..rows * cols)
            .map(|_| (r.unit() as f32 - 0.5) * 0.1)
            .collect();
        let g = (0..rows * cols).map(|_| r.unit() as f32 * 1e-3).collect();
        (w, g)
    }

    fn all_ops_config() -> GpConfig {
        GpConfig {
            allow_gradient: true,
            ..GpConfig::default()
        }
    }

    #[test]
    fn same_seed_same_trees_and_children() {
        let run = |seed| {
            let mut gp = Gp::new(all_ops_config(), seed);
            let pop = gp.ramped_half_and_half(20);
            let scored: Vec<(Expr, f64)> = pop
                .iter()
                .enumerate()
                .map(|(i, e)| (e.clone(), i as f64))
                .collect();
            let kids: Vec<Expr> = (0..20).filter_map(|_| gp.offspring(&scored)).collect();
            (pop, kids)
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7).0, run(8).0);
    }

    #[test]
    fn every_operator_respects_the_limits() {
        for allow_gradient in [false, true] {
            let config = GpConfig {
                allow_gradient,
                allow_signed_weights: false,
                max_depth: 5,
                max_size: 12,
                max_layer_passes: 1,
                ..GpConfig::default()
            };
            let mut gp = Gp::new(config.clone(), 3);
            let mut pop = gp.ramped_half_and_half(30);
            for i in 0..600 {
                let a = pop[i % pop.len()].clone();
                let b = pop[(i * 7 + 3) % pop.len()].clone();
                let child = match i % 4 {
                    0 => gp.crossover(&a, &b),
                    1 => gp.point_mutation(&a),
                    2 => gp.subtree_mutation(&a),
                    _ => gp.hoist_mutation(&a),
                };
                assert!(config.fits(&child), "{child}");
                assert!(child.depth() <= 5 && child.size() <= 12);
                assert!(allow_gradient || !child.uses_gradient());
                assert!(!child.uses_signed_weights());
                assert!(child.layer_passes() <= 1);
                pop[i % 30] = child;
            }
        }
    }

    #[test]
    fn ramped_trees_have_the_ramped_depths_and_are_distinct() {
        let mut gp = Gp::new(all_ops_config(), 11);
        let pop = gp.ramped_half_and_half(40);
        assert!(pop.iter().all(|e| e.depth() <= 4 && e.size() <= 25));
        // `full` trees reach their depth.
        assert!(pop
            .iter()
            .step_by(2)
            .enumerate()
            .all(|(i, e)| e.depth() == 2 + i % 3));
        let keys: std::collections::HashSet<String> = pop.iter().map(canonical_key).collect();
        assert!(keys.len() >= 38, "{} distinct", keys.len());
    }

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
    fn tournament_prefers_lower_fitness_and_ranks_nan_last() {
        let pop = vec![
            (Expr::W, f64::NAN),
            (Expr::N, 30.0),
            (Expr::X, 10.0),
            (Expr::A, 20.0),
        ];
        let mut gp = Gp::new(
            GpConfig {
                tournament_size: 64,
                ..GpConfig::default()
            },
            1,
        );
        assert_eq!(gp.tournament(&pop), Some(2));
        assert_eq!(gp.tournament(&[]), None);
    }

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
