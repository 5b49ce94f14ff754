//! A board with real workers on the real model: `autoprune serve` and `autoprune worker`
//! processes on loopback. A worker `kill -9`ed mid-job loses only that job, which another
//! finishes; the server `kill -9`ed mid-evaluation restarts with nothing lost while its
//! workers wait for it; hostile plugins end as verdicts; the Wanda baseline the workers
//! measure equals `autoprune prune` under the same protocol; the page renders in headless
//! Chromium with no console message, shows a hostile name as text, and shows new results.

mod common;

use common::board::{wait_until, Board};
use common::require_real_data;
use std::time::Duration;

use common::board::TINY_PROTOCOL as PROTOCOL;

#[test]
fn two_workers_finish_every_job_through_worker_and_server_kills() {
    require_real_data!();
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--settings",
        "2:4",
        "--baselines",
        "wanda",
        "--lease-secs",
        "3",
        "--min-interval",
        "0",
    ];
    args.extend(PROTOCOL);
    let mut b = Board::start(&dir.path().join("board"), &args);
    let alice = b.token("alice", false);
    let w = b.token("lab-workers", true);
    let page_before = common::chromium_dom(&b.url, &dir.path().join("p0"));

    let ws = common::workspace();
    let read = |p: &str| std::fs::read(ws.join(p)).unwrap();
    let hostile = "<script>alert('x')</script> mag";
    let subs = [
        ("magnitude.rs", read("candidates/magnitude.rs"), hostile),
        ("panic.rs", read("tests/attacks/panic.rs"), "panics"),
        ("spin.rs", read("tests/attacks/endless_loop.rs"), "spins"),
        ("broken.rs", b"fn score( {".to_vec(), "broken"),
    ];
    let mut ids = Vec::new();
    for (file, body, name) in &subs {
        let r = b.submit(&alice, file, body, &[("name", name), ("publish", "1")]);
        assert_eq!(r.status, 201, "{}", r.text);
        ids.push(r.body["id"].as_i64().unwrap());
    }

    // Worker A takes the first job (the baseline) and is killed in the middle of it.
    let mut a = b.worker(&w, "a", &[]);
    wait_until(Duration::from_secs(60), "worker a leased a job", || {
        b.jobs().get("leased").is_some()
    });
    a.kill().unwrap();
    a.wait().unwrap();
    // The server is killed too, while that dead worker's lease is open, and comes back.
    b.restart();
    assert_eq!(b.jobs()["leased"], 1);

    // Two workers; once one holds a job, the server is killed under it and restarted.
    let mut workers = [
        b.worker(&w, "b", &["--exit-when-idle", "4"]),
        b.worker(&w, "c", &["--exit-when-idle", "4"]),
    ];
    wait_until(Duration::from_secs(60), "a new worker leased a job", || {
        b.worker_log("b").contains("— #") || b.worker_log("c").contains("— #")
    });
    b.kill9();
    std::thread::sleep(Duration::from_secs(2));
    b.restart();
    b.wait_idle(Duration::from_secs(600));
    for w in &mut workers {
        assert!(w.wait().unwrap().success());
    }
    let logs = b.worker_log("b") + &b.worker_log("c");
    assert!(
        logs.contains("unreachable"),
        "a worker waited for the restarted server:\n{logs}"
    );

    // The baseline: handed out twice (the first holder died), measured once, and equal to
    // `autoprune prune` under the board's protocol.
    let board = b.get("/v1/leaderboard", None).body;
    let r = &board["settings"][0];
    let wanda = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "wanda")
        .unwrap();
    let o = common::autoprune()
        .args(["prune", "--metric"])
        .arg(ws.join("candidates/wanda.rs"))
        .args(["--pattern", "2:4", "--skip-dense", "--json"])
        .args(PROTOCOL)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let direct = common::family::json(&o)["perplexity"]["pruned"]["ppl"]
        .as_f64()
        .unwrap();
    assert_eq!(wanda["ppl"].as_f64().unwrap(), direct);
    let base = b.get("/v1/submissions/1", Some(&alice)).body;
    assert_eq!(base["jobs"][0]["attempts"], 2, "{base}");
    assert_eq!(base["jobs"][0]["state"], "done");

    // Every submission ended: magnitude measured (worse than Wanda), the others with verdicts.
    let state =
        |id: i64| b.get(&format!("/v1/submissions/{id}"), Some(&alice)).body["jobs"][0].clone();
    let mag = state(ids[0]);
    assert_eq!(mag["state"], "done", "{mag}");
    assert!(mag["ppl"].as_f64().unwrap() > wanda["ppl"].as_f64().unwrap());
    assert_eq!(state(ids[1])["verdict"]["kind"], "panic");
    let spin = state(ids[2])["verdict"]["kind"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(spin == "timeout" || spin == "out_of_fuel", "{spin}");
    assert_eq!(state(ids[3])["verdict"]["kind"], "compile");
    assert_eq!(r["entries"].as_array().unwrap().len(), 2);
    assert_eq!(r["failed"].as_array().unwrap().len(), 3);

    // The same code again reuses the measured result at once.
    let again = b.submit(&alice, "m.rs", &subs[0].1, &[]);
    let j = state(again.body["id"].as_i64().unwrap());
    assert_eq!(
        (j["state"].as_str(), j["ppl"].as_f64()),
        (Some("done"), mag["ppl"].as_f64())
    );

    // The page in a real browser: no console message, the hostile name as text, the results.
    let Some((before, console)) = page_before else {
        return;
    };
    assert!(console.is_empty(), "{console:#?}");
    assert!(before.contains("No results yet"));
    let (dom, console) = common::chromium_dom(&b.url, &dir.path().join("p1")).unwrap();
    assert!(console.is_empty(), "{console:#?}");
    assert!(
        dom.contains("&lt;script&gt;alert('x')&lt;/script&gt; mag"),
        "{dom}"
    );
    assert!(!dom.contains("<script>"));
    assert_eq!(
        dom.matches("class=\"entry\"").count(),
        1,
        "the resubmission is not ranked twice"
    );
    assert!(dom.contains(&format!("{:.4}", wanda["ppl"].as_f64().unwrap())));
    let detail = common::chromium_dom(
        &format!("{}/submissions/{}", b.url, ids[1]),
        &dir.path().join("p2"),
    )
    .unwrap();
    assert!(detail.1.is_empty(), "{:#?}", detail.1);
    assert!(detail.0.contains("boom: layer of"), "the verdict is shown");
}

