//! How far a run's proposals get through the cascade (parse, compile, check, promotion to the
//! sequential level) and how fast its proposer answers (seconds per request, and the prompt and
//! generation speed that llama.cpp reports in its final stream chunk): the numbers that compare
//! proposers, e.g. a local LLM against GP, on the same objective; and what each derivation
//! operator's children did (the evidence for keeping an operator).

use super::archive::{Call, Edge, Node, Stage, Status};
use super::gcot::endpoint_failure;
use serde::Serialize;

/// Counts and rates of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Funnel {
    /// Proposals recorded (seeds and pending ones excluded).
    pub proposed: usize,
    /// Proposals the endpoint answered (not an HTTP error, timeout or broken connection).
    pub answered: usize,
    /// Answers with a code block (or a GP tree).
    pub parsed: usize,
    /// Parsed candidates that compiled in the sandbox.
    pub compiled: usize,
    /// Compiled candidates that passed the checks (valid, finite, deterministic scores).
    pub checked: usize,
    /// Checked candidates that passed the one-shot screen and were measured on the sequential level
    /// (duplicates excluded: they reuse their twin's result).
    pub promoted: usize,
    /// Candidates that pruned exactly like an earlier one (their result reused).
    pub duplicates: usize,
    /// Mean seconds of the proposer's requests per proposal (all attempts), if it made any.
    pub seconds_per_proposal: Option<f64>,
    /// Prompt tokens per second over every call that reported timings (llama.cpp).
    pub prompt_tokens_per_s: Option<f64>,
    /// Generated tokens per second over every call that reported timings (llama.cpp).
    pub generation_tokens_per_s: Option<f64>,
}

/// The stage a node failed at, if it failed (a duplicate of a failure failed where its
/// original did): `Some(None)` when it failed with no stage recorded.
fn failed_at(n: &Node) -> Option<Option<&Stage>> {
    let failed =
        n.status == Status::Failed || (n.status == Status::Duplicate && n.verdict.is_some());
    failed.then_some(n.stage.as_ref())
}

/// The funnel of `nodes`, with the speeds of `calls`.
pub fn funnel(nodes: &[Node], calls: &[Call]) -> Funnel {
    let mut f = Funnel::default();
    for n in nodes
        .iter()
        .filter(|n| !n.operator.is_seed() && n.status != Status::Pending)
    {
        f.proposed += 1;
        if endpoint_failure(n) {
            continue;
        }
        f.answered += 1;
        let at = failed_at(n);
        if at == Some(Some(&Stage::Propose)) {
            continue;
        }
        f.parsed += 1;
        if at == Some(Some(&Stage::Build)) {
            continue;
        }
        f.compiled += 1;
        if matches!(at, Some(Some(Stage::Check | Stage::Probe))) {
            continue;
        }
        f.checked += 1;
        if n.status == Status::Duplicate {
            // A duplicate carries its twin's numbers but never ran a level itself.
            f.duplicates += 1;
        } else if n.fitness.is_some() && at.is_none() {
            f.promoted += 1;
        }
    }
    let mut per_node: std::collections::HashMap<i64, f64> = std::collections::HashMap::new();
    for c in calls {
        if let Some(id) = c.node {
            *per_node.entry(id).or_default() += c.seconds;
        }
    }
    if !per_node.is_empty() {
        f.seconds_per_proposal = Some(per_node.values().sum::<f64>() / per_node.len() as f64);
    }
    let (mut pn, mut pms, mut gn, mut gms) = (0.0, 0.0, 0.0, 0.0);
    for t in calls.iter().filter_map(timings) {
        pn += t.0;
        pms += t.1;
        gn += t.2;
        gms += t.3;
    }
    if pms > 0.0 {
        f.prompt_tokens_per_s = Some(pn / pms * 1000.0);
    }
    if gms > 0.0 {
        f.generation_tokens_per_s = Some(gn / gms * 1000.0);
    }
    f
}

