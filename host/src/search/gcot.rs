//! Graph-driven chain of thought (GCoT): the LLM proposer's prompts are walks over the run's
//! graph of attempts.
//!
//! For each proposal a [`Plan`] picks an operator and its parents from the graph (`repair` a
//! recent failure of this proposer, `crossover` two good candidates with different masks,
//! `mutate` a tournament winner, or `new`), and [`build_messages`] fills the editable templates
//! (`host/prompts/*.md`, or a folder given with `--prompts`) with:
//!
//! - the baselines measured in this run and the best candidates (scores, ideas);
//! - diverse candidates (other behaviours, spread over the score range);
//! - the parent's lineage back to its root, with the score change of every step;
//! - failed or screened siblings (other children of the same parent) with their typed verdicts;
//! - lessons distilled from the whole graph: the derivations that helped and hurt most, failure
//!   counts per stage with the latest verdict, duplicates and proxy screening;
//! - the parent's (and the other parent's) full source;
//! - the proposals other requests are writing at this moment (operator and parents), so that
//!   concurrent requests do not receive the same prompt; their plans are also drawn apart
//!   ([`plan_apart`]).
//!
//! The response is parsed into {thought, code} ([`super::llm::parse_response`]); a malformed
//! one is recorded as a failed node with its typed verdict.

use super::archive::{Edge, NewNode, Node, Status};
use super::gp::Rng;
use super::llm::{excerpt, parse_response, LlmClient, Message};
use super::run::{Context, Proposal, ProposalFuture, Proposer};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The template files, by name, with their built-in text.
pub const TEMPLATE_FILES: [(&str, &str); 6] = [
    ("system.md", include_str!("../../prompts/system.md")),
    ("user.md", include_str!("../../prompts/user.md")),
    ("op-new.md", include_str!("../../prompts/op-new.md")),
    ("op-mutate.md", include_str!("../../prompts/op-mutate.md")),
    (
        "op-crossover.md",
        include_str!("../../prompts/op-crossover.md"),
    ),
    ("op-repair.md", include_str!("../../prompts/op-repair.md")),
];

/// Placeholders each template may use.
fn allowed(file: &str) -> &'static [&'static str] {
    match file {
        "system.md" => &[
            "pattern",
            "sparsity_percent",
            "example_wanda",
            "example_ria",
        ],
        "user.md" => &[
            "task",
            "baselines",
            "best",
            "diverse",
            "lineage",
            "failed_siblings",
            "lessons",
            "parent",
            "in_flight",
            "pattern",
            "sparsity_percent",
        ],
        _ => &["parent_id", "other_id"],
    }
}

/// The prompt templates of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Templates {
    files: HashMap<String, String>,
}

impl Templates {
    /// The built-in templates.
    pub fn builtin() -> Self {
        Templates {
            files: TEMPLATE_FILES
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
        }
    }

    /// The built-in templates with every file present in `dir` replacing its namesake. Every
    /// template is checked: an unknown `{{placeholder}}` is an error naming the file.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut t = Self::builtin();
        if let Some(dir) = dir {
            if !dir.is_dir() {
                anyhow::bail!("the prompt folder {} does not exist", dir.display());
            }
            for (name, _) in TEMPLATE_FILES {
                let p = dir.join(name);
                if p.exists() {
                    let text = std::fs::read_to_string(&p)
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
                    t.files.insert(name.to_string(), text);
                }
            }
        }
        for (name, _) in TEMPLATE_FILES {
            placeholders(&t.files[name])
                .into_iter()
                .find(|p| !allowed(name).contains(&p.as_str()))
                .map_or(Ok(()), |p| {
                    Err(anyhow::anyhow!(
                        "prompt template {name}: unknown placeholder {{{{{p}}}}} (allowed: {})",
                        allowed(name).join(", ")
                    ))
                })?;
        }
        Ok(t)
    }

    /// Write the built-in templates into `dir` (to edit them and pass `--prompts dir`).
    pub fn write_builtin(dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, text) in TEMPLATE_FILES {
            std::fs::write(dir.join(name), text)?;
        }
        Ok(())
    }

    fn get(&self, name: &str) -> &str {
        self.files.get(name).map_or("", |s| s.as_str())
    }
}

/// The `{{name}}` placeholders of a template.
fn placeholders(t: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else { break };
        out.push(after[..j].trim().to_string());
        rest = &after[j + 2..];
    }
    out
}

/// Fill `{{name}}` placeholders (one pass: values are never re-expanded).
pub fn fill(t: &str, vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            out.push_str(&rest[i..]);
            return out;
        };
        let name = after[..j].trim();
        match vars.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => out.push_str(v),
            None => out.push_str(&rest[i..i + 2 + j + 2]),
        }
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    out
}

