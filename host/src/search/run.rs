//! The search loop: seed → (propose → record → evaluate → record)* → final ranking.
//!
//! Everything a proposer needs is read back from the archive, and a proposer's randomness is
//! derived from (run seed, proposal index), so a resumed run continues exactly where it
//! stopped: nodes left pending by a crash are evaluated first, seeds are never added twice,
//! and the candidate budget counts what is already in the archive.

use super::archive::{Archive, ArchiveError, NewNode, Node, Outcome, Status};
use super::cascade::Evaluator;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

/// Something that proposes candidates from the run's history.
pub trait Proposer {
    /// Name recorded with every node (`gp`, `random`, `llm:<model>`).
    fn name(&self) -> String;
    /// Propose the `index`-th candidate of the run (0-based), given every node so far, as the
    /// node to record (its `proposer` field set to [`Proposer::name`]).
    fn propose(&mut self, history: &[Node], index: u64) -> anyhow::Result<NewNode>;
}

/// Budgets of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Proposed candidates (seeds excluded).
    pub candidates: u64,
    /// Proposer tokens (0 = unlimited).
    pub tokens: u64,
}

/// Why the loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// The candidate budget is spent.
    Candidates,
    /// The token budget is spent.
    Tokens,
    /// Interrupted (Ctrl-C).
    Interrupted,
}

/// Errors of the loop.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The archive failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The proposer failed repeatedly.
    #[error("the proposer failed: {0}")]
    Proposer(String),
}

/// Events for progress display.
pub enum Event<'a> {
    /// A node finished the cascade.
    Finished(&'a Node, &'a Outcome),
    /// The held-out ranking measured a node.
    Heldout(&'a Node, f64),
}

/// The best baseline proxy: the lowest proxy among evaluated seed nodes.
pub fn baseline_proxy(nodes: &[Node]) -> Option<f64> {
    nodes
        .iter()
        .filter(|n| n.operator == "seed" && n.status == Status::Evaluated)
        .filter_map(|n| n.proxy)
        .min_by(f64::total_cmp)
}

/// Run (or resume) a search until the budget is spent or `stop` is set.
pub fn run(
    archive: &mut Archive,
    evaluator: &Evaluator,
    proposer: &mut dyn Proposer,
    seeds: &[NewNode],
    budget: Budget,
    stop: &AtomicBool,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<Stop, SearchError> {
    archive.seed(seeds)?;
    // Nodes a crash left pending (seeds first: they have the lowest ids).
    for node in archive.pending()? {
        if stop.load(Ordering::SeqCst) {
            return Ok(Stop::Interrupted);
        }
        let base = if node.operator == "seed" {
            None
        } else {
            baseline_proxy(&archive.nodes()?)
        };
        let o = evaluator.evaluate(archive, &node, base);
        archive.finish(node.id, &o)?;
        events(Event::Finished(&node, &o));
    }
    let mut proposer_failures = 0;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(Stop::Interrupted);
        }
        let done = archive.proposed_count()?;
        if done >= budget.candidates {
            return Ok(Stop::Candidates);
        }
        if budget.tokens > 0 && archive.tokens_spent()? >= budget.tokens {
            return Ok(Stop::Tokens);
        }
        let history = archive.nodes()?;
        let p = match proposer.propose(&history, done) {
            Ok(p) => p,
            Err(e) => {
                proposer_failures += 1;
                if proposer_failures >= 5 {
                    return Err(SearchError::Proposer(format!("{e:#}")));
                }
                continue;
            }
        };
        proposer_failures = 0;
        let id = archive.add(&p)?;
        let Some(node) = archive.node(id)? else {
            continue;
        };
        let o = evaluator.evaluate(archive, &node, baseline_proxy(&history));
        archive.finish(id, &o)?;
        events(Event::Finished(&node, &o));
    }
}

/// The final ranking: measure the `top` best nodes by fitness (duplicates excluded) on the
/// held-out evaluation windows, skipping those already measured. Returns them best first.
pub fn rank_heldout(
    archive: &Archive,
    evaluator: &Evaluator,
    top: usize,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<Vec<Node>, SearchError> {
    let mut best: Vec<Node> = archive
        .nodes()?
        .into_iter()
        .filter(|n| n.status == Status::Evaluated && n.fitness.is_some())
        .collect();
    best.sort_by(|a, b| {
        a.fitness
            .unwrap_or(f64::MAX)
            .total_cmp(&b.fitness.unwrap_or(f64::MAX))
    });
    best.truncate(top);
    // Always include the seeds (the baselines) so the table compares against them.
    for n in archive.nodes()? {
        if n.operator == "seed"
            && n.status == Status::Evaluated
            && !best.iter().any(|b| b.id == n.id)
        {
            best.push(n);
        }
    }
    for n in best.iter_mut() {
        if n.heldout.is_some() {
            continue;
        }
        if let Ok(ppl) = evaluator.heldout(&n.code) {
            archive.set_heldout(n.id, ppl)?;
            n.heldout = Some(ppl);
            events(Event::Heldout(n, ppl));
        }
    }
    best.sort_by(|a, b| {
        a.heldout
            .unwrap_or(f64::MAX)
            .total_cmp(&b.heldout.unwrap_or(f64::MAX))
    });
    Ok(best)
}
