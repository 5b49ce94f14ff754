//! The LLM proposer against a scripted OpenAI-compatible server on loopback (real HTTP over
//! TCP, inside the test): 429 with `Retry-After`, malformed JSON, empty choices, prose without
//! code, broken code, a compile-time and a run-time attack, then good answers until the token
//! budget is spent. The run survives all of it, records a typed verdict for each, and stops on
//! its budget. A dead endpoint (accepts, never answers) stops the run cleanly while the
//! baselines are evaluated. Streamed answers (server-sent events) are assembled, a stream that
//! falls silent is abandoned after the idle timeout and retried, concurrent requests get
//! different prompts, and a slow proposer is not started when the wall-time budget cannot hold
//! it.

mod common;

use autoprune::sandbox::Failure;
use autoprune::search::archive::{Archive, Node, Operator, Stage, Status, Verdict};
use autoprune::search::gcot::{LlmProposer, PromptSettings, Templates};
use autoprune::search::llm::{CallVerdict, LlmClient, LlmConfig};
use autoprune::search::run::{run, Budget, Pools, Stop};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One scripted answer: status, extra headers, body; or, with `sse`, a stream of events, each
/// written after its delay.
#[derive(Clone, Default)]
struct Reply {
    delay_ms: u64,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    sse: Vec<(u64, String)>,
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    path: String,
    authorization: Option<String>,
    body: String,
}

fn chat(content: &str, prompt_tokens: u64, completion_tokens: u64) -> Reply {
    Reply {
        delay_ms: 0,
        status: 200,
        headers: vec![],
        sse: vec![],
        body: serde_json::json!({
            "id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}
        })
        .to_string(),
    }
}

/// `content` as a chat-completion event stream in pieces of `piece` characters, `gap_ms` apart,
/// then `finish_reason`, a usage chunk and `[DONE]`.
fn streamed(content: &str, piece: usize, gap_ms: u64, finish: &str, usage: (u64, u64)) -> Reply {
    let chars: Vec<char> = content.chars().collect();
    let mut sse: Vec<(u64, String)> = chars
        .chunks(piece)
        .map(|c| {
            let d = serde_json::json!({"choices": [{"index": 0, "delta": {"content": c.iter().collect::<String>()}, "finish_reason": null}]});
            (gap_ms, format!("data: {d}\n\n"))
        })
        .collect();
    let end = serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]});
    sse.push((0, format!("data: {end}\n\n")));
    let u = serde_json::json!({"choices": [], "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}, "timings": {"predicted_per_second": 12.5}});
    sse.push((0, format!("data: {u}\n\ndata: [DONE]\n\n")));
    Reply {
        status: 200,
        sse,
        ..Reply::default()
    }
}

fn metric(name: &str, expr: &str) -> String {
    format!(
        "## Thought\nTry {expr}.\n\n## Code\n```rust\nuse autoprune_sdk::prelude::*;\nstruct M;\n\
         impl Metric for M {{\n    fn info() -> Info {{ Info::new(\"{name}\", \"0.1.0\", \"{expr}\") }}\n\
             fn score(layer: &Layer) -> Result<()> {{\n        let n = &layer.stats().l2_norm;\n\
                 layer.score_rows(|row, out| {{\n            for ((o, w), n) in out.iter_mut().zip(row.weights).zip(n) {{\n\
                         let (w, n) = (w.abs(), *n);\n                *o = {expr};\n            }}\n        }})\n    }}\n}}\n\
         export_metric!(M);\n```\n"
    )
}

/// Read one HTTP/1.1 request (headers + Content-Length body).
fn read_request(s: &mut TcpStream) -> Option<(String, Option<String>, String)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let header_end = loop {
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.lines();
    let path = lines.next()?.split_whitespace().nth(1)?.to_string();
    let mut len = 0usize;
    let mut auth = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().ok()?,
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    while buf.len() < header_end + len {
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = String::from_utf8_lossy(&buf[header_end..header_end + len]).to_string();
    Some((path, auth, body))
}

/// Serve `script` in order, then `after` forever. Returns the base URL and the requests seen.
fn serve(script: Vec<Reply>, after: Reply) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut script = script.into_iter();
        // One thread per connection (a stalled stream does not hold up the retry); the script
        // is handed out in the order the connections arrive.
        for conn in listener.incoming() {
            let Ok(s) = conn else { continue };
            let r = script.next().unwrap_or_else(|| after.clone());
            let log = log.clone();
            std::thread::spawn(move || answer(s, r, &log));
        }
    });
    (url, seen)
}

