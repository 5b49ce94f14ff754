//! Helpers shared by the integration tests: the workspace and the binary, a deterministic
//! token stream, and (in the submodules) plugins, the search fixtures, and the rule for tests
//! whose data or tools are missing.
// Each test binary compiles all of this and uses a part of it.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod board;
mod browser;
pub mod family;
mod plugins;
mod require;
mod search;
pub mod slurm;

pub use browser::chromium_dom;
pub use plugins::{builder, cache, candidate, inline_plugin, plugin, small_layer, source};
pub(crate) use require::require_real_data;
pub use require::{have_real_data, in_ci, llama_server, not_run};
pub use search::{tiny_search_evaluator, tiny_search_evaluator_for, REDUCED_SEARCH};

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `autoprune` binary under test, with its artifact cache on the tests' shared cache.
pub fn autoprune() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_autoprune"));
    c.env("AUTOPRUNE_CACHE", workspace().join("target/test-cache"));
    c
}

/// `n` tokens of a deterministic, repetitive "text" below `vocab`, so a model has something
/// to be perplexed by.
pub fn tokens(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 7 + (i / 13) * 3) % vocab)
        .collect()
}