/// (prompt tokens, prompt ms, generated tokens, generation ms) from a recorded stream's final
/// chunk (llama.cpp's `timings`).
fn timings(c: &Call) -> Option<(f64, f64, f64, f64)> {
    let r: serde_json::Value = serde_json::from_str(c.response.as_deref()?).ok()?;
    let t = r.get("final_chunk")?.get("timings")?;
    let num = |k: &str| t.get(k).and_then(serde_json::Value::as_f64);
    let v = (
        num("prompt_n")?,
        num("prompt_ms")?,
        num("predicted_n")?,
        num("predicted_ms")?,
    );
    [v.0, v.1, v.2, v.3]
        .iter()
        .all(|x| x.is_finite() && *x >= 0.0)
        .then_some(v)
}

fn pct(part: usize, whole: usize) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.0} %", 100.0 * part as f64 / whole as f64)
    }
}

impl std::fmt::Display for Funnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "funnel: {} proposed, {} answered; parsed {} ({}), compiled {} ({}), passed the \
             checks {} ({}), promoted to the sequential level {} ({}); {} duplicates",
            self.proposed,
            self.answered,
            self.parsed,
            pct(self.parsed, self.answered),
            self.compiled,
            pct(self.compiled, self.parsed),
            self.checked,
            pct(self.checked, self.compiled),
            self.promoted,
            pct(self.promoted, self.checked),
            self.duplicates
        )?;
        let opt = |x: Option<f64>, unit: &str| x.map_or("-".into(), |v| format!("{v:.1} {unit}"));
        if self.seconds_per_proposal.is_some() || self.prompt_tokens_per_s.is_some() {
            writeln!(
                f,
                "proposer speed: {} per proposal, prompt {}, generation {}",
                opt(self.seconds_per_proposal, "s"),
                opt(self.prompt_tokens_per_s, "tokens/s"),
                opt(self.generation_tokens_per_s, "tokens/s")
            )?;
        }
        Ok(())
    }
}

/// What one derivation operator's children did in a run (seeds excluded).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OperatorRecord {
    /// The operator's recorded name (`crossover`, `mutate`, `tune`, `new`, `repair`).
    pub operator: String,
    /// Children recorded (failed ones included, pending ones not).
    pub children: usize,
    /// Children with a screen ratio of their own (duplicates excluded).
    pub screened: usize,
    /// Of those, the children whose screen ratio is lower (better) than their best parent's:
    /// the screen is the level every candidate and every parent is measured at.
    pub improved: usize,
    /// Children promoted to the sequential level (duplicates excluded).
    pub promoted: usize,
    /// Children that set a new best sequential ratio of the run, taken in creation order (the
    /// seeds set the first; results that land out of order are counted in creation order).
    pub new_bests: usize,
    /// The best sequential ratio among its children.
    pub best: Option<f64>,
}

/// Each operator's record in `nodes` (any order; they are taken by id, i.e. creation order), in
/// the order operators first appear.
pub fn operators(nodes: &[Node], edges: &[Edge]) -> Vec<OperatorRecord> {
    let screen: std::collections::HashMap<i64, f64> = nodes
        .iter()
        .filter_map(|n| Some((n.id, n.proxy?)))
        .collect();
    let mut parents: std::collections::HashMap<i64, Vec<i64>> = Default::default();
    for e in edges {
        parents.entry(e.child).or_default().push(e.parent);
    }
    let mut ordered: Vec<&Node> = nodes.iter().collect();
    ordered.sort_by_key(|n| n.id);
    let mut records: Vec<OperatorRecord> = Vec::new();
    let mut best_so_far = f64::INFINITY;
    for n in ordered {
        let own = n.status != Status::Duplicate;
        let fitness = n
            .fitness
            .filter(|f| own && f.is_finite() && failed_at(n).is_none());
        if n.operator.is_seed() || n.status == Status::Pending {
            best_so_far = best_so_far.min(fitness.unwrap_or(f64::INFINITY));
            continue;
        }
        let name = n.operator.as_str();
        let i = match records.iter().position(|r| r.operator == name) {
            Some(i) => i,
            None => {
                records.push(OperatorRecord {
                    operator: name.to_string(),
                    ..OperatorRecord::default()
                });
                records.len() - 1
            }
        };
        let r = &mut records[i];
        r.children += 1;
        if let Some(s) = n.proxy.filter(|s| own && s.is_finite()) {
            r.screened += 1;
            let parent = parents
                .get(&n.id)
                .into_iter()
                .flatten()
                .filter_map(|p| screen.get(p).copied())
                .filter(|p| p.is_finite())
                .reduce(f64::min);
            if parent.is_some_and(|p| s < p) {
                r.improved += 1;
            }
        }
        if let Some(f) = fitness {
            r.promoted += 1;
            r.best = Some(r.best.map_or(f, |b: f64| b.min(f)));
            if f < best_so_far {
                r.new_bests += 1;
                best_so_far = f;
            }
        }
    }
    records
}