/// Which derivation a proposal makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `new`, `mutate`, `crossover` or `repair`.
    pub operator: &'static str,
    /// Parents (one for mutate/repair, two for crossover).
    pub parents: Vec<i64>,
}

fn fitness(n: &Node) -> Option<f64> {
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
        .filter(|e| e.operator == "repair")
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
                operator: "repair",
                parents: vec![b.id],
            };
        }
    }
    if evaluated.is_empty() || rng.chance(0.1) {
        return Plan {
            operator: "new",
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
                operator: "crossover",
                parents: vec![a.id, b.id],
            };
        }
    }
    Plan {
        operator: "mutate",
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

/// One line per plan in flight (empty when there are none).
fn in_flight_section(in_flight: &[Plan]) -> String {
    if in_flight.is_empty() {
        return String::new();
    }
    let lines: Vec<String> = in_flight
        .iter()
        .map(|p| {
            let ids: Vec<String> = p.parents.iter().map(|i| format!("#{i}")).collect();
            match p.operator {
                "new" => "- a new metric".to_string(),
                op => format!("- {op} of {}", ids.join(" and ")),
            }
        })
        .collect();
    format!(
        "# Being written right now by other requests (do something different)\n{}\n",
        lines.join("\n")
    )
}

/// A ratio to Wanda's perplexity (4 decimals: the search resolves about 1 %).
fn fmt_ppl(x: f64) -> String {
    if x >= 1e6 {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

fn first_parent(edges: &[Edge], id: i64) -> Option<i64> {
    edges.iter().find(|e| e.child == id).map(|e| e.parent)
}

/// One line (plus the idea) describing a node, with its change against `parent`.
fn describe(n: &Node, parent: Option<&Node>) -> String {
    let head = format!("#{} ({}, {})", n.id, n.operator, n.proposer);
    let state = match n.status {
        Status::Evaluated => {
            let f = n.fitness.unwrap_or(f64::NAN);
            let delta = parent
                .and_then(fitness)
                .map(|p| format!(" (Δ {:+.4} vs #{})", f - p, parent.map_or(0, |p| p.id)))
                .unwrap_or_default();
            format!("{} × Wanda's perplexity{delta}", fmt_ppl(f))
        }
        Status::Screened => format!(
            "screened out by the one-shot screen ({} × Wanda's perplexity there)",
            n.proxy.map_or("?".into(), fmt_ppl)
        ),
        Status::Duplicate => format!(
            "prunes exactly like #{} (same masks): result reused",
            n.duplicate_of.unwrap_or(0)
        ),
        Status::Failed => format!(
            "failed at {}: {}",
            n.stage.as_deref().unwrap_or("?"),
            excerpt(n.verdict.as_deref().unwrap_or("?"), 600)
        ),
        Status::Pending => "not evaluated yet".into(),
    };
    format!(
        "- {head}: {state}\n  idea: {}",
        excerpt(&n.thought.replace('\n', " "), 300)
    )
}

fn section(lines: Vec<String>) -> String {
    if lines.is_empty() {
        "- none yet".into()
    } else {
        lines.join("\n")
    }
}

/// The distilled lessons of the graph.
pub fn lessons(nodes: &[Node], edges: &[Edge]) -> String {
    section(lesson_lines(nodes, edges))
}

/// The lessons, one entry each, most useful first.
fn lesson_lines(nodes: &[Node], edges: &[Edge]) -> Vec<String> {
    let by_id: HashMap<i64, &Node> = nodes.iter().map(|n| (n.id, n)).collect();
    let mut deltas: Vec<(f64, &Edge)> = edges
        .iter()
        .filter_map(|e| {
            let c = fitness(by_id.get(&e.child)?)?;
            let p = fitness(by_id.get(&e.parent)?)?;
            Some((c - p, e))
        })
        .collect();
    deltas.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = Vec::new();
    let step = |d: f64, e: &Edge| {
        let c = by_id[&e.child];
        format!(
            "{} #{} → #{} changed the ratio to Wanda by {:+.4}: {}",
            e.operator,
            e.parent,
            e.child,
            d,
            excerpt(&c.thought.replace('\n', " "), 160)
        )
    };
    for (d, e) in deltas.iter().filter(|(d, _)| *d < 0.0).take(3) {
        out.push(format!("- helped: {}", step(*d, e)));
    }
    for (d, e) in deltas.iter().rev().filter(|(d, _)| *d > 0.0).take(2) {
        out.push(format!("- hurt: {}", step(*d, e)));
    }
    let mut stages: Vec<(String, usize, &Node)> = Vec::new();
    for n in nodes
        .iter()
        .filter(|n| n.status == Status::Failed && !endpoint_failure(n))
    {
        let s = n.stage.clone().unwrap_or_default();
        match stages.iter_mut().find(|(k, _, _)| *k == s) {
            Some(e) => {
                e.1 += 1;
                e.2 = n;
            }
            None => stages.push((s, 1, n)),
        }
    }
    for (stage, count, last) in &stages {
        out.push(format!(
            "- {count} failed at {stage}; latest (#{}): {}",
            last.id,
            excerpt(last.verdict.as_deref().unwrap_or("?"), 240)
        ));
    }
    let dups = nodes
        .iter()
        .filter(|n| n.status == Status::Duplicate)
        .count();
    if dups > 0 {
        out.push(format!(
            "- {dups} candidates pruned exactly like an earlier one: rescaling or a monotone \
             transform of a score changes nothing; change the ranking within rows instead"
        ));
    }
    let screened = nodes
        .iter()
        .filter(|n| n.status == Status::Screened)
        .count();
    if screened > 0 {
        out.push(format!(
            "- {screened} candidates were screened out by the cheap one-shot screen (clearly \
             worse than Wanda)"
        ));
    }
    out
}

/// The most tokens a prompt (system and user message) may take, so that a small local model's
/// context holds it and its answer: the `--llm local` server gives every request 6,144 tokens,
/// which leaves 1,024 for the answer and 1,120 to spare. Measured with the Qwen2.5 tokenizer,
/// the system prompt takes one token per 3.47 characters (its parts 3.1–4.2);
/// [`estimate_prompt_tokens`] counts one per 3 (an overestimate on the whole).
pub const PROMPT_BUDGET_TOKENS: u64 = 4000;

/// A deliberately high token count for a prompt text (one token per 3 characters).
pub fn estimate_prompt_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(3)
}

/// What a section says when the budget left it out.
const LEFT_OUT: &str = "- (left out to fit the prompt)";

/// The shortest a parent's code is cut to when nothing else is left to drop.
const MIN_CODE_CHARS: usize = 1500;

/// Settings the prompt mentions.
#[derive(Debug, Clone)]
pub struct PromptSettings {
    /// Target sparsity.
    pub sparsity: f64,
    /// Comparison group in words.
    pub pattern: String,
}

/// The seed candidates of an LLM run: the hand-written baselines (what a model reads best),
/// tests stripped: magnitude, Wanda, RIA, and with the gradient statistic GBLM and
/// Pruner-Zero's tree. They prune like the GP seeds.
pub fn seeds(gradient: bool) -> Vec<NewNode> {
    [
        (
            include_str!("../../../candidates/magnitude.rs"),
            "magnitude: |W|",
        ),
        (
            include_str!("../../../candidates/wanda.rs"),
            "Wanda: |W| · ‖X‖₂",
        ),
        (
            include_str!("../../../candidates/ria.rs"),
            "RIA: (|W|/Σ_col|W| + |W|/Σ_row|W|) · ‖X‖₂^0.5",
        ),
        (
            include_str!("../../../candidates/gblm.rs"),
            "GBLM: |W| · (‖X‖₂ + √32 · G)",
        ),
        (
            include_str!("../../../candidates/pruner_zero.rs"),
            "Pruner-Zero: |W|² · mms(G)",
        ),
    ]
    .into_iter()
    .filter(|(src, _)| gradient || !src.contains("needs_gradient()"))
    .map(|(src, thought)| NewNode {
        proposer: "seed".into(),
        operator: "seed".into(),
        thought: thought.into(),
        code: format!("{}\n", strip_tests(src)),
        ..NewNode::default()
    })
    .collect()
}

/// A proposal that failed at the endpoint (HTTP status, timeout, connection): nothing the model
/// wrote, so it is left out of prompts (malformed answers stay: the model should learn from them).
pub(crate) fn endpoint_failure(n: &Node) -> bool {
    n.status == Status::Failed
        && n.stage.as_deref() == Some("propose")
        && n.verdict.as_deref().is_some_and(|v| {
            [
                "\"http_status\"",
                "\"timeout\"",
                "\"connection\"",
                "\"retry_after_too_long\"",
                "\"idle_timeout\"",
                "\"stream_error\"",
                "\"response_too_large\"",
                // Archives written before streamed and whole bodies shared one cap.
                "\"too_large\"",
            ]
            .iter()
            .any(|k| v.contains(k))
        })
}

fn strip_tests(src: &str) -> &str {
    src.split("#[cfg(test)]").next().unwrap_or(src).trim_end()
}

/// The chat messages of one proposal; `in_flight` are the plans other requests are working on.
pub fn build_messages(
    t: &Templates,
    nodes: &[Node],
    edges: &[Edge],
    plan: &Plan,
    in_flight: &[Plan],
    s: &PromptSettings,
) -> Vec<Message> {
    let by_id: HashMap<i64, &Node> = nodes.iter().map(|n| (n.id, n)).collect();
    let parent_of = |n: &Node| first_parent(edges, n.id).and_then(|p| by_id.get(&p).copied());
    let sp = format!("{:.0}", s.sparsity * 100.0);
    let system = fill(
        t.get("system.md"),
        &[
            ("pattern", s.pattern.clone()),
            ("sparsity_percent", sp.clone()),
            (
                "example_wanda",
                strip_tests(include_str!("../../../candidates/wanda.rs")).into(),
            ),
            (
                "example_ria",
                strip_tests(include_str!("../../../candidates/ria.rs")).into(),
            ),
        ],
    );
    let op_file = format!("op-{}.md", plan.operator);
    let task = fill(
        t.get(&op_file),
        &[
            (
                "parent_id",
                plan.parents
                    .first()
                    .map_or(String::new(), |p| p.to_string()),
            ),
            (
                "other_id",
                plan.parents.get(1).map_or(String::new(), |p| p.to_string()),
            ),
        ],
    );
    let baselines = section(
        nodes
            .iter()
            .filter(|n| n.operator == "seed")
            .map(|n| describe(n, None))
            .collect(),
    );
    let mut ranked: Vec<&Node> = nodes
        .iter()
        .filter(|n| fitness(n).is_some() && n.operator != "seed")
        .collect();
    ranked.sort_by(|a, b| {
        fitness(a)
            .unwrap_or(f64::MAX)
            .total_cmp(&fitness(b).unwrap_or(f64::MAX))
    });
    let best: Vec<&Node> = ranked.iter().take(5).copied().collect();
    let best_ids: HashSet<i64> = best.iter().map(|n| n.id).collect();
    // Diverse: other behaviours spread over the score range.
    let mut seen_masks: HashSet<&str> =
        best.iter().filter_map(|n| n.mask_hash.as_deref()).collect();
    let mut pool: Vec<&Node> = nodes
        .iter()
        .filter(|n| {
            !best_ids.contains(&n.id)
                && n.operator != "seed"
                && matches!(n.status, Status::Evaluated | Status::Screened)
        })
        .filter(|n| n.mask_hash.as_deref().is_none_or(|m| seen_masks.insert(m)))
        .collect();
    pool.sort_by(|a, b| {
        a.fitness
            .or(a.proxy)
            .unwrap_or(f64::MAX)
            .total_cmp(&b.fitness.or(b.proxy).unwrap_or(f64::MAX))
    });
    let diverse: Vec<String> = if pool.len() <= 3 {
        pool.iter().map(|n| describe(n, parent_of(n))).collect()
    } else {
        (0..3)
            .map(|k| pool[k * (pool.len() - 1) / 2])
            .map(|n| describe(n, parent_of(n)))
            .collect()
    };
    // Lineage of the first parent.
    let mut lineage = Vec::new();
    let mut cur = plan.parents.first().and_then(|p| by_id.get(p).copied());
    while let Some(n) = cur {
        if lineage.len() >= 8 {
            lineage.push("- … (older ancestors omitted)".into());
            break;
        }
        let p = parent_of(n);
        lineage.push(describe(n, p));
        cur = p;
    }
    // Failed or screened siblings.
    let siblings: Vec<String> = match plan.parents.first() {
        Some(&p) => edges
            .iter()
            .filter(|e| e.parent == p)
            .filter_map(|e| by_id.get(&e.child).copied())
            .filter(|n| matches!(n.status, Status::Failed | Status::Screened))
            .filter(|n| !endpoint_failure(n))
            .rev()
            .take(4)
            .map(|n| describe(n, by_id.get(&p).copied()))
            .collect(),
        None => Vec::new(),
    };
    let code_of = |id: &i64, max_chars: usize| -> Option<String> {
        let n = by_id.get(id)?;
        let code = n.code.trim_end();
        let code = if code.chars().count() > max_chars {
            let cut: String = code.chars().take(max_chars).collect();
            format!("{cut}\n// … (cut to fit the prompt)")
        } else {
            code.to_string()
        };
        Some(format!(
            "#{} — {}\n```rust\n{}\n```",
            n.id,
            excerpt(&n.thought.replace('\n', " "), 300),
            code
        ))
    };
    let parent_text = |max_chars: usize| -> Vec<String> {
        let mut out: Vec<String> = plan
            .parents
            .iter()
            .filter_map(|p| code_of(p, max_chars))
            .collect();
        if plan.parents.is_empty() {
            // A new idea still sees the best code so far.
            if let Some(b) = best
                .first()
                .or(nodes.iter().find(|n| n.operator == "seed").as_ref())
            {
                out.extend(
                    code_of(&b.id, max_chars).map(|c| format!("(for reference, not to copy) {c}")),
                );
            }
        }
        out
    };
    // Sections that give way, in this order, when the prompt is over its budget: entries are
    // dropped from the end (the most useful come first), then the code is cut.
    let mut best_lines: Vec<String> = best.iter().map(|n| describe(n, parent_of(n))).collect();
    let mut diverse = diverse;
    let mut lessons_lines = lesson_lines(nodes, edges);
    let mut siblings = siblings;
    let mut code_chars = usize::MAX;
    let system_tokens = estimate_prompt_tokens(&system);
    let user = loop {
        let user = fill(
            t.get("user.md"),
            &[
                ("task", task.trim().to_string()),
                ("baselines", baselines.clone()),
                ("best", section(best_lines.clone())),
                ("diverse", section(diverse.clone())),
                ("lineage", section(lineage.clone())),
                ("failed_siblings", section(siblings.clone())),
                ("lessons", section(lessons_lines.clone())),
                ("parent", section(parent_text(code_chars))),
                ("in_flight", in_flight_section(in_flight)),
                ("pattern", s.pattern.clone()),
                ("sparsity_percent", sp.clone()),
            ],
        );
        if system_tokens + estimate_prompt_tokens(&user) <= PROMPT_BUDGET_TOKENS {
            break user;
        }
        // Sections in the order they give way (`best` keeps its first entry).
        let mut order: [(&mut Vec<String>, bool); 5] = [
            (&mut diverse, true),
            (&mut lessons_lines, true),
            (&mut siblings, true),
            (&mut lineage, true),
            (&mut best_lines, false),
        ];
        if let Some((v, _)) = order.iter_mut().find(|(v, _)| v.len() > 1) {
            v.pop();
            continue;
        }
        if let Some((v, _)) = order
            .iter_mut()
            .find(|(v, clear)| *clear && v.first().is_some_and(|l| l != LEFT_OUT))
        {
            **v = vec![LEFT_OUT.into()];
        } else if code_chars > MIN_CODE_CHARS {
            let longest = plan
                .parents
                .iter()
                .filter_map(|p| by_id.get(p))
                .map(|n| n.code.chars().count())
                .max()
                .unwrap_or(MIN_CODE_CHARS);
            code_chars = (code_chars.min(longest) * 3 / 4).max(MIN_CODE_CHARS);
        } else {
            // Nothing left to give: send it as it is (the server reports what it cannot hold).
            break user;
        }
    };
    vec![
        Message {
            role: "system".into(),
            content: system,
        },
        Message {
            role: "user".into(),
            content: user,
        },
    ]
}

/// The LLM proposer: a GCoT prompt per proposal, one chat request, the answer parsed into
/// {thought, code}; every attempt is recorded with the node.
pub struct LlmProposer {
    client: LlmClient,
    templates: Arc<Templates>,
    settings: PromptSettings,
    seed: u64,
    /// Plans of the requests in flight, by proposal index.
    in_flight: Arc<Mutex<Vec<(u64, Plan)>>>,
}

/// Removes a proposal's plan from the in-flight list when its request ends (or is abandoned).
pub struct InFlight {
    list: Arc<Mutex<Vec<(u64, Plan)>>>,
    index: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut l) = self.list.lock() {
            l.retain(|(i, _)| *i != self.index);
        }
    }
}

