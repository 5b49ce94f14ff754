//! Allocation flags of `autoprune prune`, and the rule they name.

use autoprune::alloc::{Allocation, Granularity, OwlParams, SdsaParams, SkewSource};
use autoprune::prune::mask::Pattern;
use autoprune::run::allocate::check_pattern;
use autoprune::sandbox::{AllocatorPlugin, Policy};
use std::path::{Path, PathBuf};

/// Layer-wise allocation flags of `autoprune prune`.
#[derive(Debug, clap::Args)]
pub struct AllocArgs {
    /// Layer-wise sparsity allocation: `uniform`, `owl`, `sdsa`, or an allocator plugin
    /// (`.rs` source built in the sandbox, or a `.wasm` component of the `allocator` world).
    #[arg(long, default_value = "uniform")]
    pub allocation: String,
    /// What gets one sparsity: `block` (all linears of a block share it) or `layer`.
    #[arg(long, default_value = "block")]
    pub granularity: Granularity,
    /// OWL: outlier threshold as a multiple of the mean Wanda score (3, 5, 7 or 10).
    #[arg(long, default_value_t = OwlParams::default().m)]
    pub owl_m: f64,
    /// OWL: λ; sparsities spread over a range of width 2λ around the target.
    #[arg(long, default_value_t = OwlParams::default().lambda)]
    pub owl_lambda: f64,
    /// SDSA: softmax temperature on the standardised skewness.
    #[arg(long, default_value_t = SdsaParams::default().temperature)]
    pub sdsa_temperature: f64,
    /// SDSA: largest deviation of a unit's sparsity from the target.
    #[arg(long, default_value_t = SdsaParams::default().delta)]
    pub sdsa_delta: f64,
    /// SDSA: whose skewness: `weights` (|W|, default), `scores` (the metric's) or `wanda`.
    #[arg(long, default_value = "weights")]
    pub sdsa_source: SkewSource,
}

/// The rule `--allocation` names: built in, or an allocator plugin (loaded, or its verdict).
pub enum Named {
    /// A built-in rule.
    Builtin(Allocation),
    /// A plugin, with its file and that file's SHA-256.
    Plugin(Box<AllocatorPlugin>, PathBuf, String),
    /// The plugin failed to build or load (its verdict).
    Failed(autoprune::sandbox::Failure),
}

impl AllocArgs {
    /// The built-in rule named by `--allocation`, or `None` for a plugin path.
    pub fn builtin(&self) -> anyhow::Result<Option<Allocation>> {
        Ok(Some(match self.allocation.as_str() {
            "uniform" => Allocation::Uniform,
            "owl" => Allocation::Owl(OwlParams {
                m: self.owl_m,
                lambda: self.owl_lambda,
            }),
            "sdsa" => Allocation::Sdsa(SdsaParams {
                temperature: self.sdsa_temperature,
                delta: self.sdsa_delta,
                source: self.sdsa_source,
            }),
            p if p.ends_with(".rs") || p.ends_with(".wasm") => return Ok(None),
            other => anyhow::bail!(
                "unknown allocation `{other}` (uniform, owl, sdsa, or an allocator plugin .rs/.wasm)"
            ),
        }))
    }

    /// The named rule, building or loading an allocator plugin in the sandbox (after checking
    /// that `pattern` admits a non-uniform allocation, as the built-in rules do).
    pub fn named(
        &self,
        build: &super::BuildFlags,
        policy: &Policy,
        pattern: Pattern,
    ) -> anyhow::Result<Named> {
        use autoprune::pipeline::PipelineError::Config;
        let cfg = |e: anyhow::Error| anyhow::Error::from(Config(format!("{e:#}")));
        if let Some(rule) = self.builtin().map_err(|e| Config(e.to_string()))? {
            return Ok(Named::Builtin(rule));
        }
        check_pattern(pattern).map_err(|e| Config(e.to_string()))?;
        let path = Path::new(&self.allocation);
        match super::check::load_allocator(path, build, policy).map_err(cfg)? {
            Ok(plugin) => {
                let sha = super::check::plugin_sha256(path, policy).map_err(cfg)?;
                Ok(Named::Plugin(Box::new(plugin), path.to_path_buf(), sha))
            }
            Err(f) => Ok(Named::Failed(f)),
        }
    }
}