/// The operators' records as a table for the terminal.
pub fn operators_table(records: &[OperatorRecord]) -> String {
    let mut out = String::from(
        "operators (children; screened; better screen than the best parent; promoted; new best; best sequential):\n",
    );
    for r in records {
        out.push_str(&format!(
            "  {:<10} {:>4}  {:>4}  {:>4} ({:>4})  {:>4}  {:>3}  {}\n",
            crate::term::text(&r.operator),
            r.children,
            r.screened,
            r.improved,
            pct(r.improved, r.screened),
            r.promoted,
            r.new_bests,
            r.best.map_or("-".into(), |b| format!("{b:.4}")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{Failure, InvalidOutput};
    use crate::search::archive::{Operator, Verdict};
    use crate::search::llm::CallVerdict;

    fn compile() -> Option<Verdict> {
        Some(Verdict::Guest(Failure::Compile {
            diagnostics: "error[E0425]".into(),
        }))
    }

    fn node(id: i64, status: Status, stage: Stage, verdict: Option<Verdict>) -> Node {
        Node {
            id,
            created: 0.0,
            proposer: "llm:m".into(),
            operator: "mutate".into(),
            thought: String::new(),
            code: String::new(),
            source_hash: String::new(),
            expr: None,
            status,
            stage: Some(stage),
            verdict,
            mask_hash: None,
            duplicate_of: None,
            proxy: None,
            fitness: (status == Status::Evaluated).then_some(50.0),
            heldout: None,
            seconds: None,
            tokens: 0,
            detail: None,
        }
    }

    #[test]
    fn every_stage_is_counted_once() {
        let mut seed = node(1, Status::Evaluated, Stage::Sequential, None);
        seed.operator = Operator::Seed;
        let mut dup_ok = node(9, Status::Duplicate, Stage::Sequential, None);
        dup_ok.fitness = Some(50.0);
        let nodes = vec![
            seed,
            node(
                2,
                Status::Failed,
                Stage::Propose,
                Some(Verdict::Call(CallVerdict::Timeout { seconds: 1.0 })),
            ),
            node(
                3,
                Status::Failed,
                Stage::Propose,
                Some(Verdict::Call(CallVerdict::NoCode { truncated: false })),
            ),
            node(4, Status::Failed, Stage::Build, compile()),
            node(
                5,
                Status::Failed,
                Stage::Check,
                Some(Verdict::Guest(Failure::InvalidOutput(
                    InvalidOutput::NonFinite {
                        row: 0,
                        col: 0,
                        value: "NaN".into(),
                    },
                ))),
            ),
            node(6, Status::Screened, Stage::Screen, None),
            node(7, Status::Evaluated, Stage::Sequential, None),
            node(8, Status::Duplicate, Stage::Build, compile()),
            dup_ok,
            node(10, Status::Pending, Stage::Build, None),
        ];
        let f = funnel(&nodes, &[]);
        assert_eq!(
            (
                f.proposed,
                f.answered,
                f.parsed,
                f.compiled,
                f.checked,
                f.promoted,
                f.duplicates
            ),
            (8, 7, 6, 4, 3, 1, 1)
        );
        let text = f.to_string();
        assert!(
            text.contains("parsed 6 (86 %), compiled 4 (67 %)"),
            "{text}"
        );
        assert!(
            text.contains("promoted to the sequential level 1 (33 %)"),
            "{text}"
        );
    }

    #[test]
    fn speeds_come_from_the_recorded_timings() {
        let call = |node, seconds, timings: serde_json::Value| Call {
            node: Some(node),
            seconds,
            response: Some(
                serde_json::json!({"stream": true, "final_chunk": {"timings": timings}})
                    .to_string(),
            ),
            ..Call::default()
        };
        let calls = vec![
            call(
                1,
                10.0,
                serde_json::json!({"prompt_n": 100, "prompt_ms": 2000.0, "predicted_n": 10, "predicted_ms": 1000.0}),
            ),
            call(
                1,
                20.0,
                serde_json::json!({"prompt_n": 300, "prompt_ms": 2000.0, "predicted_n": 30, "predicted_ms": 1000.0}),
            ),
            call(2, 30.0, serde_json::json!(null)),
        ];
        let f = funnel(&[], &calls);
        // Node 1: two attempts, 30 s; node 2: 30 s.
        assert_eq!(f.seconds_per_proposal, Some(30.0));
        assert_eq!(f.prompt_tokens_per_s, Some(100.0));
        assert_eq!(f.generation_tokens_per_s, Some(20.0));
    }

    #[test]
    fn operator_records_compare_children_with_their_parents() {
        let at = |id, op: &str, status, proxy: Option<f64>, fitness: Option<f64>| Node {
            operator: op.into(),
            proxy,
            fitness,
            ..node(id, status, Stage::Screen, None)
        };
        let nodes = vec![
            at(1, "seed", Status::Evaluated, Some(1.0), Some(1.0)),
            at(2, "seed", Status::Evaluated, Some(1.2), Some(1.1)),
            // Better screen than its best parent (1.0), promoted, a new best.
            at(3, "crossover", Status::Evaluated, Some(0.99), Some(0.97)),
            // Worse than its parent; stopped at the screen.
            at(4, "tune", Status::Screened, Some(1.3), None),
            // Better than its parent (1.2), promoted, not a new best (0.98 > 0.97).
            at(5, "tune", Status::Evaluated, Some(1.1), Some(0.98)),
            // A duplicate counts as a child only.
            at(6, "tune", Status::Duplicate, Some(0.99), Some(0.97)),
            node(7, Status::Failed, Stage::Build, compile()),
        ];
        let edge = |child, parent, op: &str| Edge {
            child,
            parent,
            operator: op.into(),
            rationale: String::new(),
        };
        let edges = vec![
            edge(3, 1, "crossover"),
            edge(3, 2, "crossover"),
            edge(4, 1, "tune"),
            edge(5, 2, "tune"),
            edge(6, 3, "tune"),
            edge(7, 1, "mutate"),
        ];
        let r = operators(&nodes, &edges);
        let row = |op: &str| {
            let x = r.iter().find(|x| x.operator == op).unwrap();
            (
                x.children,
                x.screened,
                x.improved,
                x.promoted,
                x.new_bests,
                x.best,
            )
        };
        assert_eq!(row("crossover"), (1, 1, 1, 1, 1, Some(0.97)));
        assert_eq!(row("tune"), (3, 2, 1, 1, 0, Some(0.98)));
        assert_eq!(row("mutate"), (1, 0, 0, 0, 0, None));
        assert_eq!(
            r.iter().map(|x| x.operator.as_str()).collect::<Vec<_>>(),
            ["crossover", "tune", "mutate"]
        );
        let table = operators_table(&r);
        assert!(table.contains("tune"), "{table}");
        assert!(table.contains("1 (50 %)"), "{table}");
    }
}
