//! Run reports: what was done, on what, with which numbers; and the process's peak memory.

use serde::{Deserialize, Serialize};

/// `value` as pretty JSON with every object's keys sorted, nested ones included: the form
/// `report.json` and the `--json` reports have always had (built with `serde_json::json!`).
pub fn sorted_json_pretty<T: Serialize>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&serde_json::to_value(value)?)
}

/// Peak resident memory of this process in bytes (`VmHWM`), if the OS tells.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// Resident memory of this process now in bytes (`VmRSS`), if the OS tells.
pub fn current_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// A `kB` line of `/proc/self/status`, in bytes.
fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The evaluation protocol of a run, recorded so numbers can be reproduced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Protocol {
    /// Preset name (`sotu-512`) or `custom`.
    pub name: String,
    /// Model file or directory.
    pub model: String,
    /// Calibration text source.
    pub calib_source: String,
    /// Evaluation text source.
    pub eval_source: String,
    /// Tokens per window.
    pub seq_len: usize,
    /// Calibration windows.
    pub calib_windows: usize,
    /// Calibration window sampler (with its seed, if random).
    pub sampler: crate::calib::Sampler,
    /// Calibration window offsets.
    pub calib_offsets: Vec<usize>,
    /// Evaluation windows.
    pub eval_windows: usize,
    /// Tokens in the calibration stream.
    pub calib_tokens: usize,
    /// Tokens in the evaluation stream.
    pub eval_tokens: usize,
    /// Arithmetic of the linear layers in the calibration passes (reports written before it
    /// existed are f32).
    #[serde(default)]
    pub precision: crate::model::Precision,
    /// Arithmetic of the linear layers in the perplexity evaluations.
    #[serde(default)]
    pub eval_precision: crate::model::Precision,
}

/// A perplexity measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PplReport {
    /// Perplexity.
    pub ppl: f64,
    /// Mean NLL per predicted token.
    pub nll: f64,
    /// Windows.
    pub windows: usize,
    /// Seconds.
    pub seconds: f64,
}

impl From<crate::eval::Perplexity> for PplReport {
    fn from(p: crate::eval::Perplexity) -> Self {
        Self {
            ppl: p.ppl,
            nll: p.nll,
            windows: p.windows,
            seconds: p.seconds,
        }
    }
}

/// The pruning method of a run, as `report.json` records it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum MethodRecord {
    /// A metric plugin.
    Metric {
        /// What the plugin says of itself.
        metric: crate::sandbox::MetricInfo,
        /// SHA-256 of the plugin file.
        sha256: Option<String>,
        /// The plugin file.
        source: Option<std::path::PathBuf>,
    },
    /// A built-in method (`sparsegpt`).
    Builtin {
        /// Its name.
        builtin: String,
    },
}

/// Dense and pruned perplexity of a run.
#[derive(Debug, Clone, Serialize)]
pub struct PerplexityPair {
    /// Before pruning (absent with `--skip-dense`).
    pub dense: Option<PplReport>,
    /// After pruning.
    pub pruned: PplReport,
}

/// Where the seconds of a prune run went.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    /// The gradient pass (metrics that read the gradient statistic).
    pub gradient_seconds: f64,
    /// Loading the model.
    pub load_seconds: f64,
    /// The whole pruning call.
    pub prune_seconds: f64,
    /// Pruned forward passes.
    pub pruned_forward_seconds: f64,
    /// Scoring and masking (and weight updates).
    pub score_mask_seconds: f64,
    /// Dense statistics passes.
    pub stats_seconds: f64,
    /// The whole run up to the report.
    pub total_seconds: f64,
}

/// `report.json` of `autoprune prune` (written with [`sorted_json_pretty`]).
#[derive(Debug, Clone, Serialize)]
pub struct PruneRunReport {
    /// The layer-wise allocation (absent for uniform).
    pub allocation: Option<crate::alloc::plan::Planned>,
    /// The CPU and the kernels chosen.
    pub cpu: crate::model::CpuReport,
    /// Per-layer results in model order.
    pub layers: Vec<crate::pipeline::LayerReport>,
    /// The method.
    pub method: MethodRecord,
    /// The comparison group.
    pub pattern: crate::prune::mask::Pattern,
    /// Peak resident memory, if the OS tells.
    pub peak_rss_bytes: Option<u64>,
    /// Perplexities.
    pub perplexity: PerplexityPair,
    /// The protocol.
    pub protocol: Protocol,
    /// Zeros over all linear weights.
    pub sparsity_achieved: f64,
    /// Target sparsity.
    pub sparsity_target: f64,
    /// Timings.
    pub timings: Timings,
    /// Zero-shot accuracy, dense and pruned (absent when no task was asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_shot: Option<ZeroShotPair>,
    /// Memory and time per block of a streaming run (`prune --stream`; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamRecord>,
}

/// What a streaming run (`prune --stream`) held and how long each block took.
#[derive(Debug, Clone, Serialize)]
pub struct StreamRecord {
    /// Per block: seconds (read, evaluate, prune, write) and resident memory.
    pub blocks: Vec<crate::pipeline::BlockRecord>,
    /// f32 bytes of the largest block's weights.
    pub block_bytes: u64,
    /// Bytes of hidden states held across a block (every window's input and output).
    pub activation_bytes: u64,
    /// The memory goal: 1.5 × (block + activations).
    pub goal_bytes: u64,
    /// Element type of the written weights.
    pub save_dtype: crate::model::SaveDtype,
}

/// Zero-shot accuracy before and after pruning.
#[derive(Debug, Clone, Serialize)]
pub struct ZeroShotPair {
    /// Before pruning (empty with `--skip-dense`).
    pub dense: Vec<crate::eval::tasks::TaskScore>,
    /// After pruning.
    pub pruned: Vec<crate::eval::tasks::TaskScore>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_json_sorts_nested_keys_like_the_json_macro() {
        #[derive(Serialize)]
        struct Inner {
            z: u8,
            a: u8,
        }
        #[derive(Serialize)]
        struct Outer {
            y: Inner,
            b: u8,
        }
        let v = Outer {
            y: Inner { z: 1, a: 2 },
            b: 3,
        };
        let want = serde_json::to_string_pretty(&serde_json::json!({
            "y": { "z": 1, "a": 2 }, "b": 3
        }))
        .unwrap();
        assert_eq!(sorted_json_pretty(&v).unwrap(), want);
        assert!(want.find("\"a\"").unwrap() < want.find("\"z\"").unwrap());
        assert!(want.find("\"b\"").unwrap() < want.find("\"y\"").unwrap());
    }
}