impl LlmProposer {
    /// A proposer over `client`.
    pub fn new(
        client: LlmClient,
        templates: Templates,
        settings: PromptSettings,
        seed: u64,
    ) -> Self {
        LlmProposer {
            client,
            templates: Arc::new(templates),
            settings,
            seed,
            in_flight: Arc::default(),
        }
    }

    /// The plan and messages of proposal `ctx.index`, drawn apart from the requests in flight
    /// (which the prompt lists), and the proposal's own place in that list, held until the
    /// returned guard is dropped.
    pub fn prepare(&self, ctx: &Context) -> (Plan, Vec<Message>, InFlight) {
        let mut rng = Rng::new(super::proposer::mix(self.seed, ctx.index));
        let mut list = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let others: Vec<Plan> = list.iter().map(|(_, p)| p.clone()).collect();
        let plan = plan_apart(&ctx.nodes, &ctx.edges, &self.name(), &mut rng, &others);
        let messages = build_messages(
            &self.templates,
            &ctx.nodes,
            &ctx.edges,
            &plan,
            &others,
            &self.settings,
        );
        list.push((ctx.index, plan.clone()));
        let guard = InFlight {
            list: self.in_flight.clone(),
            index: ctx.index,
        };
        (plan, messages, guard)
    }
}

impl Proposer for LlmProposer {
    fn name(&self) -> String {
        format!("llm:{}", self.client.config().model)
    }

