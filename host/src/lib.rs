//! autoprune: safe, automated discovery of LLM pruning metrics.
//!
//! Untrusted metric plugins are Rust sources compiled to WebAssembly components in a
//! compile sandbox ([`build`]) and run under wasmtime with hard limits ([`sandbox`]).
//! The host loads real models ([`model`]), collects calibration statistics ([`calib`]),
//! builds masks itself ([`prune`]) and measures perplexity ([`eval`]).
#![deny(missing_docs)]

pub mod alloc;
pub mod board;
pub mod build;
pub mod calib;
pub mod check;
pub mod data;
pub mod eval;
pub mod files;
pub mod hash;
pub mod layer;
pub mod model;
pub mod pipeline;
pub mod progress;
pub mod prune;
pub mod report;
pub mod rng;
pub mod run;
pub mod sandbox;
pub mod search;
pub mod setup;
pub mod term;
#[cfg(test)]
mod testutil;
pub mod units;
