//! The search: a short GP search on a tiny random model (in process), and the kill -9 /
//! `--resume` test on the real SmolLM2 under a reduced protocol (a real process, really
//! killed).

mod common;

use autoprune::search::archive::{Archive, Status, Verdict};
use autoprune::search::proposer::{GpProposer, GpSettings};
use autoprune::search::run::{run, Budget, Pools, Stop};
use common::autoprune;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

#[test]
fn short_gp_search_on_a_tiny_model_is_at_least_as_good_as_magnitude() {
    let ev = common::tiny_search_evaluator(8, 4, 1.5);
    let dir = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(&dir.path().join("a.sqlite")).unwrap();
    let gp = std::sync::Arc::new(GpProposer::new(GpSettings::default(), 5, false));
    let stop = AtomicBool::new(false);
    let why = run(
        &mut archive,
        &ev,
        gp,
        &GpProposer::seeds(false),
        Budget {
            candidates: 10,
            ..Budget::default()
        },
        Pools::default(),
        &stop,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(why, Stop::Candidates);
    let nodes = archive.nodes().unwrap();
    // Three seeds (magnitude, Wanda, RIA) and ten proposals.
    assert_eq!(nodes.len(), 13);
    assert!(nodes.iter().all(|n| n.status != Status::Pending));
    let magnitude = nodes[0].fitness.expect("the magnitude seed is evaluated");
    // The best *proposed* candidate (seeds excluded; a proposal that prunes like a seed counts
    // with the seed's result) is at least as good as magnitude.
    let best_proposed = nodes[3..]
        .iter()
        .filter_map(|n| n.fitness)
        .fold(f64::INFINITY, f64::min);
    let summary: Vec<_> = nodes
        .iter()
        .map(|n| (n.id, n.status, n.fitness, n.thought.clone()))
        .collect();
    assert!(
        best_proposed <= magnitude,
        "best proposal {best_proposed} vs magnitude {magnitude}: {summary:#?}"
    );
    // Proposals went through the cascade: each has a final stage, failures a typed verdict.
    for n in &nodes[3..] {
        assert!(n.stage.is_some(), "{n:?}");
        if n.status == Status::Failed {
            assert!(matches!(n.verdict, Some(Verdict::Guest(_))), "{n:?}");
        }
    }
    // Same seed, same proposals (the first candidate's code is reproducible).
    let again = GpProposer::new(GpSettings::default(), 5, false);
    let p = again.propose_now(&nodes[..3], 0).unwrap();
    assert_eq!(p.code, nodes[3].code);
}

/// Two evaluation threads and a lookahead of three: every candidate is evaluated exactly once
/// and recorded, whatever order the evaluations finish in.
#[test]
fn parallel_evaluation_records_every_candidate_once() {
    let ev = common::tiny_search_evaluator(8, 4, 1.5);
    let dir = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(&dir.path().join("a.sqlite")).unwrap();
    let gp = std::sync::Arc::new(GpProposer::new(GpSettings::default(), 11, true));
    let stop = AtomicBool::new(false);
    let why = run(
        &mut archive,
        &ev,
        gp,
        &GpProposer::seeds(false),
        Budget {
            candidates: 8,
            ..Budget::default()
        },
        Pools {
            proposal_workers: 1,
            eval_workers: 2,
            lookahead: 3,
            max_proposal_failures: 3,
        },
        &stop,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(why, Stop::Candidates);
    let nodes = archive.nodes().unwrap();
    assert_eq!(nodes.len(), 11);
    assert!(nodes
        .iter()
        .all(|n| n.status != Status::Pending && n.seconds.is_some()));
    let distinct: std::collections::HashSet<&str> =
        nodes.iter().map(|n| n.source_hash.as_str()).collect();
    assert_eq!(distinct.len(), 11);
}

/// `kill -9` in the middle of a search on the real model, then `--resume`: no evaluated
/// candidate is lost or re-evaluated, seeds are not added again, and the budget continues.
#[test]
fn search_survives_kill_9_and_resumes() {
    common::require_real_data!();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("s1");
    let db = run_dir.join("archive.sqlite");
    let mut child = autoprune()
        .args(["search", "--run"])
        .arg(&run_dir)
        .args(["--budget-candidates", "4", "--seed", "3"])
        .args(["--validation-source", "eval-tail"])
        .args(common::REDUCED_SEARCH)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the seeds and one proposal are finished, then kill -9.
    let start = Instant::now();
    let finished_before = loop {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "search too slow"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the search ended before it was killed: {status}");
        }
        if db.exists() {
            if let Ok(a) = Archive::open_existing(&db) {
                let nodes = a.nodes().unwrap_or_default();
                let done: Vec<_> = nodes
                    .iter()
                    .filter(|n| n.status != Status::Pending)
                    .cloned()
                    .collect();
                if done.len() >= 4 {
                    break done;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let o = autoprune()
        .args(["search", "--resume"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = Archive::open_existing(&db).unwrap();
    let nodes = a.nodes().unwrap();
    // The resumed session measured on the recorded validation source.
    let config: serde_json::Value =
        serde_json::from_str(&a.meta("config").unwrap().unwrap()).unwrap();
    assert_eq!(config["validation_source"], "eval-tail");
    // No gradient in the reduced protocol: magnitude, Wanda and RIA.
    assert_eq!(nodes.iter().filter(|n| n.operator.is_seed()).count(), 3);
    assert_eq!(a.proposed_count().unwrap(), 4);
    assert!(nodes.iter().all(|n| n.status != Status::Pending));
    for before in &finished_before {
        let after = nodes.iter().find(|n| n.id == before.id).unwrap();
        assert_eq!(after.status, before.status);
        assert_eq!(after.fitness, before.fitness);
        assert_eq!(
            after.seconds, before.seconds,
            "node {} was evaluated again",
            before.id
        );
    }
    // The final ranking measured at least one candidate on the held-out text.
    assert!(nodes.iter().any(|n| n.heldout.is_some()));
    // `runs show` reads it.
    let show = autoprune()
        .args(["runs", "show"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(show.status.success());
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("nodes:") && text.contains("best: #"),
        "{text}"
    );
    let html = dir.path().join("r.html");
    let o = autoprune()
        .args(["runs", "show"])
        .arg(&run_dir)
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(std::fs::read_to_string(&html)
        .unwrap()
        .contains("id=\"best\" data-best="));
    // `runs export` writes the best node's code under its provenance header.
    let metric = dir.path().join("best.rs");
    let o = autoprune()
        .args(["runs", "export"])
        .arg(&run_dir)
        .arg("--out")
        .arg(&metric)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let src = std::fs::read_to_string(&metric).unwrap();
    assert!(
        src.starts_with("//! Discovered by `autoprune search`"),
        "{src}"
    );
    assert!(
        src.contains("//! Held-out (the evaluation text): "),
        "{src}"
    );
    assert!(
        src.contains(
            "//! Reproduce: autoprune prune --metric candidates/discovered/best.rs --sparsity 0.5"
        ),
        "{src}"
    );
    assert!(src.contains("export_metric!"), "{src}");
    // A node that does not exist is a clear error, not a panic.
    let o = autoprune()
        .args(["runs", "export"])
        .arg(&run_dir)
        .args(["--node", "99999", "--out"])
        .arg(dir.path().join("none.rs"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no node #99999"));
}

/// Ctrl-C (SIGINT) in the middle of a search: the candidate in evaluation finishes and is
/// recorded, nothing is left pending, the process exits 0 and says why it stopped.
#[test]
fn ctrl_c_stops_a_search_cleanly() {
    common::require_real_data!();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("s");
    let db = run_dir.join("archive.sqlite");
    let child = autoprune()
        .args(["search", "--run"])
        .arg(&run_dir)
        .args(["--budget-candidates", "50", "--seed", "4"])
        .args(common::REDUCED_SEARCH)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "search too slow"
        );
        let finished = Archive::open_existing(&db)
            .ok()
            .and_then(|a| a.nodes().ok())
            .map_or(0, |n| {
                n.iter().filter(|n| n.status != Status::Pending).count()
            });
        if finished >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("stopped: Interrupted"), "{stdout}");
    assert!(
        stderr.contains("interrupted: stopping after the current candidate"),
        "{stderr}"
    );
    let a = Archive::open_existing(&db).unwrap();
    let nodes = a.nodes().unwrap();
    assert!(
        nodes.iter().all(|n| n.status != Status::Pending),
        "{nodes:#?}"
    );
    assert!(a.proposed_count().unwrap() < 50);
    let elapsed: f64 = a
        .meta(autoprune::search::run::ELAPSED_KEY)
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert!(elapsed > 0.0);
}

/// A broken LLM setting is a clear error before any model is loaded.
#[test]
fn llm_settings_are_checked_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let o = autoprune()
        .args(["search", "--run"])
        .arg(dir.path().join("x"))
        .args([
            "--llm",
            "http://127.0.0.1:9/v1",
            "--api-key-env",
            "AUTOPRUNE_SURELY_UNSET_KEY",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("AUTOPRUNE_SURELY_UNSET_KEY is not set"), "{e}");
    let o = autoprune()
        .args(["search", "--run"])
        .arg(dir.path().join("y"))
        .args(["--llm", "ftp://example/v1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("http:// or https://"));
    // Nothing was written: the same folder takes the corrected command.
    assert!(!dir.path().join("y/archive.sqlite").exists());
    let o = autoprune()
        .args(["search", "--run"])
        .arg(dir.path().join("c"))
        .args(["--budget-cost", "5"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--budget-cost needs"));
    // The templates can be written out, edited, and a bad edit is refused.
    let p = dir.path().join("prompts");
    let o = autoprune()
        .args(["search", "--write-prompts"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(p.join("system.md").exists() && p.join("op-repair.md").exists());
    std::fs::write(p.join("user.md"), "{{task}} {{nonsense}}").unwrap();
    let o = autoprune()
        .args(["search", "--run"])
        .arg(dir.path().join("z"))
        .args(["--llm", "http://127.0.0.1:9/v1", "--prompts"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nonsense"));
}

/// `runs show --html` on an archive with every kind of node (evaluated, screened, duplicate,
/// failed with a hostile thought), rendered in headless Chromium: no console message at all,
/// the script ran, and the best candidate is shown.
#[test]
fn html_report_renders_in_headless_chromium() {
    use autoprune::search::archive::{NewNode, Outcome};
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("r");
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut a = Archive::open(&run_dir.join("archive.sqlite")).unwrap();
    let new = |code: &str, op: &str, thought: &str, parents: Vec<(i64, String)>| NewNode {
        proposer: if op == "seed" { "seed" } else { "llm:test" }.into(),
        operator: op.into(),
        thought: thought.into(),
        code: code.into(),
        parents,
        ..NewNode::default()
    };
    let seeds = a
        .seed(&[
            new("// magnitude", "seed", "magnitude: |W|", vec![]),
            new("// wanda", "seed", "Wanda: |W| · ‖X‖₂", vec![]),
        ])
        .unwrap();
    let done =
        |a: &Archive, id: i64, status: Status, stage: &str, f: Option<f64>, v: Option<&str>| {
            a.finish(
                id,
                &Outcome {
                    status: Some(status),
                    stage: stage.into(),
                    verdict: v.map(Verdict::from_json),
                    proxy: f.map(|x| x * 0.8),
                    fitness: if status == Status::Evaluated { f } else { None },
                    duplicate_of: (status == Status::Duplicate).then_some(seeds[1]),
                    seconds: 1.0,
                    ..Outcome::default()
                },
            )
            .unwrap();
        };
    done(&a, seeds[0], Status::Evaluated, "full", Some(306.7), None);
    done(&a, seeds[1], Status::Evaluated, "full", Some(56.29), None);
    let good = a
        .add(&new(
            "// better",
            "mutate",
            "sqrt of the norm",
            vec![(seeds[1], "try sqrt".into())],
        ))
        .unwrap();
    done(&a, good, Status::Evaluated, "full", Some(54.1), None);
    a.set_heldout(good, 52.7).unwrap();
    let bad = a
        .add(&new(
            "// </script><script>alert(1)</script>",
            "mutate",
            "<img src=x onerror=alert(1)> hostile",
            vec![(good, "<b>rationale</b>".into())],
        ))
        .unwrap();
    done(
        &a,
        bad,
        Status::Failed,
        "build",
        None,
        Some("{\"verdict\":\"compile\",\"diagnostics\":\"error[E0308]\"}"),
    );
    let scr = a
        .add(&new(
            "// screened",
            "crossover",
            "mix",
            vec![(good, "x".into()), (seeds[0], "y".into())],
        ))
        .unwrap();
    done(&a, scr, Status::Screened, "proxy", Some(900.0), None);
    let dup = a
        .add(&new(
            "// dup",
            "mutate",
            "2 × Wanda",
            vec![(seeds[1], "scale".into())],
        ))
        .unwrap();
    done(&a, dup, Status::Duplicate, "full", Some(56.29), None);
    a.record(
        &new(
            "",
            "mutate",
            "(malformed response) ...",
            vec![(good, "mutate".into())],
        ),
        Some(&Verdict::from_json("{\"verdict\":\"malformed_json\"}")),
        &[],
    )
    .unwrap();
    drop(a);
    let html = dir.path().join("report.html");
    let o = autoprune()
        .args(["runs", "show"])
        .arg(&run_dir)
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains(&format!("data-best=\"{good}\"")));
    assert!(!page.contains("<img src=x"));
    let Some((dom, console)) = common::chromium_dom(
        &format!("file://{}", html.display()),
        &dir.path().join("profile"),
    ) else {
        return;
    };
    assert!(console.is_empty(), "console messages: {console:#?}");
    // The script ran to its end (it marks the body with the number of graph nodes).
    assert!(
        dom.contains("data-rendered=\"7\""),
        "{}",
        &dom[..dom.len().min(2000)]
    );
    assert!(dom.contains(&format!("Best candidate: #{good}")));
    assert!(dom.contains("52.700"));
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt; hostile"));
}

/// `autoprune fidelity` on the real model under a reduced protocol, with a panel folder of
/// three candidates: every level is measured, Wanda's ratios are exactly 1, magnitude ranks
/// last at every level, and a rerun measures nothing again.
#[test]
fn fidelity_study_measures_every_level_and_resumes() {
    common::require_real_data!();
    let dir = tempfile::tempdir().unwrap();
    let panel = dir.path().join("panel");
    std::fs::create_dir_all(&panel).unwrap();
    for name in ["wanda", "magnitude", "ria"] {
        std::fs::copy(
            common::workspace().join(format!("candidates/{name}.rs")),
            panel.join(format!("{name}.rs")),
        )
        .unwrap();
    }
    let out = dir.path().join("fid");
    let run = || {
        autoprune()
            .args(["fidelity", "--out"])
            .arg(&out)
            .arg("--panel")
            .arg(&panel)
            .args([
                "--no-builtin",
                "--no-gradient",
                "--calib-windows",
                "2",
                "--validation-windows",
                "2",
                "--screen-windows",
                "2",
                "--proxy-calib-windows",
                "1",
                "--proxy-validation-windows",
                "1",
                "--eval-windows",
                "2",
                "--validation-source",
                "spread",
                "--other-sources",
                "recent,eval-tail",
                "--json",
            ])
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let study: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(study["metrics"], 3);
    let levels: Vec<&str> = study["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["level"].as_str().unwrap())
        .collect();
    assert_eq!(
        levels,
        [
            "screen@1",
            "screen@2",
            "proxy@1",
            "sequential@2",
            "screen@1 recent",
            "screen@2 recent",
            "sequential@2 recent",
            "screen@1 eval-tail",
            "screen@2 eval-tail",
            "sequential@2 eval-tail",
            "heldout@2"
        ]
    );
    let table = study["table"].as_array().unwrap();
    let row = |name: &str| table.iter().find(|r| r[0] == name).unwrap().clone();
    for v in row("wanda")[2].as_array().unwrap() {
        assert_eq!(v.as_f64().unwrap(), 1.0);
    }
    // Magnitude is far worse than Wanda at every level and last on the held-out text.
    assert!(row("magnitude")[2]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v.as_f64().unwrap() > 2.0));
    assert_eq!(table.last().unwrap()[0], "magnitude");
    assert!(out.join("fidelity.md").exists());
    let lines = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
    // Every source measured its own windows: the losses differ between sources.
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["validation_source"], "spread");
    let sources = first["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    for s in sources {
        assert_eq!(s["sequential"].as_array().unwrap().len(), 2);
        assert_ne!(s["sequential"], first["sequential"], "{}", s["source"]);
    }
    // A rerun finds everything measured.
    let o = run();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("3 measured before, 0 to measure"));
    let lines = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
}
