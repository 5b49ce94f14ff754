//! Plugins for the tests: a bubblewrap builder on the tests' shared cache, metric plugins from
//! files or inline source, and a small synthetic layer to score.

use super::workspace;
use autoprune::build::{BuildOptions, Builder, Isolation};
use autoprune::check::SyntheticLayer;
use autoprune::layer::LayerKind;
use autoprune::sandbox::{ArtifactCache, Failure, Plugin, Policy};

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

/// The candidate `rel` (e.g. `candidates/wanda.rs`), built and loaded under the default
/// policy; panics if it does not load.
pub fn candidate(rel: &str) -> Plugin {
    plugin(rel, &Policy::default()).expect("candidate loads")
}

/// A metric from inline `source`, built and loaded under the default policy; panics if it
/// does not build or load.
pub fn inline_plugin(source: &str) -> Plugin {
    let built = builder(true).build(source).expect("builds");
    Plugin::load(&built.wasm, &Policy::default(), Some(&cache())).expect("loads")
}

/// A small synthetic layer (64×128, heavy-tailed).
pub fn small_layer() -> SyntheticLayer {
    SyntheticLayer::generate(64, 128, LayerKind::Q, 1)
}
