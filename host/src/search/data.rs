//! The model and texts of a search (or a fidelity study): calibration, validation and
//! held-out windows, loaded once per run.

use super::cascade::SearchData;
use crate::calib::{validation_offsets, window_offsets, Sampler};
use crate::model::Precision;
use crate::setup::{load_model, stream};
use std::path::PathBuf;

/// Where a search's (or a fidelity study's) model and text come from.
pub struct DataSpec<'a> {
    /// Model file or folder (default: SmolLM2).
    pub model: Option<&'a PathBuf>,
    /// Calibration text (default: SOTU before 1990).
    pub calib: Option<&'a PathBuf>,
    /// Held-out text (default: SOTU from 1990).
    pub eval: Option<&'a PathBuf>,
    /// Calibration windows.
    pub calib_windows: usize,
    /// Validation windows (between calibration windows).
    pub validation_windows: usize,
    /// Held-out windows.
    pub heldout_windows: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Arithmetic of the linear layers.
    pub precision: Precision,
}

/// Load the model and texts and cut the windows of a search.
pub fn search_data(
    spec: &DataSpec<'_>,
    device: &candle_core::Device,
) -> anyhow::Result<SearchData> {
    let loaded = load_model(spec.model, device, spec.precision)?;
    let calib = stream(&loaded.tokenizer, spec.calib, "calib")?;
    let eval = stream(&loaded.tokenizer, spec.eval, "eval")?;
    let seq = spec.seq_len;
    let offsets = window_offsets(calib.tokens.len(), spec.calib_windows, seq, Sampler::Even)?;
    let val = validation_offsets(calib.tokens.len(), &offsets, spec.validation_windows, seq)?;
    let win = |o: &usize| calib.tokens[*o..*o + seq].to_vec();
    let data = SearchData {
        model: loaded.model,
        calib: offsets.iter().map(win).collect(),
        validation: val.iter().flat_map(win).collect(),
        validation_windows: val.len(),
        heldout: eval.tokens,
        heldout_windows: spec.heldout_windows,
        seq_len: seq,
        gradient_cache: crate::build::default_cache()
            .ok()
            .map(|c| c.dir().join("gradients")),
    };
    crate::eval::eval_windows(
        &data.heldout,
        &crate::eval::PerplexityOptions {
            seq_len: seq,
            windows: spec.heldout_windows,
            batch: 2,
        },
    )?;
    Ok(data)
}
