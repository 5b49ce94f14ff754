//! Run reports: what was done, on what, with which numbers; and the process's peak memory.

use serde::{Deserialize, Serialize};

/// Peak resident memory of this process in bytes (`VmHWM`), if the OS tells.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
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
