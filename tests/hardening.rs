//! The host's boundaries under attack (issue 14): a compiler that floods its output, build
//! options that would switch a bound off, a cache that is not ours, a staged SDK edited on
//! disk, plugin text full of terminal control, components too large or too complex to touch,
//! archives that try to hand out trust, allocations a hair outside their bounds, scores that
//! make a per-layer threshold prune everything, and hostile model files. Each test is an
//! attack that succeeded on the code before this issue.

mod common;

use autoprune::sandbox::{Failure, InvalidOutput, Policy};
use common::autoprune;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `VmHWM` (peak resident memory) of a live process, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Six levels of ten nested macro calls around a 2,000-byte `compile_error!`: 10⁵ errors,
/// about 250 MB of diagnostics (measured: 25 MB in 2.2 s for five levels), from 2.5 KB of
/// source.
fn diagnostics_flood() -> String {
    let levels = ["e", "d", "c", "b", "a", "z"];
    let mut src = format!(
        "use autoprune_sdk::prelude::*;\nmacro_rules! e {{ () => {{ compile_error!(\"{}\"); }} }}\n",
        "x".repeat(2000)
    );
    for w in levels.windows(2) {
        src.push_str(&format!(
            "macro_rules! {} {{ () => {{ {} }} }}\n",
            w[1],
            format!("{}!(); ", w[0]).repeat(10)
        ));
    }
    src.push_str("z!();\n");
    src
}

