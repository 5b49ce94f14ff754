//! The `autoprune` binary end to end: build, check, exit statuses and JSON.

mod common;

use std::process::Command;

fn autoprune() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_autoprune"));
    c.env("AUTOPRUNE_CACHE", common::workspace().join("target/test-cache"));
    c
}

#[test]
fn build_then_check_wanda() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("wanda.wasm");
    let src = common::workspace().join("candidates/wanda.rs");
    let b = autoprune().arg("build").arg(&src).arg("-o").arg(&out).output().unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert!(String::from_utf8_lossy(&b.stdout).contains("built"));
    let c = autoprune()
        .args(["check", "--json", "--shapes", "64x128,96x64"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let report: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["metric"]["name"], "wanda");
    assert_eq!(report["layers"].as_array().unwrap().len(), 2);
    assert_eq!(report["layers"][0]["deterministic"], true);
}

#[test]
fn check_reports_a_failing_plugin_with_exit_status_1() {
    let src = common::workspace().join("tests/attacks/nan_output.rs");
    let c = autoprune().args(["check", "--shapes", "32x32"]).arg(&src).output().unwrap();
    assert_eq!(c.status.code(), Some(1));
    let text = String::from_utf8_lossy(&c.stdout);
    assert!(text.contains("FAIL") && text.contains("non-finite"), "{text}");
}

#[test]
fn build_without_bubblewrap_refuses_untrusted_source() {
    // A PATH without bwrap (but with rustc/cargo, found through the toolchain's own folder).
    let empty = tempfile::tempdir().unwrap();
    let src = common::workspace().join("candidates/wanda.rs");
    let c = autoprune().env("PATH", empty.path()).arg("build").arg(&src).arg("-o").arg(empty.path().join("x.wasm")).output().unwrap();
    assert_eq!(c.status.code(), Some(2));
    let err = String::from_utf8_lossy(&c.stderr);
    assert!(err.contains("bubblewrap") && err.contains("--trusted"), "{err}");
}

#[test]
fn bad_policy_fields_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.json");
    std::fs::write(&p, r#"{"memory_byte": 1}"#).unwrap();
    let c = autoprune().args(["check", "--policy"]).arg(&p).arg("x.wasm").output().unwrap();
    assert_eq!(c.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&c.stderr).contains("unknown field"));
}
