//! `autoprune search --llm local` against a real llama.cpp server (the `llama-server` that
//! `./setup.sh` builds) on loopback, serving SmolLM2-135M-Instruct (the model setup fetches;
//! the 1.5B coder model would make the test minutes longer): the server starts, answers
//! streamed requests whose usage and timings are recorded, and is gone after the run, after a
//! Ctrl-C, and after autoprune is killed with SIGKILL.
//!
//! Without the server binary or the data the tests fail under CI and skip elsewhere
//! (`common::not_run`).

mod common;

use autoprune::data::DataDir;
use autoprune::search::archive::Archive;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Start `autoprune search --llm local` on SmolLM2 with the reduced protocol; its stderr lines
/// arrive on the channel.
fn search(run: &Path, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let model = DataDir::resolve().smollm2_gguf().unwrap();
    let mut child = common::autoprune()
        .args(["search", "--run"])
        .arg(run)
        .args(["--llm", "local", "--llm-model-file"])
        .arg(&model)
        .args(["--llm-max-tokens", "48", "--llm-idle-timeout", "120"])
        .args(common::REDUCED_SEARCH)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// The server's pid, from the line autoprune prints once it is ready.
fn server_pid(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>) -> u32 {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(600) {
        let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("local LLM: ") {
            let pid = rest
                .split("(pid ")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap();
            return pid.parse().unwrap();
        }
    }
    panic!("the local server did not start:\n{}", seen.join("\n"));
}

/// Wait for `child` to exit (at most `secs`), keeping its stderr.
fn finish(
    child: &mut Child,
    lines: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    secs: u64,
) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        seen.extend(lines.try_iter());
        if let Some(s) = child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(100));
            seen.extend(lines.try_iter());
            return s;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("autoprune did not finish:\n{}", seen.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until a server log holds `needle` (at most `secs`).
fn wait_for_log(log: &Path, needle: &str, secs: u64) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if std::fs::read_to_string(log).is_ok_and(|s| s.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child process of this test.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// Two proposals, two slots: the server starts on loopback, streams both answers (their usage,
/// timings and final chunks recorded) and is stopped at the end of the run.
#[test]
fn a_search_against_a_real_local_server() {
    let Some(_) = common::llama_server() else {
        return;
    };
    common::require_real_data!();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("s");
    let (mut child, lines) = search(&run, &["--budget-candidates", "2"]);
    let mut seen = Vec::new();
    let pid = server_pid(&lines, &mut seen);
    assert!(alive(pid));
    let status = finish(&mut child, &lines, &mut seen, 900);
    assert!(status.success(), "{}", seen.join("\n"));
    assert!(!alive(pid), "the server (pid {pid}) outlived the run");
    assert!(seen.iter().any(|l| l.contains("on http://127.0.0.1:")));

    let a = Archive::open_existing(&run.join("archive.sqlite")).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&a.meta("config").unwrap().unwrap()).unwrap();
    assert_eq!(config["llm"]["base_url"], "local");
    assert_eq!(config["local"]["parallel"], 2);
    let calls = a.calls().unwrap();
    assert!(calls.len() >= 2, "{calls:#?}");
    for c in &calls {
        assert_eq!(c.proposer, "llm:SmolLM2-135M-Instruct.Q4_1");
        let r: serde_json::Value = serde_json::from_str(c.response.as_deref().unwrap()).unwrap();
        // Streamed, with the server's own token counts (the system prompt alone is > 1000).
        assert_eq!(r["stream"], true, "{r}");
        assert_eq!(
            r["usage"]["prompt_tokens"].as_u64(),
            Some(c.prompt_tokens),
            "{r}"
        );
        assert!(c.prompt_tokens > 1000, "{r}");
        assert!((1..=48).contains(&c.completion_tokens), "{r}");
        let timings = &r["final_chunk"]["timings"];
        assert!(
            timings["predicted_per_second"].as_f64().unwrap() > 0.0,
            "{r}"
        );
        assert!(timings["prompt_per_second"].as_f64().unwrap() > 0.0, "{r}");
    }
    let nodes = a.nodes().unwrap();
    assert_eq!(nodes.iter().filter(|n| !n.operator.is_seed()).count(), 2);
    let log = std::fs::read_to_string(run.join("llama-server.log")).unwrap();
    assert!(
        log.contains("=== autoprune:") && log.contains("-np 2"),
        "{log}"
    );
}

/// Ctrl-C while a request is in flight stops the run and the server; SIGKILL of autoprune
/// takes the server with it.
#[test]
fn the_local_server_dies_with_the_run() {
    let Some(_) = common::llama_server() else {
        return;
    };
    common::require_real_data!();
    let dir = tempfile::tempdir().unwrap();

    let run = dir.path().join("int");
    let (mut child, lines) = search(&run, &["--budget-candidates", "50"]);
    let mut seen = Vec::new();
    let pid = server_pid(&lines, &mut seen);
    // A request reached the server (it logs the slot it starts).
    let busy = wait_for_log(&run.join("llama-server.log"), "launch_slot", 600);
    signal(child.id(), libc::SIGINT);
    let status = finish(&mut child, &lines, &mut seen, 300);
    assert!(busy, "no request reached the server:\n{}", seen.join("\n"));
    assert!(status.success(), "{}", seen.join("\n"));
    assert!(!alive(pid), "the server (pid {pid}) outlived a Ctrl-C");

    let run = dir.path().join("kill");
    let (mut child, lines) = search(&run, &["--budget-candidates", "50"]);
    let mut seen = Vec::new();
    let pid = server_pid(&lines, &mut seen);
    child.kill().unwrap();
    child.wait().unwrap();
    let t = Instant::now();
    while alive(pid) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !alive(pid),
        "the server (pid {pid}) outlived a SIGKILL of autoprune"
    );
}