    fn estimate_tokens(&self) -> u64 {
        // A typical GCoT prompt is 2–4K tokens; the completion is at most max_tokens.
        3000 + self.client.config().max_tokens as u64
    }

    fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        self.client.config().cost(prompt_tokens, completion_tokens)
    }

    fn propose(&self, ctx: Context) -> ProposalFuture {
        let name = self.name();
        let (plan, messages, guard) = self.prepare(&ctx);
        let client = self.client.clone();
        let jitter = super::proposer::mix(self.seed ^ 0xA5A5, ctx.index);
        Box::pin(async move {
            let outcome = client.chat(&messages, jitter).await;
            drop(guard);
            let tokens = outcome.tokens();
            let mut node = NewNode {
                proposer: name.clone(),
                operator: plan.operator.into(),
                thought: String::new(),
                code: String::new(),
                expr: None,
                parents: Vec::new(),
                tokens,
            };
            let failure = match &outcome.result {
                Ok(c) => match parse_response(&c.content, c.truncated) {
                    Ok(p) => {
                        node.thought = p.thought;
                        node.code = p.code;
                        None
                    }
                    Err(v) => {
                        node.thought = format!("(malformed response) {}", excerpt(&c.content, 400));
                        Some(v.to_json())
                    }
                },
                Err(v) => {
                    node.thought = format!("(no response) {v}");
                    Some(v.to_json())
                }
            };
            let rationale = if node.thought.is_empty() {
                plan.operator.to_string()
            } else {
                excerpt(&node.thought.replace('\n', " "), 400)
            };
            node.parents = plan
                .parents
                .iter()
                .map(|&p| (p, rationale.clone()))
                .collect();
            let mut calls = outcome.attempts;
            for c in &mut calls {
                c.proposer = name.clone();
            }
            Ok(Proposal {
                node,
                failure,
                calls,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: i64, op: &str, status: Status, fitness: Option<f64>) -> Node {
        Node {
            id,
            created: 0.0,
            proposer: if op == "seed" {
                "seed".into()
            } else {
                "llm:m".into()
            },
            operator: op.into(),
            thought: format!("idea {id}"),
            code: format!("// code {id}\nexport_metric!(M{id});"),
            source_hash: format!("h{id}"),
            expr: None,
            status,
            stage: Some(
                if status == Status::Failed {
                    "build"
                } else {
                    "full"
                }
                .into(),
            ),
            verdict: (status == Status::Failed)
                .then(|| r#"{"verdict":"build_failed","diagnostics":"error[E0425]"}"#.into()),
            mask_hash: Some(format!("m{id}")),
            duplicate_of: None,
            proxy: fitness.map(|f| f * 1.5),
            fitness,
            heldout: None,
            seconds: Some(1.0),
            tokens: 0,
            detail: None,
        }
    }

    fn edge(child: i64, parent: i64, op: &str) -> Edge {
        Edge {
            child,
            parent,
            operator: op.into(),
            rationale: "r".into(),
        }
    }

    /// The user message of a `mutate #3` proposal over this graph.
    fn mutate_3_prompt(nodes: &[Node], edges: &[Edge]) -> String {
        let plan = Plan {
            operator: "mutate",
            parents: vec![3],
        };
        let settings = PromptSettings {
            sparsity: 0.5,
            pattern: "per output row".into(),
        };
        build_messages(&Templates::builtin(), nodes, edges, &plan, &[], &settings)[1]
            .content
            .clone()
    }

    fn graph() -> (Vec<Node>, Vec<Edge>) {
        let nodes = vec![
            node(1, "seed", Status::Evaluated, Some(300.0)),
            node(2, "seed", Status::Evaluated, Some(60.0)),
            node(3, "mutate", Status::Evaluated, Some(55.0)),
            node(4, "mutate", Status::Failed, None),
            node(5, "mutate", Status::Evaluated, Some(70.0)),
        ];
        let edges = vec![
            edge(3, 2, "mutate"),
            edge(4, 3, "mutate"),
            edge(5, 3, "mutate"),
        ];
        (nodes, edges)
    }

    #[test]
    fn templates_fill_and_reject_unknown_placeholders() {
        assert_eq!(fill("a {{x}} b {{y}}", &[("x", "1".into())]), "a 1 b {{y}}");
        // Values are not expanded again.
        assert_eq!(fill("{{x}}", &[("x", "{{x}}".into())]), "{{x}}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("user.md"), "{{task}} {{bogus}}").unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains("user.md") && e.contains("bogus"), "{e}");
        std::fs::write(dir.path().join("user.md"), "only {{task}}").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert_eq!(t.get("user.md"), "only {{task}}");
        assert_eq!(t.get("system.md"), Templates::builtin().get("system.md"));
    }

    #[test]
    fn the_builtin_templates_fill_completely() {
        let (nodes, edges) = graph();
        let t = Templates::builtin();
        for plan in [
            Plan {
                operator: "new",
                parents: vec![],
            },
            Plan {
                operator: "mutate",
                parents: vec![3],
            },
            Plan {
                operator: "crossover",
                parents: vec![3, 5],
            },
            Plan {
                operator: "repair",
                parents: vec![4],
            },
        ] {
            let m = build_messages(
                &t,
                &nodes,
                &edges,
                &plan,
                &[],
                &PromptSettings {
                    sparsity: 0.5,
                    pattern: "per output row".into(),
                },
            );
            for msg in &m {
                assert!(
                    !msg.content.contains("{{"),
                    "{}: {}",
                    plan.operator,
                    msg.content
                );
            }
            assert!(m[0].content.contains("export_metric!(Wanda)"));
            assert!(!m[0].content.contains("#[cfg(test)]"));
        }
    }

    #[test]
    fn the_prompt_walks_the_graph() {
        let (nodes, edges) = graph();
        let u = &mutate_3_prompt(&nodes, &edges);
        // Lineage with deltas: #3 is 5 better than its parent #2.
        assert!(
            u.contains("#3 (mutate, llm:m): 55.0000 × Wanda's perplexity (Δ -5.0000 vs #2)"),
            "{u}"
        );
        // The failed sibling with its typed verdict.
        assert!(
            u.contains("#4 (mutate, llm:m): failed at build") && u.contains("E0425"),
            "{u}"
        );
        // Lessons: what helped and what hurt.
        assert!(u.contains("helped: mutate #2 → #3"), "{u}");
        assert!(u.contains("hurt: mutate #3 → #5"), "{u}");
        assert!(u.contains("1 failed at build"), "{u}");
        // The parent's code.
        assert!(u.contains("export_metric!(M3)"), "{u}");
        assert!(u.contains("Improve candidate #3"), "{u}");
    }

    #[test]
    fn endpoint_failures_stay_out_of_the_prompt() {
        let (mut nodes, mut edges) = graph();
        let mut n = node(6, "mutate", Status::Failed, None);
        n.stage = Some("propose".into());
        n.verdict = Some(r#"{"verdict":"http_status","status":503,"excerpt":"busy"}"#.into());
        n.code = String::new();
        nodes.push(n);
        edges.push(edge(6, 3, "mutate"));
        let u = mutate_3_prompt(&nodes, &edges);
        assert!(!u.contains("503"), "{u}");
        assert!(u.contains("E0425"));
        // A capped body, streamed or not, is the endpoint's failure too.
        let mut big = node(7, "mutate", Status::Failed, None);
        big.stage = Some("propose".into());
        big.verdict =
            Some(crate::search::llm::CallVerdict::ResponseTooLarge { limit: 8 << 20 }.to_json());
        assert!(endpoint_failure(&big), "{:?}", big.verdict);
    }

    #[test]
    fn llm_seeds_are_the_handwritten_sources() {
        let s = seeds(false);
        assert_eq!(s.len(), 3);
        assert!(s[1].code.contains("export_metric!(Wanda);"));
        assert!(!s[1].code.contains("cfg(test)"));
        // With the gradient statistic: GBLM and Pruner-Zero too.
        let g = seeds(true);
        assert_eq!(g.len(), 5);
        assert!(g[3..].iter().all(|n| n.code.contains("needs_gradient()")));
    }

    #[test]
    fn plans_are_deterministic_and_repair_own_failures() {
        let (nodes, edges) = graph();
        let mut ops = HashSet::new();
        for i in 0..200 {
            let p = plan(&nodes, &edges, "llm:m", &mut Rng::new(i));
            assert_eq!(p, plan(&nodes, &edges, "llm:m", &mut Rng::new(i)));
            match p.operator {
                "repair" => assert_eq!(p.parents, vec![4]),
                "mutate" => assert_eq!(p.parents.len(), 1),
                "crossover" => {
                    assert_eq!(p.parents.len(), 2);
                    assert_ne!(p.parents[0], p.parents[1]);
                }
                "new" => assert!(p.parents.is_empty()),
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
                "repair"
            );
            assert_ne!(
                plan(&nodes, &edges, "llm:other", &mut Rng::new(i)).operator,
                "repair"
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

    #[test]
    fn the_prompt_lists_the_requests_in_flight_until_they_end() {
        let (nodes, edges) = graph();
        let p = LlmProposer::new(
            LlmClient::new(super::super::llm::LlmConfig::default()).unwrap(),
            Templates::builtin(),
            PromptSettings {
                sparsity: 0.5,
                pattern: "per output row".into(),
            },
            1,
        );
        let ctx = |index| Context {
            index,
            nodes: nodes.clone(),
            edges: edges.clone(),
        };
        let (p0, m0, g0) = p.prepare(&ctx(0));
        let (p1, m1, g1) = p.prepare(&ctx(1));
        assert_ne!(p0, p1);
        assert_ne!(m0[1].content, m1[1].content);
        let marker = "Being written right now by other requests";
        assert!(!m0[1].content.contains(marker));
        let listed = match p0.operator {
            "new" => "- a new metric".to_string(),
            op => format!(
                "- {op} of {}",
                p0.parents
                    .iter()
                    .map(|i| format!("#{i}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        };
        assert!(
            m1[1]
                .content
                .contains(&format!("{marker} (do something different)\n{listed}\n")),
            "{}",
            m1[1].content
        );
        drop((g0, g1));
        let (_, m2, _g2) = p.prepare(&ctx(2));
        assert!(!m2[1].content.contains(marker));
    }

    #[test]
    fn the_prompt_fits_its_budget_on_a_large_graph() {
        // 60 nodes with long ideas, long verdicts and long code; a deep lineage.
        let long_code = format!(
            "use autoprune_sdk::prelude::*;\n{}export_metric!(M);",
            "// a long explanation of the metric's maths, line after line\n".repeat(120)
        );
        let mut nodes = vec![
            node(1, "seed", Status::Evaluated, Some(300.0)),
            node(2, "seed", Status::Evaluated, Some(60.0)),
        ];
        let mut edges = Vec::new();
        for id in 3..63 {
            let status = match id % 4 {
                0 => Status::Failed,
                1 => Status::Screened,
                _ => Status::Evaluated,
            };
            let mut n = node(id, "mutate", status, Some(50.0 + id as f64));
            n.thought = "a very long idea ".repeat(40);
            n.code = long_code.clone();
            if status == Status::Failed {
                n.verdict = Some(format!(
                    "{{\"verdict\":\"compile\",\"diagnostics\":\"{}\"}}",
                    "error[E0308]: mismatched types ".repeat(40)
                ));
            }
            nodes.push(n);
            edges.push(edge(
                id,
                if id < 20 { id - 1 } else { 2 + id % 17 },
                "mutate",
            ));
        }
        let settings = PromptSettings {
            sparsity: 0.5,
            pattern: "per output row".into(),
        };
        for plan in [
            Plan {
                operator: "mutate",
                parents: vec![19],
            },
            Plan {
                operator: "crossover",
                parents: vec![18, 30],
            },
            Plan {
                operator: "repair",
                parents: vec![16],
            },
            Plan {
                operator: "new",
                parents: vec![],
            },
        ] {
            let m = build_messages(&Templates::builtin(), &nodes, &edges, &plan, &[], &settings);
            let tokens =
                estimate_prompt_tokens(&m[0].content) + estimate_prompt_tokens(&m[1].content);
            assert!(
                tokens <= PROMPT_BUDGET_TOKENS,
                "{}: {tokens}",
                plan.operator
            );
            // What matters most stays: the task, the baselines, the parent's code (cut).
            let u = &m[1].content;
            assert!(u.contains("# Task") && u.contains("#2 (seed"), "{u}");
            if let Some(p) = plan.parents.first() {
                assert!(u.contains(&format!("#{p} — a very long idea")), "{u}");
                assert!(u.contains("(cut to fit the prompt)"), "{u}");
            }
        }
        // A small graph is not trimmed at all.
        let (nodes, edges) = graph();
        let u = mutate_3_prompt(&nodes, &edges);
        assert!(!u.contains("left out") && !u.contains("cut to fit"), "{u}");
    }
}
