//! `autoprune worker`: lease a job from a board over HTTP, build its plugin in the compile
//! sandbox, prune and measure under the board's protocol on this machine's own copy of the
//! model and texts, and push the result — renewing the lease while it works.
//!
//! A worker killed at any moment loses at most its current job: its lease expires and the
//! board hands the job to another worker. While the server is unreachable (restarting, say)
//! the worker keeps its job and retries with back-off.

use super::store::{Fingerprint, JobOutcome, JobVerdict, Lease, Measured, PluginKind};
use crate::alloc::Granularity;
use crate::build::BuildOptions;
use crate::hash::sha256_hex;
use crate::model::{Precision, SaveDtype};
use crate::progress::Silent;
use crate::run::allocate::Rule;
use crate::run::eval::TaskSpec;
use crate::run::prune::{MethodSpec, Outcome, PruneSpec};
use crate::sandbox::Policy;
use crate::setup::{CalibSpec, ProtocolSpec};
use crate::term::line;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The board's base URL (`http://host:port`).
    pub server: String,
    /// A worker token.
    pub token: String,
    /// This process's name among the token's workers.
    pub instance: String,
    /// How plugin sources are compiled.
    pub build: BuildOptions,
    /// Sandbox limits.
    pub policy: Policy,
    /// Where the model runs.
    pub device: String,
    /// Stop after this many jobs.
    pub max_jobs: Option<usize>,
    /// Stop after the queue has been empty this long.
    pub exit_when_idle: Option<Duration>,
    /// Seconds between polls of an empty queue.
    pub poll: Duration,
    /// Give up on an unreachable server after this long.
    pub give_up_after: Duration,
}

/// What a worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Jobs measured and accepted.
    pub measured: usize,
    /// Jobs whose plugin failed (verdict accepted).
    pub failed: usize,
    /// Jobs whose lease was lost before the result landed.
    pub lost: usize,
}

/// This process's default instance name: host name and process id.
pub fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

/// A server's answer that is not a success.
#[derive(Debug)]
enum Call {
    /// The server said no (status and its error code).
    Refused(u16, String),
    /// No answer (connection refused, timeout): worth retrying.
    Unreachable(String),
}

struct Client {
    http: reqwest::Client,
    opts: WorkerOptions,
}

