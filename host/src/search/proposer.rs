//! The offline proposers: symbolic genetic programming over [`gp::Expr`] trees, and random
//! sampling of trees (the baseline every search result is compared against).
//!
//! Every tree is rendered to a candidate source file ([`gp::render`]) and goes through the same
//! sandboxed builder and cascade as any other candidate; there is no special lane.
//!
//! Determinism and resume: the random stream of proposal `i` is seeded from `(run seed, i)`,
//! and the population is read from the archive, so a resumed run proposes exactly what the
//! uninterrupted run would have.

use super::archive::{NewNode, Node, Operator, ProposerName, Status};
use super::gp::{
    self, canonical_key, render, simplify, to_infix, BinOp, Expr, Gp, GpConfig, Num, Rng,
};
use super::run::{Context, Proposal, ProposalFuture, Proposer};
use std::collections::HashSet;

/// Proposals that are random trees before the GP starts breeding (the initial population).
pub const INITIAL_POPULATION: u64 = 8;

/// The GP (or random-sampling) proposer.
pub struct GpProposer {
    config: GpConfig,
    seed: u64,
    random_only: bool,
    tune_prob: f64,
}

/// Factors a `tune` step scales a constant by.
const TUNE_FACTORS: [f32; 4] = [0.5, 0.8, 1.25, 2.0];

/// Constant tuning: scale one constant of `e` by a factor of [`TUNE_FACTORS`]; a tree without
/// constants gets one, weighting one side of a sum or difference by 0.3 or 3 (only a sum's
/// balance changes a ranking; a constant factor on a whole product does not). `None` when the
/// tree has neither.
pub fn tune(e: &Expr, rng: &mut Rng) -> Option<Expr> {
    let n = e.size();
    let consts: Vec<usize> = (0..n)
        .filter(|&i| matches!(e.subtree(i), Some(Expr::Const(_))))
        .collect();
    if !consts.is_empty() {
        let i = consts[rng.below(consts.len())];
        let Some(Expr::Const(Num(c))) = e.subtree(i) else {
            return None;
        };
        let f = TUNE_FACTORS[rng.below(TUNE_FACTORS.len())];
        return Some(e.replace_subtree(i, &Expr::Const(Num(c * f))));
    }
    let sums: Vec<usize> = (0..n)
        .filter(|&i| {
            matches!(
                e.subtree(i),
                Some(Expr::Binary(BinOp::Add | BinOp::Sub, _, _))
            )
        })
        .collect();
    if sums.is_empty() {
        return None;
    }
    let i = sums[rng.below(sums.len())];
    let Some(Expr::Binary(op, a, b)) = e.subtree(i) else {
        return None;
    };
    let w = Expr::Const(Num(if rng.chance(0.5) { 0.3 } else { 3.0 }));
    let weighted = if rng.chance(0.5) {
        Expr::bin(*op, Expr::bin(BinOp::Mul, w, (**a).clone()), (**b).clone())
    } else {
        Expr::bin(*op, (**a).clone(), Expr::bin(BinOp::Mul, w, (**b).clone()))
    };
    Some(e.replace_subtree(i, &weighted))
}

pub(crate) fn mix(seed: u64, index: u64) -> u64 {
    // SplitMix64 finaliser of (seed, index): independent streams per proposal.
    crate::rng::finalize(seed ^ index.wrapping_mul(crate::rng::GOLDEN))
}

impl GpProposer {
    /// A proposer with `config`, seeded by `seed`; `random_only` = random sampling baseline.
    pub fn new(config: GpConfig, seed: u64, random_only: bool) -> Self {
        GpProposer {
            config,
            seed,
            random_only,
            tune_prob: 0.0,
        }
    }

    /// With probability `p` a breeding step is constant tuning ([`tune`]) of a tournament
    /// winner instead of crossover or mutation.
    pub fn with_tuning(mut self, p: f64) -> Self {
        self.tune_prob = p.clamp(0.0, 1.0);
        self
    }

    /// The seed candidates of every run: the built-in baselines as trees (so they also take
    /// part in crossover): magnitude, Wanda and RIA, and with the gradient statistic GBLM and
    /// Pruner-Zero's best tree.
    pub fn seeds(gradient: bool) -> Vec<NewNode> {
        let mut seeds = vec![
            (Expr::magnitude(), "magnitude: |W|"),
            (Expr::wanda(), "Wanda: |W| · ‖X‖₂"),
            (Expr::ria(), "RIA: (|W|/Σ_col|W| + |W|/Σ_row|W|) · ‖X‖₂^0.5"),
        ];
        if gradient {
            seeds.push((Expr::gblm(), "GBLM: |W| · (‖X‖₂ + √32 · G)"));
            seeds.push((Expr::pruner_zero_best(), "Pruner-Zero: |W|² · mms(G)"));
        }
        seeds
            .into_iter()
            .map(|(e, thought)| seed_node(&e, thought))
            .collect()
    }
}

fn seed_node(e: &Expr, thought: &str) -> NewNode {
    NewNode {
        proposer: ProposerName::Seed,
        operator: Operator::Seed,
        thought: thought.into(),
        code: render(e, "seed"),
        expr: serde_json::to_string(e).ok(),
        parents: Vec::new(),
        tokens: 0,
    }
}

