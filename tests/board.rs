//! `autoprune serve` over real HTTP on loopback, with no model needed: tokens, typed refusals
//! of bad input with the record unchanged, quotas, the job protocol's checks, the page's
//! escaping, and a `kill -9` of the server with nothing lost.

mod common;

use common::board::Board;
use serde_json::json;

/// A board with one setting, the Wanda baseline, tight limits.
fn small_board(dir: &std::path::Path) -> Board {
    Board::start(
        &dir.join("board"),
        &[
            "--settings",
            "2:4",
            "--baselines",
            "wanda",
            "--seqlen",
            "64",
            "--calib-windows",
            "1",
            "--eval-windows",
            "1",
            "--min-interval",
            "0",
            "--submissions-per-hour",
            "4",
            "--max-source-bytes",
            "4096",
            "--max-component-bytes",
            "65536",
            "--lease-secs",
            "60",
            "--header-secs",
            "1",
        ],
    )
}

#[test]
fn refuses_bad_input_with_typed_errors_and_loses_nothing_across_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = small_board(dir.path());
    let alice = b.token("alice", false);
    let bob = b.token("bob", false);
    let w = b.token("w", true);
    let wanda = std::fs::read(common::workspace().join("candidates/wanda.rs")).unwrap();

    // Tokens: missing, unknown, the wrong role.
    let r = b.submit("", "m.rs", &wanda, &[]);
    assert_eq!((r.status, r.code()), (401, "unauthorized"), "{}", r.text);
    assert!(r.headers.contains_key("www-authenticate"));
    let r = b.submit("ap_0000", "m.rs", &wanda, &[]);
    assert_eq!((r.status, r.code()), (401, "unauthorized"));
    let r = b.submit(&w, "m.rs", &wanda, &[]);
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let r = b.post_json("/v1/jobs/lease", Some(&alice), &json!({"instance": "x"}));
    assert_eq!((r.status, r.code()), (403, "forbidden"));

    // Bodies: not multipart, an unknown field, oversized, not UTF-8, not a component, a core
    // module, an unknown or unranked setting, no file.
    let r = b.post_raw(
        "/v1/submissions",
        Some(&alice),
        "text/plain",
        b"hi".to_vec(),
    );
    assert_eq!((r.status, r.code()), (400, "bad_multipart"), "{}", r.text);
    let r = b.submit(&alice, "m.rs", &wanda, &[("color", "red")]);
    assert_eq!((r.status, r.code()), (400, "bad_field"));
    let r = b.submit(&alice, "m.rs", &vec![b'/'; 5000], &[]);
    assert_eq!((r.status, r.code()), (413, "too_large"));
    let r = b.submit(&alice, "m.wasm", &vec![0u8; 300 << 10], &[]);
    assert_eq!(r.status, 413, "{}", r.text);
    let r = b.submit(&alice, "m.rs", b"fn main() { \xff\xfe }", &[]);
    assert_eq!((r.status, r.code()), (400, "not_utf8"));
    let r = b.submit(&alice, "m.wasm", b"not wasm at all", &[]);
    assert_eq!((r.status, r.code()), (422, "not_a_component"), "{}", r.text);
    let core = wat::parse_str("(module (func (export \"score\")))").unwrap();
    let r = b.submit(&alice, "m.wasm", &core, &[]);
    assert_eq!((r.status, r.code()), (422, "not_a_component"), "{}", r.text);
    let r = b.submit(&alice, "m.rs", &wanda, &[("settings", "50%")]);
    assert_eq!((r.status, r.code()), (400, "unknown_setting"));
    assert!(r.body["error"]["message"].as_str().unwrap().contains("2:4"));
    let r = b.submit(&alice, "m.rs", &wanda, &[("settings", "\u{1b}[2J")]);
    assert_eq!((r.status, r.code()), (400, "unknown_setting"));
    assert!(!r.text.contains('\u{1b}'));
    let (ctype, body) = common::board::multipart(&[("name", None, b"x")]);
    let r = b.post_raw("/v1/submissions", Some(&alice), &ctype, body);
    assert_eq!((r.status, r.code()), (400, "no_metric"));
    // Nothing of that was recorded: the queue holds the baseline's one job.
    assert_eq!(b.jobs(), json!({"queued": 1}));

    // A good submission with a hostile name; only its submitter reads its status.
    let hostile = "<img src=x onerror=alert(1)>\u{1b}[31m";
    let r = b.submit(
        &alice,
        "wanda.rs",
        &wanda,
        &[("name", hostile), ("publish", "true")],
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_i64().unwrap();
    let s = b.get(&format!("/v1/submissions/{id}"), Some(&alice));
    assert_eq!(s.status, 200);
    assert_eq!(s.body["jobs"][0]["state"], "queued");
    assert_eq!(s.body["jobs"][0]["setting"], "2:4");
    assert!(!s.body["name"].as_str().unwrap().contains('\u{1b}'));
    assert_eq!(
        b.get(&format!("/v1/submissions/{id}"), Some(&bob)).status,
        404
    );
    assert_eq!(b.get("/v1/submissions/999", Some(&alice)).status, 404);
    assert_eq!(b.get("/v1/submissions/x%00", Some(&alice)).status, 404);

    // The job protocol: the baseline is leased first; results and renewals are checked.
    let l = b.post_json("/v1/jobs/lease", Some(&w), &json!({"instance": "i1"}));
    assert_eq!(l.status, 200, "{}", l.text);
    assert_eq!(l.body["name"], "wanda");
    let job = l.body["job_id"].as_i64().unwrap();
    let lease = l.body["lease"].as_str().unwrap().to_string();
    let fp = json!({"model": "m.gguf", "calib_tokens": 1, "eval_tokens": 2, "eval_sha256": "00"});
    let measured = |ppl: serde_json::Value| json!({"instance": "i1", "lease": lease, "outcome": {"measured": {"ppl": ppl, "sparsity": 0.5, "seconds": 1.0, "fingerprint": fp}}});
    let path = format!("/v1/jobs/{job}/result");
    let r = b.post_json(&path, Some(&w), &json!({"instance": "i2", "lease": lease, "outcome": {"failed": {"kind": "x", "detail": ""}}}));
    assert_eq!((r.status, r.code()), (409, "not_held"), "{}", r.text);
    let r = b.post_json(
        &format!("/v1/jobs/{job}/renew"),
        Some(&w),
        &json!({"instance": "i1", "lease": "forged"}),
    );
    assert_eq!((r.status, r.code()), (409, "not_held"));
    let r = b.post_json(&path, Some(&w), &measured(json!(-1.0)));
    assert_eq!((r.status, r.code()), (400, "bad_result"));
    let r = b.post_raw(
        &path,
        Some(&w),
        "application/json",
        measured(json!(1.0))
            .to_string()
            .replace("1.0,", "1e999,")
            .into_bytes(),
    );
    assert_eq!((r.status, r.code()), (400, "bad_json"), "{}", r.text);
    let r = b.post_raw(
        &path,
        Some(&w),
        "application/json",
        measured(json!(50.0))
            .to_string()
            .replace("50.0", "NaN")
            .into_bytes(),
    );
    assert_eq!((r.status, r.code()), (400, "bad_json"));
    let r = b.post_json(
        &path,
        Some(&w),
        &json!({"instance": "i1", "lease": lease, "outcome": {"measured": {"ppl": 5.0}}}),
    );
    assert_eq!((r.status, r.code()), (400, "bad_json"));
    let r = b.post_json("/v1/jobs/77/result", Some(&w), &measured(json!(50.0)));
    assert_eq!((r.status, r.code()), (404, "no_such_job"));
    assert_eq!(b.jobs(), json!({"queued": 1, "leased": 1}));
    let r = b.post_json(
        &format!("/v1/jobs/{job}/renew"),
        Some(&w),
        &json!({"instance": "i1", "lease": lease}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let r = b.post_json(&path, Some(&w), &measured(json!(50.0)));
    assert_eq!(r.status, 200, "{}", r.text);
    // Once is enough: the lease is gone.
    assert_eq!(
        b.post_json(&path, Some(&w), &measured(json!(40.0))).status,
        409
    );

    // Quotas: four an hour; the fifth is 429 with Retry-After, and records nothing.
    let mut quiet = Vec::new();
    for i in 0..3 {
        let r = b.submit(&alice, "m.rs", format!("// {i}\n").as_bytes(), &[]);
        assert_eq!(r.status, 201, "{}", r.text);
        quiet.push(r.body["id"].as_i64().unwrap());
    }
    let r = b.submit(&alice, "m.rs", b"// 4", &[]);
    assert_eq!((r.status, r.code()), (429, "quota"), "{}", r.text);
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait > 3000 && wait <= 3600, "{wait}");
    // Another submitter is not held back by alice's quota.
    assert_eq!(b.submit(&bob, "m.rs", b"// bob", &[]).status, 201);

    // The page escapes every submitted string and forbids scripts.
    let page = b.get("/", None);
    assert_eq!(page.status, 200);
    assert!(page.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert!(!page.text.contains("<img src=x"));
    assert!(page.text.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!page.text.contains('\u{1b}'));
    let detail = b.get(&format!("/submissions/{id}"), None);
    assert!(
        detail.text.contains("impl Metric for Wanda"),
        "published code is shown"
    );
    let unpublished = b.get(&format!("/submissions/{}", quiet[0]), None);
    assert!(unpublished.text.contains("not published"));
    // A verdict's detail (compiler diagnostics quote the code) is public only when the code
    // is: the worker fails the published submission and an unpublished one.
    for (sid, secret) in [(id, "PUBLIC-DETAIL"), (quiet[0], "SECRET-LINE")] {
        let l = b.post_json("/v1/jobs/lease", Some(&w), &json!({"instance": "i1"}));
        assert_eq!(l.body["submission_id"], sid, "{}", l.text);
        let (job, lease) = (
            l.body["job_id"].as_i64().unwrap(),
            l.body["lease"].as_str().unwrap(),
        );
        let r = b.post_json(&format!("/v1/jobs/{job}/result"), Some(&w),
            &json!({"instance": "i1", "lease": lease, "outcome": {"failed": {"kind": "compile", "detail": secret}}}));
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert!(b
        .get(&format!("/submissions/{id}"), None)
        .text
        .contains("PUBLIC-DETAIL"));
    let page = b.get(&format!("/submissions/{}", quiet[0]), None).text;
    assert!(
        page.contains("compile") && !page.contains("SECRET-LINE"),
        "{page}"
    );
    assert!(!b.get("/v1/leaderboard", None).text.contains("SECRET-LINE"));
    assert!(!b.get("/", None).text.contains("SECRET-LINE"));
    let own = b.get(&format!("/v1/submissions/{}", quiet[0]), Some(&alice));
    assert_eq!(own.body["jobs"][0]["verdict"]["detail"], "SECRET-LINE");
    assert_eq!(b.get("/nothing", None).code(), "not_found");

    // kill -9 and restart: every submission, result and lease is still there.
    let before = (b.jobs(), b.get("/v1/leaderboard", None).body);
    b.kill9();
    b.restart();
    assert_eq!((b.jobs(), b.get("/v1/leaderboard", None).body), before);
    assert_eq!(before.1["settings"][0]["entries"][0]["ppl"], 50.0);
    // The fingerprint is pinned: a worker on other data is refused.
    let l = b.post_json("/v1/jobs/lease", Some(&w), &json!({"instance": "i1"}));
    let (job, lease) = (
        l.body["job_id"].as_i64().unwrap(),
        l.body["lease"].as_str().unwrap(),
    );
    let other =
        json!({"model": "m.gguf", "calib_tokens": 1, "eval_tokens": 3, "eval_sha256": "00"});
    let r = b.post_json(&format!("/v1/jobs/{job}/result"), Some(&w),
        &json!({"instance": "i1", "lease": lease, "outcome": {"measured": {"ppl": 9.0, "sparsity": 0.5, "seconds": 1.0, "fingerprint": other}}}));
    assert_eq!((r.status, r.code()), (409, "protocol_mismatch"));
    // Not the job's fault: back in the queue, the attempt unspent.
    let s = b
        .get(&format!("/v1/submissions/{}", quiet[1]), Some(&alice))
        .body;
    assert_eq!(
        (
            s["jobs"][0]["state"].as_str(),
            s["jobs"][0]["attempts"].as_i64()
        ),
        (Some("queued"), Some(0)),
        "{s}"
    );
    // A second server on the same board is refused.
    let o = common::autoprune()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&b.data)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("another `autoprune serve`"));
    // Every refusal above is in the audit log.
    drop(b);
    let store = autoprune::board::store::Store::open(&dir.path().join("board"), None).unwrap();
    let log = store.audit_log().unwrap();
    let refused = log.iter().filter(|e| e.2 == "refused").count();
    assert!(refused >= 20, "{refused} refusals audited: {log:#?}");
    assert!(log.iter().any(|e| e.3.contains("protocol_mismatch")));
}

/// A client that sends its headers slowly is cut off, and the board keeps serving others.
#[test]
fn a_slow_client_is_cut_off() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let b = small_board(dir.path());
    let addr = b.url.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let start = std::time::Instant::now();
    let mut buf = Vec::new();
    // The server answers 408 or just closes; either way the connection ends.
    let _ = slow.read_to_end(&mut buf);
    let waited = start.elapsed();
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    assert_eq!(b.get("/v1/health", None).status, 200);
}

#[test]
fn a_board_refuses_another_protocol_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    drop(small_board(dir.path()));
    let o = common::autoprune()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--settings",
            "50%",
            "--data",
        ])
        .arg(dir.path().join("board"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot change"));
}
