//! Test fixtures shared by the GCoT unit tests: nodes, edges, a small graph and its `mutate #3`
//! prompt.

use super::*;
use crate::search::archive::{Edge, Node, Operator, ProposerName, Stage, Status, Verdict};

pub(super) fn node(id: i64, op: &str, status: Status, fitness: Option<f64>) -> Node {
    let operator = Operator::from(op);
    Node {
        id,
        created: 0.0,
        proposer: if operator.is_seed() {
            ProposerName::Seed
        } else {
            ProposerName::Llm("m".into())
        },
        operator,
        thought: format!("idea {id}"),
        code: format!("// code {id}\nexport_metric!(M{id});"),
        source_hash: format!("h{id}"),
        expr: None,
        status,
        stage: Some(if status == Status::Failed {
            Stage::Build
        } else {
            Stage::Other("full".into())
        }),
        verdict: (status == Status::Failed).then(|| {
            Verdict::Guest(crate::sandbox::Failure::Compile {
                diagnostics: "error[E0425]".into(),
            })
        }),
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

pub(super) fn edge(child: i64, parent: i64, op: &str) -> Edge {
    Edge {
        child,
        parent,
        operator: op.into(),
        rationale: "r".into(),
    }
}

/// The user message of a `mutate #3` proposal over this graph.
pub(super) fn mutate_3_prompt(nodes: &[Node], edges: &[Edge]) -> String {
    let plan = Plan {
        operator: Operator::Mutate,
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

pub(super) fn graph() -> (Vec<Node>, Vec<Edge>) {
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