/// Item 1: the compiler's output is read through capped pipes; past 1 MiB the build is killed
/// with a `compile` verdict that says so. Measured: the host's peak RSS stays that of an
/// ordinary build, and the verdict comes in about a second instead of after 250 MB.
#[test]
fn a_diagnostics_flood_is_cut_while_it_is_produced() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("flood.rs");
    std::fs::write(&src, diagnostics_flood()).unwrap();
    let start = Instant::now();
    let mut child = autoprune()
        .args(["build", "--json"])
        .arg(&src)
        .arg("-o")
        .arg(dir.path().join("flood.wasm"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(peak_rss(child.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = start.elapsed().as_secs_f64();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failure"]["verdict"], "compile");
    let diagnostics = v["failure"]["diagnostics"].as_str().unwrap();
    assert!(
        diagnostics.contains("its output passed 1048576 bytes"),
        "{}",
        &diagnostics[..diagnostics.len().min(300)]
    );
    assert!(diagnostics.len() < 40 << 10);
    eprintln!(
        "diagnostics flood: verdict after {seconds:.2} s, host peak RSS {:.1} MiB",
        peak as f64 / (1 << 20) as f64
    );
    assert!(seconds < 15.0, "{seconds} s");
    assert!(peak < 150 << 20, "peak RSS {peak}");
}

/// Item 2: `--build-timeout 0` (which `timeout` reads as "no limit") is refused.
#[test]
fn a_build_timeout_of_zero_is_refused() {
    let o = autoprune()
        .args(["build", "--build-timeout", "0"])
        .arg(common::workspace().join("candidates/wanda.rs"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--build-timeout"),
        "{}",
        text(&o.stderr)
    );
    let opts = autoprune::build::BuildOptions {
        timeout_secs: 0,
        ..Default::default()
    };
    assert!(opts.check().is_err());
}

/// `autoprune build candidates/wanda.rs` under `cmd`'s environment exits 2 saying `why`.
fn building_wanda_fails(mut cmd: Command, why: &str) {
    let o = cmd
        .arg("build")
        .arg(common::workspace().join("candidates/wanda.rs"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains(why), "{}", text(&o.stderr));
}

/// Item 4: without HOME (and no other per-user folder) there is no cache, rather than a
/// shared one under /tmp; a cache folder others may write is refused.
#[test]
fn the_cache_is_trusted_by_ownership_not_by_location() {
    let mut no_home = autoprune();
    no_home
        .env_remove("AUTOPRUNE_CACHE")
        .env_remove("HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_RUNTIME_DIR");
    building_wanda_fails(no_home, "no per-user cache folder");
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut on_shared = autoprune();
    on_shared.env("AUTOPRUNE_CACHE", &shared);
    building_wanda_fails(on_shared, "refusing the cache");
}

/// Item 4: a staged SDK whose files were edited is not loaded: it is staged again (the rlib
/// rustc links and the proc-macro library it executes are authenticated first).
#[test]
fn an_edited_staged_sdk_is_staged_again_before_rustc_loads_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = autoprune::sandbox::ArtifactCache::open(dir.path()).unwrap();
    let sdk = autoprune::build::Sdk::prepare(&cache).unwrap();
    let rlib = sdk.dir.join(&sdk.rlib);
    let original = std::fs::read(&rlib).unwrap();
    let mut edited = original.clone();
    let mid = edited.len() / 2;
    edited[mid] ^= 0xff;
    std::fs::write(&rlib, &edited).unwrap();
    let again = autoprune::build::Sdk::prepare(&cache).unwrap();
    assert_eq!(again.fingerprint, sdk.fingerprint);
    assert_eq!(
        std::fs::read(again.dir.join(&again.rlib)).unwrap(),
        original
    );
}

/// Item 5: a plugin's name, description, log line and panic message are data: no control
/// byte reaches the terminal, and no line of the output is a forged verdict.
#[test]
fn plugin_text_never_reaches_the_terminal_raw() {
    let o = autoprune()
        .args(["check", "--shapes", "16x16"])
        .arg(common::workspace().join("tests/attacks/terminal_escapes.rs"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    for stream in [&o.stdout, &o.stderr] {
        let s = text(stream);
        assert!(
            !s.chars().any(|c| c.is_control() && c != '\n'),
            "raw control characters in {s:?}"
        );
        let verdicts: Vec<&str> = s.lines().filter(|l| l.starts_with("verdict:")).collect();
        assert!(
            verdicts.iter().all(|l| l.starts_with("verdict: FAIL")),
            "{s}"
        );
    }
    let out = text(&o.stdout);
    assert!(out.contains("\\x1b[2K") && out.contains("panic"), "{out}");
    // The JSON report keeps the plugin's text exactly, escaped by JSON itself.
    let j = autoprune()
        .args(["check", "--json", "--shapes", "16x16"])
        .arg(common::workspace().join("tests/attacks/terminal_escapes.rs"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["metric"]["name"], "forge\x1b[2K\rverdict: PASS");
    assert!(!text(&j.stdout).contains('\x1b'));
}

/// Item 5: `runs show` prints an LLM's thought and code with their control bytes escaped.
#[test]
fn runs_show_escapes_what_an_llm_wrote() {
    use autoprune::search::archive::{Archive, NewNode, Outcome, Status};
    let dir = tempfile::tempdir().unwrap();
    let mut a = Archive::open(&dir.path().join("archive.sqlite")).unwrap();
    let id = a
        .add(&NewNode {
            proposer: "llm:x".into(),
            operator: "new".into(),
            thought: "fine\x1b]52;c;ZXZpbA==\x07\nverdict: PASS".into(),
            code: "fn main() {} // \x1b[2J\x1b[H".into(),
            expr: None,
            parents: vec![],
            tokens: 1,
        })
        .unwrap();
    a.finish(
        id,
        &Outcome {
            status: Some(Status::Evaluated),
            stage: "full".into(),
            fitness: Some(1.0),
            ..Outcome::default()
        },
    )
    .unwrap();
    let o = autoprune()
        .args(["runs", "show"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = text(&o.stdout);
    assert!(!s.chars().any(|c| c.is_control() && c != '\n'), "{s:?}");
    assert!(s.contains("\\x1b]52;c;ZXZpbA==\\x07"), "{s}");
}

/// Item 7: a 40 GB (sparse) `.wasm` is refused from its size, before a byte is read; a
/// component with more functions than any metric is refused before Cranelift compiles it.
#[test]
fn components_are_limited_before_they_are_read_or_compiled() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.wasm");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(40_000_000_000)
        .unwrap();
    let start = Instant::now();
    let o = autoprune()
        .args(["check", "--json"])
        .arg(&big)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["failure"]["verdict"], "rejected");
    assert!(v["failure"]["reason"]
        .as_str()
        .unwrap()
        .contains("40000000000 bytes"));
    assert!(start.elapsed() < Duration::from_secs(5));
    let many = wat::parse_str(format!(
        "(component (core module {}))",
        "(func)".repeat(50_000)
    ))
    .unwrap();
    let start = Instant::now();
    let f = autoprune::sandbox::Plugin::load(&many, &Policy::default(), None).unwrap_err();
    assert!(
        matches!(&f, Failure::Rejected { reason } if reason.contains("50000 core functions")),
        "{f}"
    );
    assert!(start.elapsed() < Duration::from_secs(1));
}

fn search_cmd(run: &Path, extra: &[&str]) -> std::process::Output {
    autoprune()
        .args(["search", "--run"])
        .arg(run)
        .args(extra)
        .output()
        .unwrap()
}

/// Item 3: `--resume` takes no trust from the archive. A run recorded with a model path that
/// does not load is edited to turn the sandbox off and send a key to another host; resuming
/// without those flags is refused before anything is loaded, and `--trusted` with `--llm` is
/// refused outright.
#[test]
fn resume_takes_no_trust_from_the_archive() {
    use autoprune::search::archive::Archive;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("r");
    let o = search_cmd(&run, &["--model", "/nonexistent/model.gguf"]);
    assert_eq!(o.status.code(), Some(2));
    let db = run.join("archive.sqlite");
    let a = Archive::open_existing(&db).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&a.meta("config").unwrap().unwrap()).unwrap();
    cfg["trusted"] = true.into();
    cfg["policy"] = "/tmp/evil-policy.json".into();
    a.set_meta("config", &cfg.to_string()).unwrap();
    drop(a);
    let o = autoprune()
        .args(["search", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("never taken from the archive")
            && err.contains("--trusted")
            && err.contains("--policy /tmp/evil-policy.json")
            && err.contains("--model /nonexistent/model.gguf"),
        "{err}"
    );
    // Giving them again (confirming) gets past the check: the model then fails to load.
    let o = autoprune()
        .args(["search", "--resume"])
        .arg(&run)
        .args(["--trusted", "--policy", "/tmp/evil-policy.json"])
        .args(["--model", "/nonexistent/model.gguf"])
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(!err.contains("never taken from the archive"), "{err}");
    let o = search_cmd(
        &dir.path().join("t"),
        &["--trusted", "--llm", "http://127.0.0.1:9/v1"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--trusted cannot be combined with --llm"),
        "{}",
        text(&o.stderr)
    );
    assert!(!dir.path().join("t/archive.sqlite").exists());
}

/// Item 8: an allocator's value a hair below 0 (inside validation's slack) is clamped into
/// the bounds, so pruning with it works instead of failing in mask building.
#[test]
fn an_allocation_a_hair_below_zero_is_clamped_into_the_bounds() {
    use autoprune::alloc::Bounds;
    let built = common::builder(true)
        .build(&common::source("tests/attacks/alloc_below_zero.rs"))
        .unwrap();
    let plugin =
        autoprune::sandbox::AllocatorPlugin::load(&built.wasm, &Policy::default(), None).unwrap();
    let units = autoprune::check::synthetic_units(4, false, 0);
    let s = plugin.allocate(0.5, Bounds::HOST, &units).unwrap();
    assert!(s.iter().all(|&v| (0.0..=0.99).contains(&v)), "{s:?}");
    assert_eq!(s[0], 0.0);
}

/// Item 8: scores that are all equal make the per-layer `<=` threshold prune the whole layer;
/// that is the metric's verdict now, not a silently destroyed layer.
#[test]
fn all_equal_scores_under_a_per_layer_threshold_get_a_verdict() {
    use autoprune::model::{Arch, Model, ModelConfig};
    use autoprune::pipeline::{prune_model, Method, PipelineError, PruneConfig, PruneJob};
    use autoprune::prune::mask::Pattern;
    let plugin = common::plugin("tests/attacks/all_equal.rs", &Policy::default()).unwrap();
    let cfg = ModelConfig::tiny(Arch::Llama);
    let mut model = Model::random(&cfg, 3, &candle_core::Device::Cpu).unwrap();
    let windows: Vec<Vec<u32>> = (0..2)
        .map(|w| {
            (0..32)
                .map(|i| (i * 7 + w) % cfg.vocab_size as u32)
                .collect()
        })
        .collect();
    let wins: Vec<&[u32]> = windows.iter().map(|w| w.as_slice()).collect();
    let prune_cfg = PruneConfig::uniform(0.5, Pattern::PerLayer, 2);
    let err = prune_model(
        &mut model,
        &PruneJob::new(&wins, &Method::Metric(&plugin), &prune_cfg),
        &mut |_| {},
    )
    .unwrap_err();
    match err {
        PipelineError::Metric {
            failure:
                Failure::InvalidOutput(InvalidOutput::SparsityOvershoot {
                    pruned, weights, ..
                }),
            ..
        } => assert_eq!(pruned, weights),
        other => panic!("{other}"),
    }
    // Per row the same scores are fine: ties are broken by position.
    let row_cfg = PruneConfig::uniform(0.5, Pattern::PerRow, 2);
    prune_model(
        &mut model,
        &PruneJob::new(&wins, &Method::Metric(&plugin), &row_cfg),
        &mut |_| {},
    )
    .unwrap();
}

/// A GGUF file with one metadata entry and no tensors.
fn gguf_with(key: &str, value_type: u32, value: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key.as_bytes());
    b.extend(value_type.to_le_bytes());
    b.extend(value);
    b
}

/// Item 9: hostile model files get errors, not panics: a GGUF with `general.alignment = 0`,
/// an index naming shards outside the model folder, an oversized tokenizer.
#[test]
fn hostile_model_files_get_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("align0.gguf");
    std::fs::write(
        &gguf,
        gguf_with("general.alignment", 4, &0u32.to_le_bytes()),
    )
    .unwrap();
    let o = autoprune()
        .args(["eval", "--model"])
        .arg(&gguf)
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("general.alignment") && !err.contains("panicked"),
        "{err}"
    );
    for shard in [
        "../outside.safetensors",
        "/etc/passwd",
        "a/../../b.safetensors",
    ] {
        let hf = dir.path().join("hf");
        std::fs::create_dir_all(&hf).unwrap();
        std::fs::write(
            hf.join("config.json"),
            serde_json::to_string(
                &autoprune::model::ModelConfig::tiny(autoprune::model::Arch::Llama).to_hf_json(),
            )
            .unwrap(),
        )
        .unwrap();
        std::fs::write(
            hf.join("model.safetensors.index.json"),
            serde_json::json!({ "weight_map": { "model.norm.weight": shard } }).to_string(),
        )
        .unwrap();
        let e = autoprune::model::Model::load(&hf, &candle_core::Device::Cpu).unwrap_err();
        assert!(
            e.to_string().contains("not a file inside the model folder"),
            "{shard}: {e}"
        );
    }
    let tk = dir.path().join("tokenizer.json");
    std::fs::File::create(&tk)
        .unwrap()
        .set_len(autoprune::model::tokenizer::MAX_TOKENIZER_BYTES + 1)
        .unwrap();
    let e = autoprune::model::Tokenizer::from_file(&tk).unwrap_err();
    assert!(e.to_string().contains("the limit is"), "{e}");
}
