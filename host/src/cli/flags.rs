//! Flag groups shared by several subcommands, declared once and flattened into each.

use super::BuildFlags;
use autoprune::prune::mask::Pattern;
use autoprune::sandbox::Policy;
use std::path::PathBuf;

/// The calibration text and how many windows of it.
#[derive(Debug, clap::Args)]
pub struct CalibFlags {
    /// Calibration text file (default: SOTU speeches before 1990).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 32)]
    pub calib_windows: usize,
}

/// What to prune to: a target sparsity and the comparison group.
#[derive(Debug, clap::Args)]
pub struct TargetFlags {
    /// Target sparsity of every linear layer.
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
    /// Comparison group: `row` (per output row), `layer` (one threshold per matrix, ties
    /// pruned), `layer-exact`, or `N:M` such as `2:4`; `2:4p` permutes each layer's input
    /// channels first so that important channels fall in different groups (RIA's channel
    /// permutation, chosen from the metric's scores; metrics only)
    #[arg(long, default_value = "row")]
    pub pattern: Pattern,
}

/// The sandbox: its limits, and how plugin sources are compiled.
#[derive(Debug, clap::Args)]
pub struct SandboxFlags {
    /// A JSON file with sandbox limits.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub build: BuildFlags,
}

impl SandboxFlags {
    /// The policy from `--policy` (defaults otherwise).
    pub fn policy(&self) -> anyhow::Result<Policy> {
        super::check::load_policy(self.policy.as_ref())
    }
}
