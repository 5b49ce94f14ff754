//! `autoprune bench --board`: the service measured on loopback, with bounded request loops.
//! It starts a board in this process and two `autoprune worker` processes. It sends a burst of
//! hostile submissions, which the workers evaluate. While they do, concurrent clients submit
//! and read for a fixed time. It reports submissions accepted per second and p50/p99 latency
//! per route. Then it waits for every hostile submission's verdict and checks that the board
//! served throughout.

use super::store::Store;
use super::{api, BoardConfig, BoardProtocol, Limits, Role};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the bench does.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// Seconds of load.
    pub seconds: f64,
    /// Concurrent clients.
    pub clients: usize,
    /// Folder of hostile `.rs` files to submit (e.g. `tests/attacks`).
    pub hostile: Option<PathBuf>,
    /// The `autoprune` binary the workers run.
    pub autoprune: PathBuf,
    /// Worker processes.
    pub workers: usize,
    /// Longest wait for the hostile submissions' verdicts, seconds.
    pub verdict_wait: f64,
}

/// Latency percentiles of one route.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStats {
    /// `POST /v1/submissions`, …
    pub route: String,
    /// Requests sent.
    pub requests: usize,
    /// Answers by status.
    pub statuses: Vec<(u16, usize)>,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

/// One hostile submission and how it ended.
#[derive(Debug, Clone, Serialize)]
pub struct HostileResult {
    /// What was sent.
    pub what: String,
    /// The API's answer (status and code).
    pub answer: String,
    /// The job's end: `done`, or the verdict's kind (`-` when refused at the door).
    pub outcome: String,
}

/// The bench's report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Seconds of load.
    pub seconds: f64,
    /// Concurrent clients.
    pub clients: usize,
    /// Submissions accepted (201) per second.
    pub accepted_per_second: f64,
    /// Per route.
    pub routes: Vec<RouteStats>,
    /// Jobs the workers finished during the load.
    pub jobs_finished_during_load: i64,
    /// The hostile burst.
    pub hostile: Vec<HostileResult>,
    /// Every page and health read during the bench was answered 200.
    pub served_throughout: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Killer(Vec<Child>);

impl Drop for Killer {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `multipart/form-data` body of `(field, file name, content)` parts: (content type,
/// bytes). What a submission sends (`POST /v1/submissions`).
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "autoprune-form-3f9a7d41b";
    let mut b = Vec::new();
    for (name, file, content) in parts {
        b.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let disposition = match file {
            Some(f) => format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"),
            None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
        };
        b.extend_from_slice(disposition.as_bytes());
        b.extend_from_slice(content);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), b)
}

/// A submission's form: the metric file and form fields.
fn form(file: &str, bytes: &[u8], fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let mut parts: Vec<(&str, Option<&str>, &[u8])> = vec![("metric", Some(file), bytes)];
    parts.extend(fields.iter().map(|(k, v)| (*k, None, v.as_bytes())));
    multipart(&parts)
}

/// One hostile submission: what it is, its file name, its bytes, `publish`.
type Hostile = (String, String, Vec<u8>, String);

/// The hostile burst: the attack files, and more made here (compile-time reads of host files
/// and the environment, an endless const evaluation, bodies refused at the door).
fn hostile_set(dir: Option<&Path>) -> anyhow::Result<Vec<Hostile>> {
    let metric = |items: &str, expr: &str| {
        format!(
            "use autoprune_sdk::prelude::*;\n{items}\nstruct M;\nimpl Metric for M {{\n fn info() -> Info {{ Info::new(\"m\", \"0\", \"\") }}\n fn score(layer: &Layer) -> Result<()> {{ let b: &[u8] = {expr}; layer.score_rows(|row, out| {{ for (o, w) in out.iter_mut().zip(row.weights) {{ *o = w.abs() + b.len() as f32; }} }}) }}\n}}\nexport_metric!(M);\n"
        )
    };
    let mut set: Vec<Hostile> = Vec::new();
    if let Some(dir) = dir {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect();
        files.sort();
        for f in files {
            let name = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            set.push((name.clone(), name, std::fs::read(&f)?, "1".into()));
        }
    }
    let extra: [(&str, String); 5] = [
        ("include_bytes /etc/passwd", metric("const X: &[u8] = include_bytes!(\"/etc/passwd\");", "X")),
        ("env! HOME", metric("const X: &str = env!(\"HOME\");", "X.as_bytes()")),
        ("include_bytes /proc/self/environ", metric("const X: &[u8] = include_bytes!(\"/proc/self/environ\");", "X")),
        ("endless const eval", format!("#![allow(long_running_const_eval)]\n{}", metric("const N: u64 = { let mut i = 1u64; while i != 0 { i = i.wrapping_mul(3); } i };", "&[N as u8]"))),
        ("<script>alert(1)</script>\u{1b}[2J name", metric("", "&[]")),
    ];
    for (what, src) in extra {
        set.push((what.into(), "m.rs".into(), src.into_bytes(), "1".into()));
    }
    set.push((
        "non-UTF-8 source".into(),
        "m.rs".into(),
        b"fn \xff() {}".to_vec(),
        "1".into(),
    ));
    set.push((
        "core module as .wasm".into(),
        "m.wasm".into(),
        b"\0asm\x01\0\0\0".to_vec(),
        "1".into(),
    ));
    set.push((
        "oversized source".into(),
        "m.rs".into(),
        vec![b'/'; 300 << 10],
        "1".into(),
    ));
    Ok(set)
}

