//! The archive's unit tests.

use super::*;

fn node(code: &str, op: &str, parents: Vec<(i64, String)>) -> NewNode {
    NewNode {
        proposer: "test".into(),
        operator: op.into(),
        thought: format!("idea {code}"),
        code: code.into(),
        expr: None,
        parents,
        tokens: 0,
    }
}

#[test]
fn seeds_once_records_nodes_edges_and_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.sqlite");
    let mut a = Archive::open(&path).unwrap();
    let ids = a
        .seed(&[node("a", "seed", vec![]), node("b", "seed", vec![])])
        .unwrap();
    assert_eq!(ids.len(), 2);
    let c = a
        .add(&node(
            "c",
            "crossover",
            vec![(ids[0], "mix".into()), (ids[1], "mix".into())],
        ))
        .unwrap();
    a.finish(
        ids[0],
        &Outcome {
            status: Some(Status::Evaluated),
            stage: Stage::Other("full".into()),
            mask_hash: Some("m1".into()),
            fitness: Some(55.5),
            seconds: 3.0,
            ..Outcome::default()
        },
    )
    .unwrap();
    drop(a);
    // Reopen: seeding again does nothing; everything is still there.
    let mut a = Archive::open(&path).unwrap();
    assert!(a.seed(&[node("a", "seed", vec![])]).unwrap().is_empty());
    let nodes = a.nodes().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[0].status, Status::Evaluated);
    assert_eq!(nodes[0].fitness, Some(55.5));
    assert_eq!(a.pending().unwrap().len(), 2);
    assert_eq!(a.proposed_count().unwrap(), 1);
    assert_eq!(a.edges().unwrap().len(), 2);
    assert_eq!(a.by_mask("m1").unwrap().unwrap().id, ids[0]);
    assert!(a.by_mask("m2").unwrap().is_none());
    let h = crate::sandbox::sha256_hex(b"a");
    assert_eq!(a.by_source(&h).unwrap().unwrap().id, ids[0]);
    assert_eq!(a.node(c).unwrap().unwrap().operator, Operator::Crossover);
    assert!(a.nodes().unwrap()[0].operator.is_seed());
    let call = Call {
        proposer: "llm".into(),
        prompt: "p".into(),
        response: Some("r".into()),
        prompt_tokens: 10,
        completion_tokens: 5,
        seconds: 0.1,
        ..Call::default()
    };
    let d = a
        .record(
            &node("", "mutate", vec![(c, "m".into())]),
            Some(&Verdict::Call(crate::search::llm::CallVerdict::NoCode {
                truncated: false,
            })),
            &[call],
        )
        .unwrap();
    assert_eq!(a.tokens_spent().unwrap(), 15);
    assert_eq!(a.token_split().unwrap(), (10, 5));
    let calls = a.calls().unwrap();
    assert_eq!((calls.len(), calls[0].node), (1, Some(d)));
    let failed = a.node(d).unwrap().unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.stage, Some(Stage::Propose));
    assert_eq!(
        failed.verdict,
        Some(Verdict::Call(crate::search::llm::CallVerdict::NoCode {
            truncated: false
        }))
    );
}

#[test]
fn a_file_that_is_not_sqlite_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.sqlite");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let e = Archive::open(&path).err().expect("refused");
    assert!(e.to_string().contains("junk.sqlite"), "{e}");
}