fn answer(mut s: TcpStream, r: Reply, log: &Mutex<Vec<Seen>>) {
    let Some((path, authorization, body)) = read_request(&mut s) else {
        return;
    };
    log.lock().unwrap().push(Seen {
        at: Instant::now(),
        path,
        authorization,
        body,
    });
    std::thread::sleep(Duration::from_millis(r.delay_ms));
    if !r.sse.is_empty() {
        let head =
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
        if s.write_all(head.as_bytes()).is_err() {
            return;
        }
        for (gap, event) in &r.sse {
            std::thread::sleep(Duration::from_millis(*gap));
            if s.write_all(event.as_bytes())
                .and_then(|_| s.flush())
                .is_err()
            {
                return;
            }
        }
        return;
    }
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        r.body.len()
    );
    for (k, v) in &r.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&r.body);
    let _ = s.write_all(out.as_bytes());
}

fn verdict_kind(n: &Node) -> String {
    n.verdict.as_ref().map(Verdict::kind).unwrap_or_default()
}

fn proposer(url: &str, key_var: Option<&str>, timeout_s: f64, retries: u32) -> Arc<LlmProposer> {
    let client = LlmClient::new(LlmConfig {
        base_url: url.into(),
        model: "scripted".into(),
        api_key_env: key_var.map(str::to_string),
        max_tokens: 256,
        timeout_s,
        max_retries: retries,
        backoff_base_s: 0.05,
        backoff_max_s: 0.2,
        retry_after_max_s: 5.0,
        price_prompt_per_1k: 0.001,
        price_completion_per_1k: 0.002,
        ..LlmConfig::default()
    })
    .unwrap();
    Arc::new(LlmProposer::new(
        client,
        Templates::builtin(),
        PromptSettings {
            sparsity: 0.5,
            pattern: "per output row".into(),
        },
        9,
    ))
}