/// Run the bench (needs the real data for the workers).
pub fn run(spec: &BenchSpec) -> anyhow::Result<BenchReport> {
    let dir = tempfile::tempdir()?;
    let config = BoardConfig {
        settings: vec!["2:4".parse()?],
        baselines: vec![super::Baseline::Wanda],
        protocol: BoardProtocol {
            seq_len: 128,
            calib_windows: 2,
            eval_windows: 4,
        },
    };
    let limits = Limits {
        submissions_per_hour: u32::MAX,
        min_interval_secs: 0.0,
        max_pending_jobs: u32::MAX,
        lease_secs: 30.0,
        ..Limits::default()
    };
    let store = Store::open(dir.path(), Some(&config))?;
    let worker_token = store.add_token("bench-workers", Role::Worker)?;
    let tokens: Vec<String> = (0..spec.clients.max(1))
        .map(|i| store.add_token(&format!("client{i}"), Role::Submitter))
        .collect::<Result<_, _>>()?;
    let hostile_token = store.add_token("hostile", Role::Submitter)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(api::serve(
            listener,
            api::AppState::new(store, limits),
            async {
                let _ = stop_rx.await;
            },
        ));
        let mut workers = Killer(Vec::new());
        for i in 0..spec.workers {
            workers.0.push(
                Command::new(&spec.autoprune)
                    .args([
                        "worker",
                        "--server",
                        &url,
                        "--poll",
                        "0.2",
                        "--instance",
                        &format!("bench{i}"),
                    ])
                    .env("AUTOPRUNE_WORKER_TOKEN", &worker_token)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        // The hostile burst first, so the workers evaluate it during the load.
        let mut hostile = Vec::new();
        for (what, file, bytes, publish) in hostile_set(spec.hostile.as_deref())? {
            let (ctype, body) = form(&file, &bytes, &[("name", &what), ("publish", &publish)]);
            let r = http
                .post(format!("{url}/v1/submissions"))
                .bearer_auth(&hostile_token)
                .header("content-type", ctype)
                .body(body)
                .send()
                .await?;
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            let answer = match v["error"]["code"].as_str() {
                Some(code) => format!("{status} {code}"),
                None => status.to_string(),
            };
            hostile.push((what, answer, v["id"].as_i64()));
        }
        let jobs_done = |v: &serde_json::Value| {
            v["jobs"]["done"].as_i64().unwrap_or(0) + v["jobs"]["failed"].as_i64().unwrap_or(0)
        };
        let health = || async {
            let r = http.get(format!("{url}/v1/health")).send().await?;
            anyhow::Ok((
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            ))
        };
        let (_, h0) = health().await?;
        // The load: each client alternates a submission (distinct code, so nothing is reused)
        // with reads of the leaderboard JSON and the page, until the time is up.
        let wanda = super::Baseline::Wanda.source().unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs_f64(spec.seconds);
        let mut tasks = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            let (http, url, t) = (http.clone(), url.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                let mut samples: Vec<(&'static str, u16, f64)> = Vec::new();
                let mut n = 0usize;
                while Instant::now() < deadline {
                    let src = format!("{wanda}\n// client {i} submission {n}\n");
                    let (ctype, body) = form("m.rs", src.as_bytes(), &[]);
                    let s = Instant::now();
                    let r = http
                        .post(format!("{url}/v1/submissions"))
                        .bearer_auth(&t)
                        .header("content-type", ctype)
                        .body(body)
                        .send()
                        .await;
                    let code = match r {
                        Ok(r) => {
                            let c = r.status().as_u16();
                            let _ = r.bytes().await;
                            c
                        }
                        Err(_) => 0,
                    };
                    samples.push((
                        "POST /v1/submissions",
                        code,
                        s.elapsed().as_secs_f64() * 1e3,
                    ));
                    for (route, path) in
                        [("GET /v1/leaderboard", "/v1/leaderboard"), ("GET /", "/")]
                    {
                        let s = Instant::now();
                        let code = match http.get(format!("{url}{path}")).send().await {
                            Ok(r) => {
                                let c = r.status().as_u16();
                                let _ = r.bytes().await;
                                c
                            }
                            Err(_) => 0,
                        };
                        samples.push((route, code, s.elapsed().as_secs_f64() * 1e3));
                    }
                    n += 1;
                }
                samples
            }));
        }
        let mut samples = Vec::new();
        for t in tasks {
            samples.extend(t.await?);
        }
        let (_, h1) = health().await?;
        let mut routes = Vec::new();
        let mut served = true;
        for route in ["POST /v1/submissions", "GET /v1/leaderboard", "GET /"] {
            let mine: Vec<&(&str, u16, f64)> = samples.iter().filter(|s| s.0 == route).collect();
            let mut ms: Vec<f64> = mine.iter().map(|s| s.2).collect();
            ms.sort_by(f64::total_cmp);
            let mut statuses: Vec<(u16, usize)> = Vec::new();
            for s in &mine {
                match statuses.iter_mut().find(|x| x.0 == s.1) {
                    Some(x) => x.1 += 1,
                    None => statuses.push((s.1, 1)),
                }
            }
            statuses.sort();
            if route.starts_with("GET") && statuses.iter().any(|s| s.0 != 200) {
                served = false;
            }
            routes.push(RouteStats {
                route: route.into(),
                requests: mine.len(),
                statuses,
                p50_ms: percentile(&ms, 0.5),
                p99_ms: percentile(&ms, 0.99),
                max_ms: ms.last().copied().unwrap_or(0.0),
            });
        }
        let accepted = samples
            .iter()
            .filter(|s| s.0 == "POST /v1/submissions" && s.1 == 201)
            .count();
        // Every hostile submission that was accepted ends with a verdict (or a result).
        let wait_until = Instant::now() + Duration::from_secs_f64(spec.verdict_wait);
        let mut results = Vec::new();
        for (what, answer, id) in hostile {
            let outcome = match id {
                None => "-".to_string(),
                Some(id) => loop {
                    let r = http
                        .get(format!("{url}/v1/submissions/{id}"))
                        .bearer_auth(&hostile_token)
                        .send()
                        .await?;
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    let j = &v["jobs"][0];
                    match j["state"].as_str() {
                        Some("done") => {
                            break format!(
                                "done (perplexity {:.2})",
                                j["ppl"].as_f64().unwrap_or(0.0)
                            )
                        }
                        Some("failed") => {
                            break j["verdict"]["kind"].as_str().unwrap_or("?").to_string()
                        }
                        _ if Instant::now() > wait_until => break "still waiting".to_string(),
                        _ => tokio::time::sleep(Duration::from_millis(300)).await,
                    }
                },
            };
            results.push(HostileResult {
                what: crate::term::line(&what).into_owned(),
                answer,
                outcome,
            });
        }
        let page = http.get(format!("{url}/")).send().await?.status().as_u16();
        served &= page == 200 && health().await?.0 == 200;
        let _ = stop_tx.send(());
        drop(workers);
        let _ = server.await;
        Ok(BenchReport {
            seconds: spec.seconds,
            clients: spec.clients,
            accepted_per_second: accepted as f64 / spec.seconds,
            routes,
            jobs_finished_during_load: jobs_done(&h1) - jobs_done(&h0),
            hostile: results,
            served_throughout: served,
        })
    })
}

