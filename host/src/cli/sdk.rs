//! `autoprune sdk`: stage the prebuilt guest SDK and print where it is.

use autoprune::build::{default_cache, Sdk};

/// Arguments of `autoprune sdk`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Run it.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    let cache = default_cache()?;
    let sdk = Sdk::prepare(&cache)?;
    println!(
        "guest SDK: {} ({}), fingerprint {}",
        sdk.dir.display(),
        sdk.rlib,
        sdk.fingerprint
    );
    Ok(0)
}
