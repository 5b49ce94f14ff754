//! Helpers shared by the integration tests: a builder on a shared test cache, plugins from
//! attack sources, small synthetic layers.
#![allow(dead_code)]

use autoprune::build::{BuildOptions, Builder, Isolation};
use autoprune::check::SyntheticLayer;
use autoprune::layer::LayerKind;
use autoprune::sandbox::{ArtifactCache, Failure, Plugin, Policy};
use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A cache shared by all test binaries (the staged SDK is reused).
pub fn cache() -> ArtifactCache {
    ArtifactCache::open(workspace().join("target/test-cache")).expect("test cache")
}

/// A bubblewrap builder, with or without the lint.
pub fn builder(lint: bool) -> Builder {
    let opts = BuildOptions {
        isolation: Isolation::Bwrap,
        lint,
        timeout_secs: 20,
        ..BuildOptions::default()
    };
    Builder::new(cache(), opts).expect("builder (is bubblewrap installed? run ./setup.sh)")
}

/// Read a file from tests/attacks or candidates.
pub fn source(rel: &str) -> String {
    std::fs::read_to_string(workspace().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Build and load `rel` under `policy`.
pub fn plugin(rel: &str, policy: &Policy) -> Result<Plugin, Failure> {
    let built = builder(true).build(&source(rel))?;
    Plugin::load(&built.wasm, policy, Some(&cache()))
}

/// A small synthetic layer (64×128, heavy-tailed).
pub fn small_layer() -> SyntheticLayer {
    SyntheticLayer::generate(64, 128, LayerKind::Q, 1)
}

/// Whether the real SmolLM2 and SOTU data are there (after `./setup.sh`). Without them a test
/// skips, except in CI (`CI` set), where missing data is a failure.
pub fn have_real_data() -> bool {
    let data = autoprune::data::DataDir::resolve();
    if data.smollm2_gguf().is_err() || data.sotu_dir().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run ./setup.sh first"
        );
        eprintln!("skipped: no SmolLM2/SOTU data (run ./setup.sh)");
        return false;
    }
    true
}

/// `autoprune search` flags of a reduced protocol on the real model (seconds per candidate;
/// no gradient pass, so the gradient baselines are left out).
pub const REDUCED_SEARCH: [&str; 11] = [
    "--calib-windows",
    "2",
    "--validation-windows",
    "2",
    "--screen-windows",
    "1",
    "--eval-windows",
    "1",
    "--heldout-top",
    "1",
    "--no-gradient",
];

/// A search ladder on a tiny random LLaMA (fast) with a bubblewrap builder: `calib`
/// calibration windows, `val` validation windows (the screen reads 2), promotion past the
/// screen at ratio `promote_ratio` to Wanda; the gradient statistic is computed (cheap here).
pub fn tiny_search_evaluator(
    calib: usize,
    val: usize,
    promote_ratio: f64,
) -> autoprune::search::cascade::Evaluator {
    tiny_search_evaluator_for(calib, val, promote_ratio, "0.5".parse().unwrap())
}

/// [`tiny_search_evaluator`] for another objective.
pub fn tiny_search_evaluator_for(
    calib: usize,
    val: usize,
    promote_ratio: f64,
    objective: autoprune::search::objective::Objective,
) -> autoprune::search::cascade::Evaluator {
    use autoprune::calib::{validation_offsets, window_offsets, Sampler};
    use autoprune::model::{Arch, Model, ModelConfig};
    use autoprune::search::cascade::{Evaluator, LadderConfig, SearchData};
    let cfg = ModelConfig::tiny(Arch::Llama);
    let model = Model::random(&cfg, 21, &candle_core::Device::Cpu).unwrap();
    let vocab = cfg.vocab_size as u32;
    let toks: Vec<u32> = (0..20_000u32)
        .map(|i| (i * 7 + (i / 13) * 3 + (i * i / 97)) % vocab)
        .collect();
    let seq = 64;
    let win = |o: &usize| toks[*o..*o + seq].to_vec();
    let calib = window_offsets(toks.len(), calib, seq, Sampler::Even).unwrap();
    let val = validation_offsets(toks.len(), &calib, val, seq).unwrap();
    let data = SearchData {
        model,
        calib: calib.iter().map(win).collect(),
        validation: val.iter().flat_map(win).collect(),
        validation_windows: val.len(),
        heldout: toks[..seq * val.len()].to_vec(),
        heldout_windows: val.len(),
        seq_len: seq,
        gradient_cache: None,
    };
    let ladder = LadderConfig {
        objective,
        screen_windows: 2,
        promote_ratio,
        calib_batch: 4,
        gradient: true,
    };
    Evaluator::new(
        ladder,
        data,
        builder(true),
        Policy::default(),
        None,
        &mut |_| {},
    )
    .unwrap()
}