impl Proposer for GpProposer {
    fn name(&self) -> String {
        if self.random_only {
            "random".into()
        } else {
            "gp".into()
        }
    }

    fn propose(&self, ctx: Context) -> ProposalFuture {
        let r = self
            .propose_now(&ctx.nodes, ctx.index)
            .map(|node| Proposal {
                node,
                ..Proposal::default()
            });
        Box::pin(std::future::ready(r))
    }
}

impl GpProposer {
    /// Propose the `index`-th candidate of the run from `history` (what [`Proposer::propose`]
    /// returns, computed at once).
    pub fn propose_now(&self, history: &[Node], index: u64) -> anyhow::Result<NewNode> {
        let mut gp = Gp::new(self.config.clone(), mix(self.seed, index));
        // The population: every tree the ladder scored, with its best-informed score (lower is
        // better): the sequential level's ratio to Wanda where it got there, else its screen
        // ratio (a noisier estimate of the same ratio; its rank agreement with the held-out
        // text is measured by `autoprune fidelity`). Screened trees thus still breed, and the
        // cheap screen carries most of the selection.
        let population: Vec<(Expr, f64, i64)> = history
            .iter()
            .filter(|n| matches!(n.status, Status::Evaluated | Status::Screened))
            .filter_map(|n| {
                let e: Expr = serde_json::from_str(n.expr.as_deref()?).ok()?;
                let score = n.fitness.or(n.proxy).filter(|f| f.is_finite())?;
                Some((e, score, n.id))
            })
            .collect();
        let seen: HashSet<String> = history
            .iter()
            .filter_map(|n| serde_json::from_str::<Expr>(n.expr.as_deref()?).ok())
            .map(|e| canonical_key(&e))
            .collect();
        let pairs: Vec<(Expr, f64)> = population.iter().map(|(e, f, _)| (e.clone(), *f)).collect();
        let breed = !self.random_only && index >= INITIAL_POPULATION && pairs.len() >= 2;
        for _ in 0..64 {
            let (tree, operator, parents): (Expr, Operator, Vec<usize>) = if breed {
                let a = gp.tournament(&pairs).unwrap_or(0);
                let tuned = if self.tune_prob > 0.0 && gp.rng.chance(self.tune_prob) {
                    tune(&pairs[a].0, &mut gp.rng)
                } else {
                    None
                };
                if let Some(t) = tuned {
                    (t, Operator::Tune, vec![a])
                } else if gp.rng.chance(self.config.crossover_prob) {
                    let b = gp.tournament(&pairs).unwrap_or(0);
                    let mut child = gp.crossover(&pairs[a].0, &pairs[b].0);
                    if gp.rng.chance(self.config.mutation_prob) {
                        child = gp.mutate(&child);
                    }
                    (child, Operator::Crossover, vec![a, b])
                } else {
                    (gp.mutate(&pairs[a].0), Operator::Mutate, vec![a])
                }
            } else {
                let depth = self.config.init_min_depth
                    + gp.rng.below(
                        self.config
                            .init_max_depth
                            .saturating_sub(self.config.init_min_depth)
                            + 1,
                    );
                let full = gp.rng.chance(0.5);
                (gp.random_tree(depth, full), Operator::New, Vec::new())
            };
            let tree = simplify(&tree);
            if !self.config.fits(&tree) || seen.contains(&canonical_key(&tree)) {
                continue;
            }
            let formula = to_infix(&tree);
            let parents: Vec<(i64, String)> = parents
                .iter()
                .map(|&i| {
                    let (pe, pf, pid) = &population[i];
                    (
                        *pid,
                        format!("{operator} of {} ({pf:.4} × Wanda)", to_infix(pe)),
                    )
                })
                .collect();
            let thought = match &operator {
                Operator::New => format!("random tree: {formula}"),
                op => format!("{op}: {formula}"),
            };
            return Ok(NewNode {
                proposer: self.name().into(),
                operator,
                thought,
                code: render(&tree, &format!("{}-{index}", self.name())),
                expr: serde_json::to_string(&tree).ok(),
                parents,
                tokens: 0,
            });
        }
        anyhow::bail!(
            "no new tree after 64 attempts (the space under these limits may be exhausted)"
        )
    }
}

/// Re-export for the CLI.
pub use gp::GpConfig as GpSettings;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_scales_a_constant_or_weights_a_sum() {
        let mut rng = Rng::new(3);
        // A constant is scaled by one of the factors.
        let e: Expr = "add(mul(W,N),mul(10,W))".parse().unwrap();
        let t = tune(&e, &mut rng).unwrap();
        let c = (0..t.size())
            .find_map(|i| match t.subtree(i) {
                Some(Expr::Const(Num(c))) => Some(*c),
                _ => None,
            })
            .unwrap();
        assert!(TUNE_FACTORS.iter().any(|f| c == 10.0 * f), "{t}");
        // No constant: one side of the sum gets a weight.
        let e: Expr = "add(mul(W,N),W)".parse().unwrap();
        let t = tune(&e, &mut rng).unwrap().to_string();
        assert!(t.contains("mul(0.3,") || t.contains("mul(3,"), "{t}");
        // Neither: nothing to tune.
        assert!(tune(&Expr::wanda(), &mut rng).is_none());
    }
}