/// The report as text.
pub fn render(r: &BenchReport) -> String {
    use std::fmt::Write;
    let mut s = format!(
        "load: {} clients for {} s; {:.1} submissions accepted per second; {} job(s) finished by the workers meanwhile\n",
        r.clients, r.seconds, r.accepted_per_second, r.jobs_finished_during_load
    );
    let _ = writeln!(
        s,
        "{:<24} {:>8} {:>9} {:>9} {:>9}  statuses",
        "route", "requests", "p50 ms", "p99 ms", "max ms"
    );
    for x in &r.routes {
        let st: Vec<String> = x.statuses.iter().map(|(c, n)| format!("{c}×{n}")).collect();
        let _ = writeln!(
            s,
            "{:<24} {:>8} {:>9.2} {:>9.2} {:>9.2}  {}",
            x.route,
            x.requests,
            x.p50_ms,
            x.p99_ms,
            x.max_ms,
            st.join(" ")
        );
    }
    let _ = writeln!(s, "\nhostile burst ({} submissions):", r.hostile.len());
    for h in &r.hostile {
        let _ = writeln!(s, "  {:<40} {:<22} {}", h.what, h.answer, h.outcome);
    }
    let _ = writeln!(
        s,
        "\nboard served throughout: {}",
        if r.served_throughout { "yes" } else { "NO" }
    );
    s
}
