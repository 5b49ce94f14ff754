//! `autoprune slurm submit` against a real single-node Slurm (Debian's slurmctld, slurmd and
//! munge, started by the test): an array of two workers evaluates a board's jobs; one worker
//! is `scancel`led mid-job and its job is finished by the other; `autoprune slurm status`
//! reads the tasks back.

mod common;

use common::board::{wait_until, Board};
use common::require_real_data;
use common::slurm::Cluster;
use std::time::Duration;

#[test]
fn a_slurm_array_of_workers_survives_scancel_of_one_mid_job() {
    require_real_data!();
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let b = Board::start(
        &dir.path().join("board"),
        &[
            "--settings",
            "2:4",
            "--baselines",
            "wanda,magnitude",
            "--lease-secs",
            "3",
        ]
        .into_iter()
        .chain(common::board::TINY_PROTOCOL)
        .collect::<Vec<_>>(),
    );
    let w = b.token("cluster", true);
    let slurm_dir = dir.path().join("slurm");
    let o = common::autoprune()
        .args([
            "slurm",
            "submit",
            "--server",
            &b.url,
            "--workers",
            "2",
            "--partition",
            "debug",
        ])
        .args([
            "--time",
            "10",
            "--cpus-per-worker",
            "1",
            "--exit-when-idle",
            "8",
            "--dir",
        ])
        .arg(&slurm_dir)
        .env("SLURM_CONF", &cluster.conf)
        .env("AUTOPRUNE_WORKER_TOKEN", &w)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        cluster.logs()
    );
    let job = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let script = std::fs::read_to_string(slurm_dir.join("workers.sbatch")).unwrap();
    assert!(!script.contains(&w), "the token is not in the script");

    // Cancel the task that took the first job, while it works on it.
    wait_until(
        Duration::from_secs(120),
        "an array task leased a job",
        || b.jobs().get("leased").is_some(),
    );
    let store = autoprune::board::store::Store::open(&b.data, None).unwrap();
    let first = store
        .audit_log()
        .unwrap()
        .into_iter()
        .find(|e| e.2 == "lease")
        .unwrap();
    drop(store);
    // actor: "cluster/slurm-<job>_<task>"
    let task = first.1.rsplit("slurm-").next().unwrap().to_string();
    assert!(task.starts_with(&format!("{job}_")), "{first:?}");
    let c = cluster.cmd("scancel").arg(&task).output().unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));

    b.wait_idle(Duration::from_secs(300));
    let board = b.get("/v1/leaderboard", None).body;
    let entries = board["settings"][0]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{board}");
    assert!(board["settings"][0]["failed"]
        .as_array()
        .unwrap()
        .is_empty());
    let attempts: Vec<i64> = (1..=2)
        .map(|id| {
            let s = b
                .get(
                    &format!("/v1/submissions/{id}"),
                    Some(&b.token("reader", false)),
                )
                .body;
            s["jobs"][0]["attempts"].as_i64().unwrap()
        })
        .collect();
    assert!(
        attempts.contains(&2),
        "the cancelled worker's job was handed out again: {attempts:?}"
    );

    // `slurm status`: the cancelled task, and the other one (running until idle, then done).
    let status = || {
        let o = common::autoprune()
            .args(["slurm", "status", "--json", "--job", &job])
            .env("SLURM_CONF", &cluster.conf)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    wait_until(Duration::from_secs(60), "both tasks ended", || {
        let s = status();
        let tasks = s.as_array().unwrap();
        tasks.len() == 2
            && tasks.iter().all(|t| {
                t["state"] != "RUNNING" && t["state"] != "PENDING" && t["state"] != "COMPLETING"
            })
    });
    let tasks = status();
    let state = |id: &str| {
        tasks
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .map(|t| t["state"].clone())
    };
    assert_eq!(state(&task), Some("CANCELLED".into()), "{tasks}");
    let other = if task.ends_with("_0") {
        format!("{job}_1")
    } else {
        format!("{job}_0")
    };
    assert_eq!(state(&other), Some("COMPLETED".into()), "{tasks}");
    let log = std::fs::read_to_string(slurm_dir.join(format!("worker-{}.log", other))).unwrap();
    assert!(log.contains("measured"), "{log}");
}
