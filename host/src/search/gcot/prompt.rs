//! Rendering the graph into a proposal's chat messages: baselines, best and diverse candidates,
//! lineage, siblings, lessons and sources, within the token budget.

use super::plan::{fitness, Plan};
use super::templates::{fill, Templates};
use crate::search::archive::{Edge, NewNode, Node, Operator, ProposerName, Stage, Status, Verdict};
use crate::search::llm::{excerpt, Message};
use std::collections::{HashMap, HashSet};

/// One line per plan in flight (empty when there are none).
fn in_flight_section(in_flight: &[Plan]) -> String {
    if in_flight.is_empty() {
        return String::new();
    }
    let lines: Vec<String> = in_flight
        .iter()
        .map(|p| {
            let ids: Vec<String> = p.parents.iter().map(|i| format!("#{i}")).collect();
            match &p.operator {
                Operator::New => "- a new metric".to_string(),
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
            n.stage.as_ref().map_or("?", Stage::as_str),
            excerpt(&verdict_text(n), 600)
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
    let mut stages: Vec<(&str, usize, &Node)> = Vec::new();
    for n in nodes
        .iter()
        .filter(|n| n.status == Status::Failed && !endpoint_failure(n))
    {
        let s = n.stage.as_ref().map_or("", Stage::as_str);
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
            excerpt(&verdict_text(last), 240)
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
            include_str!("../../../../candidates/magnitude.rs"),
            "magnitude: |W|",
        ),
        (
            include_str!("../../../../candidates/wanda.rs"),
            "Wanda: |W| · ‖X‖₂",
        ),
        (
            include_str!("../../../../candidates/ria.rs"),
            "RIA: (|W|/Σ_col|W| + |W|/Σ_row|W|) · ‖X‖₂^0.5",
        ),
        (
            include_str!("../../../../candidates/gblm.rs"),
            "GBLM: |W| · (‖X‖₂ + √32 · G)",
        ),
        (
            include_str!("../../../../candidates/pruner_zero.rs"),
            "Pruner-Zero: |W|² · mms(G)",
        ),
    ]
    .into_iter()
    .filter(|(src, _)| gradient || !src.contains("needs_gradient()"))
    .map(|(src, thought)| NewNode {
        proposer: ProposerName::Seed,
        operator: Operator::Seed,
        thought: thought.into(),
        code: format!("{}\n", strip_tests(src)),
        ..NewNode::default()
    })
    .collect()
}

/// A node's verdict as the prompt shows it: its JSON (`?` when it has none).
fn verdict_text(n: &Node) -> String {
    n.verdict.as_ref().map_or("?".into(), Verdict::to_json)
}

/// A proposal that failed at the endpoint (HTTP status, timeout, connection): nothing the model
/// wrote, so it is left out of prompts (malformed answers stay: the model should learn from them).
pub(crate) fn endpoint_failure(n: &Node) -> bool {
    n.status == Status::Failed
        && n.stage == Some(Stage::Propose)
        && n.verdict.as_ref().is_some_and(|v| match v {
            Verdict::Call(c) => c.is_endpoint_failure(),
            // A verdict this version does not type (e.g. `too_large`, from archives written
            // before streamed and whole bodies shared one cap): its text, read as before.
            other => {
                let text = other.to_json();
                [
                    "\"http_status\"",
                    "\"timeout\"",
                    "\"connection\"",
                    "\"retry_after_too_long\"",
                    "\"idle_timeout\"",
                    "\"stream_error\"",
                    "\"response_too_large\"",
                    "\"too_large\"",
                ]
                .iter()
                .any(|k| text.contains(k))
            }
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
                strip_tests(include_str!("../../../../candidates/wanda.rs")).into(),
            ),
            (
                "example_ria",
                strip_tests(include_str!("../../../../candidates/ria.rs")).into(),
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
            .filter(|n| n.operator.is_seed())
            .map(|n| describe(n, None))
            .collect(),
    );
    let mut ranked: Vec<&Node> = nodes
        .iter()
        .filter(|n| fitness(n).is_some() && !n.operator.is_seed())
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
                && !n.operator.is_seed()
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
                .or(nodes.iter().find(|n| n.operator.is_seed()).as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::gcot::fixtures::*;

    #[test]
    fn the_builtin_templates_fill_completely() {
        let (nodes, edges) = graph();
        let t = Templates::builtin();
        for plan in [
            Plan {
                operator: Operator::New,
                parents: vec![],
            },
            Plan {
                operator: Operator::Mutate,
                parents: vec![3],
            },
            Plan {
                operator: Operator::Crossover,
                parents: vec![3, 5],
            },
            Plan {
                operator: Operator::Repair,
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
        n.stage = Some(Stage::Propose);
        n.verdict = Some(Verdict::Call(crate::search::llm::CallVerdict::HttpStatus {
            status: 503,
            excerpt: "busy".into(),
        }));
        n.code = String::new();
        nodes.push(n);
        edges.push(edge(6, 3, "mutate"));
        let u = mutate_3_prompt(&nodes, &edges);
        assert!(!u.contains("503"), "{u}");
        assert!(u.contains("E0425"));
        // A capped body, streamed or not, is the endpoint's failure too.
        let mut big = node(7, "mutate", Status::Failed, None);
        big.stage = Some(Stage::Propose);
        big.verdict = Some(Verdict::Call(
            crate::search::llm::CallVerdict::ResponseTooLarge { limit: 8 << 20 },
        ));
        assert!(endpoint_failure(&big), "{:?}", big.verdict);
        // An older archive's capped body, read as text.
        big.verdict = Some(Verdict::from_json(r#"{"verdict":"too_large","limit":8}"#));
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
                n.verdict = Some(Verdict::Guest(crate::sandbox::Failure::Compile {
                    diagnostics: "error[E0308]: mismatched types ".repeat(40),
                }));
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
                operator: Operator::Mutate,
                parents: vec![19],
            },
            Plan {
                operator: Operator::Crossover,
                parents: vec![18, 30],
            },
            Plan {
                operator: Operator::Repair,
                parents: vec![16],
            },
            Plan {
                operator: Operator::New,
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
