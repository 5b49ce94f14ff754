//! Workers on a Slurm cluster: `autoprune slurm submit` writes an `sbatch` array script whose
//! every task runs one `autoprune worker` against a board, and submits it; `autoprune slurm
//! status` reads the array's tasks back from `squeue`, `scontrol` (recently finished tasks)
//! and `sacct` (when the cluster keeps accounting).
//!
//! The worker token travels in the job's environment (`--export=ALL`), never in the script,
//! which Slurm keeps in its spool where other users' tools may read it.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What an array of workers asks Slurm for.
#[derive(Debug, Clone, PartialEq)]
pub struct ArraySpec {
    /// The board's URL.
    pub server: String,
    /// Number of workers (array tasks).
    pub workers: usize,
    /// Partition (`None`: the cluster's default).
    pub partition: Option<String>,
    /// Account to charge.
    pub account: Option<String>,
    /// Time limit per worker, Slurm's syntax (`30`, `1:00:00`, `2-00:00:00`).
    pub time: String,
    /// CPUs per worker.
    pub cpus_per_worker: usize,
    /// Memory per worker, Slurm's syntax (`8G`).
    pub mem: Option<String>,
    /// GPUs per worker (`--gres=gpu:N`); the workers then run on `cuda`.
    pub gpus_per_worker: usize,
    /// Job name.
    pub name: String,
    /// The `autoprune` binary the tasks run (on a shared file system).
    pub autoprune: PathBuf,
    /// Where the script and the tasks' logs go.
    pub dir: PathBuf,
    /// A worker stops once the queue has been empty this many seconds.
    pub exit_when_idle: Option<f64>,
}

/// A string as one single-quoted shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Why a value cannot go into an `#SBATCH` line.
fn directive_value(what: &str, v: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !v.is_empty()
            && v.len() <= 200
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:,+=@/".contains(c)),
        "{what} `{}` has characters an #SBATCH line cannot take",
        crate::term::line(v)
    );
    Ok(v.to_string())
}

impl ArraySpec {
    /// The `sbatch` script.
    pub fn script(&self) -> anyhow::Result<String> {
        anyhow::ensure!(
            (1..=10_000).contains(&self.workers),
            "--workers must be 1..=10000"
        );
        anyhow::ensure!(self.cpus_per_worker >= 1, "--cpus-per-worker must be >= 1");
        let mut s = String::from("#!/bin/bash\n");
        let mut d = |k: &str, v: String| s.push_str(&format!("#SBATCH --{k}={v}\n"));
        d("job-name", directive_value("--name", &self.name)?);
        d("array", format!("0-{}", self.workers - 1));
        d("ntasks", "1".into());
        d("cpus-per-task", self.cpus_per_worker.to_string());
        d("time", directive_value("--time", &self.time)?);
        if let Some(p) = &self.partition {
            d("partition", directive_value("--partition", p)?);
        }
        if let Some(a) = &self.account {
            d("account", directive_value("--account", a)?);
        }
        if let Some(m) = &self.mem {
            d("mem", directive_value("--mem", m)?);
        }
        if self.gpus_per_worker > 0 {
            d("gres", format!("gpu:{}", self.gpus_per_worker));
        }
        let dir = self.dir.to_string_lossy();
        anyhow::ensure!(
            !dir.contains(char::is_whitespace) && !dir.contains('%'),
            "the folder {} must have no spaces or % (Slurm's --output cannot quote them)",
            crate::term::line(&dir)
        );
        d("output", format!("{dir}/worker-%A_%a.log"));
        d("export", "ALL".into());
        s.push_str("set -eu\n");
        s.push_str(
            "# The worker token comes from the environment sbatch was called with (never this file).\n",
        );
        s.push_str(": \"${AUTOPRUNE_WORKER_TOKEN:?no worker token in the environment}\"\n");
        s.push_str(&format!(
            "export OMP_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{}}}\" RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{}}}\"\n",
            self.cpus_per_worker, self.cpus_per_worker
        ));
        let mut cmd = format!(
            "exec {} worker --server {} --instance \"slurm-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}\"",
            shell_quote(&self.autoprune.to_string_lossy()),
            shell_quote(&self.server)
        );
        if let Some(idle) = self.exit_when_idle {
            cmd.push_str(&format!(" --exit-when-idle {idle}"));
        }
        if self.gpus_per_worker > 0 {
            cmd.push_str(" --device cuda");
        }
        s.push_str(&cmd);
        s.push('\n');
        Ok(s)
    }

