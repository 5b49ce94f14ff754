//! Zero-shot accuracy end to end on the real SmolLM2: the built-in task is deterministic,
//! `eval` and `prune` score JSONL tasks, and a bad task file is refused with its line.

mod common;

use common::autoprune;
use serde_json::Value;

fn write_builtin(path: &std::path::Path, items: usize) -> Vec<Value> {
    let p = autoprune()
        .args(["eval", "--tasks", "sotu-next", "--task-items"])
        .arg(items.to_string())
        .arg("--write-tasks")
        .arg(path)
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn builtin_task_is_deterministic_and_scored_by_eval() {
    common::require_real_data!();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let items = write_builtin(&a, 8);
    write_builtin(&b, 8);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(items.len(), 8);
    for (k, it) in items.iter().enumerate() {
        assert_eq!(it["gold"], k % 4);
        assert_eq!(it["choices"].as_array().unwrap().len(), 4);
        // Items come from the evaluation speeches (1990 on).
        let year: u32 = it["id"].as_str().unwrap()[..4].parse().unwrap();
        assert!(year >= 1990, "{it}");
    }
    let p = autoprune()
        .args(["eval", "--eval-windows", "1", "--json", "--tasks"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let r: Value = serde_json::from_slice(&p.stdout).unwrap();
    let z = &r["zero_shot"][0];
    assert_eq!(z["task"], "a");
    assert_eq!(z["items"], 8);
    for k in ["acc", "acc_norm"] {
        let v = z[k].as_f64().unwrap();
        // Eight items: a multiple of 1/8.
        assert!(
            (0.0..=1.0).contains(&v) && (v * 8.0).fract() == 0.0,
            "{k} {v}"
        );
    }
    // Without --tasks the report is as it was: no zero_shot field.
    let p = autoprune()
        .args(["eval", "--eval-windows", "1", "--json"])
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&p.stdout).unwrap();
    assert!(r.get("zero_shot").is_none());
}

#[test]
fn prune_reports_zero_shot_dense_and_pruned() {
    common::require_real_data!();
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.jsonl");
    write_builtin(&tasks, 4);
    let p = autoprune()
        .args(["prune", "--metric"])
        .arg(common::workspace().join("candidates/magnitude.rs"))
        .args([
            "--calib-windows",
            "1",
            "--eval-windows",
            "1",
            "--json",
            "--tasks",
        ])
        .arg(&tasks)
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let r: Value = serde_json::from_slice(&p.stdout).unwrap();
    for which in ["dense", "pruned"] {
        assert_eq!(r["zero_shot"][which][0]["items"], 4, "{which}: {r}");
    }
}

#[test]
fn sweep_scores_every_cell_zero_shot() {
    common::require_real_data!();
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.jsonl");
    write_builtin(&tasks, 3);
    let out = dir.path().join("sweep");
    let p = autoprune()
        .args(["sweep", "--metric"])
        .arg(common::workspace().join("candidates/magnitude.rs"))
        .args([
            "--sparsities",
            "0.5",
            "--allocations",
            "uniform",
            "--calib-windows",
            "1",
            "--eval-windows",
            "1",
            "--tasks",
        ])
        .arg(&tasks)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let cells: Vec<Value> = std::fs::read_to_string(out.join("cells.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cells.len(), 2, "dense and one cell");
    for c in &cells {
        assert_eq!(c["zero_shot"][0]["items"], 3, "{c}");
        assert_eq!(c["zero_shot"][0]["task"], "t", "{c}");
    }
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(table.contains("zero-shot acc / acc_norm"), "{table}");
}

#[test]
fn bad_task_files_are_refused_with_their_line() {
    common::require_real_data!();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.jsonl");
    std::fs::write(
        &f,
        "{\"context\":\"a\",\"choices\":[\" b\",\" c\"],\"gold\":0}\n{\"context\":\"a\",\"choices\":[\" b\",\" c\"],\"gold\":7}\n",
    )
    .unwrap();
    let p = autoprune()
        .args(["eval", "--eval-windows", "1", "--tasks"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(p.status.code(), Some(2));
    let err = String::from_utf8_lossy(&p.stderr);
    assert!(err.contains("line 2") && err.contains("gold 7"), "{err}");
}
