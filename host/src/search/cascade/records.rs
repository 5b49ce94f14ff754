//! The ladder's records: its settings, the run's data, levels, Wanda's reference, and what a
//! level measured.

use super::super::objective::{Objective, Setting};
use super::super::paired::Paired;
use crate::model::Model;
use crate::prune::mask::Pattern;
use serde::{Deserialize, Serialize};

/// Settings of the ladder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LadderConfig {
    /// What the search optimises.
    pub objective: Objective,
    /// Validation windows of the screen (the first ones of the validation windows).
    pub screen_windows: usize,
    /// Continue past the screen only if its ratio to Wanda is at most this.
    pub promote_ratio: f64,
    /// Calibration windows per forward pass.
    pub calib_batch: usize,
    /// Compute the gradient statistic of the dense model once per run, so metrics may read it
    /// (GBLM and Pruner-Zero's baselines do). Costs one backward pass per calibration window.
    pub gradient: bool,
}

impl Default for LadderConfig {
    fn default() -> Self {
        LadderConfig {
            objective: Objective::single(Setting::uniform(0.5, Pattern::PerRow)),
            screen_windows: 4,
            promote_ratio: 1.1,
            calib_batch: 8,
            gradient: true,
        }
    }
}

/// The text a search evaluates on, tokenized and windowed.
pub struct SearchData {
    /// The dense model (cloned for every evaluation; tensors are shared until replaced).
    pub model: Model,
    /// Calibration windows (the protocol's).
    pub calib: Vec<Vec<u32>>,
    /// Validation tokens (windows disjoint from the calibration and held-out windows),
    /// concatenated.
    pub validation: Vec<u32>,
    /// Number of validation windows in `validation`.
    pub validation_windows: usize,
    /// Where they come from.
    pub validation_source: crate::search::data::ValidationSource,
    /// Held-out evaluation tokens (final ranking only).
    pub heldout: Vec<u32>,
    /// Windows of the held-out evaluation.
    pub heldout_windows: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// A folder where the gradient statistic of a model and calibration windows is kept, so
    /// runs on the same model and windows compute it once (`None`: always compute).
    pub gradient_cache: Option<std::path::PathBuf>,
}

/// A ladder level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// One-shot with dense statistics, a few validation windows.
    Screen,
    /// The sequential protocol, every validation window.
    Sequential,
    /// The sequential protocol on the held-out text.
    Heldout,
}

impl Level {
    /// Its name in records.
    pub fn name(self) -> &'static str {
        match self {
            Level::Screen => "screen",
            Level::Sequential => "sequential",
            Level::Heldout => "heldout",
        }
    }
}

/// Wanda's per-window mean NLLs, per setting, at every level (computed once per run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// Identifies the data and settings these losses belong to.
    pub key: String,
    /// Screen windows, per setting.
    pub screen: Vec<Vec<f64>>,
    /// Validation windows (sequential level), per setting.
    pub sequential: Vec<Vec<f64>>,
    /// Held-out windows, per setting (computed at the first held-out ranking).
    #[serde(default)]
    pub heldout: Option<Vec<Vec<f64>>>,
}

/// One setting's result at one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingResult {
    /// The setting (e.g. `2:4`).
    pub setting: String,
    /// Perplexity over the level's windows.
    pub ppl: f64,
    /// Wanda's perplexity over the same windows.
    pub wanda_ppl: f64,
    /// The paired comparison with Wanda.
    pub paired: Paired,
}

/// A candidate's result at one level: per setting, and combined over the settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelResult {
    /// Per-window differences averaged over the settings, compared as a whole.
    pub combined: Paired,
    /// Each setting.
    pub settings: Vec<SettingResult>,
    /// Seconds the level took.
    pub seconds: f64,
}

/// Everything measured for a candidate, stored as JSON with its node (`detail`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Detail {
    /// The screen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<LevelResult>,
    /// The sequential level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<LevelResult>,
    /// The held-out ranking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout: Option<LevelResult>,
}

/// How [`Evaluator::prune_and_measure`] prunes.
pub enum Pruning<'a> {
    /// Every block with the dense statistics computed once per run (the screen).
    OneShot,
    /// The sequential protocol on these calibration windows.
    Sequential(Vec<&'a [u32]>),
}

/// What [`Evaluator::prune_and_measure`] measured.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    /// Per-window mean NLLs, one list per window set.
    pub losses: Vec<Vec<f64>>,
    /// Seconds of the pruning.
    pub prune_seconds: f64,
    /// Seconds of each set's evaluation.
    pub eval_seconds: Vec<f64>,
}

/// What the one-time preparation cost (seconds), for reports.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Preparation {
    /// The dense statistics pass.
    pub dense_stats: f64,
    /// The gradient pass (0 when not computed).
    pub gradient: f64,
    /// Allocation plans.
    pub plans: f64,
    /// Wanda's losses at the screen and sequential levels (0 when reused from the archive).
    pub reference: f64,
    /// The dense pass with Hessians for the WIT 0.2.0 inputs (0 until a candidate needs it).
    #[serde(default)]
    pub hessian_inputs: f64,
}