    /// Write the script into `dir` and submit it with `sbatch --parsable`, the worker token in
    /// sbatch's environment. Returns the array's job id and the script's path.
    pub fn submit(&self, worker_token: &str) -> anyhow::Result<(String, PathBuf)> {
        std::fs::create_dir_all(&self.dir)?;
        let dir = std::fs::canonicalize(&self.dir)?;
        let spec = ArraySpec {
            dir: dir.clone(),
            ..self.clone()
        };
        let script = spec.script()?;
        let path = dir.join("workers.sbatch");
        std::fs::write(&path, script)?;
        let out = Command::new("sbatch")
            .arg("--parsable")
            .arg(&path)
            .env("AUTOPRUNE_WORKER_TOKEN", worker_token)
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run sbatch (is Slurm installed?): {e}"))?;
        anyhow::ensure!(
            out.status.success(),
            "sbatch failed: {}",
            crate::term::text(String::from_utf8_lossy(&out.stderr).trim())
        );
        let id = String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        anyhow::ensure!(
            !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()),
            "sbatch printed no job id: {}",
            crate::term::line(&String::from_utf8_lossy(&out.stdout))
        );
        Ok((id, path))
    }
}

/// One array task as Slurm reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    /// `JOBID_TASK`.
    pub id: String,
    /// `PENDING`, `RUNNING`, `COMPLETED`, `CANCELLED`, `FAILED`, `TIMEOUT`, …
    pub state: String,
    /// Run time so far.
    pub elapsed: String,
    /// Where it runs, or why it waits; the exit code once finished.
    pub detail: String,
    /// Which tool said so: `squeue`, `scontrol` or `sacct`.
    pub source: String,
}

/// The tasks of array job `id`: live ones from `squeue`, finished ones from `sacct` when the
/// cluster keeps accounting, else from `scontrol` (which remembers them for `MinJobAge`).
pub fn status(id: &str) -> anyhow::Result<Vec<TaskState>> {
    anyhow::ensure!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()),
        "a job id is digits"
    );
    let mut tasks: Vec<TaskState> = Vec::new();
    let q = Command::new("squeue")
        .args(["-h", "-r", "-j", id, "-o", "%i|%T|%M|%R"])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run squeue (is Slurm installed?): {e}"))?;
    // squeue fails for a job it no longer knows: that is not an error here.
    if q.status.success() {
        tasks.extend(parse_squeue(&String::from_utf8_lossy(&q.stdout)));
    }
    let a = Command::new("sacct")
        .args([
            "-n",
            "-P",
            "-X",
            "-j",
            id,
            "-o",
            "JobID,State,Elapsed,ExitCode",
        ])
        .output();
    let from_sacct = match a {
        Ok(o) if o.status.success() => parse_sacct(&String::from_utf8_lossy(&o.stdout)),
        _ => Vec::new(),
    };
    let finished = if from_sacct.is_empty() {
        match Command::new("scontrol")
            .args(["show", "job", "-o", id])
            .output()
        {
            Ok(o) if o.status.success() => parse_scontrol(&String::from_utf8_lossy(&o.stdout)),
            _ => Vec::new(),
        }
    } else {
        from_sacct
    };
    for t in finished {
        if !tasks.iter().any(|x| x.id == t.id) {
            tasks.push(t);
        }
    }
    tasks.sort_by_key(|t| task_key(&t.id));
    Ok(tasks)
}

fn task_key(id: &str) -> (u64, u64) {
    let (j, t) = id.split_once('_').unwrap_or((id, "0"));
    (j.parse().unwrap_or(0), t.parse().unwrap_or(0))
}