#[test]
fn a_hostile_endpoint_is_survived_recorded_and_budgeted() {
    let key_var = "AUTOPRUNE_TEST_LLM_KEY";
    // SAFETY of intent: this test binary sets the variable before any thread reads it.
    std::env::set_var(key_var, "sk-test-123");
    let compile_attack = "## Thought\nread the host\n```rust\nuse autoprune_sdk::prelude::*;\n\
        const X: &str = include_str!(\"/etc/hostname\");\nstruct M;\nimpl Metric for M {\n\
        fn info() -> Info { Info::new(\"leak\", \"0\", \"\") }\n\
        fn score(layer: &Layer) -> Result<()> { layer.score_rows(|_, o| o.fill(X.len() as f32)) }\n}\n\
        export_metric!(M);\n```";
    let runtime_attack = format!(
        "## Thought\nspin\n```rust\n{}\n```",
        common::source("tests/attacks/endless_loop.rs")
    );
    let broken = "## Thought\noops\n```rust\nuse autoprune_sdk::prelude::*;\nstruct M;\n\
        impl Metric for M { fn info() -> Info { Info::new(\"m\", \"0\", \"\") }\n\
        fn score(layer: &Layer) -> Result<()> { let x: u32 = \"no\"; Ok(()) } }\nexport_metric!(M);\n```";
    let script = vec![
        // 0: rate limited; the client must wait Retry-After (1 s) and retry.
        Reply {
            delay_ms: 0,
            status: 429,
            headers: vec![("Retry-After".into(), "1".into())],
            body: r#"{"error":{"message":"slow down"}}"#.into(),
            sse: vec![],
        },
        // 1: a good metric.
        chat(&metric("sqrtnorm", "w * n.max(0.0).sqrt()"), 1000, 200),
        // 2: not JSON at all.
        Reply {
            delay_ms: 0,
            status: 200,
            headers: vec![],
            body: "{\"choices\": [oops".into(),
            sse: vec![],
        },
        // 3: no choices.
        Reply {
            delay_ms: 0,
            status: 200,
            headers: vec![],
            body: r#"{"choices": [], "usage": {"prompt_tokens": 900, "completion_tokens": 0}}"#
                .into(),
            sse: vec![],
        },
        // 4: prose, no code.
        chat(
            "I would weight by the norm, but I will not write code today.",
            1000,
            20,
        ),
        // 5: code that does not compile.
        chat(broken, 1000, 150),
        // 6: a compile-time attack.
        chat(compile_attack, 1000, 150),
        // 7: a run-time attack.
        chat(&runtime_attack, 1000, 150),
        // 8: another good metric.
        chat(&metric("sqnorm", "w * n * n"), 1000, 200),
    ];
    // Afterwards: the same good answer (its source is cached: reused, not rebuilt).
    let after = chat(&metric("sqrtnorm", "w * n.max(0.0).sqrt()"), 1000, 200);
    let (url, seen) = serve(script, after);
    // Everything runs through to the full stage: these tests are about the endpoint.
    let ev = common::tiny_search_evaluator(4, 2, 1e9);
    let dir = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(&dir.path().join("a.sqlite")).unwrap();
    let budget = Budget {
        candidates: 100,
        tokens: 15_000,
        ..Budget::default()
    };
    let stop = AtomicBool::new(false);
    let why = run(
        &mut archive,
        &ev,
        proposer(&url, Some(key_var), 30.0, 3),
        &autoprune::search::gcot::seeds(false),
        budget,
        Pools {
            proposal_workers: 1,
            eval_workers: 1,
            lookahead: 2,
            max_proposal_failures: 10,
        },
        &stop,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(why, Stop::Tokens);
    // The budget: a call starts only while the spent tokens are under it, so the overshoot is
    // at most one call (1200 tokens here). (A malformed answer is charged an estimate of its
    // prompt: what the endpoint may have billed.)
    let spent = archive.tokens_spent().unwrap();
    assert!((15_000..15_000 + 1200).contains(&spent), "spent {spent}");

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|s| s.path == "/v1/chat/completions"),
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer sk-test-123")));
    let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(body["model"], "scripted");
    assert_eq!(body["messages"][0]["role"], "system");
    // Retry-After honoured.
    let gap = seen[1].at.duration_since(seen[0].at);
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");

    let nodes = archive.nodes().unwrap();
    let proposed: Vec<&Node> = nodes.iter().filter(|n| !n.operator.is_seed()).collect();
    assert!(
        nodes.iter().all(|n| n.status != Status::Pending),
        "{nodes:#?}"
    );
    let kinds: Vec<(Status, Option<Stage>, String)> = proposed
        .iter()
        .map(|n| (n.status, n.stage.clone(), verdict_kind(n)))
        .collect();
    let expect = [
        (Status::Evaluated, Stage::Sequential, ""),
        (Status::Failed, Stage::Propose, "malformed_json"),
        (Status::Failed, Stage::Propose, "empty_choices"),
        (Status::Failed, Stage::Propose, "no_code"),
        (Status::Failed, Stage::Build, "compile"),
        (Status::Failed, Stage::Build, "compile"),
        (Status::Failed, Stage::Check, "out_of_fuel"),
        (Status::Evaluated, Stage::Sequential, ""),
    ];
    for (i, (st, stage, v)) in expect.iter().enumerate() {
        let got = &kinds[i];
        assert_eq!(got.0, *st, "proposal {i}: {kinds:?}");
        assert_eq!(got.1.as_ref(), Some(stage), "proposal {i}: {kinds:?}");
        if v == &"out_of_fuel" {
            assert!(got.2 == "out_of_fuel" || got.2 == "timeout", "{kinds:?}");
        } else {
            assert_eq!(got.2, *v, "proposal {i}: {kinds:?}");
        }
    }
    // The leak attempt did not leak: its diagnostics do not hold the host's hostname.
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    if !host.trim().is_empty() {
        match &proposed[5].verdict {
            Some(Verdict::Guest(Failure::Compile { diagnostics })) => {
                assert!(!diagnostics.contains(host.trim()))
            }
            v => panic!("{v:?}"),
        }
    }
    // The rest: the cached good answer (same source) reused.
    for n in &proposed[8..] {
        assert_eq!(n.status, Status::Duplicate, "{n:?}");
        assert_eq!(n.duplicate_of, Some(proposed[0].id));
    }
    // Every attempt is on record, linked to its node; the 429 attempt with its verdict.
    let calls = archive.calls().unwrap();
    assert_eq!(calls.len(), seen.len());
    assert!(calls[0]
        .error
        .as_deref()
        .unwrap()
        .contains("\"status\":429"));
    assert_eq!(calls[0].node, calls[1].node);
    assert!(calls
        .iter()
        .all(|c| c.node.is_some() && c.prompt.contains("\"messages\"")));
    assert!(calls[1].response.as_deref().unwrap().contains("sqrtnorm"));
    // Later prompts walk the graph: the failures and their verdicts are in them.
    let last = &calls.last().unwrap().prompt;
    assert!(last.contains("failed at build"), "{last}");
    assert!(last.contains("Lessons so far"), "{last}");
    // Tokens per node add up to the calls.
    let node_tokens: u64 = nodes.iter().map(|n| n.tokens).sum();
    assert_eq!(node_tokens, spent);
}

