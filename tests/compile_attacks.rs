//! Compile-time attacks: candidate sources that try to read host files or the environment,
//! hang the compiler, or create imports. Each runs with the lint off (the sandbox alone must
//! hold) and on; a canary file and a canary environment variable must never show up in the
//! artifact, the diagnostics or any verdict.

mod common;

use autoprune::build::{BuildFailure, BuildOptions, Builder, Isolation};
use autoprune::sandbox::Failure;
use common::{builder, cache};
use std::sync::OnceLock;

const CANARY_VAR: &str = "AUTOPRUNE_TEST_CANARY";

struct Canary {
    _dir: tempfile::TempDir,
    path: String,
    value: String,
}

/// Plant a canary file and environment variable with a random value (once per process).
fn canary() -> &'static Canary {
    static C: OnceLock<Canary> = OnceLock::new();
    C.get_or_init(|| {
        let mut raw = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut raw)
            .unwrap();
        let value = format!(
            "CANARY{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.txt");
        // Valid Rust on its first line, so a `#[path]` include would compile it if it could.
        std::fs::write(&path, format!("pub const LEAK: &str = \"{value}\";\n")).unwrap();
        // Set before any build starts; the builders run sequentially in this one test.
        std::env::set_var(CANARY_VAR, &value);
        Canary {
            _dir: dir,
            path: path.to_string_lossy().into_owned(),
            value,
        }
    })
}

/// A candidate whose score uses `expr` (a `&[u8]` or `&str` expression) so it is not dropped.
fn candidate(items: &str, expr: &str) -> String {
    format!(
        r#"use autoprune_sdk::prelude::*;
{items}
struct Leak;
impl Metric for Leak {{
    fn info() -> Info {{ Info::new("leak", "0", "tries to read the host") }}
    fn score(layer: &Layer) -> Result<()> {{
        let bytes: &[u8] = {expr};
        log!(Level::Info, "{{:?}}", bytes);
        layer.score_rows(|row, out| {{ for (o, w) in out.iter_mut().zip(row.weights) {{ *o = w.abs() + bytes.len() as f32; }} }})
    }}
}}
export_metric!(Leak);
"#
    )
}

fn attacks() -> Vec<(&'static str, String)> {
    let c = canary();
    let p = &c.path;
    vec![
        ("include_bytes", candidate(&format!("const X: &[u8] = include_bytes!(\"{p}\");"), "X")),
        ("include_str", candidate(&format!("const X: &str = include_str!(\"{p}\");"), "X.as_bytes()")),
        ("include", candidate("", &format!("include!(\"{p}\").as_bytes()"))),
        ("env", candidate(&format!("const X: &str = env!(\"{CANARY_VAR}\");"), "X.as_bytes()")),
        (
            "option_env",
            candidate(
                &format!("const X: Option<&str> = option_env!(\"{CANARY_VAR}\");"),
                "X.unwrap_or(\"none\").as_bytes()",
            ),
        ),
        ("path_mod", candidate(&format!("#[path = \"{p}\"] mod leak;"), "leak::LEAK.as_bytes()")),
        ("proc_environ", candidate("const X: &[u8] = include_bytes!(\"/proc/self/environ\");", "X")),
        ("dev_zero", candidate("const X: &[u8] = include_bytes!(\"/dev/zero\");", "X")),
        (
            "endless_const_eval",
            // The crate-level allow silences rustc's own const-eval watchdog: only the kill stops it.
            "#![allow(long_running_const_eval)]\n".to_string()
                + &candidate(
                    "const N: u64 = { let mut i = 1u64; while i != 0 { i = i.wrapping_mul(3); } i };",
                    "&[N as u8]",
                ),
        ),
        (
            "extern_import",
            candidate(
                "#[link(wasm_import_module = \"wasi_snapshot_preview1\")]\nextern \"C\" { fn proc_exit(code: i32); }",
                // Taking its address needs no `unsafe` and keeps the import in the module.
                "{ std::hint::black_box(proc_exit as unsafe extern \"C\" fn(i32)); &[] }",
            ),
        ),
    ]
}

fn assert_no_leak(name: &str, result: &Result<autoprune::build::Built, Failure>) {
    let c = canary();
    let text = match result {
        Ok(b) => {
            let hay = String::from_utf8_lossy(&b.wasm);
            assert!(!hay.contains(&c.value), "{name}: canary in the artifact");
            b.warnings.clone()
        }
        Err(f) => format!("{f} {f:?} {}", serde_json::to_string(f).unwrap()),
    };
    assert!(
        !text.contains(&c.value),
        "{name}: canary in the output: {text}"
    );
    let secret = c.value.trim_start_matches("CANARY");
    assert!(
        !text.contains(secret),
        "{name}: canary secret in the output: {text}"
    );
}