/// `squeue -o %i|%T|%M|%R` lines.
pub fn parse_squeue(out: &str) -> Vec<TaskState> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            (f.len() == 4).then(|| TaskState {
                id: f[0].into(),
                state: f[1].into(),
                elapsed: f[2].into(),
                detail: f[3].into(),
                source: "squeue".into(),
            })
        })
        .collect()
}

/// `sacct -n -P -X -o JobID,State,Elapsed,ExitCode` lines (array tasks only).
pub fn parse_sacct(out: &str) -> Vec<TaskState> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            (f.len() == 4 && f[0].contains('_') && !f[0].contains('[')).then(|| TaskState {
                id: f[0].into(),
                // "CANCELLED by 0" → "CANCELLED"
                state: f[1].split_whitespace().next().unwrap_or_default().into(),
                elapsed: f[2].into(),
                detail: format!("exit {}", f[3]),
                source: "sacct".into(),
            })
        })
        .collect()
}

/// `scontrol show job -o` lines (one per array task).
pub fn parse_scontrol(out: &str) -> Vec<TaskState> {
    out.lines()
        .filter_map(|l| {
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                    .map(str::to_string)
            };
            let (job, task) = (field("ArrayJobId")?, field("ArrayTaskId")?);
            Some(TaskState {
                id: format!("{job}_{task}"),
                state: field("JobState")?,
                elapsed: field("RunTime").unwrap_or_default(),
                detail: format!("exit {}", field("ExitCode").unwrap_or_default()),
                source: "scontrol".into(),
            })
        })
        .collect()
}

/// The default folder of an array's script and logs.
pub fn default_dir() -> PathBuf {
    Path::new("autoprune-slurm").to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ArraySpec {
        ArraySpec {
            server: "http://h:8080/'$(x)".into(),
            workers: 8,
            partition: Some("gpu".into()),
            account: None,
            time: "1:00:00".into(),
            cpus_per_worker: 4,
            mem: Some("16G".into()),
            gpus_per_worker: 0,
            name: "autoprune-worker".into(),
            autoprune: "/opt/a b/autoprune".into(),
            dir: "/shared/runs".into(),
            exit_when_idle: Some(60.0),
        }
    }

    #[test]
    fn the_script_asks_for_the_array_and_quotes_what_the_shell_reads() {
        let s = spec().script().unwrap();
        for l in [
            "#SBATCH --array=0-7",
            "#SBATCH --partition=gpu",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --mem=16G",
            "#SBATCH --time=1:00:00",
            "#SBATCH --export=ALL",
            "#SBATCH --output=/shared/runs/worker-%A_%a.log",
        ] {
            assert!(s.lines().any(|x| x == l), "{l}\n{s}");
        }
        assert!(s.contains("exec '/opt/a b/autoprune' worker --server 'http://h:8080/'\\''$(x)'"));
        assert!(s.contains("--exit-when-idle 60"));
        assert!(!s.contains("--account"));
        assert!(!s.contains("ap_"), "no token in the script");
        let bad = ArraySpec {
            partition: Some("gpu\n#SBATCH --x".into()),
            ..spec()
        };
        assert!(bad.script().is_err());
        let none = ArraySpec {
            workers: 0,
            ..spec()
        };
        assert!(none.script().is_err());
    }

    #[test]
    fn slurm_outputs_parse() {
        let q = parse_squeue("12_0|RUNNING|0:05|vm\n12_1|PENDING|0:00|(Resources)\ngarbage\n");
        assert_eq!(q.len(), 2);
        assert_eq!((q[1].id.as_str(), q[1].state.as_str()), ("12_1", "PENDING"));
        let a = parse_sacct(
            "12_0|CANCELLED by 0|00:00:09|0:15\n12_[2-3]|PENDING|00:00:00|0:0\n12|RUNNING|x|0:0\n",
        );
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].state, "CANCELLED");
        let c = parse_scontrol("JobId=13 ArrayJobId=12 ArrayTaskId=1 JobState=COMPLETED RunTime=00:00:05 ExitCode=0:0\n");
        assert_eq!(c[0].id, "12_1");
        assert_eq!(c[0].state, "COMPLETED");
        assert_eq!(task_key("12_10"), (12, 10));
    }
}
