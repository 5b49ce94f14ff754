//! The library side of the commands that prune and measure: each takes a configuration built
//! from flags and returns a typed result, so the CLI only parses, calls and prints.

pub mod allocate;
pub mod bench;
pub mod device_stats;
pub mod eval;
mod export;
pub mod prune;
pub mod stream;
pub mod sweep;