impl Client {
    async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<Option<serde_json::Value>, Call> {
        let url = format!("{}{path}", self.opts.server.trim_end_matches('/'));
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.opts.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| Call::Unreachable(e.to_string()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        // A board's answers are small; a larger one is not a board.
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Call::Unreachable(e.to_string()))?;
        if bytes.len() > 64 << 20 {
            return Err(Call::Refused(status.as_u16(), "oversized answer".into()));
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if status.is_success() {
            Ok(Some(v))
        } else {
            let code = v["error"]["code"].as_str().unwrap_or("unknown").to_string();
            let msg = v["error"]["message"].as_str().unwrap_or("").to_string();
            Err(Call::Refused(status.as_u16(), format!("{code}: {msg}")))
        }
    }

    /// `post`, retrying while the server is unreachable or failing (5xx), up to the
    /// give-up time.
    async fn post_retrying(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<Option<serde_json::Value>, Call> {
        let start = Instant::now();
        let mut wait = Duration::from_millis(200);
        loop {
            match self.post(path, body.clone()).await {
                Err(Call::Unreachable(e)) if start.elapsed() < self.opts.give_up_after => {
                    eprintln!("worker: server unreachable ({}); retrying", line(&e));
                }
                // 5xx: the server failed; 408/429: it is overloaded. Both pass.
                Err(Call::Refused(s, e))
                    if (s >= 500 || s == 408 || s == 429)
                        && start.elapsed() < self.opts.give_up_after =>
                {
                    eprintln!("worker: server answered {s} ({}); retrying", line(&e));
                }
                r => return r,
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

/// Run jobs until `stop` is set, `max_jobs` are done, or the queue stays empty for
/// `exit_when_idle`.
pub fn run(opts: WorkerOptions, stop: Arc<AtomicBool>) -> anyhow::Result<WorkerStats> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(opts, stop))
}

async fn run_async(opts: WorkerOptions, stop: Arc<AtomicBool>) -> anyhow::Result<WorkerStats> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let client = Client { http, opts };
    let opts = client.opts.clone();
    let mut stats = WorkerStats::default();
    let mut idle_since = Instant::now();
    let fingerprint: Arc<std::sync::Mutex<Option<Fingerprint>>> = Default::default();
    let tasks: Arc<crate::search::remote::TaskRunner> = Default::default();
    while !stop.load(Ordering::Relaxed) {
        if opts
            .max_jobs
            .is_some_and(|m| stats.measured + stats.failed + stats.lost >= m)
        {
            break;
        }
        let body = serde_json::json!({ "instance": opts.instance });
        let lease: Lease = match client.post_retrying("/v1/jobs/lease", body).await {
            Ok(Some(v)) => serde_json::from_value(v)
                .map_err(|e| anyhow::anyhow!("the server's job does not parse: {e}"))?,
            Ok(None) => {
                if opts
                    .exit_when_idle
                    .is_some_and(|d| idle_since.elapsed() >= d)
                {
                    break;
                }
                tokio::time::sleep(opts.poll).await;
                continue;
            }
            Err(Call::Refused(s, e)) => {
                anyhow::bail!("the board refused this worker ({s}: {})", line(&e))
            }
            Err(Call::Unreachable(e)) => anyhow::bail!(
                "the board at {} is unreachable: {}",
                line(&opts.server),
                line(&e)
            ),
        };
        eprintln!(
            "worker: job {} — #{} {} at {}",
            lease.job_id,
            lease.submission_id,
            line(&lease.name),
            lease
                .setting
                .map_or_else(|| "a search task".to_string(), |s| s.to_string())
        );
        let job = lease.clone();
        let (eopts, fp, runner) = (opts.clone(), fingerprint.clone(), tasks.clone());
        let masks = mask_reporter(&client, &lease);
        let eval = tokio::task::spawn_blocking(move || match &job.task {
            Some(task) => evaluate_task(task, &eopts, &runner).map(Some),
            None => evaluate(&job, &eopts, &fp, masks),
        });
        tokio::pin!(eval);
        let every = Duration::from_secs_f64((lease.lease_secs / 3.0).max(0.5));
        let mut lost = false;
        let outcome = loop {
            tokio::select! {
                r = &mut eval => break r,
                _ = tokio::time::sleep(every) => {
                    let body = serde_json::json!({ "instance": opts.instance, "lease": lease.lease });
                    match client.post(&format!("/v1/jobs/{}/renew", lease.job_id), body).await {
                        Ok(_) => {}
                        Err(Call::Refused(409 | 404, e)) => {
                            if !lost {
                                eprintln!("worker: job {} lease lost ({})", lease.job_id, line(&e));
                            }
                            lost = true;
                        }
                        Err(Call::Unreachable(e)) => eprintln!("worker: server unreachable while renewing job {} ({}); will retry", lease.job_id, line(&e)),
                        Err(Call::Refused(s, e)) => eprintln!("worker: renewing job {} refused ({s}: {}); will retry", lease.job_id, line(&e)),
                    }
                }
            }
        };
        let outcome =
            outcome.map_err(|e| anyhow::anyhow!("the evaluation thread failed: {e}"))??;
        let Some(outcome) = outcome else {
            eprintln!(
                "worker: job {}: the same masks as a job measured before; its result reused",
                lease.job_id
            );
            stats.measured += 1;
            idle_since = Instant::now();
            continue;
        };
        let failed = matches!(outcome, JobOutcome::Failed(_));
        let summary = match &outcome {
            JobOutcome::Measured(m) => format!("perplexity {:.4} ({:.1} s)", m.ppl, m.seconds),
            JobOutcome::Failed(v) => format!("verdict {}", line(&v.kind)),
            JobOutcome::Task(_) => "search task evaluated".to_string(),
        };
        let body = serde_json::json!({ "instance": opts.instance, "lease": lease.lease, "outcome": outcome });
        match client
            .post_retrying(&format!("/v1/jobs/{}/result", lease.job_id), body)
            .await
        {
            Ok(_) => {
                eprintln!("worker: job {} {summary}", lease.job_id);
                if failed {
                    stats.failed += 1;
                } else {
                    stats.measured += 1;
                }
            }
            Err(Call::Refused(409, e)) if e.starts_with("protocol_mismatch") => {
                anyhow::bail!(
                    "this worker's data differs from the board's, so it stops (its job went back to the queue): {}",
                    line(&e)
                )
            }
            Err(Call::Refused(409 | 404, e)) => {
                eprintln!(
                    "worker: job {} result refused: {} (another worker has it)",
                    lease.job_id,
                    line(&e)
                );
                stats.lost += 1;
            }
            Err(Call::Refused(s, e)) => anyhow::bail!(
                "the board refused job {}'s result ({s}: {})",
                lease.job_id,
                line(&e)
            ),
            Err(Call::Unreachable(e)) => anyhow::bail!("the board is unreachable: {}", line(&e)),
        }
        idle_since = Instant::now();
    }
    Ok(stats)
}

/// The data this machine evaluates on: model file name, stream lengths, and the hash of the
/// evaluated windows' tokens.
fn fingerprint(protocol: &super::BoardProtocol) -> anyhow::Result<Fingerprint> {
    let data = crate::data::DataDir::resolve();
    let model = data.smollm2_gguf()?;
    let tok = crate::model::Tokenizer::for_model(&model)?;
    let eval = crate::setup::stream(&tok, None, "eval")?;
    let calib = crate::setup::stream(&tok, None, "calib")?;
    let n = (protocol.eval_windows * protocol.seq_len).min(eval.tokens.len());
    let bytes: Vec<u8> = eval.tokens[..n]
        .iter()
        .flat_map(|t| t.to_le_bytes())
        .collect();
    Ok(Fingerprint {
        model: model
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        calib_tokens: calib.tokens.len(),
        eval_tokens: eval.tokens.len(),
        eval_sha256: sha256_hex(&bytes),
    })
}

/// A search run's task (`search --workers`): the candidate's ladder, or the fault that
/// stopped it (reported so the search sees it; it is not this worker's own failure).
fn evaluate_task(
    task: &serde_json::Value,
    opts: &WorkerOptions,
    runner: &crate::search::remote::TaskRunner,
) -> anyhow::Result<JobOutcome> {
    let task: crate::search::remote::Task = match serde_json::from_value(task.clone()) {
        Ok(t) => t,
        Err(e) => return Ok(verdict("bad_task", format!("the task does not parse: {e}"))),
    };
    Ok(
        match runner.run(&task, &opts.build, &opts.policy, &opts.device)? {
            Ok(outcome) => JobOutcome::Task(serde_json::to_value(outcome)?),
            Err(fault) => verdict("host_fault", fault.to_string()),
        },
    )
}

fn verdict(kind: &str, detail: String) -> JobOutcome {
    JobOutcome::Failed(JobVerdict {
        kind: kind.into(),
        detail,
    })
}

/// Build, prune and measure one job. A plugin's failure is the job's verdict; an error is this
/// worker's own failure (missing data, say): the job is not reported and its lease expires.
/// Reports a pruned job's mask hash to the board from the evaluation thread; returns the
/// earlier job whose result the board reused, if any. A failed report is not an error: the
/// job is then measured.
type MaskReporter = Box<dyn FnMut(&str) -> Option<i64> + Send>;

fn mask_reporter(client: &Client, lease: &Lease) -> MaskReporter {
    let handle = tokio::runtime::Handle::current();
    let http = client.http.clone();
    let url = format!(
        "{}/v1/jobs/{}/masks",
        client.opts.server.trim_end_matches('/'),
        lease.job_id
    );
    let token = client.opts.token.clone();
    let body = serde_json::json!({ "instance": client.opts.instance, "lease": lease.lease });
    Box::new(move |hash: &str| {
        let mut body = body.clone();
        body["mask_sha256"] = hash.into();
        handle.block_on(async {
            let r = http
                .post(&url)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .ok()?;
            if !r.status().is_success() {
                return None;
            }
            let v: serde_json::Value = r.json().await.ok()?;
            v["reused_from"].as_i64()
        })
    })
}

fn evaluate(
    job: &Lease,
    opts: &WorkerOptions,
    fp: &std::sync::Mutex<Option<Fingerprint>>,
    mut masks: MaskReporter,
) -> anyhow::Result<Option<JobOutcome>> {
    let start = Instant::now();
    let fingerprint = {
        let mut g = fp.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(fingerprint(&job.protocol)?);
        }
        g.clone().expect("set above")
    };
    let dir = tempfile::tempdir()?;
    let plugin = match job.kind {
        PluginKind::Builtin => None,
        kind => {
            let body = hex::decode(&job.body_hex)
                .map_err(|e| anyhow::anyhow!("the job's plugin is not hex: {e}"))?;
            anyhow::ensure!(
                sha256_hex(&body) == job.sha256,
                "the job's plugin does not match its SHA-256"
            );
            let path = dir.path().join(if kind == PluginKind::Rs {
                "metric.rs"
            } else {
                "metric.wasm"
            });
            std::fs::write(&path, &body)?;
            let cache = crate::build::default_cache()?;
            let wasm = if kind == PluginKind::Rs {
                let source = String::from_utf8(body)
                    .map_err(|_| anyhow::anyhow!("the job's source is not UTF-8"))?;
                let builder = crate::build::Builder::new(cache.clone(), opts.build.clone())?;
                match builder.try_build(&source) {
                    Ok(b) => b.wasm,
                    Err(crate::build::BuildFailure::Candidate(f)) => {
                        return Ok(Some(verdict(f.kind(), f.to_string())))
                    }
                    // This machine could not run the compiler: not the plugin's verdict.
                    Err(crate::build::BuildFailure::Host(m)) => {
                        anyhow::bail!("this worker could not build the plugin: {m}")
                    }
                }
            } else {
                body
            };
            match crate::sandbox::Plugin::load(&wasm, &opts.policy, Some(&cache)) {
                Ok(p) => Some((p, path)),
                Err(f) => return Ok(Some(verdict(f.kind(), f.to_string()))),
            }
        }
    };
    if job.kind == PluginKind::Builtin && job.builtin.as_deref() != Some("sparsegpt") {
        return Ok(Some(verdict("rejected", "unknown built-in method".into())));
    }
    let p = &job.protocol;
    let setting = job
        .setting
        .ok_or_else(|| anyhow::anyhow!("a board job without a setting"))?;
    let spec = PruneSpec {
        protocol: ProtocolSpec {
            model: None,
            eval: None,
            seq_len: p.seq_len,
            eval_windows: p.eval_windows,
            eval_batch: 2,
            device: opts.device.clone(),
            precision: Precision::F32,
            device_path: Default::default(),
        },
        calib: CalibSpec {
            file: None,
            windows: p.calib_windows,
            sampler: Some(crate::calib::Sampler::Even),
            offsets: Vec::new(),
        },
        calib_batch: 8,
        method: match &plugin {
            Some((plugin, path)) => MethodSpec::Metric {
                plugin,
                source: path.clone(),
                sha256: job.sha256.clone(),
            },
            None => MethodSpec::SparseGpt,
        },
        sparsity: setting.sparsity,
        pattern: setting.pattern,
        allocation: (Rule::Builtin(setting.allocation.rule()), Granularity::Block),
        eval_precision: None,
        skip_dense: true,
        plan_only: false,
        out: None,
        tasks: TaskSpec {
            tasks: Vec::new(),
            items: 0,
        },
        stream: false,
        save_dtype: SaveDtype::F32,
        // Masks the board measured before: stop before the evaluation, the result reused.
        after_prune: Some(Box::new(move |model| {
            let hash = model.mask_sha256()?;
            Ok(masks(&hash).is_none())
        })),
    };
    Ok(Some(match crate::run::prune::run(spec, &mut Silent)? {
        Outcome::Stopped => return Ok(None),
        Outcome::Done(r) => JobOutcome::Measured(Measured {
            ppl: r.perplexity.pruned.ppl,
            sparsity: r.sparsity_achieved,
            seconds: start.elapsed().as_secs_f64(),
            fingerprint,
        }),
        Outcome::Metric { layer, failure } => {
            verdict(failure.kind(), format!("on {layer}: {failure}"))
        }
        Outcome::Allocator(f) => verdict(f.kind(), format!("allocation: {f}")),
        Outcome::Plan(_) => anyhow::bail!("a plan where a pruning was asked for"),
    }))
}