/// `search --workers`: a search's candidates evaluated by a board's two workers give an
/// archive bit-identical to the same search evaluated in its own process.
#[test]
fn a_search_on_the_boards_workers_matches_a_local_one() {
    require_real_data!();
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--settings", "2:4", "--baselines", "wanda"];
    args.extend(PROTOCOL);
    let b = Board::start(&dir.path().join("board"), &args);
    let w = b.token("lab", true);
    let s = b.token("run", true);
    let s_search = {
        let o = common::autoprune()
            .args([
                "tokens",
                "add",
                "--search",
                "--name",
                "search-run",
                "--data",
            ])
            .arg(&b.data)
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let mut workers = [b.worker(&w, "x", &[]), b.worker(&w, "y", &[])];
    // Identical masks reuse the earlier result: 2·Wanda prunes exactly what Wanda prunes, so
    // once the baseline is measured its job stops before the evaluation.
    b.wait_idle(Duration::from_secs(300));
    let alice = b.token("alice", false);
    let wanda = std::fs::read_to_string(common::workspace().join("candidates/wanda.rs")).unwrap();
    let twice = wanda.replace("*o = w.abs() * n;", "*o = 2.0 * w.abs() * n;");
    assert_ne!(twice, wanda);
    let r = b.submit(&alice, "twice.rs", twice.as_bytes(), &[]);
    assert_eq!(r.status, 201, "{}", r.text);
    b.wait_idle(Duration::from_secs(300));
    let job = b
        .get(&format!("/v1/submissions/{}", r.body["id"]), Some(&alice))
        .body["jobs"][0]
        .clone();
    let base = b.get("/v1/submissions/1", Some(&alice)).body["jobs"][0].clone();
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["reused_from"], base["id"], "{job}");
    assert_eq!(job["ppl"], base["ppl"]);
    let board = b.get("/v1/leaderboard", None).body;
    assert_eq!(
        board["settings"][0]["entries"].as_array().unwrap().len(),
        1,
        "{board}"
    );
    let search = |run: &str, remote: bool, token: &str| {
        let mut c = common::autoprune();
        c.args(["search", "--run"])
            .arg(dir.path().join(run))
            .args([
                "--budget-candidates",
                "2",
                "--seed",
                "3",
                "--eval-workers",
                "2",
            ])
            .args(common::REDUCED_SEARCH);
        if remote {
            c.args(["--workers", &b.url])
                .env("AUTOPRUNE_SEARCH_TOKEN", token);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    // A worker token cannot send tasks.
    let mut c = common::autoprune();
    let o = c
        .args(["search", "--run"])
        .arg(dir.path().join("refused"))
        .args(["--budget-candidates", "1"])
        .args(common::REDUCED_SEARCH)
        .args(["--workers", &b.url])
        .env("AUTOPRUNE_SEARCH_TOKEN", &s)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    search("remote", true, &s_search);
    search("local", false, "");
    let rows = |run: &str| {
        let a = autoprune::search::archive::Archive::open_existing(
            &dir.path().join(run).join("archive.sqlite"),
        )
        .unwrap();
        a.nodes()
            .unwrap()
            .into_iter()
            .map(|n| {
                (
                    n.id,
                    n.code,
                    n.status,
                    n.proxy,
                    n.fitness,
                    n.heldout,
                    n.mask_hash,
                )
            })
            .collect::<Vec<_>>()
    };
    let (remote, local) = (rows("remote"), rows("local"));
    assert!(remote.len() >= 5, "{remote:?}");
    assert_eq!(remote, local);
    let logs = b.worker_log("x") + &b.worker_log("y");
    assert!(logs.matches("search task evaluated").count() >= 5, "{logs}");
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}