#[test]
fn a_dead_endpoint_stops_the_run_cleanly() {
    // Accepts connections, never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    // Everything runs through to the full stage: these tests are about the endpoint.
    let ev = common::tiny_search_evaluator(4, 2, 1e9);
    let dir = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(&dir.path().join("a.sqlite")).unwrap();
    let stop = AtomicBool::new(false);
    let t = Instant::now();
    let why = run(
        &mut archive,
        &ev,
        proposer(&url, None, 0.3, 1),
        &autoprune::search::gcot::seeds(false),
        Budget::default(),
        Pools {
            proposal_workers: 2,
            eval_workers: 1,
            lookahead: 3,
            max_proposal_failures: 3,
        },
        &stop,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(why, Stop::ProposerFailing);
    assert!(t.elapsed() < Duration::from_secs(120));
    let nodes = archive.nodes().unwrap();
    // The baselines were evaluated regardless.
    assert!(nodes
        .iter()
        .filter(|n| n.operator.is_seed())
        .all(|n| n.status == Status::Evaluated));
    let failed: Vec<&Node> = nodes.iter().filter(|n| !n.operator.is_seed()).collect();
    assert!(failed.len() >= 3);
    for n in failed {
        assert_eq!(n.status, Status::Failed);
        assert_eq!(verdict_kind(n), "timeout", "{n:?}");
    }
    // Two attempts (one retry) per proposal, each on record.
    let calls = archive.calls().unwrap();
    assert!(calls.len() >= 6, "{}", calls.len());
}

/// The CLI end to end on the real SmolLM2 (reduced protocol) against the scripted server: the
/// LLM settings are recorded, `--resume` (given the endpoint again) raises the budget and
/// continues with them.
#[test]
fn cli_search_with_an_llm_endpoint_and_resume() {
    common::require_real_data!();
    let script = vec![chat(&metric("sqrtnorm", "w * n.max(0.0).sqrt()"), 800, 100)];
    let (url, seen) = serve(script, chat(&metric("cube", "w * n * n * n"), 800, 100));
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("s");
    let o = common::autoprune()
        .args(["search", "--run"])
        .arg(&run_dir)
        .args([
            "--llm",
            &url,
            "--llm-model",
            "scripted",
            "--budget-candidates",
            "1",
        ])
        .args(common::REDUCED_SEARCH)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The endpoint is never taken from the archive: without `--llm` again, no resume.
    let o = common::autoprune()
        .args(["search", "--resume"])
        .arg(&run_dir)
        .args(["--budget-candidates", "2", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("--llm {url}")));
    let o = common::autoprune()
        .args(["search", "--resume"])
        .arg(&run_dir)
        .args(["--llm", &url, "--budget-candidates", "2", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["stopped"], "candidates");
    let a = Archive::open_existing(&run_dir.join("archive.sqlite")).unwrap();
    let nodes = a.nodes().unwrap();
    let proposed: Vec<&Node> = nodes.iter().filter(|n| !n.operator.is_seed()).collect();
    assert_eq!(proposed.len(), 2);
    for n in &proposed {
        assert_eq!(n.proposer, "llm:scripted");
        assert!(
            n.status != Status::Pending && n.status != Status::Failed,
            "{n:?}"
        );
        assert_eq!(n.tokens, 900);
    }
    assert!(proposed[0].thought.contains("n.max(0.0).sqrt()"));
    assert_eq!(a.calls().unwrap().len(), 2);
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(a.tokens_spent().unwrap(), 1800);
}

/// Ctrl-C while a request is in flight: the request lands within the grace period, its call and
/// candidate are recorded (pending, for `--resume`), and the run stops as interrupted.
#[test]
fn a_stop_lets_the_request_in_flight_land() {
    let slow = Reply {
        delay_ms: 1500,
        ..chat(&metric("slow", "w * n * n"), 700, 100)
    };
    let (url, seen) = serve(vec![], slow);
    // Everything runs through to the full stage: these tests are about the endpoint.
    let ev = common::tiny_search_evaluator(4, 2, 1e9);
    let dir = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(&dir.path().join("a.sqlite")).unwrap();
    let stop = AtomicBool::new(false);
    let why = std::thread::scope(|s| {
        s.spawn(|| {
            let t = Instant::now();
            while seen.lock().unwrap().is_empty() && t.elapsed() < Duration::from_secs(120) {
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        run(
            &mut archive,
            &ev,
            proposer(&url, None, 30.0, 0),
            &autoprune::search::gcot::seeds(false),
            Budget::default(),
            Pools {
                proposal_workers: 1,
                eval_workers: 1,
                lookahead: 2,
                max_proposal_failures: 3,
            },
            &stop,
            &mut |_| {},
        )
        .unwrap()
    });
    assert_eq!(why, Stop::Interrupted);
    let nodes = archive.nodes().unwrap();
    let proposed: Vec<&Node> = nodes.iter().filter(|n| !n.operator.is_seed()).collect();
    assert_eq!(proposed.len(), 1, "{nodes:#?}");
    assert_eq!(proposed[0].status, Status::Pending);
    assert_eq!(proposed[0].tokens, 800);
    assert_eq!(archive.calls().unwrap().len(), 1);
    assert_eq!(archive.tokens_spent().unwrap(), 800);
}

/// The same answer four times at once, two evaluation threads: one evaluation, three reuses.
#[test]
fn identical_answers_in_parallel_are_evaluated_once() {
    let (url, _) = serve(vec![], chat(&metric("same", "w * n * n"), 100, 10));
    // Everything runs through to the full stage: these tests are about the endpoint.
    let ev = common::tiny_search_evaluator(4, 2, 1e9);
    let dir = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(&dir.path().join("a.sqlite")).unwrap();
    let why = run(
        &mut archive,
        &ev,
        proposer(&url, None, 30.0, 0),
        &autoprune::search::gcot::seeds(false),
        Budget {
            candidates: 4,
            ..Budget::default()
        },
        Pools {
            proposal_workers: 4,
            eval_workers: 2,
            lookahead: 6,
            max_proposal_failures: 3,
        },
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(why, Stop::Candidates);
    let nodes = archive.nodes().unwrap();
    let proposed: Vec<&Node> = nodes.iter().filter(|n| !n.operator.is_seed()).collect();
    assert_eq!(proposed.len(), 4);
    let evaluated = proposed
        .iter()
        .filter(|n| n.status == Status::Evaluated)
        .count();
    let reused = proposed
        .iter()
        .filter(|n| n.status == Status::Duplicate)
        .count();
    assert_eq!((evaluated, reused), (1, 3), "{proposed:#?}");
}

/// Streamed answers: one stream falls silent (abandoned after the idle timeout, retried), the
/// next arrives in small pieces over more than the idle timeout in all (assembled, its usage
/// read from the final chunk), and one is cut off at max_tokens (a typed `no_code`, truncated).
#[test]
fn streamed_answers_are_assembled_and_silence_is_a_timeout() {
    let good = metric("streamed", "w * n * n");
    // Stalls after two events for longer than the idle timeout.
    let mut stall = streamed(&good, 40, 0, "stop", (1, 1));
    stall.sse.truncate(2);
    stall.sse.push((2500, "data: [DONE]\n\n".into()));
    // 12 pieces 150 ms apart: 1.8 s in all, never 0.8 s silent.
    let slow = streamed(&good, good.len().div_ceil(12), 150, "stop", (1234, 321));
    let cut = streamed(
        "## Thought\nlong\n```rust\nfn main() {",
        8,
        0,
        "length",
        (1000, 64),
    );
    let (url, seen) = serve(vec![stall, slow, cut.clone()], cut);
    let client = LlmClient::new(LlmConfig {
        base_url: url,
        model: "scripted".into(),
        max_tokens: 64,
        idle_timeout_s: 0.8,
        max_retries: 1,
        backoff_base_s: 0.05,
        backoff_max_s: 0.1,
        ..LlmConfig::default()
    })
    .unwrap();
    let p = Arc::new(LlmProposer::new(
        client,
        Templates::builtin(),
        PromptSettings {
            sparsity: 0.5,
            pattern: "per output row".into(),
        },
        3,
    ));
    let ev = common::tiny_search_evaluator(4, 2, 1e9);
    let dir = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(&dir.path().join("a.sqlite")).unwrap();
    let why = run(
        &mut archive,
        &ev,
        p,
        &autoprune::search::gcot::seeds(false),
        Budget {
            candidates: 2,
            ..Budget::default()
        },
        Pools::default(),
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(why, Stop::Candidates);
    // The request asked for a stream with usage.
    let body: serde_json::Value = serde_json::from_str(&seen.lock().unwrap()[0].body).unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert!(
        body.get("return_progress").is_none(),
        "llama.cpp-only field sent: {body}"
    );
    let calls = archive.calls().unwrap();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    let idle: serde_json::Value = serde_json::from_str(calls[0].error.as_deref().unwrap()).unwrap();
    assert_eq!(idle["verdict"], "idle_timeout", "{idle}");
    assert_eq!(idle["seconds"], 0.8);
    assert!(idle["received"].as_u64().unwrap() > 0);
    // The second attempt of the same proposal: the assembled stream, recorded with its usage.
    assert_eq!(calls[0].node, calls[1].node);
    assert!(calls[1].error.is_none(), "{:?}", calls[1].error);
    assert_eq!(
        (calls[1].prompt_tokens, calls[1].completion_tokens),
        (1234, 321)
    );
    let rec: serde_json::Value =
        serde_json::from_str(calls[1].response.as_deref().unwrap()).unwrap();
    assert_eq!(rec["stream"], true);
    assert_eq!(rec["content"], good.as_str());
    assert_eq!(rec["finish_reason"], "stop");
    assert_eq!(rec["final_chunk"]["timings"]["predicted_per_second"], 12.5);
    assert!(calls[1].seconds >= 1.5, "{}", calls[1].seconds);
    let nodes = archive.nodes().unwrap();
    let proposed: Vec<&Node> = nodes.iter().filter(|n| !n.operator.is_seed()).collect();
    assert_eq!(proposed[0].status, Status::Evaluated, "{:?}", proposed[0]);
    assert!(proposed[0].code.contains("w * n * n"));
    // Cut off at max_tokens: no complete code block, and the verdict says why.
    assert_eq!(proposed[1].status, Status::Failed);
    assert_eq!(
        proposed[1].verdict,
        Some(Verdict::Call(CallVerdict::NoCode { truncated: true }))
    );
}

/// Two requests in flight at once never get the same prompt: the second is planned apart from
/// the first and its prompt lists the first as being written.
#[test]
fn concurrent_proposals_get_different_prompts() {
    let slow = Reply {
        delay_ms: 1500,
        ..chat(&metric("slow", "w * n * n"), 700, 100)
    };
    let (url, seen) = serve(vec![], slow);
    let ev = common::tiny_search_evaluator(4, 2, 1e9);
    let dir = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(&dir.path().join("a.sqlite")).unwrap();
    run(
        &mut archive,
        &ev,
        proposer(&url, None, 30.0, 0),
        &autoprune::search::gcot::seeds(false),
        Budget {
            candidates: 2,
            ..Budget::default()
        },
        Pools {
            proposal_workers: 2,
            eval_workers: 1,
            lookahead: 3,
            max_proposal_failures: 3,
        },
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    // Both were in flight together.
    assert!(seen[1].at.duration_since(seen[0].at) < Duration::from_millis(1400));
    let user = |s: &Seen| -> String {
        let b: serde_json::Value = serde_json::from_str(&s.body).unwrap();
        b["messages"][1]["content"].as_str().unwrap().to_string()
    };
    let (a, b) = (user(&seen[0]), user(&seen[1]));
    assert_ne!(a, b);
    let marker = "Being written right now by other requests";
    assert_eq!(
        [&a, &b].iter().filter(|u| u.contains(marker)).count(),
        1,
        "{a}\n-----\n{b}"
    );
    // Different plans: the two edges differ in operator or parents.
    let edges = archive.edges().unwrap();
    let plan_of = |child: i64| -> (Operator, Vec<i64>) {
        let es: Vec<_> = edges.iter().filter(|e| e.child == child).collect();
        (
            es.first().map_or(Operator::New, |e| e.operator.clone()),
            es.iter().map(|e| e.parent).collect(),
        )
    };
    let nodes = archive.nodes().unwrap();
    let ids: Vec<i64> = nodes
        .iter()
        .filter(|n| !n.operator.is_seed())
        .map(|n| n.id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(plan_of(ids[0]), plan_of(ids[1]), "{nodes:#?}");
}

/// A proposer whose every proposal takes `seconds` and produces no candidate.
struct Slow {
    seconds: f64,
    starts: Mutex<Vec<Instant>>,
}

impl autoprune::search::run::Proposer for Slow {
    fn name(&self) -> String {
        "slow".into()
    }

    fn propose(
        &self,
        _ctx: autoprune::search::run::Context,
    ) -> autoprune::search::run::ProposalFuture {
        self.starts.lock().unwrap().push(Instant::now());
        let d = Duration::from_secs_f64(self.seconds);
        Box::pin(async move {
            tokio::time::sleep(d).await;
            Ok(autoprune::search::run::Proposal {
                node: autoprune::search::archive::NewNode {
                    proposer: "slow".into(),
                    operator: "new".into(),
                    ..Default::default()
                },
                failure: Some(Verdict::Other(r#"{"verdict":"test"}"#.into())),
                calls: vec![],
            })
        })
    }
}

/// Near the end of the wall-time budget a proposal that cannot finish in time is not started:
/// with 1.5 s proposals and a 5 s budget, three start (at 0, 1.5 and 3 s), the fourth would end
/// at 6 s, so the run stops at 4.5 s with nothing in flight, instead of starting it and
/// abandoning it at the deadline.
#[test]
fn a_proposal_that_cannot_finish_in_time_is_not_started() {
    let ev = common::tiny_search_evaluator(4, 2, 1e9);
    let dir = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(&dir.path().join("a.sqlite")).unwrap();
    let slow = Arc::new(Slow {
        seconds: 1.5,
        starts: Mutex::new(Vec::new()),
    });
    let t = Instant::now();
    let why = run(
        &mut archive,
        &ev,
        slow.clone(),
        &[],
        Budget {
            candidates: 100,
            seconds: 5.0,
            ..Budget::default()
        },
        Pools {
            max_proposal_failures: 100,
            ..Pools::default()
        },
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    let took = t.elapsed();
    assert_eq!(why, Stop::Time);
    let starts = slow.starts.lock().unwrap().len();
    let recorded = archive.nodes().unwrap().len();
    // Every proposal started was recorded (none abandoned), and the run ended before the
    // deadline: the last start left at least one proposal's time.
    assert_eq!(starts, recorded);
    assert_eq!(starts, 3, "{starts} proposals started in {took:?}");
    assert!(took < Duration::from_secs_f64(5.0), "{took:?}");
}

fn one_chat(client: &LlmClient) -> autoprune::search::llm::ChatOutcome {
    let msgs = [autoprune::search::llm::Message {
        role: "user".into(),
        content: "hi".into(),
    }];
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(client.chat(&msgs, 0))
}

fn client(url: &str, key_var: Option<&str>) -> LlmClient {
    LlmClient::new(LlmConfig {
        base_url: url.into(),
        api_key_env: key_var.map(str::to_string),
        timeout_s: 10.0,
        max_retries: 0,
        ..LlmConfig::default()
    })
    .unwrap()
}

/// Issue 14, item 7: a response body is read up to 8 MiB and no further, whether or not the
/// server declares its length; the verdict says so.
#[test]
fn an_endless_response_body_is_cut_at_the_cap() {
    use autoprune::search::llm::{CallVerdict, MAX_RESPONSE_BYTES};
    // Declared: a Content-Length over the cap is refused before the body is read.
    let big = Reply {
        body: "x".repeat(MAX_RESPONSE_BYTES + 1),
        ..chat("", 1, 1)
    };
    let (url, _) = serve(vec![], big);
    let out = one_chat(&client(&url, None));
    assert_eq!(
        out.result.unwrap_err(),
        CallVerdict::ResponseTooLarge {
            limit: MAX_RESPONSE_BYTES as u64
        }
    );
    // Undeclared: a body streamed without a length (at most 64 MiB, then the server stops).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let sent = Arc::new(Mutex::new(0usize));
    let counter = sent.clone();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        read_request(&mut s);
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
        );
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..64 {
            if s.write_all(&chunk).is_err() {
                break;
            }
            *counter.lock().unwrap() += chunk.len();
        }
    });
    let t = Instant::now();
    let out = one_chat(&client(&url, None));
    assert!(matches!(
        out.result,
        Err(CallVerdict::ResponseTooLarge { .. })
    ));
    assert!(t.elapsed() < Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        *sent.lock().unwrap() < 32 << 20,
        "the client stopped reading"
    );
}

/// Issue 14, item 7: a redirect to another origin is not followed (the key never reaches the
/// other server); a redirect within the origin is.
#[test]
fn redirects_leave_no_origin() {
    std::env::set_var("AUTOPRUNE_TEST_REDIRECT_KEY", "sk-redirect-secret");
    let (other, other_seen) = serve(vec![], chat("elsewhere", 1, 1));
    let away = Reply {
        status: 307,
        headers: vec![("Location".into(), format!("{other}/chat/completions"))],
        body: String::new(),
        ..chat("", 1, 1)
    };
    let (url, seen) = serve(vec![away], chat("home", 1, 1));
    let out = one_chat(&client(&url, Some("AUTOPRUNE_TEST_REDIRECT_KEY")));
    assert!(matches!(
        out.result,
        Err(autoprune::search::llm::CallVerdict::HttpStatus { status: 307, .. })
    ));
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(
        other_seen.lock().unwrap().is_empty(),
        "followed to another origin"
    );
    // A relative Location: the same origin as the server that sends it.
    let home = Reply {
        status: 307,
        headers: vec![("Location".into(), "/v1/chat/completions".into())],
        body: String::new(),
        ..chat("", 1, 1)
    };
    let (url, seen) = serve(vec![home], chat("home", 1, 1));
    let out = one_chat(&client(&url, None));
    assert_eq!(out.result.unwrap().content, "home");
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// Issue 14, item 7: the API key is not sent over plain http:// to a host that is not
/// loopback unless `allow_insecure_key` says so (refused when the client is made: no request
/// is ever sent).
#[test]
fn an_api_key_never_travels_over_plain_http_off_the_machine() {
    std::env::set_var("AUTOPRUNE_TEST_PLAIN_KEY", "sk-plain-secret");
    let cfg = |url: &str, allow: bool| LlmConfig {
        base_url: url.into(),
        api_key_env: Some("AUTOPRUNE_TEST_PLAIN_KEY".into()),
        allow_insecure_key: allow,
        ..LlmConfig::default()
    };
    let err = LlmClient::new(cfg("http://203.0.113.7:8080/v1", false))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("plain http://") && err.contains("--allow-insecure-key"),
        "{err}"
    );
    assert!(LlmClient::new(cfg("http://203.0.113.7:8080/v1", true)).is_ok());
    assert!(LlmClient::new(cfg("https://203.0.113.7/v1", false)).is_ok());
    for local in [
        "http://127.0.0.1:8080/v1",
        "http://localhost:1/v1",
        "http://[::1]:2/v1",
    ] {
        assert!(LlmClient::new(cfg(local, false)).is_ok(), "{local}");
    }
}
