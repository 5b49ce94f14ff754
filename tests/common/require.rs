//! Tests that need the real data or a tool `./setup.sh` installs: under CI they fail when it
//! is missing; elsewhere they skip and say so.

use autoprune::data::DataDir;
use std::path::PathBuf;

/// Whether this is a CI run (`CI` set, as `.ci/run` does): there every test must run.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// A test cannot run for `reason` (something missing): under CI this is a failure (panics);
/// elsewhere it prints `SKIPPED (not run): <reason>` to stderr and the caller returns.
pub fn not_run(reason: &str) {
    assert!(
        !in_ci(),
        "{reason}: CI is set, so a test that cannot run fails (run ./setup.sh first)"
    );
    eprintln!("SKIPPED (not run): {reason}");
}

/// Whether the real SmolLM2 and SOTU data are there (after `./setup.sh`); if not, see
/// [`not_run`].
pub fn have_real_data() -> bool {
    let data = DataDir::resolve();
    if data.smollm2_gguf().is_err() || data.sotu_dir().is_err() {
        not_run(&format!(
            "no SmolLM2/SOTU data under {} (run ./setup.sh)",
            data.root().display()
        ));
        return false;
    }
    true
}

/// Return from the test unless the real data is there ([`have_real_data`]): the first line of
/// a test on the real model.
macro_rules! require_real_data {
    () => {
        if !$crate::common::have_real_data() {
            return;
        }
    };
}
pub(crate) use require_real_data;

/// The llama.cpp server binary `./setup.sh` builds, or `None` (see [`not_run`]).
pub fn llama_server() -> Option<PathBuf> {
    let p = DataDir::resolve()
        .root()
        .join(autoprune::search::local_server::SERVER_BINARY);
    if p.is_file() {
        return Some(p);
    }
    not_run(&format!(
        "no llama-server at {} (./setup.sh builds it)",
        p.display()
    ));
    None
}
