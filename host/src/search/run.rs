//! The search loop: seed → (propose → record → evaluate → record)* → final ranking.
//!
//! **Pools.** Proposals and evaluations run in two bounded pools: proposals are futures on a
//! tokio runtime (an LLM proposer does its HTTP there; the offline proposers are immediate),
//! evaluations run on `eval_workers` blocking threads (each with its own read connection to
//! the archive). At most `lookahead` candidates are proposed but not yet evaluated, so a fast
//! proposer cannot run ahead of the evidence, and a slow or dead endpoint never blocks an
//! evaluation: whatever is queued keeps being evaluated while proposals wait. Only the
//! coordinating task writes to the archive.
//!
//! **Resume.** Everything a proposer needs is read back from the archive, and a proposer's
//! randomness is derived from (run seed, proposal index), so a resumed run continues where it
//! stopped: nodes left pending by a crash are evaluated first, seeds are never added twice,
//! and every budget (candidates, tokens, cost, wall time) counts what the archive already
//! holds.
//!
//! **Stopping.** When a budget is spent, nothing new is proposed and the queue is evaluated.
//! Near the end of a wall-time budget no proposal starts that would not finish in time: once
//! proposals have been timed, one starts only while the time left is at least their mean
//! duration ([`ProposalClock`]), so a slow local model's last request is not started only to be
//! abandoned at the deadline.
//! When `stop` is set (Ctrl-C) or the wall time is spent, nothing new starts: evaluations in
//! flight finish and are recorded, proposals in flight get [`HALT_GRACE`] to land (recorded,
//! their candidates left `pending`), after which they are abandoned (a request cut off mid-way
//! is not recorded, nor is its candidate). Candidates queued but not evaluated stay `pending`
//! and are evaluated on `--resume` (after a wall-time stop, with a larger `--budget-minutes`:
//! a spent wall-time budget starts nothing, not even pending evaluations). A candidate whose
//! source is being evaluated waits for that evaluation, then reuses its result; two candidates
//! with different sources but the same probe masks may still both be evaluated when several
//! threads take them at once (the mask dedup sees finished nodes only).

use super::archive::{Archive, ArchiveError, Call, NewNode, Node, Outcome, Stage, Status, Verdict};
use super::cascade::{EvalError, Evaluator, HostFault};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// What a proposer produced for one request.
#[derive(Debug, Clone, Default)]
pub struct Proposal {
    /// The node to record (its `proposer` field set to [`Proposer::name`]).
    pub node: NewNode,
    /// A typed verdict when the proposal produced no usable candidate (a response with no
    /// code, an endpoint that gave up): the node is recorded as failed at stage `propose`.
    pub failure: Option<Verdict>,
    /// Proposer calls (prompts and responses) behind it, recorded with it.
    pub calls: Vec<Call>,
}

/// What a proposer sees: the run's graph so far.
#[derive(Debug, Clone)]
pub struct Context {
    /// 0-based index of the proposal in the run (seeds excluded).
    pub index: u64,
    /// Every node so far.
    pub nodes: Vec<Node>,
    /// Every edge so far.
    pub edges: Vec<super::archive::Edge>,
}

/// A future a proposer returns.
pub type ProposalFuture = Pin<Box<dyn Future<Output = anyhow::Result<Proposal>> + Send>>;

/// Something that proposes candidates from the run's history.
pub trait Proposer: Send + Sync {
    /// Name recorded with every node (`gp`, `random`, `llm:<model>`).
    fn name(&self) -> String;
    /// Propose the `ctx.index`-th candidate. An `Err` records nothing (and counts towards the
    /// consecutive-failure limit); a failed request that should be on record is an `Ok` with
    /// [`Proposal::failure`] set.
    fn propose(&self, ctx: Context) -> ProposalFuture;
    /// Estimated tokens of one more proposal (for the token and cost budgets; 0 = free).
    fn estimate_tokens(&self) -> u64 {
        0
    }
    /// Cost of recorded tokens (prompt, completion).
    fn cost(&self, _prompt_tokens: u64, _completion_tokens: u64) -> f64 {
        0.0
    }
}

/// Budgets of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Proposed candidates (seeds excluded).
    pub candidates: u64,
    /// Proposer tokens (0 = unlimited).
    pub tokens: u64,
    /// Wall-clock seconds of searching, summed over every session of the run (0 = unlimited).
    pub seconds: f64,
    /// Proposer cost (prices per 1K tokens × tokens; 0 = unlimited).
    pub cost: f64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            candidates: 200,
            tokens: 0,
            seconds: 0.0,
            cost: 0.0,
        }
    }
}