#[test]
fn compile_time_attacks_leak_nothing_with_or_without_the_lint() {
    let c = canary();
    assert!(std::env::var(CANARY_VAR).unwrap() == c.value);
    let sandboxed = builder(false);
    let linted = builder(true);
    let fast_kill = Builder::new(
        cache(),
        BuildOptions {
            isolation: Isolation::Bwrap,
            lint: false,
            timeout_secs: 5,
            ..BuildOptions::default()
        },
    )
    .unwrap();
    for (name, src) in attacks() {
        let b = if name == "endless_const_eval" {
            &fast_kill
        } else {
            &sandboxed
        };
        let t = std::time::Instant::now();
        let raw = b.build(&src);
        assert_no_leak(name, &raw);
        match (name, &raw) {
            // Without the canary in the sandbox's environment this compiles to a harmless metric.
            ("option_env", Ok(_)) => {}
            ("extern_import", Err(Failure::Rejected { reason })) => {
                assert!(
                    reason.contains("wasi_snapshot_preview1") || reason.contains("import"),
                    "{reason}"
                )
            }
            (_, Err(Failure::Compile { .. })) => {}
            (_, other) => panic!("{name} without lint: unexpected {other:?}"),
        }
        assert!(t.elapsed().as_secs() < 30, "{name}: the hard kill works");
        if name == "endless_const_eval" {
            // Nothing to lint: the hard kill is the defence.
            match &raw {
                Err(Failure::Compile { diagnostics }) => {
                    assert!(diagnostics.contains("stopped"), "{diagnostics}")
                }
                other => panic!("{other:?}"),
            }
            continue;
        }
        let linted_res = linted.build(&src);
        assert_no_leak(name, &linted_res);
        match linted_res {
            Err(Failure::Compile { diagnostics }) => {
                assert!(diagnostics.contains("not allowed"), "{name}: {diagnostics}")
            }
            other => panic!("{name} with lint: expected a lint error, got {other:?}"),
        }
    }
}

#[test]
fn broken_candidate_gets_compiler_diagnostics() {
    let src = "use autoprune_sdk::prelude::*;\nstruct M;\nimpl Metric for M {\n fn info() -> Info { Info::new(\"m\", \"0\", \"\") }\n fn score(layer: &Layer) -> Result<()> { let x: u32 = \"no\"; Ok(()) }\n}\nexport_metric!(M);\n";
    match builder(true).build(src) {
        Err(Failure::Compile { diagnostics }) => {
            assert!(diagnostics.contains("mismatched types"), "{diagnostics}");
            assert!(
                diagnostics.contains("lib.rs:5"),
                "points at the candidate: {diagnostics}"
            );
            // No host path reaches the diagnostics: the toolchain is at /rust, the job at /job.
            let home = std::env::var("HOME").unwrap_or_default();
            assert!(
                home.is_empty() || !diagnostics.contains(&home),
                "{diagnostics}"
            );
        }
        other => panic!("got {other:?}"),
    }
}

/// A failure of the host (here: a build folder that cannot be made) is told apart from the
/// candidate's verdict, so a search does not record it against the candidate.
#[test]
fn host_build_failures_are_not_the_candidates() {
    let opts = BuildOptions {
        isolation: Isolation::Bwrap,
        timeout_secs: 20,
        work_dir: Some("/nonexistent/autoprune-build-folders".into()),
        ..BuildOptions::default()
    };
    let b = Builder::new(cache(), opts).expect("builder (is bubblewrap installed?)");
    // A source no earlier test built (the cache is looked up before any folder is made).
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let src = format!(
        "{}\n// {nonce}\n",
        common::source("candidates/magnitude.rs")
    );
    match b.try_build(&src) {
        Err(BuildFailure::Host(m)) => assert!(m.contains("build folder"), "{m}"),
        other => panic!("expected a host failure, got {other:?}"),
    }
    // Reported as one verdict, it says it was the host.
    match b.build(&src) {
        Err(Failure::Compile { diagnostics }) => {
            assert!(diagnostics.starts_with("host: "), "{diagnostics}")
        }
        other => panic!("expected a compile failure, got {other:?}"),
    }
}
