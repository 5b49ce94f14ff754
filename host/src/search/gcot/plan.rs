//! Choosing a proposal's derivation from the graph of attempts: the operator and its parents, drawn
//! apart from the plans in flight.

use crate::search::archive::{Edge, Node, Operator, Status};
use crate::search::gp::Rng;
use std::collections::HashSet;

/// Which derivation a proposal makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `new`, `mutate`, `crossover` or `repair`.
    pub operator: Operator,
    /// Parents (one for mutate/repair, two for crossover).
    pub parents: Vec<i64>,
}

pub(super) fn fitness(n: &Node) -> Option<f64> {
    (n.status == Status::Evaluated)
        .then_some(n.fitness)
        .flatten()
}

/// Pick the operator and parents of proposal `index` from the graph, deterministically from
/// `seed`.
pub fn plan(nodes: &[Node], edges: &[Edge], proposer: &str, rng: &mut Rng) -> Plan {
    let evaluated: Vec<&Node> = nodes.iter().filter(|n| fitness(n).is_some()).collect();
    // Repair: this proposer's most recent failure with code that has no repair child yet.
    let repaired: HashSet<i64> = edges
        .iter()
        .filter(|e| e.operator == Operator::Repair)
        .map(|e| e.parent)
        .collect();
    let broken = nodes.iter().rev().find(|n| {
        n.proposer == proposer
            && n.status == Status::Failed
            && !n.code.trim().is_empty()
            && !repaired.contains(&n.id)
    });
    if let Some(b) = broken {
        if rng.chance(0.35) {
            return Plan {
                operator: Operator::Repair,
                parents: vec![b.id],
            };
        }
    }
    if evaluated.is_empty() || rng.chance(0.1) {
        return Plan {
            operator: Operator::New,
            parents: Vec::new(),
        };
    }
    let tournament = |rng: &mut Rng| -> &Node {
        let mut best: Option<&Node> = None;
        for _ in 0..3 {
            let c = evaluated[rng.below(evaluated.len())];
            if best.is_none_or(|b| fitness(c) < fitness(b)) {
                best = Some(c);
            }
        }
        best.expect("non-empty")
    };
    let a = tournament(rng);
    if rng.chance(0.25) {
        // A second parent that prunes differently.
        let others: Vec<&Node> = evaluated
            .iter()
            .copied()
            .filter(|n| n.id != a.id && n.mask_hash != a.mask_hash)
            .collect();
        if !others.is_empty() {
            let b = others[rng.below(others.len())];
            return Plan {
                operator: Operator::Crossover,
                parents: vec![a.id, b.id],
            };
        }
    }
    Plan {
        operator: Operator::Mutate,
        parents: vec![a.id],
    }
}

/// Draws a plan as [`plan`] does, again (up to 8 times) while it equals a plan that another
/// request is working on, so that concurrent proposals start from different parents or
/// operators. If every draw collides the last one is kept (the prompt still differs: it lists
/// the plans in flight).
pub fn plan_apart(
    nodes: &[Node],
    edges: &[Edge],
    proposer: &str,
    rng: &mut Rng,
    in_flight: &[Plan],
) -> Plan {
    let mut p = plan(nodes, edges, proposer, rng);
    for _ in 0..8 {
        if !in_flight.contains(&p) {
            break;
        }
        p = plan(nodes, edges, proposer, rng);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::gcot::fixtures::*;

    #[test]
    fn plans_are_deterministic_and_repair_own_failures() {
        let (nodes, edges) = graph();
        let mut ops = HashSet::new();
        for i in 0..200 {
            let p = plan(&nodes, &edges, "llm:m", &mut Rng::new(i));
            assert_eq!(p, plan(&nodes, &edges, "llm:m", &mut Rng::new(i)));
            match &p.operator {
                Operator::Repair => assert_eq!(p.parents, vec![4]),
                Operator::Mutate => assert_eq!(p.parents.len(), 1),
                Operator::Crossover => {
                    assert_eq!(p.parents.len(), 2);
                    assert_ne!(p.parents[0], p.parents[1]);
                }
                Operator::New => assert!(p.parents.is_empty()),
                o => panic!("{o}"),
            }
            ops.insert(p.operator);
        }
        assert_eq!(ops.len(), 4, "{ops:?}");
        // Another proposer's failures are not ours to repair; a repaired one is not again.
        let mut e2 = edges.clone();
        e2.push(edge(6, 4, "repair"));
        for i in 0..100 {
            assert_ne!(
                plan(&nodes, &e2, "llm:m", &mut Rng::new(i)).operator,
                Operator::Repair
            );
            assert_ne!(
                plan(&nodes, &edges, "llm:other", &mut Rng::new(i)).operator,
                Operator::Repair
            );
        }
    }

    #[test]
    fn concurrent_plans_are_drawn_apart() {
        let (nodes, edges) = graph();
        for i in 0..100 {
            let first = plan(&nodes, &edges, "llm:m", &mut Rng::new(i));
            let second = plan_apart(
                &nodes,
                &edges,
                "llm:m",
                &mut Rng::new(i),
                std::slice::from_ref(&first),
            );
            assert_ne!(first, second, "seed {i}");
            // Without anything in flight it is the plain plan.
            assert_eq!(
                plan_apart(&nodes, &edges, "llm:m", &mut Rng::new(i), &[]),
                first
            );
        }
    }
}
