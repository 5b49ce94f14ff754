//! Deterministic random data for the prune tests (no `rand` dependency).

use crate::rng::SplitMix64;

/// The crate's generator ([`SplitMix64`]) with the draws the prune tests use.
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }

    /// `n` standard normal f32 values.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        self.0.normals(n)
    }

    /// Uniform integer in `0..n` (by remainder).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.below_mod(n)
    }
}
