//! The genetic operators: seeded random trees, tournament selection, crossover and mutation within
//! a configuration's limits.

use super::expression::{BinOp, Expr, UnOp, CONSTANTS, VARIABLES};
use super::plan::fuel_estimate;
use super::simplify::canonical_key;
use super::Rng;
use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::gp::fixtures::all_ops_config;

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
}