/// Parallelism of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pools {
    /// Proposals in flight at once.
    pub proposal_workers: usize,
    /// Evaluation threads.
    pub eval_workers: usize,
    /// Candidates proposed but not yet evaluated (in flight, queued or being evaluated), at most.
    pub lookahead: usize,
    /// Consecutive failed proposals after which the run stops.
    pub max_proposal_failures: usize,
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            proposal_workers: 1,
            eval_workers: 1,
            lookahead: 1,
            max_proposal_failures: 10,
        }
    }
}

/// How long proposals in flight may still land after a halt (Ctrl-C, wall time).
pub const HALT_GRACE: Duration = Duration::from_secs(20);

/// Meta key of the wall-clock seconds the run has searched so far (all sessions).
pub const ELAPSED_KEY: &str = "elapsed_seconds";

/// Why the loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// The candidate budget is spent.
    Candidates,
    /// The token budget is spent.
    Tokens,
    /// The cost budget is spent.
    Cost,
    /// The wall-time budget is spent.
    Time,
    /// Interrupted (Ctrl-C).
    Interrupted,
    /// The proposer failed `max_proposal_failures` times in a row.
    ProposerFailing,
}

/// Errors of the loop.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The archive failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The runtime could not start, or a worker died.
    #[error("search runtime: {0}")]
    Runtime(String),
    /// The host failed while evaluating a candidate (nothing the candidate did, so not its
    /// verdict): the run stopped, and the candidate stays `pending`.
    #[error(
        "host fault while evaluating node #{node}: {fault} (the node is left pending; \
         `autoprune search --resume` evaluates it again)"
    )]
    HostFault {
        /// The node being evaluated.
        node: i64,
        /// What failed.
        fault: HostFault,
    },
    /// The host failed while measuring a node on the held-out windows.
    #[error("host fault while measuring node #{node} on the held-out windows: {fault}")]
    HeldoutFault {
        /// The node being measured.
        node: i64,
        /// What failed.
        fault: HostFault,
    },
}

/// What the loop needs of an evaluator: the ladder's outcome for a node, or a fault of the
/// host (then the node gets no outcome).
pub trait Evaluate: Sync {
    /// Run the ladder on `node` (`always_promote`: past the screen whatever its ratio).
    fn evaluate(
        &self,
        archive: &Archive,
        node: &Node,
        always_promote: bool,
    ) -> Result<Outcome, HostFault>;
}

impl Evaluate for Evaluator {
    fn evaluate(
        &self,
        archive: &Archive,
        node: &Node,
        always_promote: bool,
    ) -> Result<Outcome, HostFault> {
        Evaluator::evaluate(self, archive, node, always_promote)
    }
}

/// Events for progress display.
pub enum Event<'a> {
    /// A proposal was recorded (and queued for evaluation unless it failed).
    Proposed(&'a Node),
    /// A proposal failed without a record (the error).
    ProposerError(&'a str),
    /// A node finished the cascade.
    Finished(&'a Node, &'a Outcome),
    /// The held-out ranking measured a node.
    Heldout(&'a Node, f64),
}

/// An evaluation thread's answer: the node and its outcome, or the host's fault.
type Done = (Node, Result<Outcome, HostFault>);

struct Job {
    node: Node,
    /// Seeds (the baselines) climb every level whatever their screen.
    always_promote: bool,
}

/// The mean duration of the proposals of this session, which decides whether another one can
/// finish before the wall-time budget ends.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProposalClock {
    count: u32,
    total_s: f64,
}

impl ProposalClock {
    /// Count one finished proposal that took `seconds`.
    pub fn record(&mut self, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.count += 1;
            self.total_s += seconds;
        }
    }

    /// The mean duration so far (`None` before the first proposal finished).
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.total_s / self.count as f64)
    }

    /// Whether a proposal started now is expected to finish within `remaining_s`; with no
    /// measurement yet it may start.
    pub fn fits(&self, remaining_s: f64) -> bool {
        self.mean().is_none_or(|m| m <= remaining_s)
    }
}