/// Records as this and earlier versions wrote them (stage and verdict as text) load typed,
/// and are written back byte for byte: by `finish` (a duplicate copies its original's) and in
/// `runs show --json`.
#[test]
fn records_in_the_recorded_format_round_trip() {
    use crate::sandbox::Failure;
    use crate::search::llm::CallVerdict;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Archive::open(&dir.path().join("run.sqlite")).unwrap();
    let rows: [(&str, Option<&str>, Option<Verdict>); 7] = [
        (
            "build",
            Some(r#"{"verdict":"compile","diagnostics":"error[E0425]: cannot find `x`\n"}"#),
            Some(Verdict::Guest(Failure::Compile {
                diagnostics: "error[E0425]: cannot find `x`\n".into(),
            })),
        ),
        (
            "check",
            Some(r#"{"verdict":"out_of_fuel","limit":1000000}"#),
            Some(Verdict::Guest(Failure::OutOfFuel { limit: 1_000_000 })),
        ),
        (
            "propose",
            Some(r#"{"verdict":"http_status","status":503,"excerpt":"busy"}"#),
            Some(Verdict::Call(CallVerdict::HttpStatus {
                status: 503,
                excerpt: "busy".into(),
            })),
        ),
        (
            "host",
            Some(r#"{"message":"index out of bounds","verdict":"host_panic"}"#),
            Some(Verdict::HostPanic {
                message: "index out of bounds".into(),
            }),
        ),
        // An older archive's verdict and stage: kept as text.
        (
            "propose",
            Some(r#"{"verdict":"too_large","limit":8388608}"#),
            Some(Verdict::Other(
                r#"{"verdict":"too_large","limit":8388608}"#.into(),
            )),
        ),
        ("full", None, None),
        ("sequential", None, None),
    ];
    let mut ids = Vec::new();
    for (k, (stage, verdict, _)) in rows.iter().enumerate() {
        let id = a.add(&node(&format!("c{k}"), "mutate", vec![])).unwrap();
        a.conn
            .execute(
                "UPDATE nodes SET status = 'failed', stage = ?2, verdict = ?3 WHERE id = ?1",
                params![id, stage, verdict],
            )
            .unwrap();
        ids.push(id);
    }
    let raw = |a: &Archive, id: i64| -> (Option<String>, Option<String>) {
        a.conn
            .query_row(
                "SELECT stage, verdict FROM nodes WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    for ((stage, verdict, typed), id) in rows.iter().zip(&ids) {
        let n = a.node(*id).unwrap().unwrap();
        assert_eq!(n.stage.as_ref().map(Stage::as_str), Some(*stage));
        assert_eq!(&n.verdict, typed, "{verdict:?}");
        // `runs show --json`: the same strings as when they were strings.
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(
            (&json["operator"], &json["proposer"]),
            (&"mutate".into(), &"test".into())
        );
        assert_eq!(json["stage"], *stage);
        assert_eq!(json["verdict"], serde_json::json!(verdict));
        // Written back (as a duplicate's outcome copies them): the same bytes.
        let copy = a
            .add(&node(&format!("copy of {id}"), "mutate", vec![]))
            .unwrap();
        a.finish(
            copy,
            &Outcome {
                status: Some(Status::Duplicate),
                stage: n.stage.clone().unwrap_or_default(),
                verdict: n.verdict.clone(),
                duplicate_of: Some(n.id),
                ..Outcome::default()
            },
        )
        .unwrap();
        assert_eq!(raw(&a, copy), raw(&a, *id));
    }
}

/// Operators and proposers as the search writes them, and names it does not know, are
/// written and read back as the same text.
#[test]
fn operators_and_proposers_keep_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Archive::open(&dir.path().join("run.sqlite")).unwrap();
    let mut seed = node("s", "seed", vec![]);
    seed.proposer = ProposerName::Seed;
    let s = a.seed(&[seed]).unwrap()[0];
    let mut ids = vec![s];
    for (k, (proposer, op)) in [
        ("gp", "tune"),
        ("llm:SmolLM2-135M-Instruct.Q4_1", "repair"),
        ("random", "new"),
        ("someone", "splice"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut n = node(&format!("n{k}"), op, vec![(s, "r".into())]);
        n.proposer = proposer.into();
        ids.push(a.add(&n).unwrap());
    }
    let names: Vec<(String, String)> = a
        .conn
        .prepare("SELECT proposer, operator FROM nodes ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap();
    assert_eq!(
        names,
        [
            ("seed", "seed"),
            ("gp", "tune"),
            ("llm:SmolLM2-135M-Instruct.Q4_1", "repair"),
            ("random", "new"),
            ("someone", "splice"),
        ]
        .map(|(p, o)| (p.to_string(), o.to_string()))
    );
    let nodes = a.nodes().unwrap();
    assert_eq!(nodes[1].proposer, ProposerName::Gp);
    assert_eq!(nodes[1].operator, Operator::Tune);
    assert_eq!(
        nodes[2].proposer,
        ProposerName::Llm("SmolLM2-135M-Instruct.Q4_1".into())
    );
    assert_eq!(nodes[4].operator, Operator::Other("splice".into()));
    assert_eq!(nodes[4].proposer, "someone");
    let edges = a.edges().unwrap();
    assert_eq!(edges[0].operator, Operator::Tune);
    assert_eq!(edges[3].operator.as_str(), "splice");
    assert_eq!(a.proposed_count().unwrap(), 4);
}
