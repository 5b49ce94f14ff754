//! `search --workers URL`: the ladder of each candidate runs on a board's workers
//! (`autoprune worker`) instead of this process, so a search fans out over the same workers
//! (and Slurm arrays) that evaluate third-party submissions.
//!
//! The search posts a task — the run's configuration, Wanda's reference losses, the node — and
//! polls for the archive [`Outcome`]. A worker keeps one [`Evaluator`] per configuration, built
//! with its own sandbox and policy (a task's `trusted` is never honoured), on its own copy of
//! the model and texts (the run's `--model`, `--calib` and `--eval` paths must exist there).
//! The held-out ranking at the end stays in the search's process.

use super::archive::{Archive, Node, Outcome};
use super::cascade::{Evaluator, HostFault, Reference};
use super::run::Evaluate;
use super::session::RunConfig;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a worker evaluates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    /// The run's configuration.
    pub config: RunConfig,
    /// Wanda's reference losses of the run (so every worker compares with the same numbers).
    pub reference: Reference,
    /// The candidate.
    pub node: Node,
    /// Past the screen whatever its ratio (the seeds).
    pub always_promote: bool,
}

/// The search side: an [`Evaluate`] that sends each candidate to a board.
pub struct RemoteEvaluator {
    url: String,
    token: String,
    config: RunConfig,
    reference: Reference,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
    /// Longest wait for one candidate.
    pub timeout: Duration,
}

impl RemoteEvaluator {
    /// Send this run's candidates to the board at `url` with a `search` token.
    pub fn new(
        url: &str,
        token: &str,
        config: RunConfig,
        reference: Reference,
    ) -> anyhow::Result<Self> {
        Ok(RemoteEvaluator {
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            config,
            reference,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?,
            timeout: Duration::from_secs(6 * 3600),
        })
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<serde_json::Value, String> {
        let r = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("the board is unreachable: {e}"))?;
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        if status.is_success() {
            Ok(v)
        } else {
            Err(format!(
                "the board answered {status}: {}",
                crate::term::line(v["error"]["message"].as_str().unwrap_or(""))
            ))
        }
    }

    async fn remote(&self, node: &Node, always_promote: bool) -> Result<Outcome, String> {
        let task = Task {
            config: self.config.clone(),
            reference: self.reference.clone(),
            node: node.clone(),
            always_promote,
        };
        let body = serde_json::json!({ "task": task });
        let posted = self
            .call(self.http.post(format!("{}/v1/tasks", self.url)).json(&body))
            .await?;
        let id = posted["id"]
            .as_i64()
            .ok_or("the board returned no task id")?;
        let start = Instant::now();
        let mut wait = Duration::from_millis(100);
        let mut misses = 0;
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
            let v = match self
                .call(self.http.get(format!("{}/v1/tasks/{id}", self.url)))
                .await
            {
                Ok(v) => v,
                // The board restarting: keep polling for a while.
                Err(_) if misses < 150 => {
                    misses += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            misses = 0;
            match v["state"].as_str() {
                Some("done") => {
                    return serde_json::from_value(v["outcome"].clone())
                        .map_err(|e| format!("a worker's outcome does not parse: {e}"))
                }
                Some("failed") => {
                    return Err(format!(
                        "a worker could not evaluate it: {}",
                        crate::term::line(&v["verdict"].to_string())
                    ))
                }
                _ if start.elapsed() > self.timeout => {
                    return Err(format!("no worker finished it in {:?}", self.timeout))
                }
                _ => {}
            }
        }
    }
}

impl Evaluate for RemoteEvaluator {
    fn evaluate(
        &self,
        _: &Archive,
        node: &Node,
        always_promote: bool,
    ) -> Result<Outcome, HostFault> {
        self.rt
            .block_on(self.remote(node, always_promote))
            .map_err(HostFault::Remote)
    }
}

/// The worker side: one prepared evaluator at a time, rebuilt when a task's configuration
/// changes.
#[derive(Default)]
pub struct TaskRunner {
    current: Mutex<Option<(String, Evaluator)>>,
}

impl TaskRunner {
    /// Evaluate `task` with this worker's build options and policy on `device`. A fault of
    /// this machine is an error; the candidate's own failure is in the outcome.
    pub fn run(
        &self,
        task: &Task,
        build: &crate::build::BuildOptions,
        policy: &crate::sandbox::Policy,
        device: &str,
    ) -> anyhow::Result<Result<Outcome, HostFault>> {
        let key = crate::hash::sha256_hex(
            format!(
                "{}{}",
                serde_json::to_string(&task.config)?,
                serde_json::to_string(&task.reference)?
            )
            .as_bytes(),
        );
        let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().map(|(k, _)| k != &key).unwrap_or(true) {
            *g = None;
            let cfg = &task.config;
            let data = super::data::search_data(
                &super::session::data_spec(cfg),
                &crate::setup::device(device)?,
            )?;
            // This worker's own isolation, whatever the task says.
            let builder =
                crate::build::Builder::new(crate::build::default_cache()?, build.clone())?;
            let ev = Evaluator::new(
                cfg.ladder.clone(),
                data,
                builder,
                policy.clone(),
                Some(task.reference.clone()),
                &mut |_| {},
            )?;
            *g = Some((key, ev));
        }
        let (_, ev) = g.as_ref().expect("set above");
        let dir = tempfile::tempdir()?;
        let archive = Archive::open(&dir.path().join("archive.sqlite"))?;
        Ok(ev.evaluate(&archive, &task.node, task.always_promote))
    }
}