/// Run (or resume) a search until a budget is spent, the proposer keeps failing, or `stop` is
/// set. A fault of the host while evaluating a candidate stops it too, as an error
/// ([`SearchError::HostFault`]): nothing new starts, what is in flight lands, and the candidate
/// stays `pending` for `--resume`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    archive: &mut Archive,
    evaluator: &dyn Evaluate,
    proposer: Arc<dyn Proposer>,
    seeds: &[NewNode],
    budget: Budget,
    pools: Pools,
    stop: &AtomicBool,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<Stop, SearchError> {
    archive.seed(seeds)?;
    let path: PathBuf = archive.path().to_path_buf();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| SearchError::Runtime(e.to_string()))?;
    let workers = pools.eval_workers.max(1);
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let rx = job_rx.clone();
            let done = done_tx.clone();
            let path = path.clone();
            scope.spawn(move || {
                let reader = match Archive::open_existing(&path) {
                    Ok(a) => a,
                    Err(_) => return,
                };
                loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    // A host bug must not lose the job (the coordinator counts on an answer).
                    let o = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        evaluator.evaluate(&reader, &job.node, job.always_promote)
                    }))
                    .unwrap_or_else(|p| {
                        Ok(Outcome {
                            status: Some(Status::Failed),
                            stage: Stage::Host,
                            verdict: Some(Verdict::HostPanic {
                                message: p
                                    .downcast_ref::<String>()
                                    .cloned()
                                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                    .unwrap_or_default(),
                            }),
                            ..Outcome::default()
                        })
                    });
                    if done.send((job.node, o)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let result = rt.block_on(coordinate(
            archive, proposer, budget, pools, stop, events, job_tx, done_rx,
        ));
        result
    })
}

#[allow(clippy::too_many_arguments)]
async fn coordinate(
    archive: &mut Archive,
    proposer: Arc<dyn Proposer>,
    budget: Budget,
    pools: Pools,
    stop: &AtomicBool,
    events: &mut dyn FnMut(Event<'_>),
    job_tx: mpsc::Sender<Job>,
    mut done_rx: tokio::sync::mpsc::UnboundedReceiver<Done>,
) -> Result<Stop, SearchError> {
    let prior: f64 = archive
        .meta(ELAPSED_KEY)?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let t0 = Instant::now();
    let elapsed = || prior + t0.elapsed().as_secs_f64();
    let workers = pools.eval_workers.max(1);
    // Nodes a crash left pending (seeds first: they have the lowest ids).
    let mut queue: VecDeque<Node> = archive.pending()?.into();
    let mut evaluating = 0usize;
    let mut proposing: tokio::task::JoinSet<anyhow::Result<Proposal>> = tokio::task::JoinSet::new();
    // When each proposal in flight started, and how long the finished ones took.
    let mut started: std::collections::HashMap<tokio::task::Id, Instant> =
        std::collections::HashMap::new();
    let mut clock = ProposalClock::default();
    let mut next_index = archive.proposed_count()?;
    // Counters kept in memory (the archive is read in full only to build a proposal's context).
    let mut proposed = next_index;
    let (mut prompt_tokens, mut completion_tokens) = archive.token_split()?;
    let mut seeds_pending = queue.iter().filter(|n| n.operator.is_seed()).count();
    let mut failures = 0usize;
    let mut in_eval: std::collections::HashSet<String> = std::collections::HashSet::new();
    // Halted (Ctrl-C, wall time): nothing new starts. Blocked: no new proposal can start now.
    let mut halt: Option<Stop> = None;
    // A fault of the host in an evaluation: the run halts, then ends with it.
    let mut fault: Option<SearchError> = None;
    let mut halted_at = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        if halt.is_none() {
            if stop.load(Ordering::SeqCst) {
                halt = Some(Stop::Interrupted);
            } else if budget.seconds > 0.0 && elapsed() >= budget.seconds {
                halt = Some(Stop::Time);
            }
            halted_at = Instant::now();
        }
        // Proposals in flight get a grace period to land (their calls and tokens recorded; the
        // candidate stays pending for `--resume`), then they are abandoned.
        if halt.is_some() && !proposing.is_empty() && halted_at.elapsed() >= HALT_GRACE {
            proposing.abort_all();
        }
        // Hand queued candidates to free evaluation threads (the baselines first: no proposal
        // is evaluated before every seed is, so proposers see the baselines' results).
        while halt.is_none() && evaluating < workers {
            let Some(front) = queue.front() else { break };
            if !front.operator.is_seed() && seeds_pending > 0 {
                break;
            }
            // The same source is being evaluated: wait for it (then the cache answers).
            if in_eval.contains(&front.source_hash) {
                break;
            }
            let node = queue.pop_front().expect("front exists");
            in_eval.insert(node.source_hash.clone());
            let always_promote = node.operator.is_seed();
            job_tx
                .send(Job {
                    node,
                    always_promote,
                })
                .map_err(|_| SearchError::Runtime("every evaluation thread died".into()))?;
            evaluating += 1;
        }
        // Can another proposal start? (`None` = yes.)
        let in_flight = proposing.len() as u64;
        let per = proposer.estimate_tokens();
        let (pt, ct) = (prompt_tokens, completion_tokens);
        let blocked = if failures >= pools.max_proposal_failures.max(1) {
            Some(Stop::ProposerFailing)
        } else if proposed + in_flight >= budget.candidates {
            Some(Stop::Candidates)
        } else if budget.tokens > 0 && pt + ct + in_flight * per >= budget.tokens {
            Some(Stop::Tokens)
        } else if budget.cost > 0.0
            && proposer.cost(pt, ct) + proposer.cost(in_flight * per, 0) >= budget.cost
        {
            Some(Stop::Cost)
        } else if budget.seconds > 0.0 && !clock.fits(budget.seconds - elapsed()) {
            // Too little time left for another proposal to finish: let the ones in flight
            // land and the queue be evaluated, then stop.
            Some(Stop::Time)
        } else {
            None
        };
        if halt.is_none() && blocked.is_none() && seeds_pending == 0 {
            let outstanding = proposing.len() + queue.len() + evaluating;
            if proposing.len() < pools.proposal_workers.max(1)
                && outstanding < pools.lookahead.max(1)
            {
                let ctx = Context {
                    index: next_index,
                    nodes: archive.nodes()?,
                    edges: archive.edges()?,
                };
                next_index += 1;
                let handle = proposing.spawn(proposer.propose(ctx));
                started.insert(handle.id(), Instant::now());
                continue;
            }
        }
        // Done?
        if evaluating == 0 && proposing.is_empty() {
            let done = match halt {
                Some(h) => Some(h),
                None if queue.is_empty() => blocked,
                None => None,
            };
            if let Some(r) = done {
                archive.set_meta(ELAPSED_KEY, &format!("{:.3}", elapsed()))?;
                return match fault {
                    Some(e) => Err(e),
                    None => Ok(r),
                };
            }
        }
        tokio::select! {
            Some(joined) = proposing.join_next_with_id(), if !proposing.is_empty() => {
                let id = match &joined {
                    Ok((id, _)) => *id,
                    Err(e) => e.id(),
                };
                let began = started.remove(&id);
                match joined.map(|(_, p)| p) {
                    Ok(Ok(p)) => {
                        if let Some(t) = began {
                            clock.record(t.elapsed().as_secs_f64());
                        }
                        let id = archive.record(&p.node, p.failure.as_ref(), &p.calls)?;
                        proposed += 1;
                        for c in &p.calls {
                            prompt_tokens = prompt_tokens.saturating_add(c.prompt_tokens);
                            completion_tokens =
                                completion_tokens.saturating_add(c.completion_tokens);
                        }
                        if p.failure.is_some() {
                            failures += 1;
                        } else {
                            failures = 0;
                        }
                        if let Some(node) = archive.node(id)? {
                            events(Event::Proposed(&node));
                            if node.status == Status::Pending {
                                queue.push_back(node);
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        failures += 1;
                        let msg = format!("{e:#}");
                        events(Event::ProposerError(&msg));
                    }
                    Err(e) if e.is_cancelled() => {}
                    Err(e) => {
                        failures += 1;
                        let msg = format!("the proposer panicked: {e}");
                        events(Event::ProposerError(&msg));
                    }
                }
            }
            done = done_rx.recv(), if evaluating > 0 => {
                let Some((node, result)) = done else {
                    return Err(SearchError::Runtime("every evaluation thread died".into()));
                };
                evaluating -= 1;
                in_eval.remove(&node.source_hash);
                let o = match result {
                    Ok(o) => o,
                    Err(f) => {
                        // Not the candidate's verdict: nothing is recorded for it (it stays
                        // pending). Nothing new starts; the run ends with the fault.
                        halt.get_or_insert(Stop::Interrupted);
                        fault.get_or_insert(SearchError::HostFault {
                            node: node.id,
                            fault: f,
                        });
                        continue;
                    }
                };
                archive.finish(node.id, &o)?;
                if node.operator.is_seed() {
                    seeds_pending = seeds_pending.saturating_sub(1);
                }
                archive.set_meta(ELAPSED_KEY, &format!("{:.3}", elapsed()))?;
                events(Event::Finished(&node, &o));
            }
            _ = tick.tick() => {}
        }
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
        if n.operator.is_seed()
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
        let level = match evaluator.heldout(&n.code) {
            Ok(level) => level,
            // The candidate failed on the held-out windows: it stays unranked.
            Err(EvalError::Guest(_)) => continue,
            Err(EvalError::Host(fault)) => {
                return Err(SearchError::HeldoutFault { node: n.id, fault })
            }
        };
        let ratio = level.combined.ratio();
        let mut detail: super::cascade::Detail = n
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default();
        detail.heldout = Some(level);
        let text = serde_json::to_string(&detail).unwrap_or_default();
        archive.set_heldout(n.id, ratio)?;
        archive.set_detail(n.id, &text)?;
        n.heldout = Some(ratio);
        n.detail = Some(text);
        events(Event::Heldout(n, ratio));
    }
    best.sort_by(|a, b| {
        a.heldout
            .unwrap_or(f64::MAX)
            .total_cmp(&b.heldout.unwrap_or(f64::MAX))
    });
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::archive::{Operator, ProposerName};

    /// Evaluates every node at once, except that the host fails on the node whose code is
    /// `fault`.
    struct Fake {
        fault: Option<&'static str>,
    }

    impl Evaluate for Fake {
        fn evaluate(&self, _: &Archive, node: &Node, _: bool) -> Result<Outcome, HostFault> {
            if self.fault == Some(node.code.as_str()) {
                return Err(HostFault::PoisonedLock);
            }
            Ok(Outcome {
                status: Some(Status::Evaluated),
                stage: Stage::Sequential,
                fitness: Some(1.0),
                ..Outcome::default()
            })
        }
    }

    /// Never asked (the candidate budget is 0: only the seeds are evaluated).
    struct Never;

    impl Proposer for Never {
        fn name(&self) -> String {
            "never".into()
        }

        fn propose(&self, _: Context) -> ProposalFuture {
            Box::pin(async { anyhow::bail!("not asked") })
        }
    }

    #[test]
    fn a_host_fault_stops_the_run_and_leaves_the_candidate_pending() {
        let dir = tempfile::tempdir().unwrap();
        let mut archive = Archive::open(&dir.path().join("a.sqlite")).unwrap();
        let seeds: Vec<NewNode> = ["a", "b", "c"]
            .map(|code| NewNode {
                proposer: ProposerName::Seed,
                operator: Operator::Seed,
                code: code.into(),
                ..NewNode::default()
            })
            .to_vec();
        let budget = Budget {
            candidates: 0,
            ..Budget::default()
        };
        let stop = AtomicBool::new(false);
        let go = |archive: &mut Archive, ev: &Fake| {
            run(
                archive,
                ev,
                Arc::new(Never),
                &seeds,
                budget,
                Pools::default(),
                &stop,
                &mut |_| {},
            )
        };
        let e = go(&mut archive, &Fake { fault: Some("b") }).unwrap_err();
        match &e {
            SearchError::HostFault { node, fault } => {
                assert_eq!((*node, fault), (2, &HostFault::PoisonedLock))
            }
            e => panic!("{e}"),
        }
        assert!(e.to_string().contains("left pending"), "{e}");
        // The first seed was evaluated; the one the host failed on is pending (no stage, no
        // verdict), and nothing started after the fault.
        let nodes = archive.nodes().unwrap();
        let status: Vec<Status> = nodes.iter().map(|n| n.status).collect();
        assert_eq!(
            status,
            [Status::Evaluated, Status::Pending, Status::Pending]
        );
        assert_eq!((&nodes[1].stage, &nodes[1].verdict), (&None, &None));
        // `--resume` evaluates it again.
        let why = go(&mut archive, &Fake { fault: None }).unwrap();
        assert_eq!(why, Stop::Candidates);
        let nodes = archive.nodes().unwrap();
        assert!(
            nodes.iter().all(|n| n.status == Status::Evaluated),
            "{nodes:?}"
        );
    }
}
